//! `fuse`: fusion into `fused` kernel nodes, decided through the e-graph and its cost model.
//!
//! Candidate kernels come from a partition of the graph, consumers first: each unassigned op
//! roots a group, which absorbs a producer when every user of the producer is already in the
//! group (so nothing absorbed needs to be materialized) and the group stays a kernel that
//! codegen can emit:
//!
//! - elementwise ops, broadcasts, reshapes, transposes, slices, pads, concats and gathers
//!   (indexing, folded into the kernel's loads) fuse freely — but for a concat the runtime
//!   does in place (a batch-1 image's channels, see [`in_place`]), left alone;
//! - reductions bring their prologue and epilogue (softmax, layer norm and RMS norm are one
//!   kernel each);
//! - a kernel holds at most one `dot` or `conv`, which takes no reduction in the same kernel,
//!   only movement ops on its operands (not the blocking of a quantized conv's result, which
//!   that conv's kernel stores blocked), and elementwise work after it (bias, activation,
//!   residual);
//! - a kernel holds no elementwise work that continues another heavy op's epilogue (see
//!   [`owners`]): where several products meet (an LSTM's gates, a ResNet block's two branches),
//!   each product keeps its own bias and activation, which codegen applies as it stores,
//!   instead of one kernel taking all the branches' elementwise work and a single product;
//! - small constants are copied into the kernel body; weights stay operands.
//!
//! Each candidate becomes a `fused` node added to the e-class of the value it computes, next to
//! the unfused expression; extraction under the cost model (which charges every materialized
//! intermediate its bytes and every kernel its launch) picks one or the other. The body is named
//! by what it computes (`softmax`, `layer_norm`, `rms_norm`, `gelu`, `matmul`, ...).

use std::collections::{HashMap, HashSet};

use egg::Id;
use ir::{Builder, Graph, NodeId, Op, OpKind, Region, Value};

use crate::egraph::{self, cost::Target, extract, lang::EOp};
use crate::manager::{Done, Options};
use crate::rebuild::R;

/// Constants up to this many elements are copied into kernel bodies.
const SMALL_CONSTANT: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Parameters, big constants, and ops kernels do not contain.
    Opaque,
    /// Copied into every kernel that uses it.
    SmallConstant,
    Movement,
    Elementwise,
    Reduce,
    /// `dot`, `conv`.
    Heavy,
}

fn class(g: &Graph, id: NodeId) -> Class {
    let n = g.node(id);
    match n.op() {
        Op::Constant { value } if value.tensor.numel() <= SMALL_CONSTANT => Class::SmallConstant,
        Op::Iota { .. } => Class::Elementwise,
        Op::Param { .. } | Op::Constant { .. } | Op::Dims { .. } | Op::Fused { .. } => {
            Class::Opaque
        }
        Op::Dot { .. }
        | Op::Qdot { .. }
        | Op::Qdot4 { .. }
        | Op::Conv { .. }
        | Op::Qconv { .. }
        | Op::ConvBlocked { .. } => Class::Heavy,
        Op::Concat { axis } if in_place(g, id, *axis) => Class::Opaque,
        Op::ReduceSum { .. }
        | Op::ReduceMax { .. }
        | Op::ReduceMin { .. }
        | Op::ReduceProd { .. } => Class::Reduce,
        Op::Reshape { .. }
        | Op::Refine { .. }
        | Op::Transpose { .. }
        | Op::Broadcast { .. }
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Concat { .. }
        | Op::Gather { .. } => Class::Movement,
        op if op.is_elementwise() => Class::Elementwise,
        _ => Class::Opaque,
    }
}

/// Whether a `concat` is left out of kernels for the runtime to do in place (its operands'
/// kernels writing into their parts of its result: see the runtime's memory plan): its
/// result one run of its operands (every dim before the axis statically 1), at least two
/// distinct operands, each computed by the run (not a parameter or a constant), and the
/// result not an output of the graph (which the runtime keeps apart).
fn in_place(g: &Graph, id: NodeId, axis: i64) -> bool {
    let n = g.node(id);
    let ty = &n.types()[0];
    // Axes in the IR are nonnegative (inference rejects others).
    let Ok(axis) = usize::try_from(axis) else {
        return false;
    };
    let ins = n.inputs();
    let ones = ty
        .shape
        .dims()
        .iter()
        .take(axis)
        .all(|d| d.as_const() == Some(1));
    let computed = ins.iter().all(|v| {
        !matches!(
            g.node(v.node).op(),
            Op::Param { .. } | Op::Constant { .. } | Op::Iota { .. }
        )
    });
    let distinct = ins.iter().enumerate().all(|(i, v)| !ins[..i].contains(v));
    let output = g.outputs().iter().any(|(_, v)| v.node == id);
    ones && ins.len() >= 2 && computed && distinct && !output
}

