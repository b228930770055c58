//! Max, min and sum pooling of one f32 plane, for the `pool2d` routine: the plane is copied
//! into a per-thread buffer padded with the identity (−∞ for max, +∞ for min, 0 for sums), its
//! rows' columns grouped by stride phase as plane convs read them, then every output row takes
//! its taps in vector registers (AVX-512 or AVX2 blocks of consecutive loads for any stride,
//! one masked block for narrow rows, when the CPU has them; scalar otherwise). For max and
//! min the copy holds ordered integer keys (the row routines' `key`, NaN mapped to the
//! extreme key), so a tap costs one integer max or min; the results are IEEE
//! `maximum`/`minimum` as kernels compute them: NaN when any tap is NaN, and −0 below +0 —
//! exact in any order. Sums accumulate in f64 in tap order (window row by row), as lowered
//! loops sum a window; a padding tap adds +0, which changes no sum. Every path gives the same
//! result.

mod bytes;

pub use bytes::kiln_pool2d_bytes;
pub(super) use bytes::{POOL2D_I8, POOL2D_U8};

use super::conv::blocked::Isa;
use super::conv::{give_padded, lanes, padded, take_padded, Geometry};

/// `out[oy·ow + ox]` = the maximum (`kind` 0), minimum (1) or sum (2) of `x[iy·w + ix]` over
/// the taps inside the plane (`iy = oy·sh + ky·dh - ph`, `ix = ox·sw + kx·dw - pw`), or −∞
/// (+∞ for the minimum, 0 for the sum) where no tap is.
///
/// # Safety
/// `x` must be readable for `h·w` elements, `out` writable for `oh·ow` and not overlapping
/// it; every extent nonnegative and strides and dilations positive.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_pool2d_plane(
    x: *const f32,
    out: *mut f32,
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
    kind: i64,
) {
    let g = Geometry::of([h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw]);
    let kind = match kind {
        0 => Kind::Max,
        1 => Kind::Min,
        _ => Kind::Sum,
    };
    // SAFETY: forwarded.
    unsafe { plane(x, out, &g, kind, lanes()) }
}

/// The plane routines' integer arguments: the geometry and the kind.
pub(super) const PLANE_INTS: &[&str] = &[
    "h", "w", "oh", "ow", "kh", "kw", "sh", "sw", "dh", "dw", "ph", "pw", "kind",
];

/// The elements of a plane in (operand 0) and out (operand 1).
pub(super) fn plane_extent(operand: usize, i: &[crate::Expr]) -> Option<crate::Expr> {
    let (a, b) = [(0, 1), (2, 3)].get(operand).copied()?;
    Some(i.get(a)?.clone() * i.get(b)?.clone())
}

/// The elements a plane routine touches: a plane in, a plane out.
pub(super) fn plane_bounds(operand: usize, i: &[i64]) -> Option<super::Range> {
    let (a, b) = [(0, 1), (2, 3)].get(operand).copied()?;
    let len = i[a].checked_mul(i[b])?;
    (len > 0).then_some((0, len - 1))
}

/// What a window computes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Max,
    Min,
    Sum,
}

/// # Safety
/// As [`kiln_pool2d_plane`]; `lanes` (1, 8 or 16) at most what the CPU runs.
unsafe fn plane(x: *const f32, out: *mut f32, g: &Geometry, kind: Kind, lanes: usize) {
    if g.oh <= 0 || g.ow <= 0 {
        return;
    }
    // Max and min compare ordered keys, NaN the largest (smallest) key: the copy holds keys
    // and is padded with the key of −∞ (+∞).
    let (fill, keys) = match kind {
        Kind::Max => (from_key(key(f32::NEG_INFINITY, false)), Some(false)),
        Kind::Min => (from_key(key(f32::INFINITY, true)), Some(true)),
        Kind::Sum => (0.0, None),
    };
    let mut buf = take_padded();
    // SAFETY: forwarded.
    let pad = unsafe { padded(x, g, fill, keys, &mut buf) };
    // The offset of each tap's input for output (0, 0), window row by row: on the stack for
    // windows up to 7×7.
    let n_taps = (g.kh * g.kw) as usize;
    let mut small = [0usize; 49];
    let large: Vec<usize>;
    let taps: &[usize] = if n_taps <= small.len() {
        let mut t = 0;
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                small[t] = pad.tap(g, ky, kx);
                t += 1;
            }
        }
        &small[..n_taps]
    } else {
        large = (0..g.kh * g.kw)
            .map(|t| pad.tap(g, t / g.kw, t % g.kw))
            .collect();
        &large
    };
    let p = buf.as_ptr();
    for oy in 0..g.oh {
        let base = oy as usize * g.sh as usize * pad.row;
        // SAFETY: the row is inside `out`.
        let row = unsafe { out.add((oy * g.ow) as usize) };
        let mut ox = 0;
        #[cfg(target_arch = "x86_64")]
        if lanes == 16 {
            // SAFETY: the host has AVX-512; every tap of the row is inside the copy, with 16
            // elements to spare.
            unsafe { avx512::row(p.add(base), taps, row, g.ow, kind) };
            ox = g.ow;
        } else if lanes >= 8 {
            // SAFETY: the host has AVX2; as above.
            unsafe { avx2::row(p.add(base), taps, row, g.ow, kind) };
            ox = g.ow;
        }
        let _ = lanes;
        while ox < g.ow {
            // SAFETY: every tap is inside the copy.
            let tap = |off: usize| unsafe { *p.add(base + off + ox as usize) };
            let v = match kind {
                Kind::Sum => taps
                    .iter()
                    .fold(0f64, |acc, &off| acc + f64::from(tap(off)))
                    as f32,
                Kind::Max => value(taps.iter().map(|&off| tap(off).to_bits() as i32).max()),
                Kind::Min => value(taps.iter().map(|&off| tap(off).to_bits() as i32).min()),
            };
            // SAFETY: `ox < ow`.
            unsafe { *row.add(ox as usize) = v };
            ox += 1;
        }
    }
    give_padded(buf);
}

