//! The contract between compiling and running kernels, depending on `ir` only: the loop-level
//! kernel IR ([`loops`]) and its analyses ([`stages`]), the ABI compiled kernels have
//! ([`abi`]), the library routines they call ([`routines`]), the threads those routines and
//! parallel kernels share ([`threads`]), and the loader that maps object code into memory
//! ([`loader`]). Code generators (`codegen`) produce what this crate describes; the runtime
//! runs it, without a compiler.

pub mod abi;
pub mod loader;
pub mod loops;
pub mod routines;
pub mod stages;
pub mod threads;

pub use abi::{Code, KernelFn};
pub use loops::*;

/// Whether this CPU runs the library's AVX2 and FMA code (gemm, plane convs, row routines);
/// they fall back to portable code otherwise. (The standard library caches the detection.)
pub fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
