//! `fold`: constant folding. A node whose operands are all constants is evaluated (by the
//! injected evaluator) and replaced by constants. Results larger than `fold_max_bytes` (except
//! transposes and reshapes, which only relayout a constant), or that would be much larger than
//! the operands they come from, stay in the graph — except, in `dequantize`, a product's
//! weight made from a narrower one (an int8 weight dequantized to f32: up to
//! [`WEIGHT_GROWTH`] times its bytes, within `fold_max_bytes`), dequantized once at compile
//! time; a result whose
//! elements are all equal becomes a scalar constant and a `broadcast`, the normal form of
//! splats. `dims` whose expressions are all constants fold without an evaluator.

use std::collections::HashSet;

use ir::{Builder, ConstValue, Data, Node, Op, Shape, Tensor, Value};

use crate::manager::Options;
use crate::rebuild::{rebuild, Settings, R};

/// Results up to this size fold even when they are larger than their operands.
const SMALL: u64 = 64 << 10;

/// How much larger than its operands a product's weight may fold: an 8-bit weight's f32
/// expansion. A 4-bit one (8×) stays packed and unpacks at run time.
const WEIGHT_GROWTH: u64 = 4;

/// The nodes whose results reach an operand of a `dot` or `conv` through elementwise math,
/// casts and data movement only: a weight's dequantization. Identified by address, since a
/// rewrite sees the node, not its id.
fn weight_makers(g: &ir::Graph) -> HashSet<*const Node> {
    let mut seen = HashSet::new();
    let mut stack: Vec<ir::NodeId> = Vec::new();
    for id in g.node_ids() {
        if g.node(id).op().kind() == ir::OpKind::Contraction {
            stack.extend(g.node(id).inputs().iter().map(|v| v.node));
        }
    }
    while let Some(id) = stack.pop() {
        let node = g.node(id);
        let through = matches!(
            node.op().kind(),
            ir::OpKind::Unary
                | ir::OpKind::Binary
                | ir::OpKind::Ternary
                | ir::OpKind::Cast
                | ir::OpKind::Movement
        );
        if through && seen.insert(node as *const Node) {
            stack.extend(node.inputs().iter().map(|v| v.node));
        }
    }
    seen
}

pub(crate) fn run(g: &ir::Graph, opts: &Options) -> R<ir::Graph> {
    fold(g, opts, false)
}

/// `dequantize`: `fold` that also dequantizes products' narrower weights once (see
/// [`WEIGHT_GROWTH`]), after `quantize` has taken the integer products it could.
pub(crate) fn dequantize(g: &ir::Graph, opts: &Options) -> R<ir::Graph> {
    fold(g, opts, true)
}

fn fold(g: &ir::Graph, opts: &Options, weights: bool) -> R<ir::Graph> {
    let mut names: HashSet<String> = HashSet::new();
    for id in g.node_ids() {
        if let Op::Constant { value } = g.node(id).op() {
            if let Some(n) = &value.name {
                names.insert(n.to_string());
            }
        }
    }
    let weights = if weights {
        weight_makers(g)
    } else {
        HashSet::new()
    };
    rebuild(
        g,
        &Settings::STRICT,
        &mut |b: &mut Builder, node: &Node, inputs: &[Value]| {
            let weight = weights.contains(&(node as *const Node));
            fold_node(b, node, inputs, opts, weight, &mut names)
        },
    )
}

fn constant_of(b: &Builder, v: Value) -> Option<&ConstValue> {
    match b.graph().node(v.node).op() {
        Op::Constant { value } => Some(value),
        _ => None,
    }
}

