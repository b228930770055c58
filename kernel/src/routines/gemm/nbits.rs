//! Products with a blocked 4-bit weight (the `qgemm4` routine, `qdot4`'s kernel), read
//! straight from its packed bytes (MatMulNBits' layout: row `j` of the weight is
//! `ceil(K/block)·block/2` bytes, value `l` the low four bits of byte `l/2` for even `l`, the
//! high ones for odd), each value dequantized as `(q − zero) · scale` in f32 with its block's
//! scale and zero point — exactly the interpreter's weight.
//!
//! Up to [`THIN`] rows at a time (12 in all) stream the nibbles: a chunk of 16 bytes (32 values) widens to two
//! vectors of 16 lanes, the even values and the odd ones, against the rows reordered the same
//! way once a call; every (row, column) keeps two 16-lane sums (even, odd), so several
//! columns at once hold 10 to 18 accumulators. Sixteen lanes are the unit on every path (AVX2
//! as two halves, portable as arrays), with one reduction order: results are the same bits on
//! every ISA and for any split of the columns over threads. More rows dequantize panels of
//! columns straight into the f32 micro-kernel's packed layout (the `gemm`'s own tiles).

use super::super::epilogue::Epilogue;
use super::{columns, packed_len, Mat, Panels, KC, NR};

mod q8;

pub use q8::{dequantized_row, quantize_block};

/// Rows at most this many take the streaming matrix-vector kernel.
pub const THIN: usize = 4;

/// Which vector code runs (tests pin each).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
}

/// The best code this CPU runs.
pub fn isa() -> Isa {
    if crate::avx512() {
        Isa::Avx512
    } else if crate::avx2_fma() {
        Isa::Avx2
    } else {
        Isa::Portable
    }
}

/// The packed weight: `n` rows of `bytes` bytes, with `blocks` scales and zero points a row.
#[derive(Clone, Copy)]
struct Weight {
    w: *const u8,
    scale: *const f32,
    zero: *const f32,
    bytes: usize,
    blocks: usize,
    block: usize,
}

// SAFETY: only read, and the caller keeps it alive for the call.
unsafe impl Send for Weight {}
unsafe impl Sync for Weight {}

impl Weight {
    /// Chunks of 32 values a row (the last one may hold 16: rows are a multiple of 8 bytes).
    fn chunks(&self) -> usize {
        self.bytes.div_ceil(16)
    }

    /// Whether the last chunk holds 8 bytes.
    fn half_tail(&self) -> bool {
        self.bytes % 16 == 8
    }

    /// The blocks of chunk `ch`'s lanes 0–7 and 8–15 (both halves of a chunk's even values,
    /// and of its odd ones, lie in one block each).
    fn blocks_of(&self, ch: usize) -> (usize, usize) {
        let b0 = ch * 32 / self.block;
        (b0, ((ch * 32 + 16) / self.block).min(self.blocks - 1))
    }

    /// Scale and zero point of row `j`'s block `b`.
    ///
    /// # Safety
    /// `j` and `b` are inside the weight.
    #[inline(always)]
    unsafe fn sz(&self, j: usize, b: usize) -> (f32, f32) {
        let at = j * self.blocks + b;
        // SAFETY: forwarded.
        unsafe { (*self.scale.add(at), *self.zero.add(at)) }
    }

    /// Value `l` of row `j`, dequantized.
    ///
    /// # Safety
    /// `j` and `l` are inside the weight.
    #[inline(always)]
    unsafe fn value(&self, j: usize, l: usize) -> f32 {
        // SAFETY: forwarded.
        unsafe {
            let q = (*self.w.add(j * self.bytes + l / 2) >> (4 * (l % 2))) & 15;
            let (s, z) = self.sz(j, l / self.block);
            (f32::from(q) - z) * s
        }
    }
}

