//! Loading a graph into an e-graph and extracting the cheapest graph back out.
//!
//! Extraction first picks, per class, the node with the least tree cost (a fixpoint, like
//! egg's `Extractor`), then improves the choice DAG-aware: a tree cost counts a value used
//! twice twice, so each chosen class is revisited with every alternative costed against the
//! DAG as it stands (shared values already paid for count once), and an alternative that
//! lowers the total replaces the choice. Ties keep the earlier node, so results are
//! deterministic.

use std::collections::{HashMap, HashSet};

use egg::Id;
use ir::{Builder, Graph, Value};

use super::cost::Target;
use super::lang::{EGraph, ENode, EOp, Info};
use super::{add_node, R};

pub struct Loaded {
    pub egraph: EGraph,
    pub params: Vec<Id>,
    pub outputs: Vec<(String, Id)>,
    /// The class of each value of the loaded graph.
    pub values: HashMap<Value, Id>,
}

/// The e-graph of `g`: one class per value.
pub fn load(g: &Graph) -> R<Loaded> {
    let order = g
        .topo_order()
        .map_err(|c| format!("the graph has a cycle through {} nodes", c.0.len()))?;
    let mut eg = EGraph::default();
    let mut ids: HashMap<Value, Id> = HashMap::new();
    for id in order {
        let node = g.node(id);
        let children: Vec<Id> = node.inputs().iter().map(|v| ids[v]).collect();
        let n = add_node(&mut eg, EOp::Ir(node.op().clone()), children)?;
        if node.types().len() == 1 {
            ids.insert(Value::new(id, 0), n);
        } else {
            for i in 0..node.types().len() {
                let p = add_node(&mut eg, EOp::Proj(i as u32), vec![n])?;
                ids.insert(Value::new(id, i as u32), p);
            }
        }
    }
    eg.rebuild();
    let params = g
        .params()
        .iter()
        .map(|&p| eg.find(ids[&Value::new(p, 0)]))
        .collect();
    let outputs = g
        .outputs()
        .iter()
        .map(|(n, v)| (n.clone(), eg.find(ids[v])))
        .collect();
    Ok(Loaded {
        egraph: eg,
        params,
        outputs,
        values: ids,
    })
}

fn node_cost(eg: &EGraph, target: &Target, class: Id, n: &ENode) -> f64 {
    let args: Vec<&Info> = n.children.iter().map(|&c| &eg[c].data).collect();
    let op = eg.analysis.op(n.op);
    // An 8-bit product's scales and shifts run in its epilogue (`fuse` puts them there):
    // only their arithmetic counts, not a pass over memory — else the scale the rewrite to
    // the product adds outweighs the product's savings on a small one (a first conv's 27
    // terms). Its f32 form's `conv` then `mul` cost as a pass each either way.
    let quantized = |c: &Id| {
        eg[*c].nodes.iter().any(|m| {
            matches!(
                eg.analysis.op(m.op),
                EOp::Ir(ir::Op::Qdot { .. } | ir::Op::Qconv { .. })
            )
        })
    };
    if matches!(op, EOp::Ir(ir::Op::Mul | ir::Op::Add | ir::Op::Sub))
        && n.children.iter().any(quantized)
    {
        return target.in_kernel().node_cost(op, &eg[class].data, &args);
    }
    target.node_cost(op, &eg[class].data, &args)
}

/// Per class, the node of least tree cost.
fn tree_choice(eg: &EGraph, target: &Target) -> HashMap<Id, (f64, usize)> {
    let mut classes: Vec<Id> = eg.classes().map(|c| c.id).collect();
    classes.sort();
    let mut best: HashMap<Id, (f64, usize)> = HashMap::new();
    loop {
        let mut changed = false;
        for &c in &classes {
            for (i, n) in eg[c].nodes.iter().enumerate() {
                let Some(sub) = n
                    .children
                    .iter()
                    .map(|ch| best.get(&eg.find(*ch)).map(|b| b.0))
                    .sum::<Option<f64>>()
                else {
                    continue;
                };
                let cost = node_cost(eg, target, c, n) + sub;
                if best.get(&c).is_none_or(|b| cost < b.0) {
                    best.insert(c, (cost, i));
                    changed = true;
                }
            }
        }
        if !changed {
            return best;
        }
    }
}

/// The classes reachable from `roots` under `choice`, and their summed node costs.
fn dag_cost(
    eg: &EGraph,
    target: &Target,
    choice: &HashMap<Id, usize>,
    roots: &[Id],
) -> Option<(f64, HashSet<Id>)> {
    let mut seen = HashSet::new();
    let mut stack: Vec<Id> = roots.to_vec();
    let mut total = 0.0;
    while let Some(c) = stack.pop() {
        let c = eg.find(c);
        if !seen.insert(c) {
            continue;
        }
        let n = &eg[c].nodes[*choice.get(&c)?];
        total += node_cost(eg, target, c, n);
        stack.extend(n.children.iter().copied());
        if seen.len() > eg.number_of_classes() {
            return None;
        }
    }
    Some((total, seen))
}

/// Whether the choice reaches a class from itself.
fn cyclic(eg: &EGraph, choice: &HashMap<Id, usize>, roots: &[Id]) -> bool {
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut state: HashMap<Id, u8> = HashMap::new();
    let mut stack: Vec<(Id, bool)> = roots.iter().map(|&r| (eg.find(r), false)).collect();
    while let Some((c, leaving)) = stack.pop() {
        if leaving {
            state.insert(c, 2);
            continue;
        }
        match state.get(&c) {
            Some(1) => return true,
            Some(2) => continue,
            _ => {}
        }
        state.insert(c, 1);
        stack.push((c, true));
        let Some(&i) = choice.get(&c) else { continue };
        for &ch in &eg[c].nodes[i].children {
            let ch = eg.find(ch);
            match state.get(&ch) {
                Some(1) => return true,
                Some(2) => {}
                _ => stack.push((ch, false)),
            }
        }
    }
    false
}

