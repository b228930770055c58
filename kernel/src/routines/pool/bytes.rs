//! Max and min pooling of one plane of bytes, for the `pool2d_u8` and `pool2d_i8` routines:
//! a quantized image's pools, which ONNX (and onnxruntime's QOperator models) take on the
//! quantized values themselves. Bytes compare as ordered unsigned keys (an i8 byte with its
//! sign bit flipped); a window's extreme is taken by rows then by columns (separable, exact
//! in any order), each step over runs of consecutive bytes that the compiler vectorizes, 16
//! or 32 an instruction.

use super::super::conv::Geometry;
use super::super::{Role, Routine};

/// `out[oy·ow + ox]` = the maximum (`kind` 0) or minimum (1) of `x[iy·w + ix]` over the taps
/// inside the plane (as [`super::kiln_pool2d_plane`]), or the type's least (greatest for the
/// minimum) where no tap is: u8 bytes with `FLIP` 0 (`kiln_pool2d_u8`: 0 and 255), i8 with
/// 0x80 (`kiln_pool2d_i8`: −128 and 127; i8 and u8 have one layout).
///
/// # Safety
/// `x` must be readable for `h·w` bytes, `out` writable for `oh·ow` and not overlapping it;
/// every extent nonnegative and strides and dilations positive.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_pool2d_bytes<const FLIP: u8>(
    x: *const u8,
    out: *mut u8,
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
    // SAFETY: forwarded.
    unsafe {
        match kind {
            1 => extremes::<true, FLIP>(x, out, &g),
            _ => extremes::<false, FLIP>(x, out, &g),
        }
    }
}

thread_local! {
    /// Each thread's row buffers, kept between calls.
    static ROWS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One plane, its choices constants of the code (so that its loops vectorize): bytes XORed
/// with `FLIP` (0x80 for i8) are ordered as unsigned keys. A window's extreme is the extreme
/// of its rows' extremes, so each output row first takes its window rows' extreme column by
/// column (one run of bytes a tap row), laid out padded with the identity; then each padded
/// column the extreme of its `kw` columns to the right (runs again); then every `sw`-th of
/// those is an output.
///
/// # Safety
/// As [`kiln_pool2d_bytes`].
unsafe fn extremes<const MIN: bool, const FLIP: u8>(x: *const u8, out: *mut u8, g: &Geometry) {
    let (min, flip) = (MIN, FLIP);
    if g.oh <= 0 || g.ow <= 0 {
        return;
    }
    let [h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw] = [
        g.h, g.w, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.ph, g.pw,
    ]
    .map(|v| v.max(0) as usize);
    let (sh, sw) = (sh.max(1), sw.max(1));
    // The padded columns the windows read, and the window starts' span.
    let span = (ow - 1) * sw + 1;
    let cols = span + kw.saturating_sub(1) * dw;
    let fill = if min { u8::MAX } else { 0 };
    #[inline(always)]
    fn pick<const MIN: bool>(a: u8, b: u8) -> u8 {
        if MIN {
            a.min(b)
        } else {
            a.max(b)
        }
    }
    // Stride 2 of undilated windows takes each output's columns as even bytes (below): v
    // readable 32 bytes past the last group of 16 windows' last tap.
    let pairs = cfg!(target_arch = "x86_64") && sw == 2 && dw == 1;
    let vlen = cols
        .max(w + pw)
        .max(if pairs { 2 * ow + kw + 32 } else { 0 });
    ROWS.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        // Every output row's window rows' extremes first, then the columns of them all: the
        // second pass reads bytes the first stored long before (a load straddling two
        // stores still in flight waits for both — reading each row right after writing it
        // cost more than the pool's own work).
        buf.resize(oh * vlen + span, fill);
        let (vs, hrow) = buf.split_at_mut(oh * vlen);
        for (oy, v) in vs.chunks_exact_mut(vlen).enumerate() {
            // The window rows' extreme, columns from −pw (the identity outside the plane).
            let inside = &mut v[pw..pw + w];
            for ky in 0..kh {
                let Some(iy) = (oy * sh + ky * dh).checked_sub(ph).filter(|&iy| iy < h) else {
                    continue;
                };
                // SAFETY: row iy is inside the plane.
                let src = unsafe { std::slice::from_raw_parts(x.add(iy * w), w) };
                for (d, &b) in inside.iter_mut().zip(src) {
                    *d = pick::<MIN>(*d, b ^ flip);
                }
            }
        }
        // SAFETY: `out` holds oh·ow bytes.
        let out = unsafe { std::slice::from_raw_parts_mut(out, oh * ow) };
        for (v, o) in vs.chunks_exact(vlen).zip(out.chunks_exact_mut(ow)) {
            #[cfg(target_arch = "x86_64")]
            if pairs {
                // SAFETY: v holds 2·ow + kw + 32 bytes.
                unsafe { stride2::<MIN>(v, kw, o, flip) };
                continue;
            }
            // Each window start's extreme over its kw columns.
            let hs = &mut hrow[..span];
            hs.copy_from_slice(&v[..span]);
            for kx in 1..kw {
                for (d, &b) in hs.iter_mut().zip(&v[kx * dw..kx * dw + span]) {
                    *d = pick::<MIN>(*d, b);
                }
            }
            for (ox, o) in o.iter_mut().enumerate() {
                *o = hs[ox * sw] ^ flip;
            }
        }
    });
}

