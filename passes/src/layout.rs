//! The channel-blocked image layout (NCHWc): 2-D f32 convs with constant filters become
//! `conv_blocked`, whose results are `[N, ⌈C/16⌉, H, W, 16]` values — dense ones from a
//! blocked input where there is one (from the plain image otherwise: a first conv's three
//! channels), depthwise ones from blocked inputs or a quantized conv's result (blocked for
//! them: `qconv2d` stores blocks as cheaply as planes) — and the work between such convs follows
//! them into the blocked layout: elementwise ops (with per-channel or scalar broadcast
//! operands, or a plain image beside a blocked one, a residual), pooling windows, channel
//! concats, and global reductions over the image (whose `[N, ⌈C/16⌉, 1, 1, 16]` result is
//! the blocked form of a squeeze-excite's `[N, C, 1, 1]`). Consecutive convs hand blocked
//! images to each other instead of converting per layer.
//!
//! Channel counts that are not a multiple of the block (MobileNets' 24, 40, 72, …) are
//! padded: the blocked value has ⌈C/16⌉ blocks, its last one partly *padding lanes*. A conv
//! gets zero filters for the padded output channels (its padded outputs are 0 for a finite
//! input) and filters of the real input channels only: no sum reads a padding lane, so what
//! one holds — a NaN where an infinity in a real channel met a zero filter — reaches no real
//! channel (where zero weights for the padding lanes had spread it to all of them). The pass
//! also knows the one value each padded value's lanes hold (0 after a conv; through each
//! elementwise op, that op evaluated on its operands' lane values, per-channel operands
//! padded with 0 — a divisor with 1) and keeps an op out of the blocked layout where that
//! value would not be finite (kept from before convs skipped the lanes; pools and
//! squeeze-excite results take the same lanes). A dense conv pads its filters only where it
//! pays: from a blocked input when at most a third of the padded count is padding, or, from
//! a plain one, when each output sums at least 128 products and at most 1/9 is padding (a
//! classifier's 1000).
//!
//! Each blocked value keeps a plain twin (`unblock`: a transpose, a reshape, and a slice
//! when padded) for consumers that need NCHW; twins nobody reads are dead code. A
//! deterministic rewrite rather than e-graph rules: every conv the routine takes is faster
//! blocked (see docs/decisions.md), so there is no choice for a cost model to make.

use std::collections::HashMap;

use ir::{Builder, DType, Dim, Node, Op, Shape, Value};

use crate::manager::{Evaluator, Options};
use crate::rebuild::{rebuild, Settings, R};

/// The largest magnitude a padding lane may hold: far enough from f32's overflow that the
/// kernels' own rounding of the ops that made it cannot reach infinity.
const FINITE: f32 = 1e30;

pub(crate) fn run(g: &ir::Graph, o: &Options) -> R<ir::Graph> {
    if o.target.block < 2 {
        return Ok(g.clone());
    }
    let mut l = Layout {
        block: o.target.block,
        evaluate: o.evaluate,
        blocked: HashMap::new(),
        lanes: HashMap::new(),
        pooled: HashMap::new(),
    };
    rebuild(g, &Settings::STRICT, &mut |b, node, inputs| {
        l.node(b, node, inputs).map_err(|e| e.to_string())
    })
}

/// The pass's state over one rebuild.
struct Layout<'a> {
    /// Channels per block.
    block: i64,
    /// Evaluates an op on padding lanes' values (without it padded values stop at convs).
    evaluate: Option<Evaluator<'a>>,
    /// The blocked twin of each plain image of the new graph that has one.
    blocked: HashMap<Value, Value>,
    /// The value the padding lanes of each padded twin hold (given finite real channels).
    lanes: HashMap<Value, f32>,
    /// The `[N, ⌈C/b⌉, 1, 1, b]` twin of each global pool's `[N, C]` result.
    pooled: HashMap<Value, Value>,
}

/// A blocked value and, when padded, what its padding lanes hold.
type Blocked = (Value, Option<f32>);

