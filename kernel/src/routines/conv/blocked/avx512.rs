//! The blocked conv's tiles in AVX-512 registers: dense tiles of up to 4 filter blocks by
//! pixels summed over every tap and channel, depthwise tiles of 16 pixels of a channel block.

use super::super::super::epilogue::avx512 as epi;
use super::super::super::epilogue::{decide, Quick};
use super::{Job, BLOCK};
use std::arch::x86_64::*;

/// The `r`×`n` pixels from (oy, ox) of blocks `ob..ob + nb` (of one channel block with
/// `depthwise`), in tiles of decreasing size.
///
/// # Safety
/// As [`Job::row`]; the CPU has AVX-512F; the pixels share their taps.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tiles(
    j: &Job,
    ob: usize,
    at: (usize, usize),
    rn: (usize, usize),
    nb: usize,
    depthwise: bool,
) {
    // SAFETY: forwarded.
    unsafe {
        match (depthwise, rn, j.ps * j.g.sw as usize) {
            (true, (1, n), s) => dw_tiles(j, ob, at, n, s, nb),
            (true, (_, n), _) => dw_pairs(j, ob, at, n, nb),
            (false, (r, 1), _) if r > 1 => down(j, ob, at, r, nb),
            (false, rn, 16) => along::<16>(j, ob, at, rn, nb),
            (false, rn, 32) => along::<32>(j, ob, at, rn, nb),
            // A plain input's pixels (a first conv's) of several blocks: immediate offsets
            // for the broadcasts, where a run-time step took an address computation each
            // (convtime, one core, 3 -> 32 channels at 224x224: stride 2 250 -> 188 us,
            // stride 1 1043 -> 750 us; 48 and 64 filters unchanged). One block's tiles
            // measured no faster so (3 -> 16, stride 2: 108 vs 114 us) and keep the step.
            (false, rn, 1) if nb > 1 => along::<1>(j, ob, at, rn, nb),
            (false, rn, 2) if nb > 1 => along::<2>(j, ob, at, rn, nb),
            (false, rn, _) => along::<0>(j, ob, at, rn, nb),
        }
    }
}

/// Dense tiles of one or two rows along them, whose pixels are `S` elements apart in the
/// input (0: the job's).
///
/// # Safety
/// As [`tiles`].
#[inline(always)]
unsafe fn along<const S: usize>(
    j: &Job,
    ob: usize,
    (oy, ox): (usize, usize),
    (r, n): (usize, usize),
    nb: usize,
) {
    let mut p = 0;
    while p < n {
        let at = (oy, ox + p);
        // SAFETY: forwarded.
        unsafe {
            p += match (r, n - p, nb) {
                (1, 6.., 4) => tile::<4, 1, 6, S>(j, ob, at),
                (1, 4.., 4) => tile::<4, 1, 4, S>(j, ob, at),
                (1, 2.., 4) => tile::<4, 1, 2, S>(j, ob, at),
                (1, _, 4) => tile::<4, 1, 1, S>(j, ob, at),
                (_, 3.., 4) => tile::<4, 2, 3, S>(j, ob, at),
                (_, 2, 4) => tile::<4, 2, 2, S>(j, ob, at),
                (_, _, 4) => tile::<4, 2, 1, S>(j, ob, at),
                (1, 8.., 3) => tile::<3, 1, 8, S>(j, ob, at),
                (1, 4.., 3) => tile::<3, 1, 4, S>(j, ob, at),
                (1, 2.., 3) => tile::<3, 1, 2, S>(j, ob, at),
                (1, _, 3) => tile::<3, 1, 1, S>(j, ob, at),
                (_, 4.., 3) => tile::<3, 2, 4, S>(j, ob, at),
                (_, 2.., 3) => tile::<3, 2, 2, S>(j, ob, at),
                (_, _, 3) => tile::<3, 2, 1, S>(j, ob, at),
                (1, 12.., 2) => tile::<2, 1, 12, S>(j, ob, at),
                (1, 8.., 2) => tile::<2, 1, 8, S>(j, ob, at),
                (1, 4.., 2) => tile::<2, 1, 4, S>(j, ob, at),
                (1, 2.., 2) => tile::<2, 1, 2, S>(j, ob, at),
                (1, _, 2) => tile::<2, 1, 1, S>(j, ob, at),
                (_, 6.., 2) => tile::<2, 2, 6, S>(j, ob, at),
                (_, 4.., 2) => tile::<2, 2, 4, S>(j, ob, at),
                (_, 2.., 2) => tile::<2, 2, 2, S>(j, ob, at),
                (_, _, 2) => tile::<2, 2, 1, S>(j, ob, at),
                (1, 12.., _) => tile::<1, 1, 12, S>(j, ob, at),
                (1, 8.., _) => tile::<1, 1, 8, S>(j, ob, at),
                (1, 4.., _) => tile::<1, 1, 4, S>(j, ob, at),
                (1, 2.., _) => tile::<1, 1, 2, S>(j, ob, at),
                (1, _, _) => tile::<1, 1, 1, S>(j, ob, at),
                (_, 6.., _) => tile::<1, 2, 6, S>(j, ob, at),
                (_, 4.., _) => tile::<1, 2, 4, S>(j, ob, at),
                (_, 2.., _) => tile::<1, 2, 2, S>(j, ob, at),
                (_, _, _) => tile::<1, 2, 1, S>(j, ob, at),
            };
        }
    }
}

