//! Quantized arithmetic toward the fast products: an integer `dot` or `conv` (what
//! MatMulInteger, ConvInteger and the QLinear ops import as) computed by the f32 product
//! when every partial sum is an integer f32 represents exactly, so the result is the same
//! bits whatever order the sums take.

use egg::Id;
use ir::{DType, Op};

use super::{info, nodes};
use crate::egraph::lang::EGraph;
use crate::egraph::{Expr, Rule};

/// Integers up to this magnitude are exact in f32.
const EXACT: f64 = (1u64 << 24) as f64;

/// The most terms a quantized product may sum without its i32 wrapping: each is at most
/// 255·128 in magnitude (an 8-bit activation less its zero point by an i8 weight).
const MOST_TERMS: i64 = (i32::MAX as i64) / (255 * 128);

/// cast(dot(x, w) : int, f32) = dot(cast(x, f32), cast(w, f32)), and likewise for `conv`,
/// when |x|·Σ|w| over each output's terms stays within 2^24: every partial sum, in any
/// order, is then an exactly represented integer.
pub const INT_PRODUCT_F32: Rule = Rule {
    name: "int-product-f32",
    search: |eg, id| {
        cast_to_f32(eg, id)
            .flat_map(|p| f32_product(eg, p))
            .collect()
    },
};

/// cast(dot(cast(x8, i32) - zero, w) : i32, f32) = qdot(x8, cast(w, i8), zero8) for 8-bit
/// activations `x8` (u8 or i8) and a weight whose values fit i8 (an int8 weight, or a uint8
/// one less its zero point): the integer product of the 8-bit values themselves.
pub const INT8_DOT: Rule = Rule {
    name: "int8-dot",
    search: |eg, id| {
        let mut out = Vec::new();
        for p in cast_to_f32(eg, id) {
            for (op, dargs) in nodes(eg, p) {
                let Op::Dot {
                    lhs_batch,
                    rhs_batch,
                    lhs_contract,
                    rhs_contract,
                } = op
                else {
                    continue;
                };
                if info(eg, p).ty().dtype != DType::I32 {
                    continue;
                }
                let (l, r) = (dargs[0], dargs[1]);
                if !fits_i8(eg, r) {
                    continue;
                }
                let Some((x8, zero, _)) = activation(eg, l) else {
                    continue;
                };
                let w8 = converted(DType::I8, r.into());
                let q = Op::Qdot {
                    lhs_batch: lhs_batch.clone(),
                    rhs_batch: rhs_batch.clone(),
                    lhs_contract: lhs_contract.clone(),
                    rhs_contract: rhs_contract.clone(),
                };
                out.push(Expr::op(q, [x8, w8, zero]));
            }
        }
        out
    },
};

/// cast(min(max(y, lo), hi), int) = cast(y, int) for a float `y` when lo ≤ the type's least
/// value and hi ≥ its greatest: the conversion saturates to the same bounds (and makes NaN
/// 0 either way) — a quantizer's clamp, which its store already does.
pub const SATURATED_CLAMP: Rule = Rule {
    name: "saturated-clamp",
    search: |eg, id| {
        let mut out = Vec::new();
        for (op, args) in nodes(eg, id) {
            let Op::Cast { dtype, saturate } = op else {
                continue;
            };
            let Some((tlo, thi)) = dtype.int_range() else {
                continue;
            };
            // Narrow types (int4, int2) convert through their bit patterns: not here.
            if !info(eg, args[0]).ty().dtype.is_float() || dtype.bits() > 32 || dtype.is_narrow() {
                continue;
            }
            // min(max(y, lo), hi) or max(min(y, hi), lo).
            let bound = |c: Id, outer: &Op, inner: &Op| {
                nodes(eg, c).find_map(|(o, a)| {
                    if o != outer {
                        return None;
                    }
                    let b1 = info(eg, a[1]).splat?;
                    nodes(eg, a[0]).find_map(|(o, x)| {
                        if o != inner {
                            return None;
                        }
                        Some((x[0], b1, info(eg, x[1]).splat?))
                    })
                })
            };
            let clamped = bound(args[0], &Op::Min, &Op::Max)
                .map(|(y, hi, lo)| (y, lo, hi))
                .or_else(|| bound(args[0], &Op::Max, &Op::Min));
            if let Some((y, lo, hi)) = clamped {
                if lo <= tlo && hi >= thi {
                    let op = Op::Cast {
                        dtype: *dtype,
                        saturate: *saturate,
                    };
                    out.push(Expr::op(op, [y.into()]));
                }
            }
        }
        out
    },
};