/// [`kiln_pool2d_plane`] on `nb` consecutive channel blocks of a blocked image: `x` `[nb, h,
/// w, 16]`, `out` `[nb, oh, ow, 16]`, each lane its own channel's plane. The taps outside
/// the plane are skipped; sums accumulate in f64 in tap order, extremes compare ordered
/// keys. (Several blocks a call let a global pool's one window per block run as independent
/// sums side by side, instead of one chain of dependent additions after another.)
///
/// # Safety
/// `x` must be readable for `nb·16·h·w` elements, `out` writable for `nb·16·oh·ow` and not
/// overlapping it; every extent nonnegative and strides and dilations positive.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_pool2d_nchwc(
    x: *const f32,
    out: *mut f32,
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
    kind: i64,
    nb: i64,
) {
    // SAFETY: forwarded.
    unsafe {
        nchwc(
            x,
            out,
            [h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw],
            kind,
            nb,
            Isa::host(),
        )
    }
}

/// [`kiln_pool2d_nchwc`] in `isa`'s code (every ISA gives the same results).
///
/// # Safety
/// As [`kiln_pool2d_nchwc`]; the CPU runs `isa`'s code.
unsafe fn nchwc(x: *const f32, out: *mut f32, g: [i64; 12], kind: i64, nb: i64, isa: Isa) {
    let [h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw] = g;
    let kind = match kind {
        0 => Kind::Max,
        1 => Kind::Min,
        _ => Kind::Sum,
    };
    let nb = nb.max(0) as usize;
    let outs = (oh.max(0) * ow.max(0)) as usize * B;
    if h <= 0 || w <= 0 || oh <= 0 || ow <= 0 {
        // No input: every output is the identity.
        let fill = match kind {
            Kind::Max => f32::NEG_INFINITY,
            Kind::Min => f32::INFINITY,
            Kind::Sum => 0.0,
        };
        for i in 0..nb * outs {
            // SAFETY: inside the output.
            unsafe { *out.add(i) = fill };
        }
        return;
    }
    let ins = (h * w) as usize * B;
    // The full window's taps from its first element, window row by row.
    let window: Vec<usize> = (0..kh)
        .flat_map(|ky| (0..kw).map(move |kx| ((ky * dh * w + kx * dw) as usize) * B))
        .collect();
    // One window a block, inside the plane (a global pool): several blocks' windows side by
    // side, each still summed (or compared) in tap order — four at a time in AVX-512, two
    // (sums only) in AVX2.
    let (y, ky0, ky1) = span(0, sh, ph, kh, dh, h);
    let (x0, kx0, kx1) = span(0, sw, pw, kw, dw, w);
    let global = (oh, ow) == (1, 1) && (ky0, ky1, kx0, kx1) == (0, kh, 0, kw);
    let side_by_side = match isa {
        Isa::Avx512 => 4,
        Isa::Avx2 if kind == Kind::Sum => 2,
        _ => 0,
    };
    #[cfg(target_arch = "x86_64")]
    if global && side_by_side > 0 {
        let first = ((y * w + x0) as usize) * B;
        let mut b = 0;
        while b < nb {
            let n = (nb - b).min(side_by_side);
            // SAFETY: the blocks' windows are inside their planes; their outputs 16 apart
            // (one pixel a block); the CPU runs `isa`.
            unsafe {
                let (x, o) = (x.add(b * ins), out.add(b * B));
                match (isa, n) {
                    (Isa::Avx512, 4) => avx512::windows::<4>(x, first, ins, &window, o, kind),
                    (Isa::Avx512, 3) => avx512::windows::<3>(x, first, ins, &window, o, kind),
                    (Isa::Avx512, 2) => avx512::windows::<2>(x, first, ins, &window, o, kind),
                    (Isa::Avx512, _) => avx512::windows::<1>(x, first, ins, &window, o, kind),
                    (_, 2) => avx2::sums::<2>(x.add(first), ins, &window, o),
                    _ => avx2::sums::<1>(x.add(first), ins, &window, o),
                }
            }
            b += n;
        }
        return;
    }
    let _ = (global, side_by_side, y, x0);
    for b in 0..nb {
        // SAFETY: block `b`'s plane and outputs, as the caller promises.
        unsafe { block(x.add(b * ins), out.add(b * outs), g, kind, &window, isa) };
    }
}

