//! Neural-network operators: contractions, convolutions, pooling, normalizations, the softmax
//! family, einsum and top-k, all decomposed into IR primitives.

use crate::onnx::OpError;

use ir::{Builder, DType, Dim, Op, PadMode, ReduceKind, Shape, Value};

use super::{axes, axis, one, product, s, Res};
use crate::onnx::import::{Ctx, Node};

type R<T> = Result<T, OpError>;

pub fn matmul(ctx: &mut Ctx, n: &Node) -> Res {
    let (a, b) = (ctx.ir(n.req(0)?)?, ctx.ir(n.req(1)?)?);
    let y = ctx.b.matmul(a, b)?;
    one(ctx, y)
}

pub fn gemm(ctx: &mut Ctx, n: &Node) -> Res {
    let mut a = ctx.ir(n.req(0)?)?;
    let mut b = ctx.ir(n.req(1)?)?;
    let c = n.input(2).map(|c| ctx.ir(c)).transpose()?;
    let (alpha, beta) = (
        n.float_or("alpha", 1.0)? as f64,
        n.float_or("beta", 1.0)? as f64,
    );
    let bl = &mut ctx.b;
    if n.int_or("transA", 0)? != 0 {
        a = bl.transpose(a, &[1, 0])?;
    }
    if n.int_or("transB", 0)? != 0 {
        b = bl.transpose(b, &[1, 0])?;
    }
    let mut y = bl.matmul(a, b)?;
    if alpha != 1.0 {
        y = bl.scale(y, alpha)?;
    }
    if let Some(c) = c {
        let c = if beta != 1.0 { bl.scale(c, beta)? } else { c };
        y = bl.add(y, c)?;
    }
    one(ctx, y)
}

/// Per-axis padding (low, high) for `auto_pad`, explicit `pads`, or none.
struct Geometry {
    kernel: Vec<Dim>,
    strides: Vec<i64>,
    dilations: Vec<i64>,
    low: Vec<i64>,
    high: Vec<i64>,
}

fn geometry(n: &Node, input: &[Dim], kernel: Vec<Dim>, transpose: bool) -> R<Geometry> {
    let sp = kernel.len();
    let strides = n.ints_len("strides", sp, 1)?;
    let dilations = n.ints_len("dilations", sp, 1)?;
    if strides
        .iter()
        .chain(&dilations)
        .any(|&v| !(1..=1 << 24).contains(&v))
    {
        return Err(format!(
            "strides {strides:?} and dilations {dilations:?} must lie in 1..=2^24"
        )
        .into());
    }
    let mut low = vec![0; sp];
    let mut high = vec![0; sp];
    match n.string_or("auto_pad", "NOTSET")?.as_str() {
        "NOTSET" => {
            if let Some(p) = n.ints("pads")? {
                if p.len() != 2 * sp || p.iter().any(|&v| !(0..=1 << 24).contains(&v)) {
                    return Err(format!("pads must be {} entries in 0..=2^24", 2 * sp).into());
                }
                low.copy_from_slice(&p[..sp]);
                high.copy_from_slice(&p[sp..]);
            }
        }
        "VALID" => {}
        mode @ ("SAME_UPPER" | "SAME_LOWER") if !transpose => {
            for i in 0..sp {
                let k = kernel[i]
                    .as_const()
                    .ok_or("SAME padding needs a static kernel")?;
                let span = (k - 1) * dilations[i] + 1;
                let total = if strides[i] == 1 {
                    span - 1
                } else {
                    let inp = input[i]
                        .as_const()
                        .ok_or("SAME padding with stride > 1 needs static input dims")?;
                    let out = (inp + strides[i] - 1) / strides[i];
                    ((out - 1) * strides[i] + span - inp).max(0)
                };
                let half = total / 2;
                (low[i], high[i]) = if mode == "SAME_UPPER" {
                    (half, total - half)
                } else {
                    (total - half, half)
                };
            }
        }
        mode @ ("SAME_UPPER" | "SAME_LOWER") => {
            // ConvTranspose: output = input * stride; padding is whatever makes that so.
            let outpad = n.ints_len("output_padding", sp, 0)?;
            for i in 0..sp {
                let k = kernel[i]
                    .as_const()
                    .ok_or("SAME padding needs a static kernel")?;
                let inp = input[i]
                    .as_const()
                    .ok_or("SAME padding needs static input dims")?;
                let total = (strides[i] * (inp - 1) + outpad[i] + (k - 1) * dilations[i] + 1
                    - inp * strides[i])
                    .max(0);
                let half = total / 2;
                (low[i], high[i]) = if mode == "SAME_UPPER" {
                    (half, total - half)
                } else {
                    (total - half, half)
                };
            }
        }
        m => return Err(format!("unknown auto_pad `{m}`").into()),
    }
    Ok(Geometry {
        kernel,
        strides,
        dilations,
        low,
        high,
    })
}

/// Reshapes a per-channel vector [C] to [1, C, 1, ...] for rank `rank`.
/// A conv's result `y` plus its optional per-channel `bias`.
fn plus_bias(b: &mut Builder, y: Value, bias: Option<Value>) -> R<Value> {
    let Some(bias) = bias else {
        return Ok(y);
    };
    let bias = per_channel(b, bias, b.rank(y))?;
    Ok(b.add(y, bias)?)
}

