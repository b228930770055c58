//! Quantized 2-D convolutions (`qconv2d`, `qconv`'s kernel): one image's u8 pixels, less
//! their zero point, by i8 filters, summed exactly in i32 by the quantized product
//! ([`super::qgemm`]) over the image's patches. The image is first laid out channels-last
//! with a border of its zero point (so the padding adds nothing), each output pixel's patch
//! is then a few contiguous runs of channels (one a filter tap), and the product's rows are
//! the pixels, its columns the filters — the sums come out pixel-major and are stored
//! channel-major through the epilogue (per output channel), or, for a channel-blocked
//! result, stored in its blocks by the product itself. A 1×1 conv's patches are its pixels,
//! read in place.

use super::epilogue::Epilogue;
use super::qgemm::{self, Out};

/// The filters `w` (`o × c × kh × kw`) as the quantized product's packed B: K ordered tap by
/// tap, channels within a tap (`(ky·kw + kx)·c + ci`), as the patches are laid out.
pub fn pack_filters(w: &[i8], o: usize, c: usize, kh: usize, kw: usize) -> Option<Vec<i8>> {
    let taps = kh.checked_mul(kw)?;
    let k = c.checked_mul(taps)?;
    let w = w.get(..o.checked_mul(k)?)?;
    let mut b = vec![0i8; o * k];
    for f in 0..o {
        for ci in 0..c {
            for t in 0..taps {
                b[f * k + t * c + ci] = w[f * k + ci * taps + t];
            }
        }
    }
    // B[l, f] = b[f·k + l]: rows 1 apart, columns k.
    qgemm::pack_b(&b, 1, k as i64, k, o)
}