fn fold_node(
    b: &mut Builder,
    node: &Node,
    inputs: &[Value],
    opts: &Options,
    weight: bool,
    names: &mut HashSet<String>,
) -> R<Option<Vec<Value>>> {
    match node.op() {
        Op::Dims { values } => {
            let Some(v) = values
                .iter()
                .map(|d| d.as_const())
                .collect::<Option<Vec<i64>>>()
            else {
                return Ok(None);
            };
            let t = Tensor::new(vec![v.len()], Data::I64(v)).map_err(|e| e.to_string())?;
            return b
                .constant(t)
                .map(|v| Some(vec![v]))
                .map_err(|e| e.to_string());
        }
        // Sources stay; broadcasts keep constants small (their normal form).
        // Refines check a fact at run time: folding would drop the check.
        Op::Param { .. }
        | Op::Constant { .. }
        | Op::Iota { .. }
        | Op::Broadcast { .. }
        | Op::Refine { .. } => return Ok(None),
        _ => {}
    }
    let Some(eval) = opts.evaluate else {
        return Ok(None);
    };
    // Operands must be constants, or broadcasts of constants (the normal form of splats).
    let mut consts: Vec<(ConstValue, Option<Op>)> = Vec::with_capacity(inputs.len());
    for &v in inputs {
        if let Some(c) = constant_of(b, v) {
            consts.push((c.clone(), None));
            continue;
        }
        let node = b.graph().node(v.node);
        match (node.op(), node.inputs()) {
            (op @ Op::Broadcast { .. }, [src]) => match constant_of(b, *src) {
                Some(c) => consts.push((c.clone(), Some(op.clone()))),
                None => return Ok(None),
            },
            _ => return Ok(None),
        }
    }
    // Constant math on broadcasts (QGemm's scales, per tensor and per column, broadcast to
    // the whole result before they are multiplied) folds at the broadcasts' own size and is
    // broadcast after: a broadcast stays a view that epilogues read per column, where the
    // folded whole would be a tensor of the result's size read element by element.
    let grows = consts.iter().any(|(c, op)| {
        matches!(op, Some(Op::Broadcast { dims, .. }) if !dims.is_empty())
            && c.tensor.numel()
                < node.types()[0]
                    .shape
                    .as_consts()
                    .map_or(0, |d| d.iter().product::<i64>() as usize)
    });
    if node.op().is_elementwise() && grows {
        if let Some(sunk) = crate::canon::sink_broadcast(b, node, inputs)? {
            let small = b.graph().node(sunk.node).inputs()[0];
            let small_node = b.graph().node(small.node).clone();
            let folded = fold_node(b, &small_node, small_node.inputs(), opts, weight, names)?;
            let Some([c]) = folded.as_deref() else {
                return Ok(Some(vec![sunk]));
            };
            let op = b.graph().node(sunk.node).op().clone();
            return b
                .op1(op, &[*c])
                .map(|v| Some(vec![v]))
                .map_err(|e| e.to_string());
        }
    }
    let mut out_bytes = 0u64;
    for ty in node.types() {
        let Some(dims) = ty.shape.as_consts() else {
            return Ok(None);
        };
        let n = dims.iter().map(|&d| d as u64).product::<u64>();
        out_bytes += ty.dtype.storage_bytes(n).unwrap_or(u64::MAX);
    }
    let in_bytes: u64 = consts
        .iter()
        .map(|(c, _)| {
            c.tensor
                .dtype()
                .storage_bytes(c.tensor.numel() as u64)
                .unwrap_or(0)
        })
        .sum();
    // A transpose or reshape of a weight is the weight in another layout: no bigger, and
    // left unfolded it would run every time (a classifier's [classes, features] weight).
    let relayout = matches!(node.op(), Op::Transpose { .. } | Op::Reshape { .. });
    let cap = if relayout {
        opts.fold_max_bytes.max(in_bytes)
    } else {
        opts.fold_max_bytes
    };
    let growth = if weight { WEIGHT_GROWTH } else { 1 };
    if out_bytes > cap || (out_bytes > SMALL && out_bytes > in_bytes.saturating_mul(growth)) {
        return Ok(None);
    }
    // A folded weight is named after the weight it comes from.
    let base = consts
        .iter()
        .find_map(|(c, _)| c.name.as_deref())
        .map(|n| format!("{n}.{}", node.op().mnemonic()));
    if let Some(t) = scaled(node, &consts) {
        return Ok(Some(vec![emit(b, t, base.as_deref(), names)?]));
    }
    // A scratch graph: the constants (and their broadcasts) and the node.
    let mut s = Builder::new("fold");
    let mut args = Vec::with_capacity(consts.len());
    for (c, broadcast) in &consts {
        let mut v = s.constant(c.tensor.clone()).map_err(|e| e.to_string())?;
        if let Some(op) = broadcast {
            v = s.op1(op.clone(), &[v]).map_err(|e| e.to_string())?;
        }
        args.push(v);
    }
    let outs = s.op(node.op().clone(), &args).map_err(|e| e.to_string())?;
    for (i, v) in outs.iter().enumerate() {
        s.output(&format!("r{i}"), *v).map_err(|e| e.to_string())?;
    }
    // Evaluation failures (an out-of-range index, say) are the program's behaviour at run time:
    // leave the node for the runtime to report.
    let Ok(results) = eval(&s.into_graph()) else {
        return Ok(None);
    };
    let mut values = Vec::with_capacity(results.len());
    for t in results {
        values.push(emit(b, t, base.as_deref(), names)?);
    }
    Ok(Some(values))
}

