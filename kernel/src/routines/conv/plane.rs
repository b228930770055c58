//! Plane convolutions (`conv2d`, what depthwise convs call per channel) and the padded copy
//! they and pooling read. The plane is copied into a per-thread buffer padded so that every
//! tap of every output is inside it, each row's columns grouped by stride phase (with column
//! stride `s`, columns `p, p + s, p + 2s, …` together): a tap's inputs for consecutive
//! outputs are then consecutive, and every stride loads vectors as stride 1 does.
//! Output rows then sum their taps without bounds checks — AVX-512 or AVX2 blocks of rows and
//! columns (3×3 windows with each input row loaded once for every output row it feeds),
//! scalar code otherwise — each output summing its taps in (ky, kx) order with fused
//! multiply-adds on every path, so that all give identical results.

use super::super::epilogue::Epilogue;
use super::Geometry;

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
    scale: *const f32,
    shift: *const f32,
    res: *const f32,
    scale2: *const f32,
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
    act: i64,
    lo: f32,
    hi: f32,
    pre_s: f32,
    pre_z: f32,
    pre_lo: f32,
    pre_hi: f32,
    pre_d: f32,
    pre_at: f32,
    post_s: f32,
    post_z: f32,
    post_lo: f32,
    post_hi: f32,
    post_d: f32,
) {
    let g = Geometry::of([h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw]);
    let epi = Epilogue::new(
        (scale, shift, res, scale2),
        (lo, hi),
        0,
        act,
        [
            pre_s, pre_z, pre_lo, pre_hi, pre_d, pre_at, post_s, post_z, post_lo, post_hi, post_d,
        ],
    );
    // SAFETY: forwarded.
    unsafe { plane(x, k, out, &g, lanes(), &epi) }
}

/// The widest vector code this CPU runs: 16 lanes (AVX-512), 8 (AVX2 and FMA) or 1.
pub(in crate::routines) fn lanes() -> usize {
    if crate::avx512() {
        16
    } else if crate::avx2_fma() {
        8
    } else {
        1
    }
}

/// # Safety
/// As [`kiln_conv2d_plane`]; `lanes` (1, 8 or 16) at most what [`lanes`] gives.
pub(in crate::routines) unsafe fn plane(
    x: *const f32,
    k: *const f32,
    out: *mut f32,
    g: &Geometry,
    lanes: usize,
    epi: &Epilogue,
) {
    if g.oh <= 0 || g.ow <= 0 {
        return;
    }
    let mut buf = take_padded();
    // SAFETY: forwarded.
    let pad = unsafe { padded(x, g, 0.0, None, &mut buf) };
    // (offset of the tap's input for output (0, 0), weight), per tap, window row by row: on
    // the stack for windows up to 5×5 (an allocation per plane cost a fifth of a 14×14
    // plane's time).
    let n_taps = (g.kh * g.kw) as usize;
    let mut small = [(0usize, 0f32); 25];
    let mut large: Vec<(usize, f32)> = Vec::new();
    let taps: &mut [(usize, f32)] = if n_taps <= small.len() {
        &mut small[..n_taps]
    } else {
        large.resize(n_taps, (0, 0.0));
        &mut large
    };
    let mut t = 0;
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            // SAFETY: `t < kh·kw`.
            taps[t] = (pad.tap(g, ky, kx), unsafe { *k.add(t) });
            t += 1;
        }
    }
    let taps = &*taps;
    let p = buf.as_ptr();
    let step = g.sh as usize * pad.row;
    let (oh, ow) = (g.oh as usize, g.ow as usize);
    // Blocks of up to four output rows in vector registers (independent sums enough to hide
    // the multiply-add latency), the epilogue applied before each store.
    let mut oy = 0;
    // 16 lanes with AVX-512 (masked for rows narrower than that), else 8 where the rows are
    // that wide.
    let lanes = match lanes {
        16 => 16,
        8 if ow >= 8 => 8,
        _ => 1,
    };
    #[cfg(target_arch = "x86_64")]
    if lanes > 1 {
        let epi = (!epi.is_none()).then_some(epi);
        // A 3×3 window over consecutive rows reads each input row once per block of rows.
        let window3 = (lanes == 16 && g.kh == 3 && g.kw == 3 && g.dh == 1 && g.sh <= 2)
            .then(|| std::array::from_fn::<f32, 9, _>(|t| taps[t].1));
        while oy < oh {
            let n = (oh - oy).min(4);
            // SAFETY: the CPU runs `lanes`; every tap of these rows is inside the copy, with
            // 16 elements to spare; the rows are inside `out` (and the residual).
            unsafe {
                let (x, out) = (p.add(oy * step), out.add(oy * ow));
                let epi = epi.map(|e| e.from(0, 0, oy * ow));
                let e = epi.as_ref();
                if let Some(w) = &window3 {
                    let cols = [taps[0].0, taps[1].0, taps[2].0];
                    avx512::rows3(x, pad.row, g.sh as usize, cols, w, out, ow, n, e);
                } else if lanes == 16 {
                    avx512::rows(x, step, taps, out, ow, n, e);
                } else {
                    avx2::rows(x, step, taps, out, ow, n, e);
                }
            }
            oy += n;
        }
    }
    let _ = lanes;
    for oy in oy..oh {
        let base = oy * step;
        // SAFETY: the row is inside `out`.
        let row = unsafe { out.add(oy * ow) };
        for ox in 0..ow {
            let mut acc = 0.0f32;
            for &(off, wt) in taps {
                // SAFETY: every tap is inside the copy.
                let v = unsafe { *p.add(base + off + ox) };
                // Fused, as the vector code sums: identical results on every path.
                acc = v.mul_add(wt, acc);
            }
            // SAFETY: `ox < ow`.
            unsafe { *row.add(ox) = acc };
        }
        // SAFETY: the row is inside `out` (and the residual, laid out alike).
        unsafe { epi.block_at((0, 0, oy * ow), row, 0, 1, ow) };
    }
    give_padded(buf);
}