fn per_channel(b: &mut Builder, v: Value, rank: usize) -> R<Value> {
    if rank < 2 {
        return Err(format!(
            "a per-channel parameter needs an input of rank at least 2, got {rank}"
        )
        .into());
    }
    let c = b.shape(v).numel()?;
    let mut dims = vec![Dim::Const(1); rank];
    dims[1] = c;
    b.reshape(v, Shape::new(dims)).map_err(s)
}

pub fn conv(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let w = ctx.ir(n.req(1)?)?;
    let bias = n.input(2).map(|b| ctx.ir(b)).transpose()?;
    let b = &mut ctx.b;
    let xs = b.shape(x).dims().to_vec();
    let ws = b.shape(w).dims().to_vec();
    let op = conv_op(n, &xs, &ws)?;
    let y = b.op1(op, &[x, w])?;
    let y = plus_bias(b, y, bias)?;
    one(ctx, y)
}

/// The convolution a Conv-like node (Conv, ConvInteger, QLinearConv) describes, given its input
/// and weight dims.
pub fn conv_op(n: &Node, xs: &[Dim], ws: &[Dim]) -> R<Op> {
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(format!(
            "convolution needs input and weight of one rank, at least 3; got {} and {}",
            xs.len(),
            ws.len()
        )
        .into());
    }
    let g = geometry(n, &xs[2..], ws[2..].to_vec(), false)?;
    Ok(Op::Conv {
        stride: g.strides,
        dilation: g.dilations,
        pad_low: g.low,
        pad_high: g.high,
        groups: n.int_or("group", 1)?,
    })
}

/// Reverses `x` along `axes`.
fn flip(b: &mut Builder, x: Value, axes: &[usize]) -> R<Value> {
    let dims = b.shape(x).dims().to_vec();
    let r = dims.len();
    let mut start = vec![Dim::Const(0); r];
    let mut limit = dims.clone();
    let mut stride = vec![1; r];
    for &a in axes {
        start[a] = dims[a].sub(&Dim::Const(1))?;
        limit[a] = Dim::Const(-1);
        stride[a] = -1;
    }
    b.op1(
        Op::Slice {
            start,
            limit,
            stride,
        },
        &[x],
    )
    .map_err(s)
}

/// Inserts `s - 1` zeros between elements along `axis`.
fn dilate(b: &mut Builder, x: Value, axis: usize, stride: i64) -> R<Value> {
    if stride == 1 {
        return Ok(x);
    }
    let dims = b.shape(x).dims().to_vec();
    let mut with_unit = dims.clone();
    with_unit.insert(axis + 1, Dim::Const(1));
    let y = b.reshape(x, Shape::new(with_unit.clone()))?;
    let zero = b.scalar(0.0, b.dtype(x))?;
    let mut high = vec![0; with_unit.len()];
    high[axis + 1] = stride - 1;
    let y = b.op1(
        Op::Pad {
            low: vec![0; with_unit.len()],
            high,
            mode: PadMode::Constant,
        },
        &[y, zero],
    )?;
    let mut flat = dims.clone();
    flat[axis] = dims[axis].mul(&Dim::Const(stride))?;
    let y = b.reshape(y, Shape::new(flat.clone()))?;
    let mut limit = flat;
    limit[axis] = dims[axis]
        .sub(&Dim::Const(1))
        .and_then(|d| d.mul(&Dim::Const(stride)))
        .and_then(|d| d.add(&Dim::Const(1)))?;
    let r = limit.len();
    b.op1(
        Op::Slice {
            start: vec![Dim::Const(0); r],
            limit,
            stride: vec![1; r],
        },
        &[y],
    )
    .map_err(s)
}

pub fn conv_transpose(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let w = ctx.ir(n.req(1)?)?;
    let bias = n.input(2).map(|b| ctx.ir(b)).transpose()?;
    let b = &mut ctx.b;
    let xs = b.shape(x).dims().to_vec();
    let ws = b.shape(w).dims().to_vec();
    let r = xs.len();
    if r < 3 || ws.len() != r {
        return Err("ConvTranspose needs input and weight of one rank, at least 3".into());
    }
    let sp = r - 2;
    let groups = n.int_or("group", 1)?;
    let mut g = geometry(n, &xs[2..], ws[2..].to_vec(), true)?;
    let outpad = n.ints_len("output_padding", sp, 0)?;
    if let Some(os) = n.ints("output_shape")? {
        // Padding that produces the requested output shape.
        if os.len() < sp {
            return Err(format!("output_shape has {} entries, expected {sp}", os.len()).into());
        }
        let os = &os[os.len() - sp..];
        for i in 0..sp {
            let k = g.kernel[i]
                .as_const()
                .ok_or("output_shape needs a static kernel")?;
            let inp = xs[i + 2]
                .as_const()
                .ok_or("output_shape needs static input dims")?;
            let total = g.strides[i] * (inp - 1) + outpad[i] + (k - 1) * g.dilations[i] + 1 - os[i];
            let half = total / 2;
            if n.string_or("auto_pad", "NOTSET")? == "SAME_LOWER" {
                (g.low[i], g.high[i]) = (total - half, half);
            } else {
                (g.low[i], g.high[i]) = (half, total - half);
            }
        }
    }
    if let Some(y) = unfolded_transpose(b, (x, w), &g, &outpad, groups)? {
        let y = plus_bias(b, y, bias)?;
        return one(ctx, y);
    }
    // Weight [C, M/g, k...] -> [M, C/g, k...], spatially flipped.
    let c = ws[0].clone();
    let mg = ws[1].clone();
    let cg = c.floor_div(&Dim::Const(groups))?;
    let mut grouped = vec![Dim::Const(groups), cg.clone(), mg.clone()];
    grouped.extend(ws[2..].iter().cloned());
    let wt = b.reshape(w, Shape::new(grouped))?;
    let mut perm: Vec<i64> = vec![0, 2, 1];
    perm.extend(3..3 + sp as i64);
    let wt = b.transpose(wt, &perm)?;
    let mut merged = vec![mg.mul(&Dim::Const(groups))?, cg];
    merged.extend(ws[2..].iter().cloned());
    let wt = b.reshape(wt, Shape::new(merged))?;
    let wt = flip(b, wt, &(2..r).collect::<Vec<_>>())?;
    // Zero-stuff the input, pad so the flipped kernel sees the full overlap, convolve.
    let mut xin = x;
    for i in 0..sp {
        xin = dilate(b, xin, i + 2, g.strides[i])?;
    }
    let mut low = vec![0; r];
    let mut high = vec![0; r];
    for i in 0..sp {
        let k = g.kernel[i]
            .as_const()
            .ok_or("ConvTranspose needs a static kernel")?;
        let full = (k - 1) * g.dilations[i];
        low[i + 2] = full - g.low[i];
        high[i + 2] = full - g.high[i] + outpad[i];
    }
    let zero = b.scalar(0.0, b.dtype(x))?;
    let xin = b.op1(
        Op::Pad {
            low,
            high,
            mode: PadMode::Constant,
        },
        &[xin, zero],
    )?;
    let op = Op::Conv {
        stride: vec![1; sp],
        dilation: g.dilations,
        pad_low: vec![0; sp],
        pad_high: vec![0; sp],
        groups,
    };
    let y = b.op1(op, &[xin, wt])?;
    let y = plus_bias(b, y, bias)?;
    one(ctx, y)
}

