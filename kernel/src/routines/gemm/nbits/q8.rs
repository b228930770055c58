//! `qdot4` with int8 activations (MatMulNBits' `accuracy_level` 4, `quantize_x`): each
//! block of a row quantized to int8 at run time ([`quantize_block`], the interpreter's
//! definition too), then the integer products of those bytes with the weight's nibbles
//! summed exactly in i32 — `vpdpbusd` (AVX-512 VNNI), `vpmaddubsw` then `vpmaddwd` (AVX2;
//! 15·127·2 never saturates an i16), or scalar — and scaled per block in f32.
//!
//! The unit is 64 packed bytes (128 values) as 16 lanes, lane `L` the 8 values from
//! `128u + 8L` (its 4 low nibbles against the row's even values, its 4 high ones against
//! the odd: the row is reordered once a call so both are consecutive bytes). Every lane
//! lies in one block (blocks are powers of two from 16), so it computes
//! `acc += ((Σ q·w) − z·Σ q) · (s_w · s_x)` with its block's weight scale and zero point
//! and the row's block scale — the same f32 operations, fused the same way, on every path:
//! the lanes' sums are added in [`super::hsum16`]'s order, so results are the same bits on
//! every ISA and for any split of the columns over threads. What differs from the
//! interpreter, which sums the dequantized products in f64, is rounding only.

use super::{hsum16, Weight};
use crate::routines::epilogue::Epilogue;

/// Values a unit holds.
const UNIT: usize = 128;

/// The largest quantized magnitude.
const QMAX: f32 = 127.0;

/// One block of a row quantized symmetrically to int8, the way onnxruntime's int8 compute
/// does: `s = max|x| / 127`, `q = round(x · (127 / max|x|))` half to even (0 for a block of
/// zeros; NaN elements count for nothing in the maximum and quantize to 0). Returns `s`.
pub fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { quantize_block_avx2(x, q) };
    }
    quantize_block_any(x, q)
}

/// [`quantize_block`] compiled for AVX2 (the same operations: rounding and maxima are
/// single instructions there, library calls in baseline code).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_block_avx2(x: &[f32], q: &mut [i8]) -> f32 {
    quantize_block_any(x, q)
}

#[inline(always)]
fn quantize_block_any(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let inv = if amax > 0.0 { QMAX / amax } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(x) {
        // `as` saturates and maps NaN to 0; the value is inside ±127 already.
        *q = (v * inv).round_ties_even().clamp(-QMAX, QMAX) as i8;
    }
    amax / QMAX
}

/// The row as it is quantized (`x'[l] = q[l] · s` of its block): what `quantize_x` means.
pub fn dequantized_row(x: &[f32], block: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    dequantize_row_into(x, block, &mut out);
    out
}

/// [`dequantized_row`] into `out` (as long as `x`).
pub fn dequantize_row_into(x: &[f32], block: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { dequantize_row_avx2(x, block, out) };
    }
    dequantize_row_any(x, block, out)
}

/// [`dequantize_row_into`] in AVX2 for blocks of whole vectors (the same values: the
/// hardware's maximum passes over NaN as `f32::max` does, a rounded NaN becomes 0 and −0
/// becomes +0 as through the integer).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dequantize_row_avx2(x: &[f32], block: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    if !block.is_multiple_of(8) {
        return dequantize_row_any(x, block, out);
    }
    let whole = x.len() / block * block;
    let sign = _mm256_set1_ps(-0.0);
    let (lo, hi) = (_mm256_set1_ps(-QMAX), _mm256_set1_ps(QMAX));
    for (xs, os) in x[..whole]
        .chunks_exact(block)
        .zip(out.chunks_exact_mut(block))
    {
        // SAFETY: 8 floats at a time inside the block.
        unsafe {
            let mut m = _mm256_setzero_ps();
            for v in xs.chunks_exact(8) {
                let a = _mm256_andnot_ps(sign, _mm256_loadu_ps(v.as_ptr()));
                // The second operand when either is NaN: NaN counts for nothing.
                m = _mm256_max_ps(a, m);
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), m);
            let amax = lanes.iter().fold(0f32, |a, &b| a.max(b));
            let inv = _mm256_set1_ps(if amax > 0.0 { QMAX / amax } else { 0.0 });
            let s = _mm256_set1_ps(amax / QMAX);
            for (v, o) in xs.chunks_exact(8).zip(os.chunks_exact_mut(8)) {
                let t = _mm256_mul_ps(_mm256_loadu_ps(v.as_ptr()), inv);
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
                // NaN stays NaN through these (the second operand), then is masked to 0.
                let r = _mm256_min_ps(hi, _mm256_max_ps(lo, r));
                let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
                let r = _mm256_add_ps(r, _mm256_setzero_ps());
                _mm256_storeu_ps(o.as_mut_ptr(), _mm256_mul_ps(r, s));
            }
        }
    }
    dequantize_row_any(&x[whole..], block, &mut out[whole..]);
}

