//! Algebraic simplification: identities of arithmetic, inverse functions, division by a
//! constant, scalar factors moving through `dot`, a `dot` with a splat operand as a sum, and
//! splat constants as scalar broadcasts.

use egg::Id;
use ir::Op;

use super::{find, info, is_splat, nodes, splat_expr};
use crate::egraph::lang::EGraph;
use crate::egraph::{Expr, Rule};

/// x * 1 = 1 * x = x
pub const MUL_ONE: Rule = Rule {
    name: "mul-one",
    search: |eg, id| unit(eg, id, |op| matches!(op, Op::Mul), 1.0, true),
};

/// x + 0 = 0 + x = x
pub const ADD_ZERO: Rule = Rule {
    name: "add-zero",
    search: |eg, id| unit(eg, id, |op| matches!(op, Op::Add), 0.0, true),
};

/// x - 0 = x
pub const SUB_ZERO: Rule = Rule {
    name: "sub-zero",
    search: |eg, id| unit(eg, id, |op| matches!(op, Op::Sub), 0.0, false),
};

/// x / 1 = x
pub const DIV_ONE: Rule = Rule {
    name: "div-one",
    search: |eg, id| unit(eg, id, |op| matches!(op, Op::Div), 1.0, false),
};

/// An operand that is the identity element of a binary op leaves the other one.
fn unit(eg: &EGraph, id: Id, is: fn(&Op) -> bool, e: f64, commutes: bool) -> Vec<Expr> {
    let mut out = Vec::new();
    for (op, args) in nodes(eg, id) {
        if !is(op) {
            continue;
        }
        if is_splat(eg, args[1], e) {
            out.push(args[0].into());
        } else if commutes && is_splat(eg, args[0], e) {
            out.push(args[1].into());
        }
    }
    out
}

/// --x = x
pub const NEG_NEG: Rule = Rule {
    name: "neg-neg",
    search: |eg, id| {
        inverse(
            eg,
            id,
            |op| matches!(op, Op::Neg),
            |op| matches!(op, Op::Neg),
            false,
            false,
        )
    },
};

/// exp(log x) = x for x known positive
pub const EXP_LOG: Rule = Rule {
    name: "exp-log",
    search: |eg, id| {
        inverse(
            eg,
            id,
            |op| matches!(op, Op::Exp),
            |op| matches!(op, Op::Log),
            true,
            true,
        )
    },
};

/// log(exp x) = x
pub const LOG_EXP: Rule = Rule {
    name: "log-exp",
    search: |eg, id| {
        inverse(
            eg,
            id,
            |op| matches!(op, Op::Log),
            |op| matches!(op, Op::Exp),
            false,
            true,
        )
    },
};

/// outer(inner(x)) = x.
fn inverse(
    eg: &EGraph,
    id: Id,
    outer: fn(&Op) -> bool,
    inner: fn(&Op) -> bool,
    needs_positive: bool,
    real_only: bool,
) -> Vec<Expr> {
    let mut out = Vec::new();
    // exp and log round in between: only for real floats (not 8- or 4-bit ones).
    if real_only && !super::is_real(eg, id) {
        return out;
    }
    for (op, args) in nodes(eg, id) {
        if !outer(op) {
            continue;
        }
        if let Some((_, x)) = find(eg, args[0], inner) {
            if !needs_positive || info(eg, x[0]).positive {
                out.push(x[0].into());
            }
        }
    }
    out
}