impl Layout<'_> {
    /// `node` (with its operands' new values `inputs`) rewritten, or `None` to copy it.
    fn node(
        &mut self,
        b: &mut Builder,
        node: &Node,
        inputs: &[Value],
    ) -> ir::Result<Option<Vec<Value>>> {
        if let Some(y) = self.reduced(b, node, inputs)? {
            return Ok(Some(vec![y]));
        }
        let Some((y, lanes)) = self.blocked_form(b, node, inputs)? else {
            return Ok(None);
        };
        let c = channels(&node.types()[0].shape);
        let plain = unblock(b, y, self.block, c)?;
        if let Some(v) = lanes {
            self.lanes.insert(y, v);
        }
        self.blocked.insert(plain, y);
        Ok(Some(vec![plain]))
    }

    /// ⌈n/b⌉·b: `n` channels with their padding.
    fn up(&self, n: i64) -> i64 {
        (n + self.block - 1) / self.block * self.block
    }

    /// Whether an image of `shape` is padded when blocked.
    fn padded(&self, shape: &Shape) -> bool {
        shape.rank() == 4 && channels(shape) % self.block != 0
    }

    /// A reduction over the spatial axes of an image that has a blocked twin (a global pool),
    /// computed on the twin: `[N, ⌈C/b⌉, b]` is `[N, C]` in row-major order (padding at the
    /// end, sliced off), so the plain result needs no transpose. A pooling window's
    /// `[N, ⌈C/b⌉, 1, 1, b]` result is kept as the blocked form of the `[N, C, 1, 1]` a
    /// squeeze-excite block reshapes it to.
    fn reduced(
        &mut self,
        b: &mut Builder,
        node: &Node,
        inputs: &[Value],
    ) -> ir::Result<Option<Value>> {
        let op = node.op();
        let axes = match op {
            Op::ReduceSum { axes }
            | Op::ReduceMax { axes }
            | Op::ReduceMin { axes }
            | Op::ReduceProd { axes } => axes,
            _ => return Ok(None),
        };
        let Some(&x) = inputs.first().and_then(|v| self.blocked.get(v)) else {
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
        let (r, window) = match (kind, d[2].as_const(), d[3].as_const()) {
            (Some(kind), Some(h), Some(w)) => {
                let window = Op::ReduceWindow {
                    kind,
                    window: vec![1, 1, h, w, 1],
                    stride: vec![1; 5],
                    dilation: vec![1; 5],
                    pad_low: vec![0; 5],
                    pad_high: vec![0; 5],
                };
                (b.op1(window, &[x])?, Some(kind))
            }
            _ => (b.op1(op.clone(), &[x])?, None),
        };
        let out = node.types()[0].shape.clone();
        let c = out.dim(1).as_const().unwrap_or(0);
        let all = self.up(c);
        let plain = if all == c {
            b.reshape(r, out)?
        } else {
            let flat = b.reshape(r, Shape::new(vec![d[0].clone(), Dim::constant(all)]))?;
            slice_channels(b, flat, c)?
        };
        // The window's result is the twin of the pool reshaped to an image, where it is not
        // padded or its padding lanes' value is known.
        if let Some(kind) = window {
            match (
                all == c,
                self.lanes.get(&x).and_then(|&v| pooled_lane(kind, v)),
            ) {
                (true, _) => {}
                (false, Some(v)) => {
                    self.lanes.insert(r, v);
                }
                (false, None) => return Ok(Some(plain)),
            }
            self.pooled.insert(plain, r);
        }
        Ok(Some(plain))
    }

    /// The blocked value computing `node` (with its operands' new plain values `inputs`),
    /// when it has one: a conv that blocks, or an op of blocked operands that keeps the
    /// layout.
    fn blocked_form(
        &self,
        b: &mut Builder,
        node: &Node,
        inputs: &[Value],
    ) -> ir::Result<Option<Blocked>> {
        if node.types().len() != 1 {
            return Ok(None);
        }
        let padded = self.padded(&node.types()[0].shape);
        let op = node.op();
        match op {
            Op::Conv { .. } => {
                let y = self.conv(b, node, inputs)?;
                Ok(y.map(|y| (y, padded.then_some(0.0))))
            }
            _ if op.is_elementwise()
                && matches!(op.kind(), ir::OpKind::Unary | ir::OpKind::Binary) =>
            {
                self.elementwise(b, node, inputs, padded)
            }
            // A conversion (a quantizer's round trip through u8) keeps the layout; padding
            // lanes only when they hold 0, which every type converts to 0.
            Op::Cast { .. } => {
                let Some(&x) = self.blocked.get(&inputs[0]) else {
                    return Ok(None);
                };
                let lanes = match (padded, self.lanes.get(&x)) {
                    (false, _) => None,
                    (true, Some(0.0)) => Some(0.0),
                    (true, _) => return Ok(None),
                };
                Ok(Some((b.op1(op.clone(), &[x])?, lanes)))
            }
            Op::ReduceWindow {
                kind,
                window,
                stride,
                dilation,
                pad_low,
                pad_high,
            } => {
                let Some(&x) = self.blocked.get(&inputs[0]) else {
                    return Ok(None);
                };
                let lead = |v: &[i64], one: i64| v.len() == 4 && v[0] == one && v[1] == one;
                let trivial = lead(window, 1) && lead(stride, 1) && lead(dilation, 1);
                if !(trivial && lead(pad_low, 0) && lead(pad_high, 0)) {
                    return Ok(None);
                }
                let lanes = match padded {
                    false => None,
                    true => match self.lanes.get(&x).and_then(|&v| pooled_lane(*kind, v)) {
                        Some(v) => Some(v),
                        None => return Ok(None),
                    },
                };
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
                Ok(Some((b.op1(op, &[x])?, lanes)))
            }
            // Channel concats of whole blocks.
            Op::Concat { axis: 1 } => {
                let whole = |v: &Value| !self.padded(&b.ty(*v).shape);
                let args: Option<Vec<Value>> = inputs
                    .iter()
                    .map(|v| self.blocked.get(v).copied().filter(|_| whole(v)))
                    .collect();
                match args {
                    Some(args) => Ok(Some((b.op1(Op::Concat { axis: 1 }, &args)?, None))),
                    None => Ok(None),
                }
            }
            // A global pool's `[N, C]` as `[N, C, 1, 1]` is its window's blocked result.
            Op::Reshape { shape } => {
                let Some(&t) = self.pooled.get(&inputs[0]) else {
                    return Ok(None);
                };
                let it = b.ty(inputs[0]).shape.clone();
                let one = Some(1);
                let image = shape.rank() == 4
                    && shape.dims()[..2] == it.dims()[..]
                    && shape.dim(2).as_const() == one
                    && shape.dim(3).as_const() == one;
                Ok(image.then(|| (t, self.lanes.get(&t).copied())))
            }
            _ => Ok(None),
        }
    }

    /// A 2-D conv with constant filters as `conv_blocked`, when it is one the blocked layout
    /// takes: dense, or depthwise from a blocked input; filters padded with zeros to the
    /// padded channel count of its result (a dense conv's over the real input channels).
    fn conv(&self, b: &mut Builder, node: &Node, inputs: &[Value]) -> ir::Result<Option<Value>> {
        let Op::Conv { groups, .. } = node.op() else {
            return Ok(None);
        };
        let (x, w) = (inputs[0], inputs[1]);
        let constant = matches!(b.graph().node(w.node).op(), Op::Constant { .. });
        let (xt, wt) = (b.ty(x), b.ty(w));
        let fits = constant
            && xt.dtype == DType::F32
            && xt.shape.rank() == 4
            && xt.shape.is_static()
            && wt.shape.rank() == 4
            && wt.shape.is_static();
        if !fits {
            return Ok(None);
        }
        let [o, cg, kh, kw] = [0, 1, 2, 3].map(|i| wt.shape.dim(i).as_const().unwrap_or(0));
        let c = channels(&xt.shape);
        let xb = self.blocked.get(&x).copied();
        let (input, filters, groups) = if *groups > 1 && cg == 1 && o == *groups && c == o {
            // Depthwise convs vectorize over a blocked input's channels: one there is, or a
            // quantized conv's result (through elementwise steps), which its routine stores
            // blocked as cheaply as planar (the lowering's `qconv_blocked`).
            let xb = match xb {
                Some(xb) => xb,
                None if c % self.block == 0 && from_qconv(b.graph(), x) => {
                    to_blocked(b, x, self.block)?
                }
                None => return Ok(None),
            };
            (xb, [self.up(c), 1], self.up(c))
        } else if *groups == 1 {
            // Dense convs read a blocked input where there is one, else the plain one.
            let (all, per) = (self.up(o), c * kh * kw);
            let pays =
                all == o || xb.is_some() && (all - o) * 2 <= o || per >= 128 && (all - o) * 8 <= o;
            if !pays {
                return Ok(None);
            }
            // Filters of the real input channels: the sums never read a blocked input's
            // padding lanes (see `conv_blocked`).
            (xb.unwrap_or(x), [all, c], 1)
        } else {
            return Ok(None);
        };
        let w = if filters == [o, cg] {
            w
        } else {
            match padded_filters(b, w, filters)? {
                Some(w) => w,
                None => return Ok(None),
            }
        };
        Ok(Some(b.op1(
            blocked_conv(node.op(), self.block, groups),
            &[input, w],
        )?))
    }

    /// An elementwise op of which some operand has a blocked twin, on the twins: the other
    /// operands per-channel or scalar broadcasts, or plain images (a residual) blocked for it.
    fn elementwise(
        &self,
        b: &mut Builder,
        node: &Node,
        inputs: &[Value],
        padded: bool,
    ) -> ir::Result<Option<Blocked>> {
        if !inputs.iter().any(|v| self.blocked.contains_key(v)) {
            return Ok(None);
        }
        let op = node.op();
        let f32s = node.types()[0].dtype == DType::F32
            && inputs.iter().all(|&v| b.ty(v).dtype == DType::F32);
        if padded && !f32s {
            return Ok(None);
        }
        let shape = node.types()[0].shape.clone();
        let (mut args, mut lanes) = (Vec::new(), Vec::new());
        for (i, &v) in inputs.iter().enumerate() {
            // A divisor's padding is 1, any other operand's 0.
            let fill = if matches!(op, Op::Div) && i == 1 {
                1.0
            } else {
                0.0
            };
            let (a, lane) = match self.blocked.get(&v) {
                Some(&x) => (x, self.lanes.get(&x).copied()),
                None => match self.per_channel(b, v, &shape, fill)? {
                    Some(a) => a,
                    // A plain image beside a blocked one (a residual) is blocked for it.
                    None if f32_image(b, v) && b.ty(v).shape == shape => {
                        (to_blocked(b, v, self.block)?, Some(0.0))
                    }
                    None => return Ok(None),
                },
            };
            args.push(a);
            lanes.push(lane);
        }
        let lanes = match padded {
            false => None,
            true => {
                let known: Option<Vec<f32>> = lanes.into_iter().collect();
                match known.and_then(|l| self.lane(op, &l)) {
                    Some(v) => Some(v),
                    None => return Ok(None),
                }
            }
        };
        Ok(Some((b.op1(op.clone(), &args)?, lanes)))
    }

    /// What elementwise `op` makes of padding lanes holding `operands`, when the evaluator
    /// knows and it is finite (at most [`FINITE`]).
    fn lane(&self, op: &Op, operands: &[f32]) -> Option<f32> {
        let eval = self.evaluate?;
        let mut s = Builder::new("lane");
        let args = operands
            .iter()
            .map(|&x| s.scalar(f64::from(x), DType::F32))
            .collect::<ir::Result<Vec<_>>>()
            .ok()?;
        let y = s.op1(op.clone(), &args).ok()?;
        s.output("y", y).ok()?;
        let out = eval(&s.into_graph()).ok()?;
        let v = *out.first()?.as_slice::<f32>()?.first()?;
        (v.abs() <= FINITE).then_some(v)
    }

    /// The blocked form of an elementwise operand `v` of image shape `shape` that broadcasts
    /// one value per channel (per image and channel, or a scalar), and what its padding lanes
    /// hold: the blocked twin of the broadcast values where they have one (a squeeze-excite
    /// scale), else the values padded with `fill`. `None` for any other operand.
    fn per_channel(
        &self,
        b: &mut Builder,
        v: Value,
        shape: &Shape,
        fill: f32,
    ) -> ir::Result<Option<Blocked>> {
        let Op::Broadcast { dims, .. } = b.graph().node(v.node).op().clone() else {
            return Ok(None);
        };
        let src = b.graph().node(v.node).inputs()[0];
        let st = b.ty(src).shape.clone();
        let d = shape.dims();
        // Every source axis that is not 1 must land on the channel axis, with C elements, or
        // on the batch axis, with N.
        let (mut batch, mut chans) = (false, false);
        for (i, s) in st.dims().iter().enumerate() {
            if s.as_const() == Some(1) {
                continue;
            }
            match dims[i] {
                1 if *s == d[1] => chans = true,
                0 if *s == d[0] => batch = true,
                _ => return Ok(None),
            }
        }
        let block = self.block;
        let c = channels(shape);
        let cb = Dim::constant(self.up(c) / block);
        let target = Shape::new(vec![
            d[0].clone(),
            cb.clone(),
            d[2].clone(),
            d[3].clone(),
            Dim::constant(block),
        ]);
        if !chans && !batch {
            let lane = match b.graph().node(src.node).op() {
                Op::Constant { value } => value.tensor.as_slice::<f32>().map(|s| s[0]),
                _ => None,
            };
            let s = b.reshape(src, Shape::new(vec![]))?;
            let op = Op::Broadcast {
                dims: vec![],
                shape: target,
            };
            return Ok(Some((b.op1(op, &[s])?, lane)));
        }
        let all = [0, 1, 2, 3, 4].to_vec();
        if chans && st.rank() == 4 && dims == [0, 1, 2, 3] {
            if let Some(&t) = self.blocked.get(&src) {
                let op = Op::Broadcast {
                    dims: all,
                    shape: target,
                };
                return Ok(Some((b.op1(op, &[t])?, self.lanes.get(&t).copied())));
            }
        }
        let one = Dim::constant(1);
        let n = if batch { d[0].clone() } else { one.clone() };
        let (cb, lanes) = if chans {
            (cb, Dim::constant(block))
        } else {
            (one.clone(), one.clone())
        };
        let per = Shape::new(vec![n.clone(), cb, one.clone(), one, lanes]);
        let s = if chans && c % block != 0 {
            let flat = b.reshape(src, Shape::new(vec![n, Dim::constant(c)]))?;
            let p = pad_channels(b, flat, self.up(c), fill)?;
            b.reshape(p, per)?
        } else {
            b.reshape(src, per)?
        };
        let op = Op::Broadcast {
            dims: all,
            shape: target,
        };
        // Per-image values differ between images: no one value for the padding.
        let lane = (chans && !batch).then_some(fill);
        Ok(Some((b.op1(op, &[s])?, lane)))
    }
}

