//! 2-D convolutions into channel-blocked images (NCHWc): an image `[C/16, H, W, 16]` holds
//! channel `16·cb + i` of pixel (y, x) at `((cb·H + y)·W + x)·16 + i`, so the 16 channels
//! of a pixel are one vector. Dense convs: a tile of 16 to 64 output channels by up to 14
//! pixels of one output row sums in registers over every input channel and tap — per input
//! channel one filter vector per output block and one broadcast input value per pixel, one
//! fused multiply-add per pair — from a blocked input or a plain (NCHW) one, whose channels
//! are then one group of `C` planes. Depthwise convs: per channel block, tiles of pixels
//! whose 16 channels are one vector, one multiply-add per tap, any stride. Each tile stores
//! its vectors (epilogue applied) once, as contiguous runs. No padded copy and no packing
//! of the image: taps outside the image are skipped (border pixels one at a time), and a
//! layer's blocked output is the next one's input as it is.

use super::super::epilogue::Epilogue;
use super::Geometry;

mod wino;

/// Channels per block.
pub const BLOCK: usize = 16;

/// Filters `o×c×kh×kw` (row-major, `o` a multiple of [`BLOCK`], `c` of `gi` unless `gi` is
/// 16) in the order the dense routine reads them: `[o/16][⌈c/gi⌉][kh][kw][gi input
/// channels][16 output channels]` (`gi` = 16 for a blocked input, zeros for the channels past
/// `c` of a partial last block; `c` for a plain one), then one element: 1 when a filter
/// is infinite or NaN, else 0 (see [`kiln_conv2d_nchwc`]); then one that is 1 when the
/// filters' Winograd transforms follow (3×3 filters from a blocked input, see
/// `wino::append`). `None` when the sizes do not divide or `w` is too short.
pub fn pack_filters(
    w: &[f32],
    o: usize,
    c: usize,
    taps: (usize, usize),
    gi: usize,
) -> Option<Vec<f32>> {
    pack_dense(w, (o, c), taps, gi, true)
}

/// [`pack_filters`], with the Winograd transforms where they apply when `transforms`, else
/// without (the transforms' flag 0).
fn pack_dense(
    w: &[f32],
    (o, c): (usize, usize),
    (kh, kw): (usize, usize),
    gi: usize,
    transforms: bool,
) -> Option<Vec<f32>> {
    // A blocked input's channels need not fill its last block (see `Job::last`).
    let partial = gi == BLOCK && c > 0;
    if gi == 0
        || !o.is_multiple_of(BLOCK)
        || !(c.is_multiple_of(gi) || partial)
        || w.len() < o.checked_mul(c)?.checked_mul(kh * kw)?
    {
        return None;
    }
    let groups = c.div_ceil(gi);
    let mut p = vec![0.0; o * groups * gi * kh * kw + 1];
    let mut at = 0;
    for ob in 0..o / BLOCK {
        for q in 0..groups {
            for y in 0..kh {
                for x in 0..kw {
                    for i in 0..gi {
                        for j in 0..BLOCK {
                            let (oc, ch) = (ob * BLOCK + j, q * gi + i);
                            // The padding channels of a partial last group: zeros, never
                            // read.
                            if ch < c {
                                p[at] = w[((oc * c + ch) * kh + y) * kw + x];
                            }
                            at += 1;
                        }
                    }
                }
            }
        }
    }
    p[at] = flag(&p[..at]);
    if transforms {
        wino::append(&mut p, w, (o, c), (kh, kw), gi);
    } else {
        p.push(0.0);
    }
    Some(p)
}

/// Whether a dense conv of `o` filters over `c` channels of a blocked image, geometry `g`,
/// runs by Winograd's F(2×2, 3×3) once its filters are packed (see `wino`): its calls
/// should then each take every output block (the input's transforms serve them all) and
/// runs of whole tile rows.
pub fn runs_by_winograd(c: usize, o: usize, g: &Geometry) -> bool {
    wino::packs(o, c, (g.kh as usize, g.kw as usize), BLOCK) && wino::applies(g)
}

/// The tile rows a Winograd chunk takes for an output `ow` wide: at least the call's rows
/// should hold, where the image allows, for its products to fill their tiles.
pub fn winograd_chunk_rows(ow: usize) -> usize {
    wino::chunk_rows(ow.div_ceil(2))
}

/// The packed filters' last element: whether any of them is infinite or NaN.
fn flag(p: &[f32]) -> f32 {
    if p.iter().all(|v| v.is_finite()) {
        0.0
    } else {
        1.0
    }
}

/// Depthwise filters `c×1×kh×kw` (`c` a multiple of [`BLOCK`]) as `[c/16][kh][kw][16]`,
/// then the flag of [`pack_filters`].
pub fn pack_depthwise(w: &[f32], c: usize, (kh, kw): (usize, usize)) -> Option<Vec<f32>> {
    if !c.is_multiple_of(BLOCK) || w.len() < c.checked_mul(kh * kw)? {
        return None;
    }
    let n = c * kh * kw;
    let mut p = vec![0.0; n + 1];
    for (ch, f) in w.chunks_exact(kh * kw).take(c).enumerate() {
        for (t, &v) in f.iter().enumerate() {
            p[((ch / BLOCK) * kh * kw + t) * BLOCK + ch % BLOCK] = v;
        }
    }
    p[n] = flag(&p[..n]);
    Some(p)
}

