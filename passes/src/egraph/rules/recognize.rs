//! Recognition: the variants exporters produce for norms, softmax and activations, rewritten
//! toward one canonical (and cheaper) form that fusion then names:
//!
//! - `pow(x, 2)` → `x*x`, `pow(x, 3)` → `x*x*x`, `pow(x, 0.5)` → `sqrt(x)` (norms, GELU-tanh),
//!   and the other quarter powers by square roots: `pow(x, 0.25)`, `pow(x, 0.75)` (LRN's
//!   default β), `pow(x, 1.5)`, `pow(x, -0.5)` → `rsqrt(x)`, `pow(x, -1)` → `recip(x)`,
//!   `pow(x, 1)` → `x` (a vector pow would be a libcall per lane);
//! - `1/sqrt(y)`, `recip(sqrt y)` → `rsqrt(y)`, `a/sqrt(b)` → `a*rsqrt(b)` (layer/RMS norm);
//! - `1/y` → `recip(y)`; `a / broadcast(s)` → `a * broadcast(recip(s))`, the reciprocal taken
//!   on the small reduced tensor (softmax and norm denominators);
//! - `1/(1+exp(-x))`, `recip(1+exp(-x))` → `sigmoid(x)`, so `x/(1+exp(-x))` becomes
//!   `x*sigmoid(x)` (SiLU, and SwiGLU's gate).

use egg::Id;
use ir::Op;

use super::{find, info, is_splat, nodes};
use crate::egraph::lang::EGraph;
use crate::egraph::{Expr, Rule};

fn float(eg: &EGraph, id: Id) -> bool {
    super::is_real(eg, id)
}

/// pow(x, 2) = x*x; pow(x, 3) = x*x*x; pow(x, 0.5) = sqrt(x); pow(x, 0.25) = sqrt(sqrt x);
/// pow(x, 0.75) = sqrt(x)·sqrt(sqrt x); pow(x, 1.5) = x·sqrt(x); pow(x, -0.5) = rsqrt(x);
/// pow(x, -1) = recip(x); pow(x, 1) = x. The square-root forms round two or three times
/// instead of once (within 2 ulp) and, like `sqrt`, differ from pow only at -0 and -∞.
pub const POW_CONST: Rule = Rule {
    name: "pow-const",
    search: |eg, id| {
        let mut out = Vec::new();
        for (op, args) in nodes(eg, id) {
            let (Op::Pow, [x, e]) = (op, args) else {
                continue;
            };
            let x = Expr::Class(*x);
            let sq = || Expr::op(Op::Mul, [x.clone(), x.clone()]);
            match info(eg, *e).splat {
                Some(2.0) => out.push(sq()),
                // Two roundings instead of one: fine for integers (wrapping products
                // associate) and real floats, not for 8- and 4-bit floats.
                Some(3.0) if !info(eg, id).ty().dtype.is_narrow() => {
                    out.push(Expr::op(Op::Mul, [sq(), x.clone()]))
                }
                Some(1.0) => out.push(x.clone()),
                Some(0.5) if float(eg, id) => out.push(Expr::op(Op::Sqrt, [x.clone()])),
                Some(e) if float(eg, id) && !info(eg, id).ty().dtype.is_narrow() => {
                    let sqrt = || Expr::op(Op::Sqrt, [x.clone()]);
                    let root4 = || Expr::op(Op::Sqrt, [sqrt()]);
                    match e {
                        0.25 => out.push(root4()),
                        0.75 => out.push(Expr::op(Op::Mul, [sqrt(), root4()])),
                        1.5 => out.push(Expr::op(Op::Mul, [x.clone(), sqrt()])),
                        -0.5 => out.push(Expr::op(Op::Rsqrt, [x.clone()])),
                        -1.0 => out.push(Expr::op(Op::Recip, [x.clone()])),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        out
    },
};

/// 1/y = recip(y); 1/sqrt(y) = rsqrt(y); a/sqrt(b) = a*rsqrt(b); recip(sqrt y) = rsqrt(y)
pub const RECIPROCALS: Rule = Rule {
    name: "reciprocals",
    search: |eg, id| {
        let mut out = Vec::new();
        if !float(eg, id) {
            return out;
        }
        for (op, args) in nodes(eg, id) {
            match (op, args) {
                (Op::Div, [a, b]) => {
                    let sqrt = find(eg, *b, |o| matches!(o, Op::Sqrt)).map(|(_, s)| s[0]);
                    match (is_splat(eg, *a, 1.0), sqrt) {
                        (true, Some(s)) => out.push(Expr::op(Op::Rsqrt, [s.into()])),
                        (true, None) => out.push(Expr::op(Op::Recip, [(*b).into()])),
                        (false, Some(s)) => out.push(Expr::op(
                            Op::Mul,
                            [(*a).into(), Expr::op(Op::Rsqrt, [s.into()])],
                        )),
                        (false, None) => {}
                    }
                }
                (Op::Recip, [y]) => {
                    if let Some((_, s)) = find(eg, *y, |o| matches!(o, Op::Sqrt)) {
                        out.push(Expr::op(Op::Rsqrt, [s[0].into()]));
                    }
                }
                _ => {}
            }
        }
        out
    },
};

/// The x of a class that is `1 + exp(-x)` (either operand order).
fn one_plus_exp_neg(eg: &EGraph, id: Id) -> Option<Id> {
    nodes(eg, id).find_map(|(op, args)| {
        let (Op::Add, [a, b]) = (op, args) else {
            return None;
        };
        let e = if is_splat(eg, *a, 1.0) {
            *b
        } else if is_splat(eg, *b, 1.0) {
            *a
        } else {
            return None;
        };
        let (_, n) = find(eg, e, |o| matches!(o, Op::Exp))?;
        let (_, x) = find(eg, n[0], |o| matches!(o, Op::Neg))?;
        Some(x[0])
    })
}

/// 1/(1+exp(-x)) = recip(1+exp(-x)) = sigmoid(x); x/(1+exp(-x)) = x*sigmoid(x)
pub const SIGMOID: Rule = Rule {
    name: "sigmoid",
    search: |eg, id| {
        let mut out = Vec::new();
        if !float(eg, id) {
            return out;
        }
        for (op, args) in nodes(eg, id) {
            match (op, args) {
                (Op::Recip, [d]) => {
                    if let Some(x) = one_plus_exp_neg(eg, *d) {
                        out.push(Expr::op(Op::Sigmoid, [x.into()]));
                    }
                }
                (Op::Div, [a, d]) => {
                    if let Some(x) = one_plus_exp_neg(eg, *d) {
                        let s = Expr::op(Op::Sigmoid, [x.into()]);
                        if is_splat(eg, *a, 1.0) {
                            out.push(s);
                        } else {
                            out.push(Expr::op(Op::Mul, [(*a).into(), s]));
                        }
                    }
                }
                _ => {}
            }
        }
        out
    },
};
