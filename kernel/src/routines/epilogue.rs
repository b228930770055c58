//! What products and convolutions apply to each output as they store it (a fused epilogue):
//! `y = clamp((x·scale[row] + shift[row]) + res[at], lo, hi)`, every part optional — a
//! convolution's folded batch norm, bias, residual add and ReLU/ReLU6/Clip without a second
//! pass over the output. Operation for operation what the elementwise loops it replaces compute
//! (a multiply, then adds, each rounded; IEEE maximum and minimum), in 16 or 8 lanes.

/// A fused epilogue. `row` is the output's row (a product's row of C, a convolution's output
/// channel); `at` an output's element offset, at which the residual is read too.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue {
    /// Per row, or null for none.
    pub scale: *const f32,
    /// Per row, or null for none.
    pub shift: *const f32,
    /// Laid out as the output, or null for none.
    pub res: *const f32,
    /// The lower clamp (-inf for none).
    pub lo: f32,
    /// The upper clamp (+inf for none).
    pub hi: f32,
}

// SAFETY: the operands are only read, and the caller keeps them alive for the call.
unsafe impl Send for Epilogue {}
unsafe impl Sync for Epilogue {}

impl Epilogue {
    /// No epilogue: outputs stored as computed.
    pub const NONE: Epilogue = Epilogue {
        scale: std::ptr::null(),
        shift: std::ptr::null(),
        res: std::ptr::null(),
        lo: f32::NEG_INFINITY,
        hi: f32::INFINITY,
    };

    /// The epilogue of a routine's arguments.
    pub fn new(scale: *const f32, shift: *const f32, res: *const f32, lo: f32, hi: f32) -> Self {
        Epilogue {
            scale,
            shift,
            res,
            lo,
            hi,
        }
    }

    /// Whether it changes nothing.
    pub fn is_none(&self) -> bool {
        self.scale.is_null()
            && self.shift.is_null()
            && self.res.is_null()
            && self.lo == f32::NEG_INFINITY
            && self.hi == f32::INFINITY
    }

    /// The epilogue of the part of the output from row `rows` and element `at` on.
    pub fn from(&self, rows: usize, at: usize) -> Epilogue {
        let by = |p: *const f32, n: usize| if p.is_null() { p } else { p.wrapping_add(n) };
        Epilogue {
            scale: by(self.scale, rows),
            shift: by(self.shift, rows),
            res: by(self.res, at),
            ..*self
        }
    }

    /// Row `i`'s scale and shift (`None` for absent ones).
    ///
    /// # Safety
    /// Row `i` is inside the per-row operands.
    #[inline(always)]
    pub(super) unsafe fn row(&self, i: usize) -> (Option<f32>, Option<f32>) {
        // SAFETY: forwarded.
        unsafe {
            (
                (!self.scale.is_null()).then(|| *self.scale.add(i)),
                (!self.shift.is_null()).then(|| *self.shift.add(i)),
            )
        }
    }

    /// One output `x` of a row with scale `s` and shift `t`, its residual `r`.
    #[inline(always)]
    fn one(&self, x: f32, (s, t): (Option<f32>, Option<f32>), r: Option<f32>) -> f32 {
        let mut y = x;
        if let Some(s) = s {
            y *= s;
        }
        if let Some(t) = t {
            y += t;
        }
        if let Some(r) = r {
            y += r;
        }
        if self.lo != f32::NEG_INFINITY {
            y = super::rows::maximum(y, self.lo);
        }
        if self.hi != f32::INFINITY {
            y = super::rows::minimum(y, self.hi);
        }
        y
    }

    /// Applies it in place to a `rows`×`cols` block of the output at `c`, rows `ld` apart
    /// (its first row being row 0 and its first element offset 0 of this epilogue: see
    /// [`Epilogue::from`]).
    ///
    /// # Safety
    /// The block is inside the output (and, with the same offsets, the residual); its rows
    /// inside the per-row operands.
    pub unsafe fn block(&self, c: *mut f32, ld: usize, rows: usize, cols: usize) {
        if self.is_none() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if crate::avx512() {
            // SAFETY: forwarded; the CPU has AVX-512.
            return unsafe { avx512::block(self, c, ld, rows, cols) };
        } else if crate::avx2_fma() {
            // SAFETY: forwarded; the CPU has AVX2.
            return unsafe { avx2::block(self, c, ld, rows, cols) };
        }
        // SAFETY: forwarded.
        unsafe { self.scalar_block(c, ld, rows, cols) }
    }

