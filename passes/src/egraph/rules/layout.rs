//! Layout: transpose and reshape chains, identities, transposes absorbed into `dot`'s
//! dimension numbers, and broadcasts sunk below elementwise math.

use egg::Id;
use ir::Op;

use super::{find, info, nodes};
use crate::egraph::lang::EGraph;
use crate::egraph::{Expr, Rule};

/// transpose(transpose(x, p), q) = transpose(x, p∘q)
pub const TRANSPOSE_TRANSPOSE: Rule = Rule {
    name: "transpose-transpose",
    search: |eg, id| {
        let mut out = Vec::new();
        for (op, args) in nodes(eg, id) {
            let Op::Transpose { perm: outer } = op else {
                continue;
            };
            if let Some((Op::Transpose { perm: inner }, x)) =
                find(eg, args[0], |o| matches!(o, Op::Transpose { .. }))
            {
                let perm = outer.iter().map(|&o| inner[o as usize]).collect();
                out.push(Expr::op(Op::Transpose { perm }, [x[0].into()]));
            }
        }
        out
    },
};

/// transpose(x, identity) = x
pub const TRANSPOSE_IDENTITY: Rule = Rule {
    name: "transpose-identity",
    search: |eg, id| {
        nodes(eg, id)
            .filter_map(|(op, args)| match op {
                Op::Transpose { perm } if perm.iter().enumerate().all(|(i, &p)| p == i as i64) => {
                    Some(args[0].into())
                }
                _ => None,
            })
            .collect()
    },
};

/// reshape(reshape(x)) = reshape(x)
pub const RESHAPE_RESHAPE: Rule = Rule {
    name: "reshape-reshape",
    search: |eg, id| {
        let mut out = Vec::new();
        for (op, args) in nodes(eg, id) {
            let Op::Reshape { shape } = op else { continue };
            if let Some((_, x)) = find(eg, args[0], |o| matches!(o, Op::Reshape { .. })) {
                let op = Op::Reshape {
                    shape: shape.clone(),
                };
                out.push(Expr::op(op, [x[0].into()]));
            }
        }
        out
    },
};

/// reshape(x) (or refine(x)) to x's own shape = x
pub const RESHAPE_IDENTITY: Rule = Rule {
    name: "reshape-identity",
    search: |eg, id| {
        let ty = info(eg, id).ty();
        nodes(eg, id)
            .filter_map(|(op, args)| match op {
                Op::Reshape { .. } | Op::Refine { .. } if info(eg, args[0]).ty() == ty => {
                    Some(args[0].into())
                }
                _ => None,
            })
            .collect()
    },
};

/// dot(transpose(a), b) = dot(a, b) with the dimension numbers mapped through the
/// permutation, when the free axes keep their order (so the result is the same tensor).
pub const TRANSPOSE_INTO_DOT: Rule = Rule {
    name: "transpose-into-dot",
    search: |eg, id| {
        let mut out = Vec::new();
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
            for side in 0..2 {
                let Some((Op::Transpose { perm }, src)) =
                    find(eg, args[side], |o| matches!(o, Op::Transpose { .. }))
                else {
                    continue;
                };
                let (batch, contract) = if side == 0 {
                    (lhs_batch, lhs_contract)
                } else {
                    (rhs_batch, rhs_contract)
                };
                let Some((batch, contract)) = through(perm, batch, contract) else {
                    continue;
                };
                let mut dot = op.clone();
                if let Op::Dot {
                    lhs_batch,
                    rhs_batch,
                    lhs_contract,
                    rhs_contract,
                } = &mut dot
                {
                    if side == 0 {
                        (*lhs_batch, *lhs_contract) = (batch, contract);
                    } else {
                        (*rhs_batch, *rhs_contract) = (batch, contract);
                    }
                }
                let mut operands: Vec<Expr> = args.iter().map(|&a| a.into()).collect();
                operands[side] = src[0].into();
                out.push(Expr::op(dot, operands));
            }
        }
        out
    },
};

/// Dimension numbers of an operand `transpose(src, perm)` as numbers of `src`, or `None`
/// when the free axes would come out in another order.
fn through(perm: &[i64], batch: &[i64], contract: &[i64]) -> Option<(Vec<i64>, Vec<i64>)> {
    let map = |v: &[i64]| v.iter().map(|&a| perm[a as usize]).collect::<Vec<i64>>();
    let free: Vec<i64> = (0..perm.len() as i64)
        .filter(|a| !batch.contains(a) && !contract.contains(a))
        .map(|a| perm[a as usize])
        .collect();
    free.windows(2)
        .all(|w| w[0] < w[1])
        .then(|| (map(batch), map(contract)))
}

/// op(broadcast(x), broadcast(y)) = broadcast(op(x, y)) when every operand is broadcast the
/// same way from operands of one shape.
pub const SINK_BROADCAST: Rule = Rule {
    name: "sink-broadcast",
    search: |eg, id| {
        let mut out = Vec::new();
        for (op, args) in nodes(eg, id) {
            if !op.is_elementwise() {
                continue;
            }
            if let Some(e) = sink(eg, op, args) {
                out.push(e);
            }
        }
        out
    },
};

fn sink(eg: &EGraph, op: &Op, args: &[Id]) -> Option<Expr> {
    let mut how: Option<(&Op, &ir::Shape)> = None;
    let mut srcs = Vec::with_capacity(args.len());
    for &a in args {
        let (b, x) = find(eg, a, |o| matches!(o, Op::Broadcast { .. }))?;
        let shape = &info(eg, x[0]).ty().shape;
        match how {
            None => how = Some((b, shape)),
            Some((b0, s0)) if b0 == b && s0 == shape => {}
            _ => return None,
        }
        srcs.push(Expr::Class(x[0]));
    }
    let (b, _) = how?;
    Some(Expr::op(b.clone(), [Expr::op(op.clone(), srcs)]))
}
