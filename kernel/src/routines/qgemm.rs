//! The quantized product, `qdot`'s routine: `c[i, j] = E(f32(Σ_l (a[i, l] − za)·b[l, j]))` for
//! u8 A, i8 B and a u8 zero point, the sums in i32 (wrapping) — exact, so every ISA gives the
//! same bits: AMX tiles where the CPU and the OS allow them, else AVX-512 VNNI, else AVX2
//! (bytes widened to i16, `vpmaddwd`), else portable code. The sums are `Σ a·b − za·Σ b`, the columns' sums of B made when it is packed.
//!
//! B is packed (ahead of time when it is constant, see [`pack_b`]): panels of [`NR`]
//! columns, an even number of them; in a panel, each group of four steps of k holds the 16
//! columns' four bytes in turn — a row of an AMX B tile, a VNNI vector — with k padded with
//! zeros to a multiple of [`KB`]; after the panels, each column's sum of B as a little-endian
//! i32. A's rows are copied per block of 32, padded the same way — except that AMX reads a
//! whole block's rows where they are, copying only their last part step of k.

use std::cell::RefCell;

use super::epilogue::Epilogue;

/// Columns per panel.
pub const NR: usize = 16;
/// Steps of k per AMX tile (16 rows of four bytes).
pub const KB: usize = 64;
/// Rows per block (two AMX tiles).
const MB: usize = 32;

/// k padded to whole tiles.
fn kpad(k: usize) -> usize {
    k.div_ceil(KB) * KB
}

/// Panels of B, rounded up to pairs (the kernels take two at a time).
fn panels(n: usize) -> usize {
    n.div_ceil(2 * NR) * 2
}

/// Bytes of B packed for a `k`×`n` product.
pub fn packed_len(k: usize, n: usize) -> usize {
    let cols = panels(n) * NR;
    cols * kpad(k) + 4 * cols
}

/// Packs B (element (l, j) at `b[l * rs + j * cs]`, `l < k`, `j < n`) as the module says;
/// `None` when an element would be outside `b` or the sizes overflow.
pub fn pack_b(b: &[i8], rs: i64, cs: i64, k: usize, n: usize) -> Option<Vec<i8>> {
    let last = (k.checked_sub(1)? as i64)
        .checked_mul(rs)?
        .checked_add((n.checked_sub(1)? as i64).checked_mul(cs)?)?;
    if rs < 0 || cs < 0 || last >= b.len() as i64 {
        return None;
    }
    let mut out = vec![0i8; packed_len(k, n)];
    // SAFETY: every element read is inside `b` (checked above); `out` has the packed length.
    unsafe { pack_into(b.as_ptr(), rs as isize, cs as isize, k, n, out.as_mut_ptr()) };
    Some(out)
}

/// [`pack_b`] into `out` ([`packed_len`] bytes).
///
/// # Safety
/// B's elements are readable; `out` is writable for [`packed_len`]`(k, n)` bytes.
unsafe fn pack_into(b: *const i8, rs: isize, cs: isize, k: usize, n: usize, out: *mut i8) {
    let kp = kpad(k);
    let cols = panels(n) * NR;
    // SAFETY: inside `out`.
    unsafe { std::ptr::write_bytes(out, 0, packed_len(k, n)) };
    let sums = out.wrapping_add(cols * kp);
    for j in 0..n {
        let (p, jj) = (j / NR, j % NR);
        let mut sum = 0i32;
        for l in 0..k {
            // SAFETY: (l, j) is inside B; the slot is inside `out`.
            unsafe {
                let v = *b.offset(l as isize * rs + j as isize * cs);
                *out.add(p * NR * kp + (l / 4) * 4 * NR + jj * 4 + l % 4) = v;
                sum = sum.wrapping_add(i32::from(v));
            }
        }
        // SAFETY: inside the sums.
        unsafe { std::ptr::write_unaligned(sums.add(4 * j).cast::<i32>(), sum) };
    }
}

thread_local! {
    /// A block of A's rows, padded (per thread: products run on helpers too).
    static ROWS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// B packed per call, when it was not packed ahead of time.
    static PACKED: RefCell<Vec<i8>> = const { RefCell::new(Vec::new()) };
}

/// `len` elements of `buf` from a 64-byte boundary (zeros where `buf` grew). AMX loads whole
/// 64-byte tile rows: from a vector's own (16-byte) alignment every row spans two cache lines,
/// which halved the product's speed.
pub(crate) fn aligned<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    let slack = 64 / std::mem::size_of::<T>();
    if buf.len() < len + slack {
        buf.resize(len + slack, T::default());
    }
    let at = buf.as_ptr().align_offset(64).min(slack);
    &mut buf[at..at + len]
}

