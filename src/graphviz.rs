//! Graphviz pictures of graphs: one box per op (mnemonic and result type), kernels (`fused`)
//! as clusters holding their bodies, edges from producers to users. `kiln graph` writes the
//! text, or an SVG through the `dot` program.

use std::collections::HashMap;
use std::fmt::Write;

use ir::{Graph, NodeId, Op, Value};

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The graph in Graphviz `dot` syntax.
pub fn to_dot(g: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", escape(g.name()));
    out.push_str("  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n");
    out.push_str("  edge [fontname=\"monospace\", fontsize=9];\n");
    let mut next = 0usize;
    // Edges go at the top level: an edge written inside a cluster pulls both ends into it.
    let mut edges = Vec::new();
    let ids = body(&mut out, &mut edges, g, "  ", &mut next, &[]);
    for e in &edges {
        let _ = writeln!(out, "  {e}");
    }
    for (i, (name, v)) in g.outputs().iter().enumerate() {
        let _ = writeln!(
            out,
            "  out{i} [label=\"{}\", shape=oval, style=filled, fillcolor=\"#e8f0ff\"];",
            escape(name)
        );
        let _ = writeln!(out, "  {} -> out{i};", ids[v]);
    }
    out.push_str("}\n");
    out
}

/// Writes the nodes of `g` (recursing into kernels) and returns each value's node name.
/// `inputs` names the outer nodes that feed the body's parameters, in order.
fn body(
    out: &mut String,
    edges: &mut Vec<String>,
    g: &Graph,
    indent: &str,
    next: &mut usize,
    inputs: &[String],
) -> HashMap<Value, String> {
    let mut ids: HashMap<Value, String> = HashMap::new();
    let order: Vec<NodeId> = g.topo_order().unwrap_or_else(|_| g.node_ids());
    let param_index: HashMap<NodeId, usize> = g
        .params()
        .iter()
        .enumerate()
        .map(|(i, &p)| (p, i))
        .collect();
    for id in order {
        let n = g.node(id);
        let ty = n
            .types()
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(src) = param_index.get(&id).and_then(|&i| inputs.get(i)) {
            // A body parameter is the outer value that feeds it.
            ids.insert(Value::new(id, 0), src.clone());
            continue;
        }
        let name = format!("n{next}");
        *next += 1;
        match n.op() {
            Op::Fused { kind, body: region } => {
                let args: Vec<String> = n.inputs().iter().map(|v| ids[v].clone()).collect();
                let _ = writeln!(out, "{indent}subgraph cluster_{name} {{");
                let label = if kind.is_empty() {
                    "fused"
                } else {
                    kind.as_str()
                };
                let _ = writeln!(
                    out,
                    "{indent}  label=\"{}\"; style=filled; fillcolor=\"#fff4e0\";",
                    escape(&format!("{label} : {ty}"))
                );
                let inner = format!("{indent}  ");
                let inner_ids = body(out, edges, region.graph(), &inner, next, &args);
                let _ = writeln!(out, "{indent}}}");
                for (i, (_, v)) in region.graph().outputs().iter().enumerate() {
                    ids.insert(Value::new(id, i as u32), inner_ids[v].clone());
                }
            }
            op => {
                let (shape, color) = match op {
                    Op::Param { name: p, .. } => {
                        (format!("param \\\"{}\\\"", escape(p)), "#e8f0ff")
                    }
                    Op::Constant { value } => (
                        value
                            .name
                            .as_deref()
                            .map_or("constant".to_string(), |n| format!("@{}", escape(n))),
                        "#eeeeee",
                    ),
                    op if matches!(op.kind(), ir::OpKind::Contraction) => {
                        (op.mnemonic().to_string(), "#ffe0e0")
                    }
                    op => (op.mnemonic().to_string(), "#ffffff"),
                };
                let _ = writeln!(
                    out,
                    "{indent}{name} [label=\"{shape}\\n{}\", style=filled, fillcolor=\"{color}\"];",
                    escape(&ty)
                );
                for v in n.inputs() {
                    edges.push(format!("{} -> {name};", ids[v]));
                }
                for i in 0..n.types().len() {
                    ids.insert(Value::new(id, i as u32), name.clone());
                }
            }
        }
    }
    ids
}
