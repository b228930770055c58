//! The products' stores of their blocks of sums: corrected by the zero point's column
//! sums, converted and put through the epilogue on their way into C, 16 or 8 lanes at a time.

use super::{MB, NR};
use crate::routines::epilogue::Epilogue;

/// [`super::Operands::store`] in 16-lane registers: each vector of sums corrected,
/// converted and put through the epilogue on its way out — not stored as floats and read
/// back by the epilogue (whose wide loads of narrower stores just made would stall).
///
/// # Safety
/// As [`super::Operands::store`]; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn avx512_store(
    acc: &[i32],
    fix: &[i32; 2 * NR],
    (c, ldc, runs): (*mut f32, usize, [(usize, usize); 2]),
    (i0, r, j0, w): (usize, usize, usize, usize),
    epi: &Epilogue,
) {
    use std::arch::x86_64::*;
    for (h, col) in runs.into_iter().filter(|&(h, _)| h < w) {
        let lanes = (w - h).min(16);
        let m: __mmask16 = if lanes == 16 { !0 } else { (1u16 << lanes) - 1 };
        let f = _mm512_loadu_si512(fix[h..].as_ptr().cast());
        // SAFETY: the block's rows hold 32 sums each.
        let v = |i: usize| unsafe {
            let x = _mm512_loadu_si512(acc[i * 2 * NR + h..].as_ptr().cast());
            _mm512_cvtepi32_ps(_mm512_sub_epi32(x, f))
        };
        let at = i0 * ldc + col;
        // SAFETY: C's rows i0.. hold these columns (the caller's).
        unsafe { columns(epi, (i0, j0 + h, at), (r, ldc), m, v, c, true) };
    }
}

/// [`avx512_store`] in 8-lane registers, vector by vector through the epilogue: one pass
/// over the block (its sums were converted by a scalar loop, then read back by the
/// epilogue's own pass: 11% of llama_tiny_qop's time on AVX2).
///
/// # Safety
/// As [`super::Operands::store`]; the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn avx2_store(
    acc: &[i32],
    fix: &[i32; 2 * NR],
    (c, ldc, runs): (*mut f32, usize, [(usize, usize); 2]),
    (i0, r, j0, w): (usize, usize, usize, usize),
    epi: &Epilogue,
) {
    use crate::routines::epilogue::avx2 as vec;
    use std::arch::x86_64::*;
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let none = epi.is_none();
    for h in (0..w).step_by(8) {
        let full = w - h >= 8;
        let m = _mm256_cmpgt_epi32(_mm256_set1_epi32((w - h).min(8) as i32), lane);
        let f = _mm256_loadu_si256(fix[h..].as_ptr().cast());
        // Column j0 + h's place in its row of C (h a multiple of 8: inside one run).
        let col = runs[h / NR].1 + h % NR;
        // Per-column coefficients are the same for every row: loaded once.
        // SAFETY: the epilogue's operands hold these columns (the caller's).
        let cols = (!none && epi.cols).then(|| unsafe { vec::coefs(epi, i0, j0 + h, m) });
        if let (Some(st), true) = (cols, epi.res.is_null()) {
            // The run's vectors through the epilogue a step at a time, then stored.
            let mut vs = [_mm256_setzero_ps(); MB];
            for (i, v) in vs.iter_mut().enumerate().take(r) {
                // SAFETY: the block's rows hold 32 sums.
                let x = unsafe { _mm256_loadu_si256(acc[i * 2 * NR + h..].as_ptr().cast()) };
                *v = _mm256_cvtepi32_ps(_mm256_sub_epi32(x, f));
            }
            // SAFETY: the CPU has AVX2 and FMA; no residual.
            unsafe { vec::apply_run(epi, st, &mut vs[..r]) };
            for (i, v) in vs.iter().enumerate().take(r) {
                // SAFETY: C's row i0 + i holds these columns.
                unsafe { vec::store(c.add((i0 + i) * ldc + col), m, full, *v) };
            }
            continue;
        }
        for i in 0..r {
            let at = (i0 + i) * ldc + col;
            // SAFETY: the block's rows hold 32 sums; C's row i0 + i holds these columns, and
            // the epilogue's operands them (the caller's).
            unsafe {
                let x = _mm256_loadu_si256(acc[i * 2 * NR + h..].as_ptr().cast());
                let mut v = _mm256_cvtepi32_ps(_mm256_sub_epi32(x, f));
                if !none {
                    let st = cols.unwrap_or_else(|| vec::coefs(epi, i0 + i, j0 + h, m));
                    v = vec::apply(epi, v, st, epi.res.wrapping_add(at), m);
                }
                vec::store(c.add(at), m, full, v);
            }
        }
    }
}

/// `n` vectors `v(p)` of outputs of columns `j..j + 16` (lanes in `m`), rows `i..i + n`,
/// stored `step` apart from element `at` of `c` through the epilogue (its residual laid
/// out as `c` where `res`): where it is per column and quick ([`Epilogue::quick_linear`]),
/// with every decision taken once for the run; otherwise vector by vector.
///
/// # Safety
/// AVX-512F; the outputs (and residual) inside their buffers; the per-row or per-column
/// operands hold these rows or columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn columns(
    epi: &Epilogue,
    (i, j, at): (usize, usize, usize),
    (n, step): (usize, usize),
    m: std::arch::x86_64::__mmask16,
    v: impl Fn(usize) -> std::arch::x86_64::__m512,
    c: *mut f32,
    res: bool,
) {
    use crate::routines::epilogue::avx512 as vec;
    use std::arch::x86_64::*;
    let per_row = !(epi.cols || epi.scale.is_null() && epi.shift.is_null());
    if epi.is_none() {
        for p in 0..n {
            // SAFETY: inside C (the caller's).
            unsafe { _mm512_mask_storeu_ps(c.add(at + p * step), m, v(p)) };
        }
    } else if let (Some(clamp), u16::MAX, false) = (epi.quick_linear(), m, per_row) {
        let mut e = epi.from(i, j, at);
        if !res {
            e.res = std::ptr::null();
        }
        // SAFETY: forwarded.
        unsafe { vec::quick_run(&e, clamp, (n, step), v, c.wrapping_add(at)) };
    } else {
        for p in 0..n {
            let o = at + p * step;
            let r = if res {
                epi.res.wrapping_add(o)
            } else {
                std::ptr::null()
            };
            // SAFETY: forwarded.
            unsafe {
                let st = vec::coefs(epi, i + p, j, m);
                let x = vec::apply(epi, v(p), st, r, m);
                _mm512_mask_storeu_ps(c.add(o), m, x);
            }
        }
    }
}