/// One candidate kernel.
struct Group {
    members: HashSet<NodeId>,
    heavy: Option<NodeId>,
    reduces: bool,
    /// Members from which the heavy op is reachable inside the group.
    feeds_heavy: HashSet<NodeId>,
    /// Members copied into the group although other kernels use them too (views: broadcast,
    /// reshape, transpose); the group does not reach through them to their producers.
    dups: HashSet<NodeId>,
    /// The heavy op whose epilogue the group's members continue, once one does.
    owner: Option<NodeId>,
}

/// The heavy op each node continues the epilogue of: a `dot` or `conv` is its own; an
/// elementwise op continues the epilogue of its inputs whose producers it alone uses (or two
/// elementwise readers that meet again within a few steps, as GELU's and SiLU's `x` is read
/// twice: see [`meets`]), when they continue one and the same (a join of two products
/// continues none).
/// Movement ops continue none: after a product they are indexing on the way into the next
/// one (attention heads), which that one's kernel takes.
fn owners(
    g: &Graph,
    order: &[NodeId],
    users: &HashMap<NodeId, Vec<NodeId>>,
) -> HashMap<NodeId, NodeId> {
    let mut owner: HashMap<NodeId, NodeId> = HashMap::new();
    for &id in order {
        match class(g, id) {
            Class::Heavy => {
                owner.insert(id, id);
            }
            Class::Elementwise => {
                let mut from: Option<NodeId> = None;
                let mut join = false;
                for v in g.node(id).inputs() {
                    let only_here = users
                        .get(&v.node)
                        .is_some_and(|us| us.iter().all(|&u| u == id) || meets(g, us, users));
                    match (only_here, owner.get(&v.node)) {
                        (true, Some(&h)) if from.is_some_and(|f| f != h) => join = true,
                        (true, Some(&h)) => from = Some(h),
                        _ => {}
                    }
                }
                if let (false, Some(h)) = (join, from) {
                    owner.insert(id, h);
                }
            }
            _ => {}
        }
    }
    owner
}

/// Views cheap enough to recompute in every kernel that reads them.
fn is_view(op: &Op) -> bool {
    matches!(
        op,
        Op::Broadcast { .. } | Op::Reshape { .. } | Op::Refine { .. } | Op::Transpose { .. }
    )
}

/// Whether the readers `us` of a value are two elementwise ops of which one reads the
/// other's result, directly or through at most three elementwise ops each read once (`x ·
/// sigmoid(x)`, `x · (erf(x / √2) + 1)`).
fn meets(g: &Graph, us: &[NodeId], users: &HashMap<NodeId, Vec<NodeId>>) -> bool {
    let mut distinct = us.to_vec();
    distinct.sort();
    distinct.dedup();
    let &[a, b] = distinct.as_slice() else {
        return false;
    };
    let elementwise = |n: NodeId| class(g, n) == Class::Elementwise;
    let reaches = |from: NodeId, to: NodeId| {
        let mut at = from;
        for _ in 0..4 {
            match users.get(&at).map(|v| v.as_slice()) {
                Some(&[next]) if next == to => return true,
                Some(&[next]) if elementwise(next) => at = next,
                _ => return false,
            }
        }
        false
    };
    elementwise(a) && elementwise(b) && (reaches(a, b) || reaches(b, a))
}

