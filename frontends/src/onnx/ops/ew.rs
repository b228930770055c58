//! Elementwise operators, activations, casts, constants and identity.

use crate::onnx::OpError;

use ir::{DType, Data, Dim, Op, Shape, Tensor};

use super::{one, s, Res};
use crate::onnx::import::{Ctx, Node};
use crate::onnx::tensor::require_dtype;
use crate::onnx::value::{Known, V};

pub fn unary(ctx: &mut Ctx, n: &Node) -> Res {
    let name = n.req(0)?;
    if n.op() == "Neg" {
        if let Some(Known::Dims { dims, scalar }) = &ctx.get(name)?.known {
            let neg = dims
                .iter()
                .map(|d| d.neg())
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(vec![V::dims(neg, *scalar, ctx.get(name)?.dtype())]);
        }
    }
    let op = match n.op() {
        "Abs" => Op::Abs,
        "Neg" => Op::Neg,
        "Exp" => Op::Exp,
        "Log" => Op::Log,
        "Sqrt" => Op::Sqrt,
        "Reciprocal" => Op::Recip,
        "Sin" => Op::Sin,
        "Cos" => Op::Cos,
        "Tan" => Op::Tan,
        "Asin" => Op::Asin,
        "Acos" => Op::Acos,
        "Atan" => Op::Atan,
        "Sinh" => Op::Sinh,
        "Cosh" => Op::Cosh,
        "Asinh" => Op::Asinh,
        "Acosh" => Op::Acosh,
        "Atanh" => Op::Atanh,
        "Tanh" => Op::Tanh,
        "Sigmoid" => Op::Sigmoid,
        "Erf" => Op::Erf,
        "Floor" => Op::Floor,
        "Ceil" => Op::Ceil,
        "Round" => Op::Round,
        "Sign" => Op::Sign,
        "Not" | "BitwiseNot" => Op::Not,
        "IsNaN" => Op::IsNan,
        other => return Err(format!("`{other}` is not a unary op").into()),
    };
    let x = ctx.ir(name)?;
    let y = ctx.b.unary(op, x)?;
    one(ctx, y)
}

pub fn is_inf(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let (neg, pos) = (
        n.int_or("detect_negative", 1)?,
        n.int_or("detect_positive", 1)?,
    );
    let inf = ctx.b.unary(Op::IsInf, x)?;
    let y = match (neg != 0, pos != 0) {
        (true, true) => inf,
        (false, false) => ctx.b.cast(inf, DType::Bool).and_then(|i| {
            let f = ctx.b.scalar(0.0, DType::Bool)?;
            ctx.b.elementwise(Op::And, &[i, f])
        })?,
        (neg, _) => {
            let zero = ctx.b.scalar_like(0.0, x)?;
            let side = ctx.b.op1(if neg { Op::Lt } else { Op::Gt }, &[x, zero])?;
            ctx.b.op1(Op::And, &[inf, side])?
        }
    };
    one(ctx, y)
}

/// Elementwise integer arithmetic on known (possibly symbolic) dims, with scalar broadcasting.
fn known_binary(ctx: &Ctx, op: &str, a: &str, b: &str) -> Result<Option<V>, OpError> {
    let (va, vb) = (ctx.get(a)?, ctx.get(b)?);
    let (Some(x), Some(y)) = (va.known_dims(), vb.known_dims()) else {
        return Ok(None);
    };
    // Fully constant operands fold through the evaluator instead.
    if x.iter().chain(&y).all(|d| d.as_const().is_some()) || va.rank() > 1 || vb.rank() > 1 {
        return Ok(None);
    }
    let n = x.len().max(y.len());
    if (x.len() != n && x.len() != 1) || (y.len() != n && y.len() != 1) {
        return Ok(None);
    }
    let at = |v: &[Dim], i: usize| v[if v.len() == 1 { 0 } else { i }].clone();
    if let Some(cmp) = compare_of(op) {
        // Comparisons are known where dim arithmetic decides them.
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            match decide(&at(&x, i), &at(&y, i), cmp) {
                Some(b) => out.push(b),
                None => return Ok(None),
            }
        }
        let shape = if va.rank() == 0 && vb.rank() == 0 {
            vec![]
        } else {
            vec![n]
        };
        let t = ir::Tensor::new(shape, ir::Data::Bool(out))?;
        return Ok(Some(V::data(t)));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (p, q) = (at(&x, i), at(&y, i));
        let r = match op {
            "Add" | "Sum" => p.add(&q),
            "Min" => p.minimum(&q),
            "Max" => p.maximum(&q),
            "Sub" => p.sub(&q),
            "Mul" => p.mul(&q),
            // Dims are not negative, so truncating and floor division agree.
            "Div" if q.as_const().is_some_and(|c| c > 0) || p.exact_div(&q).is_some() => {
                p.floor_div(&q)
            }
            _ => return Ok(None),
        };
        out.push(r?);
    }
    let scalar = va.rank() == 0 && vb.rank() == 0;
    Ok(Some(V::dims(out, scalar, va.dtype())))
}

