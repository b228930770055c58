//! Dense convolutions as an implicit GEMM: the block's input rows are copied once into a
//! zero-padded buffer, and the product's micro-kernel reads each tap's shifted run of it in
//! place (`gemm::OFFSETS`: step k of B at its own offset) instead of a packed im2col copy of
//! every column — a copy k times larger than the image block. The copy stores each channel
//! as `sh·sw` phases (rows `sh·r + a`, columns `sw·q + b` at phase (a, b), row r, position
//! q) of rows `wq` apart, so that for every tap output (y, x) reads phase element
//! `y·wq + x` from the tap's start: the block's outputs are one run of *virtual columns*
//! `v = y·wq + x`, tiled 32 at a time across row ends (the `wq - ow` columns past each
//! row's end are computed and dropped), whatever the image's width.

use super::super::epilogue::{self, Epilogue};
use super::super::gemm::{self, ARows, Mat, KC, MR, NR};
use super::Geometry;

/// A block of `rows` output rows of geometry `g` as virtual columns: the width `wq` of a
/// padded row's phase, the block's virtual columns, and how many of them are outputs.
fn columns(g: &Geometry, rows: usize) -> (usize, usize, usize) {
    let wq = padded_width(g).div_ceil(g.sw as usize);
    let ow = g.ow as usize;
    (wq, (rows - 1) * wq + ow, rows * ow)
}

/// The padded row's width: the input and its low padding, or as far as the last tap reaches.
/// With a unit column stride, a row's high padding is the next row's low padding (zeros
/// either way), so a tap may reach up to `pw` columns past the row: fewer columns per row that
/// are computed and dropped (a 14-wide image: 15 columns a row, not 16).
fn padded_width(g: &Geometry) -> usize {
    let (w, ow) = (g.w as usize, g.ow as usize);
    let (sw, kw, dw, pw) = (g.sw as usize, g.kw as usize, g.dw as usize, g.pw as usize);
    let reach = (ow - 1) * sw + (kw - 1) * dw + 1;
    if sw == 1 {
        (w + pw).max(ow).max(reach.saturating_sub(pw))
    } else {
        (w + pw).max(reach)
    }
}

/// Where the tile vectors of 16 virtual columns start: at the first output, then 16 on, or
/// at the next row's start where that lands past a row's outputs (its columns would all be
/// dropped). A tile is two vectors of this list, wherever each starts.
fn vector_starts(virt: usize, wq: usize, ow: usize) -> impl Iterator<Item = usize> {
    let next = move |&v: &usize| {
        let v = v + NR;
        Some(if v % wq >= ow { v + wq - v % wq } else { v })
    };
    std::iter::successors(Some(0), next).take_while(move |&v| v < virt)
}

/// Whether [`rows`] computes a block of `rows` output rows of geometry `g` with `o` filters
/// over `c` channels: a CPU with AVX-512, more than 4 filters, no negative padding, a window
/// of several taps (a 1×1 conv's product reads its image rows in place, no copy at all) that
/// read every row and column phase the copy holds, and tiles of 32 virtual columns at least
/// 3/4 outputs. Where it does not, the packed path computes the same sums.
pub(super) fn applies(g: &Geometry, o: i64, c: i64, rows: i64, wide: bool) -> bool {
    let read = g.kh * g.kw > 1 && g.kw * g.dw >= g.sw && g.kh * g.dh >= g.sh;
    if !(wide && g.ph >= 0 && g.pw >= 0 && read && rows > 0 && g.ow > 0) {
        return false;
    }
    // The packed path streams few filters (or a tiny product) as one chain over all steps
    // (`gemm::thin_packed`), where this path adds blocks of KC steps: not those, so that the
    // two give identical results.
    let k = c * g.kh * g.kw;
    if o <= 4 || o * rows * g.ow * k <= 4096 {
        return false;
    }
    let (wq, virt, outputs) = columns(g, rows as usize);
    let vectors = vector_starts(virt, wq, g.ow as usize).count();
    4 * outputs >= 3 * vectors.next_multiple_of(2) * NR
}