/// Improves a tree-cost choice against the DAG cost, a few sweeps at most.
fn improve(eg: &EGraph, target: &Target, choice: &mut HashMap<Id, usize>, roots: &[Id]) {
    let Some((mut total, _)) = dag_cost(eg, target, choice, roots) else {
        return;
    };
    for _ in 0..3 {
        let mut improved = false;
        let Some((_, live)) = dag_cost(eg, target, choice, roots) else {
            return;
        };
        let mut live: Vec<Id> = live.into_iter().collect();
        live.sort();
        for c in live {
            let current = choice[&c];
            for i in 0..eg[c].nodes.len() {
                if i == current
                    || eg[c].nodes[i]
                        .children
                        .iter()
                        .any(|ch| !choice.contains_key(&eg.find(*ch)))
                {
                    continue;
                }
                choice.insert(c, i);
                match dag_cost(eg, target, choice, roots) {
                    Some((t, _)) if t + 1e-9 < total && !cyclic(eg, choice, roots) => {
                        total = t;
                        improved = true;
                        break;
                    }
                    _ => {
                        choice.insert(c, current);
                    }
                }
            }
        }
        if !improved {
            return;
        }
    }
}

/// The cheapest graph equal to the loaded one; `original` gives the name and parameter order.
pub fn extract(l: &Loaded, original: &Graph, target: &Target) -> R<Graph> {
    let eg = &l.egraph;
    let best = tree_choice(eg, target);
    let mut choice: HashMap<Id, usize> = best.iter().map(|(&c, &(_, i))| (c, i)).collect();
    let roots: Vec<Id> = l
        .params
        .iter()
        .chain(l.outputs.iter().map(|(_, id)| id))
        .map(|&id| eg.find(id))
        .collect();
    if roots.iter().any(|r| !choice.contains_key(r)) {
        return Err("extraction found no finite-cost term for an output".into());
    }
    // Limit the DAG-aware search on big e-graphs; the tree choice is already valid.
    if eg.number_of_classes() <= 4000 {
        improve(eg, target, &mut choice, &roots);
    }
    // Each class keeps the origin (the frontend node) of the loaded value it holds, so that
    // errors from rewritten nodes still name where they came from.
    let mut origins: HashMap<Id, ir::Origin> = HashMap::new();
    for (v, &id) in &l.values {
        let o = original.node(v.node).origin();
        if o.name.is_some() || o.loc.is_some() {
            origins.entry(eg.find(id)).or_insert_with(|| o.clone());
        }
    }
    let mut b = Builder::new(original.name());
    let mut built: HashMap<Id, Vec<Value>> = HashMap::new();
    let mut ctx = Build {
        eg,
        choice: &choice,
        origins: &origins,
    };
    for &p in &l.params {
        build(&mut ctx, eg.find(p), &mut b, &mut built)?;
    }
    let mut outputs = Vec::new();
    for (name, id) in &l.outputs {
        let vs = build(&mut ctx, eg.find(*id), &mut b, &mut built)?;
        outputs.push((name.clone(), vs[0]));
    }
    let mut g = b.into_graph();
    g.set_outputs(outputs).map_err(|e| e.to_string())?;
    Ok(g)
}

/// What building reads: the e-graph, the chosen node per class, each class's origin.
struct Build<'a> {
    eg: &'a EGraph,
    choice: &'a HashMap<Id, usize>,
    origins: &'a HashMap<Id, ir::Origin>,
}

/// Builds class `root` (and what it needs), children first, without recursion.
fn build(
    ctx: &mut Build,
    root: Id,
    b: &mut Builder,
    built: &mut HashMap<Id, Vec<Value>>,
) -> R<Vec<Value>> {
    let (eg, choice) = (ctx.eg, ctx.choice);
    let mut stack = vec![(root, false)];
    let mut open: HashSet<Id> = HashSet::new();
    while let Some((c, ready)) = stack.pop() {
        if built.contains_key(&c) {
            continue;
        }
        let n = &eg[c].nodes[choice[&c]];
        if !ready {
            if !open.insert(c) {
                return Err("extraction chose a cycle".into());
            }
            stack.push((c, true));
            for &ch in n.children.iter().rev() {
                let ch = eg.find(ch);
                if !built.contains_key(&ch) {
                    stack.push((ch, false));
                }
            }
            continue;
        }
        let args: Vec<Value> = n
            .children
            .iter()
            .map(|ch| {
                built
                    .get(&eg.find(*ch))
                    .map(|v| v[0])
                    .ok_or_else(|| "extraction chose a cycle".to_string())
            })
            .collect::<R<_>>()?;
        let vals = match eg.analysis.op(n.op) {
            EOp::Ir(op) => {
                b.set_origin(ctx.origins.get(&c).cloned().unwrap_or_default());
                b.op(op.clone(), &args).map_err(|e| e.to_string())?
            }
            EOp::Proj(i) => {
                let src = built[&eg.find(n.children[0])].clone();
                vec![src[*i as usize]]
            }
        };
        built.insert(c, vals);
    }
    Ok(built[&root].clone())
}
