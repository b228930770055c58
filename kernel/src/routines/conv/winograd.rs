//! 3×3 stride-1 dense convolutions by Winograd's minimal filtering F(2×2, 3×3): each 2×2
//! block of outputs (a *tile*) comes from a 4×4 patch of input `d` as `Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d
//! B)]A`, 16 products per channel where the direct sum takes 36. The filters' transforms
//! `U = G g Gᵀ` are made once, when a kernel's weights are constant ([`transform_filters`],
//! through `prepack`); per block of output rows the input patches are transformed (`V`, per
//! position ξ of the 4×4 a matrix of channels by tiles), the 16 products `M_ξ = U_ξ · V_ξ` run
//! as library GEMMs, and each tile's outputs are `Aᵀ M A`, through the epilogue. The
//! transforms add and subtract in one fixed order on every CPU (portable code, compiled for
//! AVX-512 and AVX2 where the CPU has them), so results do not depend on the machine; they
//! differ from the direct sum by rounding (the transforms' few additions).

// The transforms index a tile's 4×4 by position, as their formulas do.
#![allow(clippy::needless_range_loop)]

use super::super::epilogue::Epilogue;
use super::super::gemm;
use super::Geometry;

/// Whether a conv of geometry `g`, `o` filters over `c` channels, runs as F(2×2, 3×3): a 3×3
/// window, unit strides and dilations, no negative padding, 32 or more channels and 64 or
/// more filters, and products large enough to pay for the transforms (which cost per tile as
/// channels plus filters, where the products save as their product): 16K channel-filter
/// pairs on rows of 12 or more outputs, or rows of 24 or more (tiles enough per product).
/// Measured against the direct sum: 128→128 on 28×28 0.72 of its time, 256→256 on 14×14
/// 0.77, 64→64 on 14×14 1.34, 128→32 on 28×28 1.27 (too few filters); 512→512 on 7×7 0.81
/// alone but slower inside resnet50, whose filters' transforms (17 MB) then stream from L3
/// for 16 tiles.
pub fn applies(g: &Geometry, c: i64, o: i64) -> bool {
    (g.kh, g.kw, g.sh, g.sw, g.dh, g.dw) == (3, 3, 1, 1, 1, 1)
        && g.ph >= 0
        && g.pw >= 0
        // No negative padding after the image either: the padded rows hold the outputs'
        // reach and no more.
        && g.oh + 2 >= g.h + g.ph
        && g.ow + 2 >= g.w + g.pw
        && g.oh >= 2
        && c >= 32
        && o >= 64
        && (c * o >= 16384 && g.ow >= 12 || g.ow >= 24)
}

/// The filters' transforms: for `o` filters of `c` channels of 3×3 weights (`w`, row-major
/// `o×c×3×3`), `U_ξ[f, ch]` at `(ξ·o + f)·c + ch` for the 16 positions `ξ = 4i + j` of `G g
/// Gᵀ` (`G` = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]).
pub fn transform_filters(w: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * o * c];
    // G applied to three values: the 4 of a column (or row) of G g.
    let lift = |a: f32, b: f32, e: f32| [a, (a + b + e) * 0.5, (a - b + e) * 0.5, e];
    for f in 0..o {
        for ch in 0..c {
            let g = &w[(f * c + ch) * 9..][..9];
            // G g: 4×3, column by column.
            let cols: [[f32; 4]; 3] = std::array::from_fn(|j| lift(g[j], g[3 + j], g[6 + j]));
            for i in 0..4 {
                let row = lift(cols[0][i], cols[1][i], cols[2][i]);
                for (j, &v) in row.iter().enumerate() {
                    u[((4 * i + j) * o + f) * c + ch] = v;
                }
            }
        }
    }
    u
}

