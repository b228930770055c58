//! AVX2: bytes widened to i16 and multiplied in pairs by `vpmaddwd` (exact i32 sums, unlike
//! `vpmaddubsw`'s saturating ones). A block goes by chunks of [`KC`] steps of k: the rows'
//! chunk widened to i16, the two panels' chunk widened into pair order (for each two steps,
//! each column's two values side by side), both in L1; then tiles of up to six rows by a
//! panel's 16 columns keep their sums in registers, a step one broadcast pair of a row
//! times two vectors of eight columns — every lane one column's sum, nothing added across
//! lanes. One or two rows read B's bytes as packed instead (`row_by_row`: widening B would
//! cost more than their sums).

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::NR;

/// Steps of k a chunk: 32 columns' widened pairs (8 KiB) and the rows' (up to 8 KiB).
const KC: usize = 128;

thread_local! {
    /// A chunk of the block's rows as i16, then of both panels in pair order.
    static WIDE: RefCell<Vec<i16>> = const { RefCell::new(Vec::new()) };
}

/// 32 rows of A (`kp` bytes apart; the first `r` real) by two panels into `acc`, over the
/// first `groups` groups of four steps of k (the rest are zeros).
///
/// # Safety
/// As `super::block`; the CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn block(
    a: *const u8,
    b: *const i8,
    kp: usize,
    groups: usize,
    r: usize,
    acc: &mut [i32],
) {
    if r <= 2 {
        // SAFETY: forwarded.
        return unsafe { row_by_row(a, b, kp, groups, r, acc) };
    }
    acc.fill(0);
    let k = 4 * groups;
    WIDE.with(|wide| {
        let mut wide = wide.borrow_mut();
        wide.resize(32 * KC + 2 * NR * KC, 0);
        let (rows, panels) = wide.split_at_mut(32 * KC);
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            // SAFETY: rows 0..r hold kp ≥ k0 + kc (rounded up to 16) bytes; both panels hold
            // kp steps; the buffers hold a chunk of 32 rows and of two panels.
            unsafe {
                for i in 0..r {
                    widen(a.add(i * kp + k0), kc, rows[i * KC..].as_mut_ptr());
                }
                pairs(b, kp, k0, kc, panels.as_mut_ptr());
            }
            for p in 0..2 {
                let bw = panels[p * NR * KC..].as_ptr();
                let mut i = 0;
                while i < r {
                    let h = 6.min(r - i);
                    let out = &mut acc[i * 2 * NR + p * NR..];
                    let aw = rows[i * KC..].as_ptr();
                    // SAFETY: rows i..i + h and the panel hold kc steps; `out` holds h rows
                    // of 32 sums from column p·16.
                    unsafe {
                        match h {
                            6 => tile::<6>(aw, bw, kc, out),
                            5 => tile::<5>(aw, bw, kc, out),
                            4 => tile::<4>(aw, bw, kc, out),
                            3 => tile::<3>(aw, bw, kc, out),
                            2 => tile::<2>(aw, bw, kc, out),
                            _ => tile::<1>(aw, bw, kc, out),
                        }
                    }
                    i += h;
                }
            }
        }
    });
}

/// `len` bytes from `a` (readable up to `len` rounded up to 16) zero-extended to i16.
///
/// # Safety
/// AVX2; as above, `out` writable for `len` rounded up to 16.
#[target_feature(enable = "avx2")]
unsafe fn widen(a: *const u8, len: usize, out: *mut i16) {
    for x in (0..len).step_by(16) {
        // SAFETY: inside both.
        unsafe {
            let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(a.add(x).cast()));
            _mm256_storeu_si256(out.add(x).cast(), v);
        }
    }
}

/// Steps `k0..k0 + kc` of two packed panels as i16 in pair order: panel p's pair s at
/// `out[(p·KC/2 + s)·32..]`, column c's two values at `2c`, `2c + 1`.
///
/// # Safety
/// AVX2; the panels hold kp steps past k0 + kc; `out` holds two panels of KC steps.
#[target_feature(enable = "avx2")]
unsafe fn pairs(b: *const i8, kp: usize, k0: usize, kc: usize, out: *mut i16) {
    // A quad of columns' 16 bytes → steps 4g, 4g + 1 of each column, then 4g + 2, 4g + 3.
    let order = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    for p in 0..2 {
        for g in 0..kc / 4 {
            let src = b.wrapping_add(p * NR * kp + (k0 / 4 + g) * 4 * NR);
            let dst = out.wrapping_add((p * KC / 2 + 2 * g) * 32);
            for q in 0..4 {
                // SAFETY: the group and its two pairs of steps are inside both.
                unsafe {
                    let x = _mm_shuffle_epi8(_mm_loadu_si128(src.add(q * 16).cast()), order);
                    _mm_storeu_si128(dst.add(q * 8).cast(), _mm_cvtepi8_epi16(x));
                    let hi = _mm_cvtepi8_epi16(_mm_srli_si128::<8>(x));
                    _mm_storeu_si128(dst.add(32 + q * 8).cast(), hi);
                }
            }
        }
    }
}

