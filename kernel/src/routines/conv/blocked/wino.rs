//! 3×3 stride-1 dense convs on channel-blocked images by Winograd's F(2×2, 3×3), as the
//! plane routine's `winograd` computes them (the same `G`, `Bᵀ` and `Aᵀ`, the same additions
//! in the same order), with the 16 channels of a block in the lanes: per chunk of tile rows
//! (a tile is 2×2 outputs from a 4×4 input patch) the patches' transforms `V_ξ`, then for
//! each of the 16 positions ξ the product `M_ξ = V_ξ · U_ξ` — a pointwise conv over the
//! tiles, run by the blocked routine's own tiles from filter transforms packed after the
//! filters ([`append`]) — then each tile's `Aᵀ M A` through the epilogue. 16 products per
//! channel pair and tile where the direct sum takes 36. Every instruction set gives the
//! same results: the transforms are the same lane-wise additions, the products the blocked
//! tiles' (equal on every ISA), the epilogue the direct path's for each ISA. A tile row whose
//! transforms are not finite (an infinite or NaN input, or an overflow) takes the direct
//! sum, which the plain convolution's definition gives; which rows do depends on the input
//! alone, never on how the rows are split between threads (every tile is computed whole,
//! and stores only the rows asked for).

// The transforms index a tile's 4×4 by position, as their formulas do.
#![allow(clippy::needless_range_loop)]

use super::super::super::epilogue::Epilogue;
use super::{Geometry, Isa, Job, BLOCK};

/// Where the filters' transforms start after the packed filters: their flag (see
/// `pack_filters`), the transforms' flag (1 when they follow), then zeros to a 64-byte line.
pub(super) const AFTER: usize = 16;

/// Whether dense filters of `o` outputs over `c` channels of a blocked input (`gi` = 16) with
/// taps `taps` carry transforms: 3×3 windows, from 32×64 to 256×256 channel-filter pairs.
/// Measured against the direct tiles (one core, 8 rows a call): 64→64 on 32×32 0.80 of
/// their time, 64→64 on 56×56 0.83, 128→128 on 28×28 0.65, 256→256 on 14×14 0.78, 32→64
/// on 56×56 0.86, 64→64 on 8×8 0.82; but 32→32 on 56×56 1.33 (the transforms, which cost
/// per channel and per filter, outweigh products of so few pairs). Wider filters' transforms
/// (4 MiB and more) would stream from memory for few tiles.
pub(super) fn packs(o: usize, c: usize, taps: (usize, usize), gi: usize) -> bool {
    taps == (3, 3) && gi == BLOCK && c.is_multiple_of(BLOCK) && c * o >= 2048 && c * o <= 256 * 256
}

/// Whether a conv of geometry `g` whose filters carry transforms runs by them: unit strides
/// and dilations, no negative padding, and rows of 8 or more outputs.
pub(super) fn applies(g: &Geometry) -> bool {
    (g.kh, g.kw, g.sh, g.sw, g.dh, g.dw) == (3, 3, 1, 1, 1, 1)
        && g.ph >= 0
        && g.pw >= 0
        && g.ow >= 8
}

/// Appends to dense filters packed by `pack_filters` (`p`, ending in their flag) the
/// transforms' flag, and where [`packs`] holds and every transform is finite, the zeros to
/// [`AFTER`] and the transforms: for each ξ, `U_ξ` laid out as the blocked routine's
/// pointwise filters (`[o/16][c/16][16 channels][16 outputs]`).
pub(super) fn append(
    p: &mut Vec<f32>,
    w: &[f32],
    (o, c): (usize, usize),
    taps: (usize, usize),
    gi: usize,
) {
    let at = p.len();
    if !packs(o, c, taps, gi) || p[at - 1] != 0.0 {
        p.push(0.0);
        return;
    }
    // u[(ξ·o + f)·c + ch].
    let u = super::super::winograd::transform_filters(w, o, c);
    if !u.iter().all(|v| v.is_finite()) {
        p.push(0.0);
        return;
    }
    p.push(1.0);
    p.resize(at - 1 + AFTER, 0.0);
    p.reserve(16 * o * c);
    for xi in 0..16 {
        for ob in 0..o / BLOCK {
            for q in 0..c / BLOCK {
                for i in 0..BLOCK {
                    for lane in 0..BLOCK {
                        p.push(u[(xi * o + ob * BLOCK + lane) * c + q * BLOCK + i]);
                    }
                }
            }
        }
    }
}

