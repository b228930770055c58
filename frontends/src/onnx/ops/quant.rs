//! Quantization operators, imported faithfully as integer and float arithmetic: the
//! interpreter runs them exactly as specified; fast quantized kernels are a codegen concern.

use crate::onnx::OpError;

use ir::{Builder, DType, Dim, Op, Shape, Value};

use super::{axis, one, s, Res};
use crate::onnx::import::{Ctx, Node};
use crate::onnx::tensor::require_dtype;

type R<T> = Result<T, OpError>;

/// Makes a scale or zero point broadcastable against `shape`: scalars stay scalars, vectors
/// lie along `axis`, blocked parameters repeat `block` times along it.
pub(super) fn broadcastable(
    b: &mut Builder,
    v: Value,
    shape: &Shape,
    ax: R<usize>,
    block: i64,
) -> R<Value> {
    let vs = b.shape(v).clone();
    let one_element = vs.numel().ok().and_then(|d| d.as_const()) == Some(1);
    if vs.rank() == 0 || one_element {
        return b.reshape(v, Shape::scalar()).map_err(s);
    }
    // Only per-axis and blocked parameters need the axis.
    let ax = ax?;
    if block <= 0 {
        if vs.rank() != 1 {
            return Err(format!("a per-axis parameter must be 1-d, got {vs}").into());
        }
        let mut dims = vec![Dim::Const(1); shape.rank()];
        dims[ax] = vs.dim(0).clone();
        return b.reshape(v, Shape::new(dims)).map_err(s);
    }
    // Blocked: repeat each entry `block` times along the axis, then trim to the extent.
    if vs.rank() != shape.rank() || ax >= vs.rank() {
        return Err(
            format!("a blocked parameter {vs} must have the rank of its input {shape}").into(),
        );
    }
    let mut with_unit = vs.dims().to_vec();
    with_unit.insert(ax + 1, Dim::Const(1));
    let y = b.reshape(v, Shape::new(with_unit.clone()))?;
    let mut wide = with_unit;
    wide[ax + 1] = Dim::Const(block);
    let y = b.broadcast_to(y, &Shape::new(wide))?;
    let mut merged = vs.dims().to_vec();
    merged[ax] = merged[ax].mul(&Dim::Const(block))?;
    let y = b.reshape(y, Shape::new(merged))?;
    super::slice_axis(b, y, ax, Dim::Const(0), shape.dim(ax).clone(), 1)
}

fn int_range(d: DType) -> R<(f64, f64)> {
    match d.int_range() {
        Some(r) if d != DType::I64 && d != DType::U64 && d != DType::U32 => Ok(r),
        _ => Err(format!("{d} is not a quantized type kiln supports").into()),
    }
}

/// How a known scale is used: dividing (a quantizer's: positive) or multiplying (a
/// dequantizer's: any number — a block of zeros may have scale 0, and onnxruntime's symmetric
/// 4-bit quantizer writes negative scales, mapping each block's extreme to −8).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Scaling {
    Divides,
    Multiplies,
}

/// Checks the scale named `name` when the import knows it (a weight's, a calibrated
/// activation's): a zero, negative or NaN divisor would make infinities and NaNs of every value.
/// An infinite one is IEEE arithmetic like any other: onnxruntime's calibrator writes one for
/// a constant holding −inf (an attention mask's), and onnxruntime runs the model.
pub(super) fn check_scale(ctx: &Ctx, name: &str, how: Scaling) -> R<()> {
    let Some(t) = ctx.try_static(name) else {
        return Ok(());
    };
    if !t.dtype().is_float() {
        return Err(format!("scale `{name}` is {}, not a float", t.dtype()).into());
    }
    let d = t.data();
    for i in 0..d.len() {
        let v = d.get_f64(i);
        let ok = match how {
            Scaling::Divides => v > 0.0,
            Scaling::Multiplies => !v.is_nan(),
        };
        if !ok {
            let want = match how {
                Scaling::Divides => "positive",
                Scaling::Multiplies => "a number",
            };
            return Err(format!("scale `{name}` must be {want}; element {i} is {v}").into());
        }
    }
    Ok(())
}

/// A zero point must have its quantized input's type (ONNX's rule: it says which integers the
/// input holds).
pub(super) fn check_zero_point(b: &Builder, x: Value, zp: Option<Value>, what: &str) -> R<()> {
    match zp {
        Some(z) if b.dtype(z) != b.dtype(x) => Err(format!(
            "the zero point of {what} is {}, but {what} is {}",
            b.dtype(z),
            b.dtype(x)
        )
        .into()),
        _ => Ok(()),
    }
}

