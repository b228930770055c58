//! The tiles in 8-lane halves of a block (AVX2 and FMA): one output block at a time, up to
//! six pixels (twelve accumulators, two filter halves and a broadcast in 16 registers), in
//! the order of the 16-lane tiles, so results are the same.

use super::super::super::epilogue::avx2 as epi;
use super::super::super::epilogue::{decide, Quick};
use super::{Job, BLOCK};
use std::arch::x86_64::*;

/// The `r`×`n` pixels from (oy, ox) of block `ob` (see `avx512::tiles`).
///
/// # Safety
/// As [`Job::row`]; the CPU has AVX2 and FMA; the pixels share their taps.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tiles(
    j: &Job,
    ob: usize,
    (oy, ox): (usize, usize),
    (r, n): (usize, usize),
    depthwise: bool,
) {
    let down = r > 1 && n == 1;
    let (len, mut p) = (if down { r } else { n }, 0);
    while p < len {
        let at = if down { (oy + p, ox) } else { (oy, ox + p) };
        // SAFETY: forwarded.
        unsafe {
            p += match (depthwise, down, r, len - p) {
                (true, _, _, 6..) => dw::<6>(j, ob, at),
                (true, _, _, 4..) => dw::<4>(j, ob, at),
                (true, _, _, 2..) => dw::<2>(j, ob, at),
                (true, _, _, _) => dw::<1>(j, ob, at),
                (_, true, _, 6..) => tile::<6, 1>(j, ob, at) * 6,
                (_, true, _, 4..) => tile::<4, 1>(j, ob, at) * 4,
                (_, true, _, 2..) => tile::<2, 1>(j, ob, at) * 2,
                (_, true, _, _) => tile::<1, 1>(j, ob, at),
                (_, _, 1, 6..) => tile::<1, 6>(j, ob, at),
                (_, _, 1, 4..) => tile::<1, 4>(j, ob, at),
                (_, _, 1, 2..) => tile::<1, 2>(j, ob, at),
                (_, _, 1, _) => tile::<1, 1>(j, ob, at),
                (_, _, _, 3..) => tile::<2, 3>(j, ob, at),
                (_, _, _, 2) => tile::<2, 2>(j, ob, at),
                (_, _, _, _) => tile::<2, 1>(j, ob, at),
            };
        }
    }
}

/// A dense tile of block `ob` by `R` rows of `C` pixels (see `avx512::tile`); returns `C`.
///
/// # Safety
/// As [`tiles`].
#[inline(always)]
unsafe fn tile<const R: usize, const C: usize>(
    j: &Job,
    ob: usize,
    (oy, ox): (usize, usize),
) -> usize {
    let ((ky0, ky1), (kx0, kx1)) = j.taps(oy, ox);
    let cstep = j.ps * j.g.sw as usize;
    let rstep = j.ps * j.g.sh as usize * j.g.w as usize;
    let cs = j.cs;
    // SAFETY: as in `avx512::tile`; the CPU has AVX2 and FMA.
    unsafe {
        let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
        for q in 0..j.groups {
            for ky in ky0..ky1 {
                for kx in kx0..kx1 {
                    let xp = j.x.add(j.input(q, j.at((oy, ox), (ky, kx))));
                    let wq = j.wp.add(j.filter(ob, q, ky, kx));
                    for i in 0..j.count(q) {
                        let f0 = _mm256_loadu_ps(wq.add(i * BLOCK));
                        let f1 = _mm256_loadu_ps(wq.add(i * BLOCK + 8));
                        for r in 0..R {
                            for c in 0..C {
                                let v = _mm256_set1_ps(*xp.add(r * rstep + c * cstep + i * cs));
                                let a = &mut acc[r][c];
                                a[0] = _mm256_fmadd_ps(v, f0, a[0]);
                                a[1] = _mm256_fmadd_ps(v, f1, a[1]);
                            }
                        }
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            store(j, ob, (oy + r, ox), acc);
        }
    }
    C
}

/// A depthwise tile of channel block `cb` by `P` pixels along a row; returns `P`.
///
/// # Safety
/// As [`tiles`].
#[inline(always)]
unsafe fn dw<const P: usize>(j: &Job, cb: usize, (oy, ox): (usize, usize)) -> usize {
    let ((ky0, ky1), (kx0, kx1)) = j.taps(oy, ox);
    let s = j.ps * j.g.sw as usize;
    // SAFETY: as in `avx512::dw_tile`; the CPU has AVX2 and FMA.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; P];
        for ky in ky0..ky1 {
            for kx in kx0..kx1 {
                let xp = j.x.add(cb * j.gs + j.input(0, j.at((oy, ox), (ky, kx))));
                let f = j.wp.add(j.dw_filter(cb, ky, kx));
                let (f0, f1) = (_mm256_loadu_ps(f), _mm256_loadu_ps(f.add(8)));
                for (p, a) in acc.iter_mut().enumerate() {
                    let x = xp.add(p * s);
                    a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(x), f0, a[0]);
                    a[1] = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(8)), f1, a[1]);
                }
            }
        }
        store(j, cb, (oy, ox), &acc);
    }
    P
}