/// Tile rows a chunk takes: 24 tiles or more where the rows allow (products of too few tiles
/// do not fill the blocked routine's 6-pixel tiles).
pub(super) fn chunk_rows(tw: usize) -> usize {
    24usize.div_ceil(tw)
}

thread_local! {
    /// The chunk's input transforms, products and a block's two output rows, per thread.
    static BUFS: std::cell::Cell<(Vec<f32>, Vec<f32>, Vec<f32>)> =
        const { std::cell::Cell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Output blocks `ob0..ob0 + obn` and rows `y0..y0 + rows` of job `j` (whose `wino` holds the
/// transforms and whose geometry [`applies`]).
///
/// # Safety
/// As [`super::kiln_conv2d_nchwc`].
pub(super) unsafe fn rows(j: &Job, (ob0, obn): (usize, usize), (y0, rows): (usize, usize)) {
    // The transforms cover whole blocks of channels (`packs`).
    debug_assert_eq!(j.last, BLOCK);
    let (oh, ow) = (j.g.oh as usize, j.g.ow as usize);
    let tw = ow.div_ceil(2);
    let (ty0, ty1) = (y0 / 2, (y0 + rows).div_ceil(2));
    let per = chunk_rows(tw);
    let (mut v, mut m, mut s) = BUFS.with(|b| b.take());
    let direct = Job {
        wino: std::ptr::null(),
        ..*j
    };
    let mut ty = ty0;
    while ty < ty1 {
        let k = per.min(ty1 - ty);
        let t = k * tw;
        // Every element read is written first: the buffers only grow. Each is used from its
        // first 64-byte line (vectors split across lines cost the transforms 2x).
        let mut lines =
            [(&mut v, j.groups * t), (&mut m, obn * t), (&mut s, 2 * ow)].map(|(b, n)| {
                if b.len() < 16 * n * BLOCK + BLOCK {
                    b.resize(16 * n * BLOCK + BLOCK, 0.0);
                }
                let at = b.as_ptr().align_offset(64).min(BLOCK);
                &mut b[at..]
            });
        let [v, m, s] = &mut lines;
        for r in 0..k {
            // SAFETY: forwarded; `v` holds the chunk's tiles.
            unsafe { inputs(j, ty + r, (tw, r * tw, t), v) };
        }
        // SAFETY: `v` and `m` hold the chunk's transforms and products.
        unsafe { products(j, (ob0, obn), t, v, m) };
        for r in 0..k {
            // The rows of tile row ty + r asked for.
            let (a, b) = (2 * (ty + r), (2 * (ty + r) + 2).min(oh));
            let (a, b) = (a.max(y0), b.min(y0 + rows));
            if a >= b {
                continue;
            }
            for ob in ob0..ob0 + obn {
                let mo = &m[((ob - ob0) * 16 * t + r * tw) * BLOCK..];
                // SAFETY: `m` holds block ob's products of the row's tiles.
                if unsafe { outputs(j, (mo, t), s) } {
                    for oy in a..b {
                        let row = &s[(oy - 2 * (ty + r)) * ow * BLOCK..][..ow * BLOCK];
                        // SAFETY: forwarded.
                        unsafe { emit(j, ob, oy, row) };
                    }
                } else {
                    // SAFETY: forwarded.
                    unsafe { direct.blocks((ob as i64, 1), (a as i64, (b - a) as i64), false) };
                }
            }
        }
        ty += k;
    }
    BUFS.with(|b| b.set((v, m, s)));
}

/// One 16-lane vector.
type Lanes = [f32; BLOCK];

/// Tile row `ty`'s input transforms (`tw` tiles, from tile `at` of the chunk's `t`) into `v`
/// (`V_ξ` at `[c/16][t][ξ][16]`, a tile's 16 transforms together): per channel block and tile, the patch's rows transformed
/// (`d0 − d2, d1 + d2, d2 − d1, d1 − d3` along the row), then its columns the same way;
/// pixels outside the image are zeros.
///
/// # Safety
/// As [`rows`].
unsafe fn inputs(j: &Job, ty: usize, (tw, at, t): (usize, usize, usize), v: &mut [f32]) {
    assert!(v.len() >= 16 * j.groups * t * BLOCK && at + tw <= t);
    #[cfg(target_arch = "x86_64")]
    match j.isa {
        // SAFETY (both): forwarded; the CPU has the features.
        Isa::Avx512 => return unsafe { x86::inputs_avx512(j, ty, (tw, at, t), v) },
        Isa::Avx2 => return unsafe { x86::inputs_avx2(j, ty, (tw, at, t), v) },
        Isa::Scalar => {}
    }
    // SAFETY: forwarded.
    unsafe { inputs_in(j, ty, (tw, at, t), v) }
}

/// Input pixel (iy, ix) of channel block `q` (zeros outside the image).
///
/// # Safety
/// As [`rows`].
#[inline(always)]
unsafe fn pixel(j: &Job, q: usize, (iy, ix): (i64, i64)) -> Lanes {
    if iy < 0 || iy >= j.g.h || ix < 0 || ix >= j.g.w {
        return [0.0; BLOCK];
    }
    let p = j.x.wrapping_add(j.input(q, (iy as usize, ix as usize)));
    // SAFETY: the pixel is inside the image.
    unsafe { std::ptr::read_unaligned(p as *const Lanes) }
}

/// The body of [`inputs`] in portable code, lane by lane.
///
/// # Safety
/// As [`inputs`].
#[inline(always)]
unsafe fn inputs_in(j: &Job, ty: usize, (tw, at, t): (usize, usize, usize), v: &mut [f32]) {
    let iy0 = 2 * ty as i64 - j.g.ph;
    let zero: Lanes = [0.0; BLOCK];
    for q in 0..j.groups {
        for tx in 0..tw {
            let ix0 = 2 * tx as i64 - j.g.pw;
            let mut rt = [[zero; 4]; 4];
            for (a, row) in rt.iter_mut().enumerate() {
                let iy = iy0 + a as i64;
                let mut d = [zero; 4];
                for (b, d) in d.iter_mut().enumerate() {
                    // SAFETY: forwarded.
                    *d = unsafe { pixel(j, q, (iy, ix0 + b as i64)) };
                }
                for l in 0..BLOCK {
                    row[0][l] = d[0][l] - d[2][l];
                    row[1][l] = d[1][l] + d[2][l];
                    row[2][l] = d[2][l] - d[1][l];
                    row[3][l] = d[1][l] - d[3][l];
                }
            }
            for jj in 0..4 {
                let (a, b, e, f) = (rt[0][jj], rt[1][jj], rt[2][jj], rt[3][jj]);
                let mut col = [zero; 4];
                for l in 0..BLOCK {
                    col[0][l] = a[l] - e[l];
                    col[1][l] = b[l] + e[l];
                    col[2][l] = e[l] - b[l];
                    col[3][l] = b[l] - f[l];
                }
                for (i, ci) in col.iter().enumerate() {
                    let dst = ((q * t + at + tx) * 16 + 4 * i + jj) * BLOCK;
                    v[dst..dst + BLOCK].copy_from_slice(ci);
                }
            }
        }
    }
}

/// The 16 products `M_ξ = V_ξ · U_ξ` of the chunk's `t` tiles for output blocks `ob0..ob0 +
/// obn` (`M_ξ` of block ob at `[ob − ob0][ξ][t][16]` in `m`), by the blocked routine's
/// pointwise tiles.
///
/// # Safety
/// As [`rows`]; `v` and `m` hold the chunk.
unsafe fn products(j: &Job, (ob0, obn): (usize, usize), t: usize, v: &[f32], m: &mut [f32]) {
    let (o, c) = (j.o, j.groups * BLOCK);
    assert!(v.len() >= 16 * c * t && m.len() >= 16 * obn * BLOCK * t);
    let offs: [usize; BLOCK] = std::array::from_fn(|i| i);
    for xi in 0..16 {
        // Block ob's products of ξ: row ξ of a [16][t][16] image per block, which
        // `Job::output(ob, ξ, x)` finds from a base shifted back by ob0 blocks.
        let base = m.as_mut_ptr().wrapping_sub(ob0 * 16 * t * BLOCK);
        // V_ξ: pixels (tiles) 16 vectors apart.
        let pj = Job {
            x: v[xi * BLOCK..].as_ptr(),
            wp: j.wino.wrapping_add(xi * o * c),
            out: base.wrapping_add(xi * t * BLOCK),
            offs: offs.as_ptr(),
            exact: false,
            wino: std::ptr::null(),
            o,
            groups: j.groups,
            gi: BLOCK,
            last: BLOCK,
            gs: t * 16 * BLOCK,
            ps: 16 * BLOCK,
            cs: 1,
            isa: j.isa,
            // One row of t pixels whose blocks are 16 rows apart.
            g: Geometry::of([1, t as i64, 16, t as i64, 1, 1, 1, 1, 1, 1, 0, 0]),
            epi: Epilogue::NONE,
        };
        // SAFETY: the transforms, the packed products and the chunk's buffers hold these
        // blocks and tiles.
        unsafe { pj.blocks((ob0 as i64, obn as i64), (0, 1), false) };
    }
}

/// A block's two output rows of a tile row into `s` from its products `mo` (`M_ξ` at
/// `[ξ][t][16]` from the row's first tile): per tile `Aᵀ M A` (`m0 + m1 + m2` and `m1 − m2 −
/// m3` down the columns, then along the rows); whether every output is finite.
///
/// # Safety
/// As [`rows`].
unsafe fn outputs(j: &Job, (mo, t): (&[f32], usize), s: &mut [f32]) -> bool {
    let ow = j.g.ow as usize;
    let tw = ow.div_ceil(2);
    assert!(mo.len() >= (15 * t + tw) * BLOCK && s.len() >= 2 * ow * BLOCK);
    #[cfg(target_arch = "x86_64")]
    match j.isa {
        // SAFETY (both): forwarded; the CPU has the features.
        Isa::Avx512 => return unsafe { x86::outputs_avx512(ow, (mo, t), s) },
        Isa::Avx2 => return unsafe { x86::outputs_avx2(ow, (mo, t), s) },
        Isa::Scalar => {}
    }
    outputs_in(ow, (mo, t), s)
}

/// The body of [`outputs`] in portable code, lane by lane.
#[inline(always)]
fn outputs_in(ow: usize, (mo, t): (&[f32], usize), s: &mut [f32]) -> bool {
    let zero: Lanes = [0.0; BLOCK];
    let mut finite = true;
    for tx in 0..ow.div_ceil(2) {
        let mut sr = [[zero; 4]; 2];
        for jj in 0..4 {
            let mut m = [zero; 4];
            for (i, m) in m.iter_mut().enumerate() {
                let at = ((4 * i + jj) * t + tx) * BLOCK;
                m.copy_from_slice(&mo[at..at + BLOCK]);
            }
            for l in 0..BLOCK {
                sr[0][jj][l] = m[0][l] + m[1][l] + m[2][l];
                sr[1][jj][l] = m[1][l] - m[2][l] - m[3][l];
            }
        }
        for (r, sa) in sr.iter().enumerate() {
            let y = (r * ow + 2 * tx) * BLOCK;
            for l in 0..BLOCK {
                s[y + l] = sa[0][l] + sa[1][l] + sa[2][l];
                finite &= s[y + l].is_finite();
            }
            if 2 * tx + 1 < ow {
                for l in 0..BLOCK {
                    s[y + BLOCK + l] = sa[1][l] - sa[2][l] - sa[3][l];
                    finite &= s[y + BLOCK + l].is_finite();
                }
            }
        }
    }
    finite
}

/// Output row `oy` of block `ob` from its sums `row`, through the epilogue as the direct
/// tiles apply it on this ISA.
///
/// # Safety
/// As [`rows`].
unsafe fn emit(j: &Job, ob: usize, oy: usize, row: &[f32]) {
    let at = j.output(ob, oy, 0);
    #[cfg(target_arch = "x86_64")]
    match j.isa {
        // SAFETY (both): forwarded; the CPU has the features.
        Isa::Avx512 => return unsafe { x86::emit_avx512(j, ob, at, row) },
        Isa::Avx2 => return unsafe { x86::emit_avx2(j, ob, at, row) },
        Isa::Scalar => {}
    }
    let e = j.epi.from(0, ob * BLOCK, at);
    for (p, v) in row.chunks_exact(BLOCK).enumerate() {
        for (l, &a) in v.iter().enumerate() {
            let i = p * BLOCK + l;
            // SAFETY: the output's lanes are inside `out`; the epilogue's operands with them.
            unsafe {
                let r = (!e.res.is_null()).then(|| *e.res.add(i));
                *j.out.add(at + i) = e.one(a, e.coefs(0, l), r);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Job, BLOCK};
    use std::arch::x86_64::*;

    /// [`super::inputs`] compiled for AVX2 (the portable body).
    ///
    /// # Safety
    /// As [`super::inputs`]; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn inputs_avx2(j: &Job, ty: usize, tt: (usize, usize, usize), v: &mut [f32]) {
        // SAFETY: forwarded.
        unsafe { super::inputs_in(j, ty, tt, v) }
    }

    /// [`super::outputs`] compiled for AVX2 (the portable body).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn outputs_avx2(ow: usize, mt: (&[f32], usize), s: &mut [f32]) -> bool {
        super::outputs_in(ow, mt, s)
    }

    /// [`super::inputs`] in AVX-512 registers (the same operations in the same order).
    ///
    /// # Safety
    /// As [`super::inputs`]; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn inputs_avx512(
        j: &Job,
        ty: usize,
        (tw, at, t): (usize, usize, usize),
        v: &mut [f32],
    ) {
        let g = &j.g;
        let iy0 = 2 * ty as i64 - g.ph;
        let vp = v.as_mut_ptr();
        let zero = _mm512_setzero_ps();
        for q in 0..j.groups {
            for tx in 0..tw {
                let ix0 = 2 * tx as i64 - g.pw;
                let inside = iy0 >= 0 && iy0 + 4 <= g.h && ix0 >= 0 && ix0 + 4 <= g.w;
                let mut rt = [[zero; 4]; 4];
                for (a, rt) in rt.iter_mut().enumerate() {
                    let iy = iy0 + a as i64;
                    let mut d = [zero; 4];
                    for (b, d) in d.iter_mut().enumerate() {
                        let ix = ix0 + b as i64;
                        if inside || (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) {
                            let p = j.input(q, (iy as usize, ix as usize));
                            // SAFETY: the pixel is inside the image.
                            *d = unsafe { _mm512_loadu_ps(j.x.add(p)) };
                        }
                    }
                    *rt = [
                        _mm512_sub_ps(d[0], d[2]),
                        _mm512_add_ps(d[1], d[2]),
                        _mm512_sub_ps(d[2], d[1]),
                        _mm512_sub_ps(d[1], d[3]),
                    ];
                }
                for jj in 0..4 {
                    let (a, b, e, f) = (rt[0][jj], rt[1][jj], rt[2][jj], rt[3][jj]);
                    let col = [
                        _mm512_sub_ps(a, e),
                        _mm512_add_ps(b, e),
                        _mm512_sub_ps(e, b),
                        _mm512_sub_ps(b, f),
                    ];
                    for (i, &ci) in col.iter().enumerate() {
                        let dst = ((q * t + at + tx) * 16 + 4 * i + jj) * BLOCK;
                        // SAFETY: inside `v` (asserted by the caller).
                        unsafe { _mm512_storeu_ps(vp.add(dst), ci) };
                    }
                }
            }
        }
    }

    /// [`super::outputs`] in AVX-512 registers (the same operations in the same order).
    ///
    /// # Safety
    /// As [`super::outputs`]; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn outputs_avx512(
        ow: usize,
        (mo, t): (&[f32], usize),
        s: &mut [f32],
    ) -> bool {
        let (mp, sp) = (mo.as_ptr(), s.as_mut_ptr());
        let mut finite: __mmask16 = !0;
        let zero = _mm512_setzero_ps();
        for tx in 0..ow.div_ceil(2) {
            let mut sr = [[zero; 4]; 2];
            for jj in 0..4 {
                let mut m = [zero; 4];
                for (i, m) in m.iter_mut().enumerate() {
                    // SAFETY: inside `mo` (asserted by the caller).
                    *m = unsafe { _mm512_loadu_ps(mp.add(((4 * i + jj) * t + tx) * BLOCK)) };
                }
                sr[0][jj] = _mm512_add_ps(_mm512_add_ps(m[0], m[1]), m[2]);
                sr[1][jj] = _mm512_sub_ps(_mm512_sub_ps(m[1], m[2]), m[3]);
            }
            for (r, sa) in sr.iter().enumerate() {
                let y = sp.wrapping_add((r * ow + 2 * tx) * BLOCK);
                let y0 = _mm512_add_ps(_mm512_add_ps(sa[0], sa[1]), sa[2]);
                let d = _mm512_sub_ps(y0, y0);
                finite &= _mm512_cmp_ps_mask::<_CMP_ORD_Q>(d, d);
                // SAFETY: inside `s` (asserted by the caller).
                unsafe { _mm512_storeu_ps(y, y0) };
                if 2 * tx + 1 < ow {
                    let y1 = _mm512_sub_ps(_mm512_sub_ps(sa[1], sa[2]), sa[3]);
                    let d = _mm512_sub_ps(y1, y1);
                    finite &= _mm512_cmp_ps_mask::<_CMP_ORD_Q>(d, d);
                    // SAFETY: as above.
                    unsafe { _mm512_storeu_ps(y.add(BLOCK), y1) };
                }
            }
        }
        finite == !0
    }

    /// [`super::emit`] in AVX-512 vectors, as the direct tiles' `store`.
    ///
    /// # Safety
    /// As [`super::emit`]; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn emit_avx512(j: &Job, ob: usize, at: usize, row: &[f32]) {
        let (n, p) = (row.len() / BLOCK, row.as_ptr());
        // SAFETY: the outputs (and residual) are inside their buffers; `row` holds n vectors.
        unsafe {
            super::super::avx512::emit(j, ob, at, (n, BLOCK), |i| _mm512_loadu_ps(p.add(i * BLOCK)))
        };
    }

    /// [`super::emit`] in AVX2 halves, as the direct tiles' `store`.
    ///
    /// # Safety
    /// As [`super::emit`]; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn emit_avx2(j: &Job, ob: usize, at: usize, row: &[f32]) {
        let (n, p) = (row.len() / BLOCK, row.as_ptr());
        // SAFETY: the outputs (and residual) are inside their buffers; `row` holds n vectors.
        unsafe {
            super::super::avx2::emit(j, ob, at, n, |i, h| {
                _mm256_loadu_ps(p.add(i * BLOCK + 8 * h))
            })
        };
    }
}
