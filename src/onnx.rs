//! ONNX models through the driver: import with the reference interpreter as the folding
//! evaluator, and compare results against reference tensors.

use std::collections::HashMap;

use frontends::onnx::{self, ExternalData, ImportOptions};
use ir::{Graph, Tensor};

use crate::{Error, Result};

/// Imports an ONNX model. `external` holds the bytes of external data files by location;
/// `specialize` may give values for inputs that set shapes.
pub fn import(
    bytes: &[u8],
    external: ExternalData,
    specialize: HashMap<String, Tensor>,
) -> Result<Graph> {
    let opts = ImportOptions {
        external_data: external,
        specialize,
        evaluate: Some(&crate::evaluate),
        ..Default::default()
    };
    onnx::import(bytes, &opts).map_err(Error::Import)
}

/// How a result compares with the reference.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

impl Default for Tolerance {
    fn default() -> Tolerance {
        Tolerance {
            rtol: 1e-3,
            atol: 1e-5,
        }
    }
}

/// `None` when `got` matches `want`: same dtype and shape, floats within tolerance (NaN
/// matching NaN), integers and bools exactly; otherwise why not.
pub fn mismatch(got: &Tensor, want: &Tensor, tol: Tolerance) -> Option<String> {
    if got.dtype() != want.dtype() {
        return Some(format!("dtype {} instead of {}", got.dtype(), want.dtype()));
    }
    if got.shape() != want.shape() {
        return Some(format!(
            "shape {:?} instead of {:?}",
            got.shape(),
            want.shape()
        ));
    }
    if got.dtype().is_float() {
        let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
        let mut worst: Option<(usize, f64)> = None;
        for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
            let ok = (a.is_nan() && b.is_nan())
                || a == b
                || (a - b).abs() <= tol.atol + tol.rtol * b.abs();
            if !ok {
                let d = if a.is_finite() && b.is_finite() {
                    (a - b).abs()
                } else {
                    f64::INFINITY
                };
                if worst.is_none_or(|(_, x)| d > x) {
                    worst = Some((i, d));
                }
            }
        }
        worst.map(|(i, d)| {
            format!(
                "max abs diff {d:.3e} at element {i} (got {}, want {})",
                g[i], w[i]
            )
        })
    } else {
        (0..got.numel())
            .find(|&i| got.data().get_i128(i) != want.data().get_i128(i))
            .map(|i| {
                format!(
                    "element {i} is {} instead of {}",
                    got.data().get_i128(i),
                    want.data().get_i128(i)
                )
            })
    }
}

/// The op types of a model, for per-op accounting (`domain::Op` outside ai.onnx).
pub fn op_types(bytes: &[u8]) -> Vec<String> {
    let Ok(m) = onnx::decode_model(bytes) else {
        return vec![];
    };
    let mut ops: Vec<String> = m
        .graph
        .iter()
        .flat_map(|g| g.node.iter())
        .map(|n| {
            if n.domain.is_empty() || n.domain == "ai.onnx" {
                n.op_type.clone()
            } else {
                format!("{}::{}", n.domain, n.op_type)
            }
        })
        .collect();
    ops.sort();
    ops.dedup();
    ops
}

/// What `kiln inspect` reports about a model.
#[derive(Clone, Debug)]
pub struct Summary {
    pub ir_version: i64,
    pub producer: String,
    pub opsets: Vec<(String, i64)>,
    /// Inputs (initializers excluded) with their declared types, symbolic dims by name.
    pub inputs: Vec<(String, String)>,
    /// Outputs with their types as kiln infers them (declared types if import fails).
    pub outputs: Vec<(String, String)>,
    pub initializers: usize,
    pub parameters: u64,
    pub parameter_bytes: u64,
    /// Op type and node count, most frequent first.
    pub ops: Vec<(String, usize)>,
    pub nodes: usize,
    /// Why kiln cannot import the model, if it cannot.
    pub import_error: Option<String>,
}