/// x / c = x * (1/c) for a constant splat c whose reciprocal is an exact, normal f32/f64
/// number (c a power of two).
pub const DIV_CONST: Rule = Rule {
    name: "div-const",
    search: |eg, id| {
        let mut out = Vec::new();
        for (op, args) in nodes(eg, id) {
            let (x, c) = match (op, args) {
                (Op::Div, [x, c]) => (*x, *c),
                _ => continue,
            };
            let ci = info(eg, c);
            if !ci.constant || !super::is_real(eg, c) || ci.splat == Some(1.0) {
                continue;
            }
            // Only where the reciprocal is a normal number: 1/c overflowing (c subnormal) or
            // vanishing would change results by more than rounding.
            let Some(v) = ci.splat else { continue };
            let r = 1.0 / v;
            let min_normal = match ci.ty().dtype {
                ir::DType::F64 => f64::MIN_POSITIVE,
                ir::DType::F32 => f32::MIN_POSITIVE as f64,
                _ => continue,
            };
            let max = if ci.ty().dtype == ir::DType::F64 {
                f64::MAX
            } else {
                f32::MAX as f64
            };
            if !(min_normal..=max).contains(&r.abs()) {
                continue;
            }
            // And only where it is exact (c a power of two): quantizers round right after
            // dividing by their scale, and one ulp there moves a result by a whole step.
            if r.abs() != 2f64.powi(r.abs().log2().round() as i32) {
                continue;
            }
            if let Some(r) = splat_expr(r, ci.ty().dtype, &ci.ty().shape) {
                out.push(Expr::op(Op::Mul, [x.into(), r]));
            }
        }
        out
    },
};

/// The operand of `mul` that is a splat, with its value, and the other operand — for a
/// finite, nonzero splat only: moving an infinite or zero factor across a sum changes what it
/// gives (`(x·W)·inf` is one infinity where `x·(W·inf)` adds +inf and -inf; `0·dot` is 0 where
/// the scaled operand's infinities give NaN).
fn scaled(eg: &EGraph, id: Id) -> Option<(Id, f64)> {
    let movable = |v: f64| v.is_finite() && v != 0.0;
    nodes(eg, id).find_map(|(op, args)| match (op, args) {
        (Op::Mul, [a, b]) => match (info(eg, *a).splat, info(eg, *b).splat) {
            (_, Some(v)) if movable(v) => Some((*a, v)),
            (Some(v), _) if movable(v) => Some((*b, v)),
            _ => None,
        },
        _ => None,
    })
}

/// dot(s*A, B) = s * dot(A, B), and likewise for a scaled B.
pub const SCALE_OUT_OF_DOT: Rule = Rule {
    name: "scale-out-of-dot",
    search: |eg, id| {
        let mut out = Vec::new();
        let ty = info(eg, id).ty().clone();
        for (op, args) in nodes(eg, id) {
            if !matches!(op, Op::Dot { .. }) || !super::is_real(eg, id) {
                continue;
            }
            for side in 0..2 {
                let Some((inner, v)) = scaled(eg, args[side]) else {
                    continue;
                };
                let mut operands: Vec<Expr> = args.iter().map(|&a| a.into()).collect();
                operands[side] = inner.into();
                let Some(s) = splat_expr(v, ty.dtype, &ty.shape) else {
                    continue;
                };
                out.push(Expr::op(Op::Mul, [Expr::op(op.clone(), operands), s]));
            }
        }
        out
    },
};

/// s * dot(A, B) = dot(s*A, B) = dot(A, s*B): the cost model scales the smallest.
pub const SCALE_INTO_DOT: Rule = Rule {
    name: "scale-into-dot",
    search: |eg, id| {
        let mut out = Vec::new();
        let Some((d, v)) = scaled(eg, id) else {
            return out;
        };
        if !super::is_real(eg, id) {
            return out;
        }
        let Some((dot, args)) = find(eg, d, |op| matches!(op, Op::Dot { .. })) else {
            return out;
        };
        for side in 0..2 {
            let ty = info(eg, args[side]).ty();
            let Some(s) = splat_expr(v, ty.dtype, &ty.shape) else {
                continue;
            };
            let mut operands: Vec<Expr> = args.iter().map(|&a| a.into()).collect();
            operands[side] = Expr::op(Op::Mul, [args[side].into(), s]);
            out.push(Expr::op(dot.clone(), operands));
        }
        out
    },
};

