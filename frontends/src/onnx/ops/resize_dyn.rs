//! Resize on dims known only at run time: each resized axis is a `resample` whose `[out,
//! taps]` index and weight tables are computed in the graph from the run's sizes (`dims`),
//! by the same coordinate mapping and interpolation taps the static path evaluates at import. Output
//! sizes are symbolic: given sizes as they are, a scale `p/q` as `floor(n·p/q)`.

use crate::onnx::OpError;

use ir::{DType, Dim, Op, Shape, TensorType, Value};

use super::s;
use crate::onnx::import::Ctx;

type R<T> = Result<T, OpError>;

/// One resized axis: its input and output sizes and the scale, when given (else out/in).
pub struct DynAxis {
    pub axis: usize,
    pub input: Dim,
    pub output: Dim,
    pub scale: Option<f64>,
}

/// The interpolation of the symbolic path (no antialiasing, no crop-and-resize).
pub struct Interp<'a> {
    pub mode: &'a str,
    pub nearest: &'a str,
    pub cubic_a: f64,
    pub coord: &'a str,
    pub exclude_outside: bool,
}

/// `floor(n * scale)` as a dim, for a scale that is a fraction with a denominator ≤ 1000.
pub fn scaled(n: &Dim, scale: f64) -> R<Dim> {
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(format!("scale {scale} must be positive").into());
    }
    for q in 1..=1000i64 {
        let p = (scale * q as f64).round();
        if (1.0..1e9).contains(&p) && (p / q as f64) as f32 == scale as f32 {
            return n
                .mul(&Dim::Const(p as i64))
                .and_then(|x| x.floor_div(&Dim::Const(q)))
                .map_err(s);
        }
    }
    Err(
        format!("scale {scale} on a symbolic axis is not a fraction with a small denominator")
            .into(),
    )
}

/// Resizes `x` along every axis of `plan`: f32 data interpolates in f32 with weights computed
/// in f64 (as onnxruntime computes in float); other dtypes compute in f64 and cast back.
pub fn resize(ctx: &mut Ctx, x: Value, plan: &[DynAxis], how: &Interp) -> R<Value> {
    let dtype = ctx.b.dtype(x);
    let work = if dtype == DType::F32 {
        DType::F32
    } else {
        DType::F64
    };
    let mut y = ctx.b.cast(x, work)?;
    for ax in plan {
        let (idx, w) = taps(ctx, ax, how)?;
        let w = ctx.b.cast(w, work)?;
        let op = Op::Resample {
            axis: ax.axis as i64,
        };
        y = ctx.b.op1(op, &[y, idx, w])?;
    }
    if dtype.is_int() {
        y = ctx.b.unary(Op::Round, y)?;
    }
    ctx.b.cast(y, dtype).map_err(s)
}