/// Output row `o` of a stride-2 pool of undilated windows `kw` wide from its window rows'
/// extremes `v` (keys, padded, column 0 the first window's first): output `ox` is the
/// extreme of `v[2·ox + kx]` over `kx < kw`, 16 outputs a step as the even bytes of 32
/// from `2·ox + kx` (SSE2: masked to words and packed back, which keeps each even byte).
///
/// # Safety
/// `v` holds at least `2·o.len() + kw + 32` bytes.
#[cfg(target_arch = "x86_64")]
unsafe fn stride2<const MIN: bool>(v: &[u8], kw: usize, o: &mut [u8], flip: u8) {
    use std::arch::x86_64::*;
    let ow = o.len();
    debug_assert!(v.len() >= 2 * ow + kw + 32);
    // SAFETY: SSE2 is baseline on x86-64; every load is inside v (the caller's length:
    // the last group's 2·ox + kx + 32 ≤ 2·(ow − 1) + kw + 31).
    unsafe {
        let low = _mm_set1_epi16(0x00ff);
        let even = |at: usize| {
            let a = _mm_loadu_si128(v.as_ptr().add(at).cast());
            let b = _mm_loadu_si128(v.as_ptr().add(at + 16).cast());
            _mm_packus_epi16(_mm_and_si128(a, low), _mm_and_si128(b, low))
        };
        let flip = _mm_set1_epi8(flip as i8);
        for g in (0..ow).step_by(16) {
            let mut acc = even(2 * g);
            for kx in 1..kw {
                let e = even(2 * g + kx);
                acc = if MIN {
                    _mm_min_epu8(acc, e)
                } else {
                    _mm_max_epu8(acc, e)
                };
            }
            let acc = _mm_xor_si128(acc, flip);
            let n = (ow - g).min(16);
            if n == 16 {
                _mm_storeu_si128(o.as_mut_ptr().add(g).cast(), acc);
            } else {
                let mut t = [0u8; 16];
                _mm_storeu_si128(t.as_mut_ptr().cast(), acc);
                o[g..].copy_from_slice(&t[..n]);
            }
        }
    }
}

/// Calls host function `f` (either byte type's instance) with a call's operands and integers.
///
/// # Safety
/// As `f`'s, for these operands and integers.
unsafe fn call(f: BytePool, p: &[*mut u8], i: &[i64]) -> f64 {
    let g: [i64; 13] = std::array::from_fn(|k| i[k]);
    let [h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw, kind] = g;
    // SAFETY: forwarded.
    unsafe {
        f(
            p[0], p[1], h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw, kind,
        )
    };
    0.0
}

/// The host functions' type (bytes of either type).
type BytePool = unsafe extern "C" fn(
    *const u8,
    *mut u8,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
);

