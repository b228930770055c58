//! kiln's code generator: the loop-level kernel IR lowered from fused graph nodes and the
//! backends that compile it (Cranelift by default, LLVM behind a feature). Codegen never
//! optimizes the graph, and only verified IR reaches it. Depends on `ir` only.

pub mod aot;
pub mod conv;
pub mod gemm;
pub mod jit;
pub mod kernel;

pub use kernel::{Buf, BufId, BufKind, Expr, Kernel, Mark, Stmt, VarId};
pub use lower::{lower, prepack, single_node_graph, Lowered, Unsupported};
pub mod lower;
pub mod rows;
pub mod stages;
pub mod threads;
