//! Products of few columns (`n` ≤ [`MOST`]: weights times a vector, a conv's im2col over a
//! short signal, a squeeze-excite's layers): each output is a dot product of a row of A with a
//! column of B, in 16 lanes along the contraction, where the packed micro-kernel would fill
//! a 16- or 32-column tile with zeros (at most a quarter of its work useful).
//!
//! Every output sums in one order on every ISA: lane `s` of 16 takes the steps `l ≡ s (mod
//! 16)` in turn (fused multiply-adds), and the lanes add as a fixed tree (`s + s⁺⁸`, then
//! `+4`, `+2`, `+1`); the AVX-512, AVX2 and portable bodies agree bit for bit (a NaN's sign
//! aside).

use super::*;

/// Most columns of B the narrow path takes.
pub(super) const MOST: usize = 4;

/// Rows of A a call of the vector body takes at once (each row's lanes against every column's).
const ROWS: usize = 4;

/// `c = a · b` for `n` ≤ [`MOST`] columns and A's rows contiguous (`a.cs == 1`), then the
/// epilogue over C; rows split over the helpers for large products.
///
/// # Safety
/// As [`product`]; `a.cs == 1`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn narrow(
    a: Mat,
    b: Mat,
    c: *mut f32,
    ldc: usize,
    m: usize,
    n: usize,
    k: usize,
    epi: &Epilogue,
) {
    thread_local! {
        static COLUMNS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    // B's columns, each contiguous (`bt[j·k + l]`).
    let mut bt = COLUMNS.with(|b| b.take());
    bt.clear();
    bt.resize(n * k, 0.0);
    for l in 0..k {
        // Row l of B (its elements `b.cs` apart).
        let row = b.rows_from(l).p;
        for (j, col) in bt.chunks_exact_mut(k).enumerate() {
            // SAFETY: (l, j) is inside B.
            col[l] = unsafe { *row.offset(j as isize * b.cs) };
        }
    }
    let blocks = m.div_ceil(ROWS);
    let t = if m * n * k >= SMALL_PATH_SPLIT {
        (crate::threads::helpers() + 1).min(blocks)
    } else {
        1
    };
    let (bt_addr, c_addr) = (bt.as_ptr() as usize, c as usize);
    crate::threads::parallel_for(t, |w| {
        let (r0, r1) = (blocks * w / t * ROWS, (blocks * (w + 1) / t * ROWS).min(m));
        let part = Part {
            a: a.rows_from(r0).p,
            lda: a.rs,
            bt: bt_addr as *const f32,
            c: (c_addr as *mut f32).wrapping_add(r0 * ldc),
            ldc,
            k,
        };
        // SAFETY: forwarded; each part writes its own rows of C.
        unsafe {
            match n {
                1 => part.rows::<1>(r1 - r0),
                2 => part.rows::<2>(r1 - r0),
                3 => part.rows::<3>(r1 - r0),
                _ => part.rows::<4>(r1 - r0),
            }
            epi.block_at((r0, 0, r0 * ldc), part.c, ldc, r1 - r0, n);
        }
    });
    COLUMNS.with(|b| b.set(bt));
}

/// Rows of a narrow product: A's rows from `a` (`lda` apart, contiguous), B's columns in
/// `bt` (`k` apart), C's rows from `c` (`ldc` apart).
#[derive(Clone, Copy)]
struct Part {
    a: *const f32,
    lda: isize,
    bt: *const f32,
    c: *mut f32,
    ldc: usize,
    k: usize,
}

impl Part {
    /// The part's first `m` rows of C, `N` columns each.
    ///
    /// # Safety
    /// `m` rows of A of `k` elements and of C of `N`, `N` columns of `k` in `bt`.
    unsafe fn rows<const N: usize>(&self, m: usize) {
        let mut i = 0;
        while i < m {
            let r = (m - i).min(ROWS);
            let at = Part {
                a: self.a.wrapping_offset(i as isize * self.lda),
                c: self.c.wrapping_add(i * self.ldc),
                ..*self
            };
            // SAFETY: forwarded; rows i..i + r.
            unsafe {
                match r {
                    4 => at.dots::<4, N>(),
                    3 => at.dots::<3, N>(),
                    2 => at.dots::<2, N>(),
                    _ => at.dots::<1, N>(),
                }
            }
            i += r;
        }
    }

    /// `R` rows by `N` columns of C, by the widest body the CPU runs.
    ///
    /// # Safety
    /// As [`Part::rows`] for `R` rows.
    unsafe fn dots<const R: usize, const N: usize>(&self) {
        let mut out = [[0f32; N]; R];
        // SAFETY: forwarded; the bodies run on CPUs with their features.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if wide() {
                avx512::dots::<R, N>(self, &mut out);
            } else if crate::avx2_fma() {
                // A row at a time: 2·N sums in 16 registers (R·2·N of them would spill).
                for (r, row) in out.iter_mut().enumerate() {
                    let one = Part {
                        a: self.a.wrapping_offset(r as isize * self.lda),
                        ..*self
                    };
                    let mut sums = [[0f32; N]; 1];
                    avx2::dots::<1, N>(&one, &mut sums);
                    *row = sums[0];
                }
            } else {
                self.portable::<R, N>(&mut out);
            }
            #[cfg(not(target_arch = "x86_64"))]
            self.portable::<R, N>(&mut out);
            for (r, row) in out.iter().enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    *self.c.add(r * self.ldc + j) = v;
                }
            }
        }
    }

    /// [`Part::dots`] in scalar code, in the vector bodies' order.
    ///
    /// # Safety
    /// As [`Part::dots`].
    unsafe fn portable<const R: usize, const N: usize>(&self, out: &mut [[f32; N]; R]) {
        for (r, row) in out.iter_mut().enumerate() {
            for (j, o) in row.iter_mut().enumerate() {
                let mut lanes = [0f32; 16];
                for l in 0..self.k {
                    // SAFETY: inside row r of A and column j of B.
                    let (x, y) = unsafe {
                        (
                            *self.a.offset(r as isize * self.lda).add(l),
                            *self.bt.add(j * self.k + l),
                        )
                    };
                    lanes[l % 16] = x.mul_add(y, lanes[l % 16]);
                }
                *o = tree(lanes);
            }
        }
    }
}

