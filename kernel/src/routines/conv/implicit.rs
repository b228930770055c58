//! Dense convolutions as an implicit GEMM: the block's input rows are copied once into a
//! zero-padded buffer, and the product's micro-kernel reads each tap's shifted run of it in
//! place (`gemm::OFFSETS`: step k of B at its own offset) instead of a packed im2col copy of
//! every column — a copy k times larger than the image block. With a column stride s, each
//! padded row is stored as s phases (columns s·q + r at phase r, position q), so that every
//! tap's inputs for consecutive outputs are again one contiguous run.

use super::super::epilogue::Epilogue;
use super::super::gemm::{self, ARows, Mat, Out, KC, MR, NR};
use super::Geometry;

/// Whether [`rows`] computes a block of geometry `g`: a CPU with AVX-512, no negative
/// padding, a window of several taps (a 1×1 conv's product reads its image rows in place,
/// no copy at all) that read every row and phase the copy holds, and tiles whose columns
/// are mostly outputs (at least 3/4: not 7 or 17 wide images, which the packed path's
/// panels, running on across output rows, fill). Where it does not, the packed path
/// computes the same sums.
pub(super) fn applies(g: &Geometry, wide: bool) -> bool {
    let read = g.kh * g.kw > 1 && g.kw * g.dw >= g.sw && g.kh * g.dh >= g.sh;
    let ow = g.ow.max(1) as usize;
    // Columns a row's tiles span: two rows in 32 when a row fits a vector, else whole panels.
    let span = if ow <= NR { NR } else { ow.div_ceil(NR) * NR };
    wide && g.ph >= 0 && g.pw >= 0 && read && 4 * ow >= 3 * span
}

/// Elements past the padded block that a tile's last vector loads may read (a tile of 32
/// columns reads whole vectors past the output row's end: junk that only columns not stored
/// sum).
const SLACK: usize = 2 * NR;