thread_local! {
    /// The padded input phases, the transformed tiles and the products, per thread.
    static BUFS: std::cell::Cell<(Vec<f32>, Vec<f32>, Vec<f32>)> =
        const { std::cell::Cell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Output rows `y0..y0 + rows` of a 3×3 conv ([`applies`] holds) from its filters'
/// transforms `u` ([`transform_filters`]), as [`super::kiln_conv2d_rows`] lays them out; false
/// (nothing written) where the block's input holds an infinity or NaN, which the direct sum
/// must take.
///
/// # Safety
/// `x` readable for `c·h·w` elements, `u` for `16·o·c`, `out` writable for `o·oh·ow`, and the
/// epilogue's operands as for [`super::kiln_conv2d_rows`]; `y0 + rows <= oh`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn rows(
    x: *const f32,
    u: *const f32,
    out: *mut f32,
    c: usize,
    o: usize,
    g: &Geometry,
    y0: usize,
    rows: usize,
    epi: &Epilogue,
) -> bool {
    // SAFETY: forwarded; the CPU runs these lanes.
    unsafe { rows_in(x, u, out, c, o, g, (y0, rows), epi, super::plane::lanes()) }
}

/// [`rows`] with vectors of `lanes` (16: AVX-512, 8: AVX2, else portable code).
///
/// # Safety
/// As [`rows`]; the CPU runs `lanes`.
#[allow(clippy::too_many_arguments)]
unsafe fn rows_in(
    x: *const f32,
    u: *const f32,
    out: *mut f32,
    c: usize,
    o: usize,
    g: &Geometry,
    (y0, rows): (usize, usize),
    epi: &Epilogue,
    lanes: usize,
) -> bool {
    let (h, w, oh, ow) = (g.h as usize, g.w as usize, g.oh as usize, g.ow as usize);
    let (ph, pw) = (g.ph as usize, g.pw as usize);
    if rows == 0 || ow == 0 || o == 0 {
        return true;
    }
    // Tiles: `th` rows of `tw`; a block of odd rows computes one row more and drops it.
    let (th, tw) = (rows.div_ceil(2), ow.div_ceil(2));
    let tiles = th * tw;
    // Rows of V and M hold every tile and 16 lanes to spare (a last vector's overrun).
    let tp = tiles + 16;
    // The 16 matrices of V (and of M) 256 bytes further apart than their size: at a multiple of
    // 4 KB (64 channels by 80 tiles) the 16 vectors a tile's transform stores all fell in one
    // set of the L1 cache, and every store missed.
    let (pv, pm) = (c * tp + 64, o * tp + 64);
    // The block's input rows (4 for the first tile row, 2 more per later one), each as its
    // even and odd columns (padded column q of phase p: input column 2q + p − pw), `lp` long
    // with 16 to spare.
    let rin = 2 * th + 2;
    let lp = tw + 1 + 16;
    let (mut d, mut v, mut m) = BUFS.with(|b| b.take());
    d.clear();
    d.resize(c * rin * 2 * lp, 0.0);
    v.resize(16 * pv, 0.0);
    m.resize(16 * pm, 0.0);
    // The input rows inside the image: r0..r1 of the block's, from image row iy0.
    let first = y0 as i64 - ph as i64;
    let r0 = (-first).max(0) as usize;
    let r1 = ((h as i64 - first).max(0) as usize).min(rin);
    // Input column i lands at padded column i + pw: the even ones of the row from `a`, the
    // odd ones from `b`.
    let (a, b) = (pw % 2 * lp + pw / 2, (pw + 1) % 2 * lp + pw.div_ceil(2));
    for ch in (0..c).filter(|_| r0 < r1) {
        let iy0 = (first + r0 as i64) as usize;
        // SAFETY: rows iy0.. of channel ch (r1 - r0 of them) are inside the image.
        let src = unsafe { x.add((ch * h + iy0) * w) };
        let dst = &mut d[(ch * rin + r0) * 2 * lp..(ch * rin + r1) * 2 * lp];
        // SAFETY: each row's halves land inside its two phases; AVX-512 only where the CPU
        // runs 16 lanes.
        unsafe {
            super::plane::copy_rows(
                src,
                (w, 2 * lp),
                r1 - r0,
                w,
                dst.as_mut_ptr(),
                [a, b],
                2,
                None,
                lanes == 16,
            )
        };
    }
    // The transforms mix a patch's inputs: an infinity or NaN would spread to every output
    // of its tiles (inf − inf), where the direct sum keeps it to the windows that read it.
    if !finite(&d) {
        BUFS.with(|b| b.set((d, v, m)));
        return false;
    }
    let place = Outputs {
        out,
        ohw: oh * ow,
        first: y0,
        rows,
        ow,
        tw,
        tp,
        pm,
        o,
        epi,
    };
    // Large blocks (a small image in one block) split each phase over the helpers: the
    // transforms by channels and filters, the products by position. Every value is computed
    // as it would be alone.
    let t = match 16 * o * c * tiles >= SPLIT {
        true => (crate::threads::helpers() + 1).min(16),
        false => 1,
    };
    let work = Work {
        d: &d,
        v: v.as_mut_ptr(),
        m: m.as_mut_ptr(),
        u,
        place: &place,
    };
    crate::threads::parallel_for(t, |w| {
        let (c0, c1) = (c * w / t, c * (w + 1) / t);
        // SAFETY: each part writes its own channels' rows of V.
        unsafe { work.inputs(c0..c1, (th, tw, lp), (tp, pv), c, lanes) };
    });
    crate::threads::parallel_for(t, |w| {
        for xi in 16 * w / t..16 * (w + 1) / t {
            // SAFETY: each part writes its own positions' M.
            unsafe { work.product(xi, (o, c, tiles), (tp, pv, pm)) };
        }
    });
    crate::threads::parallel_for(t, |w| {
        let (f0, f1) = (o * w / t, o * (w + 1) / t);
        // SAFETY: each part stores its own filters' outputs.
        unsafe { work.outputs(f0..f1, th, lanes) };
    });
    BUFS.with(|b| b.set((d, v, m)));
    true
}

/// Multiply-adds of a block's 16 products from which its phases split over the helpers.
const SPLIT: usize = 1 << 22;

/// A block's buffers, shared by the parts of its phases (each writes its own share).
struct Work<'a> {
    d: &'a [f32],
    v: *mut f32,
    m: *mut f32,
    u: *const f32,
    place: &'a Outputs<'a>,
}