/// quantize(dequantize(q8)) = q8 with the same scale and an integer zero point: `(q − z)·s / s`
/// rounds back to `q − z` (within 2^-15 of it for |q − z| ≤ 2^17 and a normal scale), so the
/// round trip a QDQ model puts around every reshape and transpose is the identity.
pub const REQUANTIZE: Rule = Rule {
    name: "requantize",
    search: |eg, id| {
        let mut out = Vec::new();
        for (op, args) in nodes(eg, id) {
            let Op::Cast { dtype, .. } = op else {
                continue;
            };
            if !matches!(dtype, DType::U8 | DType::I8) {
                continue;
            }
            if let Some(q) = requantized(eg, args[0], *dtype) {
                out.push(q);
            }
        }
        out
    },
};

/// `q8` (seen through the reshapes and transposes between) when `id` is
/// `round(view(dequantize(q8)) / s) [+ z]` with the dequantizer's own scale and zero point.
fn requantized(eg: &EGraph, id: Id, dtype: DType) -> Option<Expr> {
    let splat = |c: Id| info(eg, c).splat;
    let bin =
        |c: Id, want: Op| nodes(eg, c).find_map(move |(op, a)| (*op == want).then(|| (a[0], a[1])));
    // [+ z]: the zero point, or none.
    let (rounded, z) = match bin(id, Op::Add) {
        Some((x, c)) if splat(c).is_some() => (x, splat(c)?),
        Some((c, x)) if splat(c).is_some() => (x, splat(c)?),
        _ => (id, 0.0),
    };
    // An integer zero point (as every integer type's): q − z is then an integer.
    if z.fract() != 0.0 || z.abs() > 65536.0 {
        return None;
    }
    let divided = nodes(eg, rounded).find_map(|(op, a)| (*op == Op::Round).then(|| a[0]))?;
    let (y, s) = bin(divided, Op::Div)?;
    let s = splat(s)?;
    if !(s.is_finite() && s.abs() >= 1e-30) {
        return None;
    }
    // y = view((cast(q8) − z)·s), or of cast(q8)·s when z is 0.
    let (views, q8) = through_views(eg, y, |y| {
        let centred = match bin(y, Op::Mul) {
            Some((x, c)) if splat(c) == Some(s) => x,
            Some((c, x)) if splat(c) == Some(s) => x,
            _ => return None,
        };
        let widened = match bin(centred, Op::Sub) {
            Some((x, c)) if splat(c) == Some(z) => x,
            _ if z == 0.0 => centred,
            _ => return None,
        };
        nodes(eg, widened).find_map(|(op, a)| match op {
            Op::Cast {
                dtype: DType::F32, ..
            } if info(eg, a[0]).ty().dtype == dtype => Some(a[0]),
            _ => None,
        })
    })?;
    Some(viewed(views, q8))
}

/// What `found` finds of class `id` or of what up to five reshapes and transposes of it view
/// (outermost first), with those views.
fn through_views<T>(
    eg: &EGraph,
    mut id: Id,
    found: impl Fn(Id) -> Option<T>,
) -> Option<(Vec<Op>, T)> {
    let mut views: Vec<Op> = Vec::new();
    loop {
        if let Some(t) = found(id) {
            return Some((views, t));
        }
        let (view, inner) = nodes(eg, id).find_map(|(op, a)| match op {
            Op::Reshape { .. } | Op::Transpose { .. } => Some((op.clone(), a[0])),
            _ => None,
        })?;
        if views.len() > 4 {
            return None;
        }
        views.push(view);
        id = inner;
    }
}

/// Class `x` through `views` (outermost first, as [`through_views`] gives them).
fn viewed(views: Vec<Op>, x: Id) -> Expr {
    (views.into_iter().rev()).fold(Expr::from(x), |e, view| Expr::op(view, [e]))
}