/// Multiply-adds from which a block's filters are split over the helper threads.
const SPLIT: usize = 1 << 22;

thread_local! {
    /// The padded block and the tap offsets, per thread, reused between calls.
    static BUFS: std::cell::Cell<(Vec<f32>, Vec<usize>, Vec<f32>)> =
        const { std::cell::Cell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Output rows `y0..y0 + rows` of a dense convolution, as [`super::kiln_conv2d_rows`]
/// computes them (the same products summed in the same order, so identical results).
///
/// # Safety
/// As [`super::kiln_conv2d_rows`]; [`applies`] holds for `g` and `rows` (so the CPU has
/// AVX-512).
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
    // The block's input rows, `rp` per row phase; padded rows of `wq` per column phase.
    let in_rows = (rows - 1) * sh + (kh - 1) * dh + 1;
    let rp = in_rows.div_ceil(sh);
    let (wq, virt, _) = columns(g, rows);
    let phase = rp * wq;
    let plane = sh * sw * phase;
    // Step (ch·kh + ky)·kw + kx of the contraction: where its tap's phase reads output 0.
    let (mut buf, mut offs, mut ap) = BUFS.with(|b| b.take());
    offs.clear();
    for ch in 0..c {
        for ky in 0..kh {
            for kx in 0..kw {
                let (ry, rx) = (ky * dh, kx * dw);
                let ph = ry % sh * sw + rx % sw;
                offs.push(ch * plane + ph * phase + ry / sh * wq + rx / sw);
            }
        }
    }
    let starts: Vec<usize> = vector_starts(virt, wq, ow).collect();
    // Every tile's vectors read inside the buffer, past the last tap's run included (a last
    // tile of one vector computes a second one after it, not stored).
    let reach = offs.iter().max().copied().unwrap_or(0) + starts.last().map_or(0, |v| v + 2 * NR);
    let len = (c * plane).max(reach);
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let first = y0 * g.sh - g.ph;
    let image_row = |r: usize| {
        let iy = first + r as i64;
        (r < in_rows && iy >= 0 && iy < h as i64).then_some(iy as usize)
    };
    if sw == 1 {
        // Each padded row of each row phase: the input row between zeros, or zeros (only
        // what no input lands on is zeroed: a memset of the whole block cost as much as
        // the copy).
        buf[c * plane..len].fill(0.0);
        for ch in 0..c {
            for a in 0..sh {
                for q in 0..rp {
                    let at = ch * plane + a * phase + q * wq;
                    let row = &mut buf[at..at + wq];
                    match image_row(q * sh + a) {
                        Some(iy) => {
                            // SAFETY: row iy of channel ch has w elements.
                            let src =
                                unsafe { std::slice::from_raw_parts(x.add((ch * h + iy) * w), w) };
                            row[..pw].fill(0.0);
                            row[pw..pw + w].copy_from_slice(src);
                            row[pw + w..].fill(0.0);
                        }
                        None => row.fill(0.0),
                    }
                }
            }
        }
    } else {
        // Zeros where no input lands (a memset: `resize` fills element by element).
        buf[..len].fill(0.0);
        for ch in 0..c {
            for r in 0..in_rows {
                let Some(iy) = image_row(r) else { continue };
                let at = ch * plane + r % sh * sw * phase + r / sh * wq;
                // SAFETY: row iy of channel ch has w elements.
                let src = unsafe { std::slice::from_raw_parts(x.add((ch * h + iy) * w), w) };
                // SAFETY: the CPU has AVX-512 (`applies`); each phase's row is inside the
                // buffer.
                unsafe { phases(src, pw, sw, phase, buf[at..].as_mut_ptr()) };
            }
        }
    }
    let a = Mat {
        p: wt,
        rs: 1,
        cs: k as isize,
    };
    // Whole panels of A are read in place; a last partial one is packed (zeros past the
    // filters).
    let panel = |ib: usize, ap: &mut Vec<f32>| -> ARows {
        if o - ib >= MR {
            return ARows {
                p: wt.wrapping_add(ib * k),
                row: k,
                step: 1,
            };
        }
        ap.resize(MR * k, 0.0);
        // SAFETY: filters ib..o hold k steps.
        unsafe { gemm::pack::<MR>(a, 0, ib, k, o - ib, ap) };
        ARows::packed(ap)
    };
    // Blocks of 12 filters, and of 8 (an assembly tile of its own) where the count leaves 4
    // or 8 over (64 = 4·12 + 2·8); any other rest (fewer than 8, or a count not a multiple
    // of 4) by the portable loop.
    let mut sizes = vec![2 * MR; o / (2 * MR)];
    match o % (2 * MR) {
        0 => {}
        8 => sizes.push(8),
        4 if !sizes.is_empty() => {
            sizes.pop();
            sizes.extend([8, 8]);
        }
        r => sizes.push(r),
    }
    let mut blocks: Vec<(usize, usize, ARows, ARows)> = Vec::with_capacity(sizes.len());
    let mut i = 0;
    for n in sizes {
        let a0 = panel(i, &mut ap);
        let a1 = match n {
            // Rows 6 and 7 in place too (the assembly tile reads both panels alike).
            8 => ARows {
                p: wt.wrapping_add((i + MR) * k),
                row: k,
                step: 1,
            },
            n if n > MR => panel(i + MR, &mut ap),
            _ => a0,
        };
        blocks.push((i, n, a0, a1));
        i += n;
    }
    let place = Place {
        out,
        ohw: (g.oh * g.ow) as usize,
        first: y0 as usize * ow,
        wq,
        ow,
        virt,
        epi,
    };
    // Large blocks (a small image's every row, lowering's choice where the filters outgrow
    // a core's cache) split their filters over the helpers: each thread streams only its
    // share of them. Each output is computed by one thread as it would be alone.
    let t = match o * k * virt >= SPLIT {
        true => (crate::threads::helpers() + 1).min(blocks.len()).max(1),
        false => 1,
    };
    struct Work<'a> {
        blocks: &'a [(usize, usize, ARows, ARows)],
        place: &'a Place<'a>,
    }
    // SAFETY: the filters and the padded block are only read; each part stores the outputs
    // of its own filters.
    unsafe impl Sync for Work<'_> {}
    impl Work<'_> {
        /// Part `w` of `t`: its blocks of filters, and where they store (one method, so that
        /// the closure below borrows the whole `Work`, not its fields apart).
        fn part(&self, w: usize, t: usize) -> (&[(usize, usize, ARows, ARows)], &Place<'_>) {
            let n = self.blocks.len();
            (&self.blocks[n * w / t..n * (w + 1) / t], self.place)
        }
    }
    let work = Work {
        blocks: &blocks,
        place: &place,
    };
    let (bufs, offs_ref, starts_ref) = (&buf, &offs, &starts);
    crate::threads::parallel_for(t, |w| {
        let (part, place) = work.part(w, t);
        // SAFETY: the CPU has AVX-512 (`applies`); every step's run of 32 columns from each
        // tile is inside the buffer (`reach`); the filters' outputs inside `out`.
        unsafe { product(bufs, offs_ref, part, starts_ref, k, place) };
    });
    BUFS.with(|b| b.set((buf, offs, ap)));
}