thread_local! {
    /// The padded channels-last image.
    static IMAGE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A part's patches and pixel-major sums.
    static PATCHES: std::cell::RefCell<(Vec<u8>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    /// A result converted to bytes after (`qconv2d_u8` off AMX).
    static STAGED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Filters packed per call (when they were not packed ahead of time).
    static FILTERS: std::cell::RefCell<Vec<i8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `c[f, oy, ox] = E(f32(Σ (x[ci, iy, ix] − za) · w[f, ci, ky, kx]))` over the window (iy =
/// oy·sh − ph + ky·dh, likewise ix; outside the image the term is 0), one image: `x` is
/// `ci × h × w` u8 (with `xb` 16, blocked: `⌈ci/16⌉ × h × w × 16`, channel `ci` in block
/// `ci/16`, lane `ci % 16`), `w` `o × ci × kh × kw` i8 (or `bp`, unless null, those filters
/// packed by [`pack_filters`]), `c` `o × oh × ow` (with `yb` 16, blocked: `⌈o/16⌉ × oh × ow ×
/// 16`, its padding lanes 0), E the epilogue of output channel `f` (its row; with `yb` 16, its
/// column of the pixel-major sums: no residual then).
///
/// # Safety
/// The operands hold what the sizes say; `c` does not overlap them; the epilogue's operands
/// as a conv's.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_qconv2d(
    x: *const u8,
    w: *const i8,
    bp: *const i8,
    za: *const u8,
    c: *mut f32,
    scale: *const f32,
    shift: *const f32,
    res: *const f32,
    scale2: *const f32,
    ci: i64,
    o: i64,
    h: i64,
    wd: i64,
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
    yb: i64,
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
    let g = [
        ci, o, h, wd, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw, xb, yb, act,
    ];
    let e = [
        lo, hi, pre_s, pre_z, pre_lo, pre_hi, pre_d, pre_at, post_s, post_z, post_lo, post_hi,
        post_d,
    ];
    // SAFETY: forwarded.
    unsafe {
        conv(
            x,
            (w, bp),
            za,
            Out::F32(c),
            [scale, shift, res, scale2],
            g,
            e,
        )
    }
}

/// [`kiln_qconv2d`] storing bytes (`qconv2d_u8`): `c[…] = u8(round(E(…)) + z)`, rounded to
/// even, `z` added in f32, truncated and saturated to 0..=255 (NaN 0) — a quantized conv's
/// result as its quantizer stores it, without the f32 result and a quantizing pass after.
/// AMX stores the bytes as the epilogue makes them; other instruction sets convert the f32
/// result, made in a buffer of this thread's.
///
/// # Safety
/// As [`kiln_qconv2d`], `c` holding as many bytes.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_qconv2d_u8(
    x: *const u8,
    w: *const i8,
    bp: *const i8,
    za: *const u8,
    c: *mut u8,
    scale: *const f32,
    shift: *const f32,
    res: *const f32,
    scale2: *const f32,
    ci: i64,
    o: i64,
    h: i64,
    wd: i64,
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
    yb: i64,
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
    z: f32,
) {
    let g = [
        ci, o, h, wd, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw, xb, yb, act,
    ];
    let e = [
        lo, hi, pre_s, pre_z, pre_lo, pre_hi, pre_d, pre_at, post_s, post_z, post_lo, post_hi,
        post_d,
    ];
    let amx = qgemm::isa() == qgemm::Isa::Amx;
    // SAFETY: forwarded.
    unsafe {
        bytes(
            x,
            (w, bp),
            za,
            (c, z),
            [scale, shift, res, scale2],
            g,
            e,
            amx,
        )
    }
}

/// The routine table's call of `qconv2d` or (`bytes`) `qconv2d_u8`: operands, integers and
/// scalars in the order the table lists them.
///
/// # Safety
/// As [`kiln_qconv2d`]'s (or [`kiln_qconv2d_u8`]'s) for those arguments.
pub(super) unsafe fn call(p: &[*mut u8], i: &[i64], s: &[f64], bytes: bool) -> f64 {
    let g: [i64; 17] = std::array::from_fn(|k| i[k]);
    let e: [f32; 13] = std::array::from_fn(|k| s[k] as f32);
    let ops = [p[5], p[6], p[7], p[8]].map(|q| q.cast_const().cast::<f32>());
    let (x, w, bp, za) = (
        p[0].cast_const(),
        p[1].cast_const(),
        p[2].cast_const(),
        p[3],
    );
    let (w, bp, za) = (w.cast::<i8>(), bp.cast::<i8>(), za.cast_const());
    // SAFETY: forwarded.
    unsafe {
        if bytes {
            let amx = qgemm::isa() == qgemm::Isa::Amx;
            self::bytes(x, (w, bp), za, (p[4], s[13] as f32), ops, g, e, amx);
        } else {
            conv(x, (w, bp), za, Out::F32(p[4].cast()), ops, g, e);
        }
    }
    0.0
}

/// [`kiln_qconv2d_u8`]: stored by AMX's code where `amx` (and the conv has terms and whole
/// blocks of a blocked result, whose stores write every lane); else the f32 result made in
/// this thread's buffer, then converted (a blocked result's padding lanes, 0 there, become
/// `u8(z)`, as a quantizer after the f32 conv makes them).
///
/// # Safety
/// As [`kiln_qconv2d_u8`]; AMX available where `amx`.
#[allow(clippy::too_many_arguments)]
unsafe fn bytes(
    x: *const u8,
    (w, bp): (*const i8, *const i8),
    za: *const u8,
    (c, z): (*mut u8, f32),
    ops: [*const f32; 4],
    g: [i64; 17],
    e: [f32; 13],
    amx: bool,
) {
    let [ci, o, oh, ow, kh, kw, yb] = [0, 1, 4, 5, 6, 7, 15].map(|i| g[i].max(0) as usize);
    if amx && ci * kh * kw > 0 && (yb != 16 || o % 16 == 0) {
        // SAFETY: forwarded.
        unsafe { conv(x, (w, bp), za, Out::Bytes(c, z), ops, g, e) };
        return;
    }
    let len = if yb == 16 {
        o.div_ceil(16) * 16 * oh * ow
    } else {
        o * oh * ow
    };
    STAGED.with(|t| {
        let t = &mut *t.borrow_mut();
        if t.len() < len {
            t.resize(len, 0.0);
        }
        // SAFETY: forwarded, into this thread's buffer of at least the result's length (the
        // conv writes every element of it, padding lanes too); c holds len bytes. The bytes
        // are `row_quantize`'s of the f32 result with a divisor of 1 (its vector code).
        unsafe {
            conv(x, (w, bp), za, Out::F32(t.as_mut_ptr()), ops, g, e);
            super::rows::row_quantize(t.as_ptr(), None, c, len as i64, (1.0, z));
        }
    });
}

/// [`kiln_qconv2d`] into `out`.
///
/// # Safety
/// As [`kiln_qconv2d`], `out` holding the result's elements.
unsafe fn conv(
    x: *const u8,
    (w, bp): (*const i8, *const i8),
    za: *const u8,
    out: Out,
    [scale, shift, res, scale2]: [*const f32; 4],
    g: [i64; 17],
    e: [f32; 13],
) {
    let [ci, o, h, wd, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw, xb, yb, act] = g;
    let [lo, hi, pre_s, pre_z, pre_lo, pre_hi, pre_d, pre_at, post_s, post_z, post_lo, post_hi, post_d] =
        e;
    let g = [ci, o, h, wd, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw];
    let [ci, o, h, wd, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw] = g.map(|v| v.max(0) as usize);
    // Bytes only from AMX's stores ([`kiln_qconv2d_u8`] stages the rest): the f32 paths
    // below never see them.
    let c = match out {
        Out::F32(c) => c,
        Out::Bytes(..) => std::ptr::null_mut(),
    };
    let blocked_out = yb == 16;
    let epi = Epilogue::new(
        (
            scale,
            shift,
            if blocked_out { std::ptr::null() } else { res },
            scale2,
        ),
        (lo, hi),
        i64::from(blocked_out),
        act,
        [
            pre_s, pre_z, pre_lo, pre_hi, pre_d, pre_at, post_s, post_z, post_lo, post_hi, post_d,
        ],
    );
    // SAFETY: one byte.
    let za = unsafe { *za };
    let (p, k) = (oh * ow, ci * kh * kw);
    if p == 0 || o == 0 {
        return;
    }
    if k == 0 || blocked_out && o % 16 != 0 {
        // (A blocked result's padding lanes too: the stores write every real lane.)
        let len = if blocked_out {
            o.div_ceil(16) * 16 * p
        } else {
            o * p
        };
        // SAFETY: c holds o·p elements, or ⌈o/16⌉·16·p blocked.
        unsafe { std::ptr::write_bytes(c, 0, len) };
    }
    if k == 0 {
        if blocked_out {
            let mut row = vec![0f32; o];
            // SAFETY: one row of o, per column; c holds ⌈o/16⌉·16·p elements.
            unsafe {
                epi.block(row.as_mut_ptr(), o, 1, o);
                for q in 0..p {
                    store_blocked(&row, o, c, p, q);
                }
            }
        } else {
            // SAFETY: c holds o·p elements.
            unsafe { epi.block(c, p, o, p) };
        }
        return;
    }
    let filters = if bp.is_null() {
        // SAFETY: w holds o·k filter values.
        let w = unsafe { std::slice::from_raw_parts(w, o * k) };
        let Some(packed) = pack_filters(w, o, ci, kh, kw) else {
            return;
        };
        FILTERS.with(|f| *f.borrow_mut() = packed);
        None
    } else {
        Some(bp)
    };
    // A 1×1, stride-1 conv without padding off AMX: its patches are the pixels' channels,
    // so the product reads them in place — from a blocked image of one block as it is
    // (16 bytes a pixel), else from the channels-last copy (no border) — with no patch
    // matrix (a depthwise-separable CNN's every other conv).
    let pointwise = kh == 1
        && kw == 1
        && sh == 1
        && sw == 1
        && ph == 0
        && pw == 0
        && oh == h
        && ow == wd
        && qgemm::isa() != qgemm::Isa::Amx;
    let as_is = pointwise && xb == 16 && ci <= 16;
    IMAGE.with(|img| {
        let img = &mut *img.borrow_mut();
        // The image channels-last, with a border of the zero point wide enough for every
        // window (ph, pw before; what the last windows reach after).
        let hp = ((oh - 1) * sh + (kh - 1) * dh + 1).max(h + ph);
        let wp = ((ow - 1) * sw + (kw - 1) * dw + 1).max(wd + pw);
        // 64-byte aligned, and 32 pixels over: what tiles of windows read (`Windows`).
        let img = qgemm::aligned(img, hp * wp * ci + 32 * ci + 64);
        // Pixels split over the threads from 2M multiply-adds, each part its own patches,
        // product and columns of the result — and its rows of the image's copy first.
        let t = if p * o * k >= 1 << 21 {
            crate::threads::helpers() + 1
        } else {
            1
        };
        let rows_of = |part: usize, parts: usize| (hp * part / parts, hp * (part + 1) / parts);
        let (at, len, x) = (img.as_mut_ptr() as usize, img.len(), x as usize);
        let layout_parts = if as_is { 0 } else { t.min(hp).max(1) };
        crate::threads::parallel_for(layout_parts, |part| {
            let (y0, y1) = rows_of(part, layout_parts);
            let from = y0 * wp * ci;
            let end = if part + 1 == layout_parts {
                len
            } else {
                y1 * wp * ci
            };
            // SAFETY: this part's own rows of the copy (the last part's with the tail).
            let rows =
                unsafe { std::slice::from_raw_parts_mut((at as *mut u8).add(from), end - from) };
            // (Without a border every pixel is written below; nothing reads the tail.)
            if !pointwise {
                rows.fill(za);
            }
            let x = x as *const u8;
            for y in y0.saturating_sub(ph).min(h)..y1.saturating_sub(ph).min(h) {
                let dst = &mut rows[((y + ph) * wp + pw) * ci - from..][..wd * ci];
                if xb == 16 {
                    // Blocked: each pixel's channels are runs of 16 already, one a block.
                    let blocks = ci.div_ceil(16);
                    for cb in 0..blocks {
                        let lanes = (ci - cb * 16).min(16);
                        // SAFETY: x holds blocks·h·w·16 bytes.
                        let row = unsafe {
                            std::slice::from_raw_parts(x.add((cb * h + y) * wd * 16), wd * 16)
                        };
                        for (px, run) in row.chunks_exact(16).enumerate() {
                            dst[px * ci + cb * 16..][..lanes].copy_from_slice(&run[..lanes]);
                        }
                    }
                } else {
                    // SAFETY: x holds ci·h·w bytes.
                    let planes = unsafe { std::slice::from_raw_parts(x, ci * h * wd) };
                    // Row y of every plane transposed (channels × pixels); the row holds wd
                    // pixels of ci channels.
                    unsafe {
                        transpose_bytes(planes, y * wd, h * wd, dst.as_mut_ptr(), ci, ci, wd)
                    };
                }
            }
        });
        let b = match filters {
            Some(b) => b,
            None => FILTERS.with(|f| f.borrow().as_ptr()),
        };
        let windows = windows(img.as_ptr(), (ci, kh, kw), (sh, sw, dh, dw), (wp, ow));
        // Whole rows of outputs a part where the windows are read in place.
        let parts = match windows {
            Some(_) => t.min(oh),
            None => t.min(p.div_ceil(16)),
        }
        .max(1);
        let (img, c, b) = (&*img, c as usize, b as usize);
        crate::threads::parallel_for(parts, |part| {
            #[cfg(target_arch = "x86_64")]
            if let Some(w) = &windows {
                let rows = (oh * part / parts, oh * (part + 1) / parts);
                let b = b as *const i8;
                // SAFETY: AMX (`windows`); the filters packed; this part writes its rows.
                unsafe { w.run(b, i32::from(za), o, rows, (out, p, blocked_out), &epi) };
                return;
            }
            let (p_lo, p_hi) = (p * part / parts, p * (part + 1) / parts);
            PATCHES.with(|bufs| {
                let (patches, sums) = &mut *bufs.borrow_mut();
                // On AMX the patches are windows in place for `Windows` (rows of whole
                // 64-byte steps, their padding 0, 64-byte aligned, 32 rows at a time).
                let amx = qgemm::isa() == qgemm::Isa::Amx;
                let ld = if amx {
                    k.next_multiple_of(qgemm::KB)
                } else {
                    k
                };
                // Elsewhere the part goes by chunks of pixels whose sums (16K of them) stay in
                // cache through the product, the transpose and the epilogue: a 64×64 image's
                // sums (1 MiB at once) went to memory and back twice.
                let chunk = if amx {
                    p_hi - p_lo
                } else {
                    (16384 / o).next_multiple_of(32).max(32)
                };
                for p0 in (p_lo..p_hi).step_by(chunk.max(1)) {
                    let p1 = (p0 + chunk).min(p_hi);
                    let n = p1 - p0;
                    // The product's rows: pixels p0..p1 in place, or their patches.
                    let (rows, stride) = if as_is {
                        ((x as *const u8).wrapping_add(p0 * 16), 16)
                    } else if pointwise {
                        (img[p0 * ci..].as_ptr(), ci)
                    } else {
                        // Every element of the patches is written before it is read.
                        let patches = qgemm::aligned(patches, n.next_multiple_of(32) * ld);
                        // Undilated rows of taps are one run of the image's channels-last row.
                        let (run, runs) = if dw == 1 { (kw * ci, 1) } else { (ci, kw) };
                        for q in p0..p1 {
                            let (oy, ox) = (q / ow, q % ow);
                            let dst = &mut patches[(q - p0) * ld..][..ld];
                            for ky in 0..kh {
                                for kx in 0..runs {
                                    let at = ((oy * sh + ky * dh) * wp + ox * sw + kx * dw) * ci;
                                    let t = ky * kw + kx;
                                    qgemm::copy(&img[at..][..run], &mut dst[t * ci..][..run]);
                                }
                            }
                            dst[k..].fill(0);
                        }
                        (patches.as_ptr(), ld)
                    };
                    #[cfg(target_arch = "x86_64")]
                    if amx {
                        let w = qgemm::Windows {
                            img: rows,
                            ci: ld,
                            wp: n,
                            ow: n,
                            steps: (0..ld / qgemm::KB).map(|s| s * qgemm::KB).collect(),
                            first: p0,
                        };
                        let b = b as *const i8;
                        // SAFETY: AMX; the patches are windows as `Windows` reads them; the
                        // filters packed; this part writes pixels p0..p1.
                        unsafe { w.run(b, i32::from(za), o, (0, 1), (out, p, blocked_out), &epi) };
                        return;
                    }
                    let (c, b, za) = (c as *mut f32, b as *const i8, i32::from(za));
                    if blocked_out {
                        // SAFETY: the rows are n of k bytes, `stride` apart; B holds the
                        // packed filters; this part writes pixels p0..p1 of every block of
                        // c (16 lanes a pixel, blocks p pixels apart).
                        unsafe {
                            let c = (c.add(p0 * 16), 16, p * 16);
                            qgemm::product(qgemm::isa(), rows, stride, b, za, c, n, o, k, &epi);
                        }
                        continue;
                    }
                    if sums.len() < n * o {
                        sums.resize(n * o, 0.0);
                    }
                    // SAFETY: the rows are n of k bytes, `stride` apart; B holds the packed
                    // filters; sums n × o; this part writes columns p0..p1 of c's o rows of p.
                    unsafe {
                        let sums_c = (sums.as_mut_ptr(), o, qgemm::NR);
                        let none = &Epilogue::NONE;
                        qgemm::product(qgemm::isa(), rows, stride, b, za, sums_c, n, o, k, none);
                        planes(sums, o, n, (c, p, p0), &epi);
                    }
                }
            });
        });
    });
}

/// Pixel-major sums (`n` pixels of `o` channels) into planes of `p` pixels from pixel `p0`
/// of `c`, through the epilogue (per channel: its rows): on AVX2, whole 8×8 tiles are
/// transposed in registers and each channel's vector goes through the epilogue as it is
/// stored, one pass (the transpose and the epilogue's own pass over the planes were 18% of
/// resnet_block_qop's time); the edges, and other CPUs, transpose then run the epilogue.
///
/// # Safety
/// `c` holds `o` planes of `p`, pixels `p0..p0 + n` this call's alone; the epilogue's
/// operands (and residual, laid out as `c`) hold them.
unsafe fn planes(
    sums: &[f32],
    o: usize,
    n: usize,
    (c, p, p0): (*mut f32, usize, usize),
    epi: &Epilogue,
) {
    let (n8, o8) = (n / 8 * 8, o / 8 * 8);
    #[cfg(target_arch = "x86_64")]
    if crate::avx2_fma() && n8 > 0 && o8 > 0 {
        // SAFETY: forwarded; the CPU has AVX2 and FMA.
        unsafe {
            planes_avx2(sums, o, (n8, o8), (c, p, p0), epi);
            // The edges: the last pixels of every channel, the last channels of the rest.
            transpose(sums, n8 * o, o, c.add(p0 + n8), p, n - n8, o);
            epi.block_at((0, p0 + n8, p0 + n8), c.add(p0 + n8), p, o, n - n8);
            let edge = c.add(o8 * p + p0);
            transpose(sums, o8, o, edge, p, n8, o - o8);
            epi.block_at((o8, p0, o8 * p + p0), edge, p, o - o8, n8);
        }
        return;
    }
    // SAFETY: forwarded.
    unsafe {
        transpose(sums, 0, o, c.add(p0), p, n, o);
        epi.block_at((0, p0, p0), c.add(p0), p, o, n);
    }
}

/// [`planes`]' whole tiles: pixels `0..n8` by channels `0..o8`.
///
/// # Safety
/// As [`planes`]; AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn planes_avx2(
    sums: &[f32],
    o: usize,
    (n8, o8): (usize, usize),
    (c, p, p0): (*mut f32, usize, usize),
    epi: &Epilogue,
) {
    use super::epilogue::avx2 as vec;
    use std::arch::x86_64::*;
    assert!(n8 == 0 || (n8 - 1) * o + o8 <= sums.len());
    let all = _mm256_set1_epi32(-1);
    for j0 in (0..o8).step_by(8) {
        for i0 in (0..n8).step_by(8) {
            // SAFETY: rows i0..i0 + 8 hold channels j0..j0 + 8 (asserted above); the planes'
            // pixels and the epilogue's operands are the caller's.
            unsafe {
                let r: [__m256; 8] =
                    std::array::from_fn(|i| _mm256_loadu_ps(sums.as_ptr().add((i0 + i) * o + j0)));
                let t = transpose8(r);
                for (j, &v) in t.iter().enumerate() {
                    let at = (j0 + j) * p + p0 + i0;
                    let v = if epi.is_none() {
                        v
                    } else {
                        let st = vec::coefs(epi, j0 + j, p0 + i0, all);
                        vec::apply(epi, v, st, epi.res.wrapping_add(at), all)
                    };
                    _mm256_storeu_ps(c.add(at), v);
                }
            }
        }
    }
}