// SAFETY: the parts of a phase write disjoint rows of V, M or the output; the rest is read.
unsafe impl Sync for Work<'_> {}

impl Work<'_> {
    /// Channels `chs` of V.
    ///
    /// # Safety
    /// V holds 16 matrices `pv` apart of `c` rows `tp` apart; the CPU runs `lanes`; no other
    /// part writes these channels.
    unsafe fn inputs(
        &self,
        chs: std::ops::Range<usize>,
        (th, tw, lp): (usize, usize, usize),
        (tp, pv): (usize, usize),
        c: usize,
        lanes: usize,
    ) {
        // SAFETY: V's 16 matrices (see the contract).
        let v = unsafe { std::slice::from_raw_parts_mut(self.v, 16 * pv) };
        let d = self.d;
        #[cfg(target_arch = "x86_64")]
        {
            if lanes == 16 {
                // SAFETY: the CPU has AVX-512F.
                return unsafe { inputs_avx512(d, v, (chs, c), th, tw, lp, (tp, pv)) };
            } else if lanes == 8 {
                // SAFETY: the CPU has AVX2.
                return unsafe { inputs_avx2(d, v, (chs, c), th, tw, lp, (tp, pv)) };
            }
        }
        let _ = lanes;
        inputs(d, v, (chs, c), th, tw, lp, (tp, pv))
    }

    /// Position ξ's product `M_ξ = U_ξ · V_ξ`.
    ///
    /// # Safety
    /// U holds 16 matrices o×c, V 16 matrices `pv` apart of c rows `tp` apart, M 16 matrices
    /// `pm` apart of o rows `tp` apart; no other part writes M_ξ.
    unsafe fn product(
        &self,
        xi: usize,
        (o, c, tiles): (usize, usize, usize),
        (tp, pv, pm): (usize, usize, usize),
    ) {
        // SAFETY: forwarded.
        unsafe {
            gemm::product(
                self.u.add(xi * o * c),
                self.v.add(xi * pv),
                std::ptr::null(),
                self.m.add(xi * pm),
                c as i64,
                1,
                tp as i64,
                1,
                tp as i64,
                o as i64,
                tiles as i64,
                c as i64,
                &Epilogue::NONE,
            )
        };
    }

    /// Filters `fs`'s outputs.
    ///
    /// # Safety
    /// M holds 16 matrices `pm` apart; the outputs are inside `out`; the CPU runs `lanes`; no
    /// other part stores these filters.
    unsafe fn outputs(&self, fs: std::ops::Range<usize>, th: usize, lanes: usize) {
        let p = self.place;
        // SAFETY: M's 16 matrices (see the contract).
        let m = unsafe { std::slice::from_raw_parts(self.m, 16 * p.pm) };
        #[cfg(target_arch = "x86_64")]
        {
            if lanes == 16 {
                // SAFETY: the CPU has AVX-512F; the outputs are inside `out`.
                return unsafe { outputs_avx512(m, fs, th, p) };
            } else if lanes == 8 {
                // SAFETY: the CPU has AVX2; as above.
                return unsafe { outputs_avx2(m, fs, th, p) };
            }
        }
        let _ = lanes;
        // SAFETY: as above.
        unsafe { outputs(m, fs, th, p) }
    }
}

