//! `canonicalize`: local rewrites that put movement ops in a normal form. Each rule is named;
//! a rule whose replacement does not have the type of the node it replaces is an error naming it.
//!
//! - `identity`: transposes by the identity, reshapes and broadcasts to the operand's own type,
//!   whole slices, zero pads, casts to the same dtype, one-operand concats and reductions over
//!   no axes are their operand;
//! - `transpose-transpose`, `reshape-reshape`, `broadcast-broadcast`: a chain becomes one op;
//! - `sink-broadcast`: an elementwise op whose operands are all broadcast the same way from
//!   operands of one type (or are scalars broadcast) computes on the small operands and
//!   broadcasts the result (`exp(broadcast(x))` → `broadcast(exp(x))`), so broadcasts sit
//!   just before their uses and constant math folds at its own size;
//! - `hoist-splat-math`: an elementwise op of a transpose or reshape whose other operands are
//!   scalars broadcast computes before the movement (`q(transpose(x))` → `transpose(q(x))`),
//!   so per-tensor math — a QDQ pair after attention's head split — meets the product that
//!   made `x` and fuses into its epilogue;
//! - `extreme-of-all`: the minimum or maximum of every element of a transpose or reshape is
//!   that of its operand's elements, read in their own order (a dynamic quantizer's range
//!   of attention's merged heads).

use ir::{Builder, Node, Op, Value};

use crate::manager::Options;
use crate::rebuild::{rebuild, Settings, R};

type Rule = fn(&mut Builder, &Node, &[Value]) -> R<Option<Value>>;

/// The rules, tried in order on every node.
pub(crate) const RULES: &[(&str, Rule)] = &[
    ("identity", identity),
    ("transpose-transpose", transpose_transpose),
    ("reshape-reshape", reshape_reshape),
    ("broadcast-broadcast", broadcast_broadcast),
    ("sink-broadcast", sink_broadcast),
    ("hoist-splat-math", hoist_splat_math),
    ("extreme-of-all", extreme_of_all),
];

pub(crate) fn run(g: &ir::Graph, _: &Options) -> R<ir::Graph> {
    rebuild(
        g,
        &Settings::STRICT,
        &mut |b: &mut Builder, node: &Node, inputs: &[Value]| {
            if node.types().len() != 1 {
                return Ok(None);
            }
            let Some(mut v) = apply(b, node, inputs)? else {
                return Ok(None);
            };
            // The replacement may itself simplify (a composed transpose may be the identity).
            for _ in 0..16 {
                let new = b.graph().node(v.node).clone();
                if v.index != 0 || new.types().len() != 1 {
                    break;
                }
                match apply(b, &new, new.inputs())? {
                    Some(w) => v = w,
                    None => break,
                }
            }
            Ok(Some(vec![v]))
        },
    )
}

/// The first rule that fires on `node`, checked to keep its type.
fn apply(b: &mut Builder, node: &Node, inputs: &[Value]) -> R<Option<Value>> {
    for (name, rule) in RULES {
        if let Some(v) = rule(b, node, inputs).map_err(|e| format!("rule `{name}`: {e}"))? {
            let (want, got) = (&node.types()[0], b.ty(v));
            if want != got {
                return Err(format!(
                    "rule `{name}` replaced a {} of type {want} by a value of type {got}",
                    node.op().mnemonic()
                ));
            }
            return Ok(Some(v));
        }
    }
    Ok(None)
}

fn err(e: ir::Error) -> String {
    e.to_string()
}

/// The op that produces `v` in the graph being built.
fn producer(b: &Builder, v: Value) -> &Op {
    b.graph().node(v.node).op()
}

fn operand(b: &Builder, v: Value) -> Value {
    b.graph().node(v.node).inputs()[0]
}

fn identity(b: &mut Builder, node: &Node, inputs: &[Value]) -> R<Option<Value>> {
    let Some(&x) = inputs.first() else {
        return Ok(None);
    };
    let same_type = b.ty(x) == &node.types()[0];
    let is_identity = match node.op() {
        Op::Transpose { perm } => perm.iter().enumerate().all(|(i, &p)| p == i as i64),
        Op::Reshape { .. } | Op::Refine { .. } | Op::Broadcast { .. } | Op::Cast { .. } => {
            same_type
        }
        Op::Slice { start, stride, .. } => {
            same_type
                && start.iter().all(|d| d.as_const() == Some(0))
                && stride.iter().all(|&s| s == 1)
        }
        Op::Pad { low, high, .. } => low.iter().chain(high).all(|&p| p == 0),
        Op::Concat { .. } => inputs.len() == 1,
        Op::ReduceSum { axes }
        | Op::ReduceProd { axes }
        | Op::ReduceMax { axes }
        | Op::ReduceMin { axes } => axes.is_empty(),
        _ => false,
    };
    Ok(is_identity.then_some(x))
}

fn transpose_transpose(b: &mut Builder, node: &Node, inputs: &[Value]) -> R<Option<Value>> {
    let Op::Transpose { perm: outer } = node.op() else {
        return Ok(None);
    };
    let Op::Transpose { perm: inner } = producer(b, inputs[0]) else {
        return Ok(None);
    };
    // Result axis i is middle axis outer[i], which is source axis inner[outer[i]].
    let perm: Vec<i64> = outer.iter().map(|&o| inner[o as usize]).collect();
    let src = operand(b, inputs[0]);
    let op = Op::Transpose { perm };
    b.op1(op, &[src]).map(Some).map_err(err)
}