/// Eight vectors of eight as their transpose: pairs interleaved, then quads, then halves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let a0 = _mm256_unpacklo_ps(r[0], r[1]);
    let a1 = _mm256_unpackhi_ps(r[0], r[1]);
    let a2 = _mm256_unpacklo_ps(r[2], r[3]);
    let a3 = _mm256_unpackhi_ps(r[2], r[3]);
    let a4 = _mm256_unpacklo_ps(r[4], r[5]);
    let a5 = _mm256_unpackhi_ps(r[4], r[5]);
    let a6 = _mm256_unpacklo_ps(r[6], r[7]);
    let a7 = _mm256_unpackhi_ps(r[6], r[7]);
    let b0 = _mm256_shuffle_ps::<0x44>(a0, a2);
    let b1 = _mm256_shuffle_ps::<0xEE>(a0, a2);
    let b2 = _mm256_shuffle_ps::<0x44>(a1, a3);
    let b3 = _mm256_shuffle_ps::<0xEE>(a1, a3);
    let b4 = _mm256_shuffle_ps::<0x44>(a4, a6);
    let b5 = _mm256_shuffle_ps::<0xEE>(a4, a6);
    let b6 = _mm256_shuffle_ps::<0x44>(a5, a7);
    let b7 = _mm256_shuffle_ps::<0xEE>(a5, a7);
    [
        _mm256_permute2f128_ps::<0x20>(b0, b4),
        _mm256_permute2f128_ps::<0x20>(b1, b5),
        _mm256_permute2f128_ps::<0x20>(b2, b6),
        _mm256_permute2f128_ps::<0x20>(b3, b7),
        _mm256_permute2f128_ps::<0x31>(b0, b4),
        _mm256_permute2f128_ps::<0x31>(b1, b5),
        _mm256_permute2f128_ps::<0x31>(b2, b6),
        _mm256_permute2f128_ps::<0x31>(b3, b7),
    ]
}