/// Output blocks `ob0..ob0 + obn` and rows `y0..y0 + rows` of a 2-D convolution of one image
/// `x` by `o` filters into the blocked `out` (`[o/16, oh, ow, 16]`): `out[oc, oy, ox] = E(Σ
/// w[oc, ch, ky, kx] · x[ch, iy, ix])` (`iy = oy·sh + ky·dh - ph`, `ix = ox·sw + kx·dw - pw`)
/// over the taps inside the image — and, where a filter is infinite or NaN (the packed
/// filters' flag), the taps outside too, as zeros, as a zero-padded image multiplies them;
/// `E` the epilogue with per-channel operands indexed by the
/// output channel and the residual laid out as `out`. `x` is blocked (`[⌈c/16⌉, h, w, 16]`)
/// with `xb` = 16, plain (`[c, h, w]`) with `xb` = 0. A dense conv's blocked input may have
/// more lanes than channels (`c` not a multiple of 16): the lanes past `c` (a layout's
/// padding) are never read, whatever they hold. With `groups` = 1 (dense) the sum runs
/// by group of input channels (a block, or all of a plain input), then tap (ky, kx), then
/// channel; with `groups` = `c` = `o` (depthwise, blocked input) by tap. The filters are
/// `wp` ([`pack_filters`] with `gi` 16 or `c`, or [`pack_depthwise`]) or, when it is null,
/// packed from `wt` (`o×(c/groups)×kh×kw`).
///
/// # Safety
/// `x` readable for `c·h·w` elements (`⌈c/16⌉·16·h·w` blocked), `wt` for
/// `o·(c/groups)·kh·kw` (`wp` as [`pack_filters`] or [`pack_depthwise`] make it), `out` (and a residual) for `o·oh·ow`, per-channel operands for `o`;
/// `o` a multiple of 16, `c` too when depthwise; the blocks and rows inside the output; strides and
/// dilations positive.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_conv2d_nchwc(
    x: *const f32,
    wt: *const f32,
    wp: *const f32,
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
    xb: i64,
    groups: i64,
    ob0: i64,
    obn: i64,
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
    let g = Geometry::of([h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw]);
    let epi = Epilogue::new(
        (scale, shift, res, scale2),
        (lo, hi),
        1,
        act,
        [
            pre_s, pre_z, pre_lo, pre_hi, pre_d, pre_at, post_s, post_z, post_lo, post_hi, post_d,
        ],
    );
    let (cu, ou, taps) = (c as usize, o as usize, (kh as usize, kw as usize));
    if obn <= 0 || rows <= 0 || ow <= 0 || c <= 0 {
        return;
    }
    let depthwise = groups != 1;
    let blocked = xb != 0;
    // Channels per group of the input, and the strides of a group, a pixel and a channel.
    let (gi, gs, ps, cs) = if blocked {
        (BLOCK, (h * w) as usize * BLOCK, BLOCK, 1)
    } else {
        (cu, 0, 1, (h * w) as usize)
    };
    thread_local! {
        static PACKED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut own = Vec::new();
    let wp = if wp.is_null() {
        let n = ou * (if depthwise { 1 } else { cu }) * taps.0 * taps.1;
        // SAFETY: the caller's filters hold o·(c/groups)·kh·kw elements.
        let w = unsafe { std::slice::from_raw_parts(wt, n) };
        own = PACKED.with(|b| b.take());
        own.clear();
        // Filters packed per call leave out the Winograd transforms, which would cost more
        // than they save.
        let packed = if depthwise {
            pack_depthwise(w, cu, taps)
        } else {
            pack_dense(w, (ou, cu), taps, gi, false)
        };
        let Some(packed) = packed else {
            // Sizes the routine does not take (see the safety contract).
            return;
        };
        own.extend(packed);
        own.as_ptr()
    } else {
        wp
    };
    // Channels of the input's groups (a dense blocked input's last may be partial).
    let groups = if depthwise { 1 } else { cu.div_ceil(gi) };
    let filters = ou * (if depthwise { 1 } else { groups * gi }) * taps.0 * taps.1;
    // SAFETY: the packed filters end with their flag.
    let exact = unsafe { *wp.add(filters) } != 0.0;
    // SAFETY: dense packed filters have the transforms' flag after theirs, and the
    // transforms after the flag's line when it is set.
    let wino = if !depthwise && unsafe { *wp.add(filters + 1) } != 0.0 {
        unsafe { wp.add(filters + wino::AFTER) }
    } else {
        std::ptr::null()
    };
    let isa = Isa::host();
    // The input offset of each (ky, kx, channel) of a window from its first tap, in the
    // order the sums run (the packed filters' order within a group): read only by dense
    // tiles over a plain input (few channels a tap), so only built for those.
    let offs: Vec<usize> = if depthwise || blocked {
        Vec::new()
    } else {
        (0..kh * kw)
            .flat_map(|t| {
                let (ky, kx) = (t / kw, t % kw);
                let at = ((ky * dh * w + kx * dw) as usize) * ps;
                (0..gi).map(move |i| at + i * cs)
            })
            .collect()
    };
    let job = Job {
        x,
        wp,
        wino,
        o: ou,
        out,
        offs: offs.as_ptr(),
        exact,
        groups,
        gi,
        last: if depthwise {
            gi
        } else {
            cu - (groups - 1) * gi
        },
        gs,
        ps,
        cs,
        isa,
        g,
        epi,
    };
    // SAFETY: forwarded.
    unsafe { job.blocks((ob0, obn), (y0, rows), depthwise) };
    if !own.is_empty() {
        PACKED.with(|b| b.set(own));
    }
}

/// The code a job runs: vector tiles for the CPU, or scalar pixels.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(in crate::routines) enum Isa {
    Scalar,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
}

impl Isa {
    /// The widest code this CPU runs.
    pub(in crate::routines) fn host() -> Isa {
        if crate::avx512() {
            Isa::Avx512
        } else if crate::avx2_fma() {
            Isa::Avx2
        } else {
            Isa::Scalar
        }
    }
}

/// One call's operands and input layout.
#[derive(Clone, Copy)]
struct Job {
    x: *const f32,
    wp: *const f32,
    /// The filters' Winograd transforms (see `wino::append`), or null.
    wino: *const f32,
    /// Output channels.
    o: usize,
    out: *mut f32,
    /// Groups of input channels a dense sum runs over (1 for depthwise convs).
    groups: usize,
    /// Channels per group.
    gi: usize,
    /// Channels of the last group: `gi` but for a dense blocked input whose channels do not
    /// fill its last block (whose padding lanes the sums never read).
    last: usize,
    /// Element strides of a group, a pixel and a channel in a group.
    gs: usize,
    ps: usize,
    cs: usize,
    /// The input offsets of a window's taps and channels from its first tap (`kh·kw·gi`
    /// of them, in the order of the sums); the window of the job's geometry. Empty (and
    /// never read) but for dense convs over a plain input (and Winograd's products).
    offs: *const usize,
    /// Whether a filter is infinite or NaN: pixels with taps outside the image then multiply
    /// them by zeros, one pixel at a time.
    exact: bool,
    isa: Isa,
    g: Geometry,
    epi: Epilogue,
}

/// The widest tile of `nb` dense output blocks (or of a depthwise block).
fn most(nb: usize, depthwise: bool) -> i64 {
    match (depthwise, nb) {
        (true, _) => 16,
        (false, 4) => 6,
        (false, 3) => 8,
        _ => 12,
    }
}