/// The block's tiles of 32 virtual columns, each by every block of filters (`(first filter,
/// A panels, whether the second panel is used)`) while its steps stay in L1, stored through
/// `place`.
///
/// # Safety
/// The CPU has AVX-512F; every step's run of 32 columns from each tile is inside `buf`; the
/// panels hold `k` steps; the filters' outputs are inside `place`'s output.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn product(
    buf: &[f32],
    offs: &[usize],
    blocks: &[(usize, usize, ARows, ARows)],
    starts: &[usize],
    k: usize,
    place: &Place,
) {
    use std::arch::x86_64::*;
    // Blocks of KC steps, each summed apart and added to the sum of the earlier blocks (kept
    // per tile and block of filters), as the packed path adds them to what it stored
    // (identical results). A block of steps of a tile stays in L1 while every block of
    // filters runs over it, and the filters' block of steps (all of them: at most o·KC
    // values) stays in L2 while every tile runs over it; with the tiles outermost, a conv of
    // large filters (3×3 by 256 channels: 2.4 MB) streamed them from L3 once per tile.
    let tiles = starts.len().div_ceil(2);
    let per = 2 * MR * 2;
    let mut sums = if k > KC {
        vec![_mm512_setzero_ps(); tiles * blocks.len() * per]
    } else {
        Vec::new()
    };
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        let offs = offs[pc..].as_ptr();
        for (t, vectors) in starts.chunks(2).enumerate() {
            let v = [
                vectors[0],
                vectors.get(1).copied().unwrap_or(vectors[0] + NR),
            ];
            let b = [
                buf.as_ptr().wrapping_add(v[0]),
                buf.as_ptr().wrapping_add(v[1]),
            ];
            let at = |a: ARows| ARows {
                p: a.p.wrapping_add(pc * a.step),
                ..a
            };
            // With one block of steps, no activation and no QDQ pair after: where the tile's
            // two vectors go in each output plane, when each is at most two runs of outputs (a
            // whole vector, or one across a row's end) — every tile but those of images
            // narrower than a vector.
            let whole = (kc == k && vectors.len() == 2 && place.epi.linear_end())
                .then(|| v.map(|v0| place.runs(v0)))
                .filter(|runs| runs.iter().all(|r| r.1 <= 2))
                .map(|runs| runs.map(|(r, n)| [r[0], if n > 1 { r[1] } else { (0, 0) }]));
            for (n, &(i, rows, a0, a1)) in blocks.iter().enumerate() {
                let (a0, a1) = (at(a0), at(a1));
                if let (Some(runs), 8 | 12, Some((panels, _))) = (
                    whole,
                    rows,
                    gemm::asm_tile::<2, 2, { gemm::OFFSETS }>([a0, a1], [0; 2]),
                ) {
                    // One block of steps of a whole tile: summed and stored from registers.
                    let first = i * place.ohw;
                    let epi = place.epi.from(i, 0, 0);
                    let o = gemm::tile::TileOut {
                        out: place.out.wrapping_add(first),
                        res: place.epi.res.wrapping_add(first),
                        runs,
                        row: place.ohw,
                        epi: &epi,
                    };
                    // SAFETY: forwarded; the tile's vectors are outputs of filters i..i + rows.
                    unsafe { gemm::tile::k_loop_store(kc, panels, b, 0, offs, rows, &o) };
                    continue;
                }
                // SAFETY: forwarded; an 8-row block's panels are rows of the filters in place.
                let part = unsafe {
                    match rows {
                        ..=MR => gemm::accumulate::<1, 2, { gemm::OFFSETS }>(
                            kc,
                            [a0],
                            b,
                            [0; 2],
                            offs,
                            rows,
                        ),
                        _ => gemm::accumulate::<2, 2, { gemm::OFFSETS }>(
                            kc,
                            [a0, a1],
                            b,
                            [0; 2],
                            offs,
                            rows,
                        ),
                    }
                };
                if kc == k {
                    // One block of steps: stored as summed.
                    // SAFETY: forwarded.
                    unsafe { place.store(&part, i, rows, vectors) };
                    continue;
                }
                let sum = &mut sums[(t * blocks.len() + n) * per..][..per];
                if pc == 0 {
                    sum.copy_from_slice(&part);
                } else {
                    for (x, p) in sum.iter_mut().zip(part) {
                        *x = _mm512_add_ps(*x, p);
                    }
                }
                if pc + kc == k {
                    // SAFETY: forwarded.
                    unsafe { place.store(sum, i, rows, vectors) };
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn product(
    _: &[f32],
    _: &[usize],
    _: &[(usize, usize, ARows, ARows)],
    _: &[usize],
    _: usize,
    _: &Place,
) {
    unreachable!("only called when the CPU has AVX-512")
}

/// Where a tile's virtual columns go: filter i's output (y, x) of the block at `out + i·ohw
/// + first + y·ow + x`, for `v = y·wq + x < virt` with `x < ow`.
struct Place<'a> {
    out: *mut f32,
    ohw: usize,
    first: usize,
    wq: usize,
    ow: usize,
    virt: usize,
    epi: &'a Epilogue,
}

impl Place<'_> {
    /// Stores vectors of the tile starting at virtual columns `starts` for filters `i..i +
    /// rows` (row r's vector q in `acc[2r + q]`) through the epilogue: whole vectors straight
    /// from their registers, others (across a row's end) run by run of outputs.
    ///
    /// # Safety
    /// The CPU has AVX-512F; the filters and the block's outputs are inside `out` (and the
    /// residual, laid out alike), the filters inside the epilogue's per-row operands.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store(
        &self,
        acc: &[std::arch::x86_64::__m512],
        i: usize,
        rows: usize,
        starts: &[usize],
    ) {
        use std::arch::x86_64::*;
        let epi = !self.epi.is_none();
        let quick = self.epi.quick();
        // Whole vectors (a tile inside output rows, most of them): where each goes worked
        // out once, each filter's epilogue coefficients loaded once (per vector, they cost a
        // third of a 3-channel conv's time).
        if starts.len() <= 2 && starts.iter().all(|&v0| v0 % self.wq + NR <= self.ow) {
            let mut ats = [0usize; 2];
            for (a, &v0) in ats.iter_mut().zip(starts) {
                *a = self.first + v0 / self.wq * self.ow + v0 % self.wq;
            }
            for r in 0..rows {
                let f = i + r;
                // SAFETY: the vectors are outputs of filter f (and the residual's).
                unsafe {
                    let d = self.out.add(f * self.ohw);
                    if epi {
                        let e = self.epi.from(f, 0, f * self.ohw);
                        let st = epilogue::avx512::coefs(&e, 0, 0, !0);
                        let (ats, v) = (&ats[..starts.len()], |q: usize| acc[2 * r + q]);
                        match (quick, e.res.is_null()) {
                            (Some(false), true) => quick_row::<false, false>(&e, st, d, ats, v),
                            (Some(false), false) => quick_row::<false, true>(&e, st, d, ats, v),
                            (Some(true), true) => quick_row::<true, false>(&e, st, d, ats, v),
                            (Some(true), false) => quick_row::<true, true>(&e, st, d, ats, v),
                            (None, _) => {
                                for (q, &at) in ats.iter().enumerate() {
                                    let r = e.res.wrapping_add(at);
                                    let v = epilogue::avx512::apply(&e, v(q), st, r, !0);
                                    _mm512_storeu_ps(d.add(at), v);
                                }
                            }
                        }
                    } else {
                        for (q, &at) in ats.iter().enumerate().take(starts.len()) {
                            _mm512_storeu_ps(d.add(at), acc[2 * r + q]);
                        }
                    }
                }
            }
            return;
        }
        // Vectors across a row's end: each as its runs of outputs, masked stores straight
        // from the registers.
        for (q, &v0) in starts.iter().enumerate() {
            let (runs, n) = self.runs(v0);
            for r in 0..rows {
                let f = i + r;
                // SAFETY: each run's lanes are outputs of filter f (and the residual's), inside
                // `out`; lanes outside a run's mask are neither read nor written.
                unsafe {
                    let d = self.out.add(f * self.ohw);
                    let e = self.epi.from(f, 0, f * self.ohw);
                    let st = epilogue::avx512::coefs(&e, 0, 0, !0);
                    for &(base, m) in &runs[..n] {
                        let mut v = acc[2 * r + q];
                        if epi {
                            let res = e.res.wrapping_offset(base);
                            v = epilogue::avx512::apply(&e, v, st, res, m);
                        }
                        _mm512_mask_storeu_ps(d.wrapping_offset(base), m, v);
                    }
                }
            }
        }
    }

    /// Where the lanes of the vector of virtual columns from `v0` go: runs of lanes that are
    /// outputs of one row, each as the output index lane 0 would have on that row (lane `l`
    /// of the run stores at `base + l`) and the run's lanes, and how many runs.
    fn runs(&self, v0: usize) -> ([(isize, u16); NR], usize) {
        let mut runs = [(0isize, 0u16); NR];
        let mut n = 0;
        let end = (v0 + NR).min(self.virt);
        let mut v = v0;
        while v < end {
            let (y, x) = (v / self.wq, v % self.wq);
            let run = (end - v).min(self.wq - x);
            let outs = run.min(self.ow.saturating_sub(x));
            if outs > 0 {
                let l0 = v - v0;
                let base = (self.first + y * self.ow + x) as isize - l0 as isize;
                runs[n] = (base, ((1u32 << (l0 + outs)) - (1u32 << l0)) as u16);
                n += 1;
            }
            v += run;
        }
        (runs, n)
    }
}

/// A filter's whole output vectors `v(q)` (at `ats[q]` from `d`, the residual alike)
/// through an epilogue [`Epilogue::quick`] takes, scale and shift `st`: what `apply` gives,
/// its decisions taken once.
///
/// # Safety
/// The CPU has AVX-512F; each vector inside the output (and the residual).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn quick_row<const CLAMP: bool, const RES: bool>(
    e: &Epilogue,
    st: epilogue::Coefs<std::arch::x86_64::__m512>,
    d: *mut f32,
    ats: &[usize],
    v: impl Fn(usize) -> std::arch::x86_64::__m512,
) {
    use epilogue::avx512::{quick_bounds, quick_coefs, quick_one};
    // SAFETY: the CPU has AVX-512F.
    let (st, bounds) = unsafe { (quick_coefs(st), quick_bounds(e)) };
    for (q, &at) in ats.iter().enumerate() {
        // SAFETY: forwarded.
        unsafe {
            let x = quick_one::<CLAMP, RES>(v(q), st, bounds, e.res.wrapping_add(at), !0);
            std::arch::x86_64::_mm512_storeu_ps(d.add(at), x);
        }
    }
}