/// The windows of a stride-1 conv read in place from its padded channels-last image `img`
/// (rows `wp` pixels), where AMX runs the product and k's 64-byte steps each lie in one row
/// of taps (undilated, `kw·ci` a multiple of 64) or one tap (`ci` a multiple of 64).
fn windows(
    img: *const u8,
    (ci, kh, kw): (usize, usize, usize),
    (sh, sw, dh, dw): (usize, usize, usize, usize),
    (wp, ow): (usize, usize),
) -> Option<qgemm::Windows> {
    let k = ci * kh * kw;
    let row = kw * ci;
    let fits = (dw == 1 && row % 64 == 0) || ci % 64 == 0;
    if qgemm::isa() != qgemm::Isa::Amx || sh != 1 || sw != 1 || k == 0 || k % 64 != 0 || !fits {
        return None;
    }
    let steps = (0..k / 64)
        .map(|s| {
            let (ky, at) = (64 * s / row, 64 * s % row);
            let at = if dw == 1 {
                at
            } else {
                (at / ci) * dw * ci + at % ci
            };
            ky * dh * wp * ci + at
        })
        .collect();
    Some(qgemm::Windows {
        img,
        ci,
        wp,
        ow,
        steps,
        first: 0,
    })
}

/// Pixel `q`'s results (`o` channels) into blocked `c` (`p` pixels a block of 16 channels):
/// runs of 16 lanes, the last block's padding left alone.
///
/// # Safety
/// `c` holds `⌈o/16⌉·16·p` elements; no one else writes pixel `q`'s.
unsafe fn store_blocked(row: &[f32], o: usize, c: *mut f32, p: usize, q: usize) {
    for ob in 0..o.div_ceil(16) {
        let lanes = (o - ob * 16).min(16);
        // SAFETY: the run is inside c (the caller's).
        unsafe {
            std::ptr::copy_nonoverlapping(row[ob * 16..].as_ptr(), c.add((ob * p + q) * 16), lanes)
        };
    }
}

