//! kiln's code generator: lowers fused graph nodes to the loop-level kernel IR (the `kernel`
//! crate's contract) and compiles kernels with Cranelift, into a JIT module or an object file.
//! [`Cranelift`] is its face to the runtime (a `kernel::Backend`). Codegen never optimizes
//! the graph, and only verified IR reaches it. Depends on `ir` and `kernel`.

pub mod aot;
pub mod jit;
pub mod lower;

use std::sync::Arc;

use ir::Graph;
use kernel::{Backend, Code, Kernel, Lowered, Object, Target, Unsupported};

pub use lower::lower;

/// The Cranelift backend: [`lower()`], then [`aot::compile_object_for`] (loaded by
/// [`jit::compile`] for this machine).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cranelift;

/// The default backend, as the runtime takes it.
pub fn backend() -> Arc<dyn Backend> {
    Arc::new(Cranelift)
}

/// The backend's own error as the kernel contract carries it.
fn backend_error(e: jit::JitError) -> kernel::Error {
    kernel::Error::Backend(Box::new(e))
}

impl Backend for Cranelift {
    fn lower(&self, g: &Graph, name: &str) -> Result<Lowered, Unsupported> {
        lower(g, name)
    }

    fn compile(&self, kernels: &[Kernel]) -> Result<Box<dyn Code>, kernel::Error> {
        Ok(Box::new(jit::compile(kernels).map_err(backend_error)?))
    }

    fn target(&self, target: &str) -> Result<Target, kernel::Error> {
        let isa = aot::isa(target).map_err(backend_error)?;
        let (triple, features) = aot::describe(&*isa);
        Ok(Target { triple, features })
    }

    fn object(&self, kernels: &[Kernel], target: &str) -> Result<Object, kernel::Error> {
        let isa = aot::isa(target).map_err(backend_error)?;
        let (triple, features) = aot::describe(&*isa);
        let bytes = aot::compile_object_for(isa, kernels).map_err(backend_error)?;
        Ok(Object {
            bytes,
            target: Target { triple, features },
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_machine_has_what_its_code_generator_assumes() {
        // Every feature name the code generator reports is one the loader's check knows.
        let (_, features) = crate::aot::target().unwrap();
        assert_eq!(
            kernel::target::missing_features(&features),
            Vec::<String>::new(),
            "{features:?}"
        );
        // And the triple is the one the loader compares with.
        let (triple, _) = crate::aot::target().unwrap();
        assert_eq!(triple, kernel::target::host_triple());
    }
}