    /// [`Epilogue::block`] in scalar code.
    ///
    /// # Safety
    /// As [`Epilogue::block`].
    unsafe fn scalar_block(&self, c: *mut f32, ld: usize, rows: usize, cols: usize) {
        for i in 0..rows {
            // SAFETY: forwarded.
            let st = unsafe { self.row(i) };
            for j in 0..cols {
                let at = i * ld + j;
                // SAFETY: (i, j) is inside the block.
                unsafe {
                    let r = (!self.res.is_null()).then(|| *self.res.add(at));
                    *c.add(at) = self.one(*c.add(at), st, r);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use super::Epilogue;
    use crate::routines::rows::avx512::key;
    use std::arch::x86_64::*;

    /// The epilogue on 16 outputs `v` of one row (scale `s`, shift `t`; lanes in `m`), whose
    /// residual is at `r`.
    ///
    /// # Safety
    /// AVX-512F available; with a residual, the lanes in `m` readable from `r`.
    #[inline(always)]
    pub(in crate::routines) unsafe fn apply(
        e: &Epilogue,
        mut v: __m512,
        (s, t): (Option<f32>, Option<f32>),
        r: *const f32,
        m: __mmask16,
    ) -> __m512 {
        // SAFETY: the CPU has AVX-512F; the residual's lanes are readable.
        unsafe {
            if let Some(s) = s {
                v = _mm512_mul_ps(v, _mm512_set1_ps(s));
            }
            if let Some(t) = t {
                v = _mm512_add_ps(v, _mm512_set1_ps(t));
            }
            if !e.res.is_null() {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, r));
            }
            if e.lo != f32::NEG_INFINITY {
                v = extreme(v, e.lo, false);
            }
            if e.hi != f32::INFINITY {
                v = extreme(v, e.hi, true);
            }
            v
        }
    }

    /// IEEE maximum (or `min`imum) of each lane and `c`: ordered integer keys, NaN where
    /// either is.
    #[inline(always)]
    fn extreme(v: __m512, c: f32, min: bool) -> __m512 {
        // SAFETY: only called from AVX-512 code.
        unsafe {
            let cv = _mm512_set1_ps(c);
            let k = if min {
                _mm512_min_epi32(key(v), key(cv))
            } else {
                _mm512_max_epi32(key(v), key(cv))
            };
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, cv);
            let back = _mm512_castsi512_ps(key(_mm512_castsi512_ps(k)));
            _mm512_mask_mov_ps(back, nan, _mm512_set1_ps(f32::NAN))
        }
    }

    /// [`Epilogue::block`] in 16-lane registers.
    ///
    /// # Safety
    /// As [`Epilogue::block`]; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block(e: &Epilogue, c: *mut f32, ld: usize, rows: usize, cols: usize) {
        for i in 0..rows {
            // SAFETY: row i is inside the block and the per-row operands.
            unsafe {
                let st = e.row(i);
                let mut j = 0;
                while j < cols {
                    let n = (cols - j).min(16);
                    let m: __mmask16 = if n == 16 { !0 } else { (1u16 << n) - 1 };
                    let at = i * ld + j;
                    let v = _mm512_maskz_loadu_ps(m, c.add(at));
                    let v = apply(e, v, st, e.res.wrapping_add(at), m);
                    _mm512_mask_storeu_ps(c.add(at), m, v);
                    j += 16;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::Epilogue;
    use crate::routines::rows::avx2::key;
    use std::arch::x86_64::*;

    /// [`super::avx512::apply`] for 8 lanes: `m` the mask of lanes inside (all ones for 8).
    ///
    /// # Safety
    /// AVX2 available; with a residual, the lanes in `m` readable from `r`.
    #[inline(always)]
    pub(in crate::routines) unsafe fn apply(
        e: &Epilogue,
        mut v: __m256,
        (s, t): (Option<f32>, Option<f32>),
        r: *const f32,
        m: __m256i,
    ) -> __m256 {
        // SAFETY: the CPU has AVX2; the residual's lanes are readable.
        unsafe {
            if let Some(s) = s {
                v = _mm256_mul_ps(v, _mm256_set1_ps(s));
            }
            if let Some(t) = t {
                v = _mm256_add_ps(v, _mm256_set1_ps(t));
            }
            if !e.res.is_null() {
                v = _mm256_add_ps(v, _mm256_maskload_ps(r, m));
            }
            if e.lo != f32::NEG_INFINITY {
                v = extreme(v, e.lo, false);
            }
            if e.hi != f32::INFINITY {
                v = extreme(v, e.hi, true);
            }
            v
        }
    }

    /// [`super::avx512`]'s `extreme` for 8 lanes.
    #[inline(always)]
    unsafe fn extreme(v: __m256, c: f32, min: bool) -> __m256 {
        // SAFETY: only called from AVX2 code.
        unsafe {
            let cv = _mm256_set1_ps(c);
            let k = if min {
                _mm256_min_epi32(key(v), key(cv))
            } else {
                _mm256_max_epi32(key(v), key(cv))
            };
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, cv);
            let back = _mm256_castsi256_ps(key(_mm256_castsi256_ps(k)));
            _mm256_blendv_ps(back, _mm256_set1_ps(f32::NAN), nan)
        }
    }

    /// [`Epilogue::block`] in 8-lane registers.
    ///
    /// # Safety
    /// As [`Epilogue::block`]; the CPU has AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block(e: &Epilogue, c: *mut f32, ld: usize, rows: usize, cols: usize) {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for i in 0..rows {
            // SAFETY: row i is inside the block and the per-row operands.
            unsafe {
                let st = e.row(i);
                let mut j = 0;
                while j < cols {
                    let n = (cols - j).min(8);
                    let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane);
                    let at = i * ld + j;
                    let v = _mm256_maskload_ps(c.add(at), m);
                    let v = apply(e, v, st, e.res.wrapping_add(at), m);
                    _mm256_maskstore_ps(c.add(at), m, v);
                    j += 8;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs with NaNs, signed zeros and values on both sides of the clamps.
    fn values(n: usize) -> Vec<f32> {
        let special = [f32::NAN, 0.0, -0.0, 6.0, -6.0, 1e30, -1e30, 0.5];
        (0..n)
            .map(|i| {
                if i % 5 == 0 {
                    special[(i / 5) % special.len()]
                } else {
                    ((i * 7919) % 113) as f32 / 9.0 - 6.0
                }
            })
            .collect()
    }

    #[test]
    fn every_width_matches_the_elementwise_definition() {
        let (rows, cols, ld) = (5, 37, 41);
        let x = values(rows * ld);
        let res = values(rows * ld + 3);
        let scale: Vec<f32> = (0..rows).map(|i| 0.5 + i as f32).collect();
        let shift: Vec<f32> = (0..rows).map(|i| i as f32 - 2.0).collect();
        for (lo, hi) in [
            (0.0, 6.0),
            (-0.0, f32::INFINITY),
            (f32::NEG_INFINITY, 0.0),
            (f32::NEG_INFINITY, f32::INFINITY),
        ] {
            for parts in 0..8 {
                let e = Epilogue {
                    scale: if parts & 1 != 0 {
                        scale.as_ptr()
                    } else {
                        std::ptr::null()
                    },
                    shift: if parts & 2 != 0 {
                        shift.as_ptr()
                    } else {
                        std::ptr::null()
                    },
                    res: if parts & 4 != 0 {
                        res.as_ptr()
                    } else {
                        std::ptr::null()
                    },
                    lo,
                    hi,
                };
                let mut want = x.clone();
                for i in 0..rows {
                    for j in 0..cols {
                        let mut y = x[i * ld + j];
                        if parts & 1 != 0 {
                            y *= scale[i];
                        }
                        if parts & 2 != 0 {
                            y += shift[i];
                        }
                        if parts & 4 != 0 {
                            y += res[i * ld + j];
                        }
                        y = super::super::rows::maximum(y, lo);
                        want[i * ld + j] = super::super::rows::minimum(y, hi);
                    }
                }
                let mut got = Vec::new();
                let mut c = x.clone();
                // SAFETY: the block is inside c, res and the per-row operands.
                unsafe { e.scalar_block(c.as_mut_ptr(), ld, rows, cols) };
                got.push(c);
                #[cfg(target_arch = "x86_64")]
                {
                    if crate::avx2_fma() {
                        let mut c = x.clone();
                        // SAFETY: as above; the CPU has AVX2.
                        unsafe { avx2::block(&e, c.as_mut_ptr(), ld, rows, cols) };
                        got.push(c);
                    }
                    if crate::avx512() {
                        let mut c = x.clone();
                        // SAFETY: as above; the CPU has AVX-512.
                        unsafe { avx512::block(&e, c.as_mut_ptr(), ld, rows, cols) };
                        got.push(c);
                    }
                }
                for g in &got {
                    for (k, (a, b)) in g.iter().zip(&want).enumerate() {
                        assert!(
                            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                            "parts {parts} lo {lo} hi {hi} at {k}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
