//! The verifier: checks a whole graph and returns every problem at once, each naming the node
//! and where it came from. A successful check hands out [`Verified`], the proof that later
//! stages (interpreter, codegen) require, so unverified IR cannot reach them.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::dim::{is_valid_symbol, Dim};
use crate::graph::{Graph, NodeId, Origin, Value};
use crate::ops::Op;
use crate::tensor::Tensor;

/// One problem in a graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError {
    /// The node as printed, e.g. `%3 (add)`, when the problem belongs to a node.
    pub node: Option<String>,
    pub origin: Origin,
    pub message: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = self.origin.loc {
            write!(f, "{loc}: ")?;
        }
        if let Some(node) = &self.node {
            write!(f, "{node}")?;
            if let Some(name) = &self.origin.name {
                write!(f, " from node \"{name}\"")?;
            }
            write!(f, ": ")?;
        }
        f.write_str(&self.message)
    }
}

/// All problems found in one graph.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct VerifyErrors {
    pub graph: String,
    pub errors: Vec<VerifyError>,
}

impl fmt::Display for VerifyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "@{} has {} error{}",
            self.graph,
            self.errors.len(),
            if self.errors.len() == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Proof that a graph passed the verifier. Only [`verify`] makes one.
#[derive(Clone)]
pub struct Verified<'g> {
    graph: &'g Graph,
    order: Vec<NodeId>,
}

impl<'g> Verified<'g> {
    pub fn graph(&self) -> &'g Graph {
        self.graph
    }

    /// The nodes in topological order.
    pub fn order(&self) -> &[NodeId] {
        &self.order
    }
}

fn node_name(g: &Graph, numbering: &HashMap<Value, usize>, id: NodeId) -> String {
    let n = numbering
        .get(&Value::new(id, 0))
        .map_or("%?".to_string(), |n| format!("%{n}"));
    format!("{n} ({})", g.node(id).op().mnemonic())
}

/// Checks `g`; on success returns the proof of verification.
pub fn verify(g: &Graph) -> Result<Verified<'_>, VerifyErrors> {
    let order = check(g)?;
    Ok(Verified { graph: g, order })
}

/// Checks `g`, returning its topological order.
fn check(g: &Graph) -> Result<Vec<NodeId>, VerifyErrors> {
    let fail = |errors| VerifyErrors {
        graph: g.name().to_string(),
        errors,
    };
    let order = match g.topo_order() {
        Ok(o) => o,
        Err(cycle) => {
            let errors = cycle
                .0
                .iter()
                .map(|&id| VerifyError {
                    node: Some(format!("node ({})", g.node(id).op().mnemonic())),
                    origin: g.node(id).origin().clone(),
                    message: "lies on a cycle".to_string(),
                })
                .collect();
            return Err(fail(errors));
        }
    };
    let numbering = g.numbering().unwrap_or_default();
    let mut errors = Vec::new();
    let mut param_names: HashMap<&str, NodeId> = HashMap::new();
    let mut const_names: HashMap<&str, &Tensor> = HashMap::new();
    for &id in &order {
        let node = g.node(id);
        let mut report = |message: String| {
            errors.push(VerifyError {
                node: Some(node_name(g, &numbering, id)),
                origin: node.origin().clone(),
                message,
            })
        };
        match node.op() {
            Op::Param { name, .. } if param_names.insert(name, id).is_some() => {
                report(format!("parameter name \"{name}\" is used twice"));
            }
            Op::Constant { value } => {
                if let Some(name) = &value.name {
                    match const_names.insert(name, &value.tensor) {
                        Some(prev) if *prev != value.tensor => {
                            report(format!("constant @{name} has two different values"))
                        }
                        _ => {}
                    }
                }
            }
            Op::Fused { body, .. } | Op::Loop { body, .. } => {
                // The region is checked like any graph; its errors carry this node's name.
                if let Err(e) = check(body.graph()) {
                    for err in e.errors {
                        let inner = err.node.map_or(String::new(), |n| format!("{n}: "));
                        report(format!("in its body: {inner}{}", err.message));
                    }
                }
            }
            _ => {}
        }
        let mut dims: Vec<&Dim> = node.types().iter().flat_map(|t| t.shape.dims()).collect();
        match node.op() {
            Op::Slice { start, limit, .. } => dims.extend(start.iter().chain(limit)),
            Op::Dims { values } => dims.extend(values),
            Op::Loop { count, .. } => dims.push(count),
            _ => {}
        }
        if let Some(bad) = dims
            .iter()
            .flat_map(|d| d.symbols())
            .find(|s| !is_valid_symbol(s))
        {
            report(format!("`{bad}` cannot name a dimension"));
        }
        let inputs: Vec<_> = node
            .inputs()
            .iter()
            .map(|&v| g.value_type(v).clone())
            .collect();
        match node.op().infer(&inputs) {
            Err(m) => report(m),
            Ok(inferred) => {
                if inferred.len() != node.types().len() {
                    report(format!(
                        "declares {} result{} but `{}` produces {}",
                        node.types().len(),
                        if node.types().len() == 1 { "" } else { "s" },
                        node.op().mnemonic(),
                        inferred.len()
                    ));
                } else {
                    for (i, (want, got)) in inferred.iter().zip(node.types()).enumerate() {
                        if want != got {
                            let which = if inferred.len() > 1 {
                                format!("result {i} ")
                            } else {
                                String::new()
                            };
                            report(format!(
                                "{which}is declared {got} but the op produces {want}"
                            ));
                        }
                    }
                }
            }
        }
    }
    let mut out_names = HashSet::new();
    for (name, _) in g.outputs() {
        if !out_names.insert(name) {
            errors.push(VerifyError {
                node: None,
                origin: Origin::default(),
                message: format!("`return` uses the output name \"{name}\" twice"),
            });
        }
    }
    if errors.is_empty() {
        Ok(order)
    } else {
        Err(fail(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_graph;

    fn errors(text: &str) -> Vec<String> {
        let g = parse_graph(text).unwrap();
        match verify(&g) {
            Ok(_) => vec![],
            Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn reports_every_error_with_location() {
        let text = "func @f {
  %0 = param {name=\"x\"} : f32[2, 3]
  %1 = param {name=\"x\"} : f32[3, 2]
  %2 = add %0, %1 : f32[2, 3]
  %3 = exp %0 : f32[3, 2]
  return %3
}";
        assert_eq!(
            errors(text),
            vec![
                "3:8: %1 (param): parameter name \"x\" is used twice",
                "4:8: %2 (add): operand 1 has type f32[3, 2] but operand 0 has type f32[2, 3]",
                "5:8: %3 (exp): is declared f32[3, 2] but the op produces f32[2, 3]",
            ]
        );
    }

    #[test]
    fn symbols_must_be_printable() {
        let mut b = crate::Builder::new("f");
        let x = b.param(
            "x",
            crate::DType::F32,
            crate::Shape::new(vec![Dim::sym("two words")]),
        );
        b.output("x", x.unwrap()).unwrap();
        let e = b.finish().unwrap_err().to_string();
        assert!(e.contains("`two words` cannot name a dimension"), "{e}");
    }

    #[test]
    fn accepts_a_good_graph() {
        let text = "func @f {
  %0 = param {name=\"x\"} : f32[n, 3]
  %1, %2 = topk %0 {k=2, axis=1} : f32[n, 2], i64[n, 2]
  return %1, %2 as \"idx\"
}";
        assert!(errors(text).is_empty());
    }
}