/// Dense tiles of one column, `r` rows down it.
///
/// # Safety
/// As [`tiles`].
#[inline(always)]
unsafe fn down(j: &Job, ob: usize, (oy, ox): (usize, usize), r: usize, nb: usize) {
    let mut p = 0;
    while p < r {
        let at = (oy + p, ox);
        // SAFETY: forwarded.
        unsafe {
            p += match (r - p, nb) {
                (6.., 4) => {
                    tile::<4, 6, 1, 0>(j, ob, at);
                    6
                }
                (4.., 4) => {
                    tile::<4, 4, 1, 0>(j, ob, at);
                    4
                }
                (2.., 4) => {
                    tile::<4, 2, 1, 0>(j, ob, at);
                    2
                }
                (_, 4) => {
                    tile::<4, 1, 1, 0>(j, ob, at);
                    1
                }
                (8.., 3) => {
                    tile::<3, 8, 1, 0>(j, ob, at);
                    8
                }
                (4.., 3) => {
                    tile::<3, 4, 1, 0>(j, ob, at);
                    4
                }
                (2.., 3) => {
                    tile::<3, 2, 1, 0>(j, ob, at);
                    2
                }
                (_, 3) => {
                    tile::<3, 1, 1, 0>(j, ob, at);
                    1
                }
                (12.., 2) => {
                    tile::<2, 12, 1, 0>(j, ob, at);
                    12
                }
                (8.., 2) => {
                    tile::<2, 8, 1, 0>(j, ob, at);
                    8
                }
                (4.., 2) => {
                    tile::<2, 4, 1, 0>(j, ob, at);
                    4
                }
                (2.., 2) => {
                    tile::<2, 2, 1, 0>(j, ob, at);
                    2
                }
                (_, 2) => {
                    tile::<2, 1, 1, 0>(j, ob, at);
                    1
                }
                (12.., _) => {
                    tile::<1, 12, 1, 0>(j, ob, at);
                    12
                }
                (8.., _) => {
                    tile::<1, 8, 1, 0>(j, ob, at);
                    8
                }
                (4.., _) => {
                    tile::<1, 4, 1, 0>(j, ob, at);
                    4
                }
                (2.., _) => {
                    tile::<1, 2, 1, 0>(j, ob, at);
                    2
                }
                (_, _) => {
                    tile::<1, 1, 1, 0>(j, ob, at);
                    1
                }
            };
        }
    }
}

/// A dense tile of `B` output blocks by `R` rows of `C` pixels from `(oy, ox)`, whose
/// taps are those of its first pixel, with pixels `S` elements apart along a row in the
/// input (0: the job's); returns `C`.
///
/// # Safety
/// As [`tiles`].
#[inline(always)]
unsafe fn tile<const B: usize, const R: usize, const C: usize, const S: usize>(
    j: &Job,
    ob: usize,
    (oy, ox): (usize, usize),
) -> usize {
    let ((ky0, ky1), (kx0, kx1)) = j.taps(oy, ox);
    let cstep = if S == 0 { j.ps * j.g.sw as usize } else { S };
    let rstep = j.ps * j.g.sh as usize * j.g.w as usize;
    let block = j.filter(1, 0, 0, 0);
    let (gi, cs) = (j.gi, j.cs);
    // SAFETY: the CPU has AVX-512F; every tap read is inside the image (the caller's
    // pixels share their taps), every filter inside the packed set.
    let full = (ky0, ky1, kx0, kx1) == (0, j.g.kh as usize, 0, j.g.kw as usize);
    if full && gi < BLOCK {
        // Every tap inside and few channels a tap (a plain input's first conv).
        // SAFETY: forwarded.
        return unsafe { flat::<B, R, C, S>(j, ob, (oy, ox)) };
    }
    unsafe {
        let mut acc = [[[_mm512_setzero_ps(); C]; R]; B];
        for q in 0..j.groups {
            for ky in ky0..ky1 {
                for kx in kx0..kx1 {
                    let xp = j.x.add(j.input(q, j.at((oy, ox), (ky, kx))));
                    let rows: [*const f32; R] = std::array::from_fn(|r| xp.add(r * rstep));
                    let wq = j.wp.add(j.filter(ob, q, ky, kx));
                    for i in 0..j.count(q) {
                        let w = wq.add(i * BLOCK);
                        step(&mut acc, w, block, &rows, i * cs, cstep);
                    }
                }
            }
        }
        store_tile(j, ob, (oy, ox), &acc);
    }
    C
}

