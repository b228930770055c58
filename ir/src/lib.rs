//! kiln's typed tensor graph IR.
//!
//! A [`Graph`] is a DAG of nodes; each node applies an [`Op`] to operand [`Value`]s and declares
//! the [`TensorType`] of each of its results. Types are a [`DType`] and a [`Shape`] whose dims
//! are integers or symbolic expressions ([`Dim`]) kept in a canonical form.
//!
//! The op set is closed and small: elementwise math, `select`, `cast`, reductions, movement
//! (reshape, transpose, broadcast, slice, pad, concat, gather, scatter), `iota`, `dot`, `conv`,
//! `reduce_window`, `topk`, constants and parameters. Frontends decompose composite operators
//! into these; passes rediscover structure. Ops are declared once, in the table in `ops.rs`,
//! which drives printing, parsing and type inference.
//!
//! Semantics that every consumer relies on:
//! - elementwise operands have identical types; broadcasting is explicit (`broadcast`);
//! - axes in attributes are non-negative and, where a list, strictly increasing;
//! - integer arithmetic wraps; float results are rounded to the result dtype;
//! - a graph is in SSA form and acyclic; the verifier ([`verify`]) proves it well typed.
//!
//! Text form: [`print_graph`] and [`parse_module`] (see `parse.rs` for the grammar).
//! The crate knows nothing of files, ONNX, egg, Cranelift or LLVM.

mod attr;
mod builder;
mod dim;
mod dtype;
mod error;
mod graph;
mod infer;
pub mod narrow;
mod ops;
mod parse;
mod print;
mod region;
mod shape;
mod tensor;
mod verify;

pub use attr::{
    is_ident, tensor_from_lit, AttrCtx, ConstValue, Lit, PadMode, ReduceKind, ScatterReduction,
};
pub use builder::Builder;
pub use dim::{is_valid_symbol, Dim, DimError};
pub use dtype::{DType, DTypeSet};
pub use error::{Error, Result};
pub use graph::{Cycle, Graph, GraphError, Loc, Node, NodeId, Origin, Value};
pub use ops::{Arity, Op, OpKind};
pub use parse::{parse_dim, parse_graph, parse_module, Func, Module, ParseError, Span};
pub use print::{
    attrs_text, default_output_name, print_graph, print_module, print_module_with, tensor_literal,
    PrintOptions,
};
pub use region::Region;
pub use shape::{Shape, TensorType};
pub use tensor::{Data, Element, ShapeMismatch, Tensor};
pub use verify::{verify, Verified, VerifyError, VerifyErrors};

/// Re-exported so callers can name f16 and bf16 elements.
pub use half::{bf16, f16};

/// How deeply serialized IR may nest (dims in dims, kernel loops and expressions): far beyond
/// what kiln makes, small enough that hostile bytes get an error instead of exhausting the
/// stack.
pub const MAX_NESTING: u32 = 512;

/// For `#[serde(deserialize_with = ...)]` on the recursive parts of serialized IR: counts how
/// deep this thread is and fails past [`MAX_NESTING`].
pub fn deserialize_nested<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    use serde::de::Error;
    thread_local! {
        static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            DEPTH.with(|c| c.set(c.get() - 1));
        }
    }
    let depth = DEPTH.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    let _leave = Leave;
    if depth > MAX_NESTING {
        return Err(D::Error::custom(format!(
            "serialized IR nests deeper than {MAX_NESTING}"
        )));
    }
    T::deserialize(d)
}
