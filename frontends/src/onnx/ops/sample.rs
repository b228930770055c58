//! Spatial sampling: GridSample (nearest, (bi/tri)linear and bicubic over any number of spatial
//! axes, with zeros, border and reflection padding) and AffineGrid, decomposed into
//! elementwise coordinate arithmetic, a batched gather per tap and a weighted sum, following
//! the ONNX reference semantics step by step.

use crate::onnx::OpError;

use ir::{Builder, DType, Dim, Op, Shape, Tensor, Value};

use super::{s, Res};
use crate::onnx::import::{Ctx, Node};

type R<T> = Result<T, OpError>;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Nearest,
    Linear,
    Cubic,
}

#[derive(Clone, Copy, PartialEq)]
enum Padding {
    Zeros,
    Border,
    Reflection,
}

fn cmp(b: &mut Builder, op: Op, x: Value, c: f64) -> R<Value> {
    let c = b.scalar_like(c, x)?;
    b.elementwise(op, &[x, c]).map_err(s)
}

fn add_c(b: &mut Builder, x: Value, c: f64) -> R<Value> {
    let c = b.scalar_like(c, x)?;
    b.add(x, c).map_err(s)
}

fn mul_c(b: &mut Builder, x: Value, c: f64) -> R<Value> {
    let c = b.scalar_like(c, x)?;
    b.mul(x, c).map_err(s)
}

/// `c - x`.
fn rsub_c(b: &mut Builder, c: f64, x: Value) -> R<Value> {
    let c = b.scalar_like(c, x)?;
    b.sub(c, x).map_err(s)
}

/// Reflects `x` by the nearer border until it lies in `[lo, hi]` (the reference's
/// `_gs_reflect`, elementwise).
fn reflect(b: &mut Builder, x: Value, lo: f64, hi: f64) -> R<Value> {
    let range = hi - lo;
    if range <= 0.0 {
        let lo_v = b.scalar_like(lo, x)?;
        return b.broadcast_to(lo_v, &b.shape(x).clone()).map_err(s);
    }
    // One side: distance past the border, whole ranges crossed, their parity, the rest.
    let side = |b: &mut Builder, dx: Value, near: f64, far: f64, toward: f64| -> R<Value> {
        let q = mul_c(b, dx, 1.0 / range)?;
        let q = b.unary(Op::Floor, q)?;
        let rest = mul_c(b, q, range)?;
        let rest = b.sub(dx, rest)?;
        let half = mul_c(b, q, 0.5)?;
        let halff = b.unary(Op::Floor, half)?;
        let even = b.elementwise(Op::Eq, &[half, halff])?;
        // Even: from the near border inward; odd: from the far border back.
        let from_near = mul_c(b, rest, toward)?;
        let from_near = add_c(b, from_near, near)?;
        let from_far = mul_c(b, rest, -toward)?;
        let from_far = add_c(b, from_far, far)?;
        b.select(even, from_near, from_far).map_err(s)
    };
    let below = cmp(b, Op::Lt, x, lo)?;
    let above = cmp(b, Op::Gt, x, hi)?;
    let dlo = rsub_c(b, lo, x)?;
    let dhi = add_c(b, x, -hi)?;
    let r_lo = side(b, dlo, lo, hi, 1.0)?;
    let r_hi = side(b, dhi, hi, lo, -1.0)?;
    let y = b.select(above, r_hi, x)?;
    b.select(below, r_lo, y).map_err(s)
}

/// One tap along one axis: the (possibly out-of-range) index, its weight and, for zero
/// padding, whether it is inside.
struct Tap {
    index: Value,
    weight: Option<Value>,
    inside: Option<Value>,
}

