//! The backends: one module each, implementing `kernel::Backend` (lower a node, compile
//! kernels, emit an object for a target, describe a target). `cranelift` is the one there is;
//! `llvm` and `ptx` join as siblings, reusing `crate::lower` and the kernel transforms, with
//! nothing to change in the runtime (which takes any `Arc<dyn kernel::Backend>`).

pub mod cranelift;