/// `qgemm`: `c[i*ldc + j] = E(f32(Σ_l (a[i*a_rs + l] − za)·b[l*b_rs + j*b_cs]))` for
/// `i < m`, `j < n`, `l < k`, E the epilogue of row i (column j when `cols` is 1); `bp`, when
/// not null, is B packed by [`pack_b`] for this k and n (B is then not read).
///
/// # Safety
/// The operands hold what those indices reach; `za` points at one byte; `c` does not
/// overlap the others (except as the epilogue's residual allows).
#[allow(clippy::too_many_arguments)]
#[no_mangle]
pub unsafe extern "C" fn kiln_qgemm(
    a: *const u8,
    b: *const i8,
    bp: *const i8,
    za: *const u8,
    c: *mut f32,
    scale: *const f32,
    shift: *const f32,
    res: *const f32,
    scale2: *const f32,
    a_rs: i64,
    b_rs: i64,
    b_cs: i64,
    ldc: i64,
    m: i64,
    n: i64,
    k: i64,
    cols: i64,
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
    let epi = Epilogue::new(
        (scale, shift, res, scale2),
        (lo, hi),
        cols,
        act,
        [
            pre_s, pre_z, pre_lo, pre_hi, pre_d, pre_at, post_s, post_z, post_lo, post_hi, post_d,
        ],
    );
    let (m, n, k) = (m.max(0) as usize, n.max(0) as usize, k.max(0) as usize);
    let ldc = (ldc.max(0) as usize).max(n);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: one byte.
    let za = i32::from(unsafe { *za });
    if bp.is_null() {
        PACKED.with(|p| {
            let mut p = p.borrow_mut();
            let p = aligned(&mut p, packed_len(k, n));
            // SAFETY: forwarded from the caller.
            unsafe {
                pack_into(b, b_rs as isize, b_cs as isize, k, n, p.as_mut_ptr());
                product(
                    isa(),
                    a,
                    a_rs as usize,
                    p.as_ptr(),
                    za,
                    (c, ldc, NR),
                    m,
                    n,
                    k,
                    &epi,
                );
            }
        });
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe { product(isa(), a, a_rs as usize, bp, za, (c, ldc, NR), m, n, k, &epi) }
}

/// The product against packed B, split by pairs of panels over the helper threads when big.
/// C is `(c, ldc, cbs)`: element (i, j) at `i·ldc + (j / 16)·cbs + j % 16` — row-major where
/// `cbs` is 16, a channel-blocked image's 16-channel blocks of pixels where `ldc` is 16
/// (a conv's results stored blocked as they come, its epilogue per column).
///
/// # Safety
/// As [`kiln_qgemm`], `bp` packed; C as laid out holds every (i, j), no two the same
/// element.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product(
    isa: Isa,
    a: *const u8,
    a_rs: usize,
    bp: *const i8,
    za: i32,
    (c, ldc, cbs): (*mut f32, usize, usize),
    m: usize,
    n: usize,
    k: usize,
    epi: &Epilogue,
) {
    let pairs = panels(n) / 2;
    // Integer products run about four times the f32 rate: split from 8M multiply-adds.
    let t = if m * n * k >= 1 << 23 {
        (crate::threads::helpers() + 1).min(pairs)
    } else {
        1
    };
    let op = Operands {
        isa,
        a: a as usize,
        a_rs,
        bp: bp as usize,
        za,
        c: c as usize,
        ldc,
        cbs,
        m,
        n,
        k,
    };
    if t <= 1 {
        // SAFETY: forwarded.
        unsafe { op.pairs(0, pairs, epi) };
        return;
    }
    crate::threads::parallel_for(t, |w| {
        // SAFETY: each task writes only the columns of its own panels.
        unsafe { op.pairs(pairs * w / t, pairs * (w + 1) / t, epi) }
    });
}

/// Where a conv's results go: f32 values, or bytes `u8(round(v) + z)` — `row_quantize`'s
/// rule (ties to even, `z` added in f32, then truncated and saturated to 0..=255, NaN 0) —
/// for a quantized result stored as the epilogue makes it.
#[derive(Clone, Copy)]
pub(crate) enum Out {
    F32(*mut f32),
    Bytes(*mut u8, f32),
}

// SAFETY: the threads' parts write disjoint outputs (the callers').
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

/// A stride-1 convolution's sums read straight from its image, on AMX: no patch matrix.
/// Pixel `q` of the image (channels-last, `ci` bytes a pixel, rows `wp` pixels long) starts
/// window `q` — the output at row `q / wp`, column `q % wp` — and the 64-byte step `s` of a
/// window's k bytes lies `steps[s]` bytes after it; so 16 consecutive windows' bytes of a
/// step are one tile, rows `ci` apart, and a block of 32 windows is any 32 consecutive
/// pixels. Windows past a row's `ow` outputs (over the border) are computed and dropped.
pub(crate) struct Windows {
    /// The image, 64-byte aligned, readable for 32 pixels and the largest step past the
    /// last window of the last row.
    pub img: *const u8,
    pub ci: usize,
    pub wp: usize,
    pub ow: usize,
    /// Byte offsets of k's 64-byte steps (k is a multiple of 64).
    pub steps: Vec<usize>,
    /// The output pixel of window 0 (a part's patches start at its first pixel).
    pub first: usize,
}

