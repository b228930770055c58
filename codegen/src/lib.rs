//! kiln's code generator: the loop-level kernel IR lowered from fused graph nodes and the
//! backends that compile it (Cranelift by default, LLVM behind a feature). Codegen never
//! optimizes the graph, and only verified IR reaches it. Depends on `ir` only.

pub mod aot;
pub mod conv;
pub mod gemm;
pub mod jit;
pub mod kernel;

pub use kernel::{Buf, BufId, BufKind, Expr, Kernel, Mark, Stmt, VarId};
pub use lower::{lower, prepack, single_node_graph, Lowered, PackCache, Unsupported};
pub mod lower;
pub mod rows;
pub mod stages;
pub mod threads;

/// Whether this CPU runs the library's AVX2 and FMA code (gemm, plane convs, row routines);
/// they fall back to portable code otherwise. (The standard library caches the detection.)
pub(crate) fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