/// A transposed conv whose windows do not overlap (kernel = stride, no dilation, one group,
/// no output padding: the 2×2 stride-2 upsampling of UNets and detection heads) as one
/// product and a rearrangement: every input pixel's channels times the weight `[C, M, k...]`
/// give its `k...` block of outputs, `y[n, m, i·k + a, ...] = Σ_c x[n, c, i, ...]·w[c, m, a,
/// ...]`, then the padding cut off. (The general form convolves a zero-stuffed input, with
/// `k^d` times the multiply-adds.) `None` where it does not apply.
fn unfolded_transpose(
    b: &mut Builder,
    (x, w): (Value, Value),
    g: &Geometry,
    outpad: &[i64],
    groups: i64,
) -> R<Option<Value>> {
    let xs = b.shape(x).dims().to_vec();
    let ws = b.shape(w).dims().to_vec();
    let sp = xs.len() - 2;
    let kernel: Option<Vec<i64>> = g.kernel.iter().map(|d| d.as_const()).collect();
    let Some(k) = kernel else {
        return Ok(None);
    };
    let applies = groups == 1
        && (0..sp).all(|i| k[i] == g.strides[i] && g.dilations[i] == 1 && outpad[i] == 0)
        && (g.low.iter().chain(&g.high).all(|&p| p == 0)
            || xs[2..].iter().all(|d| d.as_const().is_some()));
    if !applies {
        return Ok(None);
    }
    // [N, D..., M, k...]: the input's free axes, then the weight's.
    let y = b.op1(
        Op::Dot {
            lhs_batch: vec![],
            rhs_batch: vec![],
            lhs_contract: vec![1],
            rhs_contract: vec![0],
        },
        &[x, w],
    )?;
    // [N, M, D1, k1, D2, k2, ...], then [N, M, D1·k1, ...].
    let mut perm = vec![0, 1 + sp as i64];
    for i in 0..sp as i64 {
        perm.extend([1 + i, 2 + sp as i64 + i]);
    }
    let y = b.transpose(y, &perm)?;
    let mut dims = vec![xs[0].clone(), ws[1].clone()];
    for i in 0..sp {
        dims.push(xs[i + 2].mul(&Dim::Const(k[i]))?);
    }
    let y = b.reshape(y, Shape::new(dims.clone()))?;
    if g.low.iter().chain(&g.high).all(|&p| p == 0) {
        return Ok(Some(y));
    }
    // The padding cut from each end (static extents, checked above).
    let mut start = vec![Dim::Const(0); sp + 2];
    let mut limit = dims;
    for i in 0..sp {
        let full = limit[i + 2].as_const().unwrap_or(0);
        if g.low[i] + g.high[i] >= full {
            return Err(format!(
                "ConvTranspose's pads {} and {} leave nothing of its {full} outputs",
                g.low[i], g.high[i]
            )
            .into());
        }
        start[i + 2] = Dim::Const(g.low[i]);
        limit[i + 2] = Dim::Const(full - g.high[i]);
    }
    let y = b.op1(
        Op::Slice {
            start,
            limit,
            stride: vec![1; sp + 2],
        },
        &[y],
    )?;
    Ok(Some(y))
}

