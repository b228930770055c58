//! What a code generator is to the runtime: lowering a graph node to a kernel, native code for
//! kernels on this machine, and object files for a named target. The runtime holds one as a
//! `dyn Backend` and never names a code generator; `codegen` implements it with Cranelift, and
//! further backends implement it beside that.

use std::fmt;

use ir::Graph;

use crate::abi::Code;
use crate::loops::Kernel;
use crate::lowered::{Lowered, Unsupported};
use crate::Error;

/// Kernels compiled into an object file, and what their code assumes of the machine.
#[derive(Clone, Debug)]
pub struct Object {
    /// The object file: kernel `i` is the function `kiln_kernel_{i}` (see [`crate::abi`]).
    pub bytes: Vec<u8>,
    /// What the code needs (see [`Backend::target`]).
    pub target: Target,
}

/// A machine code is compiled for: its target triple and the CPU features its code assumes,
/// named as [`crate::target::missing_features`] checks them (`avx2`, `sse4.1`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub triple: String,
    pub features: Vec<String>,
}

/// A code generator. Lowering is deterministic: the same graph gives the same kernel, and the
/// same kernels and target give the same object bytes.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Lowers a graph (a fused node's body, or one node alone: [`crate::single_node_graph`]) to
    /// one kernel named `name`.
    fn lower(&self, g: &Graph, name: &str) -> Result<Lowered, Unsupported>;

    /// Native code for `kernels` on this machine, ready to call.
    fn compile(&self, kernels: &[Kernel]) -> Result<Box<dyn Code>, Error>;

    /// What code for `target` (`host`, or a name the backend knows: an x86-64 level, a CPU)
    /// assumes.
    fn target(&self, target: &str) -> Result<Target, Error>;

    /// An object file of `kernels` for `target`.
    fn object(&self, kernels: &[Kernel], target: &str) -> Result<Object, Error>;
}