// SAFETY: the image is only read, by every thread of a product alike.
unsafe impl Sync for Windows {}

impl Windows {
    /// Output rows `oy0..oy1` of the conv into `c` — planes of `p` pixels (`blocked`:
    /// blocks of 16 channels, each `p` pixels of 16 lanes, the padding lanes left alone) —
    /// through `epi` (per channel: its rows when planar, its columns when blocked), from B
    /// packed for k = `64·steps.len()` and `o` channels. Each block of sums is stored as it
    /// comes (transposed in registers for planes): no pixel-major sums to transpose after.
    ///
    /// # Safety
    /// AMX is available ([`isa`]); `bp` holds packed B; `c` holds the `o` channels' `p`
    /// pixels (rounded up to 16 channels blocked), this call alone writing rows `oy0..oy1`;
    /// the epilogue's operands as a conv's.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn run(
        &self,
        bp: *const i8,
        za: i32,
        o: usize,
        (oy0, oy1): (usize, usize),
        (c, p, blocked): (Out, usize, bool),
        epi: &Epilogue,
    ) {
        if oy0 >= oy1 || self.ow == 0 || o == 0 {
            return;
        }
        let k = KB * self.steps.len();
        let pairs = panels(o) / 2;
        let (start, end) = (oy0 * self.wp, (oy1 - 1) * self.wp + self.ow);
        // The block at window q0's sums stored: its runs of windows that are outputs (lane,
        // count, output pixel).
        let put = |acc: &Sums, q0: usize, pair: usize| {
            let mut runs = [(0, 0, 0); MB];
            let (mut n, mut i) = (0, 0);
            while i < MB && q0 + i < end {
                let (oy, ox) = ((q0 + i) / self.wp, (q0 + i) % self.wp);
                if ox >= self.ow {
                    // Over the border: up to the next row.
                    i += self.wp - ox;
                    continue;
                }
                let r = (self.ow - ox).min(MB - i).min(end - q0 - i);
                runs[n] = (i, r, self.first + oy * self.ow + ox);
                n += 1;
                i += r;
            }
            let j0 = pair * 2 * NR;
            let w = (2 * NR).min(o - j0);
            // SAFETY: B is packed for k and o.
            let fix = unsafe { fixes(bp, (k, o), za, j0, w) };
            // SAFETY: the runs' outputs are this call's (the caller's); AMX implies AVX-512.
            unsafe {
                if blocked {
                    store_blocked(acc, &fix, &runs[..n], (c, p, j0, w), epi);
                } else {
                    store_planes(acc, &fix, &runs[..n], (c, p, j0, w), epi);
                }
            }
        };
        let mut store = |acc: &Sums, (q0, pair)| put(acc, q0, pair);
        // SAFETY: AMX is available; released below.
        unsafe { amx::configure() };
        let mut blocks = Blocks::new();
        for q0 in (start..end).step_by(MB) {
            let a = self.img.wrapping_add(q0 * self.ci);
            for pair in 0..pairs {
                let b = bp.wrapping_add(pair * 2 * NR * k);
                let steps = self.steps.iter().copied();
                // SAFETY: the windows' steps are inside the image (the caller's), the
                // panels hold k steps.
                let compute =
                    |acc: &mut Sums| unsafe { amx::windows(a, self.ci, steps, b, k, acc, false) };
                blocks.next((q0, pair), compute, &mut store);
            }
        }
        blocks.finish(&mut store);
        // SAFETY: configured above.
        unsafe { amx::release() };
    }
}

/// A block of sums (32 windows by 32 channels from `j0`, `w` of them real) into blocked
/// `c`: each run's windows, 16 channels a vector, corrected, converted and through the
/// epilogue (per column).
///
/// # Safety
/// AVX-512F; `c` holds blocked outputs for every run's pixels and channel `j0 + w − 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_blocked(
    acc: &Sums,
    fix: &[i32; 2 * NR],
    runs: &[(usize, usize, usize)],
    (c, p, j0, w): (Out, usize, usize, usize),
    epi: &Epilogue,
) {
    use std::arch::x86_64::*;
    for &(i0, r, q0) in runs {
        for g in (0..w).step_by(16) {
            let lanes = (w - g).min(16);
            let m: __mmask16 = if lanes == 16 { !0 } else { (1u16 << lanes) - 1 };
            let f = _mm512_loadu_si512(fix[g..].as_ptr().cast());
            // SAFETY: the rows' sums hold 32 each.
            let v = |i: usize| unsafe {
                let x = _mm512_loadu_si512(acc[(i0 + i) * 2 * NR + g..].as_ptr().cast());
                _mm512_cvtepi32_ps(_mm512_sub_epi32(x, f))
            };
            let at = ((j0 + g) / 16 * p + q0) * 16;
            // SAFETY: the run's pixels hold 16 lanes of this block of channels (the
            // caller's); blocked outputs have no residual here.
            unsafe {
                match c {
                    Out::F32(c) => columns(epi, (q0, j0 + g, at), (r, 16), m, v, c, false),
                    Out::Bytes(c, z) => {
                        let sums = acc[i0 * 2 * NR + g..].as_ptr();
                        columns_bytes(epi, (q0, j0 + g), (r, m), (sums, f), c.add(at), z)
                    }
                }
            };
        }
    }
}