pub fn pool(ctx: &mut Ctx, n: &Node) -> Res {
    if n.op() == "MaxPool" && n.wants_output(1) {
        return Err("MaxPool's Indices output is not supported".into());
    }
    let x = ctx.ir(n.req(0)?)?;
    let b = &mut ctx.b;
    let xs = b.shape(x).dims().to_vec();
    let r = xs.len();
    if r < 3 {
        return Err("pooling needs rank at least 3".into());
    }
    let sp = r - 2;
    let kernel: Vec<Dim> = n
        .ints("kernel_shape")?
        .ok_or("missing attribute `kernel_shape`")?
        .into_iter()
        .map(Dim::Const)
        .collect();
    if kernel.len() != sp {
        return Err(format!("kernel_shape must have {sp} entries").into());
    }
    let g = geometry(n, &xs[2..], kernel, false)?;
    let k: Vec<i64> = g.kernel.iter().map(|d| d.as_const().unwrap_or(1)).collect();
    // ceil_mode: extra high padding so that floor division yields the ceiling, minus windows
    // that would start entirely in the padding.
    let mut extra = vec![0; sp];
    if n.int_or("ceil_mode", 0)? != 0 {
        for i in 0..sp {
            let inp = xs[i + 2]
                .as_const()
                .ok_or("ceil_mode needs static input dims")?;
            let span = (k[i] - 1) * g.dilations[i] + 1;
            let room = inp + g.low[i] + g.high[i] - span;
            let mut out = (room + g.strides[i] - 1).div_euclid(g.strides[i]) + 1;
            if (out - 1) * g.strides[i] >= inp + g.low[i] {
                out -= 1;
            }
            extra[i] = ((out - 1) * g.strides[i] + span - (inp + g.low[i] + g.high[i])).max(0);
        }
    }
    let full = |v: &[i64], fill: i64| -> Vec<i64> {
        let mut o = vec![fill; 2];
        o.extend_from_slice(v);
        o
    };
    let high_all: Vec<i64> = g.high.iter().zip(&extra).map(|(h, e)| h + e).collect();
    let window = |kind, low: &[i64], high: &[i64]| Op::ReduceWindow {
        kind,
        window: full(&k, 1),
        stride: full(&g.strides, 1),
        dilation: full(&g.dilations, 1),
        pad_low: full(low, 0),
        pad_high: full(high, 0),
    };
    let y = match n.op() {
        "MaxPool" => b.op1(window(ReduceKind::Max, &g.low, &high_all), &[x])?,
        "LpPool" => {
            let p = n.int_or("p", 2)? as f64;
            let ax = b.unary(Op::Abs, x)?;
            let pv = b.scalar_like(p, ax)?;
            let xp = b.pow(ax, pv)?;
            let sum = b.op1(window(ReduceKind::Sum, &g.low, &high_all), &[xp])?;
            let inv = b.scalar_like(1.0 / p, sum)?;
            b.pow(sum, inv)?
        }
        _ => {
            // Average: window sums over the divisor, which counts real elements (and, with
            // count_include_pad, the explicit padding but never the ceil_mode extension).
            let sum = b.op1(window(ReduceKind::Sum, &g.low, &high_all), &[x])?;
            let one = b.scalar(1.0, b.dtype(x))?;
            // The divisor varies over the spatial axes only: counted on one plane (a constant
            // that folds, where the plane is static) and broadcast over batch and channels.
            let mut plane = b.shape(x).dims().to_vec();
            for d in plane.iter_mut().take(2) {
                *d = Dim::Const(1);
            }
            let ones = b.broadcast_to(one, &Shape::new(plane))?;
            let count = if n.int_or("count_include_pad", 0)? != 0 {
                let onev = b.scalar(1.0, b.dtype(x))?;
                let padded = b.op1(
                    Op::Pad {
                        low: full(&g.low, 0),
                        high: full(&g.high, 0),
                        mode: PadMode::Constant,
                    },
                    &[ones, onev],
                )?;
                b.op1(window(ReduceKind::Sum, &vec![0; sp], &extra), &[padded])?
            } else {
                b.op1(window(ReduceKind::Sum, &g.low, &high_all), &[ones])?
            };
            let shape = b.shape(sum).clone();
            let count = b.broadcast_to(count, &shape)?;
            b.div(sum, count)?
        }
    };
    one(ctx, y)
}

pub fn global_pool(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let r = ctx.b.rank(x);
    let ax: Vec<i64> = (2..r as i64).collect();
    let b = &mut ctx.b;
    let y = match n.op() {
        "GlobalMaxPool" => b.reduce_max(x, &ax, true),
        "GlobalLpPool" => (|| {
            let p = n.int_or("p", 2).unwrap_or(2) as f64;
            let a = b.unary(Op::Abs, x)?;
            let pv = b.scalar_like(p, a)?;
            let xp = b.pow(a, pv)?;
            let t = b.reduce_sum(xp, &ax, true)?;
            let inv = b.scalar_like(1.0 / p, t)?;
            b.pow(t, inv)
        })(),
        _ => b.reduce_mean(x, &ax, true),
    }?;
    one(ctx, y)
}

/// (x - mean) / sqrt(var + eps) over `axes` (kept as size 1), var the population variance.
fn normalize(b: &mut Builder, x: Value, axes: &[i64], eps: f64) -> R<(Value, Value, Value)> {
    let mean = b.reduce_mean(x, axes, true)?;
    let d = b.sub(x, mean)?;
    let sq = b.mul(d, d)?;
    let var = b.reduce_mean(sq, axes, true)?;
    let e = b.scalar(eps, b.dtype(x))?;
    let ve = b.add(var, e)?;
    let inv = b.unary(Op::Rsqrt, ve)?;
    let y = b.mul(d, inv)?;
    Ok((y, mean, inv))
}