/// `c[i*c_rs + j] = Σ_l a[i*a_rs + l] · w(j, l)` for `i < m`, `j < n`, `l < k`, through the
/// epilogue, `w(j, l)` the dequantized 4-bit weight (`w` packed as the module says, `scale`
/// and `zero` `n × ceil(k/block)`); `bp`, unless null, is that weight dequantized as B
/// (`k × n`) and packed by [`super::pack_b`] (made once for a small constant weight: see
/// [`dequantized_b`]), and the weight is then not read.
///
/// # Safety
/// `a` holds `m` rows `a_rs` apart of `k` elements, `w` `n · ceil(k/block)·block/2` bytes,
/// `scale` and `zero` `n · ceil(k/block)` elements, `c` `m` rows `c_rs >= n` apart, not
/// overlapping the operands; the epilogue's operands as the `gemm`'s.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_qgemm4(
    a: *const f32,
    w: *const u8,
    scale: *const f32,
    zero: *const f32,
    bp: *const f32,
    c: *mut f32,
    e_scale: *const f32,
    e_shift: *const f32,
    e_res: *const f32,
    e_scale2: *const f32,
    a_rs: i64,
    c_rs: i64,
    m: i64,
    n: i64,
    k: i64,
    block: i64,
    cols: i64,
    act: i64,
    xq: i64,
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
        (e_scale, e_shift, e_res, e_scale2),
        (lo, hi),
        cols,
        act,
        [
            pre_s, pre_z, pre_lo, pre_hi, pre_d, pre_at, post_s, post_z, post_lo, post_hi, post_d,
        ],
    );
    let dims = [a_rs, c_rs, m, n, k, block].map(|x| x.max(0) as usize);
    if xq != 0 && !bp.is_null() {
        // Int8 rows and a weight dequantized ahead of time: the rows as they quantize, by
        // the f32 product.
        let [a_rs, _, m, _, k, block] = dims;
        let mut rows = vec![0f32; m * k];
        for (i, out) in rows.chunks_mut(k.max(1)).enumerate() {
            // SAFETY: row i of a holds k elements.
            let row = unsafe { std::slice::from_raw_parts(a.add(i * a_rs), k) };
            q8::dequantize_row_into(row, block.max(1), out);
        }
        let a = rows.as_ptr();
        // SAFETY: forwarded; the copy holds m rows of k.
        unsafe {
            super::product(
                a, bp, bp, c, k as i64, 1, 0, 0, c_rs, m as i64, n, k as i64, &epi,
            )
        };
        return;
    }
    if !bp.is_null() {
        // Dequantized ahead of time (a small weight): the f32 product.
        // SAFETY: forwarded; B is never read when packed.
        unsafe { super::product(a, bp, bp, c, a_rs, 1, 0, 0, c_rs, m, n, k, &epi) };
        return;
    }
    // SAFETY: forwarded.
    unsafe { product(isa(), a, w, (scale, zero), c, dims, xq != 0, &epi) }
}

/// Whether `block` is one `qdot4` admits (a power of two from 16): the kernels read rows of
/// whole 8-byte halves of chunks.
pub fn valid_block(block: usize) -> bool {
    (16..=1 << 16).contains(&block) && block.is_power_of_two()
}

/// The weight (`n` rows, `k` values, in blocks of `block`) dequantized as the B of an f32
/// product (`k × n`), packed by [`super::pack_b`]; `None` when an operand is too short or
/// the block not one `qdot4` admits.
pub fn dequantized_b(
    w: &[u8],
    scale: &[f32],
    zero: &[f32],
    n: usize,
    k: usize,
    block: usize,
) -> Option<Vec<f32>> {
    if !valid_block(block) {
        return None;
    }
    let blocks = k.div_ceil(block);
    let bytes = blocks.checked_mul(block / 2)?;
    let values = n.checked_mul(k)?;
    if w.len() < n.checked_mul(bytes)?
        || scale.len() < n.checked_mul(blocks)?
        || zero.len() < n * blocks
    {
        return None;
    }
    let wt = Weight {
        w: w.as_ptr(),
        scale: scale.as_ptr(),
        zero: zero.as_ptr(),
        bytes,
        blocks,
        block,
    };
    let mut b = vec![0f32; values];
    for j in 0..n {
        for l in 0..k {
            // SAFETY: row j and value l are inside the weight (checked above).
            b[j * k + l] = unsafe { wt.value(j, l) };
        }
    }
    super::pack_b(&b, 1, k as i64, k, n)
}