/// The channel count of a static image shape (0 when it has none).
fn channels(shape: &Shape) -> i64 {
    match shape.rank() {
        0 | 1 => 0,
        _ => shape.dim(1).as_const().unwrap_or(0),
    }
}

/// An f32 image of static shape.
fn f32_image(b: &Builder, v: Value) -> bool {
    let t = b.ty(v);
    t.dtype == DType::F32 && t.shape.rank() == 4 && t.shape.is_static()
}

/// Constant filters `w` (`[O, C, kh, kw]`, f32) padded with zeros to `[o, c, kh, kw]`.
fn padded_filters(b: &mut Builder, w: Value, [o2, c2]: [i64; 2]) -> ir::Result<Option<Value>> {
    let Op::Constant { value } = b.graph().node(w.node).op() else {
        return Ok(None);
    };
    let t = &value.tensor;
    let (Some(data), &[o, c, kh, kw]) = (t.as_slice::<f32>(), t.shape()) else {
        return Ok(None);
    };
    let (o2, c2, k) = (o2 as usize, c2 as usize, kh * kw);
    let mut out = vec![0.0f32; o2 * c2 * k];
    for i in 0..o {
        for j in 0..c {
            out[(i * c2 + j) * k..][..k].copy_from_slice(&data[(i * c + j) * k..][..k]);
        }
    }
    let name = value.name.clone();
    let t = ir::Tensor::new(vec![o2, c2, kh, kw], ir::Data::F32(out)).expect("sized to the shape");
    Ok(Some(match name {
        Some(name) => b.named_constant(&format!("{name}.padded"), t)?,
        None => b.constant(t)?,
    }))
}