pub fn batch_norm(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let names = [n.req(1)?, n.req(2)?, n.req(3)?, n.req(4)?];
    let [scale, bias, mean, var] = names.map(|m| ctx.ir(m));
    let (scale, bias, mean, var) = (scale?, bias?, mean?, var?);
    let eps = n.float_or("epsilon", 1e-5)? as f64;
    let training = n.int_or("training_mode", 0)? != 0;
    let b = &mut ctx.b;
    let r = b.rank(x);
    let (scale, bias) = (per_channel(b, scale, r)?, per_channel(b, bias, r)?);
    if training {
        let ax: Vec<i64> = std::iter::once(0).chain(2..r as i64).collect();
        let (y, bmean, inv) = normalize(b, x, &ax, eps)?;
        let y = b.mul(y, scale)?;
        let y = b.add(y, bias)?;
        let momentum = n.float_or("momentum", 0.9)? as f64;
        let bm = b.reshape(bmean, b.shape(mean).clone())?;
        // Running variance uses the population variance of the batch.
        let e = b.scalar(eps, b.dtype(x))?;
        let inv2 = b.mul(inv, inv)?;
        let onev = b.scalar_like(1.0, inv2)?;
        let bv = b.div(onev, inv2)?;
        let bv = b.sub(bv, e)?;
        let bv = b.reshape(bv, b.shape(var).clone())?;
        let mix = |b: &mut Builder, run: Value, cur: Value| -> R<Value> {
            let a = b.scale(run, momentum)?;
            let c = b.scale(cur, 1.0 - momentum)?;
            b.add(a, c).map_err(s)
        };
        let rm = mix(b, mean, bm)?;
        let rv = mix(b, var, bv)?;
        return Ok(vec![ctx.v(y), ctx.v(rm), ctx.v(rv)]);
    }
    // Inference: y = x·a + c with a = scale / sqrt(var + eps) and c = bias - mean·a, per
    // channel — two operations per element (as onnxruntime folds it), and with constant
    // statistics `a` and `c` fold to constants at compile time.
    let mean = per_channel(b, mean, r)?;
    let var = per_channel(b, var, r)?;
    let e = b.scalar(eps, b.dtype(x))?;
    let ve = b.add(var, e)?;
    let inv = b.unary(Op::Rsqrt, ve)?;
    let a = b.mul(inv, scale)?;
    let ma = b.mul(mean, a)?;
    let c = b.sub(bias, ma)?;
    let y = b.mul(x, a)?;
    let y = b.add(y, c)?;
    one(ctx, y)
}

pub fn instance_norm(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let scale = ctx.ir(n.req(1)?)?;
    let bias = ctx.ir(n.req(2)?)?;
    let eps = n.float_or("epsilon", 1e-5)? as f64;
    let b = &mut ctx.b;
    let r = b.rank(x);
    let ax: Vec<i64> = (2..r as i64).collect();
    let (y, _, _) = normalize(b, x, &ax, eps)?;
    let scale = per_channel(b, scale, r)?;
    let bias = per_channel(b, bias, r)?;
    let y = b.mul(y, scale)?;
    let y = b.add(y, bias)?;
    one(ctx, y)
}

/// The compute dtype for normalizations: f32 (or f64) for low-precision inputs.
fn stash(b: &mut Builder, x: Value, n: &Node) -> R<(Value, DType)> {
    let orig = b.dtype(x);
    let want = match n.int_or("stash_type", 1)? {
        11 => DType::F64,
        _ if orig == DType::F64 => DType::F64,
        _ => DType::F32,
    };
    Ok((b.cast(x, want)?, orig))
}

pub fn layer_norm(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let scale = ctx.ir(n.req(1)?)?;
    let bias = n.input(2).map(|b| ctx.ir(b)).transpose()?;
    let eps = n.float_or("epsilon", 1e-5)? as f64;
    let b = &mut ctx.b;
    let r = b.rank(x);
    let a = axis(n.int_or("axis", -1)?, r)?;
    let ax: Vec<i64> = (a as i64..r as i64).collect();
    let (xc, orig) = stash(b, x, n)?;
    let (y, mean, inv) = normalize(b, xc, &ax, eps)?;
    let y = b.cast(y, orig)?;
    let y = b.mul(y, scale)?;
    let y = match bias {
        Some(bias) => b.add(y, bias)?,
        None => y,
    };
    Ok(vec![ctx.v(y), ctx.v(mean), ctx.v(inv)])
}

pub fn group_norm(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let scale = ctx.ir(n.req(1)?)?;
    let bias = ctx.ir(n.req(2)?)?;
    let eps = n.float_or("epsilon", 1e-5)? as f64;
    let groups = n
        .int("num_groups")?
        .ok_or("missing attribute `num_groups`")?;
    let b = &mut ctx.b;
    super::rank_at_least(b, x, 2, "input")?;
    let dims = b.shape(x).dims().to_vec();
    let r = dims.len();
    let (xc, orig) = stash(b, x, n)?;
    let g = Dim::Const(groups);
    let per = dims[1].floor_div(&g)?;
    let rest = product(&dims[2..])?;
    let grouped = b.reshape(
        xc,
        Shape::new(vec![dims[0].clone(), g.clone(), per.mul(&rest)?]),
    )?;
    let (y, _, _) = normalize(b, grouped, &[2], eps)?;
    let y = b.reshape(y, Shape::new(dims.clone()))?;
    let y = b.cast(y, orig)?;
    // Opset 18 scales per group, opset 21 per channel.
    let (scale, bias) = if b.shape(scale).dims() == [g.clone()] && per != Dim::Const(1) {
        let expand = |b: &mut Builder, v: Value| -> R<Value> {
            let v = b.reshape(v, Shape::new(vec![g.clone(), Dim::Const(1)]))?;
            let v = b.broadcast_to(v, &Shape::new(vec![g.clone(), per.clone()]))?;
            b.reshape(v, Shape::new(vec![dims[1].clone()])).map_err(s)
        };
        (expand(b, scale)?, expand(b, bias)?)
    } else {
        (scale, bias)
    };
    let scale = per_channel(b, scale, r)?;
    let bias = per_channel(b, bias, r)?;
    let y = b.mul(y, scale)?;
    let y = b.add(y, bias)?;
    one(ctx, y)
}