/// One channel's multiply-adds of a tile: its `B` filter vectors from `w` (`block`
/// apart) by the input at `off` from each row's start, pixels `cstep` apart.
///
/// # Safety
/// As [`tile`], for this channel.
#[inline(always)]
unsafe fn step<const B: usize, const R: usize, const C: usize>(
    acc: &mut [[[__m512; C]; R]; B],
    w: *const f32,
    block: usize,
    rows: &[*const f32; R],
    off: usize,
    cstep: usize,
) {
    // SAFETY: forwarded.
    unsafe {
        let mut f = [_mm512_setzero_ps(); B];
        for (b, f) in f.iter_mut().enumerate() {
            *f = _mm512_loadu_ps(w.add(b * block));
        }
        for r in 0..R {
            let xi = rows[r].add(off);
            for c in 0..C {
                let v = _mm512_set1_ps(*xi.add(c * cstep));
                for b in 0..B {
                    acc[b][r][c] = _mm512_fmadd_ps(v, f[b], acc[b][r][c]);
                }
            }
        }
    }
}

/// Stores a dense tile's rows of every block from `(oy, ox)`.
///
/// # Safety
/// As [`tile`].
#[inline(always)]
unsafe fn store_tile<const B: usize, const R: usize, const C: usize>(
    j: &Job,
    ob: usize,
    at: (usize, usize),
    acc: &[[[__m512; C]; R]; B],
) {
    // A copy escapes to the out-of-line store, not the sums (LLVM then kept those in
    // memory through the tile's loop: twice as slow).
    let copy = *acc;
    // SAFETY: forwarded.
    unsafe { stored_tile(j, ob, at, copy.as_flattened().as_flattened(), (B, R)) };
}

/// [`store_tile`] of a tile's `b`×`r` runs of vectors (block-major in `acc`), kept out of
/// line as [`stored`], with the epilogue's decisions taken once for the tile: a call per run
/// cost as much as half the stores themselves (a tile's 6 or 12 vectors a call).
///
/// # Safety
/// As [`store_tile`].
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn stored_tile(
    j: &Job,
    ob: usize,
    (oy, ox): (usize, usize),
    acc: &[__m512],
    (b, r): (usize, usize),
) {
    let c = acc.len() / (b * r);
    let Some(clamp) = j.epi.quick_linear() else {
        for (i, run) in acc.chunks_exact(c).enumerate() {
            let at = j.output(ob + i / r, oy + i % r, ox);
            // SAFETY: forwarded.
            unsafe { general(j, ob + i / r, at, (c, BLOCK), |p| run[p]) };
        }
        return;
    };
    /// The tile's runs of vectors, each through the quick epilogue.
    struct Runs<'a> {
        j: &'a Job,
        ob: usize,
        at: (usize, usize),
        acc: &'a [__m512],
        r: usize,
        c: usize,
    }
    impl Quick for Runs<'_> {
        #[inline(always)]
        unsafe fn run<const CLAMP: bool, const RES: bool, const A: i64>(self) {
            let Runs {
                j,
                ob,
                at,
                acc,
                r,
                c,
            } = self;
            for (i, run) in acc.chunks_exact(c).enumerate() {
                let at = j.output(ob + i / r, at.0 + i % r, at.1);
                // SAFETY: forwarded.
                unsafe { quick::<CLAMP, RES, A>(j, ob + i / r, at, (c, BLOCK), |p| run[p]) };
            }
        }
    }
    let runs = Runs {
        j,
        ob,
        at: (oy, ox),
        acc,
        r,
        c,
    };
    // SAFETY: forwarded; the CPU has AVX-512F.
    unsafe { decide(&j.epi, clamp, runs) };
}