/// `conv_blocked` with conv `op`'s attributes, `groups` groups and blocks of `block`
/// channels.
fn blocked_conv(op: &Op, block: i64, groups: i64) -> Op {
    let Op::Conv {
        stride,
        dilation,
        pad_low,
        pad_high,
        ..
    } = op
    else {
        unreachable!("called on convs")
    };
    Op::ConvBlocked {
        stride: stride.clone(),
        dilation: dilation.clone(),
        pad_low: pad_low.clone(),
        pad_high: pad_high.clone(),
        groups,
        block,
    }
}

/// Whether image `x` is a 2-D quantized conv's result of one group over a u8 image (what
/// `qconv2d` computes), through elementwise steps of one image each (their other operands
/// constants seen through broadcasts and reshapes, or smaller: an epilogue's). The fuse
/// pass asks the same of what such a blocking reads, to leave it with the conv.
pub(crate) fn from_qconv(g: &ir::Graph, mut x: Value) -> bool {
    loop {
        let node = g.node(x.node);
        match node.op() {
            Op::Qconv { groups: 1, .. } => {
                let image = g.value_type(node.inputs()[0]);
                return node.types()[0].shape.rank() == 4 && image.dtype == DType::U8;
            }
            op if op.is_elementwise() => {
                let image = &node.types()[0].shape;
                let mut images = node
                    .inputs()
                    .iter()
                    .filter(|v| g.value_type(**v).shape == *image && !constant(g, **v));
                match (images.next(), images.next()) {
                    (Some(&v), None) => x = v,
                    _ => return false,
                }
            }
            _ => return false,
        }
    }
}