fn reshape_reshape(b: &mut Builder, node: &Node, inputs: &[Value]) -> R<Option<Value>> {
    let Op::Reshape { shape } = node.op() else {
        return Ok(None);
    };
    if !matches!(producer(b, inputs[0]), Op::Reshape { .. }) {
        return Ok(None);
    }
    let src = operand(b, inputs[0]);
    let op = Op::Reshape {
        shape: shape.clone(),
    };
    b.op1(op, &[src]).map(Some).map_err(err)
}

fn broadcast_broadcast(b: &mut Builder, node: &Node, inputs: &[Value]) -> R<Option<Value>> {
    let Op::Broadcast { dims: outer, shape } = node.op() else {
        return Ok(None);
    };
    let Op::Broadcast { dims: inner, .. } = producer(b, inputs[0]) else {
        return Ok(None);
    };
    // Source axis i went to middle axis inner[i], which goes to result axis outer[inner[i]].
    let dims: Vec<i64> = inner.iter().map(|&m| outer[m as usize]).collect();
    let src = operand(b, inputs[0]);
    let op = Op::Broadcast {
        dims,
        shape: shape.clone(),
    };
    b.op1(op, &[src]).map(Some).map_err(err)
}

pub(crate) fn sink_broadcast(b: &mut Builder, node: &Node, inputs: &[Value]) -> R<Option<Value>> {
    if !node.op().is_elementwise() || inputs.is_empty() {
        return Ok(None);
    }
    // The way every operand is broadcast: the first that is not a scalar's (else the first).
    let broadcast = |b: &Builder, v: Value| match producer(b, v) {
        Op::Broadcast { dims, shape } => Some((dims.clone(), shape.clone())),
        _ => None,
    };
    let lead = (inputs.iter())
        .find(|&&v| broadcast(b, v).is_some_and(|(d, _)| !d.is_empty()))
        .unwrap_or(&inputs[0]);
    let Some((dims, shape)) = broadcast(b, *lead) else {
        return Ok(None);
    };
    let src_ty = b.ty(operand(b, *lead)).shape.clone();
    let mut srcs = Vec::with_capacity(inputs.len());
    for &v in inputs {
        match broadcast(b, v) {
            Some((d, s)) if d == dims && s == shape => {
                let src = operand(b, v);
                if b.ty(src).shape != src_ty {
                    return Ok(None);
                }
                srcs.push(src);
            }
            // A scalar broadcast beside them: broadcast to the small operands' shape instead
            // (QGemm's per-tensor scales times its per-column one: the scale folds as a row,
            // not as the whole result).
            Some((d, s)) if d.is_empty() && s == shape => {
                let op = Op::Broadcast {
                    dims: vec![],
                    shape: src_ty.clone(),
                };
                srcs.push(b.op1(op, &[operand(b, v)]).map_err(err)?);
            }
            _ => return Ok(None),
        }
    }
    let small = b.op1(node.op().clone(), &srcs).map_err(err)?;
    let op = Op::Broadcast { dims, shape };
    b.op1(op, &[small]).map(Some).map_err(err)
}

fn hoist_splat_math(b: &mut Builder, node: &Node, inputs: &[Value]) -> R<Option<Value>> {
    if !node.op().is_elementwise() || inputs.is_empty() {
        return Ok(None);
    }
    let movement = producer(b, inputs[0]).clone();
    if !matches!(movement, Op::Transpose { .. } | Op::Reshape { .. }) {
        return Ok(None);
    }
    let x = operand(b, inputs[0]);
    let shape = b.ty(x).shape.clone();
    let mut args = vec![x];
    for &v in &inputs[1..] {
        // A scalar broadcast, broadcast again to the operand's shape.
        let Op::Broadcast { dims, .. } = producer(b, v) else {
            return Ok(None);
        };
        if !dims.is_empty() {
            return Ok(None);
        }
        let scalar = operand(b, v);
        let op = Op::Broadcast {
            dims: vec![],
            shape: shape.clone(),
        };
        args.push(b.op1(op, &[scalar]).map_err(err)?);
    }
    let mut moved = b.op1(node.op().clone(), &args).map_err(err)?;
    // On up through a chain of movements (a head split's reshape before its transpose).
    let new = b.graph().node(moved.node).clone();
    if let Some(higher) = hoist_splat_math(b, &new, new.inputs())? {
        moved = higher;
    }
    b.op1(movement, &[moved]).map(Some).map_err(err)
}

fn extreme_of_all(b: &mut Builder, node: &Node, inputs: &[Value]) -> R<Option<Value>> {
    let (Op::ReduceMin { axes } | Op::ReduceMax { axes }) = node.op() else {
        return Ok(None);
    };
    let [x] = inputs else {
        return Ok(None);
    };
    // (Axes are strictly increasing: every axis is 0..rank.)
    let rank = b.ty(*x).shape.rank() as i64;
    let every = axes.iter().copied().eq(0..rank);
    if !every || !matches!(producer(b, *x), Op::Transpose { .. } | Op::Reshape { .. }) {
        return Ok(None);
    }
    // Down through every movement (min and max are exact in any order).
    let mut src = operand(b, *x);
    while matches!(producer(b, src), Op::Transpose { .. } | Op::Reshape { .. }) {
        src = operand(b, src);
    }
    let all: Vec<i64> = (0..b.ty(src).shape.rank() as i64).collect();
    let op = match node.op() {
        Op::ReduceMin { .. } => Op::ReduceMin { axes: all },
        _ => Op::ReduceMax { axes: all },
    };
    b.op1(op, &[src]).map(Some).map_err(err)
}