/// dot(dequantize(x8), dequantize(w)) = qdot(x8, w − zw, zx)·(sx·sw): a product of a
/// per-tensor dequantized activation (`(cast(x8) − zx)·sx`, x8 u8 or i8) and a weight
/// dequantized per output column or per tensor (`(cast(w) − zw)·sw`, w − zw within i8) —
/// the QDQ form's product, its scales applied after the integer sums (a reassociation of
/// scalar factors, as `scale-out-of-dot`). Weights `[K, N]` or `[N, K]`, no batch axes.
pub const DEQUANTIZED_DOT: Rule = Rule {
    name: "dequantized-dot",
    search: |eg, id| {
        let mut out = Vec::new();
        for (op, args) in nodes(eg, id) {
            let Some((x, w, kaxis)) = super::rows_by_matrix(eg, op, args) else {
                continue;
            };
            if info(eg, id).ty().dtype != DType::F32 {
                continue;
            }
            // The f32 product does not wrap; the i32 sums must not either.
            let xr = info(eg, x).ty().shape.rank();
            let k = info(eg, x).ty().shape.dim(xr - 1).as_const();
            if k.is_none_or(|k| k > MOST_TERMS) {
                continue;
            }
            let Some((x8, zx, Scale::Tensor(sx))) = dequantized(eg, x, None) else {
                continue;
            };
            // The weight as dequantized, per column (the free axis), in either layout.
            let read = |w: Id, k: usize| dequantized(eg, w, Some(1 - k));
            let Some(((w8, zw, sw), rc)) = super::either_layout(eg, w, kaxis, read) else {
                continue;
            };
            let column = 1 - rc;
            let q = Op::Qdot {
                lhs_batch: vec![],
                rhs_batch: vec![],
                lhs_contract: vec![xr as i64 - 1],
                rhs_contract: vec![rc as i64],
            };
            let Some(zx8) = zero_of(eg, zx, info(eg, x8).ty().dtype) else {
                continue;
            };
            let Some(wq) = weight_bytes(eg, w8, zw, column) else {
                continue;
            };
            let shape = info(eg, id).ty().shape.clone();
            let scale = rescale(sx, sw, &shape, shape.rank() - 1);
            let product = Expr::op(q, [x8.into(), wq, zx8]);
            out.push(Expr::op(Op::Mul, [product, scale]));
        }
        out
    },
};

/// The activation's scale `sx` times the weight's `sw`, broadcast to the product's `shape`
/// (a weight's per-column scales along its `axis`).
fn rescale(sx: Id, sw: Scale, shape: &ir::Shape, axis: usize) -> Expr {
    let wide = |v: Expr, dims: Vec<i64>| {
        Expr::op(
            Op::Broadcast {
                dims,
                shape: shape.clone(),
            },
            [v],
        )
    };
    match sw {
        Scale::Tensor(s) => wide(Expr::op(Op::Mul, [sx.into(), s.into()]), vec![]),
        Scale::Column(s) => {
            let n = ir::Shape::new(vec![shape.dim(axis).clone()]);
            let s = Expr::op(Op::Reshape { shape: n.clone() }, [s.into()]);
            let sxn = Expr::op(
                Op::Broadcast {
                    dims: vec![],
                    shape: n,
                },
                [sx.into()],
            );
            wide(Expr::op(Op::Mul, [sxn, s]), vec![axis as i64])
        }
    }
}

/// A scale: one value (a scalar class), or one per output column (a class of N values, laid
/// out as a vector or as the weight with extent 1 on the contracted axis).
#[derive(Clone, Copy)]
enum Scale {
    Tensor(Id),
    Column(Id),
}

/// Whether `broadcast(v) {dims}` to a weight gives one value per entry of axis `column`: a
/// vector along it, or laid out as the weight with every other axis of extent 1 (`[N, 1]`,
/// `[O, 1, 1, 1]`).
fn per_column(eg: &EGraph, v: Id, dims: &[i64], column: usize, extent: &ir::Dim) -> bool {
    let shape = &info(eg, v).ty().shape;
    match shape.rank() {
        0 => false,
        1 => dims == [column as i64] && shape.dim(0) == extent,
        r => {
            dims.iter().copied().eq(0..r as i64)
                && shape.dim(column) == extent
                && (0..r).all(|a| a == column || shape.dim(a).as_const() == Some(1))
        }
    }
}

