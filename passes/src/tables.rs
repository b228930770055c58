//! `tables`: elementwise work on an 8-bit integer as a table lookup. A chain of elementwise ops
//! whose only varying input is one u8 or i8 value `q` (the others splat constants) computes a
//! function of q's 256 values: the chain is evaluated once on all of them (by the injected
//! evaluator, so the table holds exactly what the graph means) and replaced by a `gather` from
//! that table — a QDQ model's dequantize → erf → quantize (or any activation between a
//! quantizer and a dequantizer) becomes one load per element, as onnxruntime's QLinear lookup
//! ops do.

use std::collections::{HashMap, HashSet};

use ir::{Builder, DType, Graph, Node, NodeId, Op, Shape, Tensor, Value};

use crate::manager::Options;
use crate::rebuild::{rebuild, Settings, R};

/// Chains shorter than this (in ops) stay: a lookup is not cheaper than a cast and a multiply.
const MIN_OPS: usize = 4;

/// What the analysis knows of an old value: computed from 8-bit `source` by `ops` elementwise
/// ops over splat constants.
#[derive(Clone, Copy)]
struct Chain {
    source: Value,
    ops: usize,
    /// Roundings on the way (the quantizers inside the chain).
    rounds: usize,
}

pub(crate) fn run(g: &Graph, opts: &Options) -> R<Graph> {
    let Some(eval) = opts.evaluate else {
        return Ok(g.clone());
    };
    let order = g
        .topo_order()
        .map_err(|c| format!("the graph has a cycle through {} nodes", c.0.len()))?;
    let chains = analyse(g, &order);
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    // The chains' ends: values some reader outside the chain (or an output) needs.
    let outputs: HashSet<Value> = g.outputs().iter().map(|(_, v)| *v).collect();
    let mut ends: HashMap<NodeId, Chain> = HashMap::new();
    for &id in &order {
        let v = Value::new(id, 0);
        let Some(c) = chains.get(&v).copied() else {
            continue;
        };
        if c.ops < MIN_OPS || g.value_type(v).shape != g.value_type(c.source).shape {
            continue;
        }
        // A product's quantizer, with what follows up to one more quantizer, is the
        // routine's epilogue; a chain of more (QOperator's quantized activations, each op
        // requantized) is only a table.
        if quantizes_product(g, c.source) && c.rounds <= 1 {
            continue;
        }
        let users = g.users(v);
        let inside = |u: &(NodeId, usize)| {
            chains.get(&Value::new(u.0, 0)).is_some_and(|d| {
                d.source == c.source
                    && g.value_type(Value::new(u.0, 0)).shape == g.value_type(v).shape
            })
        };
        if outputs.contains(&v) || users.is_empty() || !users.iter().all(inside) {
            ends.insert(id, c);
        }
    }
    if ends.is_empty() {
        return Ok(g.clone());
    }
    // Each end's table, from the chain replayed on the 256 values.
    let mut tables: HashMap<NodeId, Tensor> = HashMap::new();
    for (&id, c) in &ends {
        if let Some(t) = table(g, Value::new(id, 0), c.source, &chains, &pos, eval) {
            tables.insert(id, t);
        }
    }
    // A rewrite sees nodes, not ids; and the new values of the operands it has met so far.
    let ids: HashMap<*const Node, NodeId> = order
        .iter()
        .map(|&id| (g.node(id) as *const Node, id))
        .collect();
    let mut built: HashMap<Value, Value> = HashMap::new();
    rebuild(
        g,
        &Settings::STRICT,
        &mut |b: &mut Builder, node: &Node, inputs: &[Value]| {
            built.extend(node.inputs().iter().copied().zip(inputs.iter().copied()));
            let Some(id) = ids.get(&(node as *const Node)) else {
                return Ok(None);
            };
            let (Some(t), Some(c)) = (tables.get(id), ends.get(id)) else {
                return Ok(None);
            };
            let Some(&q) = built.get(&c.source) else {
                return Ok(None);
            };
            lookup(b, g, t.clone(), c.source, q).map(|v| Some(vec![v]))
        },
    )
}

