//! Max, min and sum pooling of one f32 plane, for the `pool2d` routine: the plane is copied
//! into a per-thread buffer padded with the identity (−∞ for max, +∞ for min, 0 for sums),
//! then every output row takes its taps in vector registers (AVX-512 or AVX2 blocks for unit or
//! double strides when the CPU has them; scalar otherwise). Max and min run as ordered integer
//! keys (the row routines' `key`) and are IEEE `maximum`/`minimum` as kernels compute them:
//! NaN when any tap is NaN, and −0 below +0 — exact in any order. Sums accumulate in f64 in
//! tap order (window row by row), as lowered loops sum a window; a padding tap adds +0, which
//! changes no sum. Every path gives the same result.

use super::conv::{give_padded, lanes, padded, take_padded, Geometry};

/// `out[oy·ow + ox]` = the maximum (`kind` 0), minimum (1) or sum (2) of `x[iy·w + ix]` over
/// the taps inside the plane (`iy = oy·sh + ky·dh - ph`, `ix = ox·sw + kx·dw - pw`), or −∞
/// (+∞ for the minimum, 0 for the sum) where no tap is.
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
    kind: i64,
) {
    let g = Geometry::of([h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw]);
    let kind = match kind {
        0 => Kind::Max,
        1 => Kind::Min,
        _ => Kind::Sum,
    };
    // SAFETY: forwarded.
    unsafe { plane(x, out, &g, kind, lanes()) }
}

/// What a window computes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Max,
    Min,
    Sum,
}