/// A blocked scale (or zero point) `p` for `x` along `ax`: x's shape with ⌈extent/block⌉
/// along the axis.
fn check_blocks(b: &Builder, x: Value, p: Value, ax: usize, block: i64) -> R<()> {
    let (xs, ps) = (b.shape(x), b.shape(p));
    let ok = ps.rank() == xs.rank()
        && ax < xs.rank()
        && (0..xs.rank()).all(|a| match (xs.dim(a).as_const(), ps.dim(a).as_const()) {
            (Some(n), Some(m)) if a == ax => m == (n + block - 1) / block,
            (Some(n), Some(m)) => m == n,
            _ => true,
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a blocked parameter {ps} does not fit {xs} in blocks of {block} along axis {ax}"
        )
        .into())
    }
}

/// round(x) + zp, clamped to the range of `dtype` and converted; float outputs (float8,
/// float4) convert with rounding to nearest, saturating unless told otherwise.
pub(super) fn saturate(b: &mut Builder, x: Value, zp: Option<Value>, dtype: DType) -> R<Value> {
    saturate_with(b, x, zp, dtype, true)
}

fn saturate_with(
    b: &mut Builder,
    x: Value,
    zp: Option<Value>,
    dtype: DType,
    sat: bool,
) -> R<Value> {
    if dtype.is_float() {
        let x = match zp {
            Some(zp) if dtype == DType::F4E2M1 => {
                let zp = b.cast(zp, b.dtype(x))?;
                b.add(x, zp)?
            }
            _ => x,
        };
        return b
            .op1(
                Op::Cast {
                    dtype,
                    saturate: sat,
                },
                &[x],
            )
            .map_err(s);
    }
    let (lo, hi) = int_range(dtype)?;
    let mut r = b.unary(Op::Round, x)?;
    if let Some(zp) = zp {
        let zp = b.cast(zp, b.dtype(r))?;
        r = b.add(r, zp)?;
    }
    let lo = b.scalar_like(lo, r)?;
    let hi = b.scalar_like(hi, r)?;
    let r = b.op1(Op::Max, &[r, lo])?;
    let r = b.op1(Op::Min, &[r, hi])?;
    b.cast(r, dtype).map_err(s)
}

pub fn quantize_linear(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let scale = ctx.ir(n.req(1)?)?;
    let zp = n.input(2).map(|z| ctx.ir(z)).transpose()?;
    check_scale(ctx, n.req(1)?, Scaling::Divides)?;
    let b = &mut ctx.b;
    let shape = b.shape(x).clone();
    let ax = axis(n.int_or("axis", 1)?, shape.rank());
    let block = n.int_or("block_size", 0)?;
    if block < 0 {
        return Err(format!("block_size {block} is negative").into());
    }
    if block > 0 {
        check_blocks(b, x, scale, ax.clone()?, block)?;
    }
    let out = match (zp, n.int("output_dtype")?) {
        (Some(z), _) => b.dtype(z),
        (None, Some(t)) if t != 0 => require_dtype(t as i32)?,
        _ => DType::U8,
    };
    let scale = broadcastable(b, scale, &shape, ax.clone(), block)?;
    let zp = zp
        .map(|z| broadcastable(b, z, &shape, ax.clone(), block))
        .transpose()?;
    // Divide in the operands' type (the wider one when they differ).
    let (dx, ds) = (b.dtype(x), b.dtype(scale));
    let work = if dx == ds {
        dx
    } else if dx == DType::F64 || ds == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let xw = b.cast(x, work)?;
    let sw = b.cast(scale, work)?;
    let q = b.div(xw, sw)?;
    let y = saturate_with(b, q, zp, out, n.int_or("saturate", 1)? != 0)?;
    one(ctx, y)
}