/// The taps `k0..k1` of a window of `k` taps (dilation `d`) from input position `start` that
/// fall inside `0..n` (divisions only at the image's borders).
#[inline]
pub(in crate::routines) fn inside(start: i64, k: i64, d: i64, n: i64) -> (i64, i64) {
    if start >= 0 && start + (k - 1) * d < n {
        return (0, k);
    }
    // start + t·d >= 0  and  start + t·d < n
    let k0 = if start >= 0 { 0 } else { (-start + d - 1) / d };
    let k1 = if start >= n {
        0
    } else {
        ((n - start + d - 1) / d).min(k)
    };
    (k0.min(k), k1.max(k0.min(k)))
}

impl Job {
    /// Output blocks `ob0..ob0 + obn` and rows `y0..y0 + rows` (see [`kiln_conv2d_nchwc`]).
    ///
    /// # Safety
    /// As [`kiln_conv2d_nchwc`].
    unsafe fn blocks(&self, (ob0, obn): (i64, i64), (y0, rows): (i64, i64), depthwise: bool) {
        let g = &self.g;
        if !self.wino.is_null() && wino::applies(g) {
            let (ob, y) = ((ob0 as usize, obn as usize), (y0 as usize, rows as usize));
            // SAFETY: forwarded; the job has the transforms.
            return unsafe { wino::rows(self, ob, y) };
        }
        // A pointwise conv (1×1, unit strides, no padding) is one row of every pixel.
        let flat = (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw) == (1, 1, 1, 1, 0, 0);
        let flat = flat && g.h == g.oh && g.w == g.ow;
        let (rows_at, run) = if flat {
            (0..1, (y0 * g.ow, (y0 + rows) * g.ow))
        } else {
            (y0..y0 + rows, (0, g.ow))
        };
        let n = g.h * g.w;
        let flat_job;
        let job = if flat {
            flat_job = Job {
                g: Geometry::of([1, n, 1, n, 1, 1, 1, 1, 1, 1, 0, 0]),
                ..*self
            };
            &flat_job
        } else {
            self
        };
        let mut ob = ob0;
        while ob < ob0 + obn {
            // Up to four blocks at once (a depthwise conv's side by side only in tiles of a
            // few pixels).
            let nb = (ob0 + obn - ob).min(4);
            let nb = if nb == 3 && depthwise { 2 } else { nb };
            let (obu, nbu) = (ob as usize, nb as usize);
            // Dense tiles take two rows at once where both have every row tap inside.
            // (Depthwise ones where a tile reads shared input rows: see `Job::paired`.)
            let pairs = !depthwise || job.paired();
            let full = |oy: i64| pairs && !flat && job.full_row(oy);
            let mut oy = rows_at.start;
            while oy < rows_at.end {
                let r = if full(oy) && oy + 1 < rows_at.end && full(oy + 1) {
                    2
                } else {
                    1
                };
                // SAFETY: forwarded.
                unsafe { job.row(obu, oy as usize, nbu, run, depthwise, r) };
                oy += r as i64;
            }
            if !depthwise {
                // Dense convs' border columns run down the rows, several pixels a tile.
                let (x0, x1) = job.interior(run);
                for ox in (run.0..x0).chain(x1.max(x0)..run.1) {
                    // SAFETY: forwarded.
                    unsafe { job.column(obu, ox as usize, nbu, (rows_at.start, rows_at.end)) };
                }
            }
            ob += nb;
        }
    }

    /// Pixels `run` of output row `oy` of output blocks `ob..ob + nb` (channel blocks of a
    /// depthwise conv).
    ///
    /// # Safety
    /// As [`kiln_conv2d_nchwc`], for this row and these blocks.
    unsafe fn row(
        &self,
        ob: usize,
        oy: usize,
        nb: usize,
        run: (i64, i64),
        depthwise: bool,
        r: usize,
    ) {
        let (x0, x1) = self.interior(run);
        // Dense convs leave the border columns to `column`.
        let (start, end) = if depthwise { run } else { (x0, x1) };
        let mut ox = start;
        let some_outside = !self.full_row(oy as i64);
        while ox < end {
            let inner = ox >= x0 && ox < x1;
            if self.exact && (some_outside || !inner) {
                for y in oy..oy + r {
                    // SAFETY: forwarded.
                    unsafe { self.exact_pixels(ob, (y, ox as usize), nb, depthwise) };
                }
                ox += 1;
                continue;
            }
            // AVX-512 tiles walk a whole run themselves (one call a row, not a tile); the
            // others take a tile's pixels a call, every block of them before the next.
            let n = if inner && self.isa == Isa::Avx512 {
                x1 - ox
            } else if inner {
                (x1 - ox).min(most(nb, depthwise) / r as i64)
            } else {
                1
            } as usize;
            // SAFETY: forwarded.
            unsafe { self.run(ob, (oy, ox as usize), (r, n), nb, depthwise) };
            ox += n as i64;
        }
    }

    /// Whether a depthwise conv's tiles take two output rows at once: 3-wide windows at
    /// unit strides and dilations on a blocked input, whose two rows' windows share all but
    /// one input row (loaded once for both).
    fn paired(&self) -> bool {
        let g = &self.g;
        (g.kw, g.dw, g.sw, g.sh, g.dh, self.ps) == (3, 1, 1, 1, 1, BLOCK)
    }

    /// Whether output row `oy` has every row tap inside the image.
    #[inline]
    fn full_row(&self, oy: i64) -> bool {
        let g = &self.g;
        inside(oy * g.sh - g.ph, g.kh, g.dh, g.h) == (0, g.kh)
    }

    /// The pixels of `run` whose every column tap is inside the row: `x0..x1`.
    fn interior(&self, (start, end): (i64, i64)) -> (i64, i64) {
        let g = &self.g;
        let full = |ox: i64| inside(ox * g.sw - g.pw, g.kw, g.dw, g.w) == (0, g.kw);
        let mut x0 = start;
        while x0 < end && !full(x0) {
            x0 += 1;
        }
        let mut x1 = end;
        while x1 > x0 && !full(x1 - 1) {
            x1 -= 1;
        }
        (x0, x1)
    }