/// Whether `v` is a constant, seen through broadcasts and reshapes.
fn constant(g: &ir::Graph, mut v: Value) -> bool {
    loop {
        match g.node(v.node).op() {
            Op::Constant { .. } => return true,
            Op::Broadcast { .. } | Op::Reshape { .. } => v = g.node(v.node).inputs()[0],
            _ => return false,
        }
    }
}

/// `x` (`[N, C, H, W]`, static) as `[N, ⌈C/b⌉, H, W, b]`, padded with zeros.
fn to_blocked(b: &mut Builder, x: Value, block: i64) -> ir::Result<Value> {
    let d = b.ty(x).shape.dims().to_vec();
    let c = d[1].as_const().expect("static images");
    let cb = (c + block - 1) / block;
    let x = pad_channels(b, x, cb * block, 0.0)?;
    let split = vec![
        d[0].clone(),
        Dim::constant(cb),
        Dim::constant(block),
        d[2].clone(),
        d[3].clone(),
    ];
    let r = b.reshape(x, Shape::new(split))?;
    b.transpose(r, &[0, 1, 3, 4, 2])
}

/// Blocked `y` (`[N, ⌈C/b⌉, H, W, b]`) as `[N, C, H, W]`.
fn unblock(b: &mut Builder, y: Value, block: i64, c: i64) -> ir::Result<Value> {
    let d = b.ty(y).shape.dims().to_vec();
    // A 1×1 image's blocks are its channels in order already.
    let t = if d[2].as_const() == Some(1) && d[3].as_const() == Some(1) {
        y
    } else {
        b.transpose(y, &[0, 1, 4, 2, 3])?
    };
    let all = d[1]
        .mul(&Dim::constant(block))
        .expect("static channel counts");
    let plain = b.reshape(
        t,
        Shape::new(vec![d[0].clone(), all.clone(), d[2].clone(), d[3].clone()]),
    )?;
    match all.as_const() == Some(c) {
        true => Ok(plain),
        false => slice_channels(b, plain, c),
    }
}

