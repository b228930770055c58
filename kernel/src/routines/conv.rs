//! 2-D convolutions. `conv2d` (depthwise convs): one f32 plane by one filter plane, the plane
//! copied into a zero-padded per-thread buffer, then every output row sums its taps without
//! bounds checks (AVX2 and FMA blocks of 32 and 8 outputs for unit or double strides when the
//! CPU has them; scalar otherwise); each output sums its taps in (ky, kx) order. `conv2d_rows`
//! (dense convs): a block of output rows of every output channel as one product of the
//! weights with the block's image columns — with AVX-512 and unit column stride, read in
//! place from a padded copy of the block's rows (`implicit`); else packed straight from the
//! image into the product's panel layout (an implicit im2col: no column matrix, no padded
//! copy).

use super::epilogue::Epilogue;

mod implicit;

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

impl Geometry {
    /// The geometry from its fields in declaration order (`h, w, oh, ow, kh, kw, sh, sw, dh,
    /// dw, ph, pw`: the routines' integer arguments).
    pub fn of([h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw]: [i64; 12]) -> Geometry {
        Geometry {
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
        }
    }
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
    scale: *const f32,
    shift: *const f32,
    res: *const f32,
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
) {
    let g = Geometry::of([h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw]);
    let epi = Epilogue::new((scale, shift, res), lo, hi, 0, act);
    // SAFETY: forwarded.
    unsafe { plane(x, k, out, &g, lanes(), &epi) }
}