/// conv(dequantize(x8), dequantize(w)) = qconv(x8, w − zw, zx)·(sx·sw): a 2-D conv of one
/// group of a per-tensor dequantized u8 image by filters dequantized per tensor or per output
/// channel (`w − zw` within i8) — the QDQ form's conv, its scales applied per channel after
/// the integer sums.
pub const DEQUANTIZED_CONV: Rule = Rule {
    name: "dequantized-conv",
    search: |eg, id| {
        let mut out = Vec::new();
        for (op, args) in nodes(eg, id) {
            let Some(q) = qconv_of(op) else {
                continue;
            };
            let shape = info(eg, id).ty().shape.clone();
            if shape.rank() != 4 || info(eg, id).ty().dtype != DType::F32 {
                continue;
            }
            let (x, w) = (args[0], args[1]);
            // The f32 conv does not wrap; the i32 sums must not either.
            let terms = info(eg, w).ty().shape.dims()[1..]
                .iter()
                .try_fold(1i64, |acc, d| acc.checked_mul(d.as_const()?));
            if terms.is_none_or(|t| t > MOST_TERMS) {
                continue;
            }
            let Some((x8, zx, Scale::Tensor(sx))) = dequantized(eg, x, None) else {
                continue;
            };
            if info(eg, x8).ty().dtype != DType::U8 {
                continue;
            }
            let Some((w8, zw, sw)) = dequantized(eg, w, Some(0)) else {
                continue;
            };
            let (Some(zx8), Some(wq)) = (zero_of(eg, zx, DType::U8), weight_bytes(eg, w8, zw, 0))
            else {
                continue;
            };
            let scale = rescale(sx, sw, &shape, 1);
            let product = Expr::op(q, [x8.into(), wq, zx8]);
            out.push(Expr::op(Op::Mul, [product, scale]));
        }
        out
    },
};

/// `(cast(q, f32) − zero)·scale` (or without the zero): the integer class `q`, the zero's f32
/// class (if any) and the scale. For activations (`column` None) everything is per tensor
/// and `q` 8-bit; for weights `column` is the free axis per-column parameters lie along.
fn dequantized(eg: &EGraph, id: Id, column: Option<usize>) -> Option<(Id, Option<Id>, Scale)> {
    let f32_scalar_under = |c: Id| -> Option<Scale> {
        nodes(eg, c).find_map(|(op, a)| match op {
            // Factoring the scale out of the sums is exact for finite scales only (an
            // infinite one makes 0·inf a NaN inside the sum, not outside).
            Op::Broadcast { dims, .. }
                if info(eg, a[0]).ty().dtype == DType::F32 && finite(eg, a[0]) =>
            {
                match (info(eg, a[0]).ty().shape.rank(), column) {
                    (0, _) => Some(Scale::Tensor(a[0])),
                    (_, Some(j))
                        if per_column(eg, a[0], dims, j, info(eg, id).ty().shape.dim(j)) =>
                    {
                        Some(Scale::Column(a[0]))
                    }
                    _ => None,
                }
            }
            _ => None,
        })
    };
    nodes(eg, id).find_map(|(op, a)| {
        if *op != Op::Mul {
            return None;
        }
        let (body, scale) = match (f32_scalar_under(a[1]), f32_scalar_under(a[0])) {
            (Some(s), _) => (a[0], s),
            (None, Some(s)) => (a[1], s),
            _ => return None,
        };
        if column.is_none() && !matches!(scale, Scale::Tensor(_)) {
            return None;
        }
        let int = |c: Id| {
            nodes(eg, c).find_map(|(op, b)| match op {
                Op::Cast { .. } if info(eg, b[0]).ty().dtype.is_int() => Some(b[0]),
                _ => None,
            })
        };
        let eight =
            |q: Id| column.is_some() || matches!(info(eg, q).ty().dtype, DType::U8 | DType::I8);
        // A weight's integers: converted at run time, or already converted by `fold` (a
        // small weight's f32 integers).
        let int =
            |c: Id| int(c).or_else(|| (column.is_some() && integral(eg, c).is_some()).then_some(c));
        if let Some(q) = int(body).filter(|&q| eight(q)) {
            return Some((q, None, scale));
        }
        nodes(eg, body).find_map(|(op, b)| {
            if *op != Op::Sub {
                return None;
            }
            let q = int(b[0]).filter(|&q| eight(q))?;
            Some((q, Some(b[1]), scale))
        })
    })
}

/// Whether class `id`'s values are known finite where it is a constant or a splat (a value
/// computed at run time passes: only import knows such scales).
fn finite(eg: &EGraph, id: Id) -> bool {
    if let Some(v) = info(eg, id).splat {
        return v.is_finite();
    }
    eg[id]
        .nodes
        .iter()
        .find_map(|n| match eg.analysis.op(n.op) {
            crate::egraph::EOp::Ir(Op::Constant { value }) => {
                Some(value.tensor.to_f64_vec().iter().all(|v| v.is_finite()))
            }
            _ => None,
        })
        .unwrap_or(true)
}