/// Whether every value is finite (no infinity or NaN: an exponent of all ones).
fn finite(d: &[f32]) -> bool {
    let exp = 0x7f80_0000u32;
    let mut chunks = d.chunks_exact(16);
    let whole = chunks.by_ref().fold(0u32, |acc, c| {
        c.iter()
            .fold(acc, |a, &x| a | u32::from(x.to_bits() & exp == exp))
    });
    let rest = chunks.remainder().iter().any(|x| !x.is_finite());
    whole == 0 && !rest
}

/// `V_ξ[ch, t]` at `ξ·pv + ch·tp + t` for tile `t = ty·tw + tx`: `Bᵀ d B` of its 4×4 patch
/// (`Bᵀ` = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]), 16 tiles at a time (the last vector of a
/// tile row runs over into the next row's, computed after it, or the spare lanes).
#[inline(always)]
fn inputs(
    d: &[f32],
    v: &mut [f32],
    (chs, c): (std::ops::Range<usize>, usize),
    th: usize,
    tw: usize,
    lp: usize,
    (tp, pv): (usize, usize),
) {
    let rin = 2 * th + 2;
    assert!(d.len() >= c * rin * 2 * lp && v.len() >= 16 * pv && pv >= c * tp && tw + 17 <= lp);
    let (dp, vp) = (d.as_ptr(), v.as_mut_ptr());
    // Sixteen consecutive values (in bounds: see the assertion and the callers).
    let load = |p: *const f32| -> [f32; 16] {
        // SAFETY: every load is inside a padded row (tx + 17 <= lp).
        std::array::from_fn(|l| unsafe { *p.add(l) })
    };
    for ch in chs {
        for ty in 0..th {
            for tx in (0..tw).step_by(16) {
                // Rows 2ty..2ty+4 of the patch, each as d0..d3 = even[tx], odd[tx],
                // even[tx + 1], odd[tx + 1] for 16 tiles.
                let mut t = [[[0f32; 16]; 4]; 4];
                for (i, ti) in t.iter_mut().enumerate() {
                    // SAFETY: row 2ty + i of channel ch is inside `d`.
                    let row = unsafe { dp.add((ch * rin + 2 * ty + i) * 2 * lp) };
                    // SAFETY: as above.
                    let (e0, e1) = unsafe { (load(row.add(tx)), load(row.add(tx + 1))) };
                    // SAFETY: as above.
                    let (o0, o1) = unsafe { (load(row.add(lp + tx)), load(row.add(lp + tx + 1))) };
                    for l in 0..16 {
                        ti[0][l] = e0[l] - e1[l];
                        ti[1][l] = o0[l] + e1[l];
                        ti[2][l] = e1[l] - o0[l];
                        ti[3][l] = o0[l] - o1[l];
                    }
                }
                let at = ty * tw + tx;
                for j in 0..4 {
                    let mut col = [[0f32; 16]; 4];
                    for l in 0..16 {
                        let (a, b, e, f) = (t[0][j][l], t[1][j][l], t[2][j][l], t[3][j][l]);
                        col[0][l] = a - e;
                        col[1][l] = b + e;
                        col[2][l] = e - b;
                        col[3][l] = b - f;
                    }
                    for (i, ci) in col.iter().enumerate() {
                        // SAFETY: inside V's row (at + 16 <= tp).
                        unsafe {
                            let dst = vp.add((4 * i + j) * pv + ch * tp + at);
                            std::ptr::copy_nonoverlapping(ci.as_ptr(), dst, 16);
                        }
                    }
                }
            }
        }
    }
}