#[inline(always)]
fn dequantize_row_any(x: &[f32], block: usize, out: &mut [f32]) {
    let mut q = vec![0i8; block.max(1)];
    for (xs, os) in x.chunks(block.max(1)).zip(out.chunks_mut(block.max(1))) {
        let s = quantize_block_any(xs, &mut q[..xs.len()]);
        for (o, &v) in os.iter_mut().zip(&q) {
            *o = f32::from(v) * s;
        }
    }
}

/// A row quantized and laid out for the kernels: per unit, 64 bytes of its even values then
/// 64 of its odd, each lane's sum of values and its block's scale.
struct Row {
    q: Vec<i8>,
    sums: Vec<f32>,
    scales: Vec<f32>,
}

impl Row {
    fn new(x: &[f32], units: usize, block: usize) -> Row {
        let mut plain = vec![0i8; units * UNIT];
        let mut row_scales = Vec::with_capacity(x.len().div_ceil(block));
        for (b, xs) in x.chunks(block).enumerate() {
            row_scales.push(quantize_block(xs, &mut plain[b * block..][..xs.len()]));
        }
        let mut q = vec![0i8; units * UNIT];
        let mut sums = vec![0f32; units * 16];
        let mut scales = vec![0f32; units * 16];
        for u in 0..units {
            let (src, dst) = (&plain[u * UNIT..][..UNIT], &mut q[u * UNIT..][..UNIT]);
            for t in 0..64 {
                dst[t] = src[2 * t];
                dst[64 + t] = src[2 * t + 1];
            }
            for lane in 0..16 {
                let vals = &src[8 * lane..][..8];
                sums[u * 16 + lane] = vals.iter().map(|&v| i32::from(v)).sum::<i32>() as f32;
                let b = (u * UNIT + 8 * lane) / block;
                scales[u * 16 + lane] = row_scales.get(b).copied().unwrap_or(0.0);
            }
        }
        Row { q, sums, scales }
    }
}

/// Which code runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Isa {
    Portable,
    Avx2,
    Vnni,
}

/// The best code this CPU runs.
pub fn isa() -> Isa {
    if crate::avx512_vnni() {
        Isa::Vnni
    } else if crate::avx2_fma() {
        Isa::Avx2
    } else {
        Isa::Portable
    }
}

/// `c[i*ldc + j]` for `i < m`, `j < n`: rows of `a` (`a_rs` apart, `k` values) quantized
/// per block, by the weight, through the epilogue.
///
/// # Safety
/// As `super::product`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn product(
    isa: Isa,
    a: *const f32,
    a_rs: usize,
    m: usize,
    k: usize,
    wt: &Weight,
    c: *mut f32,
    ldc: usize,
    n: usize,
    epi: &Epilogue,
) {
    let units = k.div_ceil(UNIT);
    let rows: Vec<Row> = (0..m)
        .map(|i| {
            // SAFETY: row i of a holds k elements.
            let x = unsafe { std::slice::from_raw_parts(a.add(i * a_rs), k) };
            Row::new(x, units, wt.block)
        })
        .collect();
    let parts = super::streaming_parts(n, k);
    let (rows, c_addr) = (&rows, c as usize);
    crate::threads::parallel_for(parts, |p| {
        let (j0, j1) = (n * p / parts, n * (p + 1) / parts);
        let c = c_addr as *mut f32;
        for r0 in (0..m).step_by(super::THIN) {
            let group = &rows[r0..m.min(r0 + super::THIN)];
            // SAFETY: the part's columns are rows of the weight; c holds rows ldc apart.
            unsafe { columns(isa, group, units, wt, (j0, j1), c.add(r0 * ldc), ldc) };
        }
        // SAFETY: the part's columns of every row.
        unsafe { epi.block_at((0, j0, j0), c.add(j0), ldc, m, j1 - j0) };
    });
}

