//! Products of few rows (matrix-vector shapes, recurrent steps, decode): rows of A held against
//! B streamed once — along its contiguous rows, or its panels packed ahead of time — in
//! registers over the whole contraction, AVX-512 and AVX2 bodies chosen at run time.

use super::*;

/// Few rows of A: stream B once per row, along its contiguous axis.
pub(super) unsafe fn thin(a: Mat, b: Mat, c: *mut f32, ldc: usize, m: usize, n: usize, k: usize) {
    if b.cs == 1 {
        // Columns split over the helpers (in multiples of 16) only for large products (4M
        // MACs): below that, splitting measured slower on this 2-core machine (lstm's step
        // products at 2 threads 0.72 -> 0.52 ms per run with the threshold raised from 64K).
        let t = if m * n * k >= SMALL_PATH_SPLIT {
            (crate::threads::helpers() + 1).min(n / 16).max(1)
        } else {
            1
        };
        let c_addr = c as usize;
        crate::threads::parallel_for(t, |w| {
            let (j0, j1) = (
                n / 16 * w / t * 16,
                if w + 1 == t {
                    n
                } else {
                    n / 16 * (w + 1) / t * 16
                },
            );
            let b = b.columns_from(j0);
            let c = (c_addr as *mut f32).wrapping_add(j0);
            let w = j1 - j0;
            // SAFETY: forwarded from the caller; each part writes its own columns.
            unsafe {
                match (m, crate::avx2_fma()) {
                    (1, true) => thin_rows_avx::<1>(a, b, c, ldc, w, k),
                    (2, true) => thin_rows_avx::<2>(a, b, c, ldc, w, k),
                    (3, true) => thin_rows_avx::<3>(a, b, c, ldc, w, k),
                    (4, true) => thin_rows_avx::<4>(a, b, c, ldc, w, k),
                    (1, false) => thin_rows::<1>(a, b, c, ldc, w, k),
                    (2, false) => thin_rows::<2>(a, b, c, ldc, w, k),
                    (3, false) => thin_rows::<3>(a, b, c, ldc, w, k),
                    _ => thin_rows::<4>(a, b, c, ldc, w, k),
                }
            }
        });
        return;
    }
    for i in 0..m {
        // SAFETY: row i of c holds n elements.
        let out = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), n) };
        // c[i, j] = a[i, :] · b[:, j], columns of B contiguous; eight partial sums.
        let arow: Vec<f32> = (0..k).map(|l| unsafe { a.at(i, l) }).collect();
        for (j, o) in out.iter_mut().enumerate() {
            // SAFETY: column j of b holds k contiguous elements.
            let col = unsafe { std::slice::from_raw_parts(b.p.offset(j as isize * b.cs), k) };
            let mut acc = [0f32; 8];
            let chunks = k / 8 * 8;
            for l in (0..chunks).step_by(8) {
                for t in 0..8 {
                    acc[t] += arow[l + t] * col[l + t];
                }
            }
            let mut sum = acc.iter().sum::<f32>();
            for l in chunks..k {
                sum += arow[l] * col[l];
            }
            *o = sum;
        }
    }
}