/// A block of sums (32 windows by 32 channels from `j0`, `w` of them real) into planes
/// `c` (`p` pixels each): 16×16 quarters transposed in registers, then each channel's
/// windows corrected, converted, through the epilogue (per row) and stored, a masked
/// vector per run.
///
/// # Safety
/// AVX-512F; `c` holds planes of every run's pixels for channels up to `j0 + w`; the
/// epilogue's residual too.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_planes(
    acc: &Sums,
    fix: &[i32; 2 * NR],
    runs: &[(usize, usize, usize)],
    (c, p, j0, w): (Out, usize, usize, usize),
    epi: &Epilogue,
) {
    use super::epilogue::avx512::{apply, coefs};
    use std::arch::x86_64::*;
    let none = epi.is_none();
    for h in 0..2 {
        // The runs' parts in windows 16h..16h + 16: (first lane, mask, output pixel of lane 0).
        let mut parts = [(0u16, 0usize); 16];
        let mut n = 0;
        for &(i0, r, q0) in runs {
            let (a, b) = (i0.max(16 * h), (i0 + r).min(16 * h + 16));
            if a < b {
                let m = (((1u32 << (b - 16 * h)) - 1) & !((1u32 << (a - 16 * h)) - 1)) as u16;
                parts[n] = (m, (q0 + a - i0).wrapping_sub(a - 16 * h));
                n += 1;
            }
        }
        if n == 0 {
            continue;
        }
        for g in (0..w).step_by(16) {
            // SAFETY: rows 16h.. of the block hold 32 sums each.
            let cols = unsafe {
                transpose16(std::array::from_fn(|t| {
                    _mm512_loadu_si512(acc[(16 * h + t) * 2 * NR + g..].as_ptr().cast())
                }))
            };
            for (u, col) in cols.iter().enumerate().take((w - g).min(16)) {
                let j = j0 + g + u;
                let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(*col, _mm512_set1_epi32(fix[g + u])));
                for &(m, q) in &parts[..n] {
                    let at = (j * p).wrapping_add(q);
                    // SAFETY: the lanes in m are the run's pixels of channel j (the caller's).
                    unsafe {
                        let v = if none {
                            v
                        } else {
                            let st = coefs(epi, j, 0, m);
                            apply(epi, v, st, epi.res.wrapping_add(at), m)
                        };
                        match c {
                            Out::F32(c) => _mm512_mask_storeu_ps(c.wrapping_add(at), m, v),
                            Out::Bytes(c, z) => store_bytes(c.wrapping_add(at), m, v, z),
                        }
                    }
                }
            }
        }
    }
}

/// [`columns`] of a run of `r` pixels (at most [`MB`]) of a blocked result stored as bytes
/// at `c` (16 a pixel, [`store_bytes`]), from rows of `sums` less `fix`: the epilogue's values
/// made in a buffer first. Out of line, and from the sums rather than the caller's closure,
/// so that the f32 stores' `columns` stays as it was (cnn_dsc_qop's blocked stores were 15%
/// slower with the closure shared).
///
/// # Safety
/// As [`columns`] without a residual, `c` holding the run's bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn columns_bytes(
    epi: &Epilogue,
    (i, j): (usize, usize),
    (r, m): (usize, std::arch::x86_64::__mmask16),
    (sums, fix): (*const i32, std::arch::x86_64::__m512i),
    c: *mut u8,
    z: f32,
) {
    use std::arch::x86_64::*;
    let mut t = std::mem::MaybeUninit::<[f32; MB * 16]>::uninit();
    let t = t.as_mut_ptr().cast::<f32>();
    // SAFETY: the run's rows of sums, 2·NR apart, less their fixes.
    let v = |q: usize| unsafe {
        let x = _mm512_loadu_si512(sums.add(q * 2 * NR).cast());
        _mm512_cvtepi32_ps(_mm512_sub_epi32(x, fix))
    };
    // SAFETY: t holds MB vectors; columns writes the lanes in m of the first r, which are
    // all that is read back; the run's bytes are inside c (the caller's).
    unsafe {
        columns(epi, (i, j, 0), (r, 16), m, v, t, false);
        for q in 0..r {
            let x = _mm512_maskz_loadu_ps(m, t.add(q * 16));
            store_bytes(c.add(q * 16), m, x, z);
        }
    }
}

/// The lanes in `m` of `v` as bytes `u8(round(v) + z)` at `c` ([`Out::Bytes`]' rule, as
/// `row_quantize` makes them: [`super::rows::avx512::bytes_of`]).
///
/// # Safety
/// AVX-512F; the lanes in `m` writable from `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_bytes(
    c: *mut u8,
    m: std::arch::x86_64::__mmask16,
    v: std::arch::x86_64::__m512,
    z: f32,
) {
    use std::arch::x86_64::*;
    let q = super::rows::avx512::bytes_of(v, _mm512_set1_ps(z));
    // SAFETY: the lanes in m are writable (the caller's).
    unsafe { _mm512_mask_cvtepi32_storeu_epi8(c.cast(), m, q) };
}