pub fn rms_norm(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let scale = ctx.ir(n.req(1)?)?;
    let eps = n.float_or("epsilon", 1e-5)? as f64;
    let b = &mut ctx.b;
    let r = b.rank(x);
    let a = axis(n.int_or("axis", -1)?, r)?;
    let ax: Vec<i64> = (a as i64..r as i64).collect();
    let (xc, orig) = stash(b, x, n)?;
    let sq = b.mul(xc, xc)?;
    let ms = b.reduce_mean(sq, &ax, true)?;
    let e = b.scalar(eps, b.dtype(xc))?;
    let ms = b.add(ms, e)?;
    let inv = b.unary(Op::Rsqrt, ms)?;
    let y = b.mul(xc, inv)?;
    let y = b.cast(y, orig)?;
    let y = b.mul(y, scale)?;
    one(ctx, y)
}

pub fn lp_norm(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let b = &mut ctx.b;
    let a = axis(n.int_or("axis", -1)?, b.rank(x))? as i64;
    let norm = match n.int_or("p", 2)? {
        1 => b
            .unary(Op::Abs, x)
            .and_then(|v| b.reduce_sum(v, &[a], true)),
        2 => b
            .mul(x, x)
            .and_then(|v| b.reduce_sum(v, &[a], true))
            .and_then(|v| b.sqrt(v)),
        p => return Err(format!("p must be 1 or 2, got {p}").into()),
    }?;
    // A zero norm gives zeros, not NaN.
    let zero = b.scalar_like(0.0, norm)?;
    let onev = b.scalar_like(1.0, norm)?;
    let is0 = b.op1(Op::Eq, &[norm, zero])?;
    let norm = b.op1(Op::Select, &[is0, onev, norm])?;
    let y = b.div(x, norm)?;
    one(ctx, y)
}

pub fn mean_variance_norm(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let b = &mut ctx.b;
    let r = b.rank(x);
    let ax = n.ints("axes")?.unwrap_or_else(|| vec![0, 2, 3]);
    let ax: Vec<i64> = axes(&ax, r)?.into_iter().map(|a| a as i64).collect();
    let mean = b.reduce_mean(x, &ax, true)?;
    let d = b.sub(x, mean)?;
    let sq = b.mul(d, d)?;
    let var = b.reduce_mean(sq, &ax, true)?;
    let sd = b.sqrt(var)?;
    let e = b.scalar_like(1e-9, sd)?;
    let sd = b.add(sd, e)?;
    let y = b.div(d, sd)?;
    one(ctx, y)
}

/// Softmax, LogSoftmax or Hardmax of `x` along one axis.
fn softmax_along(b: &mut Builder, op: &str, x: Value, a: i64) -> R<Value> {
    match op {
        "Hardmax" => {
            let am = b.op1(
                Op::ArgMax {
                    axis: a,
                    last: false,
                },
                &[x],
            )?;
            let shape = b.shape(x).clone();
            let r = shape.rank() as i64;
            let pos = b.op1(
                Op::Iota {
                    axis: a,
                    ty: ir::TensorType::new(DType::I64, shape.clone()),
                },
                &[],
            )?;
            let dims: Vec<i64> = (0..r).filter(|&i| i != a).collect();
            let am = b.op1(Op::Broadcast { dims, shape }, &[am])?;
            let hit = b.op1(Op::Eq, &[pos, am])?;
            b.cast(hit, b.dtype(x)).map_err(s)
        }
        "LogSoftmax" => {
            let m = b.reduce_max(x, &[a], true)?;
            let d = b.sub(x, m)?;
            let e = b.exp(d)?;
            let t = b.reduce_sum(e, &[a], true)?;
            let l = b.unary(Op::Log, t)?;
            b.sub(d, l).map_err(s)
        }
        _ => b.softmax(x, a).map_err(s),
    }
}

pub fn softmax(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let a = axis(n.int_or("axis", -1)?, ctx.b.rank(x))? as i64;
    let y = softmax_along(&mut ctx.b, n.op(), x, a)?;
    one(ctx, y)
}

/// Before opset 13 the softmax family flattens to 2-d at `axis` and works on the last axis.
pub fn softmax_v1(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let dims = ctx.b.shape(x).dims().to_vec();
    let a = axis(n.int_or("axis", 1)?, dims.len().max(1))?;
    let flat = Shape::new(vec![product(&dims[..a])?, product(&dims[a..])?]);
    let b = &mut ctx.b;
    let y = b.reshape(x, flat)?;
    let y = softmax_along(b, n.op(), y, 1)?;
    let y = b.reshape(y, Shape::new(dims))?;
    one(ctx, y)
}

