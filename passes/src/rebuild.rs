//! Rebuilding a graph node by node in topological order: the skeleton the classic passes share.
//! Only nodes that reach an output are copied (every parameter is kept), so each rebuild is also
//! dead-code elimination; with hash-consing on it is common-subexpression elimination.

use std::collections::{HashMap, HashSet};

use ir::{Builder, Graph, Node, NodeId, Op, Value};

pub(crate) type R<T> = Result<T, String>;

/// What a rewrite decides for one node, given its operands in the new graph.
pub(crate) type Rewrite<'a> =
    dyn FnMut(&mut Builder, &Node, &[Value]) -> R<Option<Vec<Value>>> + 'a;

pub(crate) struct Settings {
    /// Reuse an identical node (same op, same operands) instead of copying a second one.
    pub hash_cons: bool,
    /// A replacement must have exactly the types of the node it replaces.
    pub same_types: bool,
}

impl Settings {
    /// Replacements keep types; identical nodes stay separate.
    pub const STRICT: Settings = Settings {
        hash_cons: false,
        same_types: true,
    };
    /// Replacements may change types (specialization).
    pub const RETYPE: Settings = Settings {
        hash_cons: false,
        same_types: false,
    };
    /// Identical nodes merge.
    pub const CSE: Settings = Settings {
        hash_cons: true,
        same_types: true,
    };
}

/// The nodes that some output depends on, plus every parameter.
fn live(g: &Graph) -> HashSet<NodeId> {
    let mut seen: HashSet<NodeId> = g.params().iter().copied().collect();
    let mut stack: Vec<NodeId> = g.outputs().iter().map(|(_, v)| v.node).collect();
    while let Some(id) = stack.pop() {
        if seen.insert(id) {
            stack.extend(g.node(id).inputs().iter().map(|v| v.node));
        }
    }
    seen
}

/// Copies `g`; `rewrite` may build replacement values for a node (returning `None` copies it).
pub(crate) fn rebuild(g: &Graph, settings: &Settings, rewrite: &mut Rewrite) -> R<Graph> {
    let order = g
        .topo_order()
        .map_err(|c| format!("the graph has a cycle through {} nodes", c.0.len()))?;
    let live = live(g);
    let mut b = Builder::new(g.name());
    let mut map: HashMap<Value, Value> = HashMap::new();
    let mut seen: HashMap<(Op, Vec<Value>), NodeId> = HashMap::new();
    for id in order {
        if !live.contains(&id) {
            continue;
        }
        let node = g.node(id);
        let inputs: Vec<Value> = node.inputs().iter().map(|v| map[v]).collect();
        b.set_origin(node.origin().clone());
        let outs = match rewrite(&mut b, node, &inputs)? {
            Some(outs) => {
                check_replacement(g, &b, id, &outs, settings.same_types)?;
                outs
            }
            None => copy(&mut b, node, inputs, settings.hash_cons, &mut seen)?,
        };
        for (i, v) in outs.into_iter().enumerate() {
            map.insert(Value::new(id, i as u32), v);
        }
    }
    let outputs = g
        .outputs()
        .iter()
        .map(|(n, v)| (n.clone(), map[v]))
        .collect();
    let mut out = b.into_graph();
    out.set_outputs(outputs).map_err(|e| e.to_string())?;
    sweep(&mut out);
    Ok(out)
}

fn copy(
    b: &mut Builder,
    node: &Node,
    inputs: Vec<Value>,
    hash_cons: bool,
    seen: &mut HashMap<(Op, Vec<Value>), NodeId>,
) -> R<Vec<Value>> {
    let op = node.op().clone();
    let key = (hash_cons && !matches!(op, Op::Param { .. })).then(|| (op.clone(), inputs.clone()));
    if let Some(&id) = key.as_ref().and_then(|k| seen.get(k)) {
        let n = b.graph().node(id).types().len();
        return Ok((0..n).map(|i| Value::new(id, i as u32)).collect());
    }
    let outs = b.op(op, &inputs).map_err(|e| e.to_string())?;
    if let (Some(k), Some(v)) = (key, outs.first()) {
        seen.insert(k, v.node);
    }
    Ok(outs)
}

fn check_replacement(g: &Graph, b: &Builder, id: NodeId, outs: &[Value], same: bool) -> R<()> {
    let node = g.node(id);
    if outs.len() != node.types().len() {
        return Err(format!(
            "a {} node was replaced by {} values for its {} results",
            node.op().mnemonic(),
            outs.len(),
            node.types().len()
        ));
    }
    if same {
        for (v, ty) in outs.iter().zip(node.types()) {
            let got = b.ty(*v);
            if got != ty {
                return Err(format!(
                    "a {} node of type {ty} was replaced by a value of type {got}",
                    node.op().mnemonic()
                ));
            }
        }
    }
    Ok(())
}

/// Removes, in place, every node that neither reaches an output nor is a parameter.
pub(crate) fn sweep(g: &mut Graph) {
    let Ok(order) = g.topo_order() else { return };
    let keep: HashSet<NodeId> = live(g);
    for id in order.into_iter().rev() {
        if !keep.contains(&id) {
            // Users come later in topological order, so they are already gone.
            let _ = g.remove_node(id);
        }
    }
}