/// [`tile`] where every tap is inside: one loop over the window's taps and channels
/// (offsets from a table), which spares a plain input's few channels a tap the per-tap
/// work (a first conv's 3 channels: 0.19 → 0.15 ms at 224×224). Kept out of line: in
/// `tile`'s body it made the register allocation of the nested loops spill (3×3 convs of
/// 64 channels 2.5 times slower), and blocked inputs' 16 channels a tap run faster there
/// with their offsets immediate.
///
/// # Safety
/// As [`tiles`]; every tap of the tile's pixels inside the image.
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn flat<const B: usize, const R: usize, const C: usize, const S: usize>(
    j: &Job,
    ob: usize,
    (oy, ox): (usize, usize),
) -> usize {
    let cstep = if S == 0 { j.ps * j.g.sw as usize } else { S };
    let rstep = j.ps * j.g.sh as usize * j.g.w as usize;
    let block = j.filter(1, 0, 0, 0);
    let n = j.g.kh as usize * j.g.kw as usize * j.gi;
    // SAFETY: as in `tile`; the table holds the window's taps and channels.
    unsafe {
        let mut acc = [[[_mm512_setzero_ps(); C]; R]; B];
        let offs = std::slice::from_raw_parts(j.offs, n);
        let first = j.x.add(j.input(0, j.at((oy, ox), (0, 0))));
        for q in 0..j.groups {
            let xq = first.add(q * j.gs);
            let rows: [*const f32; R] = std::array::from_fn(|r| xq.add(r * rstep));
            let wq = j.wp.add(j.filter(ob, q, 0, 0));
            for (t, &off) in offs.iter().enumerate() {
                step(&mut acc, wq.add(t * BLOCK), block, &rows, off, cstep);
            }
        }
        store_tile(j, ob, (oy, ox), &acc);
    }
    C
}

/// Depthwise tiles of channel blocks `cb..cb + nb` whose pixels are `s` elements apart in
/// the input.
///
/// # Safety
/// As [`tiles`].
#[inline(always)]
unsafe fn dw_tiles(j: &Job, cb: usize, (oy, ox): (usize, usize), n: usize, s: usize, nb: usize) {
    // Three taps a row at unit strides and dilations: each input vector loaded once for
    // the three taps that read it.
    let three = (j.g.kw, j.g.dw, s) == (3, 1, BLOCK) && n > 1;
    // Stride 2: each input vector loaded once for the two pixels' taps that read it.
    let strided = (j.g.kw, j.g.dw, s) == (3, 1, 2 * BLOCK) && n > 1;
    let mut p = 0;
    while p < n {
        let at = (oy, ox + p);
        // SAFETY (both): forwarded (the pixels of a tile share their taps: all three
        // columns).
        if n - p < 4 && nb > 1 {
            // Fewer than four pixels (a small image's border, a row's last): the blocks'
            // sums side by side, whose chains of taps would otherwise wait on each other.
            unsafe {
                p += match (nb, n - p) {
                    (4, 3) => dw_tile::<4, 3>(j, cb, at, s),
                    (4, 2) => dw_tile::<4, 2>(j, cb, at, s),
                    (4, _) => dw_tile::<4, 1>(j, cb, at, s),
                    (_, 2..) => dw_tile::<2, 2>(j, cb, at, s),
                    _ => dw_tile::<2, 1>(j, cb, at, s),
                };
            }
            continue;
        }
        let mut step = 0;
        for b in cb..cb + nb {
            unsafe {
                step = match n - p {
                    12.. if three => dw_row3::<12, 14, 1>(j, b, at),
                    8.. if three => dw_row3::<8, 10, 1>(j, b, at),
                    4.. if three => dw_row3::<4, 6, 1>(j, b, at),
                    8.. if strided => dw_row3::<8, 17, 2>(j, b, at),
                    4.. if strided => dw_row3::<4, 9, 2>(j, b, at),
                    16.. => dw_tile::<1, 16>(j, b, at, s),
                    8.. => dw_tile::<1, 8>(j, b, at, s),
                    4.. => dw_tile::<1, 4>(j, b, at, s),
                    2.. => dw_tile::<1, 2>(j, b, at, s),
                    _ => dw_tile::<1, 1>(j, b, at, s),
                };
            }
        }
        p += step;
    }
}