/// The index of a tap made safe to gather with, by the padding mode (the reference's
/// `_pixel_at_array`): zeros clamps (and remembers what was outside), border clamps,
/// reflection reflects the index by the float borders and truncates.
fn pad_index(b: &mut Builder, i: Value, len: i64, pad: Padding, lo: f64, hi: f64) -> R<Tap> {
    let clamp = |b: &mut Builder, i: Value| -> R<Value> {
        let zero = b.scalar_like(0.0, i)?;
        let top = b.scalar_like((len - 1) as f64, i)?;
        let i = b.max(i, zero)?;
        b.min(i, top).map_err(s)
    };
    Ok(match pad {
        Padding::Zeros => {
            let ge = cmp(b, Op::Ge, i, 0.0)?;
            let lt = cmp(b, Op::Lt, i, len as f64)?;
            let inside = b.elementwise(Op::And, &[ge, lt])?;
            Tap {
                index: clamp(b, i)?,
                weight: None,
                inside: Some(inside),
            }
        }
        Padding::Border => Tap {
            index: clamp(b, i)?,
            weight: None,
            inside: None,
        },
        Padding::Reflection => {
            let r = reflect(b, i, lo, hi)?;
            let t = b.cast(r, DType::I64)?;
            let t = b.cast(t, b.ty(i).dtype)?;
            Tap {
                index: clamp(b, t)?,
                weight: None,
                inside: None,
            }
        }
    })
}

/// Keys' cubic convolution coefficients (A = -0.75) for a fraction `t`, taps -1..=2.
fn cubic_coeffs(b: &mut Builder, t: Value) -> R<[Value; 4]> {
    const A: f64 = -0.75;
    // Outer taps at distance d in (1, 2): ((A(d) - 5A)d + 8A)d - 4A.
    let outer = |b: &mut Builder, d: Value| -> R<Value> {
        let p = mul_c(b, d, A)?;
        let p = add_c(b, p, -5.0 * A)?;
        let p = b.mul(p, d)?;
        let p = add_c(b, p, 8.0 * A)?;
        let p = b.mul(p, d)?;
        add_c(b, p, -4.0 * A)
    };
    // Inner taps at distance d in [0, 1]: ((A + 2)d - (A + 3))d² + 1.
    let inner = |b: &mut Builder, d: Value| -> R<Value> {
        let p = mul_c(b, d, A + 2.0)?;
        let p = add_c(b, p, -(A + 3.0))?;
        let p = b.mul(p, d)?;
        let p = b.mul(p, d)?;
        add_c(b, p, 1.0)
    };
    let d0 = add_c(b, t, 1.0)?;
    let d2 = rsub_c(b, 1.0, t)?;
    let d3 = rsub_c(b, 2.0, t)?;
    Ok([outer(b, d0)?, inner(b, t)?, inner(b, d2)?, outer(b, d3)?])
}