thread_local! {
    /// The padded block and the tap offsets, per thread, reused between calls.
    static BUFS: std::cell::Cell<(Vec<f32>, Vec<usize>, Vec<f32>)> =
        const { std::cell::Cell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Output rows `y0..y0 + rows` of a dense convolution, as [`super::kiln_conv2d_rows`]
/// computes them (the same products summed in the same order, so identical results).
///
/// # Safety
/// As [`super::kiln_conv2d_rows`]; [`applies`] holds for `g` (so the CPU has AVX-512).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn rows(
    x: *const f32,
    wt: *const f32,
    out: *mut f32,
    c: i64,
    o: i64,
    g: &Geometry,
    y0: i64,
    rows: i64,
    epi: &Epilogue,
) {
    let (c, o, rows) = (c as usize, o as usize, rows as usize);
    let (h, w, ow) = (g.h as usize, g.w as usize, g.ow as usize);
    let (kh, kw, dh, dw) = (g.kh as usize, g.kw as usize, g.dh as usize, g.dw as usize);
    let k = c * kh * kw;
    if o == 0 || rows == 0 || ow == 0 || k == 0 {
        return;
    }
    let (sh, sw, pw) = (g.sh as usize, g.sw as usize, g.pw as usize);
    // The block's input rows, and columns padded on both sides so that every tap is inside
    // (`wp` of them), stored as `sw` phases of `wq` each.
    let in_rows = (rows - 1) * sh + (kh - 1) * dh + 1;
    let wp = (w + pw).max((ow - 1) * sw + (kw - 1) * dw + 1);
    let wq = wp.div_ceil(sw);
    let row_len = sw * wq;
    let plane = in_rows * row_len;
    let (mut buf, mut offs, mut ap) = BUFS.with(|b| b.take());
    let len = c * plane + SLACK;
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    // Zeros where no input lands (a memset: `resize` fills element by element).
    buf[..len].fill(0.0);
    let first = y0 * g.sh - g.ph;
    for ch in 0..c {
        for r in 0..in_rows {
            let iy = first + r as i64;
            if iy < 0 || iy >= h as i64 {
                continue;
            }
            let dst = &mut buf[ch * plane + r * row_len..][..row_len];
            // SAFETY: row iy of channel ch has w elements.
            let src = unsafe { std::slice::from_raw_parts(x.add((ch * h + iy as usize) * w), w) };
            if sw == 1 {
                dst[pw..pw + w].copy_from_slice(src);
            } else {
                // SAFETY: the CPU has AVX-512 (`applies`).
                unsafe { phases(src, pw, sw, wq, dst) };
            }
        }
    }
    // Step (ch·kh + ky)·kw + kx of the contraction: its tap's run from a tile's first output.
    offs.clear();
    for ch in 0..c {
        for ky in 0..kh {
            for kx in 0..kw {
                let p = kx * dw;
                offs.push(ch * plane + ky * dh * row_len + p % sw * wq + p / sw);
            }
        }
    }
    let ohw = (g.oh * g.ow) as usize;
    let last = (k - 1) / KC * KC;
    let a = Mat {
        p: wt,
        rs: 1,
        cs: k as isize,
    };
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        for i in (0..o).step_by(2 * MR) {
            // Whole panels of A are read in place; a last partial one is packed (zeros past
            // the filters).
            let panel = |p: usize, ap: &mut Vec<f32>| -> ARows {
                let ib = i + p * MR;
                if o - ib >= MR {
                    return ARows {
                        p: wt.wrapping_add(ib * k + pc),
                        row: k,
                        step: 1,
                    };
                }
                ap.resize(MR * kc, 0.0);
                // SAFETY: filters ib..o hold steps pc..pc + kc.
                unsafe { gemm::pack::<MR>(a, pc, ib, kc, o - ib, ap) };
                ARows::packed(ap)
            };
            let a0 = panel(0, &mut ap);
            let pair = o - i > MR;
            let a1 = if pair { panel(1, &mut ap) } else { a0 };
            // Tiles of 32 columns of an output row; of two output rows where a row is no
            // wider than a vector (a 16-wide image would fill only half a tile).
            let pairs = ow <= NR;
            for y in (0..rows).step_by(if pairs { 2 } else { 1 }) {
                let row = buf.as_ptr().wrapping_add(y * sh * row_len);
                for x0 in (0..ow).step_by(2 * NR) {
                    let at = i * ohw + (y0 as usize + y) * ow + x0;
                    let (b0, b1, cols, panel, two) = if pairs {
                        let two = y + 1 < rows;
                        let next = row.wrapping_add(sh * row_len);
                        (row, next, if two { 2 * ow } else { ow }, ow, two)
                    } else {
                        let (b0, b1) = (row.wrapping_add(x0), row.wrapping_add(x0 + NR));
                        (b0, b1, (2 * NR).min(ow - x0), NR, x0 + NR < ow)
                    };
                    let out = Out {
                        // SAFETY: filter i's output (y0 + y, x0) is inside `out`.
                        p: unsafe { out.add(at) },
                        ld: ohw,
                        add: pc > 0,
                        rows: (2 * MR).min(o - i),
                        cols,
                        epi: (pc == last && !epi.is_none()).then(|| epi.from(i, 0, at)),
                        panel,
                    };
                    let offs = offs[pc..].as_ptr();
                    // SAFETY: the CPU has AVX-512 (`applies`); every step's run of 32 columns
                    // from the tile is inside the padded block and its slack; the tile's
                    // rows and columns inside `out`.
                    unsafe {
                        match (pair, two) {
                            (true, true) => gemm::micro_avx512::<2, 2, { gemm::OFFSETS }>(
                                kc,
                                [a0, a1],
                                [b0, b1],
                                [0; 2],
                                offs,
                                out,
                            ),
                            (true, false) => gemm::micro_avx512::<2, 1, { gemm::OFFSETS }>(
                                kc,
                                [a0, a1],
                                [b0],
                                [0],
                                offs,
                                out,
                            ),
                            (false, true) => gemm::micro_avx512::<1, 2, { gemm::OFFSETS }>(
                                kc,
                                [a0],
                                [b0, b1],
                                [0; 2],
                                offs,
                                out,
                            ),
                            (false, false) => gemm::micro_avx512::<1, 1, { gemm::OFFSETS }>(
                                kc,
                                [a0],
                                [b0],
                                [0],
                                offs,
                                out,
                            ),
                        }
                    }
                }
            }
        }
    }
    BUFS.with(|b| b.set((buf, offs, ap)));
}

/// Scatters an input row `src` into its padded row `dst` stored as `sw` phases of `wq`
/// (padded column `p = ix + pw` at phase `p % sw`, position `p / sw`).
///
/// # Safety
/// The CPU has AVX-512F; `dst` holds `sw·wq` elements and `wq·sw >= src.len() + pw`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn phases(src: &[f32], pw: usize, sw: usize, wq: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let w = src.len();
    let mut done = 0;
    if sw == 2 {
        // 32 inputs at a time: the even ones to one phase, the odd ones to the other.
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
        let (pe, po) = (pw % 2, (pw + 1) % 2);
        while done + 32 <= w {
            // SAFETY: inputs done..done + 32 exist; their positions lie inside their phases.
            unsafe {
                let lo = _mm512_loadu_ps(src.as_ptr().add(done));
                let hi = _mm512_loadu_ps(src.as_ptr().add(done + 16));
                let e = _mm512_permutex2var_ps(lo, evens, hi);
                let o = _mm512_permutex2var_ps(lo, odds, hi);
                let d = dst.as_mut_ptr();
                _mm512_storeu_ps(d.add(pe * wq + (done + pw) / 2), e);
                _mm512_storeu_ps(d.add(po * wq + (done + 1 + pw) / 2), o);
            }
            done += 32;
        }
    }
    for (ix, &v) in src.iter().enumerate().skip(done) {
        let p = ix + pw;
        dst[p % sw * wq + p / sw] = v;
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn phases(_: &[f32], _: usize, _: usize, _: usize, _: &mut [f32]) {
    unreachable!("only called when the CPU has AVX-512")
}
