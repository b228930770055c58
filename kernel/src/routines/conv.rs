//! 2-D convolutions. `conv2d` (depthwise convs): one f32 plane by one filter plane, from a
//! padded copy of the plane whose rows keep each stride phase's columns together (`plane`);
//! each output sums its taps in (ky, kx) order. `conv2d_rows`
//! (dense convs): a block of output rows of every output channel as one product of the
//! weights with the block's image columns — with AVX-512 and unit column stride, read in
//! place from a padded copy of the block's rows (`implicit`); else packed straight from the
//! image into the product's panel layout (an implicit im2col: no column matrix, no padded
//! copy).

use super::epilogue::Epilogue;

pub mod blocked;
mod implicit;
mod plane;
pub mod winograd;

pub use blocked::kiln_conv2d_nchwc;
pub use plane::kiln_conv2d_plane;
pub(super) use plane::{give_padded, lanes, padded, take_padded};

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
    scale2: *const f32,
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
    let g = &Geometry::of([h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw]);
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
    unsafe { rows_block(x, wt, out, c, o, g, y0, rows, crate::avx512(), &epi) }
}

/// [`kiln_conv2d_rows`] for a 3×3 stride-1 conv, with `u` (unless null) its filters'
/// transforms ([`winograd::transform_filters`]): where [`winograd::applies`], the rows by
/// Winograd's F(2×2, 3×3) from `u`, else as [`kiln_conv2d_rows`] from `wt`.
///
/// # Safety
/// As [`kiln_conv2d_rows`]; a non-null `u` readable for `16·o·c` elements.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_conv2d_wino(
    x: *const f32,
    wt: *const f32,
    u: *const f32,
    out: *mut f32,
    scale: *const f32,
    shift: *const f32,
    res: *const f32,
    scale2: *const f32,
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
    let g = &Geometry::of([h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw]);
    let epi = Epilogue::new(
        (scale, shift, res, scale2),
        (lo, hi),
        0,
        act,
        [
            pre_s, pre_z, pre_lo, pre_hi, pre_d, pre_at, post_s, post_z, post_lo, post_hi, post_d,
        ],
    );
    if u.is_null() || !winograd::applies(g, c, o) || y0 < 0 || rows <= 0 || y0 + rows > oh {
        // SAFETY: forwarded.
        return unsafe { rows_block(x, wt, out, c, o, g, y0, rows, crate::avx512(), &epi) };
    }
    let (cu, ou, y0u, rowsu) = (c as usize, o as usize, y0 as usize, rows as usize);
    // SAFETY: forwarded; `applies` holds.
    if !unsafe { winograd::rows(x, u, out, cu, ou, g, y0u, rowsu, &epi) } {
        // An infinity or NaN in the block's input: the direct sum.
        // SAFETY: forwarded.
        unsafe { rows_block(x, wt, out, c, o, g, y0, rows, crate::avx512(), &epi) }
    }
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
    use super::super::gemm::NR;
    use std::arch::x86_64::*;

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

#[cfg(test)]
mod tests {
    use super::plane::plane;
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
    fn uniform(seed: u64) -> impl FnMut() -> f32 {
        let mut state = crate::routines::lcg(seed);
        move || ((state() >> 40) as f32 / (1u64 << 24) as f32) - 0.5
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
            // 3×3 windows' row blocks (30 rows: seven of four and one of two), stride-2
            // phases of odd widths and pads, a column dilation, a row narrower than a vector.
            geometry(30, 33, 3, 3, (1, 1), (1, 1), [1, 1, 1, 1]),
            geometry(9, 57, 3, 3, (2, 2), (1, 2), [1, 2, 1, 2]),
            geometry(13, 13, 3, 3, (2, 2), (1, 1), [0, 0, 0, 0]),
            geometry(23, 47, 3, 3, (2, 2), (1, 1), [1, 1, 1, 1]),
            geometry(8, 30, 3, 3, (2, 3), (1, 1), [1, 1, 1, 1]),
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
                if vector > 1 {
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