/// The activation's zero point as a scalar of its type: from a splat, or a scalar converted
/// from that type (seen through its broadcast).
fn zero_of(eg: &EGraph, zero: Option<Id>, dtype: DType) -> Option<Expr> {
    let scalar = |v: f64| super::splat_expr(v, dtype, &ir::Shape::scalar());
    let Some(z) = zero else {
        return scalar(0.0);
    };
    let (lo, hi) = dtype.int_range()?;
    if let Some(v) = info(eg, z).splat {
        return ((lo..=hi).contains(&v) && v.fract() == 0.0).then(|| scalar(v))?;
    }
    nodes(eg, z).find_map(|(op, a)| match op {
        Op::Broadcast { .. } if info(eg, a[0]).ty().shape.rank() == 0 => {
            nodes(eg, a[0]).find_map(|(op, b)| match op {
                Op::Cast { .. } if info(eg, b[0]).ty().dtype == dtype => Some(b[0].into()),
                _ => None,
            })
        }
        _ => None,
    })
}

/// The weight less its zero point as i8, when every value fits: `w` alone, or `w − zero` for
/// a splat zero or integers converted to f32 (per tensor, or per column along `column`).
fn weight_bytes(eg: &EGraph, w: Id, zero: Option<Id>, column: usize) -> Option<Expr> {
    let (lo, hi) = integral(eg, w)?;
    let to_i8 = |e: Expr| converted(DType::I8, e);
    let i32s = |e: Expr| converted(DType::I32, e);
    let fits = |lo: f64, hi: f64| lo >= -128.0 && hi <= 127.0;
    let Some(z) = zero else {
        let bytes = info(eg, w).ty().dtype == DType::I8;
        return fits(lo, hi).then(|| if bytes { w.into() } else { to_i8(w.into()) });
    };
    let shape = info(eg, w).ty().shape.clone();
    if let Some(v) = info(eg, z).splat {
        if v.fract() != 0.0 || !fits(lo - v, hi - v) {
            return None;
        }
        let zi = super::splat_expr(v, DType::I32, &shape)?;
        return Some(to_i8(Expr::op(Op::Sub, [i32s(w.into()), zi])));
    }
    // Integer zero points converted to f32, broadcast per tensor or per column.
    nodes(eg, z).find_map(|(op, a)| {
        let Op::Broadcast { dims, .. } = op else {
            return None;
        };
        let per = match info(eg, a[0]).ty().shape.rank() {
            0 => dims.is_empty(),
            _ => per_column(eg, a[0], dims, column, shape.dim(column)),
        };
        if !per {
            return None;
        }
        let zi = nodes(eg, a[0]).find_map(|(op, b)| match op {
            Op::Cast { .. } if info(eg, b[0]).ty().dtype.is_int() => Some(b[0]),
            _ => None,
        })?;
        let (zlo, zhi) = info(eg, zi).range?;
        if !fits(lo - zhi, hi - zlo) {
            return None;
        }
        let zb = Expr::op(
            Op::Broadcast {
                dims: dims.clone(),
                shape: shape.clone(),
            },
            [i32s(zi.into())],
        );
        Some(to_i8(Expr::op(Op::Sub, [i32s(w.into()), zb])))
    })
}

/// An i32 class as 8-bit values less a scalar zero point, seen through reshapes and
/// transposes (a QOperator attention's heads merged before the output projection): `(x8,
/// zero8, x8's type)` for `cast(x8, i32) - broadcast(cast(z8, i32))`, `cast(x8, i32) - splat`
/// or `cast(x8, i32)`, `x8` the views of those bytes.
fn activation(eg: &EGraph, id: Id) -> Option<(Expr, Expr, DType)> {
    let (views, (x8, zero)) = through_views(eg, id, |c| centred(eg, c))?;
    let dtype = info(eg, x8).ty().dtype;
    Some((viewed(views, x8), zero, dtype))
}