/// Partitions `g` into candidate kernels (only groups worth a kernel node are returned).
fn partition(g: &Graph, order: &[NodeId]) -> Vec<Vec<NodeId>> {
    let mut users: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    for &id in order {
        for v in g.node(id).inputs() {
            users.entry(v.node).or_default().push(id);
        }
    }
    let outputs: HashSet<NodeId> = g.outputs().iter().map(|(_, v)| v.node).collect();
    let owner = owners(g, order, &users);
    let mut assigned: HashSet<NodeId> = HashSet::new();
    let mut copied_into: HashMap<NodeId, HashSet<NodeId>> = HashMap::new();
    let mut groups = Vec::new();
    for &root in order.iter().rev() {
        let c = class(g, root);
        if assigned.contains(&root) || matches!(c, Class::Opaque | Class::SmallConstant) {
            continue;
        }
        // A view every user copied needs no kernel of its own.
        if is_view(g.node(root).op())
            && users.get(&root).is_some_and(|us| {
                !us.is_empty()
                    && us
                        .iter()
                        .all(|u| copied_into.get(&root).is_some_and(|s| s.contains(u)))
            })
            && !outputs.contains(&root)
        {
            assigned.insert(root);
            continue;
        }
        let mut grp = Group {
            members: HashSet::from([root]),
            heavy: (c == Class::Heavy).then_some(root),
            reduces: c == Class::Reduce,
            feeds_heavy: HashSet::new(),
            dups: HashSet::new(),
            owner: owner.get(&root).copied(),
        };
        // Grow by exclusive producers to a fixpoint; only then copy in shared views (a view
        // whose other users may still join the group is better owned than copied).
        let mut allow_dups = false;
        loop {
            let mut grew = false;
            let mut candidates: Vec<NodeId> = grp
                .members
                .iter()
                .filter(|m| !grp.dups.contains(m))
                .flat_map(|&m| g.node(m).inputs().iter().map(|v| v.node))
                .filter(|p| !grp.members.contains(p) && !assigned.contains(p))
                .collect();
            candidates.sort_by_key(|&p| std::cmp::Reverse(position(order, p)));
            candidates.dedup();
            for p in candidates {
                if grp.members.contains(&p) {
                    continue;
                }
                let all_inside = users
                    .get(&p)
                    .is_some_and(|us| us.iter().all(|u| grp.members.contains(u)))
                    && !outputs.contains(&p)
                    && g.node(p).types().len() == 1;
                if all_inside && absorb(g, &mut grp, p, &users, &owner) {
                    grew = true;
                } else if allow_dups
                    && !all_inside
                    && is_view(g.node(p).op())
                    && !outputs.contains(&p)
                    && absorb(g, &mut grp, p, &users, &owner)
                {
                    grp.dups.insert(p);
                    grew = true;
                }
            }
            if !grew {
                if allow_dups {
                    break;
                }
                allow_dups = true;
            } else {
                allow_dups = false;
            }
        }
        let worth = grp
            .members
            .iter()
            .filter(|&&m| !matches!(class(g, m), Class::SmallConstant))
            .count()
            > 1;
        if worth {
            for &m in &grp.members {
                if grp.dups.contains(&m) {
                    // Which users read their own copy of this view.
                    let inside: Vec<NodeId> = users[&m]
                        .iter()
                        .copied()
                        .filter(|u| grp.members.contains(u))
                        .collect();
                    copied_into.entry(m).or_default().extend(inside);
                } else {
                    assigned.insert(m);
                }
            }
            let mut members: Vec<NodeId> = grp.members.into_iter().collect();
            members.sort_by_key(|&m| position(order, m));
            groups.push(members);
        } else {
            assigned.insert(root);
        }
    }
    groups
}

fn position(order: &[NodeId], id: NodeId) -> usize {
    order.iter().position(|&o| o == id).unwrap_or(usize::MAX)
}

/// Adds producer `p` to the group if the group stays an emittable kernel and continues at
/// most one heavy op's epilogue.
fn absorb(
    g: &Graph,
    grp: &mut Group,
    p: NodeId,
    users: &HashMap<NodeId, Vec<NodeId>>,
    owner: &HashMap<NodeId, NodeId>,
) -> bool {
    let c = class(g, p);
    let continues = owner.get(&p).copied();
    if grp.owner.is_some() && continues.is_some() && grp.owner != continues {
        return false;
    }
    let feeds = users.get(&p).is_some_and(|us| {
        us.iter()
            .any(|u| Some(*u) == grp.heavy || grp.feeds_heavy.contains(u))
    });
    let ok = match c {
        Class::Opaque => false,
        Class::SmallConstant => true,
        // Only indexing on the way into a dot or conv — but a quantized conv's result made
        // channel-blocked stays with that conv, whose routine stores it blocked.
        Class::Movement => grp.heavy.is_none() || !blocks_qconv(g, p),
        // Work continuing a product's epilogue stays for the product's kernel, which applies
        // it as it stores, rather than a reduction's loops after it (a conv's batch norm and
        // clip before a global average pool ran as scalar loops in the pool's kernel).
        Class::Elementwise => {
            let epilogue = grp.reduces && grp.heavy.is_none() && continues.is_some();
            !feeds && !epilogue
        }
        Class::Reduce => grp.heavy.is_none() && !feeds,
        Class::Heavy => grp.heavy.is_none() && !grp.reduces,
    };
    if !ok {
        return false;
    }
    grp.members.insert(p);
    grp.owner = grp.owner.or(continues);
    if feeds {
        grp.feeds_heavy.insert(p);
    }
    match c {
        Class::Heavy => grp.heavy = Some(p),
        Class::Reduce => grp.reduces = true,
        _ => {}
    }
    true
}