/// A dense f32 constant times a splat (a scale `scale-into-dot` moved into a weight),
/// computed in one pass: the evaluator would materialize the splat and take each product
/// through its generic elementwise path (rxnmap's fifteen 3072×1024 weights took 685 ms).
/// The products round as the evaluator's do (an f32 product rounded once). `None` for
/// anything else.
fn scaled(node: &Node, consts: &[(ConstValue, Option<Op>)]) -> Option<Tensor> {
    if *node.op() != Op::Mul || node.types()[0].dtype != ir::DType::F32 {
        return None;
    }
    let [(a, _), (c, _)] = consts else {
        return None;
    };
    let shape: Vec<usize> = node.types()[0]
        .shape
        .as_consts()?
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<_>>()?;
    // The operand laid out as the result, and the one-element one (broadcast to it).
    fn dense<'a>(t: &'a Tensor, shape: &[usize]) -> Option<&'a [f32]> {
        (t.shape() == shape).then(|| t.as_slice::<f32>())?
    }
    fn splat(t: &Tensor) -> Option<f32> {
        match t.as_slice::<f32>()? {
            &[s] => Some(s),
            _ => None,
        }
    }
    let (x, s) = match (dense(&a.tensor, &shape), splat(&c.tensor)) {
        (Some(x), Some(s)) => (x, s),
        _ => (dense(&c.tensor, &shape)?, splat(&a.tensor)?),
    };
    let out: Vec<f32> = x.iter().map(|&v| v * s).collect();
    Tensor::new(shape, ir::Data::F32(out)).ok()
}

/// A folded tensor as a constant: a scalar and a broadcast when every element is the same,
/// named after the weight it came from when there is one (so it prints as `@name`).
fn emit(b: &mut Builder, t: Tensor, base: Option<&str>, names: &mut HashSet<String>) -> R<Value> {
    let n = t.numel();
    let data = t.data();
    if n > 1 && data.is_splat() {
        let scalar = Tensor::new(vec![], data.take_all(&[0])).map_err(|e| e.to_string())?;
        let s = b.constant(scalar).map_err(|e| e.to_string())?;
        let shape = Shape::from_usizes(t.shape());
        return b.broadcast_to(s, &shape).map_err(|e| e.to_string());
    }
    let v = match base {
        Some(base) if n > 16 => {
            let mut name = base.to_string();
            let mut k = 1;
            while !names.insert(name.clone()) {
                k += 1;
                name = format!("{base}{k}");
            }
            b.named_constant(&name, t)
        }
        _ => b.constant(t),
    };
    v.map_err(|e| e.to_string())
}