/// The ordering a comparison op accepts.
fn compare_of(op: &str) -> Option<fn(std::cmp::Ordering) -> bool> {
    use std::cmp::Ordering::*;
    Some(match op {
        "Equal" => |o| o == Equal,
        "Less" => |o| o == Less,
        "LessOrEqual" => |o| o != Greater,
        "Greater" => |o| o == Greater,
        "GreaterOrEqual" => |o| o != Less,
        _ => return None,
    })
}

/// `p` compared with `q` where dim arithmetic decides it: their difference is a constant, or
/// provably positive or negative (symbols are sizes, never negative: `n` > -1).
fn decide(p: &Dim, q: &Dim, cmp: fn(std::cmp::Ordering) -> bool) -> Option<bool> {
    use std::cmp::Ordering::*;
    let d = p.sub(q).ok()?;
    if let Some(d) = d.as_const() {
        return Some(cmp(d.cmp(&0)));
    }
    let one = Dim::Const(1);
    if d.sub(&one).is_ok_and(|x| x.is_nonnegative()) {
        return Some(cmp(Greater));
    }
    if d.neg()
        .and_then(|x| x.sub(&one))
        .is_ok_and(|x| x.is_nonnegative())
    {
        return Some(cmp(Less));
    }
    None
}

pub fn binary(ctx: &mut Ctx, n: &Node) -> Res {
    let (a, b) = (n.req(0)?, n.req(1)?);
    if let Some(v) = known_binary(ctx, n.op(), a, b)? {
        return Ok(vec![v]);
    }
    let op = match n.op() {
        "Add" => Op::Add,
        "Sub" => Op::Sub,
        "Mul" => Op::Mul,
        "Div" => Op::Div,
        "Pow" => Op::Pow,
        "And" | "BitwiseAnd" => Op::And,
        "Or" | "BitwiseOr" => Op::Or,
        "Xor" | "BitwiseXor" => Op::Xor,
        "Equal" => Op::Eq,
        "Less" => Op::Lt,
        "LessOrEqual" => Op::Le,
        "Greater" => Op::Gt,
        "GreaterOrEqual" => Op::Ge,
        "Mod" => {
            if n.int_or("fmod", 0)? == 1 {
                Op::Rem
            } else {
                Op::Mod
            }
        }
        "BitShift" => match n.string_or("direction", "")?.as_str() {
            "LEFT" => Op::Shl,
            "RIGHT" => Op::Shr,
            d => return Err(format!("BitShift direction must be LEFT or RIGHT, got `{d}`").into()),
        },
        other => return Err(format!("`{other}` is not a binary op").into()),
    };
    let mut x = ctx.ir(a)?;
    let mut y = ctx.ir(b)?;
    if n.int_or("broadcast", 0)? == 1 {
        y = legacy_broadcast(ctx, n, x, y)?;
    }
    if op == Op::Pow && ctx.b.dtype(x) != ctx.b.dtype(y) {
        let (dx, dy) = (ctx.b.dtype(x), ctx.b.dtype(y));
        if dx.is_float() {
            y = ctx.b.cast(y, dx)?;
        } else {
            // Integer base, float exponent: compute in f64, return the base type.
            let xf = ctx.b.cast(x, DType::F64)?;
            let yf = ctx.b.cast(y, DType::F64)?;
            let _ = dy;
            let p = ctx.b.elementwise(Op::Pow, &[xf, yf])?;
            let r = ctx.b.cast(p, dx)?;
            return one(ctx, r);
        }
    }
    if op == Op::Rem && ctx.b.dtype(x).is_float() && n.int_or("fmod", 0)? == 0 {
        return Err("Mod on floats requires fmod=1".into());
    }
    if ctx.b.dtype(x) != ctx.b.dtype(y) {
        return Err(format!(
            "operand types differ: {} and {}",
            ctx.b.dtype(x),
            ctx.b.dtype(y)
        )
        .into());
    }
    x = ctx.b.elementwise(op, &[x, y])?;
    one(ctx, x)
}

