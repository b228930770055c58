//! The channel-blocked image layout (NCHWc): 2-D f32 convs with constant filters whose
//! filters are a multiple of the target's block (16) become `conv_blocked`, whose results
//! are `[N, C/16, H, W, 16]` values — dense ones from a blocked input where there is one (from
//! the plain image otherwise: a first conv's three channels), depthwise ones from blocked
//! inputs — and the work between such convs follows them into the blocked layout:
//! elementwise ops (with per-channel or scalar broadcast operands, or a plain image beside a
//! blocked one, a residual), pooling windows, channel concats, and global reductions over
//! the image (whose `[N, C/16, 16]` result is `[N, C]` as it is). A dense conv whose filter
//! count is just above a multiple of 16 (a classifier's 1000) and whose outputs each sum at
//! least 128 products runs blocked on zero-padded filters, its plain result sliced.
//! Consecutive convs hand
//! blocked images to each other instead of converting per layer. Each blocked value keeps a
//! plain twin (`unblock`: a transpose and a reshape) for consumers that need NCHW; twins
//! nobody reads are dead code. A deterministic rewrite rather than e-graph rules: every
//! conv the routine takes is faster blocked (see docs/decisions.md), so there is no choice
//! for a cost model to make.

use std::collections::HashMap;

use ir::{Builder, Dim, Node, Op, Shape, Value};

use crate::manager::Options;
use crate::rebuild::{rebuild, Settings, R};

pub(crate) fn run(g: &ir::Graph, o: &Options) -> R<ir::Graph> {
    let block = o.target.block;
    if block < 2 {
        return Ok(g.clone());
    }
    // The blocked twin of each plain value of the new graph that has one.
    let mut blocked: HashMap<Value, Value> = HashMap::new();
    rebuild(g, &Settings::STRICT, &mut |b, node, inputs| {
        let err = |e: ir::Error| e.to_string();
        if let Some(y) = reduced(b, node, inputs, &blocked).map_err(err)? {
            return Ok(Some(vec![y]));
        }
        if let Some(y) = padded(b, node, inputs, &blocked, block).map_err(err)? {
            return Ok(Some(vec![y]));
        }
        let Some(y) = blocked_form(b, node, inputs, &blocked, block).map_err(err)? else {
            return Ok(None);
        };
        let plain = unblock(b, y, block).map_err(err)?;
        blocked.insert(plain, y);
        Ok(Some(vec![plain]))
    })
}

/// A reduction over the spatial axes of an image that has a blocked twin (a global pool),
/// computed on the twin: `[N, C/b, b]` is `[N, C]` in row-major order, so the plain result
/// needs no transpose.
fn reduced(
    b: &mut Builder,
    node: &Node,
    inputs: &[Value],
    blocked: &HashMap<Value, Value>,
) -> ir::Result<Option<Value>> {
    let op = node.op();
    let axes = match op {
        Op::ReduceSum { axes }
        | Op::ReduceMax { axes }
        | Op::ReduceMin { axes }
        | Op::ReduceProd { axes } => axes,
        _ => return Ok(None),
    };
    let Some(&x) = inputs.first().and_then(|v| blocked.get(v)) else {
        return Ok(None);
    };
    let mut sorted = axes.clone();
    sorted.sort_unstable();
    if sorted != [2, 3] || node.types().len() != 1 {
        return Ok(None);
    }
    // Sums, maxima and minima as one window over each plane: the pooling routine's lanes
    // are the block's channels (sums in f64 in row-major order either way).
    let kind = match op {
        Op::ReduceSum { .. } => Some(ir::ReduceKind::Sum),
        Op::ReduceMax { .. } => Some(ir::ReduceKind::Max),
        Op::ReduceMin { .. } => Some(ir::ReduceKind::Min),
        _ => None,
    };
    let d = b.ty(x).shape.dims().to_vec();
    let r = match (kind, d[2].as_const(), d[3].as_const()) {
        (Some(kind), Some(h), Some(w)) => b.op1(
            Op::ReduceWindow {
                kind,
                window: vec![1, 1, h, w, 1],
                stride: vec![1; 5],
                dilation: vec![1; 5],
                pad_low: vec![0; 5],
                pad_high: vec![0; 5],
            },
            &[x],
        )?,
        _ => b.op1(op.clone(), &[x])?,
    };
    Ok(Some(b.reshape(r, node.types()[0].shape.clone())?))
}

