//! The kernel ABI every backend compiles to and the runtime calls: one function per kernel,
//! `extern "C" fn(bufs: *const *mut u8, dims: *const i64) -> u32`, where `bufs[i]` points at
//! the data of `kernel.bufs[i]` and `dims[k]` is the value of `kernel.dims[k]`; it returns 0,
//! or the code of the first `Check` that fails. Object files name kernel `i`
//! `kiln_kernel_{i}`.

/// A compiled kernel: `bufs` holds one pointer per buffer of the kernel, `dims` one value per
/// entry of its dim table. Returns 0 or the code of the failing check.
pub type KernelFn = unsafe extern "C" fn(*const *mut u8, *const i64) -> u32;

/// Native code for a list of kernels, by index: JIT-compiled, or loaded from an object file
/// ([`crate::loader::Image`]).
pub trait Code: Send + Sync {
    /// The entry point of kernel `i` (in the order the kernels were compiled).
    ///
    /// Calling it is `unsafe`: every pointer must be valid for the accesses the kernel makes
    /// (for every index it computes, unless a `Check` stops it first), the dims must be the
    /// values the kernel was lowered for, and `self` must outlive the call.
    ///
    /// # Panics
    /// If `i` is not the index of a kernel.
    fn function(&self, i: usize) -> KernelFn;
    /// How many kernels there are.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