/// Whether `p` is the transpose that makes a 2-D quantized conv's result channel-blocked as
/// the layout pass writes it for a depthwise conv (a reshape splitting the channels, then the
/// transpose putting them last, of what `layout::from_qconv` accepts).
fn blocks_qconv(g: &Graph, p: NodeId) -> bool {
    let n = g.node(p);
    let reshape = match n.op() {
        Op::Transpose { perm } if perm[..] == [0, 1, 3, 4, 2] => n.inputs()[0].node,
        _ => return false,
    };
    let r = g.node(reshape);
    matches!(r.op(), Op::Reshape { .. })
        && r.types()[0].shape.rank() == 5
        && crate::layout::from_qconv(g, r.inputs()[0])
}

/// The kernel node for a group: its operands (values from outside) and its op.
fn kernel(g: &Graph, members: &[NodeId]) -> R<(Vec<Value>, Value, Op)> {
    let inside: HashSet<NodeId> = members.iter().copied().collect();
    let mut b = Builder::new("body");
    let mut map: HashMap<Value, Value> = HashMap::new();
    let mut operands: Vec<Value> = Vec::new();
    // Operands come in as parameters, except small constants and views of them, which are
    // copied into the body (a shared splat never makes a kernel read a materialized tensor).
    let mut copies: Vec<NodeId> = Vec::new();
    for &m in members {
        for &v in g.node(m).inputs() {
            if inside.contains(&v.node) || map.contains_key(&v) {
                continue;
            }
            if copyable(g, v.node, &mut copies) {
                continue;
            }
            let ty = g.value_type(v);
            let p = b
                .param(&format!("in{}", operands.len()), ty.dtype, ty.shape.clone())
                .map_err(|e| e.to_string())?;
            map.insert(v, p);
            operands.push(v);
        }
    }
    for &c in &copies {
        if map.contains_key(&Value::new(c, 0)) {
            continue;
        }
        let n = g.node(c);
        let args: Vec<Value> = n.inputs().iter().map(|v| map[v]).collect();
        let o = b.op1(n.op().clone(), &args).map_err(|e| e.to_string())?;
        map.insert(Value::new(c, 0), o);
    }
    for &m in members {
        let n = g.node(m);
        let args: Vec<Value> = n.inputs().iter().map(|v| map[v]).collect();
        b.set_origin(n.origin().clone());
        let outs = b.op(n.op().clone(), &args).map_err(|e| e.to_string())?;
        for (i, o) in outs.into_iter().enumerate() {
            map.insert(Value::new(m, i as u32), o);
        }
    }
    // The root: the member no other member uses.
    let used: HashSet<NodeId> = members
        .iter()
        .flat_map(|&m| g.node(m).inputs().iter().map(|v| v.node))
        .collect();
    let root = members
        .iter()
        .rev()
        .find(|m| !used.contains(m))
        .copied()
        .ok_or("a kernel without a root")?;
    let result = Value::new(root, 0);
    b.output("out0", map[&result]).map_err(|e| e.to_string())?;
    let body = b.into_graph();
    let kind = name_kernel(&body);
    Ok((
        operands,
        result,
        Op::Fused {
            kind,
            body: Region::new(body),
        },
    ))
}

/// Whether the value of node `id` can be recomputed inside a kernel: a small constant, or a
/// broadcast, reshape or transpose of one. Collects the nodes to copy, operands first.
fn copyable(g: &Graph, id: NodeId, out: &mut Vec<NodeId>) -> bool {
    let n = g.node(id);
    let ok = match n.op() {
        Op::Constant { value } => value.tensor.numel() <= SMALL_CONSTANT,
        Op::Broadcast { .. } | Op::Reshape { .. } | Op::Refine { .. } | Op::Transpose { .. } => {
            copyable(g, n.inputs()[0].node, out)
        }
        _ => false,
    };
    if ok {
        out.push(id);
    }
    ok
}