/// A dense conv with constant filters whose count is not a multiple of the block but close
/// above one (a classifier's 1000, a detector head's 255: at most 1/8 more) run blocked on
/// filters padded with zero ones, the padding's channels sliced off its plain result —
/// which has no blocked twin, so its consumers stay plain. Only when each output sums at
/// least 128 products: slicing the plain result out of the blocked one reads it with a stride
/// of 16 elements (about 0.65 ns an element here), more than a blocked conv of fewer products
/// saves over a plain one (a 16→72 1×1 conv at 56²: 200 µs padded, 87 µs plain).
fn padded(
    b: &mut Builder,
    node: &Node,
    inputs: &[Value],
    blocked: &HashMap<Value, Value>,
    block: i64,
) -> ir::Result<Option<Value>> {
    let Op::Conv { groups: 1, .. } = node.op() else {
        return Ok(None);
    };
    let (x, w) = (inputs[0], inputs[1]);
    let Op::Constant { value } = b.graph().node(w.node).op() else {
        return Ok(None);
    };
    let xt = b.ty(x);
    let image = xt.dtype == ir::DType::F32 && xt.shape.rank() == 4 && xt.shape.is_static();
    let (wt, block_u) = (&value.tensor, block as usize);
    let (Some(data), [o, c, kh, kw]) = (wt.as_slice::<f32>(), wt.shape()) else {
        return Ok(None);
    };
    let (o, per) = (*o, c * kh * kw);
    let up = o.div_ceil(block_u) * block_u;
    let small = per < 128;
    if !image || node.types().len() != 1 || o % block_u == 0 || (up - o) * 8 > o || small {
        return Ok(None);
    }
    let mut filters = data[..o * per].to_vec();
    filters.resize(up * per, 0.0);
    let filters = ir::Tensor::new(vec![up, *c, *kh, *kw], ir::Data::F32(filters))
        .expect("sized to the shape");
    let w = match &value.name {
        Some(name) => b.named_constant(&format!("{name}.padded"), filters)?,
        None => b.constant(filters)?,
    };
    let conv = blocked_conv(node.op(), block);
    let y = b.op1(conv, &[blocked.get(&x).copied().unwrap_or(x), w])?;
    let all = unblock(b, y, block)?;
    let mut limit = b.ty(all).shape.dims().to_vec();
    limit[1] = Dim::constant(o as i64);
    let slice = Op::Slice {
        start: vec![Dim::constant(0); 4],
        limit,
        stride: vec![1; 4],
    };
    Ok(Some(b.op1(slice, &[all])?))
}

/// The blocked value computing `node` (with its operands' new plain values `inputs`), when
/// it has one: a conv that blocks, or an op of blocked operands that keeps the layout.
fn blocked_form(
    b: &mut Builder,
    node: &Node,
    inputs: &[Value],
    blocked: &HashMap<Value, Value>,
    block: i64,
) -> ir::Result<Option<Value>> {
    let f32_image = |b: &Builder, v: Value| {
        let t = b.ty(v);
        t.dtype == ir::DType::F32
            && t.shape.rank() == 4
            && t.shape.is_static()
            && t.shape.dim(1).as_const().is_some_and(|c| c % block == 0)
    };
    if node.types().len() != 1 {
        return Ok(None);
    }
    let op = node.op();
    match op {
        Op::Conv { groups, .. } => {
            let (x, w) = (inputs[0], inputs[1]);
            let constant = matches!(b.graph().node(w.node).op(), Op::Constant { .. });
            let (xt, wt) = (b.ty(x), b.ty(w));
            let fits = constant
                && xt.dtype == ir::DType::F32
                && xt.shape.rank() == 4
                && xt.shape.is_static()
                && wt.shape.is_static();
            let [o, cg] = match wt.shape.dims() {
                [o, cg, _, _] if fits => [o, cg].map(|d| d.as_const().unwrap_or(0)),
                _ => return Ok(None),
            };
            let c = xt.shape.dim(1).as_const().unwrap_or(0);
            let depthwise = *groups > 1 && cg == 1 && o == *groups && c == o;
            let xb = blocked.get(&x).copied();
            let input = match (depthwise, xb) {
                // Depthwise convs vectorize over a blocked input's channels.
                (true, Some(xb)) if c % block == 0 => xb,
                // Dense convs read a blocked input where there is one, else the plain one.
                (false, xb) if *groups == 1 && o % block == 0 => xb.unwrap_or(x),
                _ => return Ok(None),
            };
            Ok(Some(b.op1(blocked_conv(op, block), &[input, w])?))
        }
        _ if op.is_elementwise() && matches!(op.kind(), ir::OpKind::Unary) => {
            match blocked.get(&inputs[0]) {
                Some(&x) => Ok(Some(b.op1(op.clone(), &[x])?)),
                None => Ok(None),
            }
        }
        _ if op.is_elementwise() && matches!(op.kind(), ir::OpKind::Binary) => {
            if !inputs.iter().any(|v| blocked.contains_key(v)) {
                return Ok(None);
            }
            let shape = b.ty(inputs[0]).shape.clone();
            let mut args = Vec::new();
            for &v in inputs {
                let a = match blocked.get(&v) {
                    Some(&x) => Some(x),
                    // A plain image beside a blocked one (a residual) is blocked for it.
                    None if f32_image(b, v) && b.ty(v).shape == shape => {
                        match per_channel(b, v, &shape, block)? {
                            Some(x) => Some(x),
                            None => Some(to_blocked(b, v, block)?),
                        }
                    }
                    None => per_channel(b, v, &shape, block)?,
                };
                let Some(a) = a else { return Ok(None) };
                args.push(a);
            }
            Ok(Some(b.op1(op.clone(), &args)?))
        }
        Op::ReduceWindow {
            kind,
            window,
            stride,
            dilation,
            pad_low,
            pad_high,
        } => {
            let Some(&x) = blocked.get(&inputs[0]) else {
                return Ok(None);
            };
            let lead = |v: &[i64], one: i64| v.len() == 4 && v[0] == one && v[1] == one;
            let trivial = lead(window, 1) && lead(stride, 1) && lead(dilation, 1);
            if !(trivial && lead(pad_low, 0) && lead(pad_high, 0)) {
                return Ok(None);
            }
            let five = |v: &[i64], last: i64| {
                let mut v = v.to_vec();
                v.push(last);
                v
            };
            let op = Op::ReduceWindow {
                kind: *kind,
                window: five(window, 1),
                stride: five(stride, 1),
                dilation: five(dilation, 1),
                pad_low: five(pad_low, 0),
                pad_high: five(pad_high, 0),
            };
            Ok(Some(b.op1(op, &[x])?))
        }
        Op::Concat { axis: 1 } => {
            let args: Option<Vec<Value>> = inputs.iter().map(|v| blocked.get(v).copied()).collect();
            match args {
                Some(args) => Ok(Some(b.op1(Op::Concat { axis: 1 }, &args)?)),
                None => Ok(None),
            }
        }
        _ => Ok(None),
    }
}