/// A constant tensor whose elements are all equal is a scalar constant broadcast.
pub const SPLAT_CONSTANT: Rule = Rule {
    name: "splat-constant",
    search: |eg, id| {
        let i = info(eg, id);
        let Some(v) = i.splat else { return vec![] };
        let big_constant = nodes(eg, id).any(|(op, _)| match op {
            Op::Constant { value } => value.tensor.numel() > 1,
            _ => false,
        });
        if !big_constant {
            return vec![];
        }
        splat_expr(v, i.ty().dtype, &i.ty().shape)
            .into_iter()
            .collect()
    },
};

/// dot(A, c) with every element of one operand the same finite, nonzero c is c times the
/// other operand summed over the contracted axes, broadcast over the splat side's free axes:
/// O(M·K) work instead of O(M·K·N). Placeholder weights (a model zoo's `ConstantOfShape`
/// splats) take this; real weights never do. Only where the summed operand's remaining axes
/// keep their order in the result (batch axes first), so the broadcast needs no transpose.
pub const DOT_OF_SPLAT: Rule = Rule {
    name: "dot-of-splat",
    search: |eg, id| {
        let mut out = Vec::new();
        if !super::is_real(eg, id) {
            return out;
        }
        let ty = info(eg, id).ty().clone();
        for (op, args) in nodes(eg, id) {
            let Op::Dot {
                lhs_batch,
                rhs_batch,
                lhs_contract,
                rhs_contract,
            } = op
            else {
                continue;
            };
            let ranks = [info(eg, args[0]).ty().rank(), info(eg, args[1]).ty().rank()];
            let free = |side: usize, batch: &[i64], contract: &[i64]| {
                ranks[side] - batch.len() - contract.len()
            };
            let lhs_free = free(0, lhs_batch, lhs_contract);
            for side in 0..2 {
                let Some(c) = info(eg, args[side])
                    .splat
                    .filter(|v| v.is_finite() && *v != 0.0)
                else {
                    continue;
                };
                // The other operand is summed; its axes land in the result at these places.
                let other = 1 - side;
                let (batch, contract, first_free) = if other == 0 {
                    (lhs_batch, lhs_contract, lhs_batch.len())
                } else {
                    (rhs_batch, rhs_contract, lhs_batch.len() + lhs_free)
                };
                let mut dims = Vec::new();
                let mut free_seen = 0;
                for a in 0..ranks[other] as i64 {
                    if contract.contains(&a) {
                        continue;
                    }
                    match batch.iter().position(|&b| b == a) {
                        Some(j) => dims.push(j as i64),
                        None => {
                            dims.push((first_free + free_seen) as i64);
                            free_seen += 1;
                        }
                    }
                }
                if contract.is_empty() || dims.windows(2).any(|w| w[0] >= w[1]) {
                    continue;
                }
                // A sum over a set of axes: in increasing order, as `reduce_sum` takes them
                // (a dot may name its contracting axes in any order).
                let mut axes = contract.clone();
                axes.sort_unstable();
                let summed = Expr::op(Op::ReduceSum { axes }, [args[other].into()]);
                let kept: Vec<ir::Dim> = dims
                    .iter()
                    .map(|&d| ty.shape.dim(d as usize).clone())
                    .collect();
                let Some(s) = splat_expr(c, ty.dtype, &ir::Shape::new(kept)) else {
                    continue;
                };
                out.push(Expr::op(
                    Op::Broadcast {
                        dims,
                        shape: ty.shape.clone(),
                    },
                    [Expr::op(Op::Mul, [summed, s])],
                ));
            }
        }
        out
    },
};