/// What a kernel body computes, for people reading the IR: the recognized pattern.
pub(crate) fn name_kernel(body: &Graph) -> String {
    let ops: Vec<&Op> = body
        .node_ids()
        .into_iter()
        .map(|id| body.node(id).op())
        .collect();
    let count = |f: &dyn Fn(&Op) -> bool| ops.iter().filter(|o| f(o)).count();
    let has = |f: &dyn Fn(&Op) -> bool| count(f) > 0;
    let sums = count(&|o| matches!(o, Op::ReduceSum { .. }));
    if has(&|o| matches!(o, Op::Dot { .. } | Op::Qdot { .. } | Op::Qdot4 { .. })) {
        return if ops.iter().any(|o| o.is_elementwise()) {
            "matmul_epilogue".into()
        } else {
            "matmul".into()
        };
    }
    if has(&|o| {
        matches!(
            o,
            Op::Conv { .. } | Op::Qconv { .. } | Op::ConvBlocked { .. }
        )
    }) {
        return "conv_epilogue".into();
    }
    if has(&|o| matches!(o, Op::ReduceMax { .. })) && has(&|o| matches!(o, Op::Exp)) && sums >= 1 {
        return if has(&|o| matches!(o, Op::Log)) {
            "log_softmax".into()
        } else {
            "softmax".into()
        };
    }
    let rsqrt = has(&|o| matches!(o, Op::Rsqrt | Op::Sqrt));
    if rsqrt && sums >= 2 {
        return "layer_norm".into();
    }
    if rsqrt && sums == 1 {
        return "rms_norm".into();
    }
    if has(&|o| matches!(o, Op::Erf)) {
        return "gelu".into();
    }
    if has(&|o| matches!(o, Op::Tanh)) && has(&|o| matches!(o, Op::Mul)) && ops.len() > 6 {
        return "gelu_tanh".into();
    }
    if has(&|o| matches!(o, Op::Sigmoid)) {
        return if count(&|o| matches!(o, Op::Mul)) >= 2 {
            "swiglu".into()
        } else {
            "silu".into()
        };
    }
    if sums + count(&|o| o.kind() == OpKind::Reduce) > 0 {
        return "reduce".into();
    }
    if ops
        .iter()
        .all(|o| matches!(o.kind(), OpKind::Movement | OpKind::Source))
    {
        return "move".into();
    }
    "elementwise".into()
}

pub(crate) fn run(g: &Graph, opts: &Options) -> R<Done> {
    let order = g
        .topo_order()
        .map_err(|c| format!("the graph has a cycle through {} nodes", c.0.len()))?;
    let groups = partition(g, &order);
    let mut loaded = extract::load(g)?;
    let mut added = 0;
    for members in &groups {
        let (operands, result, op) = kernel(g, members)?;
        let children: Vec<Id> = operands
            .iter()
            .map(|v| loaded.egraph.find(loaded.values[v]))
            .collect();
        let k = egraph::add_node(&mut loaded.egraph, EOp::Ir(op), children)?;
        let target = loaded.values[&result];
        if loaded.egraph[k].data.types != loaded.egraph[target].data.types {
            return Err("a kernel does not have the type of the value it computes".into());
        }
        loaded.egraph.union(k, target);
        added += 1;
    }
    loaded.egraph.rebuild();
    // Fold has run: values of constants alone left here run every time.
    let target = Target {
        folds: false,
        ..opts.target.clone()
    };
    let graph = extract::extract(&loaded, g, &target)?;
    let kernels = graph
        .node_ids()
        .into_iter()
        .filter(|&id| matches!(graph.node(id).op(), Op::Fused { .. }))
        .count();
    Ok(Done {
        graph,
        notes: vec![format!(
            "fuse: {added} candidate kernels, {kernels} chosen by the cost model"
        )],
    })
}

/// Optimizes every kernel body with the recognition and simplification rules, pricing only
/// arithmetic (inside a kernel, intermediates are not materialized), and renames the kernel.
pub(crate) fn optimize_bodies(g: &Graph, opts: &Options) -> R<Done> {
    use crate::egraph::rules::{RECOGNIZE, SIMPLIFY};
    let inner = opts.target.in_kernel();
    let mut changed = 0;
    let graph = crate::rebuild::rebuild(
        g,
        &crate::rebuild::Settings::STRICT,
        &mut |b: &mut Builder, node, inputs: &[Value]| {
            let Op::Fused { body, .. } = node.op() else {
                return Ok(None);
            };
            let (new, _) = crate::egraph::optimize(
                body.graph(),
                &[&RECOGNIZE, &SIMPLIFY],
                &opts.limits,
                &inner,
            )?;
            if new == *body.graph() {
                return Ok(None);
            }
            changed += 1;
            let op = Op::Fused {
                kind: name_kernel(&new),
                body: Region::new(new),
            };
            b.op(op, inputs).map(Some).map_err(|e| e.to_string())
        },
    )?;
    Ok(Done {
        graph,
        notes: vec![format!("kernels: {changed} bodies rewritten")],
    })
}
