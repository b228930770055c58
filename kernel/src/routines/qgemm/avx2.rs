//! AVX2: a row at a time, each group of four steps of k as four columns' bytes widened
//! to i16 and multiplied by the row's four values in i16 pairs (`vpmaddwd`: exact i32
//! sums, unlike `vpmaddubsw`'s saturating ones); a column's two pair sums added at the end.

use std::arch::x86_64::*;

use super::NR;

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