pub fn lrn(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let size = n.int("size")?.ok_or("missing attribute `size`")?;
    let (alpha, beta, bias) = (
        n.float_or("alpha", 1e-4)? as f64,
        n.float_or("beta", 0.75)? as f64,
        n.float_or("bias", 1.0)? as f64,
    );
    let b = &mut ctx.b;
    let r = super::rank_at_least(b, x, 2, "input")?;
    let sq = b.mul(x, x)?;
    let lo = (size - 1) / 2;
    let mut window = vec![1; r];
    window[1] = size;
    let mut pad_low = vec![0; r];
    let mut pad_high = vec![0; r];
    pad_low[1] = lo;
    pad_high[1] = size - 1 - lo;
    let sum = b.op1(
        Op::ReduceWindow {
            kind: ReduceKind::Sum,
            window,
            stride: vec![1; r],
            dilation: vec![1; r],
            pad_low,
            pad_high,
        },
        &[sq],
    )?;
    let t = b.scale(sum, alpha / size as f64)?;
    let bv = b.scalar_like(bias, t)?;
    let t = b.add(t, bv)?;
    let be = b.scalar_like(beta, t)?;
    let t = b.pow(t, be)?;
    let y = b.div(x, t)?;
    one(ctx, y)
}

/// Einsum over two operands at a time: letters in both operands and the output are batch
/// axes, letters in both but not kept are contracted, the rest are free.
pub fn einsum(ctx: &mut Ctx, n: &Node) -> Res {
    let eq = n
        .string("equation")?
        .ok_or("missing attribute `equation`")?;
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, out) = match eq.split_once("->") {
        Some((l, o)) => (l.to_string(), Some(o.to_string())),
        None => (eq.clone(), None),
    };
    let terms: Vec<Vec<char>> = lhs.split(',').map(|t| t.chars().collect()).collect();
    if terms.iter().flatten().any(|&c| c == '.') {
        return Err("einsum ellipses are not supported".into());
    }
    let names: Vec<&str> = (0..n.num_inputs()).filter_map(|i| n.input(i)).collect();
    if names.len() != terms.len() {
        return Err(format!("{} operands for {} terms", names.len(), terms.len()).into());
    }
    let out: Vec<char> = match out {
        Some(o) => o.chars().collect(),
        None => {
            // Implicit output: letters seen once, alphabetically.
            let mut once: Vec<char> = terms
                .iter()
                .flatten()
                .copied()
                .filter(|c| terms.iter().flatten().filter(|d| *d == c).count() == 1)
                .collect();
            once.sort_unstable();
            once
        }
    };
    let mut vals = Vec::new();
    for (name, t) in names.iter().zip(&terms) {
        let v = ctx.ir(name)?;
        if ctx.b.rank(v) != t.len() {
            return Err(format!(
                "operand `{name}` has rank {}, term `{}`",
                ctx.b.rank(v),
                t.iter().collect::<String>()
            )
            .into());
        }
        if t.iter().any(|c| t.iter().filter(|d| *d == c).count() > 1) {
            return Err("einsum diagonals (repeated letters in one term) are not supported".into());
        }
        vals.push(v);
    }
    let b = &mut ctx.b;
    // Sums out the letters of `t` that no later term and not the output need.
    let reduce_unneeded = |b: &mut Builder,
                           v: Value,
                           t: &[char],
                           keep: &dyn Fn(char) -> bool|
     -> R<(Value, Vec<char>)> {
        let drop: Vec<i64> = t
            .iter()
            .enumerate()
            .filter(|(_, c)| !keep(**c))
            .map(|(i, _)| i as i64)
            .collect();
        if drop.is_empty() {
            return Ok((v, t.to_vec()));
        }
        let v = b.reduce_sum(v, &drop, false)?;
        Ok((v, t.iter().copied().filter(|c| keep(*c)).collect()))
    };
    let needed_after =
        |i: usize, c: char| out.contains(&c) || terms[i + 1..].iter().any(|t| t.contains(&c));
    let (mut acc, mut at) = reduce_unneeded(b, vals[0], &terms[0], &|c| {
        needed_after(0, c) || terms.len() > 1 && terms[1].contains(&c)
    })?;
    for i in 1..terms.len() {
        let (v, vt) = reduce_unneeded(b, vals[i], &terms[i], &|c| {
            needed_after(i, c) || at.contains(&c)
        })?;
        let keep = |c: char| needed_after(i, c);
        let batch: Vec<char> = at
            .iter()
            .copied()
            .filter(|c| vt.contains(c) && keep(*c))
            .collect();
        let contract: Vec<char> = at
            .iter()
            .copied()
            .filter(|c| vt.contains(c) && !keep(*c))
            .collect();
        let pos =
            |t: &[char], c: char| t.iter().position(|&d| d == c).expect("letter in term") as i64;
        let op = Op::Dot {
            lhs_batch: batch.iter().map(|&c| pos(&at, c)).collect(),
            rhs_batch: batch.iter().map(|&c| pos(&vt, c)).collect(),
            lhs_contract: contract.iter().map(|&c| pos(&at, c)).collect(),
            rhs_contract: contract.iter().map(|&c| pos(&vt, c)).collect(),
        };
        acc = b.op1(op, &[acc, v])?;
        let mut next = batch.clone();
        next.extend(at.iter().copied().filter(|c| !vt.contains(c)));
        next.extend(vt.iter().copied().filter(|c| !at.contains(c)));
        at = next;
    }
    let (acc, at) = reduce_unneeded(b, acc, &at, &|c| out.contains(&c))?;
    let perm: Vec<i64> = out
        .iter()
        .map(|c| {
            at.iter()
                .position(|d| d == c)
                .map(|p| p as i64)
                .ok_or_else(|| format!("output letter `{c}` is not in any input"))
        })
        .collect::<Result<_, String>>()?;
    let y = b.transpose(acc, &perm)?;
    one(ctx, y)
}