/// `x` (f32, channels on axis 1) with its channels padded to `all` with `fill`.
fn pad_channels(b: &mut Builder, x: Value, all: i64, fill: f32) -> ir::Result<Value> {
    let t = b.ty(x).shape.clone();
    let c = channels(&t);
    if c == all {
        return Ok(x);
    }
    let mut high = vec![0; t.rank()];
    high[1] = all - c;
    let pad = Op::Pad {
        low: vec![0; t.rank()],
        high,
        mode: ir::PadMode::Constant,
    };
    let f = b.scalar(f64::from(fill), DType::F32)?;
    b.op1(pad, &[x, f])
}

/// `x`'s first `c` channels (axis 1): a padded value's real ones.
fn slice_channels(b: &mut Builder, x: Value, c: i64) -> ir::Result<Value> {
    let mut limit = b.ty(x).shape.dims().to_vec();
    limit[1] = Dim::constant(c);
    let slice = Op::Slice {
        start: vec![Dim::constant(0); limit.len()],
        stride: vec![1; limit.len()],
        limit,
    };
    b.op1(slice, &[x])
}

/// What the padding lanes of a pool of `kind` hold, over lanes that each hold `v`, whatever
/// the window's count (it varies at the borders): maxima and minima of equal lanes are that
/// lane; sums only of zeros, products only of zeros and ones.
fn pooled_lane(kind: ir::ReduceKind, v: f32) -> Option<f32> {
    match kind {
        ir::ReduceKind::Max | ir::ReduceKind::Min => Some(v),
        ir::ReduceKind::Sum => (v == 0.0).then_some(0.0),
        ir::ReduceKind::Prod => (v == 0.0 || v == 1.0).then_some(v),
    }
}