/// Sixteen rows of sixteen i32s transposed: pairs interleaved, then quads, then the four
/// 128-bit lanes of every fourth result gathered.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [std::arch::x86_64::__m512i; 16]) -> [std::arch::x86_64::__m512i; 16] {
    use std::arch::x86_64::*;
    let t: [__m512i; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(a, b)
        } else {
            _mm512_unpackhi_epi32(a, b)
        }
    });
    // u[4i + c]: column 4L + c of rows 4i..4i + 4 in lane L.
    let u: [__m512i; 16] = std::array::from_fn(|x| {
        let (i, c) = (x / 4, x % 4);
        let (a, b) = (t[4 * i + c / 2], t[4 * i + 2 + c / 2]);
        if c % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    let mut out = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let v0 = _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_i32x4::<0xdd>(u[c], u[4 + c]);
        let v2 = _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]);
        let v3 = _mm512_shuffle_i32x4::<0xdd>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_i32x4::<0x88>(v0, v2);
        out[8 + c] = _mm512_shuffle_i32x4::<0xdd>(v0, v2);
        out[4 + c] = _mm512_shuffle_i32x4::<0x88>(v1, v3);
        out[12 + c] = _mm512_shuffle_i32x4::<0xdd>(v1, v3);
    }
    out
}

/// What the zero point `za` of A adds to the sums of columns `j0..j0 + w` (`w` at most 32)
/// of B packed for `kp` steps and `n` columns: `za` times each column's sum (stored after the
/// panels), to take off.
///
/// # Safety
/// `bp` holds B packed so.
unsafe fn fixes(
    bp: *const i8,
    (kp, n): (usize, usize),
    za: i32,
    j0: usize,
    w: usize,
) -> [i32; 2 * NR] {
    let sums = bp.wrapping_add(panels(n) * NR * kp);
    let mut fix = [0i32; 2 * NR];
    for (j, f) in fix.iter_mut().enumerate().take(w) {
        // SAFETY: column j0 + j has a sum.
        let s: i32 = unsafe { std::ptr::read_unaligned(sums.add(4 * (j0 + j)).cast()) };
        *f = za.wrapping_mul(s);
    }
    fix
}

/// One block of sums (32 rows by 32 columns, row-major).
type Sums = [i32; MB * 2 * NR];

/// Two blocks of sums, so that a block's epilogue runs while the next one's tiles multiply
/// (AMX works beside the vector units; a block stored and read back at once waited for the
/// last product of its block every time): each block is computed into one, then the block
/// before it, in the other, is stored.
struct Blocks<T> {
    acc: [Sums; 2],
    slot: usize,
    /// What the block last computed is (its store's arguments).
    pending: Option<T>,
}

impl<T> Blocks<T> {
    fn new() -> Blocks<T> {
        Blocks {
            acc: [[0; MB * 2 * NR]; 2],
            slot: 0,
            pending: None,
        }
    }

    /// Block `at` computed by `compute`, then the one before stored by `store`.
    fn next(&mut self, at: T, compute: impl FnOnce(&mut Sums), store: &mut impl FnMut(&Sums, T)) {
        compute(&mut self.acc[self.slot]);
        if let Some(before) = self.pending.replace(at) {
            store(&self.acc[1 - self.slot], before);
        }
        self.slot = 1 - self.slot;
    }

    /// The last block stored.
    fn finish(mut self, store: &mut impl FnMut(&Sums, T)) {
        if let Some(last) = self.pending.take() {
            store(&self.acc[1 - self.slot], last);
        }
    }
}

/// A product's operands (addresses as integers, so that tasks may share them).
#[derive(Clone, Copy)]
struct Operands {
    isa: Isa,
    a: usize,
    a_rs: usize,
    bp: usize,
    za: i32,
    c: usize,
    ldc: usize,
    /// How far apart C's runs of 16 columns lie ([`product`]).
    cbs: usize,
    m: usize,
    n: usize,
    k: usize,
}

impl Operands {
    /// Where column `j` of a row of C starts, from the row's first element.
    fn col(&self, j: usize) -> usize {
        j / NR * self.cbs + j % NR
    }