thread_local! {
    /// The padded copy's buffer, per thread, reused between calls.
    static PADDED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// This thread's buffer for [`padded`] (hand it back with [`give_padded`]).
pub(in crate::routines) fn take_padded() -> Vec<f32> {
    PADDED.with(|b| b.take())
}

/// Keeps `buf` for the next [`take_padded`] on this thread.
pub(in crate::routines) fn give_padded(buf: Vec<f32>) {
    PADDED.with(|b| b.set(buf));
}

/// Where [`padded`] put a plane: padded row `r` starts at `start + r·row`, and column `j` of
/// it `col(j)` further — the columns of each stride phase together, in order, so that a tap's
/// inputs for consecutive outputs are consecutive. The input's first column of each phase
/// lands on a 64-byte boundary (whole-vector stores when copying).
#[derive(Clone, Copy, Debug)]
pub(in crate::routines) struct Padded {
    /// Where padded row 0 starts in the buffer.
    pub start: usize,
    /// Elements from one padded row to the next (a multiple of 16).
    pub row: usize,
    /// Elements from one stride phase of a row to the next (a multiple of 16).
    phase: usize,
    /// Where in a row the first two phases start (later ones at `p·phase`).
    lead: [usize; 2],
    sw: usize,
    /// Where in a row the input's first column (after a negative pad's dropped ones) and the
    /// next land.
    first: [usize; 2],
    /// The buffer's length.
    len: usize,
}

impl Padded {
    /// The layout for `g` (`start` 0).
    fn of(g: &Geometry) -> Padded {
        let (ph, pw) = (g.ph.max(0), g.pw.max(0));
        let rows = (g.h + ph).max((g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1) as usize;
        let sw = g.sw as usize;
        // The padded column of the input's first column that lands in the copy.
        let j0 = ((-g.pw).max(0) + g.pw) as usize;
        // Each phase holds its share of the row's columns and every output's taps, 16 to
        // spare, after a lead that puts the input's first column in it on a 64-byte boundary.
        let first = |p: usize| (j0 + (p + sw - j0 % sw) % sw) / sw;
        let lead = |p: usize| (16 - first(p) % 16) % 16;
        let taps = g.ow as usize + (g.kw - 1) as usize * g.dw as usize / sw;
        let span = ((g.w + pw) as usize).div_ceil(sw).max(taps);
        let phase = (span + 16 + 15).next_multiple_of(16);
        let mut pad = Padded {
            start: 0,
            row: sw * phase,
            phase,
            lead: [lead(0), phase + lead(1)],
            sw,
            first: [0; 2],
            // 16 more, for a start on a 64-byte boundary.
            len: rows * sw * phase + 16,
        };
        pad.first = [pad.col(j0), pad.col(j0 + 1)];
        pad
    }

    /// Where padded column `j` of a row is, from the row's start.
    fn col(&self, j: usize) -> usize {
        if self.sw == 1 {
            return self.lead[0] + j;
        }
        let p = j % self.sw;
        self.lead.get(p).copied().unwrap_or(p * self.phase) + j / self.sw
    }

    /// Where tap `(ky, kx)`'s input for output `(0, 0)` is in the buffer; output `(oy, ox)`'s
    /// is `oy·sh·row + ox` further.
    pub fn tap(&self, g: &Geometry, ky: i64, kx: i64) -> usize {
        self.start + (ky * g.dh) as usize * self.row + self.col((kx * g.dw) as usize)
    }
}

/// Copies the `h×w` plane `x` into `buf` padded with `fill` so that every tap of every output
/// of `g` is inside it, laid out as the result tells; every tap of a row's outputs has 16
/// elements to spare after it (a vector load from the last output reads 16). With `keys`,
/// the input's values are stored as pooling's ordered keys ([`super::super::pool::to_keys`];
/// `fill` is stored as given).
///
/// # Safety
/// `x` readable for `h·w` elements; `oh`, `ow` positive; strides positive.
pub(in crate::routines) unsafe fn padded(
    x: *const f32,
    g: &Geometry,
    fill: f32,
    keys: Option<bool>,
    buf: &mut Vec<f32>,
) -> Padded {
    // Only the input's rows are written below: a buffer filled for the same geometry and
    // fill (this thread's last plane, most often) keeps its border, and its layout.
    type Filled = (usize, usize, Geometry, u32, Padded);
    thread_local! {
        static FILLED: std::cell::Cell<Option<Filled>> = const { std::cell::Cell::new(None) };
    }
    let key = |b: &Vec<f32>| (b.as_ptr() as usize, b.len(), *g, fill.to_bits());
    let pad = match FILLED.with(|f| f.get()) {
        Some((p, l, geometry, bits, pad)) if (p, l, geometry, bits) == key(buf) => pad,
        _ => {
            let mut pad = Padded::of(g);
            buf.clear();
            buf.resize(pad.len, fill);
            pad.start = buf.as_ptr().align_offset(64).min(16);
            let (p, l, geometry, bits) = key(buf);
            FILLED.with(|f| f.set(Some((p, l, geometry, bits, pad))));
            pad
        }
    };
    let sw = pad.sw;
    // Input rows and columns that land in the copy (a negative pad drops some).
    let (y0, x0) = ((-g.ph).max(0), (-g.pw).max(0));
    if x0 >= g.w {
        return pad;
    }
    let (n, j0) = ((g.w - x0) as usize, (x0 + g.pw) as usize);
    // Where input column `x0` and the next land in a row.
    let [a, b] = pad.first;
    if sw <= 2 {
        let rows = (g.h - y0) as usize;
        // SAFETY: the input's rows `y0..h` from column `x0` are readable, and each lands
        // inside its padded row of the buffer; AVX-512 only where the CPU has it.
        unsafe {
            let src = x.add((y0 * g.w + x0) as usize);
            let dst = buf
                .as_mut_ptr()
                .add(pad.start + (y0 + g.ph) as usize * pad.row);
            let to = (g.w as usize, pad.row);
            copy_rows(src, to, rows, n, dst, [a, b], sw, keys, crate::avx512());
        }
        return pad;
    }
    // Other strides, element by element (values become keys after the copy).
    for y in y0..g.h {
        let dst = pad.start + (y + g.ph) as usize * pad.row;
        // SAFETY: row `y` of the input has `w` elements from column `x0`.
        let src = unsafe { std::slice::from_raw_parts(x.add((y * g.w + x0) as usize), n) };
        let row = &mut buf[dst..dst + pad.row];
        for (i, &v) in src.iter().enumerate() {
            let at = pad.col(j0 + i);
            row[at] = v;
            if let Some(min) = keys {
                super::super::pool::to_keys(&mut row[at..at + 1], min);
            }
        }
    }
    pad
}

/// Copies `rows` rows of `n` elements, `src` and `dst` advancing by `to` (source, dest) each
/// row, to `dst + at[0]` (column stride `sw` 1), or their even-indexed elements there and
/// odd-indexed ones to `dst + at[1]` (`sw` 2); as pooling keys with `keys`. AVX-512 code
/// when `wide`, else portable code (the same values).
///
/// # Safety
/// The rows readable at `src`, and writable at `dst` where they go; `wide` only where the
/// CPU has AVX-512F.
#[allow(clippy::too_many_arguments)]
pub(in crate::routines) unsafe fn copy_rows(
    src: *const f32,
    to: (usize, usize),
    rows: usize,
    n: usize,
    dst: *mut f32,
    at: [usize; 2],
    sw: usize,
    keys: Option<bool>,
    wide: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if wide {
        // SAFETY: forwarded.
        return unsafe { avx512::copy_rows(src, to, rows, n, dst, at, sw, keys) };
    }
    let _ = wide;
    let keyed = |p: *mut f32, len: usize| {
        if let Some(min) = keys {
            // SAFETY: `len` elements from `p` are where a row's values went.
            super::super::pool::to_keys(unsafe { std::slice::from_raw_parts_mut(p, len) }, min);
        }
    };
    for r in 0..rows {
        // SAFETY: forwarded.
        unsafe {
            let row = std::slice::from_raw_parts(src.add(r * to.0), n);
            let (even, odd) = (dst.add(r * to.1 + at[0]), dst.add(r * to.1 + at[1]));
            if sw == 1 {
                std::ptr::copy_nonoverlapping(row.as_ptr(), even, n);
                keyed(even, n);
                continue;
            }
            for (t, pair) in row.chunks(2).enumerate() {
                *even.add(t) = pair[0];
                if let Some(&o) = pair.get(1) {
                    *odd.add(t) = o;
                }
            }
            keyed(even, n.div_ceil(2));
            keyed(odd, n / 2);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(in crate::routines) mod avx512 {
    use super::super::super::epilogue::{self, Epilogue};
    use std::arch::x86_64::*;

    /// `v`, or its pooling keys with `keys` (`Some(min)`).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn keyed(v: __m512, keys: Option<bool>) -> __m512 {
        match keys {
            Some(min) => super::super::super::pool::avx512::keyed(v, min),
            None => v,
        }
    }

    /// [`super::copy_rows`] in AVX-512 code.
    ///
    /// # Safety
    /// As [`super::copy_rows`]; AVX-512F available.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn copy_rows(
        src: *const f32,
        to: (usize, usize),
        rows: usize,
        n: usize,
        dst: *mut f32,
        at: [usize; 2],
        sw: usize,
        keys: Option<bool>,
    ) {
        for r in 0..rows {
            // SAFETY: forwarded.
            unsafe {
                let row = std::slice::from_raw_parts(src.add(r * to.0), n);
                let d = dst.add(r * to.1);
                if sw == 1 {
                    copy(row, d.add(at[0]), keys);
                } else {
                    split(row, d.add(at[0]), d.add(at[1]), keys);
                }
            }
        }
    }

    /// Copies `src` to `dst` (as pooling keys with `keys`).
    ///
    /// # Safety
    /// AVX-512F available; `dst` writable for the length of `src`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn copy(src: &[f32], dst: *mut f32, keys: Option<bool>) {
        let (n, p) = (src.len(), src.as_ptr());
        let mut i = 0;
        // SAFETY: loads inside `src` (masked at its end), stores inside `dst`'s `n`.
        unsafe {
            while i + 16 <= n {
                _mm512_storeu_ps(dst.add(i), keyed(_mm512_loadu_ps(p.add(i)), keys));
                i += 16;
            }
            if i < n {
                let m = ((1u32 << (n - i)) - 1) as u16;
                let v = keyed(_mm512_maskz_loadu_ps(m, p.add(i)), keys);
                _mm512_mask_storeu_ps(dst.add(i), m, v);
            }
        }
    }

    /// Writes `src`'s even-indexed elements from `even` on and its odd-indexed ones from
    /// `odd` on (as pooling keys with `keys`).
    ///
    /// # Safety
    /// AVX-512F available; `even` writable for `⌈n/2⌉` elements and `odd` for `⌊n/2⌋` (`n`
    /// the length of `src`).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn split(src: &[f32], even: *mut f32, odd: *mut f32, keys: Option<bool>) {
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let n = src.len();
        let p = src.as_ptr();
        let mut i = 0;
        // SAFETY: loads inside `src` (masked at its end), stores inside the halves.
        unsafe {
            while i + 32 <= n {
                let (a, b) = (_mm512_loadu_ps(p.add(i)), _mm512_loadu_ps(p.add(i + 16)));
                let e = keyed(_mm512_permutex2var_ps(a, evens, b), keys);
                let o = keyed(_mm512_permutex2var_ps(a, odds, b), keys);
                _mm512_storeu_ps(even.add(i / 2), e);
                _mm512_storeu_ps(odd.add(i / 2), o);
                i += 32;
            }
            if i < n {
                let left = n - i;
                let m = |k: usize| ((1u32 << k.min(16)) - 1) as u16;
                let a = _mm512_maskz_loadu_ps(m(left), p.add(i));
                let b = _mm512_maskz_loadu_ps(m(left.saturating_sub(16)), p.wrapping_add(i + 16));
                let e = keyed(_mm512_permutex2var_ps(a, evens, b), keys);
                let o = keyed(_mm512_permutex2var_ps(a, odds, b), keys);
                _mm512_mask_storeu_ps(even.add(i / 2), m(left.div_ceil(2)), e);
                _mm512_mask_storeu_ps(odd.add(i / 2), m(left / 2), o);
            }
        }
    }

    /// Output rows `0..n` (`n <= 4`) of a plane conv: row `r`'s taps at `x + r·step + off`
    /// (per tap `(off, weight)`), its `ow` outputs at `out + r·ow`, through `epi` when
    /// given. Blocks of 32 and 16 columns, and a last block that ends at `ow` (redoing a
    /// few), or one masked block for rows narrower than 16; each output sums its taps in
    /// order with fused multiply-adds, as [`super::avx2::rows`] does.
    ///
    /// # Safety
    /// AVX-512F available; every tap of the rows readable with 16 elements to spare; the rows
    /// inside `out` (and the epilogue's residual, laid out alike).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows(
        x: *const f32,
        step: usize,
        taps: &[(usize, f32)],
        out: *mut f32,
        ow: usize,
        n: usize,
        epi: Option<&Epilogue>,
    ) {
        // SAFETY: forwarded.
        unsafe {
            match n {
                4 => rows_of::<4>(x, step, taps, out, ow, epi),
                3 => rows_of::<3>(x, step, taps, out, ow, epi),
                2 => rows_of::<2>(x, step, taps, out, ow, epi),
                _ => rows_of::<1>(x, step, taps, out, ow, epi),
            }
        }
    }

    /// The column blocks of `R` rows of `ow` outputs: `$tile(ox, J, mask)` for blocks of two
    /// vectors, then one, then one ending at `ow`, or one masked block below 16.
    macro_rules! columns {
        ($ow:expr, $tile:ident) => {{
            let ow = $ow;
            if ow < 16 {
                $tile!(0, 1, ((1u32 << ow) - 1) as u16);
            } else {
                let mut ox = 0;
                while ox + 32 <= ow {
                    $tile!(ox, 2, !0);
                    ox += 32;
                }
                if ox + 16 <= ow {
                    $tile!(ox, 1, !0);
                    ox += 16;
                }
                if ox < ow {
                    $tile!(ow - 16, 1, !0);
                }
            }
        }};
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn rows_of<const R: usize>(
        x: *const f32,
        step: usize,
        taps: &[(usize, f32)],
        out: *mut f32,
        ow: usize,
        epi: Option<&Epilogue>,
    ) {
        macro_rules! t {
            ($ox:expr, $j:literal, $m:expr) => {
                // SAFETY: as [`rows`].
                unsafe { tile::<R, $j>(x, step, taps, out, ow, epi, $ox, $m) }
            };
        }
        columns!(ow, t);
    }

    /// Stores `R` rows by `j` (1 or 2) vectors of sums from column `ox` through the
    /// epilogue; only the lanes of `m`.
    ///
    /// # Safety
    /// As [`rows`].
    #[inline(always)]
    unsafe fn store<const R: usize>(
        acc: &[__m512; 8],
        out: *mut f32,
        ow: usize,
        epi: Option<&Epilogue>,
        ox: usize,
        j: usize,
        m: u16,
    ) {
        // SAFETY: as [`rows`].
        unsafe {
            let st = epi.map(|e| epilogue::avx512::coefs(e, 0, 0, m));
            for r in 0..R {
                for jj in 0..j {
                    let at = r * ow + ox + 16 * jj;
                    let mut v = acc[r * 2 + jj];
                    if let (Some(e), Some(st)) = (epi, st) {
                        v = epilogue::avx512::apply(e, v, st, e.res.wrapping_add(at), m);
                    }
                    if m == !0 {
                        _mm512_storeu_ps(out.add(at), v);
                    } else {
                        _mm512_mask_storeu_ps(out.add(at), m, v);
                    }
                }
            }
        }
    }

    /// `R` rows by `J` vectors of outputs from column `ox`; only the lanes of `m` stored.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile<const R: usize, const J: usize>(
        x: *const f32,
        step: usize,
        taps: &[(usize, f32)],
        out: *mut f32,
        ow: usize,
        epi: Option<&Epilogue>,
        ox: usize,
        m: u16,
    ) {
        // SAFETY: as [`rows`].
        unsafe {
            let mut acc = [_mm512_setzero_ps(); 8];
            for &(off, wt) in taps {
                let wv = _mm512_set1_ps(wt);
                for r in 0..R {
                    let p = x.add(r * step + off + ox);
                    for jj in 0..J {
                        let a = &mut acc[r * 2 + jj];
                        *a = _mm512_fmadd_ps(_mm512_loadu_ps(p.add(16 * jj)), wv, *a);
                    }
                }
            }
            store::<R>(&acc, out, ow, epi, ox, J, m);
        }
    }

    /// [`rows`] for a 3×3 window with row dilation 1 and row stride `sh` (1 or 2): input
    /// row `i` of the block (at `x + i·row`, its three taps `cols` further) is loaded once
    /// and added into every output row it feeds, which still sums its taps in (ky, kx)
    /// order; `w` the window's weights.
    ///
    /// # Safety
    /// As [`rows`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows3(
        x: *const f32,
        row: usize,
        sh: usize,
        cols: [usize; 3],
        w: &[f32; 9],
        out: *mut f32,
        ow: usize,
        n: usize,
        epi: Option<&Epilogue>,
    ) {
        // SAFETY: forwarded.
        unsafe {
            match (n, sh) {
                (4, 1) => rows3_of::<4, 1>(x, row, cols, w, out, ow, epi),
                (3, 1) => rows3_of::<3, 1>(x, row, cols, w, out, ow, epi),
                (2, 1) => rows3_of::<2, 1>(x, row, cols, w, out, ow, epi),
                (_, 1) => rows3_of::<1, 1>(x, row, cols, w, out, ow, epi),
                (4, _) => rows3_of::<4, 2>(x, row, cols, w, out, ow, epi),
                (3, _) => rows3_of::<3, 2>(x, row, cols, w, out, ow, epi),
                (2, _) => rows3_of::<2, 2>(x, row, cols, w, out, ow, epi),
                _ => rows3_of::<1, 2>(x, row, cols, w, out, ow, epi),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn rows3_of<const R: usize, const SH: usize>(
        x: *const f32,
        row: usize,
        cols: [usize; 3],
        w: &[f32; 9],
        out: *mut f32,
        ow: usize,
        epi: Option<&Epilogue>,
    ) {
        let w: [__m512; 9] = std::array::from_fn(|t| _mm512_set1_ps(w[t]));
        macro_rules! t {
            ($ox:expr, $j:literal, $m:expr) => {
                // SAFETY: as [`rows3`].
                unsafe { tile3::<R, $j, SH>(x, row, cols, &w, out, ow, epi, $ox, $m) }
            };
        }
        columns!(ow, t);
    }

    /// `R` rows by `J` vectors of a 3×3 window's outputs from column `ox`, input rows
    /// `SH` apart per output row.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile3<const R: usize, const J: usize, const SH: usize>(
        x: *const f32,
        row: usize,
        cols: [usize; 3],
        w: &[__m512; 9],
        out: *mut f32,
        ow: usize,
        epi: Option<&Epilogue>,
        ox: usize,
        m: u16,
    ) {
        // SAFETY: as [`rows3`].
        unsafe {
            let mut acc = [_mm512_setzero_ps(); 8];
            for i in 0..(R - 1) * SH + 3 {
                for (kx, &c) in cols.iter().enumerate() {
                    for jj in 0..J {
                        let v = _mm512_loadu_ps(x.add(i * row + c + ox + 16 * jj));
                        for r in 0..R {
                            if i >= r * SH && i < r * SH + 3 {
                                let t = (i - r * SH) * 3 + kx;
                                acc[r * 2 + jj] = _mm512_fmadd_ps(v, w[t], acc[r * 2 + jj]);
                            }
                        }
                    }
                }
            }
            store::<R>(&acc, out, ow, epi, ox, J, m);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(in crate::routines) mod avx2 {
    use super::super::super::epilogue::{self, Epilogue};
    use std::arch::x86_64::*;

    /// [`super::avx512::rows`] in 8-lane registers, for `ow >= 8`: blocks of 16 and 8 columns,
    /// and a last block that ends at `ow`.
    ///
    /// # Safety
    /// AVX2 and FMA available; as [`super::avx512::rows`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows(
        x: *const f32,
        step: usize,
        taps: &[(usize, f32)],
        out: *mut f32,
        ow: usize,
        n: usize,
        epi: Option<&Epilogue>,
    ) {
        // SAFETY: forwarded.
        unsafe {
            match n {
                4 => rows_of::<4>(x, step, taps, out, ow, epi),
                3 => rows_of::<3>(x, step, taps, out, ow, epi),
                2 => rows_of::<2>(x, step, taps, out, ow, epi),
                _ => rows_of::<1>(x, step, taps, out, ow, epi),
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_of<const R: usize>(
        x: *const f32,
        step: usize,
        taps: &[(usize, f32)],
        out: *mut f32,
        ow: usize,
        epi: Option<&Epilogue>,
    ) {
        let mut ox = 0;
        // SAFETY: forwarded.
        unsafe {
            while ox + 16 <= ow {
                tile::<R, 2>(x, step, taps, out, ow, epi, ox);
                ox += 16;
            }
            if ox + 8 <= ow {
                tile::<R, 1>(x, step, taps, out, ow, epi, ox);
                ox += 8;
            }
            if ox < ow {
                tile::<R, 1>(x, step, taps, out, ow, epi, ow - 8);
            }
        }
    }

    /// `R` rows by `J` vectors of outputs from column `ox`, in `R·J` accumulators.
    #[inline(always)]
    unsafe fn tile<const R: usize, const J: usize>(
        x: *const f32,
        step: usize,
        taps: &[(usize, f32)],
        out: *mut f32,
        ow: usize,
        epi: Option<&Epilogue>,
        ox: usize,
    ) {
        // SAFETY: as [`rows`].
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 8];
            for &(off, wt) in taps {
                let wv = _mm256_set1_ps(wt);
                for r in 0..R {
                    let p = x.add(r * step + off + ox);
                    for j in 0..J {
                        let a = &mut acc[r * J + j];
                        *a = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8 * j)), wv, *a);
                    }
                }
            }
            let all = _mm256_set1_epi32(-1);
            let st = epi.map(|e| epilogue::avx2::coefs(e, 0, 0, all));
            for r in 0..R {
                for j in 0..J {
                    let at = r * ow + ox + 8 * j;
                    let mut v = acc[r * J + j];
                    if let (Some(e), Some(st)) = (epi, st) {
                        v = epilogue::avx2::apply(e, v, st, e.res.wrapping_add(at), all);
                    }
                    _mm256_storeu_ps(out.add(at), v);
                }
            }
        }
    }
}