/// Depthwise tiles of output rows `oy` and `oy + 1` ([`Job::paired`]; both rows' taps
/// inside) of channel blocks `cb..cb + nb`: [`dw_rows3`] where the columns' taps are
/// inside, the rows one at a time for a single border pixel.
///
/// # Safety
/// As [`tiles`].
#[inline(always)]
unsafe fn dw_pairs(j: &Job, cb: usize, (oy, ox): (usize, usize), n: usize, nb: usize) {
    if n == 1 {
        for y in oy..oy + 2 {
            // SAFETY: forwarded.
            unsafe { dw_tiles(j, cb, (y, ox), 1, BLOCK, nb) };
        }
        return;
    }
    for b in cb..cb + nb {
        let mut p = 0;
        while p < n {
            let at = (oy, ox + p);
            // SAFETY: forwarded.
            unsafe {
                p += match n - p {
                    8.. => dw_rows3::<8, 10>(j, b, at),
                    4.. => dw_rows3::<4, 6>(j, b, at),
                    2.. => dw_rows3::<2, 4>(j, b, at),
                    _ => dw_rows3::<1, 3>(j, b, at),
                };
            }
        }
    }
}

/// A depthwise tile of channel block `cb` by two output rows of `P` pixels from `(oy,
/// ox)` of a window three taps wide ([`Job::paired`], every tap inside): each of the
/// `kh + 1` input rows the two windows read, `Q` = `P` + 2 vectors, loaded once; each
/// output's sums in (ky, kx) order as [`dw_tile`]'s. Returns `P`.
///
/// # Safety
/// As [`tiles`].
#[inline(always)]
unsafe fn dw_rows3<const P: usize, const Q: usize>(
    j: &Job,
    cb: usize,
    (oy, ox): (usize, usize),
) -> usize {
    let kh = j.g.kh as usize;
    // SAFETY: as in `tile`: both rows' taps are inside.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); P]; 2];
        let first = j.x.add(cb * j.gs + j.input(0, j.at((oy, ox), (0, 0))));
        let row = j.g.w as usize * BLOCK;
        for r in 0..kh + 1 {
            let xp = first.add(r * row);
            let mut v = [_mm512_setzero_ps(); Q];
            for (q, v) in v.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(xp.add(q * BLOCK));
            }
            for (o, acc) in acc.iter_mut().enumerate() {
                // Input row r is window row r - o of output row oy + o.
                let Some(ky) = r.checked_sub(o).filter(|&ky| ky < kh) else {
                    continue;
                };
                for kx in 0..3 {
                    let f = _mm512_loadu_ps(j.wp.add(j.dw_filter(cb, ky, kx)));
                    for (p, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(v[p + kx], f, *a);
                    }
                }
            }
        }
        for (o, acc) in acc.iter().enumerate() {
            store(j, cb, (oy + o, ox), acc, BLOCK);
        }
    }
    P
}

/// A depthwise tile of channel blocks `cb..cb + B` by `P` pixels from `(oy, ox)`, `s`
/// elements apart in the input, whose column taps are those of its first pixel; returns
/// `P`.
///
/// # Safety
/// As [`tiles`].
#[inline(always)]
unsafe fn dw_tile<const B: usize, const P: usize>(
    j: &Job,
    cb: usize,
    (oy, ox): (usize, usize),
    s: usize,
) -> usize {
    let ((ky0, ky1), (kx0, kx1)) = j.taps(oy, ox);
    // SAFETY: as in `tile`.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); P]; B];
        for ky in ky0..ky1 {
            for kx in kx0..kx1 {
                let xp = j.x.add(cb * j.gs + j.input(0, j.at((oy, ox), (ky, kx))));
                for (b, acc) in acc.iter_mut().enumerate() {
                    let f = _mm512_loadu_ps(j.wp.add(j.dw_filter(cb + b, ky, kx)));
                    let xp = xp.add(b * j.gs);
                    for (p, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_loadu_ps(xp.add(p * s)), f, *a);
                    }
                }
            }
        }
        for (b, acc) in acc.iter().enumerate() {
            store(j, cb + b, (oy, ox), acc, BLOCK);
        }
    }
    P
}