/// [`activation`] without views: `(x8, zero8)`.
fn centred(eg: &EGraph, id: Id) -> Option<(Id, Expr)> {
    let widened = |c: Id| {
        nodes(eg, c).find_map(|(op, a)| match op {
            Op::Cast { .. } if matches!(info(eg, a[0]).ty().dtype, DType::U8 | DType::I8) => {
                Some(a[0])
            }
            _ => None,
        })
    };
    let scalar = |dtype: DType, v: f64| super::splat_expr(v, dtype, &ir::Shape::scalar());
    if let Some(x8) = widened(id) {
        return Some((x8, scalar(info(eg, x8).ty().dtype, 0.0)?));
    }
    nodes(eg, id).find_map(|(op, a)| {
        if *op != Op::Sub {
            return None;
        }
        let x8 = widened(a[0])?;
        let dtype = info(eg, x8).ty().dtype;
        let (lo, hi) = dtype.int_range()?;
        if let Some(v) = info(eg, a[1]).splat {
            if !(lo..=hi).contains(&v) {
                return None;
            }
            return Some((x8, scalar(dtype, v)?));
        }
        // A broadcast scalar zero point of the activation's own type.
        nodes(eg, a[1]).find_map(|(op, b)| match op {
            Op::Broadcast { .. } if info(eg, b[0]).ty().shape.rank() == 0 => {
                let z8 = widened(b[0])?;
                (info(eg, z8).ty().dtype == dtype).then_some((x8, z8.into()))
            }
            _ => None,
        })
    })
}

/// dot(x, w) : int = cast(dot(cast(x, f32), cast(w, f32)), int) under the same bound, where
/// the result type holds every sum (a u8 product of u8 values wraps where the conversion
/// back would saturate: the differential fuzz found one) — not `conv`: its Winograd form
/// rounds, harmless before a float scale, not before a cast back.
pub const INT_DOT_EXACT: Rule = Rule {
    name: "int-dot-exact",
    search: |eg, id| {
        let dtype = info(eg, id).ty().dtype;
        if !dtype.is_int() || info(eg, id).types.len() != 1 {
            return Vec::new();
        }
        // The exact sum must be one the result type holds (an integer product wraps; the
        // conversion back saturates): within its range, and not negative for an unsigned one.
        let Some((lo, hi)) = dtype.int_range() else {
            return Vec::new();
        };
        let fits = |x: Id, w: Id, lc: &[i64], rc: &[i64]| {
            let nonnegative = |v: Id| info(eg, v).range.is_some_and(|(l, _)| l >= 0.0);
            dot_bound(eg, x, w, lc, rc)
                .is_some_and(|b| b <= hi && (lo < 0.0 || nonnegative(x) && nonnegative(w)))
        };
        // Each node as itself: the bound that makes its f32 form exact must be its own.
        nodes(eg, id)
            .filter(|(op, args)| match (op, args) {
                (
                    Op::Dot {
                        lhs_contract,
                        rhs_contract,
                        ..
                    },
                    &[x, w],
                ) => fits(*x, *w, lhs_contract, rhs_contract),
                _ => false,
            })
            .filter_map(|(op, args)| f32_node(eg, op, args))
            .map(|e| converted(dtype, e))
            .collect()
    },
};

/// `e` converted to `dtype`.
fn converted(dtype: DType, e: Expr) -> Expr {
    Expr::op(
        Op::Cast {
            dtype,
            saturate: true,
        },
        [e],
    )
}

/// The f32 product equal to the integer `dot` or `conv` of class `id`, when exact.
fn f32_product(eg: &EGraph, id: Id) -> Vec<Expr> {
    if !info(eg, id).ty().dtype.is_int() {
        return Vec::new();
    }
    nodes(eg, id)
        .filter_map(|(op, args)| f32_node(eg, op, args))
        .collect()
}

/// [`f32_product`] of one node, `op` of `args`.
fn f32_node(eg: &EGraph, op: &Op, args: &[Id]) -> Option<Expr> {
    let &[x, w] = args else { return None };
    let bound = match op {
        Op::Dot {
            lhs_contract,
            rhs_contract,
            ..
        } => dot_bound(eg, x, w, lhs_contract, rhs_contract),
        // Winograd's transforms divide by 2 and 4: 3×3 stride-1 filters stay integer —
        // dense ones (grouped and depthwise convs never run by Winograd).
        Op::Conv { stride, groups, .. } if *groups != 1 || !winograd_shaped(eg, w, stride) => {
            let rank = info(eg, w).ty().shape.rank();
            let taps: Vec<i64> = (1..rank as i64).collect();
            let by_ranges = || Some(terms(eg, w, &taps)? * magnitude(eg, x)? * magnitude(eg, w)?);
            [bound_with_weight(eg, x, w, &taps), by_ranges()]
                .into_iter()
                .flatten()
                .reduce(f64::min)
        }
        _ => None,
    };
    let cast = |v: Id| converted(DType::F32, v.into());
    bound
        .is_some_and(|b| b <= EXACT)
        .then(|| Expr::op(op.clone(), [cast(x), cast(w)]))
}