/// Pre-opset-7 broadcasting: `b` aligns with `a` starting at `axis`.
fn legacy_broadcast(
    ctx: &mut Ctx,
    n: &Node,
    a: ir::Value,
    b: ir::Value,
) -> Result<ir::Value, OpError> {
    let (ra, rb) = (ctx.b.rank(a), ctx.b.rank(b));
    let axis = match n.int("axis")? {
        Some(x) => super::axis(x, ra)?,
        None => ra - rb,
    };
    let mut dims = vec![Dim::Const(1); axis];
    dims.extend(ctx.b.shape(b).dims().iter().cloned());
    dims.resize(ra, Dim::Const(1));
    ctx.b.reshape(b, Shape::new(dims)).map_err(s)
}

pub fn variadic(ctx: &mut Ctx, n: &Node) -> Res {
    let names: Vec<&str> = (0..n.num_inputs()).filter_map(|i| n.input(i)).collect();
    let first = *names.first().ok_or("needs at least one input")?;
    // Known dims stay known (torchvision's min(candidates, boxes) as a TopK's k).
    if let [a, b] = names[..] {
        if matches!(n.op(), "Max" | "Min" | "Sum") {
            if let Some(v) = known_binary(ctx, n.op(), a, b)? {
                return Ok(vec![v]);
            }
        }
    }
    let op = match n.op() {
        "Max" => Op::Max,
        "Min" => Op::Min,
        _ => Op::Add,
    };
    let mut acc = ctx.ir(first)?;
    for name in &names[1..] {
        let v = ctx.ir(name)?;
        acc = ctx.b.elementwise(op.clone(), &[acc, v])?;
    }
    if n.op() == "Mean" {
        let k = ctx.b.scalar(names.len() as f64, ctx.b.dtype(acc))?;
        acc = ctx.b.div(acc, k)?;
    }
    one(ctx, acc)
}

pub fn where_(ctx: &mut Ctx, n: &Node) -> Res {
    let (c, a, b) = (n.req(0)?, n.req(1)?, n.req(2)?);
    // Selecting between known dims with a known condition stays known.
    if let (Some(cond), Some(x), Some(y)) = (
        ctx.get(c)?.known_tensor(),
        ctx.get(a)?.known_dims(),
        ctx.get(b)?.known_dims(),
    ) {
        let len = cond.numel().max(x.len()).max(y.len());
        let ok = |k: usize| k == len || k == 1;
        if ctx.get(c)?.rank() <= 1
            && ctx.get(a)?.rank() <= 1
            && ctx.get(b)?.rank() <= 1
            && ok(cond.numel())
            && ok(x.len())
            && ok(y.len())
            && !(x.iter().chain(&y).all(|d| d.as_const().is_some()))
        {
            let pick = |v: &[Dim], i: usize| v[if v.len() == 1 { 0 } else { i }].clone();
            let dims = (0..len)
                .map(|i| {
                    let ci = if cond.numel() == 1 { 0 } else { i };
                    if cond.data().get_i128(ci) != 0 {
                        pick(&x, i)
                    } else {
                        pick(&y, i)
                    }
                })
                .collect();
            let scalar = [c, a, b]
                .iter()
                .all(|v| ctx.get(v).map(|v| v.rank() == 0).unwrap_or(false));
            return Ok(vec![V::dims(dims, scalar, ctx.get(a)?.dtype())]);
        }
    }
    let (c, a, b) = (ctx.ir(c)?, ctx.ir(a)?, ctx.ir(b)?);
    let y = ctx.b.select(c, a, b)?;
    one(ctx, y)
}

fn clamp(ctx: &mut Ctx, x: ir::Value, lo: Option<ir::Value>, hi: Option<ir::Value>) -> Res {
    let mut y = x;
    if let Some(lo) = lo {
        y = ctx.b.max(y, lo)?;
    }
    if let Some(hi) = hi {
        y = ctx.b.min(y, hi)?;
    }
    one(ctx, y)
}