    /// The columns of panel pairs `lo..hi`, every row.
    ///
    /// # Safety
    /// As [`kiln_qgemm`].
    unsafe fn pairs(&self, lo: usize, hi: usize, epi: &Epilogue) {
        if lo >= hi {
            return;
        }
        let kp = kpad(self.k);
        ROWS.with(|rows| {
            let mut rows = rows.borrow_mut();
            let rows = aligned(&mut rows, MB * kp);
            let isa = self.isa;
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Amx {
                // SAFETY: AMX is enabled for this thread; the tiles configured are released
                // before returning.
                unsafe { amx::configure() };
            }
            // SAFETY: forwarded.
            let mut store = |acc: &Sums, (i0, r, j0)| unsafe { self.store(acc, i0, r, j0, epi) };
            let mut blocks = Blocks::new();
            // B streamed past L1 where it does not fit there.
            let stream = (hi - lo) * 2 * NR * kp > 32 << 10;
            let mut filled = None;
            for i0 in (0..self.m).step_by(MB) {
                let r = MB.min(self.m - i0);
                let a = (self.a as *const u8).wrapping_add(i0 * self.a_rs);
                // AMX reads a whole block's rows in place (their last part step copied);
                // other blocks are copied, padded with zeros (rows and steps).
                let in_place = isa == Isa::Amx && r == MB;
                let (len, whole) = if in_place {
                    (self.k % KB, self.k / KB * KB)
                } else {
                    (self.k, 0)
                };
                let width = if in_place { KB } else { kp };
                // Each row's padding past `len` stays zero from a fill at the first block of
                // this width (the copies write `len` bytes); a last block's missing rows are
                // zeroed. (A per-row fill and copy were calls of memset and memcpy: a quarter
                // of a first conv's time, whose k is 27.)
                if filled != Some(width) {
                    rows.fill(0);
                    filled = Some(width);
                }
                for (i, row) in rows.chunks_exact_mut(width).take(MB).enumerate() {
                    if i < r {
                        // SAFETY: row i0 + i of A holds k bytes.
                        let src = unsafe {
                            std::slice::from_raw_parts(a.wrapping_add(i * self.a_rs + whole), len)
                        };
                        copy(src, &mut row[..len]);
                    } else {
                        row.fill(0);
                    }
                }
                for pair in lo..hi {
                    let b = (self.bp as *const i8).wrapping_add(pair * 2 * NR * kp);
                    let rows = rows.as_ptr();
                    let a = (a, self.a_rs, self.k);
                    // SAFETY: A's 32 rows hold k bytes (read in place: whole steps only, the
                    // part step from `rows`), the copies and both panels kp; `acc` holds the
                    // block.
                    let compute = |acc: &mut Sums| unsafe {
                        #[cfg(target_arch = "x86_64")]
                        if in_place {
                            return amx::rows(a, rows, b, acc, stream);
                        }
                        block(isa, rows, b, (kp, self.k), r, acc)
                    };
                    blocks.next((i0, r, pair * 2 * NR), compute, &mut store);
                }
            }
            blocks.finish(&mut store);
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Amx {
                // SAFETY: configured above.
                unsafe { amx::release() };
            }
        });
    }

    /// Stores the block of sums `acc` (32 rows of 32 columns) for rows `i0..i0 + r`, columns
    /// from `j0`: corrected by the zero point, converted, then the epilogue.
    ///
    /// # Safety
    /// As [`kiln_qgemm`].
    unsafe fn store(&self, acc: &[i32], i0: usize, r: usize, j0: usize, epi: &Epilogue) {
        if j0 >= self.n {
            return;
        }
        let w = (2 * NR).min(self.n - j0);
        let c = self.c as *mut f32;
        // SAFETY: B is packed for k and n.
        let fix = unsafe { fixes(self.bp as *const i8, (kpad(self.k), self.n), self.za, j0, w) };
        // The block's two runs of 16 columns (j0 is a multiple of 32), each where C keeps it.
        let runs = [(0, self.col(j0)), (NR, self.col(j0 + NR))];
        #[cfg(target_arch = "x86_64")]
        if crate::avx512() {
            // SAFETY: forwarded; the CPU has AVX-512.
            return unsafe { avx512_store(acc, &fix, (c, self.ldc, runs), (i0, r, j0, w), epi) };
        }
        #[cfg(target_arch = "x86_64")]
        if crate::avx2_fma() {
            // SAFETY: forwarded; the CPU has AVX2 and FMA.
            return unsafe { avx2_store(acc, &fix, (c, self.ldc, runs), (i0, r, j0, w), epi) };
        }
        for (h, col) in runs.into_iter().filter(|&(h, _)| h < w) {
            let lanes = (w - h).min(NR);
            for (i, sums) in acc.chunks_exact(2 * NR).take(r).enumerate() {
                // SAFETY: row i0 + i of C holds the run's columns.
                let row = unsafe {
                    std::slice::from_raw_parts_mut(c.add((i0 + i) * self.ldc + col), lanes)
                };
                for ((y, &x), &f) in row.iter_mut().zip(&sums[h..]).zip(&fix[h..]) {
                    *y = x.wrapping_sub(f) as f32;
                }
            }
            let at = i0 * self.ldc + col;
            // SAFETY: the run is inside C.
            unsafe { epi.block_at((i0, j0 + h, at), c.add(at), self.ldc, r, lanes) };
        }
    }
}