pub fn dequantize_linear(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let scale = ctx.ir(n.req(1)?)?;
    let zp = n.input(2).map(|z| ctx.ir(z)).transpose()?;
    check_scale(ctx, n.req(1)?, Scaling::Multiplies)?;
    let b = &mut ctx.b;
    check_zero_point(b, x, zp, "the input")?;
    let shape = b.shape(x).clone();
    let ax = axis(n.int_or("axis", 1)?, shape.rank());
    let block = n.int_or("block_size", 0)?;
    if block < 0 {
        return Err(format!("block_size {block} is negative").into());
    }
    if block > 0 {
        check_blocks(b, x, scale, ax.clone()?, block)?;
    }
    let out = match n.int("output_dtype")? {
        Some(t) if t != 0 => require_dtype(t as i32)?,
        _ => b.dtype(scale),
    };
    let scale = broadcastable(b, scale, &shape, ax.clone(), block)?;
    let work = if b.dtype(scale) == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let mut d = b.cast(x, work)?;
    if let Some(zp) = zp {
        let zp = broadcastable(b, zp, &shape, ax.clone(), block)?;
        let zp = b.cast(zp, work)?;
        d = b.sub(d, zp)?;
    }
    let sw = b.cast(scale, work)?;
    let y = b.mul(d, sw)?;
    let y = b.cast(y, out)?;
    one(ctx, y)
}

pub fn dynamic_quantize_linear(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let b = &mut ctx.b;
    let dt = b.dtype(x);
    let x32 = b.cast(x, DType::F32)?;
    // One op (the ops it is defined by take a pass over x each for its two extremes).
    let out = b.op(Op::DynamicQuantize, &[x32]).map_err(s)?;
    let scale_out = b.cast(out[1], dt)?;
    Ok(vec![ctx.v(out[0]), ctx.v(scale_out), ctx.v(out[2])])
}

/// `v - zp` in i32, with `zp` broadcast along `zp_axis` of `v` when it is a vector.
pub(super) fn minus_zero_point(
    b: &mut Builder,
    v: Value,
    zp: Option<Value>,
    zp_axis: usize,
) -> R<Value> {
    let vi = b.cast(v, DType::I32)?;
    let Some(zp) = zp else { return Ok(vi) };
    let shape = b.shape(vi).clone();
    let zp = broadcastable(b, zp, &shape, Ok(zp_axis), 0)?;
    let zp = b.cast(zp, DType::I32)?;
    b.sub(vi, zp).map_err(s)
}

pub fn matmul_integer(ctx: &mut Ctx, n: &Node) -> Res {
    let a = ctx.ir(n.req(0)?)?;
    let bv = ctx.ir(n.req(1)?)?;
    let azp = n.input(2).map(|z| ctx.ir(z)).transpose()?;
    let bzp = n.input(3).map(|z| ctx.ir(z)).transpose()?;
    let b = &mut ctx.b;
    check_zero_point(b, a, azp, "A")?;
    check_zero_point(b, bv, bzp, "B")?;
    let (ra, rb) = (b.rank(a), b.rank(bv));
    // A's zero point runs along its rows, B's along its columns.
    let a = minus_zero_point(b, a, azp, ra.saturating_sub(2))?;
    let bv = minus_zero_point(b, bv, bzp, rb.saturating_sub(1))?;
    let y = b.matmul(a, bv)?;
    one(ctx, y)
}

pub fn conv_integer(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let w = ctx.ir(n.req(1)?)?;
    let xzp = n.input(2).map(|z| ctx.ir(z)).transpose()?;
    let wzp = n.input(3).map(|z| ctx.ir(z)).transpose()?;
    let b = &mut ctx.b;
    check_zero_point(b, x, xzp, "the input")?;
    check_zero_point(b, w, wzp, "the weight")?;
    let (xs, ws) = (b.shape(x).dims().to_vec(), b.shape(w).dims().to_vec());
    let op = super::nn::conv_op(n, &xs, &ws)?;
    let x = minus_zero_point(b, x, xzp, 1)?;
    let w = minus_zero_point(b, w, wzp, 0)?;
    let y = b.op1(op, &[x, w])?;
    one(ctx, y)
}

/// Requantizes an i32 accumulator and an i32 bias: round((acc + bias) * a_scale * b_scale /
/// y_scale) + y_zp, saturated. The bias is added after the sums' conversion to f32 (the same
/// number whenever |acc| and |bias| < 2^24, which quantized products stay far below): the
/// conversion of the bare sums is what the 8-bit products (`qdot`, `qconv`) compute, so the
/// bias becomes their epilogue's shift.
fn requantize(
    b: &mut Builder,
    (acc, bias): (Value, Option<Value>),
    a_scale: Value,
    b_scale: Value,
    y_scale: Value,
    y_zp: Option<Value>,
    out: DType,
) -> R<Value> {
    let mut accf = b.cast(acc, DType::F32)?;
    if let Some(bias) = bias {
        let bias = b.cast(bias, DType::F32)?;
        accf = b.add(accf, bias)?;
    }
    let ab = b.mul(a_scale, b_scale)?;
    let m = b.div(ab, y_scale)?;
    let m = b.cast(m, DType::F32)?;
    let d = b.mul(accf, m)?;
    saturate(b, d, y_zp, out)
}

