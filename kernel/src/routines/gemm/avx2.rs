//! The products' AVX2 micro-kernel: 6 rows of A by 16 columns of B (two 8-lane halves) over
//! a block of steps, stored through the epilogue (a quick store where it takes the decisions
//! once), the same sums as the AVX-512 tiles'.

use super::*;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn micro_avx2<const PACKED: bool>(
    kc: usize,
    a: ARows,
    b: *const f32,
    bs: usize,
    out: Out<'_>,
) {
    use std::arch::x86_64::*;
    let bs = if PACKED { NR } else { bs };
    let mut c = [[_mm256_setzero_ps(); 2]; MR];
    let ARows { p: a, row, step } = a;
    for kk in 0..kc {
        // SAFETY: the A rows hold kc steps; the B panel kc steps of NR values, `bs` apart.
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(kk * bs));
            let b1 = _mm256_loadu_ps(b.add(kk * bs + 8));
            for (ii, acc) in c.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(ii * row + kk * step));
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
        }
    }
    let Out {
        p,
        ld,
        add,
        rows,
        cols,
        epi,
        ..
    } = out;
    if let (NR, Some((e, Some(clamp)))) = (cols, epi.map(|e| (e, e.0.quick()))) {
        let c = &c[..rows.min(MR)];
        // SAFETY: forwarded.
        return unsafe {
            match (clamp, e.0.res.is_null()) {
                (false, true) => store_quick_avx2::<false, false>(c, (p, ld), add, e),
                (false, false) => store_quick_avx2::<false, true>(c, (p, ld), add, e),
                (true, true) => store_quick_avx2::<true, false>(c, (p, ld), add, e),
                (true, false) => store_quick_avx2::<true, true>(c, (p, ld), add, e),
            }
        };
    }
    if cols == NR {
        let all = _mm256_set1_epi32(-1);
        for (ii, row) in c.iter().enumerate().take(rows) {
            // SAFETY: the destination (and the residual, laid out alike) holds `rows` rows of
            // NR values `ld` apart; row ii is inside the epilogue's per-row operands.
            unsafe {
                let d = p.add(ii * ld);
                let (mut r0, mut r1) = (row[0], row[1]);
                if add {
                    r0 = _mm256_add_ps(r0, _mm256_loadu_ps(d));
                    r1 = _mm256_add_ps(r1, _mm256_loadu_ps(d.add(8)));
                }
                if let Some((e, (i0, j0, a0))) = epi {
                    let r = e.res.wrapping_add(a0 + ii * ld);
                    let st = epilogue::avx2::coefs(e, i0 + ii, j0, all);
                    r0 = epilogue::avx2::apply(e, r0, st, r, all);
                    let st = epilogue::avx2::coefs(e, i0 + ii, j0 + 8, all);
                    r1 = epilogue::avx2::apply(e, r1, st, r.wrapping_add(8), all);
                }
                _mm256_storeu_ps(d, r0);
                _mm256_storeu_ps(d.add(8), r1);
            }
        }
        return;
    }
    // Fewer columns: masked loads and stores of each half.
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let masks = [
        _mm256_cmpgt_epi32(_mm256_set1_epi32(cols.min(8) as i32), lane),
        _mm256_cmpgt_epi32(_mm256_set1_epi32(cols.saturating_sub(8) as i32), lane),
    ];
    for (ii, row) in c.iter().enumerate().take(rows) {
        for (h, (&r, &m)) in row.iter().zip(&masks).enumerate() {
            // SAFETY: the masks select the `cols` columns inside the destination (and the
            // residual, laid out alike); row ii is inside the epilogue's per-row operands.
            unsafe {
                let at = ii * ld + 8 * h;
                let d = p.add(at);
                let mut r = if add {
                    _mm256_add_ps(r, _mm256_maskload_ps(d, m))
                } else {
                    r
                };
                if let Some((e, (i0, j0, a0))) = epi {
                    let st = epilogue::avx2::coefs(e, i0 + ii, j0 + 8 * h, m);
                    r = epilogue::avx2::apply(e, r, st, e.res.wrapping_add(a0 + at), m);
                }
                _mm256_maskstore_ps(d, m, r);
            }
        }
    }
}

/// [`micro_avx2`]'s full-width rows `c` (to `p`, rows `ld` apart, accumulated into with
/// `add`) through an epilogue [`Epilogue::quick`] takes (`CLAMP` its answer, `RES` whether it
/// has a residual): the same bits as `apply`, decided once a tile.
///
/// # Safety
/// As [`micro_avx2`]'s store: the rows of NR values inside C (and the residual), and inside
/// the epilogue's per-row operands.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_quick_avx2<const CLAMP: bool, const RES: bool>(
    c: &[[std::arch::x86_64::__m256; 2]],
    (p, ld): (*mut f32, usize),
    add: bool,
    (e, (i0, j0, a0)): (&Epilogue, super::Tile),
) {
    use epilogue::avx2::{coefs, quick_bounds, quick_coefs, quick_one};
    use std::arch::x86_64::*;
    // SAFETY: the CPU has AVX2; the rows are inside C, the residual and the operands.
    unsafe {
        let (all, bounds, none) = (_mm256_set1_epi32(-1), quick_bounds(e), (None, None, None));
        // Per-column coefficients, a half's lanes (unused for per-row ones).
        let per_col = [0, 8].map(|j| {
            quick_coefs(if e.cols {
                coefs(e, i0, j0 + j, all)
            } else {
                none
            })
        });
        for (ii, row) in c.iter().enumerate() {
            let d = p.add(ii * ld);
            let r = e.res.wrapping_add(a0 + ii * ld);
            let per_row = quick_coefs(if e.cols {
                none
            } else {
                coefs(e, i0 + ii, j0, all)
            });
            for (h, (&v, &st)) in row.iter().zip(&per_col).enumerate() {
                let d = d.add(8 * h);
                let v = if add {
                    _mm256_add_ps(v, _mm256_loadu_ps(d))
                } else {
                    v
                };
                let st = if e.cols { st } else { per_row };
                let x = quick_one::<CLAMP, RES>(v, st, bounds, r.wrapping_add(8 * h));
                _mm256_storeu_ps(d, x);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn micro_avx2<const PACKED: bool>(
    _: usize,
    _: ARows,
    _: *const f32,
    _: usize,
    _: Out<'_>,
) {
    unreachable!("only called when the CPU has AVX2")
}
