//! The contract between compiling and running kernels, depending on `ir` only: the loop-level
//! kernel IR ([`loops`]) and its parser ([`parse`]), its analyses ([`stages`], [`recognize`]) and transforms ([`transforms`]), what lowering
//! a node gives ([`lowered`]) and the saved plan of a compiled graph ([`plan`]); what a code
//! generator is to the runtime ([`backend`]); the ABI compiled kernels have ([`abi`]), the
//! library routines they call ([`routines`]), the threads those routines and parallel kernels
//! share ([`threads`]), the loader that maps object code into memory ([`loader`]) and the
//! machine it runs on ([`target`]). Code generators (`codegen`) produce what this crate
//! describes; the runtime runs it without one.

pub mod abi;
pub mod backend;
pub mod loader;
pub mod loops;
pub mod lowered;
pub mod parse;
pub mod plan;
pub mod recognize;
pub mod routines;
pub mod stages;
pub mod target;
pub mod threads;
pub mod transforms;

pub use abi::{Code, KernelFn};
pub use backend::{Backend, Object, Target};
pub use loops::*;
pub use lowered::{derive, derived, prepack, single_node_graph, Lowered, PackCache, Unsupported};
pub use parse::{parse_kernel, parse_kernels};

/// What can go wrong between compiling and running kernels.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Lowering cannot express a node (it runs on the interpreter instead).
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// A kernel that names buffers, dims or variables it does not have, or calls a routine
    /// with the wrong operands (a damaged saved plan, hand-written text).
    #[error("{0}")]
    Malformed(String),
    /// A backend that could not compile kernels or does not know a target (its own error).
    #[error("code generation failed: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// Object code that does not load.
    #[error(transparent)]
    Load(#[from] loader::LoadError),
}

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

/// Whether this CPU also runs the library's AVX-512 code (gemm's wide micro-kernel, plane
/// convs): 16-lane registers, twice the multiply-adds per instruction of AVX2. Each output still
/// sums its terms in the same order with the same fused multiply-adds, so results are identical
/// to the AVX2 code's, bit for bit.
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2_fma() && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs the AVX-512 byte products (BW and VNNI's `vpdpbusd`) besides
/// [`avx512`]: the integer products' fastest code short of AMX.
pub fn avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