pub fn clip_v1(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let lo = match n.float("min")? {
        Some(v) => Some(ctx.b.scalar(v as f64, ctx.b.dtype(x))?),
        None => None,
    };
    let hi = match n.float("max")? {
        Some(v) => Some(ctx.b.scalar(v as f64, ctx.b.dtype(x))?),
        None => None,
    };
    clamp(ctx, x, lo, hi)
}

/// A scalar operand: rank 0, or one element of any rank.
pub fn scalar_input(ctx: &mut Ctx, name: &str) -> Result<ir::Value, OpError> {
    let v = ctx.ir(name)?;
    if ctx.b.rank(v) == 0 {
        return Ok(v);
    }
    if ctx.b.shape(v).numel().ok().and_then(|d| d.as_const()) != Some(1) {
        return Err(format!("`{name}` must be a scalar, got {}", ctx.b.ty(v)).into());
    }
    ctx.b.reshape(v, Shape::scalar()).map_err(s)
}

pub fn clip(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let lo = n.input(1).map(|m| scalar_input(ctx, m)).transpose()?;
    let hi = n.input(2).map(|m| scalar_input(ctx, m)).transpose()?;
    clamp(ctx, x, lo, hi)
}

pub fn activation(ctx: &mut Ctx, n: &Node) -> Res {
    let x_in = ctx.ir(n.req(0)?)?;
    let b = &mut ctx.b;
    // Half-precision inputs compute in f32 and round once at the end.
    let half = matches!(b.dtype(x_in), DType::F16 | DType::BF16);
    let x = if half {
        b.cast(x_in, DType::F32)?
    } else {
        x_in
    };
    let c = |b: &mut ir::Builder, v: f64| b.scalar_like(v, x);
    let y = (|| -> ir::Result<ir::Value> {
        let zero = c(b, 0.0)?;
        Ok(match n.op() {
            "Relu" => b.max(x, zero)?,
            "LeakyRelu" => {
                let ax = b.scale(x, n.float_or("alpha", 0.01).unwrap_or(0.01) as f64)?;
                let neg = b.op1(Op::Lt, &[x, zero])?;
                b.op1(Op::Select, &[neg, ax, x])?
            }
            "Elu" | "Selu" | "Celu" => {
                let (alpha, gamma) = match n.op() {
                    "Elu" => (n.float_or("alpha", 1.0).unwrap_or(1.0) as f64, 1.0),
                    "Selu" => (
                        n.float_or("alpha", 1.673_263_2).unwrap_or(1.673_263_2) as f64,
                        n.float_or("gamma", 1.050_701).unwrap_or(1.050_701) as f64,
                    ),
                    _ => (n.float_or("alpha", 1.0).unwrap_or(1.0) as f64, 1.0),
                };
                // alpha * (exp(x / alpha) - 1) for Celu, alpha * (exp(x) - 1) otherwise.
                let xin = if n.op() == "Celu" {
                    b.scale(x, 1.0 / alpha)?
                } else {
                    x
                };
                let e = b.exp(xin)?;
                let one = c(b, 1.0)?;
                let em1 = b.sub(e, one)?;
                let neg = b.scale(em1, alpha)?;
                let pos = b.op1(Op::Gt, &[x, zero])?;
                let y = b.op1(Op::Select, &[pos, x, neg])?;
                if gamma != 1.0 {
                    b.scale(y, gamma)?
                } else {
                    y
                }
            }
            "HardSigmoid" | "HardSwish" => {
                let (alpha, beta) = if n.op() == "HardSwish" {
                    (1.0 / 6.0, 0.5)
                } else {
                    (
                        n.float_or("alpha", 0.2).unwrap_or(0.2) as f64,
                        n.float_or("beta", 0.5).unwrap_or(0.5) as f64,
                    )
                };
                let ax = b.scale(x, alpha)?;
                let bb = c(b, beta)?;
                let t = b.add(ax, bb)?;
                let one = c(b, 1.0)?;
                let t = b.min(t, one)?;
                let t = b.max(t, zero)?;
                if n.op() == "HardSwish" {
                    b.mul(x, t)?
                } else {
                    t
                }
            }
            "Softplus" | "Mish" => {
                // log(1 + exp(x)) as max(x, 0) + log(1 + exp(-|x|)), which cannot overflow.
                let ax = b.unary(Op::Abs, x)?;
                let nax = b.neg(ax)?;
                let e = b.exp(nax)?;
                let one = c(b, 1.0)?;
                let e1 = b.add(e, one)?;
                let l = b.unary(Op::Log, e1)?;
                let m = b.max(x, zero)?;
                let sp = b.add(m, l)?;
                if n.op() == "Mish" {
                    let t = b.tanh(sp)?;
                    b.mul(x, t)?
                } else {
                    sp
                }
            }
            "Softsign" => {
                let ax = b.unary(Op::Abs, x)?;
                let one = c(b, 1.0)?;
                let d = b.add(ax, one)?;
                b.div(x, d)?
            }
            "Gelu" => match n
                .string_or("approximate", "none")
                .unwrap_or_default()
                .as_str()
            {
                "tanh" => {
                    // x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
                    let x3 = b.mul(x, x)?;
                    let x3 = b.mul(x3, x)?;
                    let t = b.scale(x3, 0.044715)?;
                    let t = b.add(x, t)?;
                    let t = b.scale(t, (2.0 / std::f64::consts::PI).sqrt())?;
                    let t = b.tanh(t)?;
                    let one = c(b, 1.0)?;
                    let t = b.add(t, one)?;
                    let h = b.scale(x, 0.5)?;
                    b.mul(h, t)?
                }
                _ => b.gelu(x)?,
            },
            "ThresholdedRelu" => {
                let a = c(b, n.float_or("alpha", 1.0).unwrap_or(1.0) as f64)?;
                let gt = b.op1(Op::Gt, &[x, a])?;
                b.op1(Op::Select, &[gt, x, zero])?
            }
            "Shrink" => {
                let bias = n.float_or("bias", 0.0).unwrap_or(0.0) as f64;
                let lambd = n.float_or("lambd", 0.5).unwrap_or(0.5) as f64;
                let (l, nl) = (c(b, lambd)?, c(b, -lambd)?);
                let bv = c(b, bias)?;
                let lo = b.op1(Op::Lt, &[x, nl])?;
                let hi = b.op1(Op::Gt, &[x, l])?;
                let plus = b.add(x, bv)?;
                let minus = b.sub(x, bv)?;
                let y = b.op1(Op::Select, &[hi, minus, zero])?;
                b.op1(Op::Select, &[lo, plus, y])?
            }
            "Swish" => {
                let ax = b.scale(x, n.float_or("alpha", 1.0).unwrap_or(1.0) as f64)?;
                let sg = b.sigmoid(ax)?;
                b.mul(x, sg)?
            }
            other => {
                return Err(ir::Error::Build {
                    op: other.into(),
                    origin: None,
                    message: "not an activation".into(),
                })
            }
        })
    })()?;
    let y = if half {
        ctx.b.cast(y, ctx.b.dtype(x_in))?
    } else {
        y
    };
    one(ctx, y)
}

