//! Max and min pooling of one f32 plane, for the `pool2d` routine: the plane is copied into a
//! per-thread buffer padded with the identity (−∞ for max, +∞ for min), then every output row
//! takes its taps in vector registers (AVX-512 or AVX2 blocks for unit or double strides when
//! the CPU has them; scalar otherwise), as ordered integer keys (the row routines' `key`).
//! Max and min are IEEE `maximum`/`minimum` as kernels compute them: NaN when any tap is NaN,
//! and −0 below +0 — exact in any order, so every path gives the same result.

use super::conv::{give_padded, lanes, padded, take_padded, Geometry};

/// `out[oy·ow + ox]` = the maximum (`min == 0`) or minimum (otherwise) of `x[iy·w + ix]` over
/// the taps inside the plane (`iy = oy·sh + ky·dh - ph`, `ix = ox·sw + kx·dw - pw`), or −∞
/// (+∞ for the minimum) where no tap is.
///
/// # Safety
/// `x` must be readable for `h·w` elements, `out` writable for `oh·ow` and not overlapping
/// it; every extent nonnegative and strides and dilations positive.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_pool2d_plane(
    x: *const f32,
    out: *mut f32,
    h: i64,
    w: i64,
    oh: i64,
    ow: i64,
    kh: i64,
    kw: i64,
    sh: i64,
    sw: i64,
    dh: i64,
    dw: i64,
    ph: i64,
    pw: i64,
    min: i64,
) {
    let g = Geometry::of([h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw]);
    // SAFETY: forwarded.
    unsafe { plane(x, out, &g, min != 0, lanes()) }
}

/// # Safety
/// As [`kiln_pool2d_plane`]; `lanes` (1, 8 or 16) at most what the CPU runs.
unsafe fn plane(x: *const f32, out: *mut f32, g: &Geometry, min: bool, lanes: usize) {
    if g.oh <= 0 || g.ow <= 0 {
        return;
    }
    let fill = if min {
        f32::INFINITY
    } else {
        f32::NEG_INFINITY
    };
    let mut buf = take_padded();
    // SAFETY: forwarded.
    let cols = unsafe { padded(x, g, fill, &mut buf) };
    // The offset of each tap's input for output (0, 0).
    let taps: Vec<usize> = (0..g.kh * g.kw)
        .map(|t| ((t / g.kw) * g.dh * cols + (t % g.kw) * g.dw) as usize)
        .collect();
    let p = buf.as_ptr();
    for oy in 0..g.oh {
        let base = (oy * g.sh * cols) as usize;
        // SAFETY: the row is inside `out`.
        let row = unsafe { out.add((oy * g.ow) as usize) };
        let mut ox = 0;
        #[cfg(target_arch = "x86_64")]
        if lanes == 16 && (g.sw == 1 || g.sw == 2) && g.ow >= 16 {
            // SAFETY: the host has AVX-512; every tap of the row is inside the copy, with 16
            // elements to spare.
            unsafe { avx512::row(p.add(base), &taps, row, g.ow, g.sw, min) };
            ox = g.ow;
        } else if lanes >= 8 && (g.sw == 1 || g.sw == 2) && g.ow >= 8 {
            // SAFETY: the host has AVX2; as above.
            unsafe { avx2::row(p.add(base), &taps, row, g.ow, g.sw, min) };
            ox = g.ow;
        }
        let _ = lanes;
        while ox < g.ow {
            let mut acc = fill;
            for &off in &taps {
                // SAFETY: every tap is inside the copy.
                let v = unsafe { *p.add(base + off + (ox * g.sw) as usize) };
                acc = pick(acc, v, min);
            }
            // SAFETY: `ox < ow`.
            unsafe { *row.add(ox as usize) = acc };
            ox += 1;
        }
    }
    give_padded(buf);
}