pub fn grid_sample(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let grid = ctx.ir(n.req(1)?)?;
    let mode = match n
        .string_or("mode", if n.version < 20 { "bilinear" } else { "linear" })?
        .as_str()
    {
        "nearest" => Mode::Nearest,
        "bilinear" | "linear" => Mode::Linear,
        "bicubic" | "cubic" => Mode::Cubic,
        m => return Err(format!("mode `{m}` is not known").into()),
    };
    let pad = match n.string_or("padding_mode", "zeros")?.as_str() {
        "zeros" => Padding::Zeros,
        "border" => Padding::Border,
        "reflection" => Padding::Reflection,
        m => return Err(format!("padding_mode `{m}` is not known").into()),
    };
    let align = n.int_or("align_corners", 0)? != 0;
    let b = &mut ctx.b;
    let (xd, gd) = (b.shape(x).dims().to_vec(), b.shape(grid).dims().to_vec());
    let k = xd
        .len()
        .checked_sub(2)
        .filter(|&k| k >= 1)
        .ok_or("X needs a spatial axis")?;
    if gd.len() != k + 2 || gd[k + 1].as_const() != Some(k as i64) {
        return Err(format!(
            "the grid of {k} spatial axes must have shape [N, {}, {k}]",
            vec!["..."; k].join(", ")
        )
        .into());
    }
    if mode == Mode::Cubic && k != 2 {
        return Err("cubic sampling is defined for two spatial axes".into());
    }
    let lens: Vec<i64> = xd[2..]
        .iter()
        .map(|d| d.as_const())
        .collect::<Option<_>>()
        .ok_or("GridSample needs X's spatial dims known when the model is imported")?;
    let (nb, c) = (xd[0].clone(), xd[1].clone());
    let out_sp: Vec<Dim> = gd[1..=k].to_vec();
    let p = out_sp.iter().try_fold(Dim::Const(1), |a, d| a.mul(d))?;
    let grid = b.reshape(
        grid,
        Shape::new(vec![nb.clone(), p.clone(), Dim::Const(k as i64)]),
    )?;
    // Taps per spatial axis (outermost first): grid's last axis lists x (innermost) first.
    let mut axis_taps: Vec<Vec<Tap>> = Vec::with_capacity(k);
    for (a, &len) in lens.iter().enumerate() {
        let comp = k - 1 - a;
        let g = super::slice_axis(
            b,
            grid,
            2,
            Dim::Const(comp as i64),
            Dim::Const(comp as i64 + 1),
            1,
        )?;
        let g = b.reshape(g, Shape::new(vec![nb.clone(), p.clone()]))?;
        let (lo, hi) = if align {
            (0.0, (len - 1) as f64)
        } else {
            (-0.5, len as f64 - 0.5)
        };
        // Denormalize.
        let mut xv = if align {
            let t = add_c(b, g, 1.0)?;
            mul_c(b, t, (len - 1) as f64 / 2.0)?
        } else {
            let t = add_c(b, g, 1.0)?;
            let t = mul_c(b, t, len as f64)?;
            let t = add_c(b, t, -1.0)?;
            mul_c(b, t, 0.5)?
        };
        if mode == Mode::Nearest {
            xv = b.unary(Op::Round, xv)?;
        }
        match pad {
            Padding::Border => {
                let out = {
                    let l = cmp(b, Op::Lt, xv, lo)?;
                    let h = cmp(b, Op::Gt, xv, hi)?;
                    b.elementwise(Op::Or, &[l, h])?
                };
                let zero = b.scalar_like(0.0, xv)?;
                let top = b.scalar_like((len - 1) as f64, xv)?;
                let cl = b.max(xv, zero)?;
                let cl = b.min(cl, top)?;
                xv = b.select(out, cl, xv)?;
            }
            Padding::Reflection => xv = reflect(b, xv, lo, hi)?,
            Padding::Zeros => {}
        }
        let floor = b.unary(Op::Floor, xv)?;
        let frac = b.sub(xv, floor)?;
        let mut taps = Vec::new();
        match mode {
            Mode::Nearest => {
                // Truncation, as the reference's int cast of the rounded value.
                let t = b.cast(xv, DType::I64)?;
                let t = b.cast(t, b.ty(xv).dtype)?;
                taps.push(pad_index(b, t, len, pad, lo, hi)?);
            }
            Mode::Linear => {
                let w0 = rsub_c(b, 1.0, frac)?;
                for (off, w) in [(0.0, w0), (1.0, frac)] {
                    let i = add_c(b, floor, off)?;
                    let mut tap = pad_index(b, i, len, pad, lo, hi)?;
                    tap.weight = Some(w);
                    taps.push(tap);
                }
            }
            Mode::Cubic => {
                let ws = cubic_coeffs(b, frac)?;
                for (off, w) in [-1.0, 0.0, 1.0, 2.0].into_iter().zip(ws) {
                    let i = add_c(b, floor, off)?;
                    let mut tap = pad_index(b, i, len, pad, lo, hi)?;
                    tap.weight = Some(w);
                    taps.push(tap);
                }
            }
        }
        axis_taps.push(taps);
    }
    // X as [N, S, C] for a batched gather of flat spatial positions.
    let total: i64 = lens.iter().product();
    let xf = b.reshape(
        x,
        Shape::new(vec![nb.clone(), c.clone(), Dim::Const(total)]),
    )?;
    let xf = b.transpose(xf, &[0, 2, 1])?;
    let xdt = b.ty(x).dtype;
    let mut strides = vec![1i64; k];
    for a in (0..k.saturating_sub(1)).rev() {
        strides[a] = strides[a + 1] * lens[a + 1];
    }
    let mut acc: Option<Value> = None;
    let combos: usize = axis_taps.iter().map(Vec::len).product();
    for combo in 0..combos {
        let mut rest = combo;
        let (mut flat, mut weight, mut inside): (Option<Value>, Option<Value>, Option<Value>) =
            (None, None, None);
        for a in (0..k).rev() {
            let taps = &axis_taps[a];
            let tap = &taps[rest % taps.len()];
            rest /= taps.len();
            let term = mul_c(b, tap.index, strides[a] as f64)?;
            flat = Some(match flat {
                Some(f) => b.add(f, term)?,
                None => term,
            });
            if let Some(w) = tap.weight {
                weight = Some(match weight {
                    Some(x) => b.mul(x, w)?,
                    None => w,
                });
            }
            if let Some(m) = tap.inside {
                inside = Some(match inside {
                    Some(x) => b.elementwise(Op::And, &[x, m])?,
                    None => m,
                });
            }
        }
        let flat = flat.expect("at least one spatial axis");
        let idx = b.cast(flat, DType::I64)?;
        let idx = b.unsqueeze(idx, -1)?;
        // [N, P, C]
        let mut v = b.op1(Op::GatherNd { batch_dims: 1 }, &[xf, idx])?;
        if let Some(m) = inside {
            let m = b.unsqueeze(m, -1)?;
            let zero = b.scalar(0.0, xdt)?;
            v = b.select(m, v, zero)?;
        }
        if let Some(w) = weight {
            let w = b.cast(w, xdt)?;
            let w = b.unsqueeze(w, -1)?;
            v = b.mul(v, w)?;
        }
        acc = Some(match acc {
            Some(a) => b.add(a, v)?,
            None => v,
        });
    }
    let y = acc.expect("at least one tap");
    let y = b.transpose(y, &[0, 2, 1])?;
    let mut out = vec![nb, c];
    out.extend(out_sp);
    let y = b.reshape(y, Shape::new(out))?;
    Ok(vec![ctx.v(y)])
}