/// [`inputs`] in AVX-512 registers (the same operations in the same order).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn inputs_avx512(
    d: &[f32],
    v: &mut [f32],
    (chs, c): (std::ops::Range<usize>, usize),
    th: usize,
    tw: usize,
    lp: usize,
    (tp, pv): (usize, usize),
) {
    use std::arch::x86_64::*;
    let rin = 2 * th + 2;
    assert!(d.len() >= c * rin * 2 * lp && v.len() >= 16 * pv && pv >= c * tp && tw + 17 <= lp);
    let (dp, vp) = (d.as_ptr(), v.as_mut_ptr());
    // SAFETY: every load is inside a padded row (tx + 17 <= lp), every store inside V's row
    // (ty·tw + tx + 16 <= tiles + 16 = tp).
    unsafe {
        for ch in chs {
            for ty in 0..th {
                for tx in (0..tw).step_by(16) {
                    let mut t = [[_mm512_setzero_ps(); 4]; 4];
                    for (i, ti) in t.iter_mut().enumerate() {
                        let row = dp.add((ch * rin + 2 * ty + i) * 2 * lp);
                        let (e0, e1) = (
                            _mm512_loadu_ps(row.add(tx)),
                            _mm512_loadu_ps(row.add(tx + 1)),
                        );
                        let (o0, o1) = (
                            _mm512_loadu_ps(row.add(lp + tx)),
                            _mm512_loadu_ps(row.add(lp + tx + 1)),
                        );
                        *ti = [
                            _mm512_sub_ps(e0, e1),
                            _mm512_add_ps(o0, e1),
                            _mm512_sub_ps(e1, o0),
                            _mm512_sub_ps(o0, o1),
                        ];
                    }
                    let at = ty * tw + tx;
                    for j in 0..4 {
                        let (a, b, e, f) = (t[0][j], t[1][j], t[2][j], t[3][j]);
                        let col = [
                            _mm512_sub_ps(a, e),
                            _mm512_add_ps(b, e),
                            _mm512_sub_ps(e, b),
                            _mm512_sub_ps(b, f),
                        ];
                        for (i, &val) in col.iter().enumerate() {
                            _mm512_storeu_ps(vp.add((4 * i + j) * pv + ch * tp + at), val);
                        }
                    }
                }
            }
        }
    }
}