/// Whether a conv with weight `w` could take the Winograd path (3×3 taps, stride 1).
fn winograd_shaped(eg: &EGraph, w: Id, stride: &[i64]) -> bool {
    let shape = &info(eg, w).ty().shape;
    let taps = &shape.dims()[2.min(shape.rank())..];
    taps.iter().all(|d| d.as_const() == Some(3)) && stride.iter().all(|&s| s == 1)
}

/// The largest |partial sum| a dot can reach: from a constant operand's sums of magnitudes
/// along the contracted axes, else from both intervals and the contracted extent.
fn dot_bound(eg: &EGraph, x: Id, w: Id, lc: &[i64], rc: &[i64]) -> Option<f64> {
    let by_ranges = || Some(terms(eg, x, lc)? * magnitude(eg, x)? * magnitude(eg, w)?);
    [
        bound_with_weight(eg, x, w, rc),
        bound_with_weight(eg, w, x, lc),
        by_ranges(),
    ]
    .into_iter()
    .flatten()
    .reduce(f64::min)
}

/// The number of terms each output sums: the product of `id`'s extents along `axes`.
fn terms(eg: &EGraph, id: Id, axes: &[i64]) -> Option<f64> {
    let shape = &info(eg, id).ty().shape;
    axes.iter()
        .map(|&a| Some(shape.dims().get(a as usize)?.as_const()? as f64))
        .product()
}

/// The 8-bit conv of `conv`'s geometry, when it is a conv of one group (what `qconv2d`
/// runs).
fn qconv_of(conv: &Op) -> Option<Op> {
    let Op::Conv {
        stride,
        dilation,
        pad_low,
        pad_high,
        groups: 1,
    } = conv
    else {
        return None;
    };
    Some(Op::Qconv {
        stride: stride.clone(),
        dilation: dilation.clone(),
        pad_low: pad_low.clone(),
        pad_high: pad_high.clone(),
        groups: 1,
    })
}

/// cast(conv(cast(x8, i32) − zero, w) : i32, f32) = qconv(x8, cast(w, i8), zero8): the
/// integer form of ConvInteger and QLinearConv as the 8-bit conv, for a 2-D conv of one group
/// over a u8 image (what `qconv2d` runs) whose weight fits i8 — summed in i32 either way.
pub const INT8_CONV: Rule = Rule {
    name: "int8-conv",
    search: |eg, id| {
        let mut out = Vec::new();
        for p in cast_to_f32(eg, id) {
            if info(eg, p).ty().dtype != DType::I32 {
                continue;
            }
            for (op, cargs) in nodes(eg, p) {
                let Some(q) = qconv_of(op) else {
                    continue;
                };
                let (x, w) = (cargs[0], cargs[1]);
                if info(eg, id).ty().shape.rank() != 4 || !fits_i8(eg, w) {
                    continue;
                }
                let Some((x8, zero, DType::U8)) = activation(eg, x) else {
                    continue;
                };
                out.push(Expr::op(q, [x8, converted(DType::I8, w.into()), zero]));
            }
        }
        out
    },
};

/// qdot(x8, w, z8) = qdot(u8(x8 + 128), w, u8(z8 + 128)) for i8 activations, and `qconv`
/// likewise: the same differences x − z (padding adds nothing either way), on the unsigned
/// operand the 8-bit routines take — symmetric int8 activations (onnxruntime's
/// `ActivationSymmetric`, TensorRT-style QDQ) otherwise ran as scalar loops.
pub const UNSIGNED_ACTIVATIONS: Rule = Rule {
    name: "unsigned-activations",
    search: |eg, id| {
        let mut out = Vec::new();
        for (op, args) in nodes(eg, id) {
            if !matches!(op, Op::Qdot { .. } | Op::Qconv { .. }) {
                continue;
            }
            let (x, w, z) = (args[0], args[1], args[2]);
            if info(eg, x).ty().dtype != DType::I8 {
                continue;
            }
            let shift = |v: Id| -> Option<Expr> {
                let shape = info(eg, v).ty().shape.clone();
                let c = super::splat_expr(128.0, DType::I32, &shape)?;
                let wide = converted(DType::I32, v.into());
                Some(converted(DType::U8, Expr::op(Op::Add, [wide, c])))
            };
            let (Some(xu), Some(zu)) = (shift(x), shift(z)) else {
                continue;
            };
            out.push(Expr::op(op.clone(), [xu, w.into(), zu]));
        }
        out
    },
};