/// The chains of every value: an 8-bit value starts one (0 ops); an elementwise op whose
/// varying operands all come from one source, the rest splat constants, continues it.
fn analyse(g: &Graph, order: &[NodeId]) -> HashMap<Value, Chain> {
    let mut chains: HashMap<Value, Chain> = HashMap::new();
    let splat = |v: Value| splat_constant(g, v).is_some();
    for &id in order {
        let node = g.node(id);
        if node.types().len() != 1 {
            continue;
        }
        let v = Value::new(id, 0);
        let op = node.op();
        if op.is_elementwise() && !node.inputs().is_empty() {
            let mut source: Option<Value> = None;
            let (mut ops, mut rounds) = (0, 0);
            let mut ok = true;
            for &a in node.inputs() {
                if splat(a) {
                    continue;
                }
                match chains.get(&a) {
                    Some(c) if source.is_none_or(|s| s == c.source) => {
                        source = Some(c.source);
                        ops = ops.max(c.ops);
                        rounds = rounds.max(c.rounds);
                    }
                    _ => ok = false,
                }
            }
            if let (true, Some(source)) = (ok, source) {
                // A conversion between integers that keeps every value (u8 or i8 widened) is
                // no work a table saves: the 8-bit value read as i32 before its conversion to
                // f32, as QLinearConv's requantized results are.
                let (from, to) = (g.value_type(node.inputs()[0]).dtype, node.types()[0].dtype);
                let widening = matches!(op, Op::Cast { .. })
                    && from.is_int()
                    && to.is_int()
                    && to.bits() > from.bits()
                    && (from.is_unsigned_int() || to.is_signed_int());
                let ops = if widening { ops } else { ops + 1 };
                let rounds = rounds + usize::from(matches!(op, Op::Round));
                chains.insert(
                    v,
                    Chain {
                        source,
                        ops,
                        rounds,
                    },
                );
                continue;
            }
        }
        // A varying 8-bit value starts a chain.
        let ty = &node.types()[0];
        if matches!(ty.dtype, DType::U8 | DType::I8) && !matches!(op, Op::Constant { .. }) {
            chains.insert(
                v,
                Chain {
                    source: v,
                    ops: 0,
                    rounds: 0,
                },
            );
        }
    }
    chains
}

/// The scalar a splat operand holds: a one-element constant, or a broadcast of one.
fn splat_constant(g: &Graph, v: Value) -> Option<&Tensor> {
    let mut node = g.node(v.node);
    if let Op::Broadcast { .. } = node.op() {
        node = g.node(node.inputs()[0].node);
    }
    match node.op() {
        Op::Constant { value } if value.tensor.numel() == 1 => Some(&value.tensor),
        _ => None,
    }
}

/// Whether 8-bit `q` is a QuantizeLinear of a product's or convolution's result (or of that
/// times constants) that nothing else reads (`cast(round(p / s) [+ z])`, or `cast(round(p)
/// [+ z])` for QOperator's requantizer, whose scale multiplied p): the lowering
/// applies that quantizer's pair with
/// its dequantizer, and the elementwise steps after (a batch norm, an activation, the next
/// pair), as the routine's epilogue, in its registers — cheaper than a lookup in a loop after.
fn quantizes_product(g: &Graph, q: Value) -> bool {
    let node = g.node(q.node);
    let Op::Cast { .. } = node.op() else {
        return false;
    };
    let mut v = node.inputs()[0];
    if let (Op::Add, &[a, b]) = (g.node(v.node).op(), g.node(v.node).inputs()) {
        v = match (splat_constant(g, a), splat_constant(g, b)) {
            (None, Some(_)) => a,
            (Some(_), None) => b,
            _ => return false,
        };
    }
    let Op::Round = g.node(v.node).op() else {
        return false;
    };
    let d = g.node(v.node).inputs()[0];
    let product = |p: Value| {
        let once = g.users(p).len() == 1;
        once && matches!(
            g.node(p.node).op(),
            Op::Dot { .. }
                | Op::Qdot { .. }
                | Op::Qdot4 { .. }
                | Op::Conv { .. }
                | Op::ConvBlocked { .. }
                | Op::Qconv { .. }
        )
    };
    // The product through a few additions and products by constants (a quantized
    // product's dequantization, a bias before or after it).
    let affine = |p: Value| through_constants(g, p, 3, &product);
    // A QOperator requantizer's `round(p · m)`: no division.
    if affine(d) {
        return true;
    }
    // `p / s`, or `p · 2^-e` (a division by a power of two as the simplifier leaves it).
    let (p, s) = match (g.node(d.node).op(), g.node(d.node).inputs()) {
        (Op::Div, &[p, s]) => (p, s),
        (Op::Mul, &[a, b]) if splat_constant(g, b).is_some() => (a, b),
        (Op::Mul, &[a, b]) if splat_constant(g, a).is_some() => (b, a),
        _ => return false,
    };
    affine(p) && splat_constant(g, s).is_some()
}