/// QLinearMatMul's and QLinearConv's eight operands (a, a_scale, a_zero, b, b_scale, b_zero,
/// y_scale, y_zero): zero points of their values' types, scales that are usable (y's divides).
fn check_qlinear(ctx: &Ctx, names: &[&str], v: &[Value]) -> R<()> {
    check_zero_point(&ctx.b, v[0], Some(v[2]), "the first input")?;
    check_zero_point(&ctx.b, v[3], Some(v[5]), "the second input")?;
    check_scale(ctx, names[1], Scaling::Multiplies)?;
    check_scale(ctx, names[4], Scaling::Multiplies)?;
    check_scale(ctx, names[6], Scaling::Divides)
}

pub fn qlinear_matmul(ctx: &mut Ctx, n: &Node) -> Res {
    let names: Vec<&str> = (0..8).map(|i| n.req(i)).collect::<R<_>>()?;
    let mut v = Vec::new();
    for nm in &names {
        v.push(ctx.ir(nm)?);
    }
    check_qlinear(ctx, &names, &v)?;
    let b = &mut ctx.b;
    let out = b.dtype(v[7]);
    let (ra, rb) = (b.rank(v[0]), b.rank(v[3]));
    let a = minus_zero_point(b, v[0], Some(v[2]), ra.saturating_sub(2))?;
    let bm = minus_zero_point(b, v[3], Some(v[5]), rb.saturating_sub(1))?;
    let acc = b.matmul(a, bm)?;
    let shape = b.shape(acc).clone();
    let r = shape.rank();
    let a_scale = broadcastable(b, v[1], &shape, Ok(r.saturating_sub(2)), 0)?;
    let b_scale = broadcastable(b, v[4], &shape, Ok(r.saturating_sub(1)), 0)?;
    let y = requantize(b, (acc, None), a_scale, b_scale, v[6], Some(v[7]), out)?;
    one(ctx, y)
}

pub fn qlinear_conv(ctx: &mut Ctx, n: &Node) -> Res {
    let names: Vec<&str> = (0..8).map(|i| n.req(i)).collect::<R<_>>()?;
    let mut v = Vec::new();
    for nm in &names {
        v.push(ctx.ir(nm)?);
    }
    let bias = n.input(8).map(|b| ctx.ir(b)).transpose()?;
    check_qlinear(ctx, &names, &v)?;
    let b = &mut ctx.b;
    let out = b.dtype(v[7]);
    let (xs, ws) = (b.shape(v[0]).dims().to_vec(), b.shape(v[3]).dims().to_vec());
    let op = super::nn::conv_op(n, &xs, &ws)?;
    let x = minus_zero_point(b, v[0], Some(v[2]), 1)?;
    let w = minus_zero_point(b, v[3], Some(v[5]), 0)?;
    let acc = b.op1(op, &[x, w])?;
    let shape = b.shape(acc).clone();
    let bias = match bias {
        Some(bias) if b.dtype(bias) != DType::I32 => {
            return Err(format!("QLinearConv's bias is {}, not i32", b.dtype(bias)).into());
        }
        Some(bias) => {
            let bias = broadcastable(b, bias, &shape, Ok(1), 0)?;
            let bias = b.cast(bias, DType::I32)?;
            Some(b.broadcast_to(bias, &shape)?)
        }
        None => None,
    };
    let x_scale = broadcastable(b, v[1], &shape, Ok(1), 0)?;
    let w_scale = broadcastable(b, v[4], &shape, Ok(1), 0)?;
    let y = requantize(b, (acc, bias), x_scale, w_scale, v[6], Some(v[7]), out)?;
    one(ctx, y)
}