/// The lanes' sum as the vector bodies add them.
fn tree(mut s: [f32; 16]) -> f32 {
    for half in [8, 4, 2, 1] {
        for i in 0..half {
            s[i] += s[i + half];
        }
    }
    s[0]
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Part;
    use std::arch::x86_64::*;

    /// [`Part::dots`] in 16-lane registers.
    ///
    /// # Safety
    /// As [`Part::dots`]; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dots<const R: usize, const N: usize>(p: &Part, out: &mut [[f32; N]; R]) {
        // SAFETY: every load is inside a row of A or a column of B (the tail masked).
        unsafe {
            let rows: [*const f32; R] = std::array::from_fn(|r| p.a.offset(r as isize * p.lda));
            let cols: [*const f32; N] = std::array::from_fn(|j| p.bt.add(j * p.k));
            let mut acc = [[_mm512_setzero_ps(); N]; R];
            let mut l = 0;
            while l + 16 <= p.k {
                let b: [__m512; N] = std::array::from_fn(|j| _mm512_loadu_ps(cols[j].add(l)));
                for r in 0..R {
                    let a = _mm512_loadu_ps(rows[r].add(l));
                    for j in 0..N {
                        acc[r][j] = _mm512_fmadd_ps(a, b[j], acc[r][j]);
                    }
                }
                l += 16;
            }
            if l < p.k {
                let m: __mmask16 = (1u32 << (p.k - l)) as u16 - 1;
                let b: [__m512; N] =
                    std::array::from_fn(|j| _mm512_maskz_loadu_ps(m, cols[j].add(l)));
                for r in 0..R {
                    let a = _mm512_maskz_loadu_ps(m, rows[r].add(l));
                    for j in 0..N {
                        acc[r][j] = _mm512_mask3_fmadd_ps(a, b[j], acc[r][j], m);
                    }
                }
            }
            for r in 0..R {
                for j in 0..N {
                    let v = acc[r][j];
                    // Lanes s + s⁺⁸, then +4, +2, +1.
                    let s8 = _mm256_add_ps(
                        _mm512_castps512_ps256(v),
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
                    );
                    out[r][j] = super::avx2::tree8(s8);
                }
            }
        }
    }
}