/// Stores a row of a tile's block vectors (two halves each) from `(oy, ox)` through the
/// epilogue.
///
/// # Safety
/// As [`tiles`], for these pixels.
#[inline(always)]
unsafe fn store(j: &Job, ob: usize, (oy, ox): (usize, usize), acc: &[[__m256; 2]]) {
    let at = j.output(ob, oy, ox);
    // SAFETY: forwarded.
    unsafe { stored(j, ob, at, acc) };
}

/// [`emit`] of a tile's vectors, out of line as `avx512`'s.
///
/// # Safety
/// As [`store`].
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn stored(j: &Job, ob: usize, at: usize, acc: &[[__m256; 2]]) {
    // SAFETY: forwarded.
    unsafe { emit(j, ob, at, acc.len(), |p, h| acc[p][h]) };
}

/// Stores `n` block vectors, halves `v(p, 0)` and `v(p, 1)`, of output block `ob` from
/// element `at` (pixels 16 elements apart) through the epilogue, as `avx512::emit`.
///
/// # Safety
/// As [`tiles`], for these outputs; the CPU has AVX2 and FMA.
#[inline(always)]
pub(super) unsafe fn emit(
    j: &Job,
    ob: usize,
    at: usize,
    n: usize,
    v: impl Fn(usize, usize) -> __m256,
) {
    let all = _mm256_set1_epi32(-1);
    /// The two halves' runs through the quick epilogue.
    struct Halves<'a, V> {
        j: &'a Job,
        ob: usize,
        at: usize,
        n: usize,
        v: V,
    }
    impl<V: Fn(usize, usize) -> __m256> Quick for Halves<'_, V> {
        #[inline(always)]
        unsafe fn run<const CLAMP: bool, const RES: bool, const A: i64>(self) {
            let Halves { j, ob, at, n, v } = self;
            for h in 0..2 {
                let e = j.epi.from(0, ob * BLOCK + 8 * h, at + 8 * h);
                let out = j.out.wrapping_add(at + 8 * h);
                // SAFETY: the outputs (and residual) are inside their buffers; AVX2
                // available.
                unsafe {
                    let coefs = epi::coefs(&e, 0, 0, _mm256_set1_epi32(-1));
                    epi::quick::<CLAMP, RES, A>(&e, coefs, (n, BLOCK), |p| v(p, h), out);
                }
            }
        }
    }
    // SAFETY: the outputs (and residual) are inside their buffers; AVX2 available.
    unsafe {
        if let Some(clamp) = j.epi.quick_linear() {
            return decide(&j.epi, clamp, Halves { j, ob, at, n, v });
        }
        // The job's epilogue itself (see the AVX-512 `general`).
        let e = &j.epi;
        for h in 0..2 {
            let coefs = epi::coefs(e, 0, ob * BLOCK + 8 * h, all);
            let out = j.out.wrapping_add(at + 8 * h);
            for p in 0..n {
                let r = e.res.wrapping_add(at + 8 * h + p * BLOCK);
                let x = epi::apply(e, v(p, h), coefs, r, all);
                _mm256_storeu_ps(out.add(p * BLOCK), x);
            }
        }
    }
}