/// # Safety
/// As [`kiln_pool2d_plane`]; `lanes` (1, 8 or 16) at most what the CPU runs.
unsafe fn plane(x: *const f32, out: *mut f32, g: &Geometry, kind: Kind, lanes: usize) {
    if g.oh <= 0 || g.ow <= 0 {
        return;
    }
    let fill = match kind {
        Kind::Max => f32::NEG_INFINITY,
        Kind::Min => f32::INFINITY,
        Kind::Sum => 0.0,
    };
    let mut buf = take_padded();
    // SAFETY: forwarded.
    let cols = unsafe { padded(x, g, fill, &mut buf) };
    // The offset of each tap's input for output (0, 0), window row by row.
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
            unsafe { avx512::row(p.add(base), &taps, row, g.ow, g.sw, kind) };
            ox = g.ow;
        } else if lanes >= 8 && (g.sw == 1 || g.sw == 2) && g.ow >= 8 {
            // SAFETY: the host has AVX2; as above.
            unsafe { avx2::row(p.add(base), &taps, row, g.ow, g.sw, kind) };
            ox = g.ow;
        }
        let _ = lanes;
        while ox < g.ow {
            // SAFETY: every tap is inside the copy.
            let tap = |off: usize| unsafe { *p.add(base + off + (ox * g.sw) as usize) };
            let v = match kind {
                Kind::Sum => taps
                    .iter()
                    .fold(0f64, |acc, &off| acc + f64::from(tap(off)))
                    as f32,
                _ => taps
                    .iter()
                    .fold(fill, |acc, &off| pick(acc, tap(off), kind == Kind::Min)),
            };
            // SAFETY: `ox < ow`.
            unsafe { *row.add(ox as usize) = v };
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
    use super::Kind;
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
        kind: Kind,
    ) {
        let (ow, s) = (ow as usize, s as usize);
        let mut ox = 0;
        while ox < ow {
            let at = ox.min(ow - 16);
            // SAFETY: the taps are inside the copy; outputs at..at+16 inside the row.
            unsafe {
                let v = match kind {
                    Kind::Sum => sum(x.add(at * s), taps, s),
                    _ => extreme(x.add(at * s), taps, s, kind == Kind::Min),
                };
                _mm512_storeu_ps(row.add(at), v);
            }
            ox += 16;
        }
    }

    /// The maximum (minimum with `min`) of 16 outputs' taps.
    ///
    /// # Safety
    /// AVX-512F available; the taps readable from `x`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn extreme(x: *const f32, taps: &[usize], s: usize, min: bool) -> __m512 {
        let mut acc = _mm512_set1_epi32(if min { i32::MAX } else { i32::MIN });
        let mut nan: __mmask16 = 0;
        for &off in taps {
            // SAFETY: the taps are inside the copy.
            let v = unsafe { load(x.add(off), s) };
            nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            acc = if min {
                _mm512_min_epi32(acc, key(v))
            } else {
                _mm512_max_epi32(acc, key(v))
            };
        }
        // Keys back to floats (the map is its own inverse), NaN where a tap was.
        let back = _mm512_castsi512_ps(key(_mm512_castsi512_ps(acc)));
        _mm512_mask_mov_ps(back, nan, _mm512_set1_ps(f32::NAN))
    }

    /// The sum of 16 outputs' taps, in f64 in tap order.
    ///
    /// # Safety
    /// AVX-512F available; the taps readable from `x`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn sum(x: *const f32, taps: &[usize], s: usize) -> __m512 {
        let (mut lo, mut hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        for &off in taps {
            // SAFETY: the taps are inside the copy.
            let v = unsafe { load(x.add(off), s) };
            lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
            let upper = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            hi = _mm512_add_pd(hi, _mm512_cvtps_pd(upper));
        }
        let (lo, hi) = (_mm512_cvtpd_ps(lo), _mm512_cvtpd_ps(hi));
        // The two halves joined with AVX-512F alone (`insertf32x8` is AVX512DQ).
        let joined = _mm512_insertf64x4::<1>(
            _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
            _mm256_castps_pd(hi),
        );
        _mm512_castpd_ps(joined)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::conv::avx2::load;
    use super::super::rows::avx2::key;
    use super::Kind;
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
        kind: Kind,
    ) {
        let (ow, s) = (ow as usize, s as usize);
        let mut ox = 0;
        while ox < ow {
            let at = ox.min(ow - 8);
            // SAFETY: the taps are inside the copy; outputs at..at+8 inside the row.
            unsafe {
                let v = match kind {
                    Kind::Sum => sum(x.add(at * s), taps, s),
                    _ => extreme(x.add(at * s), taps, s, kind == Kind::Min),
                };
                _mm256_storeu_ps(row.add(at), v);
            }
            ox += 8;
        }
    }

    /// The maximum (minimum with `min`) of 8 outputs' taps.
    ///
    /// # Safety
    /// AVX2 available; the taps readable from `x`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn extreme(x: *const f32, taps: &[usize], s: usize, min: bool) -> __m256 {
        let mut acc = _mm256_set1_epi32(if min { i32::MAX } else { i32::MIN });
        let mut nan = _mm256_setzero_ps();
        for &off in taps {
            // SAFETY: the taps are inside the copy; the host has AVX2.
            let (v, k) = unsafe {
                let v = load(x.add(off), s);
                (v, key(v))
            };
            nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            acc = if min {
                _mm256_min_epi32(acc, k)
            } else {
                _mm256_max_epi32(acc, k)
            };
        }
        // Keys back to floats (the map is its own inverse), NaN where a tap was.
        // SAFETY: the host has AVX2.
        let back = _mm256_castsi256_ps(unsafe { key(_mm256_castsi256_ps(acc)) });
        _mm256_blendv_ps(back, _mm256_set1_ps(f32::NAN), nan)
    }

    /// The sum of 8 outputs' taps, in f64 in tap order.
    ///
    /// # Safety
    /// AVX2 available; the taps readable from `x`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn sum(x: *const f32, taps: &[usize], s: usize) -> __m256 {
        let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        for &off in taps {
            // SAFETY: the taps are inside the copy.
            let v = unsafe { load(x.add(off), s) };
            lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
            hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)));
        }
        let (lo, hi) = (_mm256_cvtpd_ps(lo), _mm256_cvtpd_ps(hi));
        _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(lo), hi)
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
            for kind in [Kind::Max, Kind::Min, Kind::Sum] {
                let min = kind == Kind::Min;
                let mut want = vec![0f32; (oh * ow) as usize];
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = if min {
                            f32::INFINITY
                        } else {
                            f32::NEG_INFINITY
                        };
                        let mut sum = 0f64;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (iy, ix) = (oy * sh + ky * dh - ph, ox * sw + kx * dw - pw);
                                if iy >= 0 && iy < h && ix >= 0 && ix < w {
                                    let v = x[(iy * w + ix) as usize];
                                    acc = pick(acc, v, min);
                                    sum += f64::from(v);
                                }
                            }
                        }
                        want[(oy * ow + ox) as usize] =
                            if kind == Kind::Sum { sum as f32 } else { acc };
                    }
                }
                for lanes in [1, 8, 16].into_iter().filter(|&n| n <= lanes()) {
                    let mut out = vec![1.5f32; (oh * ow) as usize];
                    // SAFETY: buffers sized for the geometry; `lanes` run on this CPU.
                    unsafe { plane(x.as_ptr(), out.as_mut_ptr(), &g, kind, lanes) };
                    for (i, (o, r)) in out.iter().zip(&want).enumerate() {
                        assert!(
                            o.to_bits() == r.to_bits() || (o.is_nan() && r.is_nan()),
                            "{g:?} {kind:?} lanes={lanes} at {i}: {o} vs {r}"
                        );
                    }
                }
            }
        }
    }
}