/// [`kiln_qgemm4`] on the given ISA; `dims` are a_rs, c_rs, m, n, k and block.
///
/// # Safety
/// As [`kiln_qgemm4`]; the CPU runs `isa`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product(
    isa: Isa,
    a: *const f32,
    w: *const u8,
    (scale, zero): (*const f32, *const f32),
    c: *mut f32,
    [a_rs, c_rs, m, n, k, block]: [usize; 6],
    xq: bool,
    epi: &Epilogue,
) {
    let ldc = c_rs.max(n);
    if m == 0 || n == 0 {
        return;
    }
    if !valid_block(block) {
        // Not a block `qdot4` admits (a damaged kernel): NaN rather than reading outside.
        for i in 0..m {
            // SAFETY: row i of c holds n elements.
            unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), n).fill(f32::NAN) };
        }
        return;
    }
    if k == 0 {
        for i in 0..m {
            // SAFETY: row i of c holds n elements.
            unsafe { std::ptr::write_bytes(c.add(i * ldc), 0, n) };
        }
        // SAFETY: C is inside the output.
        unsafe { epi.block(c, ldc, m, n) };
        return;
    }
    let blocks = k.div_ceil(block);
    let wt = Weight {
        w,
        scale,
        zero,
        bytes: blocks * block / 2,
        blocks,
        block,
    };
    let quantized: Vec<f32>;
    let (a, a_rs) = match xq {
        // Up to 12 int8 rows: their bytes by the nibbles, summed in integers.
        true if m <= 3 * THIN => {
            // SAFETY: forwarded.
            return unsafe { q8::product(q8::isa(), a, a_rs, m, k, &wt, c, ldc, n, epi) };
        }
        // More: the rows as they quantize, by the dequantized panels.
        true => {
            let mut rows = vec![0f32; m * k];
            for (i, out) in rows.chunks_mut(k).enumerate() {
                // SAFETY: row i of a holds k elements.
                let row = unsafe { std::slice::from_raw_parts(a.add(i * a_rs), k) };
                q8::dequantize_row_into(row, block, out);
            }
            quantized = rows;
            (quantized.as_ptr(), k)
        }
        false => (a, a_rs),
    };
    let c_addr = c as usize;
    if m <= 3 * THIN {
        // Up to 12 rows stream the nibbles once per 4 rows: 8 rows by 2048×2048 0.90 ms
        // where dequantizing panels took 1.20 (one core); at 32 rows panels take 2.8 ms
        // where streaming would take 3.6.
        for r0 in (0..m).step_by(THIN) {
            let rows = THIN.min(m - r0);
            // SAFETY: forwarded; rows r0.. of A and C.
            unsafe {
                let (a, c) = (a.add(r0 * a_rs), c_addr + r0 * ldc * 4);
                thin(
                    isa,
                    a,
                    a_rs,
                    rows,
                    k,
                    &wt,
                    c,
                    ldc,
                    n,
                    &epi.from(r0, 0, r0 * ldc),
                )
            };
        }
    } else {
        let a = Mat {
            p: a,
            rs: a_rs as isize,
            cs: 1,
        };
        // SAFETY: forwarded.
        unsafe { panels(isa, a, m, k, &wt, c_addr, ldc, n, epi) };
    }
}

/// Up to [`THIN`] rows: the rows reordered per chunk (even values, then odd), then columns
/// streamed, split over the threads.
///
/// # Safety
/// As [`product`].
#[allow(clippy::too_many_arguments)]
unsafe fn thin(
    isa: Isa,
    a: *const f32,
    a_rs: usize,
    m: usize,
    k: usize,
    wt: &Weight,
    c: usize,
    ldc: usize,
    n: usize,
    epi: &Epilogue,
) {
    let kc = wt.chunks() * 32;
    let mut xp = vec![0f32; m * kc];
    for i in 0..m {
        // SAFETY: row i of a holds k elements.
        let row = unsafe { std::slice::from_raw_parts(a.add(i * a_rs), k) };
        let dst = &mut xp[i * kc..][..kc];
        for (l, &x) in row.iter().enumerate() {
            let (ch, r) = (l / 32, l % 32);
            dst[ch * 32 + (r % 2) * 16 + r / 2] = x;
        }
    }
    let parts = streaming_parts(n, k);
    let xp = &xp;
    crate::threads::parallel_for(parts, |p| {
        let (j0, j1) = (n * p / parts, n * (p + 1) / parts);
        let c = c as *mut f32;
        // SAFETY: each part writes its own columns.
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => x86::range512(xp, kc, m, wt, j0, j1, c, ldc),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => {
                    for i in 0..m {
                        x86::range256(&xp[i * kc..][..kc], wt, j0, j1, c.add(i * ldc));
                    }
                }
                _ => {
                    for i in 0..m {
                        for j in j0..j1 {
                            *c.add(i * ldc + j) = column_portable(&xp[i * kc..][..kc], wt, j);
                        }
                    }
                }
            }
            epi.block_at((0, j0, j0), c.add(j0), ldc, m, j1 - j0);
        }
    });
}

/// The parts (of at least 16 columns) that `n` columns of `k` values stream in: one a
/// thread once the weight is past about 128 KiB (streaming is bound by memory), else one.
fn streaming_parts(n: usize, k: usize) -> usize {
    let t = if n * k >= 1 << 18 {
        crate::threads::helpers() + 1
    } else {
        1
    };
    t.min(n.div_ceil(16)).max(1)
}

/// The sum of 16 lanes in the one order every path uses: lane i with i+8, then i+4, i+2, i+1.
fn hsum16(v: [f32; 16]) -> f32 {
    let mut t = v;
    for w in [8, 4, 2, 1] {
        for i in 0..w {
            t[i] += t[i + w];
        }
    }
    t[0]
}

