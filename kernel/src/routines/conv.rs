//! Direct 2-D convolution of one f32 plane by one filter plane, for the `conv2d` routine (depthwise
//! convs): the plane is copied into a zero-padded per-thread buffer, then every output row
//! sums its taps without bounds checks (AVX2 and FMA blocks of 32 and 8 outputs for unit or
//! double strides when the CPU has them; scalar otherwise). Each output sums its taps in
//! (ky, kx) order.

/// The shape of a plane convolution: input `h×w`, output `oh×ow`, filter `kh×kw`, strides,
/// dilations and the padding before the first row and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Geometry {
    pub h: i64,
    pub w: i64,
    pub oh: i64,
    pub ow: i64,
    pub kh: i64,
    pub kw: i64,
    pub sh: i64,
    pub sw: i64,
    pub dh: i64,
    pub dw: i64,
    pub ph: i64,
    pub pw: i64,
}

/// `out[oy·ow + ox] = Σ_{ky,kx} x[iy·w + ix] · k[ky·kw + kx]` over taps with `iy = oy·sh +
/// ky·dh - ph` and `ix = ox·sw + kx·dw - pw` inside the input.
///
/// # Safety
/// `x` must be readable for `h·w` elements, `k` for `kh·kw`, `out` writable for `oh·ow` and
/// not overlapping them; every extent nonnegative and strides and dilations positive.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_conv2d_plane(
    x: *const f32,
    k: *const f32,
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
) {
    let g = Geometry {
        h,
        w,
        oh,
        ow,
        kh,
        kw,
        sh,
        sw,
        dh,
        dw,
        ph,
        pw,
    };
    // SAFETY: forwarded.
    unsafe { plane(x, k, out, &g, crate::avx2_fma()) }
}