/// (x·a + b)·c + d = x·(a·c) + (b·c + d) for constant a, b, c, d (a = 1 and d = 0 where
/// there is no inner scale or outer shift) — splats, or broadcasts of
/// finite constants from one source shape along the same axes (a batch norm followed by a
/// per-channel scale and shift, as Caffe2's exports have them): one scale and one shift,
/// which a conv or product then applies as it stores, instead of a pass over its result.
/// The constants fold; the products round once less or once more.
pub const AFFINE_CHAIN: Rule = Rule {
    name: "affine-chain",
    search: |eg, id| {
        let mut out = Vec::new();
        if !super::is_real(eg, id) {
            return out;
        }
        let ty = info(eg, id).ty().clone();
        // (the operand that is not a constant, the constant) of each `op` node of class `id`.
        let split = |id: Id, want: fn(&Op) -> bool| -> Vec<(Id, Coef)> {
            let mut found = Vec::new();
            for (op, args) in nodes(eg, id) {
                if !want(op) || args.len() != 2 {
                    continue;
                }
                for (v, k) in [(args[0], args[1]), (args[1], args[0])] {
                    if let Some(k) = coef(eg, k) {
                        found.push((v, k));
                    }
                }
            }
            found
        };
        fn is_add(op: &Op) -> bool {
            matches!(op, Op::Add)
        }
        fn is_mul(op: &Op) -> bool {
            matches!(op, Op::Mul)
        }
        // The outer shift and the inner scale may be missing (d = 0, a = 1) where the class
        // has no such op at all: a bias, then a scale and shift of its own (Paddle's
        // learnable affine blocks after a conv) — only where the biased value `y` has no
        // other reader, which would go on computing it (a HardSwish's x·hardsigmoid(x)
        // reads x + b twice, and its recognizers need the chain as written).
        let has = |id: Id, want: fn(&Op) -> bool| nodes(eg, id).any(|(op, _)| want(op));
        let alone = |id: Id| {
            let mut readers: Vec<Id> = eg[id].parents().map(|p| eg.find(p)).collect();
            readers.sort();
            readers.dedup();
            readers.len() == 1
        };
        let mut outer = split(id, is_add);
        if !has(id, is_add) {
            outer.push((id, Coef::Splat(0.0)));
        }
        for (m, d) in outer {
            for (y, c) in split(m, is_mul) {
                for (z, b) in split(y, is_add) {
                    let mut inner = split(z, is_mul);
                    if !has(z, is_mul) && alone(y) {
                        inner.push((z, Coef::Splat(1.0)));
                    }
                    for (x, a) in inner {
                        let coefs = [&a, &b, &c, &d];
                        if let Some(e) = affine(eg, x, coefs, &ty) {
                            out.push(e);
                        }
                    }
                }
            }
        }
        out
    },
};

/// A constant operand of an affine chain: a finite splat, or a constant broadcast along
/// `dims` from its source class; with the least nonzero and the greatest magnitude of its
/// elements (0 for the least where all are zero).
#[derive(Clone)]
enum Coef {
    Splat(f64),
    Broadcast(Id, Vec<i64>, (f64, f64)),
}

impl Coef {
    fn range(&self) -> (f64, f64) {
        match self {
            Coef::Splat(v) => (v.abs(), v.abs()),
            Coef::Broadcast(_, _, r) => *r,
        }
    }
}

fn coef(eg: &EGraph, id: Id) -> Option<Coef> {
    let i = info(eg, id);
    if !i.constant {
        return None;
    }
    if let Some(v) = i.splat {
        return v.is_finite().then_some(Coef::Splat(v));
    }
    let (Op::Broadcast { dims, .. }, [src]) =
        find(eg, id, |op| matches!(op, Op::Broadcast { .. }))?
    else {
        return None;
    };
    // Finite values only (an infinite factor across the reassociation can turn a product
    // into NaN), and their range: a constant's elements are read. One element (a `[1]`
    // constant, as Paddle's exports have scalars) is a splat.
    let one = nodes(eg, *src).find_map(|(op, _)| match op {
        Op::Constant { value } => match value.tensor.as_slice::<f32>()? {
            &[v] => Some(f64::from(v)),
            _ => None,
        },
        _ => None,
    });
    if let Some(v) = one {
        return v.is_finite().then_some(Coef::Splat(v));
    }
    let range = nodes(eg, *src).find_map(|(op, _)| match op {
        Op::Constant { value } => {
            let v = value.tensor.as_slice::<f32>()?;
            let mut r = (f64::INFINITY, 0.0f64);
            for &x in v {
                let a = f64::from(x.abs());
                if !x.is_finite() {
                    return None;
                }
                if a > 0.0 {
                    r = (r.0.min(a), r.1.max(a));
                }
            }
            Some((if r.0.is_finite() { r.0 } else { 0.0 }, r.1))
        }
        _ => None,
    })?;
    Some(Coef::Broadcast(*src, dims.clone(), range))
}