/// `dst = src` (equal lengths), sixteen bytes at a time, then eight, then one: a patch's
/// runs and a small k's rows of A are short, where a `memcpy` call costs more than the copy.
#[inline(always)]
pub(crate) fn copy(src: &[u8], dst: &mut [u8]) {
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    // SAFETY: every access is below n, inside both slices.
    unsafe {
        while i + 16 <= n {
            let v = std::ptr::read_unaligned(s.add(i).cast::<u128>());
            std::ptr::write_unaligned(d.add(i).cast::<u128>(), v);
            i += 16;
        }
        if i + 8 <= n {
            let v = std::ptr::read_unaligned(s.add(i).cast::<u64>());
            std::ptr::write_unaligned(d.add(i).cast::<u64>(), v);
            i += 8;
        }
        while i < n {
            *d.add(i) = *s.add(i);
            i += 1;
        }
    }
}

/// The instruction sets the kernels use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Isa {
    Amx,
    Vnni,
    /// AVX2: bytes widened to i16 and `vpmaddwd` (exact: no saturating byte products).
    Avx2,
    Portable,
}

/// What this CPU (and OS) runs, decided once.
pub fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if amx::available() {
                return Isa::Amx;
            }
            if crate::avx512_vnni() {
                return Isa::Vnni;
            }
            if crate::avx2_fma() {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}

