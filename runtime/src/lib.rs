//! kiln's runtime.
//!
//! Today this is the reference interpreter ([`interp`]), the oracle every pass and backend is
//! checked against, and deterministic random tensors ([`Rng`]). It will also hold the
//! executable format, the memory planner, the thread pool and the loader of AOT artifacts;
//! it depends on `ir` and `codegen` only.

pub mod interp;
mod plan;
mod random;

pub use random::Rng;
pub mod exec;

pub use exec::{CompileOptions, ExecError, Executable, RunStats};