/// The classes that class `id` converts to f32 (its `cast(·, f32)` nodes' operands).
fn cast_to_f32(eg: &EGraph, id: Id) -> impl Iterator<Item = Id> + '_ {
    nodes(eg, id).filter_map(|(op, args)| match op {
        Op::Cast {
            dtype: DType::F32, ..
        } => Some(args[0]),
        _ => None,
    })
}

/// The interval of an integer class, or of an f32 constant whose values are all integers
/// (a small weight's conversion, evaluated by `fold`).
fn integral(eg: &EGraph, id: Id) -> Option<(f64, f64)> {
    if let Some(r) = info(eg, id).range {
        return Some(r);
    }
    eg[id]
        .nodes
        .iter()
        .find_map(|n| match eg.analysis.op(n.op) {
            crate::egraph::EOp::Ir(Op::Constant { value })
                if value.tensor.dtype() == DType::F32 =>
            {
                // Stops at the first fraction: a float model's weights cost one element.
                let d = value.tensor.data();
                (0..d.len()).try_fold(None, |acc: Option<(f64, f64)>, i| {
                    let x = d.get_f64(i);
                    (x.fract() == 0.0 && x.abs() <= EXACT)
                        .then(|| Some(acc.map_or((x, x), |(lo, hi)| (lo.min(x), hi.max(x)))))
                })?
            }
            _ => None,
        })
}

/// Whether every value of class `id` fits i8.
fn fits_i8(eg: &EGraph, id: Id) -> bool {
    info(eg, id)
        .range
        .is_some_and(|(lo, hi)| lo >= -128.0 && hi <= 127.0)
}

/// The integer constant class `id` holds: a constant, or a conversion of one that keeps
/// every value (an int8 weight widened to i32).
fn int_constant(eg: &EGraph, id: Id) -> Option<&ir::Tensor> {
    let direct = |id: Id| {
        eg[id]
            .nodes
            .iter()
            .find_map(|n| match eg.analysis.op(n.op) {
                crate::egraph::EOp::Ir(Op::Constant { value }) if value.tensor.dtype().is_int() => {
                    Some(&value.tensor)
                }
                _ => None,
            })
    };
    direct(id).or_else(|| {
        nodes(eg, id).find_map(|(op, args)| match op {
            Op::Cast { dtype, .. } => {
                let t = direct(args[0])?;
                let (lo, hi) = info(eg, args[0]).range?;
                let (tlo, thi) = dtype.int_range()?;
                (lo >= tlo && hi <= thi).then_some(t)
            }
            _ => None,
        })
    })
}

/// max|x| times the largest sum of |w| over the `contract` axes, when `w` is a constant.
fn bound_with_weight(eg: &EGraph, x: Id, w: Id, contract: &[i64]) -> Option<f64> {
    let t = int_constant(eg, w)?;
    let shape = t.shape();
    // Each element's index along the axes kept (not contracted), flattened.
    let kept: Vec<usize> = (0..shape.len())
        .filter(|a| !contract.contains(&(*a as i64)))
        .collect();
    let mut strides = vec![0usize; shape.len()];
    let mut s = 1;
    for &a in kept.iter().rev() {
        strides[a] = s;
        s *= shape[a];
    }
    let mut sums = vec![0f64; s.max(1)];
    let data = t.data();
    let mut index = vec![0usize; shape.len()];
    for i in 0..data.len() {
        let slot: usize = index.iter().zip(&strides).map(|(i, s)| i * s).sum();
        sums[slot] += data.get_f64(i).abs();
        for a in (0..shape.len()).rev() {
            index[a] += 1;
            if index[a] < shape[a] {
                break;
            }
            index[a] = 0;
        }
    }
    let most = sums.into_iter().fold(0f64, f64::max);
    Some(magnitude(eg, x)? * most)
}

/// The largest |element| of an integer class, from its interval.
fn magnitude(eg: &EGraph, id: Id) -> Option<f64> {
    info(eg, id).range.map(|(lo, hi)| lo.abs().max(hi.abs()))
}