// The bodies index their sums by row, column and half, as the sums are written.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Part;
    use std::arch::x86_64::*;

    /// [`Part::dots`] in 8-lane registers: lanes 0–7 and 8–15 of the 16 in two.
    ///
    /// # Safety
    /// As [`Part::dots`]; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots<const R: usize, const N: usize>(p: &Part, out: &mut [[f32; N]; R]) {
        // SAFETY: every load is inside a row of A or a column of B (the tail masked).
        unsafe {
            let rows: [*const f32; R] = std::array::from_fn(|r| p.a.offset(r as isize * p.lda));
            let cols: [*const f32; N] = std::array::from_fn(|j| p.bt.add(j * p.k));
            let mut acc = [[[_mm256_setzero_ps(); 2]; N]; R];
            let mut l = 0;
            while l + 16 <= p.k {
                for h in 0..2 {
                    let b: [__m256; N] =
                        std::array::from_fn(|j| _mm256_loadu_ps(cols[j].add(l + 8 * h)));
                    for r in 0..R {
                        let a = _mm256_loadu_ps(rows[r].add(l + 8 * h));
                        for j in 0..N {
                            acc[r][j][h] = _mm256_fmadd_ps(a, b[j], acc[r][j][h]);
                        }
                    }
                }
                l += 16;
            }
            for h in 0..2 {
                let from = l + 8 * h;
                if from >= p.k {
                    break;
                }
                // Lanes past the end keep their sums (loads of them read zeros).
                let left = (p.k - from).min(8) as i32;
                let m = _mm256_cmpgt_epi32(
                    _mm256_set1_epi32(left),
                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                );
                let b: [__m256; N] =
                    std::array::from_fn(|j| _mm256_maskload_ps(cols[j].add(from), m));
                for r in 0..R {
                    let a = _mm256_maskload_ps(rows[r].add(from), m);
                    for j in 0..N {
                        let f = _mm256_fmadd_ps(a, b[j], acc[r][j][h]);
                        acc[r][j][h] = _mm256_blendv_ps(acc[r][j][h], f, _mm256_castsi256_ps(m));
                    }
                }
            }
            for r in 0..R {
                for j in 0..N {
                    let [lo, hi] = acc[r][j];
                    out[r][j] = tree8(_mm256_add_ps(lo, hi));
                }
            }
        }
    }

    /// Lanes `s + s⁺⁴`, then `+2`, `+1`, of 8 (each already `s + s⁺⁸` of 16).
    ///
    /// # Safety
    /// The CPU has AVX.
    #[inline(always)]
    pub(super) unsafe fn tree8(s8: __m256) -> f32 {
        // SAFETY: the CPU has AVX.
        unsafe {
            let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2));
            _mm_cvtss_f32(s1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector bodies sum in the portable body's order: the same bits (NaNs as one) for
    /// every contraction length around the 16 lanes' tails, with signed zeros, infinities and
    /// NaNs among the operands.
    #[test]
    fn the_bodies_agree_bit_for_bit() {
        let mut bits64 = crate::routines::lcg(11);
        let mut next = || (bits64() >> 40) as f32 / (1u32 << 24) as f32;
        for k in [1usize, 2, 7, 15, 16, 17, 31, 33, 48, 100, 387] {
            let a: Vec<f32> = (0..4 * k)
                .map(|i| match i % 29 {
                    3 => -0.0,
                    5 if k > 40 => f32::INFINITY,
                    _ => next() - 0.5,
                })
                .collect();
            let b: Vec<f32> = (0..4 * k)
                .map(|i| if i == 40 { f32::NAN } else { next() - 0.5 })
                .collect();
            let part = Part {
                a: a.as_ptr(),
                lda: k as isize,
                bt: b.as_ptr(),
                c: std::ptr::null_mut(),
                ldc: 4,
                k,
            };
            let mut want = [[0f32; 4]; 4];
            // SAFETY: 4 rows of A and 4 columns of B of k elements each.
            unsafe { part.portable::<4, 4>(&mut want) };
            // Bits, any NaN as one (x86 keeps the sign of whichever NaN operand comes first).
            let bits = |v: &[[f32; 4]; 4]| {
                v.map(|r| r.map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() }))
            };
            #[cfg(target_arch = "x86_64")]
            {
                if crate::avx2_fma() {
                    let mut got = [[0f32; 4]; 4];
                    // SAFETY: as above; the CPU has AVX2 and FMA.
                    unsafe { avx2::dots::<4, 4>(&part, &mut got) };
                    assert_eq!(bits(&got), bits(&want), "AVX2, k = {k}");
                }
                if crate::avx512() {
                    let mut got = [[0f32; 4]; 4];
                    // SAFETY: as above; the CPU has AVX-512F.
                    unsafe { avx512::dots::<4, 4>(&part, &mut got) };
                    assert_eq!(bits(&got), bits(&want), "AVX-512, k = {k}");
                }
            }
            // And the sums are the products' (finite operands).
            if k <= 40 {
                for (r, row) in want.iter().enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        let exact: f64 = (0..k)
                            .map(|l| a[r * k + l] as f64 * b[j * k + l] as f64)
                            .sum();
                        if exact.is_finite() {
                            assert!((v as f64 - exact).abs() <= 1e-5, "k = {k}: {v} vs {exact}");
                        }
                    }
                }
            }
        }
    }
}