/// Whether `p` is what `product` accepts, or it plus or times constants (up to `depth` such
/// steps), each step read only by the next.
fn through_constants(g: &Graph, p: Value, depth: usize, product: &dyn Fn(Value) -> bool) -> bool {
    if product(p) {
        return true;
    }
    let (Op::Add | Op::Mul, &[a, b]) = (g.node(p.node).op(), g.node(p.node).inputs()) else {
        return false;
    };
    let constant = |v: Value| computed_from_constants(g, v, 4);
    let other = match (constant(a), constant(b)) {
        (false, true) => a,
        (true, false) => b,
        _ => return false,
    };
    depth > 0 && g.users(p).len() == 1 && through_constants(g, other, depth - 1, product)
}

/// Whether `v` is a constant, or a view (broadcast, reshape, transpose) or elementwise op of
/// such (up to `depth` ops deep): a value `fold` makes a constant later (a bias the simplifier scaled).
fn computed_from_constants(g: &Graph, v: Value, depth: usize) -> bool {
    let n = g.node(v.node);
    match n.op() {
        Op::Constant { .. } => true,
        op if depth > 0
            && (op.is_elementwise()
                || matches!(
                    op,
                    Op::Broadcast { .. } | Op::Reshape { .. } | Op::Transpose { .. }
                )) =>
        {
            !n.inputs().is_empty()
                && (n.inputs().iter()).all(|&a| computed_from_constants(g, a, depth - 1))
        }
        _ => false,
    }
}

/// The chain ending at `end` evaluated on all 256 values of `source` (i8 from -128), or
/// `None` when it does not evaluate.
fn table(
    g: &Graph,
    end: Value,
    source: Value,
    chains: &HashMap<Value, Chain>,
    pos: &HashMap<NodeId, usize>,
    eval: crate::manager::Evaluator,
) -> Option<Tensor> {
    let dtype = g.value_type(source).dtype;
    let all: Vec<i64> = match dtype {
        DType::U8 => (0..256).collect(),
        _ => (-128..128).collect(),
    };
    let values = Tensor::new(
        vec![256],
        ir::Data::from_f64s(dtype, &all.iter().map(|&x| x as f64).collect::<Vec<_>>()),
    )
    .ok()?;
    let mut s = Builder::new("table");
    let mut map: HashMap<Value, Value> = HashMap::new();
    map.insert(source, s.constant(values).ok()?);
    let line = Shape::from_consts(&[256]);
    // Replay the chain's nodes (those between source and end) in order.
    let mut stack = vec![end];
    let mut nodes: Vec<NodeId> = Vec::new();
    let mut seen = HashSet::new();
    while let Some(v) = stack.pop() {
        if map.contains_key(&v) || !seen.insert(v) {
            continue;
        }
        if splat_constant(g, v).is_some() {
            continue;
        }
        chains.get(&v)?;
        nodes.push(v.node);
        stack.extend(g.node(v.node).inputs().iter().copied());
    }
    nodes.sort_by_key(|id| pos.get(id).copied());
    for id in nodes {
        let node = g.node(id);
        let mut args = Vec::new();
        for &a in node.inputs() {
            let x = match map.get(&a) {
                Some(&x) => x,
                None => {
                    let c = s.constant(splat_constant(g, a)?.clone()).ok()?;
                    let c = s.reshape(c, Shape::scalar()).ok()?;
                    s.broadcast_to(c, &line).ok()?
                }
            };
            args.push(x);
        }
        let y = s.op1(node.op().clone(), &args).ok()?;
        map.insert(Value::new(id, 0), y);
    }
    s.output("t", *map.get(&end)?).ok()?;
    eval(&s.into_graph()).ok()?.into_iter().next()
}

/// `table` read at `q`, the new value of `source` (shifted by 128 for i8): the chain's value.
fn lookup(b: &mut Builder, g: &Graph, table: Tensor, source: Value, q: Value) -> R<Value> {
    let err = |e: ir::Error| e.to_string();
    let t = b.constant(table).map_err(err)?;
    let idx = if g.value_type(source).dtype == DType::I8 {
        let wide = b.cast(q, DType::I32).map_err(err)?;
        let shift = b.scalar(128.0, DType::I32).map_err(err)?;
        let shift = b.broadcast_to(shift, &b.shape(wide).clone()).map_err(err)?;
        b.add(wide, shift).map_err(err)?
    } else {
        q
    };
    b.op1(Op::Gather { axis: 0 }, &[t, idx]).map_err(err)
}