/// [`inputs`] compiled for AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn inputs_avx2(
    d: &[f32],
    v: &mut [f32],
    chs: (std::ops::Range<usize>, usize),
    th: usize,
    tw: usize,
    lp: usize,
    tp: (usize, usize),
) {
    inputs(d, v, chs, th, tw, lp, tp)
}

/// Where the block's tiles go: filter f's output (y, x) of the block at `out + f·ohw +
/// (first + y)·ow + x`, for `y < rows`, `x < ow`.
struct Outputs<'a> {
    out: *mut f32,
    ohw: usize,
    first: usize,
    rows: usize,
    ow: usize,
    tw: usize,
    tp: usize,
    /// Elements from one of M's matrices to the next.
    pm: usize,
    o: usize,
    epi: &'a Epilogue,
}

/// Every filter's outputs `Aᵀ M A` (`Aᵀ` = [1 1 1 0; 0 1 −1 −1]) of `th` tile rows, 16 tiles
/// (32 output columns) at a time, through the epilogue.
///
/// # Safety
/// The outputs are inside `out` (and the epilogue's operands).
#[inline(always)]
unsafe fn outputs(m: &[f32], fs: std::ops::Range<usize>, th: usize, p: &Outputs) {
    let (o, tp, tw, ow) = (p.o, p.tp, p.tw, p.ow);
    assert!(m.len() >= 16 * p.pm && p.pm >= o * tp);
    let mp = m.as_ptr();
    for f in fs {
        for ty in 0..th {
            for tx in (0..tw).step_by(16) {
                let at = ty * tw + tx;
                // Rows of Aᵀ M: s[a][j] for 16 tiles.
                let mut s = [[[0f32; 16]; 4]; 2];
                for j in 0..4 {
                    // SAFETY: inside M's rows (at + 16 <= tp).
                    let mv = |i: usize| -> [f32; 16] {
                        let q = unsafe { mp.add((4 * i + j) * p.pm + f * tp + at) };
                        std::array::from_fn(|l| unsafe { *q.add(l) })
                    };
                    let (m0, m1, m2, m3) = (mv(0), mv(1), mv(2), mv(3));
                    for l in 0..16 {
                        s[0][j][l] = m0[l] + m1[l] + m2[l];
                        s[1][j][l] = m1[l] - m2[l] - m3[l];
                    }
                }
                // Output rows 2ty and 2ty + 1, columns 2tx.. interleaved.
                let mut y = [[0f32; 32]; 2];
                for (a, ya) in y.iter_mut().enumerate() {
                    let sa = &s[a];
                    for l in 0..16 {
                        ya[2 * l] = sa[0][l] + sa[1][l] + sa[2][l];
                        ya[2 * l + 1] = sa[1][l] - sa[2][l] - sa[3][l];
                    }
                }
                let n = (ow - 2 * tx).min(32);
                for (a, ya) in y.iter().enumerate() {
                    let yy = 2 * ty + a;
                    if yy >= p.rows {
                        continue;
                    }
                    let off = f * p.ohw + (p.first + yy) * ow + 2 * tx;
                    // SAFETY: `n` outputs of the row from `off` are inside `out`.
                    unsafe {
                        let dst = p.out.add(off);
                        std::ptr::copy_nonoverlapping(ya.as_ptr(), dst, n);
                        p.epi.block_at((f, 0, off), dst, 0, 1, n);
                    }
                }
            }
        }
    }
}