/// `c = a · b` with B packed by [`pack_b`]: rows of A four at a time against each panel of NR
/// columns, held in registers over the whole contraction (each element sums over l in order);
/// panels split over the helpers when there is enough work.
///
/// # Safety
/// As [`kiln_sgemm_packed`] with a non-null `bp`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn thin_packed(
    a: Mat,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    m: usize,
    n: usize,
    k: usize,
    epi: &Epilogue,
) {
    let panels = n.div_ceil(NR);
    let t = if m * n * k >= SMALL_PATH_SPLIT {
        (crate::threads::helpers() + 1).min(panels).max(1)
    } else {
        1
    };
    let (bp_addr, c_addr) = (bp as usize, c as usize);
    crate::threads::parallel_for(t, |w| {
        let (p0, p1) = (panels * w / t, panels * (w + 1) / t);
        for r0 in (0..m).step_by(4) {
            let part = PackedRows {
                a: a.rows_from(r0),
                bp: bp_addr as *const f32,
                c: (c_addr as *mut f32).wrapping_add(r0 * ldc),
                ldc,
                n,
                k,
            };
            // The epilogue of these rows: in registers as they are stored (16 lanes), else a
            // pass over the part's block of C.
            let e = epi.from(r0, 0, r0 * ldc);
            let e = (!e.is_none()).then_some(&e);
            // SAFETY: forwarded from the caller; each part writes the columns of its panels.
            unsafe {
                if wide() {
                    match (m - r0).min(4) {
                        1 => thin_packed_avx512::<1, 8>(part, p0, p1, e),
                        2 => thin_packed_avx512::<2, 4>(part, p0, p1, e),
                        3 => thin_packed_avx512::<3, 4>(part, p0, p1, e),
                        _ => thin_packed_avx512::<4, 4>(part, p0, p1, e),
                    }
                    continue;
                }
                let (j0, j1) = (p0 * NR, (p1 * NR).min(n));
                let block = |e: &Epilogue| {
                    let c = (c_addr as *mut f32).wrapping_add(r0 * ldc + j0);
                    e.block_at((0, j0, j0), c, ldc, (m - r0).min(4), j1 - j0)
                };
                match ((m - r0).min(4), crate::avx2_fma()) {
                    (1, true) => thin_packed_avx::<1>(part, p0, p1),
                    (2, true) => thin_packed_avx::<2>(part, p0, p1),
                    (3, true) => thin_packed_avx::<3>(part, p0, p1),
                    (_, true) => thin_packed_avx::<4>(part, p0, p1),
                    (1, false) => thin_packed_body::<1>(part, p0, p1),
                    (2, false) => thin_packed_body::<2>(part, p0, p1),
                    (3, false) => thin_packed_body::<3>(part, p0, p1),
                    _ => thin_packed_body::<4>(part, p0, p1),
                }
                if let Some(e) = e {
                    block(e);
                }
            }
        }
    });
}

/// Rows of a product against a packed B: `c = a · b`, C's rows `ldc` apart, B `k`×`n`.
#[derive(Clone, Copy)]
struct PackedRows {
    a: Mat,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    n: usize,
    k: usize,
}

/// `M` rows of a [`PackedRows`] product over the packed panels `p0..p1` of B.
///
/// # Safety
/// As [`thin_packed`]; `M` rows of A and C.
#[inline(always)]
unsafe fn thin_packed_body<const M: usize>(t: PackedRows, p0: usize, p1: usize) {
    let PackedRows {
        a,
        bp,
        c,
        ldc,
        n,
        k,
    } = t;
    let panels = n.div_ceil(NR);
    for p in p0..p1 {
        let j0 = p * NR;
        let w = NR.min(n - j0);
        let mut acc = [[0f32; NR]; M];
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            // SAFETY: block pc holds `panels` panels of kc rows of NR values (see `pack_b`).
            let panel = unsafe {
                std::slice::from_raw_parts(bp.add(pc * panels * NR + p * NR * kc), NR * kc)
            };
            for (l, bv) in panel.chunks_exact(NR).enumerate() {
                for (i, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: (i, pc + l) is inside A.
                    let av = unsafe { a.at(i, pc + l) };
                    for (x, &y) in acc.iter_mut().zip(bv) {
                        *x = av.mul_add(y, *x);
                    }
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            // SAFETY: row i of c holds n elements.
            let out = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc + j0), w) };
            out.copy_from_slice(&acc[..w]);
        }
    }
}

/// [`thin_packed_body`] with AVX2 and FMA: a panel's 16 columns of `M` rows in 2·M registers
/// over the whole contraction (the same fused multiply-adds in the same order).
///
/// # Safety
/// As [`thin_packed_body`]; the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn thin_packed_avx<const M: usize>(t: PackedRows, p0: usize, p1: usize) {
    use std::arch::x86_64::*;
    let PackedRows {
        a,
        bp,
        c,
        ldc,
        n,
        k,
    } = t;
    let panels = n.div_ceil(NR);
    for p in p0..p1 {
        let j0 = p * NR;
        let w = NR.min(n - j0);
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            // SAFETY: block pc holds `panels` panels of kc rows of NR values (see `pack_b`);
            // (i, pc + l) is inside A.
            unsafe {
                let panel = bp.add(pc * panels * NR + p * NR * kc);
                for l in 0..kc {
                    let row = panel.add(l * NR);
                    let (b0, b1) = (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8)));
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let av = _mm256_set1_ps(a.at(i, pc + l));
                        acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                        acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                    }
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            let mut tile = [0f32; NR];
            // SAFETY: the tile holds NR values; row i of c holds n elements from j0 + w.
            unsafe {
                _mm256_storeu_ps(tile.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(tile.as_mut_ptr().add(8), acc[1]);
                std::ptr::copy_nonoverlapping(tile.as_ptr(), c.add(i * ldc + j0), w);
            }
        }
    }
}