/// The taps of one axis, computed at run time as `resample` operands: i64 indices clamped
/// into the axis and f64 weights, `[out, taps]`.
fn taps(ctx: &mut Ctx, ax: &DynAxis, how: &Interp) -> R<(Value, Value)> {
    let b = &mut ctx.b;
    let f = DType::F64;
    let (n, m) = (&ax.input, &ax.output);
    let nf = b.dim_product(std::slice::from_ref(n), f)?;
    let mf = b.dim_product(std::slice::from_ref(m), f)?;
    let col = Shape::new(vec![m.clone(), Dim::Const(1)]);
    let yv = b.op1(
        Op::Iota {
            axis: 0,
            ty: TensorType::new(f, col.clone()),
        },
        &[],
    )?;
    let c = |b: &mut ir::Builder, v: f64| b.scalar(v, f).map_err(s);
    let scale = match ax.scale {
        Some(sc) => c(b, sc)?,
        None => b.div(mf, nf)?,
    };
    let half = c(b, 0.5)?;
    let one = c(b, 1.0)?;
    // (y + 0.5) / scale, then - 0.5 (in the static path's order: rounding decides nearest)
    let t = b.add(yv, half)?;
    let t_centered = b.div(t, scale)?;
    let centered = b.sub(t_centered, half)?;
    // The mappings see the scaled width `scale·n` (ONNX's reference), not the whole output.
    let outw = b.mul(scale, nf)?;
    let m_is_1 = b.elementwise(Op::Eq, &[outw, one])?;
    let x = match how.coord {
        "half_pixel" => centered,
        "asymmetric" => b.div(yv, scale)?,
        "pytorch_half_pixel" => {
            let neg = c(b, -0.5)?;
            b.select(m_is_1, neg, centered)?
        }
        "align_corners" => {
            // y * (n - 1) / (m - 1), and 0 when m is 1.
            let n1 = b.sub(nf, one)?;
            let m1 = b.sub(outw, one)?;
            // (m1 is only a divisor where the scaled width is not 1)
            let m1 = b.select(m_is_1, one, m1)?;
            let t = b.mul(yv, n1)?;
            let t = b.div(t, m1)?;
            let zero = c(b, 0.0)?;
            b.select(m_is_1, zero, t)?
        }
        "half_pixel_symmetric" => {
            // offset = n/2 * (1 - m / (scale * n))
            let adj = b.div(mf, outw)?;
            let k = b.sub(one, adj)?;
            let k = b.mul(nf, k)?;
            let offset = b.mul(k, half)?;
            let x = b.add(offset, t_centered)?;
            b.sub(x, half)?
        }
        m => {
            return Err(
                format!("coordinate_transformation_mode `{m}` needs static input dims").into(),
            )
        }
    };
    let xf = b.unary(Op::Floor, x)?;
    let r = b.sub(x, xf)?;
    // Taps as (offset from floor(x), coefficient).
    let taps: Vec<(Value, Value)> = match how.mode {
        "nearest" => {
            let idx = match how.nearest {
                "round_prefer_ceil" => {
                    let t = b.add(x, half)?;
                    b.unary(Op::Floor, t)?
                }
                "floor" => xf,
                "ceil" => b.unary(Op::Ceil, x)?,
                _ => {
                    let t = b.sub(x, half)?;
                    b.unary(Op::Ceil, t)?
                }
            };
            vec![(idx, one)]
        }
        "linear" => {
            let x1 = b.add(xf, one)?;
            let q = b.sub(one, r)?;
            vec![(xf, q), (x1, r)]
        }
        "cubic" => {
            let a = how.cubic_a;
            let q = b.sub(one, r)?;
            // The two inner taps: ((a+2)t - (a+3))t² + 1; the outer: ((a t - 5a) t + 8a) t - 4a.
            let inner = |b: &mut ir::Builder, t: Value| -> R<Value> {
                let k = b.scale(t, a + 2.0)?;
                let a3 = b.scalar(a + 3.0, f)?;
                let k = b.sub(k, a3)?;
                let t2 = b.mul(t, t)?;
                let k = b.mul(k, t2)?;
                let one = b.scalar(1.0, f)?;
                b.add(k, one).map_err(s)
            };
            let outer = |b: &mut ir::Builder, t: Value| -> R<Value> {
                let one = b.scalar(1.0, f)?;
                let t = b.add(t, one)?;
                let k = b.scale(t, a)?;
                let c5 = b.scalar(5.0 * a, f)?;
                let k = b.sub(k, c5)?;
                let k = b.mul(k, t)?;
                let c8 = b.scalar(8.0 * a, f)?;
                let k = b.add(k, c8)?;
                let k = b.mul(k, t)?;
                let c4 = b.scalar(4.0 * a, f)?;
                b.sub(k, c4).map_err(s)
            };
            let c0 = outer(b, r)?;
            let c1 = inner(b, r)?;
            let c2 = inner(b, q)?;
            let c3 = outer(b, q)?;
            let mut out = Vec::new();
            for (k, cf) in [(-1.0, c0), (0.0, c1), (1.0, c2), (2.0, c3)] {
                let off = b.scalar(k, f)?;
                out.push((b.add(xf, off)?, cf));
            }
            out
        }
        m => return Err(format!("unknown Resize mode `{m}`").into()),
    };
    let zero = c(b, 0.0)?;
    let last = b.sub(nf, one)?;
    let mut taps = taps;
    if how.exclude_outside && taps.len() > 1 {
        // Taps outside the input weigh nothing; the rest are renormalized.
        let mut sum = None;
        for (idx, cf) in taps.iter_mut() {
            let lo = b.elementwise(Op::Ge, &[*idx, zero])?;
            let hi = b.elementwise(Op::Le, &[*idx, last])?;
            let inside = b.elementwise(Op::And, &[lo, hi])?;
            *cf = b.select(inside, *cf, zero)?;
            sum = Some(match sum {
                None => *cf,
                Some(t) => b.add(t, *cf)?,
            });
        }
        let sum = sum.expect("taps");
        let is0 = b.elementwise(Op::Eq, &[sum, zero])?;
        let sum = b.select(is0, one, sum)?;
        for (_, cf) in taps.iter_mut() {
            *cf = b.div(*cf, sum)?;
        }
    }
    let (mut idxs, mut ws) = (Vec::new(), Vec::new());
    for (idx, cf) in taps {
        let idx = b.max(idx, zero)?;
        let idx = b.min(idx, last)?;
        idxs.push(b.cast(idx, DType::I64)?);
        // Every tap's weight as a column (nearest's is the scalar 1).
        ws.push(b.broadcast_to(cf, &col)?);
    }
    let idx = b.op1(Op::Concat { axis: 1 }, &idxs)?;
    let w = b.op1(Op::Concat { axis: 1 }, &ws)?;
    Ok((idx, w))
}