/// The widest vector code this CPU runs: 16 lanes (AVX-512), 8 (AVX2 and FMA) or 1.
pub(super) fn lanes() -> usize {
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
unsafe fn plane(
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
    let cols = unsafe { padded(x, g, 0.0, &mut buf) };
    // (offset of the tap's input for output (0, 0), weight), per tap: on the stack for
    // windows up to 7×7 (an allocation per plane cost a fifth of a 14×14 plane's time).
    let tap = |t: i64| {
        let (ky, kx) = (t / g.kw, t % g.kw);
        // SAFETY: `t < kh·kw`.
        let wt = unsafe { *k.add(t as usize) };
        ((ky * g.dh * cols + kx * g.dw) as usize, wt)
    };
    let n_taps = (g.kh * g.kw) as usize;
    let mut small = [(0usize, 0f32); 49];
    let large: Vec<(usize, f32)>;
    let taps: &[(usize, f32)] = if n_taps <= small.len() {
        for (t, slot) in small.iter_mut().enumerate().take(n_taps) {
            *slot = tap(t as i64);
        }
        &small[..n_taps]
    } else {
        large = (0..g.kh * g.kw).map(tap).collect();
        &large
    };
    let p = buf.as_ptr();
    let step = (g.sh * cols) as usize;
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
    if (g.sw == 1 || g.sw == 2) && lanes > 1 {
        let epi = (!epi.is_none()).then_some(epi);
        while oy < oh {
            let n = (oh - oy).min(4);
            // SAFETY: the CPU runs `lanes`; every tap of these rows is inside the copy, with
            // 16 elements to spare; the rows are inside `out` (and the residual).
            unsafe {
                let (x, out) = (p.add(oy * step), out.add(oy * ow));
                let epi = epi.map(|e| e.from(0, 0, oy * ow));
                let e = epi.as_ref();
                let sw = g.sw as usize;
                if lanes == 16 {
                    avx512::rows(x, step, taps, out, ow, sw, n, e);
                } else {
                    avx2::rows(x, step, taps, out, ow, sw, n, e);
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
                let v = unsafe { *p.add(base + off + ox * g.sw as usize) };
                // Fused, as the vector code sums: identical results on every path.
                acc = v.mul_add(wt, acc);
            }
            // SAFETY: `ox < ow`.
            unsafe { *row.add(ox) = acc };
        }
        // SAFETY: the row is inside `out` (and the residual, laid out alike).
        unsafe { epi.from(0, 0, oy * ow).block(row, 0, 1, ow) };
    }
    give_padded(buf);
}

thread_local! {
    /// The padded copy's buffer, per thread, reused between calls.
    static PADDED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// This thread's buffer for [`padded`] (hand it back with [`give_padded`]).
pub(super) fn take_padded() -> Vec<f32> {
    PADDED.with(|b| b.take())
}

/// Keeps `buf` for the next [`take_padded`] on this thread.
pub(super) fn give_padded(buf: Vec<f32>) {
    PADDED.with(|b| b.set(buf));
}

/// Copies the `h×w` plane `x` into `buf` padded with `fill` so that every tap of every output
/// of `g` is inside it, and returns the copy's row length: rows are 32 elements longer than
/// any tap reaches (a stride-2 vector load of 16 outputs reads 32 inputs, even for fewer).
///
/// # Safety
/// `x` readable for `h·w` elements; `oh`, `ow` positive.
pub(super) unsafe fn padded(x: *const f32, g: &Geometry, fill: f32, buf: &mut Vec<f32>) -> i64 {
    let (ph, pw) = (g.ph.max(0), g.pw.max(0));
    let rows = (g.h + ph).max((g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1);
    let cols = (g.w + pw).max((g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1) + 32;
    // Only the input's rows are written below: a buffer filled for the same geometry and
    // fill (this thread's last plane, most often) keeps its border.
    thread_local! {
        static FILLED: std::cell::Cell<Option<(usize, usize, Geometry, u32)>> =
            const { std::cell::Cell::new(None) };
    }
    let len = (rows * cols) as usize;
    let key = |b: &Vec<f32>| Some((b.as_ptr() as usize, b.len(), *g, fill.to_bits()));
    if buf.len() != len || FILLED.with(|f| f.get()) != key(buf) {
        buf.clear();
        buf.resize(len, fill);
        FILLED.with(|f| f.set(key(buf)));
    }
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
    cols
}

/// Output rows `y0..y0 + rows` of a dense 2-D convolution of one image's `c` channels (`x`,
/// `c×h×w`) by `o` filters (`wt`, `o×(c·kh·kw)`, row-major), into `out` (`o×oh×ow`): `out[oc,
/// oy, ox] = Σ_{ch,ky,kx} wt[oc, (ch·kh + ky)·kw + kx] · x[ch, iy, ix]` over the taps inside the
/// image (`iy = oy·sh + ky·dh - ph`, `ix = ox·sw + kx·dw - pw`), summed in that order.
///
/// # Safety
/// `x` readable for `c·h·w` elements, `wt` for `o·c·kh·kw`, `out` writable for `o·oh·ow` and
/// not overlapping them; extents nonnegative, strides and dilations positive, `y0 + rows <=
/// oh`.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_conv2d_rows(
    x: *const f32,
    wt: *const f32,
    out: *mut f32,
    scale: *const f32,
    shift: *const f32,
    res: *const f32,
    c: i64,
    o: i64,
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
    y0: i64,
    rows: i64,
    act: i64,
    lo: f32,
    hi: f32,
) {
    let g = &Geometry::of([h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw]);
    let epi = Epilogue::new((scale, shift, res), lo, hi, 0, act);
    // SAFETY: forwarded.
    unsafe { rows_block(x, wt, out, c, o, g, y0, rows, crate::avx512(), &epi) }
}

/// [`kiln_conv2d_rows`] with its geometry, packing with AVX-512 when `wide`.
///
/// # Safety
/// As [`kiln_conv2d_rows`]; `wide` only where the CPU has AVX-512F.
#[allow(clippy::too_many_arguments)]
unsafe fn rows_block(
    x: *const f32,
    wt: *const f32,
    out: *mut f32,
    c: i64,
    o: i64,
    g: &Geometry,
    y0: i64,
    rows: i64,
    wide: bool,
    epi: &Epilogue,
) {
    let k = (c * g.kh * g.kw) as usize;
    if o <= 0 || rows * g.ow <= 0 {
        return;
    }
    if implicit::applies(g, o, c, rows, wide) {
        // SAFETY: forwarded; `applies` holds.
        return unsafe { implicit::rows(x, wt, out, c, o, g, y0, rows, epi) };
    }
    thread_local! {
        static PACKED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut buf = PACKED.with(|b| b.take());
    // Packed columns of at most PACKED_BYTES (a core's cache) at a time: sub-blocks of rows.
    let per = (PACKED_BYTES / (4 * k * g.ow as usize).max(1)).max(1) as i64;
    let mut y = y0;
    while y < y0 + rows {
        let n = per.min(y0 + rows - y);
        let cols = (n * g.ow) as usize;
        let len = super::gemm::packed_len(k, cols);
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        // SAFETY: forwarded from the caller.
        unsafe { pack_columns(x, g, c, y, n, &mut buf[..len], wide) };
        // SAFETY: `wt` is o×k row-major; the packed columns are B for this k and n; the
        // sub-block's rows of every output channel are inside `out`, oh·ow apart.
        unsafe {
            super::gemm::product(
                wt,
                std::ptr::null(),
                buf.as_ptr(),
                out.add((y * g.ow) as usize),
                k as i64,
                1,
                0,
                0,
                g.oh * g.ow,
                o,
                cols as i64,
                k as i64,
                &epi.from(0, 0, (y * g.ow) as usize),
            )
        };
        y += n;
    }
    PACKED.with(|b| b.set(buf));
}

/// The most bytes of packed columns [`rows_block`] makes at a time.
const PACKED_BYTES: usize = 512 << 10;

/// The im2col columns of output rows `y0..y0 + rows` (column `r·ow + ox` for output `(y0 + r,
/// ox)`, row `(ch·kh + ky)·kw + kx`), zero outside the image, written in the layout
/// `gemm::pack_b` gives: per block of KC rows, panels of NR columns, row-major within a
/// panel, the last panel zero-padded. Every element of `dst` (`packed_len(k, cols)` long) is
/// written.
///
/// # Safety
/// As [`kiln_conv2d_rows`]; `wide` only where the CPU has AVX-512F.
unsafe fn pack_columns(
    x: *const f32,
    g: &Geometry,
    c: i64,
    y0: i64,
    rows: i64,
    dst: &mut [f32],
    wide: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if wide && g.sw <= 2 {
        // SAFETY: forwarded; the CPU has AVX-512.
        return unsafe { avx512::pack_columns(x, g, c, y0, rows, dst) };
    }
    let _ = wide;
    // SAFETY: forwarded.
    unsafe { pack_columns_body(x, g, c, y0, rows, dst) }
}

/// [`pack_columns`] in portable code: output row by output row, every tap in turn, so that
/// writes run along each panel.
///
/// # Safety
/// As [`pack_columns`].
unsafe fn pack_columns_body(
    x: *const f32,
    g: &Geometry,
    c: i64,
    y0: i64,
    rows: i64,
    dst: &mut [f32],
) {
    use super::gemm::NR;
    let (k, ow) = ((c * g.kh * g.kw) as usize, g.ow as usize);
    let cols = rows as usize * ow;
    let panels = cols.div_ceil(NR);
    let sw = g.sw as usize;
    // Per tap: where its row of columns starts in `dst`, its block's kc, the input channel
    // and window row, the column offset, and the outputs ox in lo..hi whose tap is inside the
    // image's width.
    thread_local! {
        static TAPS: std::cell::Cell<Vec<[i64; 7]>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut taps = TAPS.with(|t| t.take());
    taps.clear();
    for l in 0..k {
        let Tap {
            block,
            kc,
            ch,
            ky,
            off,
            lo,
            hi,
        } = Tap::of(l, k, g, panels, cols, dst);
        taps.push([block as i64, kc as i64, ch, ky, off, lo as i64, hi as i64]);
    }
    for r in 0..rows {
        for &[block, kc, ch, ky, off, lo, hi] in &taps {
            let iy = (y0 + r) * g.sh + ky * g.dh - g.ph;
            let (lo, hi) = if iy < 0 || iy >= g.h || lo >= hi {
                (0, 0)
            } else {
                (lo as usize, hi as usize)
            };
            // Tap `ox` of this row is src[ox·sw] (read only for lo <= ox < hi, inside the image).
            let row = Row {
                src: x.wrapping_offset(((ch * g.h + iy) * g.w + off) as isize),
                lo,
                hi,
                sw,
                first: r as usize * ow,
                ow,
            };
            let (dst, kc) = (&mut dst[block as usize..], kc as usize);
            // SAFETY: taps lo..hi are inside the image row.
            unsafe { pack_row(&row, dst, kc) };
        }
    }
    TAPS.with(|t| t.set(taps));
}

/// Row `l` of a block's column matrix (input channel `ch`, window row `ky`, its column
/// offset `off`): where it starts in the packed block and its block's `kc`, and the outputs
/// `ox` in `lo..hi` whose tap is inside the image's width.
struct Tap {
    block: usize,
    kc: usize,
    ch: i64,
    ky: i64,
    off: i64,
    lo: usize,
    hi: usize,
}

impl Tap {
    /// Row `l` of `k` for `cols` columns in `panels` panels, with the last panel's columns
    /// past the end zeroed in `dst`.
    fn of(l: usize, k: usize, g: &Geometry, panels: usize, cols: usize, dst: &mut [f32]) -> Tap {
        use super::gemm::{KC, NR};
        let (pc, kk) = (l / KC * KC, l % KC);
        let kc = KC.min(k - pc);
        let block = pc * panels * NR + kk * NR;
        dst[block + (panels - 1) * NR * kc..][cols - (panels - 1) * NR..NR].fill(0.0);
        let (ch, ky, kx) = (
            l as i64 / (g.kh * g.kw),
            l as i64 / g.kw % g.kh,
            l as i64 % g.kw,
        );
        let off = kx * g.dw - g.pw;
        let lo = if off >= 0 {
            0
        } else {
            (-off + g.sw - 1) / g.sw
        };
        let hi = if g.w - off <= 0 {
            0
        } else {
            ((g.w - off + g.sw - 1) / g.sw).min(g.ow)
        };
        Tap {
            block,
            kc,
            ch,
            ky,
            off,
            lo: lo as usize,
            hi: hi as usize,
        }
    }
}

/// One image row's taps for one row of the column matrix: column `first + ox` takes `src[ox ·
/// sw]` for `lo <= ox < hi` and zero for the other `ox < ow`.
struct Row {
    src: *const f32,
    lo: usize,
    hi: usize,
    sw: usize,
    first: usize,
    ow: usize,
}

/// Writes `row` into packed panels of NR columns `NR·kc` apart (`dst` from the row's step in
/// the first panel).
///
/// # Safety
/// Taps `lo..hi` of the row are readable.
unsafe fn pack_row(row: &Row, dst: &mut [f32], kc: usize) {
    use super::gemm::NR;
    let mut ox = 0;
    while ox < row.ow {
        let j = row.first + ox;
        let (p, jj) = (j / NR, j % NR);
        let n = (NR - jj).min(row.ow - ox);
        for (t, v) in dst[p * NR * kc + jj..][..n].iter_mut().enumerate() {
            let q = ox + t;
            *v = if q >= row.lo && q < row.hi {
                // SAFETY: tap q is inside the row.
                unsafe { *row.src.add(q * row.sw) }
            } else {
                0.0
            };
        }
        ox += n;
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use super::super::epilogue::{self, Epilogue};
    use super::super::gemm::NR;
    use std::arch::x86_64::*;

    /// Sixteen inputs `p[0], p[s], …, p[15s]` for a stride `s` of 1 or 2.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(in crate::routines) unsafe fn load(p: *const f32, s: usize) -> __m512 {
        unsafe {
            if s == 1 {
                _mm512_loadu_ps(p)
            } else {
                let evens =
                    _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                _mm512_permutex2var_ps(_mm512_loadu_ps(p), evens, _mm512_loadu_ps(p.add(16)))
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
        s: usize,
        n: usize,
        epi: Option<&Epilogue>,
    ) {
        // SAFETY: forwarded.
        unsafe {
            match (n, s) {
                (4, 1) => rows_of::<4, 1>(x, step, taps, out, ow, epi),
                (3, 1) => rows_of::<3, 1>(x, step, taps, out, ow, epi),
                (2, 1) => rows_of::<2, 1>(x, step, taps, out, ow, epi),
                (_, 1) => rows_of::<1, 1>(x, step, taps, out, ow, epi),
                (4, _) => rows_of::<4, 2>(x, step, taps, out, ow, epi),
                (3, _) => rows_of::<3, 2>(x, step, taps, out, ow, epi),
                (2, _) => rows_of::<2, 2>(x, step, taps, out, ow, epi),
                _ => rows_of::<1, 2>(x, step, taps, out, ow, epi),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn rows_of<const R: usize, const S: usize>(
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
            if ow < 16 {
                let m = ((1u32 << ow) - 1) as u16;
                return tile::<R, 1, S>(x, step, taps, out, ow, epi, 0, m);
            }
            while ox + 32 <= ow {
                tile::<R, 2, S>(x, step, taps, out, ow, epi, ox, !0);
                ox += 32;
            }
            if ox + 16 <= ow {
                tile::<R, 1, S>(x, step, taps, out, ow, epi, ox, !0);
                ox += 16;
            }
            if ox < ow {
                tile::<R, 1, S>(x, step, taps, out, ow, epi, ow - 16, !0);
            }
        }
    }

    /// `R` rows by `J` vectors of outputs from column `ox`, in `R·J` accumulators; only the
    /// lanes of `m` are stored.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile<const R: usize, const J: usize, const S: usize>(
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
                    let p = x.add(r * step + off + ox * S);
                    for j in 0..J {
                        let a = &mut acc[r * J + j];
                        *a = _mm512_fmadd_ps(load(p.add(16 * j * S), S), wv, *a);
                    }
                }
            }
            let st = epi.map(|e| epilogue::avx512::coefs(e, 0, 0, m));
            for r in 0..R {
                for j in 0..J {
                    let at = r * ow + ox + 16 * j;
                    let mut v = acc[r * J + j];
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

    /// [`super::pack_columns`] in 16-lane registers for strides 1 and 2. The block's columns
    /// fall into pieces — a run of one output row inside one panel, 16 columns at most — that
    /// are the same for every tap, so they are worked out once; each tap then copies its
    /// image row piece by piece, one (masked) load and store each (two loads and a lane
    /// shuffle for stride 2), lanes outside the image zero and never read.
    ///
    /// # Safety
    /// As [`super::pack_columns`]; AVX-512F available; stride 1 or 2.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_columns(
        x: *const f32,
        g: &super::Geometry,
        c: i64,
        y0: i64,
        rows: i64,
        dst: &mut [f32],
    ) {
        let (k, ow, rows_n) = ((c * g.kh * g.kw) as usize, g.ow as usize, rows as usize);
        let cols = rows_n * ow;
        let panels = cols.div_ceil(NR);
        let sw = g.sw as usize;
        // Pieces (ox, n, panel, column in the panel), row by row; `starts[r]` is row r's first.
        let mut pieces: Vec<(usize, usize, usize, usize)> = Vec::with_capacity(rows_n * 8);
        let mut starts = Vec::with_capacity(rows_n + 1);
        for r in 0..rows_n {
            starts.push(pieces.len());
            let mut ox = 0;
            while ox < ow {
                let j = r * ow + ox;
                let (p, jj) = (j / NR, j % NR);
                let n = (NR - jj).min(ow - ox);
                pieces.push((ox, n, p, jj));
                ox += n;
            }
        }
        starts.push(pieces.len());
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let zero = _mm512_setzero_ps();
        for l in 0..k {
            let super::Tap {
                block,
                kc,
                ch,
                ky,
                off,
                lo,
                hi,
            } = super::Tap::of(l, k, g, panels, cols, dst);
            // The block's packed rows of this tap start here; pieces land `p·NR·kc + jj` on.
            let base = dst[block..].as_mut_ptr();
            for r in 0..rows_n {
                let iy = (y0 + r as i64) * g.sh + ky * g.dh - g.ph;
                let inside = iy >= 0 && iy < g.h && lo < hi;
                let src = x.wrapping_offset(((ch * g.h + iy) * g.w + off) as isize);
                for &(ox, n, p, jj) in &pieces[starts[r]..starts[r + 1]] {
                    let lanes: u32 = (1u32 << n) - 1;
                    // Lanes t < n with lo <= ox + t < hi.
                    let valid = if !inside {
                        0
                    } else if ox >= lo && ox + n <= hi {
                        lanes
                    } else {
                        let (a, b) = (lo.saturating_sub(ox).min(n), hi.saturating_sub(ox).min(n));
                        if b > a {
                            ((1u32 << b) - 1) & !((1u32 << a) - 1)
                        } else {
                            0
                        }
                    };
                    // SAFETY: the piece is inside the packed block; masked-off lanes are not
                    // read, the valid ones are taps inside the image row.
                    unsafe {
                        let d = base.add(p * NR * kc + jj);
                        let at = src.wrapping_add(ox * sw);
                        let v = if valid == 0 {
                            zero
                        } else if sw == 1 {
                            _mm512_maskz_loadu_ps(valid as u16, at)
                        } else {
                            // Lane t of the result is element 2t: spread the mask to even bits.
                            let mut m = valid;
                            m = (m | (m << 8)) & 0x00FF_00FF;
                            m = (m | (m << 4)) & 0x0F0F_0F0F;
                            m = (m | (m << 2)) & 0x3333_3333;
                            m = (m | (m << 1)) & 0x5555_5555;
                            let lo = _mm512_maskz_loadu_ps(m as u16, at);
                            let hi = _mm512_maskz_loadu_ps((m >> 16) as u16, at.wrapping_add(16));
                            _mm512_permutex2var_ps(lo, evens, hi)
                        };
                        _mm512_mask_storeu_ps(d, lanes as u16, v);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::super::epilogue::{self, Epilogue};
    use std::arch::x86_64::*;

    /// Eight inputs `p[0], p[s], …, p[7s]` for a stride `s` of 1 or 2.
    #[inline(always)]
    pub(in crate::routines) unsafe fn load(p: *const f32, s: usize) -> __m256 {
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

    /// [`super::avx512::rows`] in 8-lane registers, for `ow >= 8`: blocks of 16 and 8 columns,
    /// and a last block that ends at `ow`.
    ///
    /// # Safety
    /// AVX2 and FMA available; as [`super::avx512::rows`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows(
        x: *const f32,
        step: usize,
        taps: &[(usize, f32)],
        out: *mut f32,
        ow: usize,
        s: usize,
        n: usize,
        epi: Option<&Epilogue>,
    ) {
        // SAFETY: forwarded.
        unsafe {
            match (n, s) {
                (4, 1) => rows_of::<4, 1>(x, step, taps, out, ow, epi),
                (3, 1) => rows_of::<3, 1>(x, step, taps, out, ow, epi),
                (2, 1) => rows_of::<2, 1>(x, step, taps, out, ow, epi),
                (_, 1) => rows_of::<1, 1>(x, step, taps, out, ow, epi),
                (4, _) => rows_of::<4, 2>(x, step, taps, out, ow, epi),
                (3, _) => rows_of::<3, 2>(x, step, taps, out, ow, epi),
                (2, _) => rows_of::<2, 2>(x, step, taps, out, ow, epi),
                _ => rows_of::<1, 2>(x, step, taps, out, ow, epi),
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_of<const R: usize, const S: usize>(
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
                tile::<R, 2, S>(x, step, taps, out, ow, epi, ox);
                ox += 16;
            }
            if ox + 8 <= ow {
                tile::<R, 1, S>(x, step, taps, out, ow, epi, ox);
                ox += 8;
            }
            if ox < ow {
                tile::<R, 1, S>(x, step, taps, out, ow, epi, ow - 8);
            }
        }
    }

    /// `R` rows by `J` vectors of outputs from column `ox`, in `R·J` accumulators.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile<const R: usize, const J: usize, const S: usize>(
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
                    let p = x.add(r * step + off + ox * S);
                    for j in 0..J {
                        let a = &mut acc[r * J + j];
                        *a = _mm256_fmadd_ps(load(p.add(8 * j * S), S), wv, *a);
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

    /// Values in [-0.5, 0.5) from a seed.
    fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
        move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        }
    }

    #[test]
    fn row_blocks_of_dense_convs_match_the_definition() {
        let mut rnd = uniform(11);
        // (channels in, channels out, geometry, rows per block): strides, dilations, padding
        // on either side (negative too), 1×1 and wide windows, blocks that end mid-panel and a
        // last block shorter than the others.
        let cases = [
            (
                3,
                16,
                geometry(20, 20, 3, 3, (2, 2), (1, 1), [1, 1, 1, 1]),
                3,
            ),
            // Blocks the implicit path takes and a shorter last one it leaves (too few
            // columns to fill its tiles), with a contraction of several KC blocks: the two
            // paths must sum alike.
            (
                64,
                3,
                geometry(20, 20, 3, 3, (1, 1), (1, 1), [1, 1, 1, 1]),
                3,
            ),
            (
                64,
                6,
                geometry(20, 20, 3, 3, (1, 1), (1, 1), [1, 1, 1, 1]),
                3,
            ),
            // Packed columns of a row past the packing budget: sub-blocks of one row.
            (
                64,
                5,
                geometry(6, 130, 3, 3, (1, 1), (1, 1), [1, 1, 1, 1]),
                4,
            ),
            (
                8,
                13,
                geometry(9, 37, 3, 3, (1, 1), (1, 1), [1, 1, 1, 1]),
                2,
            ),
            (
                5,
                7,
                geometry(11, 12, 5, 3, (1, 2), (2, 1), [2, 0, 2, 3]),
                4,
            ),
            (
                70,
                20,
                geometry(6, 6, 2, 2, (1, 1), (1, 1), [0, 0, 0, 0]),
                5,
            ),
            (4, 9, geometry(8, 8, 1, 1, (2, 2), (1, 1), [0, 0, 0, 0]), 1),
            (
                2,
                3,
                geometry(10, 14, 3, 3, (1, 1), (1, 1), [-1, -2, 0, 1]),
                3,
            ),
            (1, 40, geometry(4, 4, 3, 3, (1, 1), (1, 1), [1, 1, 1, 1]), 4),
            // Stride 2 over rows of 28 and of 45 (the column phases of a row in groups of 32
            // and a masked rest; odd padding), the second a contraction of two KC blocks
            // over several tiles.
            (
                24,
                16,
                geometry(12, 28, 3, 3, (2, 2), (1, 1), [1, 1, 1, 1]),
                3,
            ),
            (
                40,
                12,
                geometry(10, 45, 3, 3, (2, 2), (1, 1), [1, 1, 1, 1]),
                4,
            ),
            (
                6,
                5,
                geometry(13, 40, 3, 3, (3, 3), (1, 1), [1, 1, 1, 1]),
                2,
            ),
        ];
        for (c, o, g, per) in cases {
            let x: Vec<f32> = (0..c * g.h * g.w).map(|_| rnd()).collect();
            let wt: Vec<f32> = (0..o * c * g.kh * g.kw).map(|_| rnd()).collect();
            let plane = (g.oh * g.ow) as usize;
            // Every part of the epilogue: per-channel scale and shift, a residual, a clamp.
            let scale: Vec<f32> = (0..o).map(|_| 1.0 + rnd()).collect();
            let shift: Vec<f32> = (0..o).map(|_| rnd()).collect();
            let res: Vec<f32> = (0..o as usize * plane).map(|_| rnd()).collect();
            let epi = Epilogue {
                scale: scale.as_ptr(),
                shift: shift.as_ptr(),
                res: res.as_ptr(),
                lo: -0.4,
                hi: 0.3,
                ..Epilogue::NONE
            };
            let mut outs: Vec<Vec<f32>> = Vec::new();
            for wide in [false, crate::avx512()] {
                let mut out = vec![f32::NAN; o as usize * plane];
                let mut y0 = 0;
                while y0 < g.oh {
                    let rows = per.min(g.oh - y0);
                    // SAFETY: the buffers hold the image, the filters and the result; `wide`
                    // only with AVX-512.
                    unsafe {
                        rows_block(
                            x.as_ptr(),
                            wt.as_ptr(),
                            out.as_mut_ptr(),
                            c,
                            o,
                            &g,
                            y0,
                            rows,
                            wide,
                            &epi,
                        )
                    };
                    y0 += rows;
                }
                let taps = (g.kh * g.kw) as usize;
                for oc in 0..o as usize {
                    let mut want = vec![0f64; plane];
                    for ch in 0..c as usize {
                        let xp = &x[ch * (g.h * g.w) as usize..][..(g.h * g.w) as usize];
                        let kp = &wt[(oc * c as usize + ch) * taps..][..taps];
                        for (w, r) in want.iter_mut().zip(reference(xp, kp, &g)) {
                            *w += r;
                        }
                    }
                    let (s, t) = (scale[oc] as f64, shift[oc] as f64);
                    for (w, r) in want.iter_mut().zip(&res[oc * plane..]) {
                        *w = (*w * s + t + *r as f64).clamp(-0.4, 0.3);
                    }
                    for (i, (&got, &r)) in out[oc * plane..][..plane].iter().zip(&want).enumerate()
                    {
                        assert!(
                            (got as f64 - r).abs() <= 1e-5 * (1.0 + r.abs()) * (c as f64).sqrt(),
                            "{c}->{o} {g:?} wide={wide} channel {oc} at {i}: {got} vs {r}"
                        );
                    }
                }
                outs.push(out);
            }
            // Packed columns and the implicit product (AVX-512) sum the same products in the
            // same order: identical results.
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&outs[0]),
                bits(&outs[1]),
                "{c}->{o} {g:?}: the paths differ"
            );
        }
    }

    #[test]
    fn a_block_split_over_threads_by_filters_is_the_block_alone() {
        // A small image in one block with filters enough to split (lowering's choice where
        // they outgrow a core's cache): each part computes its filters as one thread would.
        let mut rnd = uniform(5);
        let g = geometry(12, 12, 3, 3, (1, 1), (1, 1), [1, 1, 1, 1]);
        let (c, o) = (96, 100);
        let x: Vec<f32> = (0..c * g.h * g.w).map(|_| rnd()).collect();
        let wt: Vec<f32> = (0..o * c * g.kh * g.kw).map(|_| rnd()).collect();
        let shift: Vec<f32> = (0..o).map(|_| rnd()).collect();
        let epi = Epilogue {
            shift: shift.as_ptr(),
            lo: 0.0,
            ..Epilogue::NONE
        };
        assert!(implicit::applies(&g, o, c, g.oh, crate::avx512()) || !crate::avx512());
        let run = |helpers: usize| {
            let mut out = vec![f32::NAN; (o * g.oh * g.ow) as usize];
            let pool = (helpers > 0)
                .then(|| std::sync::Arc::new(crate::threads::Pool::new(helpers).unwrap()));
            // SAFETY: the buffers hold the image, the filters and the result.
            crate::threads::with_helpers(pool, || unsafe {
                rows_block(
                    x.as_ptr(),
                    wt.as_ptr(),
                    out.as_mut_ptr(),
                    c,
                    o,
                    &g,
                    0,
                    g.oh,
                    crate::avx512(),
                    &epi,
                )
            });
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        let alone = run(0);
        assert!(alone.iter().all(|&b| !f32::from_bits(b).is_nan()));
        assert_eq!(alone, run(1));
        assert_eq!(alone, run(3));
    }

    #[test]
    fn matches_the_definition_on_both_paths() {
        let mut rnd = uniform(7);
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
            geometry(11, 12, 3, 3, (1, 1), (1, 1), [1, 1, 1, 1]),
            geometry(10, 37, 3, 3, (1, 1), (2, 1), [2, 1, 2, 1]),
        ];
        for g in cases {
            let x: Vec<f32> = (0..g.h * g.w).map(|_| rnd()).collect();
            let k: Vec<f32> = (0..g.kh * g.kw).map(|_| rnd()).collect();
            // A shift, a residual and a ReLU.
            let res: Vec<f32> = (0..g.oh * g.ow).map(|_| rnd()).collect();
            let shift = [0.1f32];
            let epi = Epilogue {
                shift: shift.as_ptr(),
                res: res.as_ptr(),
                lo: 0.0,
                ..Epilogue::NONE
            };
            let mut want = reference(&x, &k, &g);
            for (w, r) in want.iter_mut().zip(&res) {
                *w = (*w + 0.1 + *r as f64).max(0.0);
            }
            let mut vectors = Vec::new();
            for vector in [1, 8, 16].into_iter().filter(|&n| n <= lanes()) {
                let mut out = vec![f32::NAN; (g.oh * g.ow) as usize];
                // SAFETY: buffers sized for the geometry; `vector` lanes run on this CPU.
                unsafe { plane(x.as_ptr(), k.as_ptr(), out.as_mut_ptr(), &g, vector, &epi) };
                if vector > 1 && g.sw <= 2 {
                    vectors.push(out.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
                }
                for (i, (&o, &r)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (o as f64 - r).abs() <= 1e-5 * (1.0 + r.abs()),
                        "{g:?} vector={vector} at {i}: {o} vs {r}"
                    );
                }
            }
            // 8 and 16 lanes sum alike: identical results.
            if let [a, b] = &vectors[..] {
                assert_eq!(a, b, "{g:?}");
            }
        }
    }
}