/// A depthwise tile of channel block `cb` by `P` pixels from `(oy, ox)` of a window
/// three taps wide (unit dilations, column stride `S` of 1 or 2, every column tap inside):
/// per window row the `Q` = `S`·(`P` − 1) + 3 input vectors it reads, loaded once; sums in
/// (ky, kx) order as [`dw_tile`]'s. Returns `P`.
///
/// # Safety
/// As [`tiles`].
#[inline(always)]
unsafe fn dw_row3<const P: usize, const Q: usize, const S: usize>(
    j: &Job,
    cb: usize,
    (oy, ox): (usize, usize),
) -> usize {
    let ((ky0, ky1), _) = j.taps(oy, ox);
    // SAFETY: as in `tile`.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); P];
        for ky in ky0..ky1 {
            let xp = j.x.add(cb * j.gs + j.input(0, j.at((oy, ox), (ky, 0))));
            let mut v = [_mm512_setzero_ps(); Q];
            for (q, v) in v.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(xp.add(q * BLOCK));
            }
            for kx in 0..3 {
                let f = _mm512_loadu_ps(j.wp.add(j.dw_filter(cb, ky, kx)));
                for (p, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(v[S * p + kx], f, *a);
                }
            }
        }
        store(j, cb, (oy, ox), &acc, BLOCK);
    }
    P
}

/// Stores a tile's vectors of output block `ob` from `(oy, ox)`, `step` apart, through
/// the epilogue.
///
/// # Safety
/// As [`tiles`], for these pixels.
#[inline(always)]
unsafe fn store(j: &Job, ob: usize, (oy, ox): (usize, usize), acc: &[__m512], step: usize) {
    let at = j.output(ob, oy, ox);
    // SAFETY: forwarded.
    unsafe { stored(j, ob, at, acc, step) };
}

/// [`emit`] of a tile's vectors, kept out of line: inlined, the epilogue's code in every
/// tile made the register allocation of the tiles' sums spill (direct convs twice as slow).
///
/// # Safety
/// As [`store`].
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn stored(j: &Job, ob: usize, at: usize, acc: &[__m512], step: usize) {
    // SAFETY: forwarded.
    unsafe { emit(j, ob, at, (acc.len(), step), |p| acc[p]) };
}

/// Stores `n` vectors `v(p)` of output block `ob` from element `at`, `step` apart, through
/// the epilogue: [`epi::quick_run`] where it takes the job's, which decides once for them.
///
/// # Safety
/// As [`tiles`], for these outputs; the CPU has AVX-512F.
#[inline(always)]
pub(super) unsafe fn emit(
    j: &Job,
    ob: usize,
    at: usize,
    (n, step): (usize, usize),
    v: impl Fn(usize) -> __m512,
) {
    // SAFETY: forwarded; the CPU has AVX-512F.
    unsafe {
        match j.epi.quick_linear() {
            Some(clamp) => {
                let e = j.epi.from(0, ob * BLOCK, at);
                epi::quick_run(&e, clamp, (n, step), v, j.out.wrapping_add(at));
            }
            None => general(j, ob, at, (n, step), v),
        }
    }
}

/// A run of `Runs` through the quick epilogue, its decisions constants.
///
/// # Safety
/// As [`emit`].
#[inline(always)]
unsafe fn quick<const CLAMP: bool, const RES: bool, const A: i64>(
    j: &Job,
    ob: usize,
    at: usize,
    ns: (usize, usize),
    v: impl Fn(usize) -> __m512,
) {
    let e = j.epi.from(0, ob * BLOCK, at);
    // SAFETY: the outputs (and residual) are inside their buffers; the CPU has AVX-512F.
    unsafe {
        let coefs = epi::coefs(&e, 0, 0, !0);
        epi::quick::<CLAMP, RES, A>(&e, coefs, ns, v, j.out.wrapping_add(at));
    }
}

/// [`emit`]'s run through the general epilogue (clamps the quick one does not take).
///
/// # Safety
/// As [`emit`].
#[inline(always)]
unsafe fn general(
    j: &Job,
    ob: usize,
    at: usize,
    (n, step): (usize, usize),
    v: impl Fn(usize) -> __m512,
) {
    // The job's epilogue itself at this block's channels and outputs, not a copy made here
    // (whose pairs, read back at once, would stall on their stores).
    let e = &j.epi;
    let out = j.out.wrapping_add(at);
    // SAFETY: the outputs (and residual) are inside their buffers; the CPU has AVX-512F.
    unsafe {
        let coefs = epi::coefs(e, 0, ob * BLOCK, !0);
        for p in 0..n {
            let r = e.res.wrapping_add(at + p * step);
            _mm512_storeu_ps(out.add(p * step), epi::apply(e, v(p), coefs, r, !0));
        }
    }
}