pub fn topk(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let a = axis(n.int_or("axis", -1)?, ctx.b.rank(x))? as i64;
    let largest = n.int_or("largest", 1)? != 0;
    let k = match n.input(1) {
        // A k known only at run time (torchvision's min(candidates, boxes)): its size is a
        // symbol the node defines.
        Some(k) if ctx.try_static(k).is_none() => {
            let kv = ctx.ir(k)?;
            let kv = ctx.b.reshape(kv, ir::Shape::scalar())?;
            let kv = ctx.b.cast(kv, DType::I64)?;
            let count = ctx.fresh_symbol("topk");
            let op = Op::DynTopK {
                axis: a,
                largest,
                count,
            };
            let outs = ctx.b.op(op, &[x, kv])?;
            return Ok(vec![ctx.v(outs[0]), ctx.v(outs[1])]);
        }
        Some(k) => *ctx.static_ints(k)?.first().ok_or("empty k")?,
        None => n.int("k")?.ok_or("missing attribute `k`")?,
    };
    let outs = ctx.b.op(
        Op::TopK {
            k,
            axis: a,
            largest,
        },
        &[x],
    )?;
    Ok(vec![ctx.v(outs[0]), ctx.v(outs[1])])
}

/// Negative log-likelihood of `logp` [N, C, d...] at the classes in `target` [N, d...], with
/// optional class weights and an ignored class, reduced as asked.
fn nll(ctx: &mut Ctx, n: &Node, logp: Value, target: Value, weight: Option<Value>) -> R<Value> {
    let ignore = n.int("ignore_index")?;
    let reduction = n.string_or("reduction", "mean")?;
    super::rank_at_least(&ctx.b, logp, 2, "input")?;
    let xshape = ctx.b.shape(logp).clone();
    let c = xshape.dim(1).clone();
    let b = &mut ctx.b;
    let t = b.cast(target, DType::I64)?;
    let tshape = b.shape(t).clone();
    let t1 = b.scalar(1.0, DType::Bool)?;
    let valid = match ignore {
        Some(i) => {
            let iv = b.scalar(i as f64, DType::I64)?;
            let iv = b.broadcast_to(iv, &tshape)?;
            b.op1(Op::Ne, &[t, iv])?
        }
        None => b.broadcast_to(t1, &tshape)?,
    };
    let zero_i = b.scalar(0.0, DType::I64)?;
    let zero_b = b.broadcast_to(zero_i, &tshape)?;
    let safe = b.op1(Op::Select, &[valid, t, zero_b])?;
    // Pick logp[n, t, d...] through full index tuples along axis 1.
    let picked_idx = b.unsqueeze(safe, 1)?;
    let tuples = super::shape::element_tuples(ctx, &xshape, picked_idx, 1)?;
    let b = &mut ctx.b;
    let picked = b.op1(Op::GatherNd { batch_dims: 0 }, &[logp, tuples])?;
    let picked = b.reshape(picked, tshape.clone())?;
    let neg = b.neg(picked)?;
    let zero = b.scalar_like(0.0, neg)?;
    let mut loss = b.op1(Op::Select, &[valid, neg, zero])?;
    let dtype = b.dtype(loss);
    let w = match weight {
        Some(w) => {
            let cm1 = c.sub(&Dim::Const(1))?;
            let hi = b.dim_product(&[cm1], DType::I64)?;
            let hi = b.broadcast_to(hi, &tshape)?;
            let clipped = b.min(t, hi)?;
            let clipped = b.max(clipped, zero_b)?;
            let gw = b.op1(Op::Gather { axis: 0 }, &[w, clipped])?;
            let zw = b.scalar_like(0.0, gw)?;
            Some(b.op1(Op::Select, &[valid, gw, zw])?)
        }
        None if ignore.is_some() => Some(b.cast(valid, dtype)?),
        None => None,
    };
    if let Some(w) = w {
        loss = b.mul(loss, w)?;
        if reduction == "mean" {
            let all: Vec<i64> = (0..tshape.rank() as i64).collect();
            let num = b.reduce_sum(loss, &all, false)?;
            let den = b.reduce_sum(w, &all, false)?;
            return b.div(num, den).map_err(s);
        }
    }
    let all: Vec<i64> = (0..tshape.rank() as i64).collect();
    match reduction.as_str() {
        "none" => Ok(loss),
        "sum" => b.reduce_sum(loss, &all, false).map_err(s),
        "mean" => b.reduce_mean(loss, &all, false).map_err(s),
        r => Err(format!("unknown reduction `{r}`").into()),
    }
}

pub fn nll_loss(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let t = ctx.ir(n.req(1)?)?;
    let w = n.input(2).map(|w| ctx.ir(w)).transpose()?;
    let y = nll(ctx, n, x, t, w)?;
    one(ctx, y)
}

pub fn softmax_cross_entropy(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let t = ctx.ir(n.req(1)?)?;
    let w = n.input(2).map(|w| ctx.ir(w)).transpose()?;
    let logp = softmax_along(&mut ctx.b, "LogSoftmax", x, 1)?;
    let y = nll(ctx, n, logp, t, w)?;
    Ok(vec![ctx.v(y), ctx.v(logp)])
}
