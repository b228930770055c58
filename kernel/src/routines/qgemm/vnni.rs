//! AVX-512 VNNI: eight rows by two panels in sixteen registers, four steps of k per
//! `vpdpbusd`.

use std::arch::x86_64::*;

use super::NR;

/// 32 rows of A (`kp` bytes apart; the first `r` real) by two panels into `acc`, over the
/// first `groups` groups of four steps of k (the rest are zeros).
///
/// # Safety
/// As `super::block`; the CPU has AVX-512 BW and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn block(
    a: *const u8,
    b: *const i8,
    kp: usize,
    groups: usize,
    r: usize,
    acc: &mut [i32],
) {
    acc.fill(0);
    let b1 = b.wrapping_add(NR * kp);
    for i0 in (0..r).step_by(8) {
        let mut s = [[_mm512_setzero_si512(); 2]; 8];
        for g in 0..groups {
            // SAFETY: group g of both panels, and of the eight rows (padded), is inside.
            unsafe {
                let x = _mm512_loadu_si512(b.add(g * 4 * NR).cast());
                let y = _mm512_loadu_si512(b1.add(g * 4 * NR).cast());
                for (i, s) in s.iter_mut().enumerate() {
                    let q = std::ptr::read_unaligned(a.add((i0 + i) * kp + 4 * g).cast());
                    let q = _mm512_set1_epi32(q);
                    s[0] = _mm512_dpbusd_epi32(s[0], q, x);
                    s[1] = _mm512_dpbusd_epi32(s[1], q, y);
                }
            }
        }
        for (i, s) in s.iter().enumerate() {
            let row = &mut acc[(i0 + i) * 2 * NR..][..2 * NR];
            // SAFETY: the row holds 32 i32s.
            unsafe {
                _mm512_storeu_si512(row.as_mut_ptr().cast(), s[0]);
                _mm512_storeu_si512(row.as_mut_ptr().add(NR).cast(), s[1]);
            }
        }
    }
}