/// `conv_blocked` with conv `op`'s attributes and blocks of `block` channels.
fn blocked_conv(op: &Op, block: i64) -> Op {
    let Op::Conv {
        stride,
        dilation,
        pad_low,
        pad_high,
        groups,
    } = op
    else {
        unreachable!("called on convs")
    };
    Op::ConvBlocked {
        stride: stride.clone(),
        dilation: dilation.clone(),
        pad_low: pad_low.clone(),
        pad_high: pad_high.clone(),
        groups: *groups,
        block,
    }
}

/// `x` (`[N, C, H, W]`) as `[N, C/b, H, W, b]`.
fn to_blocked(b: &mut Builder, x: Value, block: i64) -> ir::Result<Value> {
    let d = b.ty(x).shape.dims().to_vec();
    let cb = d[1]
        .exact_div(&Dim::constant(block))
        .expect("checked multiple");
    let split = vec![
        d[0].clone(),
        cb,
        Dim::constant(block),
        d[2].clone(),
        d[3].clone(),
    ];
    let r = b.reshape(x, Shape::new(split))?;
    b.transpose(r, &[0, 1, 3, 4, 2])
}

/// Blocked `y` (`[N, C/b, H, W, b]`) as `[N, C, H, W]`.
fn unblock(b: &mut Builder, y: Value, block: i64) -> ir::Result<Value> {
    let d = b.ty(y).shape.dims().to_vec();
    let t = b.transpose(y, &[0, 1, 4, 2, 3])?;
    let c = d[1]
        .mul(&Dim::constant(block))
        .expect("static channel counts");
    b.reshape(
        t,
        Shape::new(vec![d[0].clone(), c, d[2].clone(), d[3].clone()]),
    )
}

/// The blocked form of an elementwise operand `v` of image shape `shape` that is a
/// broadcast of one value per channel (or of a scalar): the same broadcast of the channel
/// values laid out `[1, C/b, 1, 1, b]`. `None` for any other operand.
fn per_channel(b: &mut Builder, v: Value, shape: &Shape, block: i64) -> ir::Result<Option<Value>> {
    let Op::Broadcast { dims, .. } = b.graph().node(v.node).op().clone() else {
        return Ok(None);
    };
    let src = b.graph().node(v.node).inputs()[0];
    let st = b.ty(src).shape.clone();
    let c = shape.dim(1).clone();
    // Every source axis that is not 1 must land on the channel axis, with C elements.
    let mut channels = false;
    for (i, d) in st.dims().iter().enumerate() {
        if d.as_const() == Some(1) {
            continue;
        }
        if dims[i] != 1 || *d != c {
            return Ok(None);
        }
        channels = true;
    }
    let d = shape.dims();
    let cb = d[1]
        .exact_div(&Dim::constant(block))
        .expect("checked multiple");
    let target = Shape::new(vec![
        d[0].clone(),
        cb.clone(),
        d[2].clone(),
        d[3].clone(),
        Dim::constant(block),
    ]);
    let one = Dim::constant(1);
    if !channels {
        let s = b.reshape(src, Shape::new(vec![]))?;
        return Ok(Some(b.op1(
            Op::Broadcast {
                dims: vec![],
                shape: target,
            },
            &[s],
        )?));
    }
    let per = Shape::new(vec![
        one.clone(),
        cb,
        one.clone(),
        one,
        Dim::constant(block),
    ]);
    let s = b.reshape(src, per)?;
    Ok(Some(b.op1(
        Op::Broadcast {
            dims: vec![0, 1, 2, 3, 4],
            shape: target,
        },
        &[s],
    )?))
}