pub fn prelu(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let mut slope = ctx.ir(n.req(1)?)?;
    // Before opset 7 a one-dimensional slope of C elements is per channel (axis 1), as the
    // exporters of that time wrote it, not broadcast against the last axis.
    let (xs, ss) = (ctx.b.shape(x).clone(), ctx.b.shape(slope).clone());
    if n.version < 7 && ss.rank() == 1 && xs.rank() > 2 && ss.dim(0) == xs.dim(1) {
        let mut dims = vec![ss.dim(0).clone()];
        dims.extend(std::iter::repeat_n(Dim::Const(1), xs.rank() - 2));
        slope = ctx.b.reshape(slope, Shape::new(dims))?;
    }
    let zero = ctx.b.scalar_like(0.0, x)?;
    let neg = ctx.b.op1(Op::Lt, &[x, zero])?;
    let sx = ctx.b.mul(x, slope)?;
    let y = ctx.b.select(neg, sx, x)?;
    one(ctx, y)
}

pub fn identity(ctx: &mut Ctx, n: &Node) -> Res {
    Ok(vec![ctx.get(n.req(0)?)?.clone()])
}

fn cast_to(ctx: &mut Ctx, name: &str, to: DType, saturate: bool) -> Res {
    let v = ctx.get(name)?.clone();
    if let (Some(Known::Dims { dims, scalar }), true) = (&v.known, to.is_int()) {
        if v.value.is_none() {
            return Ok(vec![V::dims(dims.clone(), *scalar, to)]);
        }
    }
    let x = ctx.ir(name)?;
    if ctx.b.dtype(x) == to {
        return one(ctx, x);
    }
    let y = ctx.b.op1(
        Op::Cast {
            dtype: to,
            saturate,
        },
        &[x],
    )?;
    one(ctx, y)
}

