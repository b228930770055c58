//! kiln's runtime: the reference interpreter ([`interp`]), the oracle every pass and backend
//! is checked against; compiled execution ([`exec`]: memory plans, threads); the container
//! of ahead-of-time artifacts ([`artifact`]); deterministic random tensors ([`Rng`]). It
//! depends on `ir` and `kernel` only: code generators reach it as a `kernel::Backend` in the
//! compile options, so a program that only loads artifacts carries no compiler.

pub mod aot;
pub mod artifact;
pub mod interp;
pub mod looping;
mod plan;
mod random;

pub use random::Rng;
pub mod exec;

pub use exec::{CodeSource, CompileOptions, ExecError, Executable, RunStats};