fn type_text(t: &onnx::proto::TypeProto) -> String {
    use onnx::proto::{DimValue, TypeValue};
    match &t.value {
        Some(TypeValue::TensorType(tt)) => {
            let dt = onnx::dtype_of(tt.elem_type)
                .map(|d| d.to_string())
                .unwrap_or_else(|| onnx::proto::data_type::name(tt.elem_type).to_lowercase());
            let dims: Vec<String> = match &tt.shape {
                Some(s) => s
                    .dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(DimValue::DimValue(v)) => v.to_string(),
                        Some(DimValue::DimParam(p)) if !p.is_empty() => p.clone(),
                        _ => "?".into(),
                    })
                    .collect(),
                None => return format!("{dt}[unknown rank]"),
            };
            format!("{dt}[{}]", dims.join(", "))
        }
        Some(TypeValue::SequenceType(_)) => "sequence".into(),
        Some(TypeValue::MapType(_)) => "map".into(),
        Some(TypeValue::OptionalType(_)) => "optional".into(),
        Some(TypeValue::SparseTensorType(_)) => "sparse tensor".into(),
        None => "?".into(),
    }
}

/// Summarizes a model: opsets, inputs and outputs, parameters, op histogram.
pub fn inspect(bytes: &[u8], external: ExternalData) -> Result<Summary> {
    let m = onnx::decode_model(bytes).map_err(Error::Import)?;
    let g = m.graph.clone().unwrap_or_default();
    let inits: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut opsets: Vec<(String, i64)> = m
        .opset_import
        .iter()
        .map(|o| {
            (
                if o.domain.is_empty() {
                    "ai.onnx".to_string()
                } else {
                    o.domain.clone()
                },
                o.version,
            )
        })
        .collect();
    opsets.sort();
    opsets.dedup();
    let mut parameters = 0u64;
    let mut parameter_bytes = 0u64;
    for t in &g.initializer {
        let n: u64 = t.dims.iter().map(|&d| d.max(0) as u64).product();
        parameters += n;
        let bits = onnx::dtype_of(t.data_type).map_or(32, |d| u64::from(d.bits()));
        parameter_bytes += (n * bits).div_ceil(8);
    }
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for n in &g.node {
        let op = if n.domain.is_empty() || n.domain == "ai.onnx" {
            n.op_type.clone()
        } else {
            format!("{}::{}", n.domain, n.op_type)
        };
        *counts.entry(op).or_default() += 1;
    }
    let mut ops: Vec<(String, usize)> = counts.into_iter().collect();
    ops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let inputs = g
        .input
        .iter()
        .filter(|i| !inits.contains(&i.name.as_str()))
        .map(|i| {
            (
                i.name.clone(),
                i.r#type.as_ref().map_or("?".into(), type_text),
            )
        })
        .collect();
    let (outputs, import_error) = match import(bytes, external, HashMap::new()) {
        Ok(graph) => (
            graph
                .outputs()
                .iter()
                .map(|(n, v)| (n.clone(), graph.value_type(*v).to_string()))
                .collect(),
            None,
        ),
        Err(e) => (
            g.output
                .iter()
                .map(|o| {
                    (
                        o.name.clone(),
                        o.r#type.as_ref().map_or("?".into(), type_text),
                    )
                })
                .collect(),
            Some(e.to_string()),
        ),
    };
    Ok(Summary {
        ir_version: m.ir_version,
        producer: format!("{} {}", m.producer_name, m.producer_version)
            .trim()
            .to_string(),
        opsets,
        inputs,
        outputs,
        initializers: g.initializer.len(),
        parameters,
        parameter_bytes,
        ops,
        nodes: g.node.len(),
        import_error,
    })
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let producer = if self.producer.is_empty() {
            "unknown producer"
        } else {
            &self.producer
        };
        writeln!(f, "ir version {}, {producer}", self.ir_version)?;
        let opsets: Vec<String> = self
            .opsets
            .iter()
            .map(|(d, v)| format!("{d} {v}"))
            .collect();
        writeln!(f, "opsets: {}", opsets.join(", "))?;
        writeln!(f, "inputs:")?;
        for (n, t) in &self.inputs {
            writeln!(f, "  {n}: {t}")?;
        }
        writeln!(f, "outputs:")?;
        for (n, t) in &self.outputs {
            writeln!(f, "  {n}: {t}")?;
        }
        writeln!(
            f,
            "parameters: {} elements in {} initializers, {} bytes",
            self.parameters, self.initializers, self.parameter_bytes
        )?;
        writeln!(f, "ops ({} nodes):", self.nodes)?;
        for (op, n) in &self.ops {
            writeln!(f, "  {op:<28} {n}")?;
        }
        match &self.import_error {
            Some(e) => writeln!(f, "kiln cannot import it with symbolic shapes: {e}"),
            None => writeln!(f, "kiln imports it"),
        }
    }
}
