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

/// cast(dot(x, w) : int, f32) = dot(cast(x, f32), cast(w, f32)), and likewise for `conv`,
/// when |x|·Σ|w| over each output's terms stays within 2^24: every partial sum, in any
/// order, is then an exactly represented integer.
pub const INT_PRODUCT_F32: Rule = Rule {
    name: "int-product-f32",
    search: |eg, id| {
        let mut out = Vec::new();
        for (op, args) in nodes(eg, id) {
            let Op::Cast {
                dtype: DType::F32, ..
            } = op
            else {
                continue;
            };
            out.extend(f32_product(eg, args[0]));
        }
        out
    },
};

/// dot(x, w) : int = cast(dot(cast(x, f32), cast(w, f32)), int) under the same bound (not
/// `conv`: its Winograd form rounds, harmless before a float scale, not before a cast back).
pub const INT_DOT_EXACT: Rule = Rule {
    name: "int-dot-exact",
    search: |eg, id| {
        let dtype = info(eg, id).ty().dtype;
        if !dtype.is_int() || info(eg, id).types.len() != 1 {
            return Vec::new();
        }
        f32_product(eg, id)
            .into_iter()
            .filter(|e| matches!(e, Expr::Node(Op::Dot { .. }, _)))
            .map(|e| {
                Expr::op(
                    Op::Cast {
                        dtype,
                        saturate: true,
                    },
                    [e],
                )
            })
            .collect()
    },
};

/// The f32 product equal to the integer `dot` or `conv` of class `id`, when exact.
fn f32_product(eg: &EGraph, id: Id) -> Vec<Expr> {
    let mut out = Vec::new();
    if !info(eg, id).ty().dtype.is_int() {
        return out;
    }
    for (op, args) in nodes(eg, id) {
        let &[x, w] = args else { continue };
        let bound = match op {
            Op::Dot {
                lhs_contract,
                rhs_contract,
                ..
            } => dot_bound(eg, x, w, lhs_contract, rhs_contract),
            // Winograd's transforms divide by 2 and 4: 3×3 stride-1 filters stay integer.
            Op::Conv { stride, .. } if !winograd_shaped(eg, w, stride) => {
                let rank = info(eg, w).ty().shape.rank();
                let taps: Vec<i64> = (1..rank as i64).collect();
                let by_ranges =
                    || Some(terms(eg, w, &taps)? * magnitude(eg, x)? * magnitude(eg, w)?);
                [bound_with_weight(eg, x, w, &taps), by_ranges()]
                    .into_iter()
                    .flatten()
                    .reduce(f64::min)
            }
            _ => None,
        };
        if bound.is_some_and(|b| b <= EXACT) {
            let cast = |v: Id| {
                Expr::op(
                    Op::Cast {
                        dtype: DType::F32,
                        saturate: true,
                    },
                    [v.into()],
                )
            };
            out.push(Expr::op(op.clone(), [cast(x), cast(w)]));
        }
    }
    out
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