/// Scatters an input row `src` into its padded row at `dst`, stored as `sw` column phases
/// `phase` apart (padded column `p = ix + pw` at phase `p % sw`, position `p / sw < wq`).
///
/// # Safety
/// The CPU has AVX-512F; each phase's row of `wq` elements is writable from `dst`, and
/// `wq·sw >= src.len() + pw`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn phases(src: &[f32], pw: usize, sw: usize, phase: usize, dst: *mut f32) {
    use std::arch::x86_64::*;
    let w = src.len();
    let mut done = 0;
    if sw == 2 {
        // 32 inputs at a time: the even ones to one phase, the odd ones to the other.
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
        let (pe, po) = (pw % 2, (pw + 1) % 2);
        // The last group of fewer than 32 through masks (rows of 28 or 14 had no whole
        // group and went element by element, dividing by the stride).
        let mask = |n: usize| -> __mmask16 { ((1u32 << n.min(16)) - 1) as __mmask16 };
        while done < w {
            let n = (w - done).min(32);
            // SAFETY: inputs done..done + n exist (masked loads touch no lane past them); their
            // positions lie inside their phases.
            unsafe {
                let lo = _mm512_maskz_loadu_ps(mask(n), src.as_ptr().wrapping_add(done));
                let hi = _mm512_maskz_loadu_ps(
                    mask(n.saturating_sub(16)),
                    src.as_ptr().wrapping_add(done + 16),
                );
                let e = _mm512_permutex2var_ps(lo, evens, hi);
                let o = _mm512_permutex2var_ps(lo, odds, hi);
                _mm512_mask_storeu_ps(
                    dst.add(pe * phase + (done + pw) / 2),
                    mask(n.div_ceil(2)),
                    e,
                );
                _mm512_mask_storeu_ps(dst.add(po * phase + (done + 1 + pw) / 2), mask(n / 2), o);
            }
            done += n;
        }
    }
    for (ix, &v) in src.iter().enumerate().skip(done) {
        let p = ix + pw;
        // SAFETY: position p / sw < wq of phase p % sw.
        unsafe { *dst.add(p % sw * phase + p / sw) = v };
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn phases(_: &[f32], _: usize, _: usize, _: usize, _: *mut f32) {
    unreachable!("only called when the CPU has AVX-512")
}
