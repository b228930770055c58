//! The `.kir` printer. Values are renumbered `%0, %1, ...` in topological order (ties broken by
//! creation order) so that output is deterministic and unrelated edits do not renumber.
//!
//! ```text
//! const @w : f32[4, 2] = [...]
//!
//! func @mlp {
//!   %0 = param {name="x"} : f32[batch, 4]
//!   %1 = constant {value=@w} : f32[4, 2]
//!   %2 = dot %0, %1 {lhs_contract=[1], rhs_contract=[0]} : f32[batch, 2]
//!   return %2 as "y"
//! }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use crate::attr::{tensor_to_lit, write_at_name, write_quoted};
use crate::graph::{Graph, Value};
use crate::ops::Op;
use crate::tensor::Tensor;

/// The name an output gets when none is written.
pub fn default_output_name(i: usize) -> String {
    format!("out{i}")
}

/// Named constants a graph refers to, by name.
fn named_constants(g: &Graph) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for id in g.node_ids() {
        match g.node(id).op() {
            Op::Constant { value } => {
                if let Some(name) = &value.name {
                    out.insert(name.to_string(), value.tensor.clone());
                }
            }
            op => {
                if let Some(body) = op.region() {
                    out.extend(named_constants(body.graph()))
                }
            }
        }
    }
    out
}

/// How much to print.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrintOptions {
    /// Print constants with more elements than this as `...` (for reading, not parsing: the
    /// parser rejects elided data with a message saying so).
    pub max_elements: Option<usize>,
}

impl PrintOptions {
    fn elides(&self, t: &Tensor) -> bool {
        self.max_elements.is_some_and(|m| t.numel() > m)
    }
}

fn print_const_def(out: &mut String, name: &str, t: &Tensor, opts: &PrintOptions) {
    out.push_str("const ");
    write_at_name(out, name);
    let _ = write!(out, " : {} = ", t.ty());
    if opts.elides(t) {
        out.push_str("...");
    } else {
        tensor_to_lit(t).write(out);
    }
    out.push('\n');
}

/// Prints one function, preceded by the definitions of the named constants it uses.
pub fn print_graph(g: &Graph) -> String {
    print_module(std::slice::from_ref(g))
}

/// Prints several functions; shared named constants are defined once, before the first function.
pub fn print_module(graphs: &[Graph]) -> String {
    print_module_with(graphs, &PrintOptions::default())
}

/// Prints several functions under `opts`.
pub fn print_module_with(graphs: &[Graph], opts: &PrintOptions) -> String {
    let mut consts = BTreeMap::new();
    for g in graphs {
        consts.extend(named_constants(g));
    }
    let mut out = String::new();
    for (name, t) in &consts {
        print_const_def(&mut out, name, t, opts);
    }
    for (i, g) in graphs.iter().enumerate() {
        if i > 0 || !consts.is_empty() {
            out.push('\n');
        }
        print_func(&mut out, g, opts);
    }
    out
}

fn print_func(out: &mut String, g: &Graph, opts: &PrintOptions) {
    out.push_str("func ");
    write_at_name(out, g.name());
    out.push_str(" {\n");
    print_body(out, g, 1, opts);
    out.push_str("}\n");
}

/// The statements and `return` of a function or region, at an indentation depth. Values are
/// numbered per body: a region's values start again at `%0`.
fn print_body(out: &mut String, g: &Graph, depth: usize, opts: &PrintOptions) {
    let indent = "  ".repeat(depth);
    let order = g.topo_order().unwrap_or_else(|_| g.node_ids());
    let numbering: HashMap<Value, usize> = match g.numbering() {
        Some(n) => n,
        None => {
            let mut n = HashMap::new();
            for &id in &order {
                for i in 0..g.node(id).types().len() {
                    let k = n.len();
                    n.insert(Value::new(id, i as u32), k);
                }
            }
            n
        }
    };
    let name = |v: &Value| match numbering.get(v) {
        Some(n) => format!("%{n}"),
        None => "%?".to_string(),
    };
    for id in order {
        let node = g.node(id);
        out.push_str(&indent);
        let results: Vec<String> = (0..node.types().len())
            .map(|i| name(&Value::new(id, i as u32)))
            .collect();
        out.push_str(&results.join(", "));
        out.push_str(" = ");
        out.push_str(node.op().mnemonic());
        for (i, v) in node.inputs().iter().enumerate() {
            out.push_str(if i == 0 { " " } else { ", " });
            out.push_str(&name(v));
        }
        let attrs = match node.op() {
            Op::Constant { value } if value.name.is_none() && opts.elides(&value.tensor) => {
                "{value=...}".to_string()
            }
            op => attrs_text(op),
        };
        if !attrs.is_empty() {
            out.push(' ');
            out.push_str(&attrs);
        }
        out.push_str(" : ");
        let types: Vec<String> = node.types().iter().map(|t| t.to_string()).collect();
        out.push_str(&types.join(", "));
        if let Some(body) = node.op().region() {
            out.push_str(" {\n");
            print_body(out, body.graph(), depth + 1, opts);
            out.push_str(&indent);
            out.push('}');
        }
        out.push('\n');
    }
    out.push_str(&indent);
    out.push_str("return");
    for (i, (oname, v)) in g.outputs().iter().enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        out.push_str(&name(v));
        if *oname != default_output_name(i) {
            out.push_str(" as ");
            write_quoted(out, oname);
        }
    }
    out.push('\n');
}

/// Formats a tensor's attribute literal; used by diagnostics and tools.
pub fn tensor_literal(t: &Tensor) -> String {
    let mut s = String::new();
    tensor_to_lit(t).write(&mut s);
    s
}

/// The printed attribute list of an op, `{a=1, b=[2]}`, or an empty string.
pub fn attrs_text(op: &Op) -> String {
    let attrs = op.attrs();
    if attrs.is_empty() {
        return String::new();
    }
    let mut s = String::from("{");
    for (i, (k, lit)) in attrs.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{k}=");
        lit.write(&mut s);
    }
    s.push('}');
    s
}