/// Columns `j..j1` against up to four quantized rows, into `c` (rows `ldc` apart).
///
/// # Safety
/// The columns are rows of the weight; `c` holds the rows; the CPU runs `isa`.
#[allow(clippy::too_many_arguments)]
unsafe fn columns(
    isa: Isa,
    rows: &[Row],
    units: usize,
    wt: &Weight,
    (j0, j1): (usize, usize),
    c: *mut f32,
    ldc: usize,
) {
    let mut j = j0;
    let store = |j: usize, sums: &[[f32; 4]]| {
        for (q, col) in sums.iter().enumerate() {
            for (r, &s) in col.iter().take(rows.len()).enumerate() {
                // SAFETY: row r, column j + q of c.
                unsafe { *c.add(r * ldc + j + q) = s };
            }
        }
    };
    // SAFETY: forwarded; every group's columns are inside j0..j1.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Vnni {
            // Columns in groups (4 for one row, 2 for two), then one at a time.
            let width = match rows.len() {
                1 => 4,
                2 => 2,
                _ => 1,
            };
            while j < j1 {
                let whole = j1 - j >= width;
                match (rows.len(), whole) {
                    (1, true) => store(j, &x86::columns_vnni::<1, 4>(rows, units, wt, j)),
                    (2, true) => store(j, &x86::columns_vnni::<2, 2>(rows, units, wt, j)),
                    (1, false) => store(j, &x86::columns_vnni::<1, 1>(rows, units, wt, j)),
                    (2, false) => store(j, &x86::columns_vnni::<2, 1>(rows, units, wt, j)),
                    (3, _) => store(j, &x86::columns_vnni::<3, 1>(rows, units, wt, j)),
                    _ => store(j, &x86::columns_vnni::<4, 1>(rows, units, wt, j)),
                }
                j += if whole { width } else { 1 };
            }
            return;
        }
        while j < j1 {
            let sums = match (isa, rows.len()) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2, 1) => x86::column_avx2::<1>(rows, units, wt, j),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2, 2) => x86::column_avx2::<2>(rows, units, wt, j),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2, 3) => x86::column_avx2::<3>(rows, units, wt, j),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2, _) => x86::column_avx2::<4>(rows, units, wt, j),
                _ => column_portable(rows, units, wt, j),
            };
            store(j, &[sums]);
            j += 1;
        }
    }
}

/// The first block of unit `u` and the block of each lane counted from it (lane `L` holds
/// values from `128u + 8L`; `block` a power of two, so the offsets are the same for every
/// unit: [`lane_offsets`]).
#[inline(always)]
fn unit_blocks(u: usize, block: usize, off: &[u32; 16]) -> (usize, [u32; 16]) {
    ((u * UNIT) >> block.trailing_zeros(), *off)
}

/// Each lane's block counted from its unit's first.
fn lane_offsets(block: usize) -> [u32; 16] {
    std::array::from_fn(|lane| (8 * lane / block) as u32)
}

/// The weight's scale and zero point of each lane of unit `u` of row `j` (0 for lanes past
/// the row's blocks, which multiply only zeros).
///
/// # Safety
/// `j` is a row of the weight.
unsafe fn lane_params(wt: &Weight, j: usize, u: usize) -> ([f32; 16], [f32; 16]) {
    let (mut s, mut z) = ([0f32; 16], [0f32; 16]);
    let (base, off) = unit_blocks(u, wt.block, &lane_offsets(wt.block));
    for lane in 0..16 {
        let b = base + off[lane] as usize;
        if b < wt.blocks {
            // SAFETY: j and b are inside the weight.
            (s[lane], z[lane]) = unsafe { wt.sz(j, b) };
        }
    }
    (s, z)
}

/// One lane's step: `acc + ((Σ q·w) − z·Σ q) · (s_w · s_x)`, both fused.
#[inline(always)]
fn step(acc: f32, sum: i32, (sw, zw): (f32, f32), (qs, sx): (f32, f32)) -> f32 {
    let t = (-zw).mul_add(qs, sum as f32);
    t.mul_add(sw * sx, acc)
}

