//! kiln's code generator: lowers fused graph nodes to the loop-level kernel IR (the `kernel`
//! crate's contract) and compiles kernels with Cranelift, into a JIT module or an object file.
//! Codegen never optimizes the graph, and only verified IR reaches it. Depends on `ir` and
//! `kernel`.

pub mod aot;
pub mod jit;
pub mod lower;

pub use lower::{lower, prepack, single_node_graph, Lowered, PackCache, Unsupported};