/// [`transpose`] of bytes: whole 16×16 tiles in SSE2 registers (x86-64's baseline), each
/// byte interleaved with the byte eight rows down four times over (which turns row `r`,
/// column `c` into row `c`, column `r`); the edges (and matrices of fewer than 16 rows, a
/// first conv's three channels) by [`transpose`].
///
/// # Safety
/// As [`transpose`].
unsafe fn transpose_bytes(
    src: &[u8],
    at: usize,
    stride: usize,
    dst: *mut u8,
    ld: usize,
    rows: usize,
    cols: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        const T: usize = 16;
        let (r16, c16) = (rows / T * T, cols / T * T);
        if r16 > 0 && c16 > 0 {
            assert!(at + (r16 - 1) * stride + c16 <= src.len());
        }
        let s = src.as_ptr();
        for i0 in (0..r16).step_by(T) {
            for j0 in (0..c16).step_by(T) {
                // SAFETY: rows i0.. and columns j0.. of this whole tile are inside the source
                // (asserted above) and the destination (the caller's); SSE2 is x86-64's.
                unsafe {
                    let mut a: [__m128i; T] = std::array::from_fn(|i| {
                        _mm_loadu_si128(s.add(at + (i0 + i) * stride + j0).cast())
                    });
                    for _ in 0..4 {
                        a = std::array::from_fn(|x| {
                            let (p, q) = (a[x / 2], a[x / 2 + 8]);
                            if x % 2 == 0 {
                                _mm_unpacklo_epi8(p, q)
                            } else {
                                _mm_unpackhi_epi8(p, q)
                            }
                        });
                    }
                    for (j, v) in a.iter().enumerate() {
                        _mm_storeu_si128(dst.add((j0 + j) * ld + i0).cast(), *v);
                    }
                }
            }
        }
        // SAFETY: the rest — columns past the whole tiles, then rows past them — inside both
        // as above.
        unsafe {
            if c16 < cols {
                transpose(
                    src,
                    at + c16,
                    stride,
                    dst.add(c16 * ld),
                    ld,
                    rows,
                    cols - c16,
                );
            }
            if r16 < rows && c16 > 0 {
                transpose(
                    src,
                    at + r16 * stride,
                    stride,
                    dst.add(r16),
                    ld,
                    rows - r16,
                    c16,
                );
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded.
    unsafe {
        transpose(src, at, stride, dst, ld, rows, cols)
    }
}

/// `dst[j·ld + i] = src[at + i·stride + j]` for `i < rows`, `j < cols`: a strided matrix
/// transposed, in 8×8 tiles of eight runs of eight in and out. `dst` is a pointer, not a
/// slice: the threads' parts of one result write disjoint columns of the same rows.
///
/// # Safety
/// `dst` is valid for writes at every `j·ld + i`, and no one else reads or writes those.
#[allow(clippy::needless_range_loop)] // a tile's column j is read across its rows
unsafe fn transpose<T: Copy>(
    src: &[T],
    at: usize,
    stride: usize,
    dst: *mut T,
    ld: usize,
    rows: usize,
    cols: usize,
) {
    const T8: usize = 8;
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(at + (rows - 1) * stride + cols <= src.len());
    let (s, d) = (src.as_ptr(), dst);
    for i0 in (0..rows).step_by(T8) {
        for j0 in (0..cols).step_by(T8) {
            // SAFETY: i < rows and j < cols stay inside the source (asserted above) and
            // the destination (the caller's).
            unsafe {
                if i0 + T8 <= rows && j0 + T8 <= cols {
                    let tile: [[T; T8]; T8] = std::array::from_fn(|i| {
                        std::ptr::read_unaligned(s.add(at + (i0 + i) * stride + j0).cast())
                    });
                    for j in 0..T8 {
                        let col: [T; T8] = std::array::from_fn(|i| tile[i][j]);
                        std::ptr::write_unaligned(d.add((j0 + j) * ld + i0).cast(), col);
                    }
                } else {
                    for i in i0..(i0 + T8).min(rows) {
                        let row = s.add(at + i * stride);
                        for j in j0..(j0 + T8).min(cols) {
                            *d.add(j * ld + i) = *row.add(j);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte transpose's tiles and edges are the generic transpose's, for shapes around
    /// whole tiles, strides past the columns and destinations with a wider `ld`.
    #[test]
    fn byte_transposes_are_transposes() {
        let mut rnd = super::super::lcg(7);
        for (rows, cols) in [
            (16, 16),
            (3, 224),
            (16, 112),
            (32, 56),
            (17, 33),
            (64, 14),
            (5, 5),
        ] {
            for (pad, wide) in [(0, 0), (9, 3)] {
                let stride = cols + pad;
                let at = 5;
                let src: Vec<u8> = (0..at + rows * stride)
                    .map(|_| (rnd() >> 56) as u8)
                    .collect();
                let ld = rows + wide;
                let mut want = vec![0xAAu8; cols * ld];
                let mut got = want.clone();
                // SAFETY: dst holds cols rows of ld ≥ rows.
                unsafe {
                    transpose(&src, at, stride, want.as_mut_ptr(), ld, rows, cols);
                    transpose_bytes(&src, at, stride, got.as_mut_ptr(), ld, rows, cols);
                }
                assert_eq!(got, want, "{rows}×{cols}, stride {stride}, ld {ld}");
                for j in 0..cols {
                    for i in 0..rows {
                        assert_eq!(want[j * ld + i], src[at + i * stride + j]);
                    }
                }
            }
        }
    }

    /// No terms (no input channels): the epilogue of zero sums, written exactly over the
    /// result — planar (3 channels: not whole blocks) or blocked — and nothing past it.
    #[test]
    fn qconv2d_without_terms_writes_only_its_result() {
        let (o, p) = (3usize, 16usize);
        let shift = [1.0f32, 2.0, 3.0];
        for yb in [0i64, 16] {
            let len = if yb == 16 { 16 * p } else { o * p };
            let mut c = vec![f32::NAN; len + 64];
            let za = 0u8;
            let (none, weights) = (std::ptr::null(), std::ptr::null());
            // SAFETY: no input is read (no channels); c holds the result and a guard after.
            unsafe {
                kiln_qconv2d(
                    std::ptr::null(),
                    weights,
                    weights,
                    &za,
                    c.as_mut_ptr(),
                    none,
                    shift.as_ptr(),
                    none,
                    none,
                    0,
                    o as i64,
                    4,
                    4,
                    4,
                    4,
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    0,
                    0,
                    0,
                    yb,
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
            };
            assert!(
                c[len..].iter().all(|v| v.is_nan()),
                "yb {yb}: wrote past the result"
            );
            for (f, &want) in shift.iter().enumerate() {
                for q in 0..p {
                    let at = if yb == 16 { q * 16 + f } else { f * p + q };
                    assert_eq!(c[at], want, "yb {yb} channel {f} pixel {q}");
                }
            }
        }
    }

    /// Against the definition, on odd geometries (strides, dilations, uneven padding, one
    /// channel, 3 channels as an image's first conv), with and without packed filters, the
    /// image planar or blocked.
    #[test]
    fn qconv2d_matches_the_definition() {
        for &(ci, o, h, wd, kh, kw, s, d, ph, pw) in &[
            (
                1usize, 1usize, 3usize, 3usize, 1usize, 1usize, 1usize, 1usize, 0usize, 0usize,
            ),
            (3, 16, 9, 7, 3, 3, 2, 1, 1, 1),
            (8, 5, 6, 6, 3, 2, 1, 2, 2, 0),
            (64, 64, 8, 8, 3, 3, 1, 1, 1, 1),
            (40, 24, 5, 7, 3, 3, 1, 1, 1, 1),
            // Windows read in place (on AMX): a dilated tap a step, a row of taps over two
            // steps, rows not a multiple of 16 windows long, a 1×1 conv, channels not a
            // multiple of 32.
            (64, 48, 7, 9, 3, 3, 1, 2, 2, 1),
            (32, 32, 6, 10, 1, 2, 1, 1, 0, 0),
            (64, 96, 20, 19, 3, 3, 1, 1, 1, 1),
            (128, 40, 5, 5, 1, 1, 1, 1, 0, 0),
            // 1×1 convs read in place (off AMX): one block of channels (whole, part) over
            // several chunks of pixels, and the ones that are not pointwise (padded, strided).
            (16, 16, 40, 41, 1, 1, 1, 1, 0, 0),
            (12, 40, 9, 7, 1, 1, 1, 1, 0, 0),
            (16, 8, 5, 5, 1, 1, 1, 1, 1, 1),
            (20, 8, 9, 9, 1, 1, 2, 1, 0, 0),
        ] {
            let oh = (h + 2 * ph - (kh - 1) * d - 1) / s + 1;
            let ow = (wd + 2 * pw - (kw - 1) * d - 1) / s + 1;
            let x: Vec<u8> = (0..ci * h * wd).map(|i| (i * 37 % 251) as u8).collect();
            let w: Vec<i8> = (0..o * ci * kh * kw)
                .map(|i| ((i * 53 % 255) as i32 - 128) as i8)
                .collect();
            let za = 7u8;
            let mut want = vec![0f32; o * oh * ow];
            for f in 0..o {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut sum = 0i32;
                        for c in 0..ci {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * s + ky * d) as i64 - ph as i64;
                                    let ix = (ox * s + kx * d) as i64 - pw as i64;
                                    if iy < 0 || ix < 0 || iy >= h as i64 || ix >= wd as i64 {
                                        continue;
                                    }
                                    let xv = x[(c * h + iy as usize) * wd + ix as usize];
                                    let wv = w[((f * ci + c) * kh + ky) * kw + kx];
                                    sum += (i32::from(xv) - i32::from(za)) * i32::from(wv);
                                }
                            }
                        }
                        want[(f * oh + oy) * ow + ox] = sum as f32;
                    }
                }
            }
            let packed = pack_filters(&w, o, ci, kh, kw).unwrap();
            // The image blocked too (its padding lanes never read: filled with noise).
            let blocks = ci.div_ceil(16);
            let xbk: Vec<u8> = (0..blocks * h * wd * 16)
                .map(|i| {
                    let (l, px, cb) = (i % 16, i / 16 % (h * wd), i / 16 / (h * wd));
                    let c = cb * 16 + l;
                    if c < ci {
                        x[c * h * wd + px]
                    } else {
                        0xab
                    }
                })
                .collect();
            let forms = [
                (std::ptr::null(), x.as_ptr(), 0, 0),
                (packed.as_ptr(), x.as_ptr(), 0, 0),
                (packed.as_ptr(), xbk.as_ptr(), 16, 0),
                (packed.as_ptr(), xbk.as_ptr(), 16, 16),
            ];
            // A shift per channel: the epilogue's per-channel operands (per column of a blocked
            // result's sums).
            let shift: Vec<f32> = (0..o).map(|f| f as f32 * 0.5 - 3.0).collect();
            // And a scale per channel, a residual (planar results): powers of two and
            // halves, every result exact in any order of operations.
            let scale: Vec<f32> = (0..o).map(|f| [0.5, 2.0, 0.25][f % 3]).collect();
            let res: Vec<f32> = (0..o * oh * ow).map(|i| (i % 13) as f32 * 0.25).collect();
            let want: Vec<f32> = (want.iter().enumerate())
                .map(|(i, &v)| v * scale[i / (oh * ow)] + shift[i / (oh * ow)])
                .collect();
            // At two threads too (the larger shapes split the image's copy and the pixels).
            let pool = std::sync::Arc::new(crate::threads::Pool::new(1).unwrap());
            for ((bp, xp, xb, yb), pool) in forms
                .into_iter()
                .flat_map(|f| [(f, None), (f, Some(pool.clone()))])
            {
                let want: Vec<f32> = if yb == 16 {
                    want.clone()
                } else {
                    want.iter().zip(&res).map(|(w, r)| w + r).collect()
                };
                let blocks = o.div_ceil(16);
                let mut c = vec![f32::NAN; blocks * 16 * oh * ow];
                let (oc, ohw) = (o, oh * ow);
                let [ci, o, h, wd, oh, ow, kh, kw, s, d, ph, pw] =
                    [ci, o, h, wd, oh, ow, kh, kw, s, d, ph, pw].map(|v| v as i64);
                let null = std::ptr::null();
                // SAFETY: the operands hold what the geometry says.
                crate::threads::with_helpers(pool, || unsafe {
                    kiln_qconv2d(
                        xp,
                        w.as_ptr(),
                        bp,
                        &za,
                        c.as_mut_ptr(),
                        scale.as_ptr(),
                        shift.as_ptr(),
                        if yb == 16 { null } else { res.as_ptr() },
                        null,
                        ci,
                        o,
                        h,
                        wd,
                        oh,
                        ow,
                        kh,
                        kw,
                        s,
                        s,
                        d,
                        d,
                        ph,
                        pw,
                        xb,
                        yb,
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
                });
                // A blocked result back to planes, its padding lanes 0.
                let c: Vec<f32> = if yb == 16 {
                    for (i, v) in c.iter().enumerate() {
                        assert!(i / ohw / 16 * 16 + i % 16 < oc || *v == 0.0, "lane {i}");
                    }
                    (0..oc * ohw)
                        .map(|i| c[((i / ohw / 16) * ohw + i % ohw) * 16 + (i / ohw) % 16])
                        .collect()
                } else {
                    c[..oc * ohw].to_vec()
                };
                assert_eq!(
                    c, want,
                    "{ci}→{o} {h}×{wd} {kh}×{kw} s{s} d{d} p{ph},{pw} xb{xb} yb{yb}"
                );
            }
        }
    }

    /// `qconv2d_u8` stores the bytes `row_quantize` makes of `qconv2d`'s result — NaN, ±∞
    /// and values past both ends of the range among them (a residual of those), fractional
    /// zero points too — whether AMX stores them (where the CPU has it) or the f32 result is
    /// converted, planar and blocked, at one and two threads.
    #[test]
    fn qconv2d_u8_is_the_quantized_result() {
        let amx = qgemm::isa() == qgemm::Isa::Amx;
        let pool = std::sync::Arc::new(crate::threads::Pool::new(1).unwrap());
        for &(ci, o, h, wd, k, s) in &[
            (3usize, 16usize, 9usize, 7usize, 3usize, 1usize),
            (8, 5, 6, 6, 3, 2),
            (64, 64, 8, 8, 3, 1),
            (32, 32, 6, 10, 1, 1),
            (16, 48, 12, 12, 1, 1),
        ] {
            let (oh, ow) = ((h - 1) / s + 1, (wd - 1) / s + 1);
            let pad = (k / 2) as i64;
            let x: Vec<u8> = (0..ci * h * wd).map(|i| (i * 37 % 251) as u8).collect();
            let w: Vec<i8> = (0..o * ci * k * k)
                .map(|i| ((i * 53 % 255) as i32 - 128) as i8)
                .collect();
            let packed = pack_filters(&w, o, ci, k, k).unwrap();
            let za = 7u8;
            // Sums of thousands scaled to about −300..300, then shifted.
            let scale: Vec<f32> = (0..o).map(|f| 0.01 * (1 + f % 5) as f32).collect();
            let shift: Vec<f32> = (0..o).map(|f| f as f32 * 6.5 - 40.0).collect();
            let special = [
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                1e9,
                -1e9,
                0.5,
                2.5,
            ];
            let res: Vec<f32> = (0..o * oh * ow)
                .map(|i| if i % 7 == 0 { special[i / 7 % 7] } else { 0.0 })
                .collect();
            let null = std::ptr::null();
            for (yb, z, threads) in [
                (0, 0.0, false),
                (0, 7.5, true),
                (16, 3.0, false),
                (16, 0.0, true),
            ] {
                let len = if yb == 16 {
                    o.div_ceil(16) * 16 * oh * ow
                } else {
                    o * oh * ow
                };
                let r = if yb == 16 { null } else { res.as_ptr() };
                let g = [ci, o, h, wd, oh, ow, k, k, s, s, 1, 1]
                    .map(|v| v as i64)
                    .into_iter()
                    .chain([pad, pad, 0, yb, 0])
                    .collect::<Vec<_>>()
                    .try_into()
                    .unwrap();
                let e = [
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
                ];
                let ops = [scale.as_ptr(), shift.as_ptr(), r, null];
                let helpers = threads.then(|| pool.clone());
                let mut f = vec![0f32; len];
                // SAFETY: the operands hold what the geometry says.
                crate::threads::with_helpers(helpers.clone(), || unsafe {
                    conv(
                        x.as_ptr(),
                        (w.as_ptr(), packed.as_ptr()),
                        &za,
                        Out::F32(f.as_mut_ptr()),
                        ops,
                        g,
                        e,
                    )
                });
                let want: Vec<u8> = f.iter().map(|&v| byte(v, z)).collect();
                assert!(
                    want.contains(&0) && want.contains(&255),
                    "{ci}→{o}: both ends"
                );
                // (AMX stores only whole blocks: a padded blocked result is converted.)
                for direct in [false, amx && (yb != 16 || o % 16 == 0)] {
                    let mut got = vec![0xa5u8; len];
                    // SAFETY: as above; AMX only where the CPU has it.
                    crate::threads::with_helpers(helpers.clone(), || unsafe {
                        bytes(
                            x.as_ptr(),
                            (w.as_ptr(), packed.as_ptr()),
                            &za,
                            (got.as_mut_ptr(), z),
                            ops,
                            g,
                            e,
                            direct,
                        )
                    });
                    assert_eq!(
                        got, want,
                        "{ci}→{o} {h}×{wd} k{k} s{s} yb{yb} z{z} amx {direct}"
                    );
                }
            }
        }
    }

    /// `row_quantize`'s bytes rule on one value (`Out::Bytes`'), as its scalar code has it.
    fn byte(v: f32, z: f32) -> u8 {
        super::super::rows::quantize(v, 1.0, z)
    }

    /// The bytes rule: ties to even, the zero point added, then truncated and saturated, NaN
    /// 0 — the reference's and `row_quantize`'s.
    #[test]
    fn bytes_round_then_saturate() {
        for (v, z, want) in [
            (2.5f32, 0.0f32, 2u8),
            (3.5, 0.0, 4),
            (-0.5, 0.0, 0),
            (-0.6, 0.0, 0),
            (254.5, 0.0, 254),
            (255.5, 0.0, 255),
            (1e20, 0.0, 255),
            (f32::NAN, 3.0, 0),
            (f32::INFINITY, 0.0, 255),
            (f32::NEG_INFINITY, 200.0, 0),
            (1.0, 7.5, 8),
            (-3.0, 2.0, 0),
            (100.4, 124.0, 224),
        ] {
            assert_eq!(byte(v, z), want, "{v} + {z}");
            // And `row_quantize` with a divisor of 1 (the converted path's), in a row of 40
            // (its vector code and the scalar rest).
            let row = [v; 40];
            let mut out = [7u8; 40];
            // SAFETY: rows of 40.
            unsafe {
                super::super::rows::row_quantize(row.as_ptr(), None, out.as_mut_ptr(), 40, (1.0, z))
            };
            assert_eq!(out, [want; 40], "row_quantize of {v} + {z}");
        }
    }
}
