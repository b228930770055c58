//! `shapes`: shape propagation. Symbols with a value in `Options::bindings` are replaced by that
//! value wherever a type or attribute mentions them (parameters, `iota`, `dims`, `reshape`,
//! `broadcast`, `slice`), and every node's types are inferred again from its operands, so
//! constants flow through symbolic shapes (`batch*8` becomes `56` when `batch=7`).

use ir::{Builder, Dim, Node, Value};

use crate::manager::Options;
use crate::rebuild::{rebuild, Settings, R};

pub(crate) fn run(g: &ir::Graph, opts: &Options) -> R<ir::Graph> {
    let lookup = |s: &str| opts.bindings.get(s).map(|&v| Dim::Const(v));
    let substitute = |d: &Dim| d.substitute(&lookup).map_err(|e| e.to_string());
    rebuild(
        g,
        &Settings::RETYPE,
        &mut |b: &mut Builder, node: &Node, inputs: &[Value]| {
            if opts.bindings.is_empty() {
                return Ok(None);
            }
            let op = node.op().map_dims(&substitute)?;
            b.op(op, inputs).map(Some).map_err(|e| e.to_string())
        },
    )
}