/// Values a blocked pixel holds.
const B: usize = 16;

/// The window's taps inside the plane along one axis, for output `o` (stride `s`, low
/// padding `p`, window `k`, dilation `d`, extent `n`): the window's first position and the
/// range of taps inside (divisions only at the borders).
fn span(o: i64, s: i64, p: i64, k: i64, d: i64, n: i64) -> (i64, i64, i64) {
    let start = o * s - p;
    let (k0, k1) = super::conv::blocked::inside(start, k, d, n);
    (start, k0, k1)
}

/// [`nchwc`] on one block (`window`: the full window's tap offsets).
///
/// # Safety
/// As [`kiln_pool2d_nchwc`] with one block, every extent positive.
unsafe fn block(
    x: *const f32,
    out: *mut f32,
    g: [i64; 12],
    kind: Kind,
    window: &[usize],
    isa: Isa,
) {
    let [h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw] = g;
    let wide = isa == Isa::Avx512;
    let src = x;
    for oy in 0..oh {
        let (y, ky0, ky1) = span(oy, sh, ph, kh, dh, h);
        let mut ox = 0;
        while ox < ow {
            let (x0, kx0, kx1) = span(ox, sw, pw, kw, dw, w);
            let first = ((y * w + x0) as usize) * B;
            // SAFETY: the output pixel is inside `out`.
            let o = unsafe { out.add((oy * ow + ox) as usize * B) };
            #[cfg(target_arch = "x86_64")]
            if wide && (ky0, ky1, kx0, kx1) == (0, kh, 0, kw) {
                // Outputs whose whole window is inside, four at a time.
                let mut n = 1;
                while n < 4 && ox + n < ow && span(ox + n, sw, pw, kw, dw, w).1 == 0 && {
                    let (_, a, b) = span(ox + n, sw, pw, kw, dw, w);
                    (a, b) == (0, kw)
                } {
                    n += 1;
                }
                let step = sw as usize * B;
                // SAFETY: the windows are inside the plane; the outputs inside `out`; the CPU
                // has AVX-512F.
                unsafe {
                    match n {
                        4 => avx512::windows::<4>(src, first, step, window, o, kind),
                        3 => avx512::windows::<3>(src, first, step, window, o, kind),
                        2 => avx512::windows::<2>(src, first, step, window, o, kind),
                        _ => avx512::windows::<1>(src, first, step, window, o, kind),
                    }
                }
                ox += n;
                continue;
            }
            let taps = Taps {
                first,
                rows: (ky0 as usize, ky1 as usize, (dh * w) as usize * B),
                cols: (kx0 as usize, kx1 as usize, dw as usize * B),
            };
            ox += 1;
            #[cfg(target_arch = "x86_64")]
            if wide {
                // SAFETY: every tap is inside the plane; the CPU has AVX-512F.
                unsafe { avx512::pixel(src, &taps, o, kind) };
                continue;
            }
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx2 {
                // SAFETY: every tap is inside the plane; the CPU has AVX2.
                unsafe { avx2::pixel(src, &taps, o, kind) };
                continue;
            }
            let _ = (wide, isa);
            for l in 0..B {
                // SAFETY: every tap is inside the plane; the lane inside the output pixel.
                unsafe {
                    let v = |off: usize| *src.add(off + l);
                    *o.add(l) = match kind {
                        Kind::Sum => taps.fold(0f64, |a, off| a + f64::from(v(off))) as f32,
                        Kind::Max => {
                            let k = taps.fold(i32::MIN, |a, off| a.max(key(v(off), false)));
                            if taps.empty() {
                                f32::NEG_INFINITY
                            } else {
                                value(Some(k))
                            }
                        }
                        Kind::Min => {
                            let k = taps.fold(i32::MAX, |a, off| a.min(key(v(off), true)));
                            if taps.empty() {
                                f32::INFINITY
                            } else {
                                value(Some(k))
                            }
                        }
                    };
                }
            }
        }
    }
}

/// The taps of one output of a blocked pool: element offsets `first + ky·rows.2 + kx·cols.2`
/// for `ky` in `rows.0..rows.1` and `kx` in `cols.0..cols.1`, window row by row.
struct Taps {
    first: usize,
    rows: (usize, usize, usize),
    cols: (usize, usize, usize),
}

impl Taps {
    fn empty(&self) -> bool {
        self.rows.0 >= self.rows.1 || self.cols.0 >= self.cols.1
    }

    /// `f` folded over the taps' offsets in window order.
    #[inline(always)]
    fn fold<A>(&self, init: A, mut f: impl FnMut(A, usize) -> A) -> A {
        let mut a = init;
        for ky in self.rows.0..self.rows.1 {
            let row = self.first + ky * self.rows.2;
            for kx in self.cols.0..self.cols.1 {
                a = f(a, row + kx * self.cols.2);
            }
        }
        a
    }
}

