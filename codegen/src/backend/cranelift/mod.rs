//! The Cranelift backend: kernels compiled by Cranelift 0.135 into one object file per graph
//! (`aot.rs`), which the JIT loads in place (`jit.rs`: emission, with SIMD code in
//! `jit/simd.rs` and vector polynomials in `jit/vmath.rs`).

pub mod aot;
pub mod jit;

use ir::Graph;
use kernel::{Backend, Code, Kernel, Lowered, Object, Target, Unsupported};

use crate::lower::lower;

/// The Cranelift backend: [`lower()`], then [`aot::compile_object_for`] (loaded by
/// [`jit::compile`] for this machine).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cranelift;

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
        let (_, features) = super::aot::target().unwrap();
        assert_eq!(
            kernel::target::missing_features(&features),
            Vec::<String>::new(),
            "{features:?}"
        );
        // And the triple is the one the loader compares with.
        let (triple, _) = super::aot::target().unwrap();
        assert_eq!(triple, kernel::target::host_triple());
    }
}