pub fn cast(ctx: &mut Ctx, n: &Node) -> Res {
    let to = n.int("to")?.ok_or("missing attribute `to`")?;
    let to = require_dtype(to as i32)?;
    cast_to(ctx, n.req(0)?, to, n.int_or("saturate", 1)? != 0)
}

pub fn bitcast(ctx: &mut Ctx, n: &Node) -> Res {
    let to = n.int("to")?.ok_or("missing attribute `to`")?;
    let to = require_dtype(to as i32)?;
    let x = ctx.ir(n.req(0)?)?;
    let y = ctx.b.op1(Op::Bitcast { dtype: to }, &[x])?;
    one(ctx, y)
}

pub fn cast_like(ctx: &mut Ctx, n: &Node) -> Res {
    let to = ctx.get(n.req(1)?)?.dtype();
    cast_to(ctx, n.req(0)?, to, n.int_or("saturate", 1)? != 0)
}

pub fn dropout(ctx: &mut Ctx, n: &Node) -> Res {
    if let Some(t) = n.input(2) {
        let training = ctx.static_ints(t).unwrap_or_default();
        if training.first().is_some_and(|&x| x != 0) {
            let ratio = n.input(1).map(|r| ctx.static_tensor(r)).transpose()?;
            if ratio.is_none_or(|r| r.to_f64_vec().first().copied().unwrap_or(0.0) != 0.0) {
                return Err("dropout in training mode is random; kiln runs inference".into());
            }
        }
    }
    let x = ctx.get(n.req(0)?)?.clone();
    let mut outs = vec![x.clone()];
    if n.wants_output(1) {
        let xv = ctx.ir(n.req(0)?)?;
        let t = ctx.b.scalar(1.0, DType::Bool)?;
        let shape = ctx.b.shape(xv).clone();
        let mask = ctx.b.broadcast_to(t, &shape)?;
        outs.push(ctx.v(mask));
    }
    Ok(outs)
}

pub fn constant(ctx: &mut Ctx, n: &Node) -> Res {
    if let Some(t) = n.tensor("value", &ctx.opts.external_data)? {
        return Ok(vec![V::data(t)]);
    }
    if let Some(f) = n.float("value_float")? {
        return Ok(vec![V::data(Tensor::scalar(f))]);
    }
    if let Some(v) = n.floats("value_floats")? {
        let len = v.len();
        return Ok(vec![V::data(Tensor::from_vec(vec![len], v)?)]);
    }
    if let Some(i) = n.int("value_int")? {
        return Ok(vec![V::data(Tensor::scalar(i))]);
    }
    if let Some(v) = n.ints("value_ints")? {
        let len = v.len();
        return Ok(vec![V::data(Tensor::from_vec(vec![len], v)?)]);
    }
    if n.has("value_string") || n.has("value_strings") {
        return Err("string constants are not supported".into());
    }
    if n.has("sparse_value") {
        return Err("sparse constants are not supported".into());
    }
    Err("Constant has no value attribute".into())
}

pub fn constant_of_shape(ctx: &mut Ctx, n: &Node) -> Res {
    let dims = ctx.static_dims(n.req(0)?)?;
    let value = n
        .tensor("value", &ctx.opts.external_data)?
        .unwrap_or_else(|| Tensor::scalar(0.0f32));
    if value.numel() != 1 {
        return Err("`value` must hold one element".into());
    }
    let consts: Option<Vec<i64>> = dims.iter().map(Dim::as_const).collect();
    if let Some(c) = &consts {
        let shape: Vec<usize> = c
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
            .collect::<Result<_, _>>()?;
        let numel: usize = shape.iter().product();
        if numel <= 1 << 16 {
            let data: Data = value.data().take_all(&vec![0; numel]);
            return Ok(vec![V::data(Tensor::new(shape, data)?)]);
        }
    }
    let scalar = value.reshape(vec![])?;
    let c = ctx.b.constant(scalar)?;
    let y = ctx.b.broadcast_to(c, &Shape::new(dims))?;
    one(ctx, y)
}