/// [`thin_packed_body`] in 16-lane registers: `P` panels of `M` rows at a time (one register
/// per row and panel, `M·P` independent accumulators over the whole contraction, the same
/// fused multiply-adds in the same order as the AVX2 path), then the panels left one by one.
///
/// # Safety
/// As [`thin_packed_body`]; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn thin_packed_avx512<const M: usize, const P: usize>(
    t: PackedRows,
    p0: usize,
    p1: usize,
    epi: Option<&Epilogue>,
) {
    let mut p = p0;
    // Whole groups of P panels, then the rest one at a time: each a kernel of its own, so the
    // panel count is a constant and the accumulators stay in registers (with a group size
    // known only at run time they lived on the stack, a load and a store per multiply-add).
    while p + P <= p1 {
        // SAFETY: forwarded; panels p..p + P are inside B.
        unsafe { thin_panels_avx512::<M, P>(t, p, epi) };
        p += P;
    }
    while p < p1 {
        // SAFETY: as above, panel p.
        unsafe { thin_panels_avx512::<M, 1>(t, p, epi) };
        p += 1;
    }
}

/// How many steps of k ahead the few-row products prefetch their B panels: each B vector
/// serves only M ≤ 4 multiply-adds, so a product over a B from L2 waits on its loads
/// (4 rows by 512×512: 110 → 133 GFLOP/s on a Xeon with AVX-512; 4 to 32 steps ahead all
/// gain, 8 the most).
const PREFETCH: usize = 8;