/// # Safety
/// As [`kiln_conv2d_plane`]; `vector` only where AVX2 and FMA are available.
unsafe fn plane(x: *const f32, k: *const f32, out: *mut f32, g: &Geometry, vector: bool) {
    if g.oh <= 0 || g.ow <= 0 {
        return;
    }
    // A zero-padded copy of the plane (per thread, reused) so that every tap of every output
    // is inside it; rows are 16 elements longer than any tap reaches (stride-2 vector loads
    // read one past their last tap).
    let (ph, pw) = (g.ph.max(0), g.pw.max(0));
    let rows = (g.h + ph).max((g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1);
    let cols = (g.w + pw).max((g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1) + 16;
    thread_local! {
        static PADDED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut buf = PADDED.with(|b| b.take());
    let (rows_u, cols_u) = (rows as usize, cols as usize);
    buf.clear();
    buf.resize(rows_u * cols_u, 0.0);
    // Input rows and columns that land in the copy (a negative pad drops some).
    let (y0, x0) = ((-g.ph).max(0), (-g.pw).max(0));
    for y in y0..g.h {
        if x0 >= g.w {
            break;
        }
        let dst = ((y + g.ph) * cols + x0 + g.pw) as usize;
        let n = (g.w - x0) as usize;
        // SAFETY: row `y` of the input has `w` elements from column `x0`.
        let src = unsafe { std::slice::from_raw_parts(x.add((y * g.w + x0) as usize), n) };
        buf[dst..dst + n].copy_from_slice(src);
    }
    // (offset of the tap's input for output (0, 0), weight), per tap.
    let taps: Vec<(usize, f32)> = (0..g.kh * g.kw)
        .map(|t| {
            let (ky, kx) = (t / g.kw, t % g.kw);
            // SAFETY: `t < kh·kw`.
            let wt = unsafe { *k.add(t as usize) };
            ((ky * g.dh * cols + kx * g.dw) as usize, wt)
        })
        .collect();
    let p = buf.as_ptr();
    for oy in 0..g.oh {
        let base = (oy * g.sh * cols) as usize;
        // SAFETY: the row is inside `out`.
        let row = unsafe { out.add((oy * g.ow) as usize) };
        let mut ox = 0;
        #[cfg(target_arch = "x86_64")]
        if vector && (g.sw == 1 || g.sw == 2) && g.ow >= 8 {
            // SAFETY: the host has AVX2 and FMA; every tap of the row is inside the copy,
            // with 16 elements to spare.
            unsafe { avx2::row(p.add(base), &taps, row, g.ow, g.sw) };
            ox = g.ow;
        }
        let _ = vector;
        while ox < g.ow {
            let mut acc = 0.0f32;
            for &(off, wt) in &taps {
                // SAFETY: every tap is inside the copy.
                acc += unsafe { *p.add(base + off + (ox * g.sw) as usize) } * wt;
            }
            // SAFETY: `ox < ow`.
            unsafe { *row.add(ox as usize) = acc };
            ox += 1;
        }
    }
    PADDED.with(|b| b.set(buf));
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Eight inputs `p[0], p[s], …, p[7s]` for a stride `s` of 1 or 2.
    #[inline(always)]
    unsafe fn load(p: *const f32, s: usize) -> __m256 {
        unsafe {
            if s == 1 {
                _mm256_loadu_ps(p)
            } else {
                let a = _mm256_loadu_ps(p);
                let b = _mm256_loadu_ps(p.add(8));
                // [a0 a2 b0 b2 | a4 a6 b4 b6] → [a0 a2 a4 a6 b0 b2 b4 b6]
                let e = _mm256_shuffle_ps::<0x88>(a, b);
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(e)))
            }
        }
    }

    /// Computes the `ow >= 8` outputs of a row in blocks of 32 and 8, and a last block that
    /// ends at `ow` (redoing a few columns).
    ///
    /// # Safety
    /// AVX2 and FMA available; every tap of the row readable with 16 elements to spare.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row(x: *const f32, taps: &[(usize, f32)], row: *mut f32, ow: i64, s: i64) {
        let (ow, s) = (ow as usize, s as usize);
        let mut ox = 0;
        unsafe {
            while ox + 32 <= ow {
                let mut acc = [_mm256_setzero_ps(); 4];
                for &(off, wt) in taps {
                    let wv = _mm256_set1_ps(wt);
                    let p = x.add(off + ox * s);
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(load(p.add(8 * j * s), s), wv, *a);
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(row.add(ox + 8 * j), *a);
                }
                ox += 32;
            }
            let block = |ox: usize| {
                let mut acc = _mm256_setzero_ps();
                for &(off, wt) in taps {
                    let p = x.add(off + ox * s);
                    acc = _mm256_fmadd_ps(load(p, s), _mm256_set1_ps(wt), acc);
                }
                _mm256_storeu_ps(row.add(ox), acc);
            };
            while ox + 8 <= ow {
                block(ox);
                ox += 8;
            }
            if ox < ow {
                block(ow - 8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, in f64.
    fn reference(x: &[f32], k: &[f32], g: &Geometry) -> Vec<f64> {
        let mut out = vec![0.0; (g.oh * g.ow) as usize];
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut acc = 0.0f64;
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let (iy, ix) = (oy * g.sh + ky * g.dh - g.ph, ox * g.sw + kx * g.dw - g.pw);
                        if iy >= 0 && iy < g.h && ix >= 0 && ix < g.w {
                            acc += x[(iy * g.w + ix) as usize] as f64
                                * k[(ky * g.kw + kx) as usize] as f64;
                        }
                    }
                }
                out[(oy * g.ow + ox) as usize] = acc;
            }
        }
        out
    }

    fn geometry(
        h: i64,
        w: i64,
        kh: i64,
        kw: i64,
        s: (i64, i64),
        d: (i64, i64),
        p: [i64; 4],
    ) -> Geometry {
        let oh = (h + p[0] + p[2] - (kh - 1) * d.0 - 1) / s.0 + 1;
        let ow = (w + p[1] + p[3] - (kw - 1) * d.1 - 1) / s.1 + 1;
        Geometry {
            h,
            w,
            oh: oh.max(0),
            ow: ow.max(0),
            kh,
            kw,
            sh: s.0,
            sw: s.1,
            dh: d.0,
            dw: d.1,
            ph: p[0],
            pw: p[1],
        }
    }

    #[test]
    fn matches_the_definition_on_both_paths() {
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let cases = [
            geometry(112, 112, 3, 3, (1, 1), (1, 1), [1, 1, 1, 1]),
            geometry(112, 112, 3, 3, (2, 2), (1, 1), [1, 1, 1, 1]),
            geometry(14, 14, 3, 3, (2, 2), (1, 1), [0, 1, 1, 1]),
            geometry(9, 70, 5, 5, (1, 1), (2, 2), [2, 2, 2, 2]),
            geometry(7, 41, 3, 7, (1, 2), (1, 1), [3, 0, 3, 6]),
            geometry(5, 40, 2, 2, (3, 3), (1, 1), [0, 0, 0, 0]),
            geometry(3, 3, 5, 5, (1, 1), (1, 1), [2, 2, 2, 2]),
            geometry(4, 2, 3, 3, (1, 1), (1, 1), [0, 0, 0, 0]),
            geometry(6, 64, 1, 1, (2, 2), (1, 1), [0, 0, 0, 0]),
            geometry(20, 30, 3, 3, (1, 2), (1, 1), [-1, -2, 0, 1]),
        ];
        for g in cases {
            let x: Vec<f32> = (0..g.h * g.w).map(|_| rnd()).collect();
            let k: Vec<f32> = (0..g.kh * g.kw).map(|_| rnd()).collect();
            let want = reference(&x, &k, &g);
            for vector in [false, crate::avx2_fma()] {
                let mut out = vec![f32::NAN; (g.oh * g.ow) as usize];
                // SAFETY: buffers sized for the geometry; `vector` only with AVX2 and FMA.
                unsafe { plane(x.as_ptr(), k.as_ptr(), out.as_mut_ptr(), &g, vector) };
                for (i, (&o, &r)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (o as f64 - r).abs() <= 1e-5 * (1.0 + r.abs()),
                        "{g:?} vector={vector} at {i}: {o} vs {r}"
                    );
                }
            }
        }
    }
}