/// Max and min pooling of a u8 plane.
pub(in crate::routines) const POOL2D_U8: Routine = Routine {
    name: "pool2d_u8",
    symbol: "kiln_pool2d_u8",
    operands: &[
        ("x", Role::Read, ir::DType::U8),
        ("out", Role::Write, ir::DType::U8),
    ],
    replaces: None,
    in_place: false,
    ints: super::PLANE_INTS,
    scalars: &[],
    result: None,
    cost: |i| i[2] * i[3] * i[4] * i[5] / 16.0,
    extent: super::plane_extent,
    bounds: super::plane_bounds,
    address: || kiln_pool2d_bytes::<0> as *const u8,
    call: |p, i, _| unsafe { call(kiln_pool2d_bytes::<0>, p, i) },
    doc: "out[oy·ow + ox] = the maximum (kind = 0) or minimum (1) of x[iy·w + ix] over the \
          taps inside the plane (iy = oy·sh + ky·dh - ph, ix = ox·sw + kx·dw - pw), 0 (255) \
          where none is: one plane of a max or min pool (u8)",
};

/// Max and min pooling of an i8 plane.
pub(in crate::routines) const POOL2D_I8: Routine = Routine {
    name: "pool2d_i8",
    symbol: "kiln_pool2d_i8",
    operands: &[
        ("x", Role::Read, ir::DType::I8),
        ("out", Role::Write, ir::DType::I8),
    ],
    address: || kiln_pool2d_bytes::<0x80> as *const u8,
    call: |p, i, _| unsafe { call(kiln_pool2d_bytes::<0x80>, p, i) },
    doc: "out[oy·ow + ox] = the maximum (kind = 0) or minimum (1) of x[iy·w + ix] over the \
          taps inside the plane (iy = oy·sh + ky·dh - ph, ix = ox·sw + kx·dw - pw), -128 \
          (127) where none is: one plane of a max or min pool (i8)",
    ..POOL2D_U8
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: every tap inside the plane, in order.
    fn reference(x: &[u8], g: &Geometry, min: bool, signed: bool) -> Vec<u8> {
        let key = |v: u8| if signed { v ^ 0x80 } else { v };
        let mut out = Vec::new();
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut acc: Option<u8> = None;
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let iy = oy * g.sh + ky * g.dh - g.ph;
                        let ix = ox * g.sw + kx * g.dw - g.pw;
                        if (0..g.h).contains(&iy) && (0..g.w).contains(&ix) {
                            let v = key(x[(iy * g.w + ix) as usize]);
                            acc = Some(match acc {
                                None => v,
                                Some(a) if min => a.min(v),
                                Some(a) => a.max(v),
                            });
                        }
                    }
                }
                out.push(key(acc.unwrap_or(if min { 255 } else { 0 })));
            }
        }
        out
    }

    #[test]
    fn byte_pools_are_the_definition() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: i64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as i64
        };
        for case in 0..400 {
            let (h, w) = (1 + next(12), 1 + next(40));
            let (kh, kw) = (1 + next(4), 1 + next(4));
            let (sh, sw, dh, dw) = (1 + next(3), 1 + next(3), 1 + next(2), 1 + next(2));
            let (ph, pw) = (next(kh.min(3)), next(kw.min(3)));
            let oh = (h + 2 * ph - dh * (kh - 1) - 1).div_euclid(sh) + 1;
            let ow = (w + 2 * pw - dw * (kw - 1) - 1).div_euclid(sw) + 1;
            if oh <= 0 || ow <= 0 {
                continue;
            }
            let g = Geometry::of([h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw]);
            let x: Vec<u8> = (0..h * w).map(|_| next(256) as u8).collect();
            for kind in [0, 1] {
                for signed in [false, true] {
                    let mut out = vec![7u8; (oh * ow) as usize];
                    let args = [h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw, kind];
                    let r = if signed { &POOL2D_I8 } else { &POOL2D_U8 };
                    let p = [x.as_ptr() as *mut u8, out.as_mut_ptr()];
                    // SAFETY: a plane of h·w in, oh·ow out.
                    unsafe { (r.call)(&p, &args, &[]) };
                    let want = reference(&x, &g, kind == 1, signed);
                    assert_eq!(out, want, "case {case}: {g:?} kind {kind} signed {signed}");
                }
            }
        }
    }
}