    /// Column `ox` of output rows `rows` of dense blocks `ob..ob + nb`: tiles down the rows
    /// whose every row tap is inside the image (they share the column's taps), the others
    /// one pixel at a time.
    ///
    /// # Safety
    /// As [`Job::row`].
    unsafe fn column(&self, ob: usize, ox: usize, nb: usize, (y0, y1): (i64, i64)) {
        let mut oy = y0;
        while oy < y1 {
            if self.exact {
                // SAFETY: forwarded.
                unsafe { self.exact_pixels(ob, (oy as usize, ox), nb, false) };
                oy += 1;
                continue;
            }
            let mut n = 1;
            if self.full_row(oy) {
                while oy + n < y1 && n < most(nb, false) && self.full_row(oy + n) {
                    n += 1;
                }
            }
            // SAFETY: forwarded; the tile's pixels share their taps.
            unsafe { self.run(ob, (oy as usize, ox), (n as usize, 1), nb, false) };
            oy += n;
        }
    }

    /// The `r`×`n` pixels from `(oy, ox)` (rows down, columns along) of blocks `ob..ob +
    /// nb`, which share their taps when there are several.
    ///
    /// # Safety
    /// As [`Job::row`].
    unsafe fn run(
        &self,
        ob: usize,
        (oy, ox): (usize, usize),
        (r, n): (usize, usize),
        nb: usize,
        depthwise: bool,
    ) {
        if depthwise && r > 1 && self.isa != Isa::Avx512 {
            // Paired depthwise rows, one at a time.
            for y in oy..oy + r {
                // SAFETY: forwarded.
                unsafe { self.run(ob, (y, ox), (1, n), nb, depthwise) };
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        match self.isa {
            // SAFETY: forwarded; the CPU has AVX-512F.
            Isa::Avx512 => {
                return unsafe { avx512::tiles(self, ob, (oy, ox), (r, n), nb, depthwise) }
            }
            Isa::Avx2 => {
                for b in ob..ob + nb {
                    // SAFETY: forwarded; the CPU has AVX2 and FMA.
                    unsafe { avx2::tiles(self, b, (oy, ox), (r, n), depthwise) };
                }
                return;
            }
            Isa::Scalar => {}
        }
        for b in 0..nb {
            for y in oy..oy + r {
                for x in ox..ox + n {
                    // SAFETY: forwarded.
                    unsafe { self.pixel(ob + b, y, x, depthwise) };
                }
            }
        }
    }

    /// The tap ranges of output (oy, ox): rows `ky0..ky1`, columns `kx0..kx1` inside.
    #[inline]
    fn taps(&self, oy: usize, ox: usize) -> ((usize, usize), (usize, usize)) {
        let g = &self.g;
        let (ky0, ky1) = inside(oy as i64 * g.sh - g.ph, g.kh, g.dh, g.h);
        let (kx0, kx1) = inside(ox as i64 * g.sw - g.pw, g.kw, g.dw, g.w);
        ((ky0 as usize, ky1 as usize), (kx0 as usize, kx1 as usize))
    }

    /// The input position of output (oy, ox) and tap (ky, kx), which is inside.
    fn at(&self, (oy, ox): (usize, usize), (ky, kx): (usize, usize)) -> (usize, usize) {
        let g = &self.g;
        let iy = oy as i64 * g.sh - g.ph + ky as i64 * g.dh;
        let ix = ox as i64 * g.sw - g.pw + kx as i64 * g.dw;
        (iy as usize, ix as usize)
    }

    /// Where dense filter block `ob`'s vectors for input group `q` and tap (ky, kx) start.
    fn filter(&self, ob: usize, q: usize, ky: usize, kx: usize) -> usize {
        let (kh, kw) = (self.g.kh as usize, self.g.kw as usize);
        (((ob * self.groups + q) * kh + ky) * kw + kx) * self.gi * BLOCK
    }

    /// Channels of input group `q` a dense sum reads.
    #[inline]
    fn count(&self, q: usize) -> usize {
        if q + 1 == self.groups {
            self.last
        } else {
            self.gi
        }
    }

    /// Where depthwise channel block `cb`'s filter vector for tap (ky, kx) is.
    fn dw_filter(&self, cb: usize, ky: usize, kx: usize) -> usize {
        let (kh, kw) = (self.g.kh as usize, self.g.kw as usize);
        ((cb * kh + ky) * kw + kx) * BLOCK
    }

    /// Where input group `q`'s pixel (iy, ix) starts.
    fn input(&self, q: usize, (iy, ix): (usize, usize)) -> usize {
        q * self.gs + (iy * self.g.w as usize + ix) * self.ps
    }

    /// Where output block `ob`'s pixel (oy, ox) starts.
    fn output(&self, ob: usize, oy: usize, ox: usize) -> usize {
        let (oh, ow) = (self.g.oh as usize, self.g.ow as usize);
        ((ob * oh + oy) * ow + ox) * BLOCK
    }

    /// Output (oy, ox) of blocks `ob..ob + nb` with every tap, those outside the image as
    /// zeros (filters with infinities or NaNs: a zero-padded image's products).
    ///
    /// # Safety
    /// As [`Job::row`].
    unsafe fn exact_pixels(&self, ob: usize, (oy, ox): (usize, usize), nb: usize, depthwise: bool) {
        for b in ob..ob + nb {
            // SAFETY: forwarded.
            unsafe { self.pixel(b, oy, ox, depthwise) };
        }
    }

    /// One output pixel of one block, in scalar code (the order of the vector tiles; with
    /// `exact`, every tap, zeros outside the image).
    ///
    /// # Safety
    /// As [`Job::row`].
    unsafe fn pixel(&self, ob: usize, oy: usize, ox: usize, depthwise: bool) {
        let ((ky0, ky1), (kx0, kx1)) = if self.exact {
            let g = &self.g;
            ((0, g.kh as usize), (0, g.kw as usize))
        } else {
            self.taps(oy, ox)
        };
        let mut acc = [0.0f32; BLOCK];
        let g = &self.g;
        for q in 0..self.groups {
            for ky in ky0..ky1 {
                for kx in kx0..kx1 {
                    let iy = oy as i64 * g.sh - g.ph + ky as i64 * g.dh;
                    let ix = ox as i64 * g.sw - g.pw + kx as i64 * g.dw;
                    let outside = iy < 0 || iy >= g.h || ix < 0 || ix >= g.w;
                    let at = if outside {
                        (0, 0)
                    } else {
                        (iy as usize, ix as usize)
                    };
                    let xi = self.input(q, at);
                    // A tap outside multiplies zero (reading, and dropping, the image's first
                    // element).
                    let tap = |v: f32| if outside { 0.0 } else { v };
                    // SAFETY (both arms): the tap is inside the image, the filters inside
                    // the packed set.
                    if depthwise {
                        let wi = self.dw_filter(ob, ky, kx);
                        let xi = xi + ob * self.gs;
                        for (j, a) in acc.iter_mut().enumerate() {
                            let (v, f) = unsafe { (*self.x.add(xi + j), *self.wp.add(wi + j)) };
                            *a = tap(v).mul_add(f, *a);
                        }
                        continue;
                    }
                    let wi = self.filter(ob, q, ky, kx);
                    for i in 0..self.count(q) {
                        let v = tap(unsafe { *self.x.add(xi + i * self.cs) });
                        for (j, a) in acc.iter_mut().enumerate() {
                            let f = unsafe { *self.wp.add(wi + i * BLOCK + j) };
                            *a = v.mul_add(f, *a);
                        }
                    }
                }
            }
        }
        let at = self.output(ob, oy, ox);
        let e = self.epi.from(0, ob * BLOCK, at);
        for (j, &a) in acc.iter().enumerate() {
            // SAFETY: the output's lanes are inside `out`; the epilogue's operands with them.
            unsafe {
                let r = (!e.res.is_null()).then(|| *e.res.add(j));
                *self.out.add(at + j) = e.one(a, e.coefs(0, j), r);
            }
        }
    }
}

// Tiles index their accumulators by pixel and block, as the sums are written.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
mod avx512;

#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct sum in f64 over NCHW arrays.
    fn reference(
        x: &[f32],
        w: &[f32],
        c: usize,
        o: usize,
        groups: usize,
        g: &Geometry,
    ) -> Vec<f32> {
        let (h, wd, oh, ow, kh, kw) = (g.h, g.w, g.oh, g.ow, g.kh, g.kw);
        let cg = c / groups;
        let mut out = vec![0.0f32; o * (oh * ow) as usize];
        for oc in 0..o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = 0.0f64;
                    for k in 0..cg {
                        let ch = oc / (o / groups) * cg + k;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = oy * g.sh + ky * g.dh - g.ph;
                                let ix = ox * g.sw + kx * g.dw - g.pw;
                                if iy < 0 || iy >= h || ix < 0 || ix >= wd {
                                    continue;
                                }
                                let xv = x[((ch as i64 * h + iy) * wd + ix) as usize];
                                let wv = w[(((oc * cg + k) as i64 * kh + ky) * kw + kx) as usize];
                                s += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    out[(oc as i64 * oh * ow + oy * ow + ox) as usize] = s as f32;
                }
            }
        }
        out
    }

    /// `[c, h, w]` as `[c/16, h, w, 16]`.
    fn block(x: &[f32], c: usize, hw: usize) -> Vec<f32> {
        let mut b = vec![0.0; x.len()];
        for ch in 0..c {
            for p in 0..hw {
                b[((ch / BLOCK) * hw + p) * BLOCK + ch % BLOCK] = x[ch * hw + p];
            }
        }
        b
    }

    /// The routine on image `x` (`xb` as its argument) with filters `wt` (packed `wp`, or
    /// null) into `out`: output blocks `ob` (first, count), rows `y` (first, count), no
    /// epilogue.
    #[allow(clippy::too_many_arguments)]
    fn call(
        x: &[f32],
        wt: &[f32],
        wp: *const f32,
        out: &mut [f32],
        (c, o): (usize, usize),
        g: &Geometry,
        (xb, groups): (i64, i64),
        (ob, y): ((i64, i64), (i64, i64)),
    ) {
        // SAFETY: the caller's sizes are the geometry's.
        unsafe {
            kiln_conv2d_nchwc(
                x.as_ptr(),
                wt.as_ptr(),
                wp,
                out.as_mut_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                std::ptr::null(),
                std::ptr::null(),
                c as i64,
                o as i64,
                g.h,
                g.w,
                g.oh,
                g.ow,
                g.kh,
                g.kw,
                g.sh,
                g.sw,
                g.dh,
                g.dw,
                g.ph,
                g.pw,
                xb,
                groups,
                ob.0,
                ob.1,
                y.0,
                y.1,
                0,
                f32::NEG_INFINITY,
                f32::INFINITY,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
            )
        }
    }

    /// The outputs of one conv (every block and row, filters `wp` from [`pack_filters`] or
    /// [`pack_depthwise`], `form` as [`check`]'s) through the driver with every instruction
    /// set the CPU runs, under epilogue `epi`.
    fn each_isa(
        (x, wp): (&[f32], &[f32]),
        (c, o): (usize, usize),
        g: &Geometry,
        form: &str,
        exact: bool,
        epi: Epilogue,
    ) -> Vec<(Isa, Vec<f32>)> {
        let (depthwise, plain) = (form == "depthwise", form == "plain");
        let (h, w, d) = (g.h, g.w, g.dh);
        let (kh, kw) = (g.kh, g.kw);
        let taps = (kh * kw) as usize;
        // A blocked input's channels in whole blocks (the last may be partly padding).
        let cb = if plain { c } else { c.div_ceil(BLOCK) * BLOCK };
        let filters = o * if depthwise { 1 } else { cb } * taps;
        let wino = !depthwise && wp[filters + 1] != 0.0 && wino::applies(g);
        let (gi, gs, ps, cs) = if plain {
            (c, 0, 1, (h * w) as usize)
        } else {
            (BLOCK, (h * w) as usize * BLOCK, BLOCK, 1)
        };
        let mut isas = vec![Isa::Scalar];
        if crate::avx2_fma() {
            isas.push(Isa::Avx2);
        }
        if crate::avx512() {
            isas.push(Isa::Avx512);
        }
        let mut each = Vec::new();
        for isa in isas {
            let mut out = vec![1234.5; o * (g.oh * g.ow) as usize];
            let offs: Vec<usize> = (0..kh * kw)
                .flat_map(|t| {
                    let at = ((t / kw * d * w + t % kw * d) as usize) * ps;
                    (0..if depthwise { 0 } else { gi }).map(move |i| at + i * cs)
                })
                .collect();
            let j = Job {
                x: x.as_ptr(),
                wp: wp.as_ptr(),
                wino: if wino {
                    wp[filters + wino::AFTER..].as_ptr()
                } else {
                    std::ptr::null()
                },
                o,
                out: out.as_mut_ptr(),
                offs: offs.as_ptr(),
                exact,
                groups: if depthwise { 1 } else { c.div_ceil(gi) },
                gi,
                last: if depthwise {
                    gi
                } else {
                    c - (c.div_ceil(gi) - 1) * gi
                },
                gs,
                ps,
                cs,
                isa,
                g: *g,
                epi,
            };
            // SAFETY: inside the buffers.
            unsafe { j.blocks((0, (o / BLOCK) as i64), (0, g.oh), depthwise) };
            each.push((isa, out));
        }
        each
    }

    /// One conv through the routine (vector code where the CPU has it) and through the
    /// driver with every instruction set the CPU runs, against the direct sum.
    #[allow(clippy::too_many_arguments)]
    fn check(
        c: usize,
        o: usize,
        hw: (i64, i64),
        k: (i64, i64),
        s: i64,
        d: i64,
        p: i64,
        form: &str,
    ) {
        let inf = form.ends_with("+inf");
        let form = form.trim_end_matches("+inf");
        let (h, w) = hw;
        let (kh, kw) = k;
        let oh = (h + 2 * p - (kh - 1) * d - 1) / s + 1;
        let ow = (w + 2 * p - (kw - 1) * d - 1) / s + 1;
        let g = Geometry::of([h, w, oh, ow, kh, kw, s, s, d, d, p, p]);
        let (depthwise, plain) = (form == "depthwise", form == "plain");
        let groups = if depthwise { c } else { 1 };
        let n = |i: usize, m: usize| ((i * 7919 + m * 104_729) % 1000) as f32 / 500.0 - 1.0;
        let x: Vec<f32> = (0..c * (h * w) as usize).map(|i| n(i, 1)).collect();
        let mut wt: Vec<f32> = (0..o * c / groups * (kh * kw) as usize)
            .map(|i| n(i, 3))
            .collect();
        if inf {
            // Filter 0's first tap: a zero pad's product with it is NaN.
            wt[0] = f32::NEG_INFINITY;
        }
        let want = block(&reference(&x, &wt, c, o, groups, &g), o, (oh * ow) as usize);
        let xb = if plain {
            x.clone()
        } else {
            block(&x, c, (h * w) as usize)
        };
        let taps = (kh as usize, kw as usize);
        let wp = if depthwise {
            pack_depthwise(&wt, c, taps)
        } else {
            pack_filters(&wt, o, c, taps, if plain { c } else { BLOCK })
        }
        .unwrap();
        // A value no output takes: every output must be written.
        const UNSET: f32 = 1234.5;
        let mut got = vec![UNSET; want.len()];
        let mut unpacked = vec![UNSET; want.len()];
        // Blocks `ob` (from, count) and rows `y` of a call.
        let xb_arg = (if plain { 0 } else { BLOCK as i64 }, groups as i64);
        let call_part = |wp: *const f32, out: &mut [f32], ob: (i64, i64), y: (i64, i64)| {
            call(&xb, &wt, wp, out, (c, o), &g, xb_arg, (ob, y))
        };
        let all = ((0, (o / BLOCK) as i64), (0, oh));
        let call = |wp: *const f32, out: &mut [f32]| call_part(wp, out, all.0, all.1);
        call(wp.as_ptr(), &mut got);
        call(std::ptr::null(), &mut unpacked);
        // Whether the filters carry Winograd transforms the geometry runs by.
        let filters = o * c / groups * taps.0 * taps.1;
        let wino = !depthwise && wp[filters + 1] != 0.0 && wino::applies(&g);
        // The calls of a split into threads' parts: each block alone, rows three at a time
        // (tile rows cut in two), give the same outputs.
        let mut parts = vec![UNSET; want.len()];
        for ob in 0..(o / BLOCK) as i64 {
            for y in (0..oh).step_by(3) {
                call_part(wp.as_ptr(), &mut parts, (ob, 1), (y, 3.min(oh - y)));
            }
        }
        // Every instruction set the CPU runs, through the same driver.
        let each = each_isa((&xb, &wp), (c, o), &g, form, inf, Epilogue::NONE);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(!got.contains(&UNSET), "{form}: an output left unwritten");
        assert_eq!(bits(&got), bits(&parts), "{form}: calls of parts");
        if wino {
            for (i, (&a, &b)) in got.iter().zip(&unpacked).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{form} {i}: Winograd {a} vs direct {b}"
                );
            }
        } else {
            assert_eq!(
                bits(&got),
                bits(&unpacked),
                "{form}: filters packed per call"
            );
        }
        if inf {
            // Output 0 (filter 0 at (0, 0)) has its first tap outside: 0 · -inf.
            assert!(got[0].is_nan(), "{form}: {}", got[0]);
            for (isa, out) in &each {
                assert_eq!(
                    bits(&got),
                    bits(out),
                    "{form}: {isa:?} code agrees bit for bit"
                );
            }
            let finite = got.iter().zip(&want).filter(|(a, _)| a.is_finite());
            for (i, (&a, &b)) in finite.enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{form} {i}: {a} vs {b}"
                );
            }
            return;
        }
        for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{form} {i}: {a} vs {b}"
            );
        }
        for (isa, out) in &each {
            assert_eq!(
                bits(&got),
                bits(out),
                "{form}: {isa:?} code agrees bit for bit"
            );
        }
    }

    /// A dense conv over a blocked input whose channels do not fill its last block reads none
    /// of the padding lanes: with NaN there its outputs are, bit for bit on every instruction
    /// set, those of the same conv over the lanes zeroed and given zero weights (what a
    /// layout's padding was before: a NaN or infinity in a real channel made the padded
    /// outputs NaN, which the next conv's zero weights then spread to every channel).
    #[test]
    fn padding_lanes_of_a_blocked_input_are_never_read() {
        for &(c, o, hw, k, s, p) in &[
            (41usize, 32usize, (7i64, 9i64), 3i64, 1i64, 1i64),
            (20, 16, (6, 5), 1, 1, 0),
            (9, 32, (5, 5), 3, 2, 1),
            (33, 16, (12, 12), 3, 1, 1),
            (17, 64, (4, 20), 1, 2, 0),
        ] {
            let (h, w) = hw;
            let oh = (h + 2 * p - k) / s + 1;
            let ow = (w + 2 * p - k) / s + 1;
            let g = Geometry::of([h, w, oh, ow, k, k, s, s, 1, 1, p, p]);
            let (cp, hw_n, taps) = (
                c.div_ceil(BLOCK) * BLOCK,
                (h * w) as usize,
                (k * k) as usize,
            );
            let n = |i: usize, m: usize| ((i * 7919 + m * 104_729) % 1000) as f32 / 500.0 - 0.999;
            // Channels past c: zeros (with zero weights), or NaN (with no weights).
            let real = |ch: usize, i: usize| if ch < c { n(i, 1) } else { 0.0 };
            let zeroed: Vec<f32> = (0..cp * hw_n).map(|i| real(i / hw_n, i)).collect();
            let xz = block(&zeroed, cp, hw_n);
            let mut xn = xz.clone();
            for (i, v) in xn.iter_mut().enumerate() {
                if (i / (hw_n * BLOCK)) * BLOCK + i % BLOCK >= c {
                    *v = f32::NAN;
                }
            }
            let wt: Vec<f32> = (0..o * c * taps).map(|i| n(i, 3)).collect();
            let wz: Vec<f32> = (0..o * cp * taps)
                .map(|i| {
                    let (oc, ch, t) = (i / (cp * taps), i / taps % cp, i % taps);
                    if ch < c {
                        wt[(oc * c + ch) * taps + t]
                    } else {
                        0.0
                    }
                })
                .collect();
            let t = (k as usize, k as usize);
            let (wp, wpz) = (
                pack_filters(&wt, o, c, t, BLOCK).unwrap(),
                pack_filters(&wz, o, cp, t, BLOCK).unwrap(),
            );
            let all = ((0, (o / BLOCK) as i64), (0, oh));
            let len = o * (oh * ow) as usize;
            let run = |x: &[f32], wt: &[f32], wp: *const f32, c: usize| {
                let mut out = vec![0.0; len];
                call(x, wt, wp, &mut out, (c, o), &g, (BLOCK as i64, 1), all);
                out
            };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let want = run(&xz, &wz, wpz.as_ptr(), cp);
            assert!(want.iter().all(|v| v.is_finite()));
            let form = format!("{c} channels, {o} filters {k}x{k} stride {s}");
            assert_eq!(bits(&run(&xn, &wt, wp.as_ptr(), c)), bits(&want), "{form}");
            assert_eq!(
                bits(&run(&xn, &wt, std::ptr::null(), c)),
                bits(&want),
                "{form}"
            );
            for (isa, out) in each_isa((&xn, &wp), (c, o), &g, "blocked", false, Epilogue::NONE) {
                assert_eq!(bits(&out), bits(&want), "{form}: {isa:?}");
            }
        }
    }

    #[test]
    fn dense_convs_match_the_direct_sum() {
        for form in ["blocked", "plain"] {
            check(16, 16, (5, 7), (3, 3), 1, 1, 1, form);
            check(32, 48, (9, 30), (3, 3), 1, 1, 1, form);
            check(16, 32, (9, 11), (3, 3), 2, 1, 1, form);
            check(32, 32, (13, 17), (1, 1), 1, 1, 0, form);
            check(16, 64, (8, 8), (5, 5), 1, 2, 3, form);
            check(16, 96, (12, 14), (7, 7), 2, 1, 3, form);
            check(16, 16, (3, 3), (3, 3), 1, 1, 2, form);
            check(32, 64, (7, 9), (1, 1), 2, 1, 0, form);
            check(16, 64, (16, 16), (3, 3), 1, 1, 1, form);
            check(16, 32, (10, 11), (3, 3), 1, 1, 1, form);
            check(16, 16, (9, 8), (3, 3), 1, 1, 1, form);
            // Winograd's F(2×2, 3×3) where the filters carry transforms (blocked inputs):
            // odd and even sizes, paddings 0 to 2, one and several chunks of tile rows.
            check(32, 64, (9, 13), (3, 3), 1, 1, 1, form);
            check(64, 48, (10, 17), (3, 3), 1, 1, 0, form);
            check(48, 64, (12, 8), (3, 3), 1, 1, 2, form);
            check(64, 64, (30, 9), (3, 3), 1, 1, 1, form);
            check(32, 64, (9, 13), (3, 3), 2, 1, 1, form);
        }
        check(3, 16, (11, 13), (3, 3), 2, 1, 1, "plain");
        check(3, 32, (15, 17), (3, 3), 2, 1, 1, "plain");
        check(3, 48, (9, 12), (3, 3), 1, 1, 1, "plain");
        check(3, 64, (20, 20), (7, 7), 2, 1, 3, "plain");
    }

    #[test]
    fn infinite_filters_multiply_the_zero_padding() {
        for form in ["blocked+inf", "plain+inf", "depthwise+inf"] {
            let o = if form.starts_with("depthwise") {
                16
            } else {
                32
            };
            check(16, o, (9, 11), (3, 3), 1, 1, 1, form);
            check(16, o, (9, 11), (3, 3), 2, 2, 2, form);
        }
    }

    /// Winograd's tile rows whose outputs are not finite (an infinite input here) are the
    /// direct sum's, bit for bit; the others agree with it to rounding.
    #[test]
    fn winograd_leaves_infinities_to_the_direct_sum() {
        let (c, o, h, w) = (32usize, 64usize, 10i64, 12i64);
        let n = |i: usize, m: usize| ((i * 7919 + m * 104_729) % 1000) as f32 / 500.0 - 1.0;
        let mut x: Vec<f32> = (0..c * (h * w) as usize).map(|i| n(i, 1)).collect();
        // Channel 3 of pixel (5, 7) infinite, channel 20 of (0, 0) NaN.
        x[(5 * w + 7) as usize * BLOCK + 3] = f32::INFINITY;
        x[(h * w) as usize * BLOCK + 4] = f32::NAN;
        let wt: Vec<f32> = (0..o * c * 9).map(|i| n(i, 3)).collect();
        let wp = pack_filters(&wt, o, c, (3, 3), BLOCK).unwrap();
        assert_eq!(wp[o * c * 9 + 1], 1.0, "the transforms follow");
        let g = Geometry::of([h, w, h, w, 3, 3, 1, 1, 1, 1, 1, 1]);
        let run = |wp: *const f32| {
            let mut out = vec![0.0f32; o * (h * w) as usize];
            let all = ((0, (o / BLOCK) as i64), (0, h));
            call(&x, &wt, wp, &mut out, (c, o), &g, (BLOCK as i64, 1), all);
            out
        };
        let (wino, direct) = (run(wp.as_ptr()), run(std::ptr::null()));
        let mut fell_back = 0;
        for (i, (&a, &b)) in wino.iter().zip(&direct).enumerate() {
            if b.is_finite() {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{i}: {a} vs {b}");
            } else {
                assert_eq!(a.to_bits(), b.to_bits(), "{i}: {a} vs {b}");
                fell_back += 1;
            }
        }
        assert!(fell_back > 0);
    }

    /// Fused epilogues — shift, residual, clamps, every activation after quick operands and
    /// clamps, and the general path's forms (a −0 clamp, QDQ pairs) — give every instruction set the
    /// scalar epilogue's bits on the sums, NaN and zeros of either sign among them.
    #[test]
    fn epilogues_agree_on_every_isa() {
        let n = |i: usize, m: usize| ((i * 7919 + m * 104_729) % 1000) as f32 / 500.0 - 1.0;
        // (c, o, (h, w), k, stride, form)
        let convs = [
            (32, 48, (6, 13), 1, 1, "blocked"),
            (16, 32, (9, 10), 3, 2, "blocked"),
            (32, 64, (9, 13), 3, 1, "blocked"),
            (3, 16, (11, 13), 3, 2, "plain"),
            (32, 32, (10, 19), 3, 1, "depthwise"),
            (32, 32, (11, 20), 3, 2, "depthwise"),
        ];
        for (c, o, (h, w), k, s, form) in convs {
            let p = k / 2;
            let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            let g = Geometry::of([h, w, oh, ow, k, k, s, s, 1, 1, p, p]);
            let depthwise = form == "depthwise";
            let taps = (k as usize, k as usize);
            let mut x: Vec<f32> = (0..c * (h * w) as usize).map(|i| n(i, 1)).collect();
            x[5] = f32::NAN;
            let wt: Vec<f32> = (0..o * if depthwise { 1 } else { c } * taps.0 * taps.1)
                .map(|i| n(i, 3))
                .collect();
            let wp = if depthwise {
                pack_depthwise(&wt, c, taps)
            } else {
                let gi = if form == "plain" { c } else { BLOCK };
                pack_filters(&wt, o, c, taps, gi)
            }
            .unwrap();
            let x = if form == "plain" {
                x
            } else {
                block(&x, c, (h * w) as usize)
            };
            let size = o * (oh * ow) as usize;
            let mut res: Vec<f32> = (0..size).map(|i| n(i, 5) * 4.0).collect();
            (res[1], res[2], res[3]) = (-0.0, 0.0, f32::NAN);
            let mut shift: Vec<f32> = (0..o).map(|i| n(i, 7)).collect();
            shift[1] = -0.0;
            let scale: Vec<f32> = (0..o).map(|i| n(i, 9) + 1.5).collect();
            let null = std::ptr::null();
            let (t, r, sc) = (shift.as_ptr(), res.as_ptr(), scale.as_ptr());
            let (inf, ninf) = (f32::INFINITY, f32::NEG_INFINITY);
            // ((scale, shift, residual), lo, hi, activation)
            let epilogues = [
                ((null, t, r), 0.0, 6.0, 0),
                ((null, t, null), 0.0, inf, 0),
                ((null, null, r), ninf, inf, 0),
                ((null, t, null), ninf, inf, 0),
                ((null, t, r), ninf, 0.5, 0),
                ((null, t, null), -0.0, inf, 0),
                ((sc, t, r), 0.0, 6.0, 0),
                ((null, t, null), ninf, inf, 4),
                ((null, t, r), ninf, inf, 5),
                // Activations after quick clamps and operands (decided once a run), and after
                // a clamp the general path takes (−0).
                ((null, t, r), 0.0, 6.0, 5),
                ((sc, t, null), ninf, inf, 1),
                ((null, t, null), ninf, 0.5, 2),
                ((null, t, r), ninf, inf, 3),
                ((null, t, null), 0.0, inf, 6),
                ((sc, t, r), ninf, inf, 7),
                ((null, t, null), ninf, inf, 8),
                ((null, t, null), -0.0, inf, 5),
            ];
            let sums = each_isa((&x, &wp), (c, o), &g, form, false, Epilogue::NONE);
            let sums = &sums[0].1;
            // Each also with QDQ pairs (before, after or both: the general path).
            let pairs = [
                [0.0; 11],
                [
                    0.013, 120.0, 0.0, 255.0, 0.013, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                ],
                [
                    0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.007, -4.0, -128.0, 127.0, 1.0,
                ],
                [
                    0.021, 0.0, 0.0, 255.0, 0.5, 1.0, 0.009, 11.0, 0.0, 255.0, 0.009,
                ],
            ];
            let epilogues = (epilogues.iter().enumerate())
                .flat_map(|(n, &e)| [(e, pairs[0]), (e, pairs[1 + n % 3])]);
            for ((ops, lo, hi, act), quant) in epilogues {
                let (s1, t, r) = ops;
                // A second scale with the pair after the scale (QOperator's batch norm).
                let s2 = if quant[5] == 1.0 { s1 } else { null };
                let e = Epilogue::new((s1, t, r, s2), (lo, hi), 1, act, quant);
                let want: Vec<u32> = (0..size)
                    .map(|i| {
                        let ch = i / ((oh * ow) as usize * BLOCK) * BLOCK + i % BLOCK;
                        let r = (!e.res.is_null()).then(|| res[i]);
                        // SAFETY: channel `ch` is inside the per-channel operands.
                        unsafe { e.one(sums[i], e.coefs(0, ch), r) }.to_bits()
                    })
                    .collect();
                for (isa, out) in each_isa((&x, &wp), (c, o), &g, form, false, e) {
                    let what = format!("{form} {c}->{o} k{k} s{s}, {isa:?}, {lo} {hi} {act}");
                    for (i, (v, &w)) in out.iter().zip(&want).enumerate() {
                        // (A NaN's sign is the compiler's: LLVM may swap a product's
                        // operands, and x86 keeps the first NaN.)
                        let nan = v.is_nan() && f32::from_bits(w).is_nan();
                        assert!(
                            v.to_bits() == w || nan,
                            "{what}: output {i}, {v} vs {}",
                            f32::from_bits(w)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn depthwise_convs_match_the_direct_sum() {
        check(16, 16, (5, 7), (3, 3), 1, 1, 1, "depthwise");
        check(32, 32, (11, 23), (3, 3), 1, 1, 1, "depthwise");
        check(16, 16, (9, 10), (5, 3), 1, 1, 2, "depthwise");
        check(32, 32, (19, 40), (3, 3), 2, 1, 1, "depthwise");
        check(16, 16, (12, 14), (5, 5), 1, 2, 2, "depthwise");
        check(48, 48, (9, 9), (3, 3), 3, 1, 0, "depthwise");
    }
}
