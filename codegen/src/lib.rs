//! kiln's code generator: lowers fused graph nodes to the loop-level kernel IR (the `kernel`
//! crate's contract) and compiles kernels with a backend ([`mod@backend`]: Cranelift today) into
//! an object file the runtime's loader maps, for the JIT and for artifacts alike.
//! [`Cranelift`] is its face to the runtime (a `kernel::Backend`). Codegen never optimizes
//! the graph, and lowering verifies what it is given. Depends on `ir` and `kernel`.

pub mod backend;
pub mod lower;

use std::sync::Arc;

use kernel::Backend;

pub use backend::cranelift::{aot, jit, Cranelift};
pub use lower::lower;

/// The default backend, as the runtime takes it.
pub fn backend() -> Arc<dyn Backend> {
    Arc::new(Cranelift)
}
