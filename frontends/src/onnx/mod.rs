//! The ONNX frontend: decodes a model (prost messages written in Rust, no protoc) and imports
//! its graph into kiln's IR through an op registry keyed by domain, op type and opset version.
//! Composite operators decompose into IR primitives; shape computations fold at import time.
//!
//! The library takes bytes: external data files and, optionally, an evaluator for folding
//! constant subgraphs come in through [`ImportOptions`].

mod import;
mod interface;
mod ops;
pub mod proto;
mod registry;
mod tensor;
mod value;

use std::collections::HashMap;
use std::fmt;

use ir::{Graph, Tensor};
use prost::Message;

pub use import::{import_model, import_model_reporting, opsets, Imported};
pub use interface::{
    check_given, declared_inputs, decode_value, element_name, given, input_kinds,
    is_structured_tensor, output_kinds, structured_inputs, Given, Kind,
};
pub use registry::{is_supported, supported_ops};
pub use tensor::{decode as decode_tensor, dtype_of, ExternalData};

/// Evaluates a graph without parameters; used to fold constant subcomputations at import.
pub type Evaluator<'a> = &'a (dyn Fn(&Graph) -> Result<Vec<Tensor>, String> + Sync);

/// How to import.
#[derive(Default)]
pub struct ImportOptions<'a> {
    /// The bytes of external data files, by the `location` the model records.
    pub external_data: ExternalData,
    /// Values of graph inputs that may stand in where an op needs a value known at import
    /// time (a shape, a size, axes). Other uses of these inputs stay runtime inputs.
    pub specialize: HashMap<String, Tensor>,
    /// Values for the symbols of the declared input shapes (`--dim batch=8`).
    pub dims: HashMap<String, i64>,
    /// Shapes of inputs in place of the declared ones (which they must agree with): the
    /// shapes a run is given, or `--input-shape`. A symbol they fix is fixed in every input.
    pub shapes: HashMap<String, ir::Shape>,
    /// What a run gives for each sequence and optional input (see [`Given`]); an input absent
    /// here cannot be imported (its tensors are unknown).
    pub given: HashMap<String, Given>,
    /// Folds nodes whose inputs are all constants by running them; `None` keeps them.
    pub evaluate: Option<Evaluator<'a>>,
}

/// Why a model could not be imported, naming the node and op where there is one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ImportError {
    pub node: Option<String>,
    pub op: Option<String>,
    /// What failed (shown in the message, so not also a `source`).
    pub error: OpError,
}

impl ImportError {
    /// A failure of the model as a whole (no node).
    pub fn model(error: impl Into<OpError>) -> ImportError {
        ImportError {
            node: None,
            op: None,
            error: error.into(),
        }
    }
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.op, &self.node) {
            (Some(op), Some(node)) => write!(f, "{op} node \"{node}\": {}", self.error),
            (Some(op), None) => write!(f, "{op}: {}", self.error),
            _ => write!(f, "{}", self.error),
        }
    }
}

/// Why importing a node (or reading the model around it) failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The IR refused what the importer built (operands an op's type rule rejects, ...).
    #[error(transparent)]
    Ir(#[from] ir::Error),
    /// A dimension expression that overflows or cannot be formed.
    #[error(transparent)]
    Dim(#[from] ir::DimError),
    /// A tensor whose data does not fill its shape.
    #[error(transparent)]
    Tensor(#[from] ir::ShapeMismatch),
    /// A message of the model (a tensor, a subgraph) that does not decode.
    #[error(transparent)]
    Proto(#[from] prost::DecodeError),
    /// The model is not what ONNX allows, or asks for what kiln does not support yet (an
    /// attribute value, a mode, a dtype): the message says which.
    #[error("{0}")]
    Model(String),
}

impl From<String> for OpError {
    fn from(m: String) -> OpError {
        OpError::Model(m)
    }
}

impl From<&str> for OpError {
    fn from(m: &str) -> OpError {
        OpError::Model(m.to_string())
    }
}

/// Decodes the protobuf of a model.
pub fn decode_model(bytes: &[u8]) -> Result<proto::ModelProto, ImportError> {
    proto::ModelProto::decode(bytes)
        .map_err(|e| ImportError::model(format!("not a valid ONNX model: {e}")))
}

/// Decodes and imports a model.
pub fn import(bytes: &[u8], opts: &ImportOptions) -> Result<Graph, ImportError> {
    import_model(&decode_model(bytes)?, opts)
}

/// The external data files a model refers to, so the caller can read them.
pub fn external_data_locations(model: &proto::ModelProto) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(g) = &model.graph {
        for t in &g.initializer {
            if t.data_location == 1 {
                for e in &t.external_data {
                    if e.key == "location" && !out.contains(&e.value) {
                        out.push(e.value.clone());
                    }
                }
            }
        }
    }
    out
}