/// The sums of a block: 32 rows of A (`kp` bytes apart) by a pair of panels, into `acc`
/// (row-major, 32 columns); rows past `r` are zeros.
///
/// # Safety
/// The rows and the panels hold `kp` steps.
unsafe fn block(
    isa: Isa,
    a: *const u8,
    b: *const i8,
    (kp, k): (usize, usize),
    r: usize,
    acc: &mut [i32],
) {
    // Groups of four steps that hold any of k (the rest of kp is zeros): a conv over three
    // channels (k = 27) padded to a tile's 64 did 2.4 times its sums.
    let groups = k.div_ceil(4);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded; AMX is configured.
        Isa::Amx => unsafe { amx::block(a, b, kp, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded; the CPU has AVX-512 VNNI.
        Isa::Vnni => unsafe { vnni::block(a, b, kp, groups, r, acc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded; the CPU has AVX2.
        Isa::Avx2 => unsafe { avx2::block(a, b, kp, groups, r, acc) },
        _ => {
            for (i, row) in acc.chunks_exact_mut(2 * NR).enumerate() {
                for (j, s) in row.iter_mut().enumerate() {
                    let (p, jj) = (j / NR, j % NR);
                    let mut sum = 0i32;
                    for l in 0..4 * groups {
                        // SAFETY: inside the row and the panel.
                        let (x, y) = unsafe {
                            (
                                *a.add(i * kp + l),
                                *b.add(p * NR * kp + (l / 4) * 4 * NR + jj * 4 + l % 4),
                            )
                        };
                        sum = sum.wrapping_add(i32::from(x) * i32::from(y));
                    }
                    *s = sum;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod amx;

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(target_arch = "x86_64")]
mod store;
#[cfg(target_arch = "x86_64")]
use store::{avx2_store, avx512_store, columns};

#[cfg(target_arch = "x86_64")]
mod vnni;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this CPU runs against the plain sums, on shapes with edges in every
    /// dimension, with a zero point, an epilogue, and B packed ahead of time or per call.
    #[test]
    fn kernels_match_the_sums() {
        let mut next = super::super::lcg(7);
        let mut isas = vec![Isa::Portable];
        if crate::avx2_fma() {
            isas.push(Isa::Avx2);
        }
        if matches!(isa(), Isa::Amx | Isa::Vnni) {
            isas.push(Isa::Vnni);
        }
        if isa() == Isa::Amx {
            isas.push(Isa::Amx);
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 17, 5),
            (33, 40, 70),
            (64, 64, 128),
            (5, 100, 300),
            // A whole block of rows read in place with a part step, B streamed.
            (40, 300, 200),
        ] {
            let a: Vec<u8> = (0..m * k).map(|_| (next() >> 56) as u8).collect();
            let b: Vec<i8> = (0..k * n).map(|_| (next() >> 56) as i8).collect();
            let za = (next() >> 56) as u8;
            let shift: Vec<f32> = (0..n).map(|j| j as f32 - 3.0).collect();
            let sums: Vec<f32> = (0..m * n)
                .map(|x| {
                    let (i, j) = (x / n, x % n);
                    let s: i32 = (0..k)
                        .map(|l| {
                            (i32::from(a[i * k + l]) - i32::from(za)) * i32::from(b[l * n + j])
                        })
                        .sum();
                    s as f32
                })
                .collect();
            let want: Vec<f32> = (0..m * n)
                .map(|x| (sums[x] + shift[x % n]).max(0.0))
                .collect();
            let epi = Epilogue::new(
                (
                    std::ptr::null(),
                    shift.as_ptr(),
                    std::ptr::null(),
                    std::ptr::null(),
                ),
                (0.0, f32::INFINITY),
                1,
                0,
                [0.0; 11],
            );
            // Per-column and per-row operands, a residual, activations and a pair: stores
            // through the quick epilogue and the general one.
            let rows = m.max(n);
            let scale: Vec<f32> = (0..rows).map(|j| 0.01 + j as f32 * 1e-3).collect();
            let res: Vec<f32> = (0..m * n).map(|x| (x % 7) as f32 - 3.0).collect();
            let null = std::ptr::null();
            let pair = [0.5, 3.0, 0.0, 255.0, 0.25, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
            let epis = [
                (epi, "shift, clamp"),
                (
                    Epilogue::new(
                        (null, null, null, null),
                        (f32::NEG_INFINITY, f32::INFINITY),
                        1,
                        0,
                        [0.0; 11],
                    ),
                    "none",
                ),
                (
                    Epilogue::new(
                        (scale.as_ptr(), shift.as_ptr(), res.as_ptr(), null),
                        (f32::NEG_INFINITY, f32::INFINITY),
                        1,
                        4,
                        [0.0; 11],
                    ),
                    "columns, residual, silu",
                ),
                (
                    Epilogue::new(
                        (scale.as_ptr(), shift.as_ptr(), null, null),
                        (-1.0, 1.0),
                        0,
                        3,
                        [0.0; 11],
                    ),
                    "rows, clamps, gelu",
                ),
                (
                    Epilogue::new(
                        (scale.as_ptr(), null, res.as_ptr(), null),
                        (f32::NEG_INFINITY, f32::INFINITY),
                        1,
                        0,
                        pair,
                    ),
                    "columns, residual, pair",
                ),
                (
                    Epilogue::new(
                        (scale.as_ptr(), shift.as_ptr(), null, res.as_ptr()),
                        (0.0, 6.0),
                        0,
                        0,
                        pair,
                    ),
                    "rows, pair, second scale, shift, clamps",
                ),
                (
                    Epilogue::new(
                        (scale.as_ptr(), shift.as_ptr(), null, res.as_ptr()),
                        (-2.0, 5.0),
                        1,
                        4,
                        pair,
                    ),
                    "columns, pair, second scale, shift, clamps, silu (a run a step at a time)",
                ),
            ];
            for (e, what) in &epis {
                let want: Vec<f32> = (0..m * n)
                    .map(|x| {
                        let r = (!e.res.is_null()).then(|| res[x]);
                        // SAFETY: the operands hold every row and column.
                        e.one(sums[x], unsafe { e.coefs(x / n, x % n) }, r)
                    })
                    .collect();
                let bp = pack_b(&b, n as i64, 1, k, n).unwrap();
                for &isa in &isas {
                    let mut c = vec![f32::NAN; m * n];
                    // SAFETY: the operands have the sizes given.
                    unsafe {
                        product(
                            isa,
                            a.as_ptr(),
                            k,
                            bp.as_ptr(),
                            i32::from(za),
                            (c.as_mut_ptr(), n, NR),
                            m,
                            n,
                            k,
                            e,
                        )
                    };
                    let same = c.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{isa:?} {m}x{n}x{k} {what}");
                    if !e.res.is_null() {
                        continue;
                    }
                    // C blocked as a conv's channels: runs of 16 columns, m rows of 16 apart.
                    let mut cb = vec![f32::NAN; n.div_ceil(NR) * NR * m];
                    // SAFETY: as above; cb holds every run.
                    unsafe {
                        let c = (cb.as_mut_ptr(), NR, m * NR);
                        product(
                            isa,
                            a.as_ptr(),
                            k,
                            bp.as_ptr(),
                            i32::from(za),
                            c,
                            m,
                            n,
                            k,
                            e,
                        )
                    };
                    for (x, w) in want.iter().enumerate() {
                        let (i, j) = (x / n, x % n);
                        let got = cb[(j / NR * m + i) * NR + j % NR];
                        assert_eq!(
                            got.to_bits(),
                            w.to_bits(),
                            "{isa:?} blocked ({i}, {j}) {what}"
                        );
                    }
                }
            }
            // Through the entry point, B packed per call (B transposed: columns k apart).
            let bt: Vec<i8> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
            let mut c = vec![f32::NAN; m * n];
            // SAFETY: as above.
            unsafe {
                kiln_qgemm(
                    a.as_ptr(),
                    bt.as_ptr(),
                    std::ptr::null(),
                    &za,
                    c.as_mut_ptr(),
                    std::ptr::null(),
                    shift.as_ptr(),
                    std::ptr::null(),
                    std::ptr::null(),
                    k as i64,
                    1,
                    k as i64,
                    n as i64,
                    m as i64,
                    n as i64,
                    k as i64,
                    1,
                    0,
                    0.0,
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
            assert_eq!(c, want, "entry {m}x{n}x{k}");
        }
    }

    #[test]
    fn pack_b_checks_its_bounds() {
        assert!(pack_b(&[1, 2, 3], 1, 2, 2, 2).is_none());
        assert!(pack_b(&[1, 2, 3, 4], 2, 1, 2, 2).is_some());
    }
}