/// Row `j` of the weight against one reordered row `xp`: portable, the vector paths' lanes
/// and order.
///
/// # Safety
/// `j` is a row of the weight; `xp` holds its chunks.
unsafe fn column_portable(xp: &[f32], wt: &Weight, j: usize) -> f32 {
    let (mut even, mut odd) = ([0f32; 16], [0f32; 16]);
    for ch in 0..wt.chunks() {
        let len = if wt.half_tail() && ch + 1 == wt.chunks() {
            8
        } else {
            16
        };
        let (b0, b1) = wt.blocks_of(ch);
        // SAFETY: row j's chunk ch holds `len` bytes; its blocks are inside.
        let ((s0, z0), (s1, z1)) = unsafe { (wt.sz(j, b0), wt.sz(j, b1)) };
        for lane in 0..16 {
            // SAFETY: as above.
            let byte = if lane < len {
                unsafe { *wt.w.add(j * wt.bytes + ch * 16 + lane) }
            } else {
                0
            };
            let (s, z) = if lane < 8 { (s0, z0) } else { (s1, z1) };
            let lo = (f32::from(byte & 15) - z) * s;
            let hi = (f32::from(byte >> 4) - z) * s;
            even[lane] = xp[ch * 32 + lane].mul_add(lo, even[lane]);
            odd[lane] = xp[ch * 32 + 16 + lane].mul_add(hi, odd[lane]);
        }
    }
    let mut v = [0f32; 16];
    for lane in 0..16 {
        v[lane] = even[lane] + odd[lane];
    }
    hsum16(v)
}