/// Panels `p..p + P` of a [`thin_packed_avx512`] product.
///
/// # Safety
/// As [`thin_packed_avx512`]; panels `p..p + P` are inside B.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn thin_panels_avx512<const M: usize, const P: usize>(
    t: PackedRows,
    p: usize,
    epi: Option<&Epilogue>,
) {
    use std::arch::x86_64::*;
    let PackedRows {
        a,
        bp,
        c,
        ldc,
        n,
        k,
    } = t;
    let panels = n.div_ceil(NR);
    // One flat array indexed by constants once the loops unroll (see `micro_avx512`).
    let mut acc = [_mm512_setzero_ps(); 32];
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        // SAFETY: block pc holds `panels` panels of kc rows of NR values (see `pack_b`);
        // (i, pc + l) is inside A.
        unsafe {
            let first = bp.add(pc * panels * NR + p * NR * kc);
            for l in 0..kc {
                let mut bv = [_mm512_setzero_ps(); P];
                for (q, v) in bv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(first.add(q * NR * kc + l * NR));
                    let ahead = first.wrapping_add(q * NR * kc + (l + PREFETCH) * NR);
                    _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                }
                for i in 0..M {
                    let av = _mm512_set1_ps(a.at(i, pc + l));
                    for q in 0..P {
                        acc[i * P + q] = _mm512_fmadd_ps(av, bv[q], acc[i * P + q]);
                    }
                }
            }
        }
    }
    for q in 0..P {
        let j0 = (p + q) * NR;
        let w = NR.min(n - j0);
        let m = ((1u32 << w) - 1) as u16;
        for i in 0..M {
            // SAFETY: row i of c holds the w columns from j0 (as the residual does; row i
            // and those columns are inside the epilogue's operands).
            unsafe {
                let mut v = acc[i * P + q];
                if let Some(e) = epi {
                    let st = epilogue::avx512::coefs(e, i, j0, m);
                    v = epilogue::avx512::apply(e, v, st, e.res.wrapping_add(i * ldc + j0), m);
                }
                _mm512_mask_storeu_ps(c.add(i * ldc + j0), m, v)
            };
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn thin_packed_avx512<const M: usize, const P: usize>(
    _: PackedRows,
    _: usize,
    _: usize,
    _: Option<&Epilogue>,
) {
    unreachable!("only called when the CPU has AVX-512")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn thin_packed_avx<const M: usize>(t: PackedRows, p0: usize, p1: usize) {
    // SAFETY: forwarded.
    unsafe { thin_packed_body::<M>(t, p0, p1) }
}

/// `M` rows of `c = a · b` with B's rows contiguous: 16 columns at a time held in registers
/// over the whole contraction (each element sums over l in order).
///
/// # Safety
/// As [`sgemm`], with `b.cs == 1`.
#[inline(always)]
unsafe fn thin_rows_body<const M: usize>(
    a: Mat,
    b: Mat,
    c: *mut f32,
    ldc: usize,
    n: usize,
    k: usize,
) {
    const W: usize = 16;
    let mut j0 = 0;
    while j0 < n {
        let w = W.min(n - j0);
        let mut acc = [[0f32; W]; M];
        for l in 0..k {
            // SAFETY: row l of B holds n contiguous elements from its start.
            let row = unsafe { b.p.offset(l as isize * b.rs).add(j0) };
            let mut bv = [0f32; W];
            if w == W {
                // SAFETY: W elements of the row from j0.
                bv.copy_from_slice(unsafe { std::slice::from_raw_parts(row, W) });
            } else {
                // SAFETY: w elements of the row from j0.
                bv[..w].copy_from_slice(unsafe { std::slice::from_raw_parts(row, w) });
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: (i, l) is inside A.
                let av = unsafe { a.at(i, l) };
                for (x, &y) in acc.iter_mut().zip(&bv) {
                    *x = av.mul_add(y, *x);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            // SAFETY: row i of c holds n elements.
            let out = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc + j0), w) };
            out.copy_from_slice(&acc[..w]);
        }
        j0 += W;
    }
}

/// [`thin_rows_body`] with AVX2 and FMA: 16 columns of `M` rows in 2·M registers over the
/// whole contraction; the last columns through the portable body.
///
/// # Safety
/// As [`thin_rows_body`]; the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn thin_rows_avx<const M: usize>(
    a: Mat,
    b: Mat,
    c: *mut f32,
    ldc: usize,
    n: usize,
    k: usize,
) {
    use std::arch::x86_64::*;
    let full = n / 16 * 16;
    let mut j0 = 0;
    while j0 < full {
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        for l in 0..k {
            // SAFETY: row l of B holds n contiguous elements; j0 + 16 <= n; (i, l) is in A.
            unsafe {
                let row = b.p.offset(l as isize * b.rs).add(j0);
                let (b0, b1) = (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8)));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_ps(a.at(i, l));
                    acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            // SAFETY: row i of c holds n elements; j0 + 16 <= n.
            unsafe {
                let d = c.add(i * ldc + j0);
                _mm256_storeu_ps(d, acc[0]);
                _mm256_storeu_ps(d.add(8), acc[1]);
            }
        }
        j0 += 16;
    }
    if full < n {
        let b = Mat {
            p: b.p.wrapping_add(full),
            ..b
        };
        let rest = n - full;
        // The last columns: a product of width `rest` written with row stride n.
        for i in 0..M {
            for j in 0..rest {
                let mut s = 0f32;
                for l in 0..k {
                    // SAFETY: inside A and B.
                    s = unsafe { a.at(i, l) }.mul_add(unsafe { b.at(l, j) }, s);
                }
                // SAFETY: (i, full + j) is inside c.
                unsafe { *c.add(i * ldc + full + j) = s };
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn thin_rows_avx<const M: usize>(
    a: Mat,
    b: Mat,
    c: *mut f32,
    ldc: usize,
    n: usize,
    k: usize,
) {
    // SAFETY: forwarded.
    unsafe { thin_rows_body::<M>(a, b, c, ldc, n, k) }
}

/// [`thin_rows_body`] for any CPU.
///
/// # Safety
/// As [`thin_rows_body`].
unsafe fn thin_rows<const M: usize>(a: Mat, b: Mat, c: *mut f32, ldc: usize, n: usize, k: usize) {
    // SAFETY: forwarded.
    unsafe { thin_rows_body::<M>(a, b, c, ldc, n, k) }
}