/// One column in scalar code (the vector paths' lanes and operations).
///
/// # Safety
/// `j` is a row of the weight.
unsafe fn column_portable(rows: &[Row], units: usize, wt: &Weight, j: usize) -> [f32; 4] {
    let mut acc = [[0f32; 16]; 4];
    for u in 0..units {
        let at = u * 64;
        let len = 64.min(wt.bytes.saturating_sub(at));
        // SAFETY: the row holds `len` bytes from `at`; forwarded.
        let (bytes, (sw, zw)) = unsafe {
            (
                std::slice::from_raw_parts(wt.w.add(j * wt.bytes + at), len),
                lane_params(wt, j, u),
            )
        };
        for (r, row) in rows.iter().enumerate() {
            let q = &row.q[u * UNIT..][..UNIT];
            let mut sums = [0i32; 16];
            for (t, &byte) in bytes.iter().enumerate() {
                let (lo, hi) = (i32::from(byte & 15), i32::from(byte >> 4));
                sums[t / 4] += lo * i32::from(q[t]) + hi * i32::from(q[64 + t]);
            }
            let (qs, sx) = (&row.sums[u * 16..][..16], &row.scales[u * 16..][..16]);
            for lane in 0..16 {
                let (p, x) = ((sw[lane], zw[lane]), (qs[lane], sx[lane]));
                acc[r][lane] = step(acc[r][lane], sums[lane], p, x);
            }
        }
    }
    std::array::from_fn(|r| hsum16(acc[r]))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{hsum16, lane_offsets, unit_blocks, Row, Weight, UNIT};
    use std::arch::x86_64::*;

    /// The unit's 64 bytes of row `j` (zeros past the row's end).
    ///
    /// # Safety
    /// `j` is a row of the weight.
    #[inline(always)]
    unsafe fn unit_bytes(wt: &Weight, j: usize, u: usize) -> [u8; 64] {
        let at = u * 64;
        let len = 64.min(wt.bytes.saturating_sub(at));
        let mut b = [0u8; 64];
        // SAFETY: the row holds `len` bytes from `at`.
        unsafe { std::ptr::copy_nonoverlapping(wt.w.add(j * wt.bytes + at), b.as_mut_ptr(), len) };
        b
    }

    /// [`super::column`] by `vpdpbusd` for columns `j..j + C`: 16 lanes a vector.
    ///
    /// # Safety
    /// AVX-512 BW and VNNI, FMA; the columns rows of the weight; `rows` holds `R` rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn columns_vnni<const R: usize, const C: usize>(
        rows: &[Row],
        units: usize,
        wt: &Weight,
        j: usize,
    ) -> [[f32; 4]; C] {
        let mut acc = [[_mm512_setzero_ps(); R]; C];
        let mask = _mm512_set1_epi8(15);
        let full = wt.bytes / 64;
        let off = lane_offsets(wt.block);
        // SAFETY: 16 u32s.
        let idx = unsafe { _mm512_loadu_si512(off.as_ptr().cast()) };
        // SAFETY: every access is inside the weight's rows j.., their scales and zero
        // points, or the rows' units.
        unsafe {
            for u in 0..units {
                let (base, _) = unit_blocks(u, wt.block, &off);
                let have = wt.blocks.saturating_sub(base).min(16);
                let m = ((1u32 << have) - 1) as u16;
                for (c, acc) in acc.iter_mut().enumerate() {
                    let jc = j + c;
                    let w = if u < full {
                        _mm512_loadu_si512(wt.w.add(jc * wt.bytes + u * 64).cast())
                    } else {
                        _mm512_loadu_si512(unit_bytes(wt, jc, u).as_ptr().cast())
                    };
                    let lo = _mm512_and_si512(w, mask);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(w), mask);
                    let at = jc * wt.blocks + base;
                    let sw = _mm512_maskz_loadu_ps(m, wt.scale.add(at));
                    let zw = _mm512_maskz_loadu_ps(m, wt.zero.add(at));
                    let (sw, zw) = (
                        _mm512_permutexvar_ps(idx, sw),
                        _mm512_permutexvar_ps(idx, zw),
                    );
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let row = &rows[r];
                        let q = row.q.as_ptr().add(u * UNIT);
                        let even = _mm512_loadu_si512(q.cast());
                        let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, even);
                        let s = _mm512_dpbusd_epi32(s, hi, _mm512_loadu_si512(q.add(64).cast()));
                        let qs = _mm512_loadu_ps(row.sums.as_ptr().add(u * 16));
                        let sx = _mm512_loadu_ps(row.scales.as_ptr().add(u * 16));
                        let t = _mm512_fnmadd_ps(zw, qs, _mm512_cvtepi32_ps(s));
                        *acc = _mm512_fmadd_ps(t, _mm512_mul_ps(sw, sx), *acc);
                    }
                }
            }
        }
        let mut out = [[0f32; 4]; C];
        for (o, acc) in out.iter_mut().zip(&acc) {
            for (r, acc) in acc.iter().enumerate() {
                let mut v = [0f32; 16];
                // SAFETY: 16 floats.
                unsafe { _mm512_storeu_ps(v.as_mut_ptr(), *acc) };
                o[r] = hsum16(v);
            }
        }
        out
    }

    /// One column by `vpmaddubsw` and `vpmaddwd`: 16 lanes as two halves of 8.
    ///
    /// # Safety
    /// AVX2 and FMA; `j` a row of the weight; `rows` holds `R` rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn column_avx2<const R: usize>(
        rows: &[Row],
        units: usize,
        wt: &Weight,
        j: usize,
    ) -> [f32; 4] {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let mask = _mm256_set1_epi8(15);
        let ones = _mm256_set1_epi16(1);
        let off = lane_offsets(wt.block);
        let full = wt.bytes / 64;
        // SAFETY: every access is inside the weight's row j, its scales and zero points, or
        // the rows' units.
        unsafe {
            for u in 0..units {
                let tail;
                let bytes = if u < full {
                    wt.w.add(j * wt.bytes + u * 64)
                } else {
                    tail = unit_bytes(wt, j, u);
                    tail.as_ptr()
                };
                let (base, off) = unit_blocks(u, wt.block, &off);
                let have = wt.blocks.saturating_sub(base).min(8) as i32;
                // Lanes of the first `have` blocks (no lane's block is past 8 from the base).
                let m = _mm256_cmpgt_epi32(
                    _mm256_set1_epi32(have),
                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                );
                let at = j * wt.blocks + base;
                let sv = _mm256_maskload_ps(wt.scale.add(at), m);
                let zv = _mm256_maskload_ps(wt.zero.add(at), m);
                for h in 0..2 {
                    let w = _mm256_loadu_si256(bytes.add(32 * h).cast());
                    let lo = _mm256_and_si256(w, mask);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(w), mask);
                    let idx = _mm256_loadu_si256(off.as_ptr().add(8 * h).cast());
                    let sw = _mm256_permutevar8x32_ps(sv, idx);
                    let zw = _mm256_permutevar8x32_ps(zv, idx);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let row = &rows[r];
                        let q = row.q.as_ptr().add(u * UNIT + 32 * h);
                        // u8 · i8 pairs: at most 2·15·127 in magnitude, exact in i16 (and
                        // two of them summed).
                        let p = _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo, _mm256_loadu_si256(q.cast())),
                            _mm256_maddubs_epi16(hi, _mm256_loadu_si256(q.add(64).cast())),
                        );
                        let s = _mm256_madd_epi16(p, ones);
                        let qs = _mm256_loadu_ps(row.sums.as_ptr().add(u * 16 + 8 * h));
                        let sx = _mm256_loadu_ps(row.scales.as_ptr().add(u * 16 + 8 * h));
                        let t = _mm256_fnmadd_ps(zw, qs, _mm256_cvtepi32_ps(s));
                        acc[h] = _mm256_fmadd_ps(t, _mm256_mul_ps(sw, sx), acc[h]);
                    }
                }
            }
        }
        let mut out = [0f32; 4];
        for (r, acc) in acc.iter().enumerate() {
            let mut v = [0f32; 16];
            // SAFETY: 8 floats each.
            unsafe {
                _mm256_storeu_ps(v.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(v.as_mut_ptr().add(8), acc[1]);
            }
            out[r] = hsum16(v);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector rows are the scalar definition's, bit for bit: NaNs, infinities, signed
    /// zeros, ties, blocks of zeros, a partial last block.
    #[test]
    fn vector_rows_are_the_definition() {
        let mut seed = 0x9e37_79b9u32;
        let mut x: Vec<f32> = (0..1000)
            .map(|i| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                match i % 97 {
                    5 => f32::NAN,
                    11 => -0.0,
                    17 => f32::INFINITY,
                    23 => 0.5,
                    _ => (seed >> 8) as f32 / (1 << 24) as f32 * 8.0 - 4.0,
                }
            })
            .collect();
        x[64..96].fill(0.0);
        x[96..128].fill(-0.0);
        for block in [16, 32, 64, 128] {
            let mut want = vec![0f32; x.len()];
            dequantize_row_any(&x, block, &mut want);
            let got = dequantized_row(&x, block);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan(),
                    "block {block}, element {i}: {a} against {b}"
                );
            }
        }
    }

    #[test]
    fn blocks_quantize_as_onnxruntime_does() {
        let mut q = [0i8; 6];
        let s = quantize_block(&[1.0, -2.0, 0.5, 2.0 / 127.0 * 63.5, f32::NAN, 0.0], &mut q);
        assert_eq!(s, 2.0 / 127.0);
        // 63.5 rounds half to even; NaN quantizes to 0.
        assert_eq!(q, [64, -127, 32, 64, 0, 0]);
        let mut z = [5i8; 3];
        assert_eq!(quantize_block(&[0.0, -0.0, 0.0], &mut z), 0.0);
        assert_eq!(z, [0, 0, 0]);
    }
}