/// [`outputs`] in AVX-512 registers (the same operations in the same order, the epilogue
/// in vector form).
///
/// # Safety
/// As [`outputs`]; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn outputs_avx512(m: &[f32], fs: std::ops::Range<usize>, th: usize, p: &Outputs) {
    use super::super::epilogue::avx512::{apply, coefs};
    use std::arch::x86_64::*;
    let (o, tp, tw, ow) = (p.o, p.tp, p.tw, p.ow);
    assert!(m.len() >= 16 * p.pm && p.pm >= o * tp);
    let mp = m.as_ptr();
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let epi = !p.epi.is_none();
    // SAFETY: loads inside M's rows (at + 16 <= tp); stores only of outputs inside the block.
    unsafe {
        for f in fs {
            for ty in 0..th {
                for tx in (0..tw).step_by(16) {
                    let at = ty * tw + tx;
                    let mut s = [[_mm512_setzero_ps(); 4]; 2];
                    for j in 0..4 {
                        let mv =
                            |i: usize| _mm512_loadu_ps(mp.add((4 * i + j) * p.pm + f * tp + at));
                        let (m0, m1, m2, m3) = (mv(0), mv(1), mv(2), mv(3));
                        s[0][j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                        s[1][j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
                    }
                    let n = (ow - 2 * tx).min(32);
                    for (a, sa) in s.iter().enumerate() {
                        let yy = 2 * ty + a;
                        if yy >= p.rows {
                            continue;
                        }
                        let even = _mm512_add_ps(_mm512_add_ps(sa[0], sa[1]), sa[2]);
                        let odd = _mm512_sub_ps(_mm512_sub_ps(sa[1], sa[2]), sa[3]);
                        let halves = [
                            _mm512_permutex2var_ps(even, lo, odd),
                            _mm512_permutex2var_ps(even, hi, odd),
                        ];
                        let off = f * p.ohw + (p.first + yy) * ow + 2 * tx;
                        let e = p.epi.from(f, 0, off);
                        for (q, &val) in halves.iter().enumerate() {
                            let k = n.saturating_sub(16 * q).min(16);
                            if k == 0 {
                                break;
                            }
                            let mk = ((1u32 << k) - 1) as u16;
                            let mut val = val;
                            if epi {
                                let st = coefs(&e, 0, 0, mk);
                                val = apply(&e, val, st, e.res.wrapping_add(16 * q), mk);
                            }
                            _mm512_mask_storeu_ps(p.out.add(off + 16 * q), mk, val);
                        }
                    }
                }
            }
        }
    }
}

/// [`outputs`] compiled for AVX2.
///
/// # Safety
/// As [`outputs`]; the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn outputs_avx2(m: &[f32], fs: std::ops::Range<usize>, th: usize, p: &Outputs) {
    // SAFETY: forwarded.
    unsafe { outputs(m, fs, th, p) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition with its epilogue (a shift per filter, a residual, a ReLU), in f64.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f32],
        w: &[f32],
        c: usize,
        o: usize,
        g: &Geometry,
        shift: &[f32],
        res: &[f32],
    ) -> Vec<f64> {
        let (h, wd, oh, ow) = (g.h, g.w, g.oh, g.ow);
        let mut out = vec![0f64; o * (oh * ow) as usize];
        for f in 0..o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0f64;
                    for ch in 0..c {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (oy + ky - g.ph, ox + kx - g.pw);
                                if iy >= 0 && iy < h && ix >= 0 && ix < wd {
                                    let xv = x[(ch as i64 * h * wd + iy * wd + ix) as usize];
                                    let wv = w[(f * c + ch) * 9 + (ky * 3 + kx) as usize];
                                    acc += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                    }
                    let at = f * (oh * ow) as usize + (oy * ow + ox) as usize;
                    out[at] = (acc + f64::from(shift[f]) + f64::from(res[at])).max(0.0);
                }
            }
        }
        out
    }

    /// A crop (negative padding after the image) takes the direct sum: the padded rows
    /// hold the outputs' reach, not the whole input row.
    #[test]
    fn crops_are_left_to_the_direct_sum() {
        let full = Geometry::of([10, 60, 8, 58, 3, 3, 1, 1, 1, 1, 0, 0]);
        assert!(applies(&full, 128, 128));
        let cropped = Geometry { ow: 30, ..full };
        assert!(!applies(&cropped, 128, 128));
        assert!(!applies(&Geometry { oh: 4, ..full }, 128, 128));
    }

    /// Every path (AVX-512, AVX2, portable) gives the same bits, within rounding of the
    /// definition: odd and even rows and widths, padding of 0 to 2, blocks of rows from
    /// the middle and an odd block at the end, filter counts off the products' tiles.
    #[test]
    fn blocks_match_the_definition_on_every_path() {
        let mut state = crate::routines::lcg(5);
        let mut rnd = move || ((state() >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
        // (c, o, h, w, pad low, pad high, row blocks)
        type Case = (usize, usize, i64, i64, i64, i64, &'static [(usize, usize)]);
        let cases: [Case; 5] = [
            (32, 64, 12, 26, 1, 1, &[(0, 4), (4, 4), (8, 4)]),
            (33, 70, 9, 25, 0, 2, &[(0, 3), (3, 6)]),
            (128, 128, 7, 12, 2, 1, &[(0, 8)]),
            (48, 64, 20, 30, 1, 1, &[(0, 8), (8, 8), (16, 4)]),
            // Rows of 7 tiles (13 outputs), an odd count of tile rows per block.
            (128, 128, 7, 13, 1, 1, &[(0, 5), (5, 2)]),
        ];
        for (c, o, h, w, pl, phi, blocks) in cases {
            let (oh, ow) = (h + pl + phi - 2, w + pl + phi - 2);
            let g = Geometry::of([h, w, oh, ow, 3, 3, 1, 1, 1, 1, pl, pl]);
            assert!(applies(&g, c as i64, o as i64), "{g:?}");
            let x: Vec<f32> = (0..c * (h * w) as usize).map(|_| rnd()).collect();
            let wt: Vec<f32> = (0..o * c * 9).map(|_| rnd()).collect();
            let shift: Vec<f32> = (0..o).map(|_| rnd()).collect();
            let n = o * (oh * ow) as usize;
            let res: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let epi = Epilogue {
                shift: shift.as_ptr(),
                res: res.as_ptr(),
                lo: 0.0,
                ..Epilogue::NONE
            };
            // An infinity in the image: no block is computed here (the direct sum takes it).
            let mut bad = x.clone();
            bad[(c / 2) * (h * w) as usize + 3] = f32::INFINITY;
            let mut out = vec![0f32; o * (oh * ow) as usize];
            // SAFETY: buffers sized for the geometry.
            let done = unsafe {
                rows(
                    bad.as_ptr(),
                    transform_filters(&wt, o, c).as_ptr(),
                    out.as_mut_ptr(),
                    c,
                    o,
                    &g,
                    0,
                    2,
                    &epi,
                )
            };
            assert!(!done && out.iter().all(|&v| v == 0.0), "{g:?}");
            let want = reference(&x, &wt, c, o, &g, &shift, &res);
            let u = transform_filters(&wt, o, c);
            let mut first: Option<Vec<u32>> = None;
            for lanes in [1, 8, 16]
                .into_iter()
                .filter(|&l| l <= super::super::plane::lanes())
            {
                let mut out = vec![f32::NAN; n];
                for &(y0, rows) in blocks {
                    // SAFETY: buffers sized for the geometry; the CPU runs `lanes`.
                    let done = unsafe {
                        rows_in(
                            x.as_ptr(),
                            u.as_ptr(),
                            out.as_mut_ptr(),
                            c,
                            o,
                            &g,
                            (y0, rows),
                            &epi,
                            lanes,
                        )
                    };
                    assert!(done);
                }
                for (i, (&got, &r)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(got) - r).abs() <= 1e-5 * (1.0 + r.abs()),
                        "{g:?} lanes {lanes} at {i}: {got} vs {r}"
                    );
                }
                let bits: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
                match &first {
                    None => first = Some(bits),
                    Some(f) => assert_eq!(f, &bits, "{g:?}: lanes {lanes} differ"),
                }
            }
        }
    }
}