/// Whether the folded constants stay finite, and the folded scale a·c a normal f32 number
/// (or an exact zero), for every element: an overflow to infinity, or a scale that
/// underflows to zero or a subnormal, would change the chain's value by more than rounding.
/// The shift b·c may be subnormal (a bias of 1.7e-41, as trained models have): it is added
/// to d and to x·a·c, where it was as negligible before folding.
fn foldable([a, b, c, d]: [&Coef; 4]) -> bool {
    let (max, min) = (f64::from(f32::MAX), f64::from(f32::MIN_POSITIVE));
    let ((al, ah), (bh, ch)) = (a.range(), (b.range().1, c.range().1));
    let low = al * c.range().0;
    ah * ch < max / 2.0 && (low == 0.0 || low >= min) && bh * ch + d.range().1 < max / 2.0
}

/// x·(a·c) + (b·c + d) of type `ty` for the chain's constants `[a, b, c, d]`, computed at
/// one shape of the result's rank (a broadcast one's source reshaped to it, its dims of 1
/// where the broadcast adds axes): `None` unless the broadcast ones agree on it.
fn affine(eg: &EGraph, x: Id, [a, b, c, d]: [&Coef; 4], ty: &ir::TensorType) -> Option<Expr> {
    if !foldable([a, b, c, d]) {
        return None;
    }
    let rank = ty.shape.rank();
    // The source of a broadcast along `dims`, as a shape of the result's rank.
    let full = |src: Id, dims: &[i64]| -> Option<ir::Shape> {
        let s = &info(eg, src).ty().shape;
        // Axes kept in order: the reshape keeps the elements' order.
        if dims.windows(2).any(|w| w[0] >= w[1]) {
            return None;
        }
        let mut d = vec![ir::Dim::constant(1); rank];
        for (j, &i) in dims.iter().enumerate() {
            *d.get_mut(usize::try_from(i).ok()?)? = s.dim(j).clone();
        }
        Some(ir::Shape::new(d))
    };
    let mut shape: Option<ir::Shape> = None;
    for k in [a, b, c, d] {
        if let Coef::Broadcast(src, dims, _) = k {
            let s = full(*src, dims)?;
            match &shape {
                None => shape = Some(s),
                Some(s0) if *s0 == s => {}
                _ => return None,
            }
        }
    }
    let (shape, dims) = match shape {
        Some(s) => (s, (0..rank as i64).collect()),
        None => (ir::Shape::new(vec![]), vec![]),
    };
    let at = |k: &Coef| -> Option<Expr> {
        match k {
            Coef::Splat(v) => splat_expr(*v, ty.dtype, &shape),
            Coef::Broadcast(src, ..) if info(eg, *src).ty().shape == shape => Some((*src).into()),
            Coef::Broadcast(src, ..) => Some(Expr::op(
                Op::Reshape {
                    shape: shape.clone(),
                },
                [(*src).into()],
            )),
        }
    };
    let (a, b, c, d) = (at(a)?, at(b)?, at(c)?, at(d)?);
    let scale = Expr::op(Op::Mul, [a, c.clone()]);
    let shift = Expr::op(Op::Add, [Expr::op(Op::Mul, [b, c]), d]);
    let spread = |e: Expr| {
        Expr::op(
            Op::Broadcast {
                dims: dims.clone(),
                shape: ty.shape.clone(),
            },
            [e],
        )
    };
    Some(Expr::op(
        Op::Add,
        [Expr::op(Op::Mul, [x.into(), spread(scale)]), spread(shift)],
    ))
}