pub fn affine_grid(ctx: &mut Ctx, n: &Node) -> Res {
    let theta = ctx.ir(n.req(0)?)?;
    let size = ctx.static_ints(n.req(1)?)?;
    let align = n.int_or("align_corners", 0)? != 0;
    let k = size
        .len()
        .checked_sub(2)
        .filter(|k| (2..=3).contains(k))
        .ok_or("size must be [N, C, H, W] or [N, C, D, H, W]")?;
    let lens = &size[2..];
    if lens.iter().any(|&l| l < 0) || size[0] < 0 {
        return Err(format!("size {size:?} has a negative dim").into());
    }
    // Base coordinates per axis, then the homogeneous grid [S, k+1] with x innermost.
    let coords = |len: i64| -> Vec<f64> {
        (0..len)
            .map(|i| match (align, len) {
                // The reference's arange with an infinite step: just the start.
                (_, 1) if align => -1.0,
                (true, _) => -1.0 + 2.0 * i as f64 / (len - 1) as f64,
                (false, _) => (2 * i + 1) as f64 / len as f64 - 1.0,
            })
            .collect()
    };
    let per_axis: Vec<Vec<f64>> = lens.iter().map(|&l| coords(l)).collect();
    let total: i64 = lens.iter().product();
    let mut base = Vec::with_capacity(total as usize * (k + 1));
    for flat in 0..total {
        let mut rest = flat;
        let mut idx = vec![0usize; k];
        for a in (0..k).rev() {
            idx[a] = (rest % lens[a]) as usize;
            rest /= lens[a];
        }
        for a in (0..k).rev() {
            base.push(per_axis[a][idx[a]]);
        }
        base.push(1.0);
    }
    let b = &mut ctx.b;
    let dtype = b.ty(theta).dtype;
    let base = Tensor::from_vec(vec![total as usize, k + 1], base)?;
    let base = b.constant(base)?;
    let base = b.cast(base, dtype)?;
    // grid[n, s, :] = theta[n] · base[s]: base [S, k+1] × thetaᵀ [N, k+1, k].
    let tt = b.transpose_last2(theta)?;
    let g = b.matmul(base, tt)?;
    let mut dims = vec![Dim::Const(size[0])];
    dims.extend(lens.iter().map(|&l| Dim::Const(l)));
    dims.push(Dim::Const(k as i64));
    let g = b.reshape(g, Shape::new(dims))?;
    Ok(vec![ctx.v(g)])
}