/// com.microsoft MatMulNBits: A [..., K] times a weight stored as N rows of K/block_size
/// blocks of packed `bits`-bit values with per-block scales (and optional zero points).
pub fn matmul_nbits(ctx: &mut Ctx, n: &Node) -> Res {
    let a = ctx.ir(n.req(0)?)?;
    let packed = ctx.ir(n.req(1)?)?;
    let scales = ctx.ir(n.req(2)?)?;
    let zps = n.input(3).map(|z| ctx.ir(z)).transpose()?;
    let bias = n.input(5).map(|z| ctx.ir(z)).transpose()?;
    let k = n.int("K")?.ok_or("missing attribute `K`")?;
    let nn = n.int("N")?.ok_or("missing attribute `N`")?;
    let bits = n.int_or("bits", 4)?;
    let level = n.int_or("accuracy_level", 0)?;
    if !(0..=4).contains(&level) {
        return Err(format!("accuracy_level is {level}, not one of 0 to 4").into());
    }
    let block = n
        .int("block_size")?
        .ok_or("missing attribute `block_size`")?;
    if ![2, 4, 8].contains(&bits) {
        return Err(format!("{bits}-bit weights are not supported (2, 4 or 8)").into());
    }
    if n.input(4).is_some() {
        return Err("g_idx is not supported".into());
    }
    if !(1..=1 << 24).contains(&k) || !(1..=1 << 24).contains(&nn) {
        return Err(format!("K = {k} and N = {nn} must lie in 1..=2^24").into());
    }
    // The contrib spec: a power of two, at least 16.
    if !(16..=1 << 16).contains(&block) || block & (block - 1) != 0 {
        return Err(format!("block_size {block} is not a power of two from 16 to 65536").into());
    }
    check_scale(ctx, n.req(2)?, Scaling::Multiplies)?;
    // Zero points given as floats must be values the packed integers can take.
    if let Some(t) = n.input(3).and_then(|z| ctx.try_static(z)) {
        let top = ((1i64 << bits) - 1) as f64;
        let d = t.data();
        if let Some(i) = (0..d.len()).find(|&i| !(0.0..=top).contains(&d.get_f64(i))) {
            if t.dtype().is_float() {
                return Err(format!(
                    "zero point {i} is {}, outside 0..={top} for {bits}-bit weights",
                    d.get_f64(i)
                )
                .into());
            }
        }
    }
    let b = &mut ctx.b;
    let nb = (k + block - 1) / block;
    let per_byte = 8 / bits;
    let blob = block / per_byte;
    let dt = b.dtype(a);
    // Every packed operand must hold exactly what K, N, bits and block_size say.
    let count = |b: &Builder, v: Value| b.shape(v).numel().ok().and_then(|d| d.as_const());
    let expect = |b: &Builder, v: Value, what: &str, want: i64| -> R<()> {
        match count(b, v) {
            Some(got) if got != want => Err(format!(
                "{what}: {got} values, where N = {nn}, K = {k}, {bits} bits in blocks of {block} \
                 need {want}"
            )
            .into()),
            _ => Ok(()),
        }
    };
    if b.dtype(packed) != DType::U8 {
        return Err(format!("the packed weight is {}, not u8", b.dtype(packed)).into());
    }
    expect(b, packed, "the packed weight", nn * nb * blob)?;
    expect(b, scales, "the scales", nn * nb)?;
    match zps {
        Some(z) if b.dtype(z) == DType::U8 => {
            expect(b, z, "the packed zero points", nn * ((nb * bits + 7) / 8))?
        }
        Some(z) => expect(b, z, "the zero points", nn * nb)?,
        None => {}
    }
    // Unpack: [N, nb, blob] bytes -> [N, nb, blob, per_byte] values, low bits first.
    let unpack = |b: &mut Builder, bytes: Value, groups: &[Dim]| -> R<Value> {
        if bits == 8 {
            return Ok(bytes);
        }
        let mut with = groups.to_vec();
        with.push(Dim::Const(1));
        let x = b.reshape(bytes, Shape::new(with.clone()))?;
        let mut full = groups.to_vec();
        full.push(Dim::Const(per_byte));
        let x = b.broadcast_to(x, &Shape::new(full.clone()))?;
        // The shifts as a constant (not an iota), so that a constant weight unpacks at
        // compile time.
        let shifts: Vec<u8> = (0..per_byte).map(|i| (i * bits) as u8).collect();
        let shift =
            b.constant(ir::Tensor::new(vec![per_byte as usize], ir::Data::U8(shifts)).map_err(s)?)?;
        let shift = b.broadcast_to(shift, &Shape::new(full.clone()))?;
        let x = b.op1(Op::Shr, &[x, shift])?;
        let mask = b.scalar(((1 << bits) - 1) as f64, DType::U8)?;
        let mask = b.broadcast_to(mask, &Shape::new(full.clone()))?;
        let x = b.op1(Op::And, &[x, mask])?;
        let mut merged = groups[..groups.len() - 1].to_vec();
        merged.push(groups[groups.len() - 1].mul(&Dim::Const(per_byte))?);
        b.reshape(x, Shape::new(merged)).map_err(s)
    };
    // Zero points packed like the weights, one value per block, rows padded to whole bytes:
    // [N, nb] values.
    let packed_zeros = |b: &mut Builder, z: Value| -> R<Value> {
        let zb = (nb * bits + 7) / 8;
        let z = b.reshape(z, Shape::from_consts(&[nn, zb]))?;
        let z = unpack(b, z, &[Dim::Const(nn), Dim::Const(zb)])?;
        super::slice_axis(b, z, 1, Dim::Const(0), Dim::Const(nb), 1).map_err(s)
    };
    if bits == 4 {
        // 4-bit weights stay packed: one `qdot4` over f32 rows, scales and zero points.
        let w = b.reshape(packed, Shape::from_consts(&[nn, nb * blob]))?;
        let f32s = |b: &mut Builder, v: Value| -> R<Value> {
            let v = b.reshape(v, Shape::from_consts(&[nn, nb]))?;
            if b.dtype(v) == DType::F32 {
                Ok(v)
            } else {
                b.cast(v, DType::F32).map_err(s)
            }
        };
        let sc = f32s(b, scales)?;
        let zp = match zps {
            Some(z) if b.dtype(z) == DType::U8 => {
                let z = packed_zeros(b, z)?;
                f32s(b, z)?
            }
            Some(z) => f32s(b, z)?,
            None => {
                let eight = b.scalar(8.0, DType::F32)?;
                b.broadcast_to(eight, &Shape::from_consts(&[nn, nb]))?
            }
        };
        let x = if dt == DType::F32 {
            a
        } else {
            b.cast(a, DType::F32)?
        };
        // A's rows are K long: said so (checked at run time when A's last dim is symbolic).
        let mut dims = b.shape(x).dims().to_vec();
        match dims.last() {
            None => return Err("A is a scalar; MatMulNBits needs rows of K".into()),
            Some(Dim::Const(d)) if *d != k => {
                return Err(format!("A's rows have {d} values, where K is {k}").into())
            }
            Some(_) => {}
        }
        let last = dims.len() - 1;
        dims[last] = Dim::Const(k);
        let x = b.refine(x, Shape::new(dims))?;
        // accuracy_level 4 allows int8 rows (what onnxruntime then computes): kiln quantizes
        // them as it does. Lower levels (and none) ask for at least f32's accuracy.
        let quantize_x = level == 4;
        let mut y = b.op1(Op::Qdot4 { block, quantize_x }, &[x, w, sc, zp])?;
        if dt != DType::F32 {
            y = b.cast(y, dt)?;
        }
        if let Some(bias) = bias {
            y = b.add(y, bias)?;
        }
        return one(ctx, y);
    }
    let q = b.reshape(packed, Shape::from_consts(&[nn, nb, blob]))?;
    let q = unpack(b, q, &[Dim::Const(nn), Dim::Const(nb), Dim::Const(blob)])?;
    let qf = b.cast(q, dt)?;
    let scales = b.reshape(scales, Shape::from_consts(&[nn, nb, 1]))?;
    let zp = match zps {
        Some(z) if b.dtype(z) == DType::U8 => {
            let z = packed_zeros(b, z)?;
            let z = b.reshape(z, Shape::from_consts(&[nn, nb, 1]))?;
            b.cast(z, dt)?
        }
        Some(z) => b.reshape(z, Shape::from_consts(&[nn, nb, 1]))?,
        None => b.scalar((1i64 << (bits - 1)) as f64, dt)?,
    };
    let w = b.sub(qf, zp)?;
    let w = b.mul(w, scales)?;
    let w = b.reshape(w, Shape::from_consts(&[nn, nb * block]))?;
    let w = super::slice_axis(b, w, 1, Dim::Const(0), Dim::Const(k), 1)?;
    let wt = b.transpose(w, &[1, 0])?;
    let mut y = b.matmul(a, wt)?;
    if let Some(bias) = bias {
        y = b.add(y, bias)?;
    }
    one(ctx, y)
}