/// IEEE `maximum` (or, with `min`, `minimum`).
fn pick(a: f32, b: f32, min: bool) -> f32 {
    if min {
        super::rows::minimum(a, b)
    } else {
        super::rows::maximum(a, b)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::conv::avx512::load;
    use super::super::rows::avx512::key;
    use std::arch::x86_64::*;

    /// The `ow >= 16` outputs of a row: blocks of 16, and a last block that ends at `ow`.
    ///
    /// # Safety
    /// AVX-512F available; every tap of the row readable with 16 elements to spare.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn row(
        x: *const f32,
        taps: &[usize],
        row: *mut f32,
        ow: i64,
        s: i64,
        min: bool,
    ) {
        let (ow, s) = (ow as usize, s as usize);
        let block = |ox: usize| {
            let mut acc = _mm512_set1_epi32(if min { i32::MAX } else { i32::MIN });
            let mut nan: __mmask16 = 0;
            for &off in taps {
                // SAFETY: the taps are inside the copy.
                let v = unsafe { load(x.add(off + ox * s), s) };
                nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                acc = if min {
                    _mm512_min_epi32(acc, key(v))
                } else {
                    _mm512_max_epi32(acc, key(v))
                };
            }
            // Keys back to floats (the map is its own inverse), NaN where a tap was.
            let back = _mm512_castsi512_ps(key(_mm512_castsi512_ps(acc)));
            let v = _mm512_mask_mov_ps(back, nan, _mm512_set1_ps(f32::NAN));
            // SAFETY: outputs ox..ox+16 are inside the row.
            unsafe { _mm512_storeu_ps(row.add(ox), v) };
        };
        let mut ox = 0;
        while ox + 16 <= ow {
            block(ox);
            ox += 16;
        }
        if ox < ow {
            block(ow - 16);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::conv::avx2::load;
    use super::super::rows::avx2::key;
    use std::arch::x86_64::*;

    /// The `ow >= 8` outputs of a row: blocks of 8, and a last block that ends at `ow`.
    ///
    /// # Safety
    /// AVX2 and FMA available; every tap of the row readable with 16 elements to spare.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row(
        x: *const f32,
        taps: &[usize],
        row: *mut f32,
        ow: i64,
        s: i64,
        min: bool,
    ) {
        let (ow, s) = (ow as usize, s as usize);
        let block = |ox: usize| {
            let mut acc = _mm256_set1_epi32(if min { i32::MAX } else { i32::MIN });
            let mut nan = _mm256_setzero_ps();
            for &off in taps {
                // SAFETY: the taps are inside the copy.
                let v = unsafe { load(x.add(off + ox * s), s) };
                nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                // SAFETY: the host has AVX2.
                let k = unsafe { key(v) };
                acc = if min {
                    _mm256_min_epi32(acc, k)
                } else {
                    _mm256_max_epi32(acc, k)
                };
            }
            // Keys back to floats (the map is its own inverse), NaN where a tap was.
            // SAFETY: the host has AVX2.
            let back = _mm256_castsi256_ps(unsafe { key(_mm256_castsi256_ps(acc)) });
            let v = _mm256_blendv_ps(back, _mm256_set1_ps(f32::NAN), nan);
            // SAFETY: outputs ox..ox+8 are inside the row.
            unsafe { _mm256_storeu_ps(row.add(ox), v) };
        };
        let mut ox = 0;
        while ox + 8 <= ow {
            block(ox);
            ox += 8;
        }
        if ox < ow {
            block(ow - 8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_width_matches_the_definition_with_nans_and_zeros() {
        let mut seed = 3u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        // (h, w, window, stride, dilation, padding low): strides 1, 2 and 3, padding more
        // than the window reaches (outputs with no tap inside), rows shorter than a vector.
        let cases = [
            (64, 64, (3, 3), (2, 2), (1, 1), (1, 1)),
            (20, 37, (2, 2), (2, 2), (1, 1), (0, 0)),
            (9, 40, (3, 5), (1, 1), (2, 1), (2, 2)),
            (7, 7, (3, 3), (3, 3), (1, 1), (1, 1)),
            (5, 50, (1, 4), (1, 2), (1, 1), (0, 3)),
            (4, 20, (2, 2), (1, 1), (1, 1), (3, 3)),
        ];
        for (h, w, (kh, kw), (sh, sw), (dh, dw), (ph, pw)) in cases {
            let oh = (h + 2 * ph - (kh - 1) * dh - 1) / sh + 1;
            let ow = (w + 2 * pw - (kw - 1) * dw - 1) / sw + 1;
            let g = Geometry::of([h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw]);
            // Small integers, zeros of both signs and the odd NaN.
            let x: Vec<f32> = (0..h * w)
                .map(|_| match rnd() % 40 {
                    0 => f32::NAN,
                    1..=4 => -0.0,
                    5..=8 => 0.0,
                    r => r as f32 - 20.0,
                })
                .collect();
            for min in [false, true] {
                let mut want = vec![0f32; (oh * ow) as usize];
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = if min {
                            f32::INFINITY
                        } else {
                            f32::NEG_INFINITY
                        };
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (iy, ix) = (oy * sh + ky * dh - ph, ox * sw + kx * dw - pw);
                                if iy >= 0 && iy < h && ix >= 0 && ix < w {
                                    acc = pick(acc, x[(iy * w + ix) as usize], min);
                                }
                            }
                        }
                        want[(oy * ow + ox) as usize] = acc;
                    }
                }
                for lanes in [1, 8, 16].into_iter().filter(|&n| n <= lanes()) {
                    let mut out = vec![1.5f32; (oh * ow) as usize];
                    // SAFETY: buffers sized for the geometry; `lanes` run on this CPU.
                    unsafe { plane(x.as_ptr(), out.as_mut_ptr(), &g, min, lanes) };
                    for (i, (o, r)) in out.iter().zip(&want).enumerate() {
                        assert!(
                            o.to_bits() == r.to_bits() || (o.is_nan() && r.is_nan()),
                            "{g:?} min={min} lanes={lanes} at {i}: {o} vs {r}"
                        );
                    }
                }
            }
        }
    }
}