/// Columns of panels of [`NR`] dequantized per call into the micro-kernel's packed layout,
/// a few at a time (a piece of about 512 KiB), against every row; pieces split over the
/// threads.
///
/// # Safety
/// As [`product`].
#[allow(clippy::too_many_arguments)]
unsafe fn panels(
    isa: Isa,
    a: Mat,
    m: usize,
    k: usize,
    wt: &Weight,
    c: usize,
    ldc: usize,
    n: usize,
    epi: &Epilogue,
) {
    let width = ((1usize << 17) / k.max(1) / NR * NR).clamp(NR, 256);
    let pieces = n.div_ceil(width);
    let t = if m * n * k >= 1 << 21 {
        crate::threads::helpers() + 1
    } else {
        1
    };
    let parts = t.min(pieces);
    thread_local! {
        static BUF: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    crate::threads::parallel_for(parts, |p| {
        let mut buf = BUF.with(|b| b.take());
        for piece in pieces * p / parts..pieces * (p + 1) / parts {
            let j0 = piece * width;
            let w = width.min(n - j0);
            buf.resize(packed_len(k, w), 0.0);
            // SAFETY: columns j0..j0+w are rows of the weight.
            unsafe { dequantize_panels(isa, wt, j0, w, k, &mut buf) };
            let bsrc = Panels {
                b: Mat {
                    p: std::ptr::null(),
                    rs: 0,
                    cs: 0,
                },
                packed: buf.as_ptr(),
            };
            // SAFETY: the piece's columns of C are this part's; B is packed for k and w.
            unsafe {
                columns(
                    a,
                    bsrc,
                    (c as *mut f32).add(j0),
                    ldc,
                    m,
                    w,
                    k,
                    0,
                    w.div_ceil(NR),
                    &epi.from(0, j0, j0),
                )
            };
        }
        BUF.with(|b| b.set(buf));
    });
}

/// Rows `j0..j0+w` of the weight, dequantized, as B's columns packed for a `k`×`w` product
/// ([`super::pack_b`]'s layout, zero-padded panels).
///
/// # Safety
/// The rows are inside the weight; `out` holds [`packed_len`]`(k, w)` elements.
unsafe fn dequantize_panels(isa: Isa, wt: &Weight, j0: usize, w: usize, k: usize, out: &mut [f32]) {
    let np = w.div_ceil(NR);
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        for p in 0..np {
            let dst = &mut out[pc * np * NR + p * NR * kc..][..NR * kc];
            let jb = j0 + p * NR;
            let cols = NR.min(j0 + w - jb);
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 && cols == NR && NR == 16 {
                // SAFETY: forwarded.
                unsafe { x86::panel512(wt, jb, pc, kc, dst) };
                continue;
            }
            let _ = isa;
            for l in 0..kc {
                for jj in 0..NR {
                    dst[l * NR + jj] = if jj < cols {
                        // SAFETY: row jb+jj and value pc+l are inside the weight.
                        unsafe { wt.value(jb + jj, pc + l) }
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{hsum16, Weight};
    use std::arch::x86_64::*;

    /// Columns `j0..j1` for up to four rows of `xp` (`kc` apart), in groups that keep 12 to
    /// 18 accumulators.
    ///
    /// # Safety
    /// AVX-512F; the columns are rows of the weight; `c` holds the rows `ldc` apart.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn range512(
        xp: &[f32],
        kc: usize,
        m: usize,
        wt: &Weight,
        j0: usize,
        j1: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        // SAFETY: forwarded.
        unsafe {
            match m {
                1 => group512::<1, 6>(xp, kc, wt, j0, j1, c, ldc),
                2 => group512::<2, 4>(xp, kc, wt, j0, j1, c, ldc),
                3 => group512::<3, 3>(xp, kc, wt, j0, j1, c, ldc),
                _ => group512::<4, 2>(xp, kc, wt, j0, j1, c, ldc),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn group512<const R: usize, const C: usize>(
        xp: &[f32],
        kc: usize,
        wt: &Weight,
        j0: usize,
        j1: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut j = j0;
        // SAFETY: forwarded; each group's columns are inside j0..j1.
        unsafe {
            // Blocks of 32 and more: a chunk's 32 values share one block, whose 16 possible
            // weights make one vector (a table) that a permute indexes by the nibbles.
            if wt.block >= 32 {
                while j + C <= j1 {
                    let sums = columns512::<R, C, true>(xp, kc, wt, j);
                    for (r, row) in sums.iter().enumerate() {
                        for (q, &s) in row.iter().enumerate() {
                            *c.add(r * ldc + j + q) = s;
                        }
                    }
                    j += C;
                }
            }
            while j + C <= j1 {
                let sums = columns512::<R, C, false>(xp, kc, wt, j);
                for (r, row) in sums.iter().enumerate() {
                    for (q, &s) in row.iter().enumerate() {
                        *c.add(r * ldc + j + q) = s;
                    }
                }
                j += C;
            }
            while j < j1 {
                let sums = columns512::<R, 1, false>(xp, kc, wt, j);
                for (r, row) in sums.iter().enumerate() {
                    *c.add(r * ldc + j) = row[0];
                }
                j += 1;
            }
        }
    }

    /// Both blocks' (scale, zero point) as lanes 0–7 and 8–15.
    #[inline(always)]
    unsafe fn lanes512(wt: &Weight, j: usize, (b0, b1): (usize, usize)) -> (__m512, __m512) {
        // SAFETY: the caller's row and blocks are inside the weight.
        unsafe {
            let (s0, z0) = wt.sz(j, b0);
            if b0 == b1 {
                return (_mm512_set1_ps(s0), _mm512_set1_ps(z0));
            }
            let (s1, z1) = wt.sz(j, b1);
            let two = |a: f32, b: f32| {
                _mm512_castpd_ps(_mm512_insertf64x4(
                    _mm512_castps_pd(_mm512_set1_ps(a)),
                    _mm256_castps_pd(_mm256_set1_ps(b)),
                    1,
                ))
            };
            (two(s0, s1), two(z0, z1))
        }
    }

    /// The sum of a vector's lanes in [`hsum16`]'s order.
    #[inline(always)]
    unsafe fn reduce512(v: __m512) -> f32 {
        let lo = _mm512_castps512_ps256(v);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        reduce256(_mm256_add_ps(lo, hi))
    }

    /// Lanes 0–7 of a vector summed as [`hsum16`] sums what its first step left.
    #[inline(always)]
    unsafe fn reduce256(s8: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
    }

    /// C columns from `j` for R rows: each (row, column) sums its even and odd lanes apart.
    /// With `TABLE` (blocks of 32 and more), the weights are a permute of the block's table
    /// `(i − zero) · scale` for i < 16 — the same f32 operations on the same values, so the
    /// same bits as converting each nibble.
    #[inline(always)]
    unsafe fn columns512<const R: usize, const C: usize, const TABLE: bool>(
        xp: &[f32],
        kc: usize,
        wt: &Weight,
        j: usize,
    ) -> [[f32; C]; R] {
        // SAFETY: rows j..j+C are inside the weight; xp holds R rows of kc.
        unsafe {
            let mut even = [[_mm512_setzero_ps(); C]; R];
            let mut odd = [[_mm512_setzero_ps(); C]; R];
            let nib = _mm512_set1_epi32(15);
            let iota = _mm512_set_ps(
                15.0, 14.0, 13.0, 12.0, 11.0, 10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0,
                0.0,
            );
            let mut tables = [_mm512_setzero_ps(); C];
            let mut table_block = usize::MAX;
            let chunks = wt.chunks();
            let full = if wt.half_tail() { chunks - 1 } else { chunks };
            for ch in 0..chunks {
                let blocks = wt.blocks_of(ch);
                if TABLE && blocks.0 != table_block {
                    table_block = blocks.0;
                    for (q, t) in tables.iter_mut().enumerate() {
                        let (s, z) = wt.sz(j + q, table_block);
                        *t = _mm512_mul_ps(
                            _mm512_sub_ps(iota, _mm512_set1_ps(z)),
                            _mm512_set1_ps(s),
                        );
                    }
                }
                let mut xe = [_mm512_setzero_ps(); R];
                let mut xo = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    let x = xp.as_ptr().add(r * kc + ch * 32);
                    xe[r] = _mm512_loadu_ps(x);
                    xo[r] = _mm512_loadu_ps(x.add(16));
                }
                for q in 0..C {
                    let p = wt.w.add((j + q) * wt.bytes + ch * 16);
                    let bytes = if ch < full {
                        _mm_loadu_si128(p.cast())
                    } else {
                        _mm_loadl_epi64(p.cast())
                    };
                    let v = _mm512_cvtepu8_epi32(bytes);
                    let (lo, hi) = if TABLE {
                        // The permute reads each lane's low four bits: the low nibble as
                        // it is, the high one shifted down.
                        let lo = _mm512_permutexvar_ps(v, tables[q]);
                        (
                            lo,
                            _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tables[q]),
                        )
                    } else {
                        let lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, nib));
                        let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
                        let (s, z) = lanes512(wt, j + q, blocks);
                        let lo = _mm512_mul_ps(_mm512_sub_ps(lo, z), s);
                        (lo, _mm512_mul_ps(_mm512_sub_ps(hi, z), s))
                    };
                    for r in 0..R {
                        even[r][q] = _mm512_fmadd_ps(xe[r], lo, even[r][q]);
                        odd[r][q] = _mm512_fmadd_ps(xo[r], hi, odd[r][q]);
                    }
                }
            }
            let mut out = [[0f32; C]; R];
            for r in 0..R {
                for q in 0..C {
                    out[r][q] = reduce512(_mm512_add_ps(even[r][q], odd[r][q]));
                }
            }
            out
        }
    }

    /// Columns `j0..j1` of one reordered row (AVX2: each 16 lanes as two halves, two
    /// columns at a time), into `c[j]`.
    ///
    /// # Safety
    /// AVX2 and FMA; the columns are rows of the weight.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn range256(xp: &[f32], wt: &Weight, j0: usize, j1: usize, c: *mut f32) {
        let mut j = j0;
        // SAFETY: forwarded.
        unsafe {
            while j + 2 <= j1 {
                let s = columns256::<2>(xp, wt, j);
                *c.add(j) = s[0];
                *c.add(j + 1) = s[1];
                j += 2;
            }
            if j < j1 {
                *c.add(j) = columns256::<1>(xp, wt, j)[0];
            }
        }
    }

    #[inline(always)]
    unsafe fn columns256<const C: usize>(xp: &[f32], wt: &Weight, j: usize) -> [f32; C] {
        // SAFETY: rows j..j+C are inside the weight; xp holds the chunks.
        unsafe {
            // [column][even lanes 0–7, 8–15, odd lanes 0–7, 8–15]
            let mut acc = [[_mm256_setzero_ps(); 4]; C];
            let nib = _mm256_set1_epi32(15);
            let chunks = wt.chunks();
            let full = if wt.half_tail() { chunks - 1 } else { chunks };
            for ch in 0..chunks {
                let (b0, b1) = wt.blocks_of(ch);
                let x = xp.as_ptr().add(ch * 32);
                let xs = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(x.add(o)));
                for (q, acc) in acc.iter_mut().enumerate() {
                    let p = wt.w.add((j + q) * wt.bytes + ch * 16);
                    let first = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast()));
                    let second = if ch < full {
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8).cast()))
                    } else {
                        _mm256_setzero_si256()
                    };
                    let ((s0, z0), (s1, z1)) = (wt.sz(j + q, b0), wt.sz(j + q, b1));
                    let halves = [(first, s0, z0), (second, s1, z1)];
                    for (h, &(v, s, z)) in halves.iter().enumerate() {
                        let (s, z) = (_mm256_set1_ps(s), _mm256_set1_ps(z));
                        let lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, nib));
                        let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
                        let lo = _mm256_mul_ps(_mm256_sub_ps(lo, z), s);
                        let hi = _mm256_mul_ps(_mm256_sub_ps(hi, z), s);
                        acc[h] = _mm256_fmadd_ps(xs[h], lo, acc[h]);
                        acc[2 + h] = _mm256_fmadd_ps(xs[2 + h], hi, acc[2 + h]);
                    }
                }
            }
            let mut out = [0f32; C];
            for (q, a) in acc.iter().enumerate() {
                // Lanes 0–15 are even + odd; then lane i with i+8, and on.
                let first = _mm256_add_ps(a[0], a[2]);
                let second = _mm256_add_ps(a[1], a[3]);
                out[q] = reduce256(_mm256_add_ps(first, second));
            }
            let _ = hsum16;
            out
        }
    }

    /// A full panel of 16 rows of the weight from row `jb`, values `pc..pc+kc`, dequantized
    /// into `dst[l*16 + jj]`: one gather brings eight values of each of the 16 rows.
    ///
    /// # Safety
    /// AVX-512F; the rows and values are inside the weight; `dst` holds `16·kc`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn panel512(wt: &Weight, jb: usize, pc: usize, kc: usize, dst: &mut [f32]) {
        // SAFETY: forwarded; gathers read 4 bytes from byte l/2 of each row, inside it
        // while l + 8 <= the row's values (the rest go one value at a time).
        unsafe {
            let rows = _mm512_mullo_epi32(
                _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                _mm512_set1_epi32(wt.bytes as i32),
            );
            let sz_rows = _mm512_mullo_epi32(
                _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                _mm512_set1_epi32(wt.blocks as i32),
            );
            let base = wt.w.add(jb * wt.bytes);
            let nib = _mm512_set1_epi32(15);
            let mut l = 0;
            let mut block = usize::MAX;
            let (mut s, mut z) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            while l < kc {
                let at = pc + l;
                let whole = at.is_multiple_of(2) && l + 8 <= kc && at % wt.block + 8 <= wt.block;
                if !whole {
                    for jj in 0..16 {
                        dst[l * 16 + jj] = wt.value(jb + jj, at);
                    }
                    l += 1;
                    continue;
                }
                if at / wt.block != block {
                    block = at / wt.block;
                    let idx = _mm512_add_epi32(sz_rows, _mm512_set1_epi32(block as i32));
                    let sb = wt.scale.add(jb * wt.blocks);
                    let zb = wt.zero.add(jb * wt.blocks);
                    s = _mm512_i32gather_ps::<4>(idx, sb.cast());
                    z = _mm512_i32gather_ps::<4>(idx, zb.cast());
                }
                let g = _mm512_i32gather_epi32::<1>(
                    _mm512_add_epi32(rows, _mm512_set1_epi32((at / 2) as i32)),
                    base.cast(),
                );
                for t in 0..8 {
                    let q = _mm512_and_si512(_mm512_srlv_epi32(g, _mm512_set1_epi32(4 * t)), nib);
                    let v = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(q), z), s);
                    _mm512_storeu_ps(dst.as_mut_ptr().add((l + t as usize) * 16), v);
                }
                l += 8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A weight of `n` rows for `k` values in blocks of `block`, with its scales and zero
    /// points (some zero points fractional, as MatMulNBits allows).
    fn weight(n: usize, k: usize, block: usize, seed: u32) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let blocks = k.div_ceil(block);
        let mut s = seed;
        let mut next = move || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            s >> 8
        };
        let w: Vec<u8> = (0..n * blocks * block / 2).map(|_| next() as u8).collect();
        let scale: Vec<f32> = (0..n * blocks)
            .map(|_| (next() % 1000) as f32 / 3000.0 + 0.01)
            .collect();
        let zero: Vec<f32> = (0..n * blocks)
            .map(|i| (next() % 16) as f32 + if i % 7 == 0 { 0.5 } else { 0.0 })
            .collect();
        (w, scale, zero)
    }

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        if crate::avx2_fma() {
            v.push(Isa::Avx2);
        }
        if crate::avx512() {
            v.push(Isa::Avx512);
        }
        v
    }

    /// A block `qdot4` does not admit (a damaged kernel) stores NaN, reading nothing.
    #[test]
    fn qgemm4_refuses_other_blocks() {
        let (w, s, z) = ([0u8; 4], [1f32; 1], [0f32; 1]);
        let x = [1f32; 8];
        for block in [0usize, 8, 24] {
            let mut c = [0f32; 1];
            // SAFETY: nothing is read for such a block.
            unsafe {
                product(
                    isa(),
                    x.as_ptr(),
                    w.as_ptr(),
                    (s.as_ptr(), z.as_ptr()),
                    c.as_mut_ptr(),
                    [8, 1, 1, 1, 8, block],
                    false,
                    &Epilogue::NONE,
                )
            };
            assert!(c[0].is_nan(), "block {block}");
        }
        assert!(dequantized_b(&w, &s, &z, 1, 8, 8).is_none());
    }

    /// A case's weight, its rows and the `Weight` over them.
    struct Case {
        w: Vec<u8>,
        scale: Vec<f32>,
        zero: Vec<f32>,
        x: Vec<f32>,
        dims: (usize, usize, usize, usize),
    }

    impl Case {
        fn new((m, n, k, block): (usize, usize, usize, usize), seed: u32, x: Vec<f32>) -> Case {
            let (w, scale, zero) = weight(n, k, block, seed);
            Case {
                w,
                scale,
                zero,
                x,
                dims: (m, n, k, block),
            }
        }

        fn weight(&self) -> Weight {
            let (_, _, k, block) = self.dims;
            Weight {
                w: self.w.as_ptr(),
                scale: self.scale.as_ptr(),
                zero: self.zero.as_ptr(),
                bytes: k.div_ceil(block) * block / 2,
                blocks: k.div_ceil(block),
                block,
            }
        }

        /// Each path's result (`run` gives it, `None` where the CPU lacks the path) against
        /// f64 sums of the rows `xs` by the dequantized weight, and the same bits from every
        /// path as from the first.
        fn check<I: std::fmt::Debug>(
            &self,
            xs: &[f32],
            paths: &[I],
            run: impl Fn(&I, &mut [f32]) -> bool,
        ) {
            let (m, n, k, block) = self.dims;
            let wt = self.weight();
            let mut first: Option<Vec<f32>> = None;
            for path in paths {
                let mut c = vec![f32::NAN; m * n];
                if !run(path, &mut c) {
                    continue;
                }
                for i in 0..m {
                    for j in 0..n {
                        let (mut sum, mut abs) = (0f64, 0f64);
                        for l in 0..k {
                            // SAFETY: inside the weight.
                            let v = f64::from(unsafe { wt.value(j, l) }) * f64::from(xs[i * k + l]);
                            sum += v;
                            abs += v.abs();
                        }
                        let got = c[i * n + j];
                        assert!(
                            (f64::from(got) - sum).abs() <= 1e-5 * abs + 1e-6,
                            "{path:?} {m}×{n}×{k} block {block}: ({i}, {j}) is {got} not {sum}"
                        );
                    }
                }
                match &first {
                    None => first = Some(c),
                    Some(f) => assert!(
                        f.iter().zip(&c).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{path:?} {m}×{n}×{k} block {block}: bits differ from the first path"
                    ),
                }
            }
        }
    }

    /// Every path against f64 sums of the dequantized weight, and the same bits on every
    /// ISA: rows 1–4 (streaming) and more (panels), blocks of 16 to 128, K not a multiple of
    /// the block, half chunks.
    #[test]
    fn qgemm4_matches_sums_on_every_isa() {
        for &(m, n, k, block) in &[
            (1, 7, 16, 16),
            (1, 33, 100, 32),
            (2, 17, 48, 16),
            (3, 9, 200, 64),
            (4, 21, 256, 128),
            (5, 19, 72, 16),
            (7, 40, 300, 32),
            (13, 70, 520, 128),
            (1, 300, 1024, 32),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let case = Case::new((m, n, k, block), (m * 31 + n * 7 + k) as u32, x);
            case.check(&case.x, &isas(), |&isa, c| {
                // SAFETY: the operands hold what the dims say.
                unsafe {
                    product(
                        isa,
                        case.x.as_ptr(),
                        case.w.as_ptr(),
                        (case.scale.as_ptr(), case.zero.as_ptr()),
                        c.as_mut_ptr(),
                        [k, n, m, n, k, block],
                        false,
                        &Epilogue::NONE,
                    )
                };
                true
            });
        }
    }

    /// Int8 rows (`quantize_x`): every ISA against f64 sums of the rows as they quantize by
    /// the dequantized weight, with the same bits on every ISA; blocks of 16 to 256, K not a
    /// multiple of the block nor of a unit, one to six rows.
    #[test]
    fn int8_rows_match_sums_on_every_isa() {
        for &(m, n, k, block) in &[
            (1, 7, 16, 16),
            (1, 33, 100, 32),
            (2, 17, 48, 16),
            (3, 9, 200, 64),
            (4, 21, 256, 128),
            (6, 19, 300, 32),
            (1, 40, 520, 256),
            (5, 70, 1000, 16),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 19.0)
                .collect();
            let case = Case::new((m, n, k, block), (m * 13 + n * 5 + k) as u32, x);
            let xq: Vec<f32> = (case.x.chunks(k))
                .flat_map(|r| dequantized_row(r, block))
                .collect();
            let wt = case.weight();
            let paths = [q8::Isa::Portable, q8::Isa::Avx2, q8::Isa::Vnni];
            case.check(&xq, &paths, |&isa, c| {
                let runs = match isa {
                    q8::Isa::Portable => true,
                    q8::Isa::Avx2 => crate::avx2_fma(),
                    q8::Isa::Vnni => crate::avx512_vnni(),
                };
                // SAFETY: the operands hold what the dims say.
                let ptrs = (case.x.as_ptr(), c.as_mut_ptr());
                if runs {
                    unsafe {
                        q8::product(isa, ptrs.0, k, m, k, &wt, ptrs.1, n, n, &Epilogue::NONE)
                    };
                }
                runs
            });
        }
    }
}