/// `H` rows of i16 A (`KC` apart) by a panel in pair order, `kc` steps, added into `out`
/// (rows 32 apart).
///
/// # Safety
/// AVX2; the rows and the panel hold `kc` steps; `out` holds `H` rows of 16.
#[target_feature(enable = "avx2")]
unsafe fn tile<const H: usize>(a: *const i16, b: *const i16, kc: usize, out: &mut [i32]) {
    // SAFETY: row i's 16 columns.
    let mut s: [[__m256i; 2]; H] = std::array::from_fn(|i| unsafe {
        [
            _mm256_loadu_si256(out[i * 2 * NR..].as_ptr().cast()),
            _mm256_loadu_si256(out[i * 2 * NR + 8..].as_ptr().cast()),
        ]
    });
    for p in 0..kc / 2 {
        // SAFETY: step pair p of the panel and of every row.
        unsafe {
            let b0 = _mm256_loadu_si256(b.add(32 * p).cast());
            let b1 = _mm256_loadu_si256(b.add(32 * p + 16).cast());
            for (i, s) in s.iter_mut().enumerate() {
                let x = _mm256_set1_epi32(a.add(i * KC + 2 * p).cast::<i32>().read_unaligned());
                s[0] = _mm256_add_epi32(s[0], _mm256_madd_epi16(x, b0));
                s[1] = _mm256_add_epi32(s[1], _mm256_madd_epi16(x, b1));
            }
        }
    }
    for (i, s) in s.iter().enumerate() {
        // SAFETY: row i's 16 columns.
        unsafe {
            _mm256_storeu_si256(out[i * 2 * NR..].as_mut_ptr().cast(), s[0]);
            _mm256_storeu_si256(out[i * 2 * NR + 8..].as_mut_ptr().cast(), s[1]);
        }
    }
}

/// [`block`] a row at a time, each group of four steps of k as four columns' bytes widened
/// to i16 and multiplied by the row's four values in pairs; a column's two pair sums added
/// at the end.
///
/// # Safety
/// As [`block`].
#[target_feature(enable = "avx2")]
unsafe fn row_by_row(
    a: *const u8,
    b: *const i8,
    kp: usize,
    groups: usize,
    r: usize,
    acc: &mut [i32],
) {
    acc.fill(0);
    // Each panel's 16 columns as four quads of four columns.
    let quads = 2 * NR / 4;
    for i in 0..r {
        let mut s = [_mm256_setzero_si256(); 8];
        for g in 0..groups {
            // SAFETY: group g of row i and of both panels is inside.
            unsafe {
                let q = std::ptr::read_unaligned(a.add(i * kp + 4 * g).cast::<u32>());
                // The four bytes as i16s, repeated: [a0, a1, a2, a3] × 4.
                let w = _mm_cvtepu8_epi16(_mm_cvtsi32_si128(q as i32));
                let w = _mm256_broadcastq_epi64(w);
                for (h, s) in s.iter_mut().enumerate().take(quads) {
                    let (panel, quad) = (h / 4, h % 4);
                    let at = b.add(panel * NR * kp + g * 4 * NR + quad * 16);
                    let y = _mm256_cvtepi8_epi16(_mm_loadu_si128(at.cast()));
                    *s = _mm256_add_epi32(*s, _mm256_madd_epi16(w, y));
                }
            }
        }
        let row = &mut acc[i * 2 * NR..][..2 * NR];
        for (h, s) in s.iter().enumerate() {
            let mut pairs = [0i32; 8];
            // SAFETY: eight i32s.
            unsafe { _mm256_storeu_si256(pairs.as_mut_ptr().cast(), *s) };
            for c in 0..4 {
                row[h * 4 + c] = pairs[2 * c].wrapping_add(pairs[2 * c + 1]);
            }
        }
    }
}