/// The largest key, NaN's for the maximum.
const NAN_MAX: i32 = i32::MAX;
/// The smallest key, NaN's for the minimum.
const NAN_MIN: i32 = i32::MIN;

/// `v`'s ordered key: keys compare as signed integers as IEEE `maximum`/`minimum` order
/// floats (−0 below +0), NaN above everything for the maximum (`min` false) and below for
/// the minimum.
fn key(v: f32, min: bool) -> i32 {
    if v.is_nan() {
        return if min { NAN_MIN } else { NAN_MAX };
    }
    let b = v.to_bits() as i32;
    b ^ (((b >> 31) as u32) >> 1) as i32
}

/// The key's bits as an f32 (what the padded copy holds).
fn from_key(k: i32) -> f32 {
    f32::from_bits(k as u32)
}

/// The value of the extreme key of a window (NaN for a NaN key).
fn value(k: Option<i32>) -> f32 {
    match k {
        Some(NAN_MAX | NAN_MIN) => f32::NAN,
        // The map is its own inverse.
        Some(k) => f32::from_bits((k ^ (((k >> 31) as u32) >> 1) as i32) as u32),
        None => unreachable!("a window has taps"),
    }
}

/// Replaces every value of `s` by its ordered key ([`key`]) as f32 bits.
pub(super) fn to_keys(s: &mut [f32], min: bool) {
    for v in s {
        *v = from_key(key(*v, min));
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use super::super::rows::avx512::key;
    use super::Kind;
    use std::arch::x86_64::*;

    /// Sixteen consecutive inputs.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: forwarded.
        unsafe { _mm512_loadu_ps(p) }
    }

    /// The `ow` outputs of a row: blocks of 16, and a last block that ends at `ow`, or one
    /// masked block for rows narrower than 16.
    ///
    /// # Safety
    /// AVX-512F available; every tap of the row readable with 16 elements to spare.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn row(x: *const f32, taps: &[usize], row: *mut f32, ow: i64, kind: Kind) {
        let ow = ow as usize;
        if ow < 16 {
            // One vector, its first `ow` lanes stored.
            // SAFETY: the taps are inside the copy with 16 to spare; outputs 0..ow in the row.
            unsafe {
                let v = match kind {
                    Kind::Sum => sum(x, taps),
                    _ => extreme(x, taps, kind == Kind::Min),
                };
                _mm512_mask_storeu_ps(row, ((1u32 << ow) - 1) as u16, v);
            }
            return;
        }
        let mut ox = 0;
        while ox < ow {
            let at = ox.min(ow - 16);
            // SAFETY: the taps are inside the copy; outputs at..at+16 inside the row.
            unsafe {
                let v = match kind {
                    Kind::Sum => sum(x.add(at), taps),
                    _ => extreme(x.add(at), taps, kind == Kind::Min),
                };
                _mm512_storeu_ps(row.add(at), v);
            }
            ox += 16;
        }
    }

    /// Sixteen values' ordered keys ([`super::key`]) as f32 bits.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(in crate::routines) fn keyed(v: __m512, min: bool) -> __m512 {
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        let sentinel = _mm512_set1_epi32(if min { super::NAN_MIN } else { super::NAN_MAX });
        _mm512_castsi512_ps(_mm512_mask_mov_epi32(key(v), nan, sentinel))
    }

    /// The maximum (minimum with `min`) of 16 outputs' taps, from their keys.
    ///
    /// # Safety
    /// AVX-512F available; the taps readable from `x`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn extreme(x: *const f32, taps: &[usize], min: bool) -> __m512 {
        let mut acc = _mm512_set1_epi32(if min { i32::MAX } else { i32::MIN });
        for &off in taps {
            // SAFETY: the taps are inside the copy.
            let k = _mm512_castps_si512(unsafe { load(x.add(off)) });
            acc = if min {
                _mm512_min_epi32(acc, k)
            } else {
                _mm512_max_epi32(acc, k)
            };
        }
        // Keys back to floats (the map is its own inverse), NaN for NaN's key.
        let sentinel = _mm512_set1_epi32(if min { super::NAN_MIN } else { super::NAN_MAX });
        let nan = _mm512_cmpeq_epi32_mask(acc, sentinel);
        let back = _mm512_castsi512_ps(key(_mm512_castsi512_ps(acc)));
        _mm512_mask_mov_ps(back, nan, _mm512_set1_ps(f32::NAN))
    }

    /// `N` outputs of a blocked pool whose windows are inside the plane, the first at
    /// element `first` of `x` and each `step` after the one before (`window`: the taps'
    /// offsets), stored 16 apart from `out`: keys' extremes, or f64 sums in tap order.
    ///
    /// # Safety
    /// AVX-512F available; the windows readable from `x`, `out` writable for `16·N`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn windows<const N: usize>(
        x: *const f32,
        first: usize,
        step: usize,
        window: &[usize],
        out: *mut f32,
        kind: Kind,
    ) {
        // SAFETY: forwarded.
        unsafe {
            let at: [*const f32; N] = std::array::from_fn(|n| x.add(first + n * step));
            if kind == Kind::Sum {
                let mut lo = [_mm512_setzero_pd(); N];
                let mut hi = [_mm512_setzero_pd(); N];
                for &off in window {
                    for n in 0..N {
                        let v = load(at[n].add(off));
                        let upper =
                            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
                        lo[n] = _mm512_add_pd(lo[n], _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
                        hi[n] = _mm512_add_pd(hi[n], _mm512_cvtps_pd(upper));
                    }
                }
                for n in 0..N {
                    let (l, h) = (_mm512_cvtpd_ps(lo[n]), _mm512_cvtpd_ps(hi[n]));
                    let v = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                        _mm512_castpd256_pd512(_mm256_castps_pd(l)),
                        _mm256_castps_pd(h),
                    ));
                    _mm512_storeu_ps(out.add(16 * n), v);
                }
                return;
            }
            let min = kind == Kind::Min;
            let mut acc = [_mm512_set1_epi32(if min { i32::MAX } else { i32::MIN }); N];
            for &off in window {
                for n in 0..N {
                    let k = _mm512_castps_si512(keyed(load(at[n].add(off)), min));
                    acc[n] = if min {
                        _mm512_min_epi32(acc[n], k)
                    } else {
                        _mm512_max_epi32(acc[n], k)
                    };
                }
            }
            let sentinel = _mm512_set1_epi32(if min { super::NAN_MIN } else { super::NAN_MAX });
            for (n, &acc) in acc.iter().enumerate() {
                let nan = _mm512_cmpeq_epi32_mask(acc, sentinel);
                let back = _mm512_castsi512_ps(key(_mm512_castsi512_ps(acc)));
                _mm512_storeu_ps(
                    out.add(16 * n),
                    _mm512_mask_mov_ps(back, nan, _mm512_set1_ps(f32::NAN)),
                );
            }
        }
    }

    /// One output pixel of a blocked pool: the extreme of the 16-lane keys (or the f64 sum
    /// of the inputs) at `taps` from `x`, stored at `out`.
    ///
    /// # Safety
    /// AVX-512F available; the taps readable from `x` for 16 lanes, `out` writable for 16.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pixel(x: *const f32, taps: &super::Taps, out: *mut f32, kind: Kind) {
        // SAFETY: forwarded.
        unsafe {
            let v = if kind == Kind::Sum {
                let zero = (_mm512_setzero_pd(), _mm512_setzero_pd());
                let (lo, hi) = taps.fold(zero, |(lo, hi), off| {
                    let v = load(x.add(off));
                    let upper = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
                    (
                        _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v))),
                        _mm512_add_pd(hi, _mm512_cvtps_pd(upper)),
                    )
                });
                let (lo, hi) = (_mm512_cvtpd_ps(lo), _mm512_cvtpd_ps(hi));
                _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                    _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
                    _mm256_castps_pd(hi),
                ))
            } else if taps.empty() {
                _mm512_set1_ps(if kind == Kind::Min {
                    f32::INFINITY
                } else {
                    f32::NEG_INFINITY
                })
            } else {
                let min = kind == Kind::Min;
                let init = _mm512_set1_epi32(if min { i32::MAX } else { i32::MIN });
                let acc = taps.fold(init, |acc, off| {
                    let k = _mm512_castps_si512(keyed(load(x.add(off)), min));
                    if min {
                        _mm512_min_epi32(acc, k)
                    } else {
                        _mm512_max_epi32(acc, k)
                    }
                });
                let sentinel = _mm512_set1_epi32(if min { super::NAN_MIN } else { super::NAN_MAX });
                let nan = _mm512_cmpeq_epi32_mask(acc, sentinel);
                let back = _mm512_castsi512_ps(key(_mm512_castsi512_ps(acc)));
                _mm512_mask_mov_ps(back, nan, _mm512_set1_ps(f32::NAN))
            };
            _mm512_storeu_ps(out, v);
        }
    }

    /// The sum of 16 outputs' taps, in f64 in tap order.    /// The sum of 16 outputs' taps, in f64 in tap order.
    ///
    /// # Safety
    /// AVX-512F available; the taps readable from `x`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn sum(x: *const f32, taps: &[usize]) -> __m512 {
        let (mut lo, mut hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        for &off in taps {
            // SAFETY: the taps are inside the copy.
            let v = unsafe { load(x.add(off)) };
            lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
            let upper = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            hi = _mm512_add_pd(hi, _mm512_cvtps_pd(upper));
        }
        let (lo, hi) = (_mm512_cvtpd_ps(lo), _mm512_cvtpd_ps(hi));
        // The two halves joined with AVX-512F alone (`insertf32x8` is AVX512DQ).
        let joined = _mm512_insertf64x4::<1>(
            _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
            _mm256_castps_pd(hi),
        );
        _mm512_castpd_ps(joined)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::rows::avx2::key;
    use super::Kind;
    use std::arch::x86_64::*;

    /// Eight consecutive inputs.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: forwarded.
        unsafe { _mm256_loadu_ps(p) }
    }

    /// The `ow` outputs of a row: blocks of 8, and a last block that ends at `ow`, or one
    /// masked block for rows narrower than 8.
    ///
    /// # Safety
    /// AVX2 and FMA available; every tap of the row readable with 16 elements to spare.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row(x: *const f32, taps: &[usize], row: *mut f32, ow: i64, kind: Kind) {
        let ow = ow as usize;
        if ow < 8 {
            // One vector, its first `ow` lanes stored.
            // SAFETY: the taps are inside the copy with 16 to spare; outputs 0..ow in the row.
            unsafe {
                let v = match kind {
                    Kind::Sum => sum(x, taps),
                    _ => extreme(x, taps, kind == Kind::Min),
                };
                let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(ow as i32), lanes);
                _mm256_maskstore_ps(row, m, v);
            }
            return;
        }
        let mut ox = 0;
        while ox < ow {
            let at = ox.min(ow - 8);
            // SAFETY: the taps are inside the copy; outputs at..at+8 inside the row.
            unsafe {
                let v = match kind {
                    Kind::Sum => sum(x.add(at), taps),
                    _ => extreme(x.add(at), taps, kind == Kind::Min),
                };
                _mm256_storeu_ps(row.add(at), v);
            }
            ox += 8;
        }
    }

    /// The maximum (minimum with `min`) of 8 outputs' taps, from their keys.
    ///
    /// # Safety
    /// AVX2 available; the taps readable from `x`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn extreme(x: *const f32, taps: &[usize], min: bool) -> __m256 {
        let mut acc = _mm256_set1_epi32(if min { i32::MAX } else { i32::MIN });
        for &off in taps {
            // SAFETY: the taps are inside the copy; the host has AVX2.
            let k = _mm256_castps_si256(unsafe { load(x.add(off)) });
            acc = if min {
                _mm256_min_epi32(acc, k)
            } else {
                _mm256_max_epi32(acc, k)
            };
        }
        // Keys back to floats (the map is its own inverse), NaN for NaN's key.
        let sentinel = _mm256_set1_epi32(if min { super::NAN_MIN } else { super::NAN_MAX });
        let nan = _mm256_castsi256_ps(_mm256_cmpeq_epi32(acc, sentinel));
        // SAFETY: the host has AVX2.
        let back = _mm256_castsi256_ps(unsafe { key(_mm256_castsi256_ps(acc)) });
        _mm256_blendv_ps(back, _mm256_set1_ps(f32::NAN), nan)
    }

    /// One output pixel of a blocked pool as [`super::avx512::pixel`] computes it, in two
    /// 8-lane halves: the extreme of the lanes' keys (NaN's key above or below every other),
    /// or their f64 sums in tap order.
    ///
    /// # Safety
    /// AVX2 available; the taps readable from `x` for 16 lanes, `out` writable for 16.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pixel(x: *const f32, taps: &super::Taps, out: *mut f32, kind: Kind) {
        for half in [0, 8] {
            // SAFETY: forwarded, for this half's lanes.
            unsafe {
                let x = x.add(half);
                let v = if kind == Kind::Sum {
                    let zero = (_mm256_setzero_pd(), _mm256_setzero_pd());
                    let (lo, hi) = taps.fold(zero, |(lo, hi), off| {
                        let v = load(x.add(off));
                        (
                            _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v))),
                            _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v))),
                        )
                    });
                    let (lo, hi) = (_mm256_cvtpd_ps(lo), _mm256_cvtpd_ps(hi));
                    _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(lo), hi)
                } else if taps.empty() {
                    _mm256_set1_ps(if kind == Kind::Min {
                        f32::INFINITY
                    } else {
                        f32::NEG_INFINITY
                    })
                } else {
                    let min = kind == Kind::Min;
                    let sentinel =
                        _mm256_set1_epi32(if min { super::NAN_MIN } else { super::NAN_MAX });
                    let init = _mm256_set1_epi32(if min { i32::MAX } else { i32::MIN });
                    let acc = taps.fold(init, |acc, off| {
                        let v = load(x.add(off));
                        let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                        let k = _mm256_blendv_epi8(key(v), sentinel, nan);
                        if min {
                            _mm256_min_epi32(acc, k)
                        } else {
                            _mm256_max_epi32(acc, k)
                        }
                    });
                    let nan = _mm256_castsi256_ps(_mm256_cmpeq_epi32(acc, sentinel));
                    let back = _mm256_castsi256_ps(key(_mm256_castsi256_ps(acc)));
                    _mm256_blendv_ps(back, _mm256_set1_ps(f32::NAN), nan)
                };
                _mm256_storeu_ps(out.add(half), v);
            }
        }
    }

    /// The f64 sums in tap order of `N` blocked pixels' windows (`window`: the taps'
    /// offsets from `x`, the next block's `step` after), stored 16 apart from `out`: what
    /// [`pixel`] computes for each, with `4·N` independent sums in flight.
    ///
    /// # Safety
    /// AVX2 available; the windows readable from `x`, `out` writable for `16·N`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn sums<const N: usize>(
        x: *const f32,
        step: usize,
        window: &[usize],
        out: *mut f32,
    ) {
        let mut acc = [[_mm256_setzero_pd(); 4]; N];
        for &off in window {
            for (n, acc) in acc.iter_mut().enumerate() {
                // SAFETY: the taps are inside block `n`'s plane.
                let (a, b) = unsafe {
                    let p = x.add(n * step + off);
                    (load(p), load(p.add(8)))
                };
                let halves = [
                    _mm256_castps256_ps128(a),
                    _mm256_extractf128_ps::<1>(a),
                    _mm256_castps256_ps128(b),
                    _mm256_extractf128_ps::<1>(b),
                ];
                for (s, h) in acc.iter_mut().zip(halves) {
                    *s = _mm256_add_pd(*s, _mm256_cvtps_pd(h));
                }
            }
        }
        for (n, acc) in acc.iter().enumerate() {
            for (q, s) in acc.iter().enumerate() {
                // SAFETY: block `n`'s output pixel.
                unsafe { _mm_storeu_ps(out.add(16 * n + 4 * q), _mm256_cvtpd_ps(*s)) };
            }
        }
    }

    /// The sum of 8 outputs' taps, in f64 in tap order.
    ///
    /// # Safety
    /// AVX2 available; the taps readable from `x`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn sum(x: *const f32, taps: &[usize]) -> __m256 {
        let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        for &off in taps {
            // SAFETY: the taps are inside the copy.
            let v = unsafe { load(x.add(off)) };
            lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
            hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)));
        }
        let (lo, hi) = (_mm256_cvtpd_ps(lo), _mm256_cvtpd_ps(hi));
        _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(lo), hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_width_matches_the_definition_with_nans_and_zeros() {
        let mut next = crate::routines::lcg(3);
        let mut rnd = move || next() >> 33;
        // (h, w, window, stride, dilation, padding low): strides 1, 2 and 3, padding more
        // than the window reaches (outputs with no tap inside), rows shorter than a vector.
        let cases = [
            (64, 64, (3, 3), (2, 2), (1, 1), (1, 1)),
            (20, 37, (2, 2), (2, 2), (1, 1), (0, 0)),
            (9, 40, (3, 5), (1, 1), (2, 1), (2, 2)),
            (7, 7, (3, 3), (3, 3), (1, 1), (1, 1)),
            (5, 50, (1, 4), (1, 2), (1, 1), (0, 3)),
            (4, 20, (2, 2), (1, 1), (1, 1), (3, 3)),
            // Rows narrower than a vector (13, 6 and 3 outputs), stride-2 phases of odd
            // widths with odd padding, a stride of 3.
            (13, 13, (3, 3), (1, 1), (1, 1), (1, 1)),
            (6, 6, (3, 3), (1, 1), (1, 1), (1, 1)),
            (27, 27, (3, 3), (2, 2), (1, 1), (0, 0)),
            (11, 45, (3, 3), (2, 2), (1, 1), (1, 1)),
            (9, 9, (3, 3), (3, 3), (1, 1), (2, 2)),
        ];
        for (h, w, (kh, kw), (sh, sw), (dh, dw), (ph, pw)) in cases {
            let oh = (h + 2 * ph - (kh - 1) * dh - 1) / sh + 1;
            let ow = (w + 2 * pw - (kw - 1) * dw - 1) / sw + 1;
            let g = Geometry::of([h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw]);
            // Small integers, zeros of both signs and the odd NaN.
            let x: Vec<f32> = (0..h * w)
                .map(|_| match rnd() % 40 {
                    0 => f32::NAN,
                    1..=4 => -0.0,
                    5..=8 => 0.0,
                    r => r as f32 - 20.0,
                })
                .collect();
            for kind in [Kind::Max, Kind::Min, Kind::Sum] {
                let min = kind == Kind::Min;
                let mut want = vec![0f32; (oh * ow) as usize];
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = if min {
                            f32::INFINITY
                        } else {
                            f32::NEG_INFINITY
                        };
                        let mut sum = 0f64;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (iy, ix) = (oy * sh + ky * dh - ph, ox * sw + kx * dw - pw);
                                if iy >= 0 && iy < h && ix >= 0 && ix < w {
                                    let v = x[(iy * w + ix) as usize];
                                    acc = if min {
                                        super::super::rows::minimum(acc, v)
                                    } else {
                                        super::super::rows::maximum(acc, v)
                                    };
                                    sum += f64::from(v);
                                }
                            }
                        }
                        want[(oy * ow + ox) as usize] =
                            if kind == Kind::Sum { sum as f32 } else { acc };
                    }
                }
                for lanes in [1, 8, 16].into_iter().filter(|&n| n <= lanes()) {
                    let mut out = vec![1.5f32; (oh * ow) as usize];
                    // SAFETY: buffers sized for the geometry; `lanes` run on this CPU.
                    unsafe { plane(x.as_ptr(), out.as_mut_ptr(), &g, kind, lanes) };
                    for (i, (o, r)) in out.iter().zip(&want).enumerate() {
                        assert!(
                            o.to_bits() == r.to_bits() || (o.is_nan() && r.is_nan()),
                            "{g:?} {kind:?} lanes={lanes} at {i}: {o} vs {r}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn blocked_planes_match_plane_pools_lane_by_lane() {
        let mut next = crate::routines::lcg(7);
        let mut rnd = move || next() >> 33;
        let cases = [
            (16, 16, (3, 3), (2, 2), (1, 1), (1, 1)),
            (9, 13, (3, 2), (1, 2), (2, 1), (2, 0)),
            (7, 7, (7, 7), (1, 1), (1, 1), (0, 0)),
            (5, 6, (2, 2), (2, 2), (1, 1), (3, 3)),
        ];
        for (h, w, (kh, kw), (sh, sw), (dh, dw), (ph, pw)) in cases {
            let oh = (h + 2 * ph - (kh - 1) * dh - 1) / sh + 1;
            let ow = (w + 2 * pw - (kw - 1) * dw - 1) / sw + 1;
            let x: Vec<f32> = (0..h * w * 16)
                .map(|_| match rnd() % 40 {
                    0 => f32::NAN,
                    1..=4 => -0.0,
                    5..=8 => 0.0,
                    r => r as f32 - 20.0,
                })
                .collect();
            // Every ISA this CPU runs, each against the plane routine.
            let mut isas = vec![Isa::Scalar];
            if crate::avx2_fma() {
                isas.push(Isa::Avx2);
            }
            if crate::avx512() {
                isas.push(Isa::Avx512);
            }
            for (kind, isa) in (0..3).flat_map(|k| isas.iter().map(move |&i| (k, i))) {
                let mut got = vec![1.5f32; (oh * ow * 16) as usize];
                let g = [h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw];
                // SAFETY: sizes as documented; the CPU runs `isa`.
                unsafe { nchwc(x.as_ptr(), got.as_mut_ptr(), g, kind, 1, isa) };
                for lane in 0..16 {
                    let plane: Vec<f32> = x.iter().skip(lane).step_by(16).copied().collect();
                    let mut want = vec![0f32; (oh * ow) as usize];
                    // SAFETY: sizes as documented.
                    unsafe {
                        kiln_pool2d_plane(
                            plane.as_ptr(),
                            want.as_mut_ptr(),
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
                            kind,
                        )
                    };
                    for (p, want) in want.iter().enumerate() {
                        let got = got[p * 16 + lane];
                        assert!(
                            got.to_bits() == want.to_bits() || got.is_nan() && want.is_nan(),
                            "{isa:?} kind {kind} {h}x{w} lane {lane} output {p}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// A call of several blocks gives each block's pooling as a call of its own, bit for bit:
    /// global windows (whose blocks' sums run side by side) with 1 to 6 blocks, and windows
    /// of several outputs.
    #[test]
    fn calls_of_several_blocks_pool_each_block() {
        let mut next = crate::routines::lcg(11);
        let mut rnd = move || next() >> 33;
        // (h, w, window, padding): whole planes, a window inside a larger plane, windows with
        // padding (one output), several outputs.
        let cases = [
            (7, 7, (7, 7), (0, 0)),
            (14, 14, (14, 14), (0, 0)),
            (9, 6, (5, 4), (0, 0)),
            (3, 3, (5, 5), (1, 1)),
            (8, 8, (3, 3), (1, 1)),
        ];
        let mut isas = vec![Isa::Scalar];
        if crate::avx2_fma() {
            isas.push(Isa::Avx2);
        }
        if crate::avx512() {
            isas.push(Isa::Avx512);
        }
        for (h, w, (kh, kw), (ph, pw)) in cases {
            let oh = (h + 2 * ph - kh) / 2 + 1;
            let ow = (w + 2 * pw - kw) / 2 + 1;
            let g = [h, w, oh, ow, kh, kw, 2, 2, 1, 1, ph, pw];
            let (ins, outs) = ((h * w * 16) as usize, (oh * ow * 16) as usize);
            for nb in 1..=6usize {
                // Values of very different sizes, so that the order of the sums shows.
                let x: Vec<f32> = (0..nb * ins)
                    .map(|_| match rnd() % 50 {
                        0 => f32::NAN,
                        1..=4 => -0.0,
                        r => (r as f32 - 25.0) * 10f32.powi((rnd() % 12) as i32 - 6),
                    })
                    .collect();
                for (kind, &isa) in (0..3).flat_map(|k| isas.iter().map(move |i| (k, i))) {
                    let mut got = vec![1.5f32; nb * outs];
                    // SAFETY: nb blocks in and out; the CPU runs `isa`.
                    unsafe { nchwc(x.as_ptr(), got.as_mut_ptr(), g, kind, nb as i64, isa) };
                    for b in 0..nb {
                        let mut want = vec![2.5f32; outs];
                        // SAFETY: block b alone.
                        unsafe { nchwc(x[b * ins..].as_ptr(), want.as_mut_ptr(), g, kind, 1, isa) };
                        for (i, (a, e)) in
                            got[b * outs..(b + 1) * outs].iter().zip(&want).enumerate()
                        {
                            assert!(
                                a.to_bits() == e.to_bits() || a.is_nan() && e.is_nan(),
                                "{isa:?} kind {kind} {h}x{w} nb {nb} block {b} at {i}: {a} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }
}
