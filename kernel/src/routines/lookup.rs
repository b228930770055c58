//! Table lookups by bytes (`lookup_u8`, `lookup_f32`): `dst[i] = table[src[i]]` for a
//! 256-entry table and byte indices — what a QDQ model's activations between a dequantizer
//! and a quantizer become once the `tables` pass has evaluated them on every byte (a GELU, a
//! tanh), and what the gather loop computed one element at a time. Bytes are the indices as
//! they are: i8 ones address the table from its byte's unsigned value, as the gather's
//! wrapped negative indices do.

use super::{Role, Routine};

/// `dst[i] = table[src[i]]`, u8 (or i8) entries.
pub(super) const LOOKUP_U8: Routine = Routine {
    name: "lookup_u8",
    symbol: "kiln_lookup_u8",
    operands: &[
        ("table", Role::Read, ir::DType::U8),
        ("src", Role::Read, ir::DType::U8),
        ("dst", Role::Write, ir::DType::U8),
    ],
    replaces: None,
    in_place: false,
    ints: &["n"],
    scalars: &[],
    result: None,
    cost: |i| i[0] / 16.0,
    extent: |operand, i| match operand {
        0 => Some(crate::Expr::i64(256)),
        _ => i.first().cloned(),
    },
    bounds,
    address: || kiln_lookup_u8 as *const u8,
    call: |p, i, _| unsafe {
        kiln_lookup_u8(p[0].cast(), p[1].cast(), p[2].cast(), i[0]);
        0.0
    },
    doc: "dst[i] = table[src[i]] for i < n: a 256-entry table of bytes indexed by bytes",
};

/// `dst[i] = table[src[i]]`, f32 entries.
pub(super) const LOOKUP_F32: Routine = Routine {
    name: "lookup_f32",
    symbol: "kiln_lookup_f32",
    operands: &[
        ("table", Role::Read, ir::DType::F32),
        ("src", Role::Read, ir::DType::U8),
        ("dst", Role::Write, ir::DType::F32),
    ],
    replaces: None,
    in_place: false,
    ints: &["n"],
    scalars: &[],
    result: None,
    cost: |i| i[0] / 4.0,
    extent: |operand, i| match operand {
        0 => Some(crate::Expr::i64(256)),
        _ => i.first().cloned(),
    },
    bounds,
    address: || kiln_lookup_f32 as *const u8,
    call: |p, i, _| unsafe {
        kiln_lookup_f32(p[0].cast(), p[1].cast(), p[2].cast(), i[0]);
        0.0
    },
    doc: "dst[i] = table[src[i]] for i < n: a 256-entry f32 table indexed by bytes",
};

/// The elements each operand reaches: the table's 256, `n` of the others.
fn bounds(operand: usize, i: &[i64]) -> Option<(i64, i64)> {
    match operand {
        0 => Some((0, 255)),
        _ => (i[0] > 0).then(|| (0, i[0] - 1)),
    }
}

/// The `lookup_u8` routine.
///
/// # Safety
/// `table` holds 256 bytes; `src` and `dst` `n` (`dst` may be `src`).
pub unsafe extern "C" fn kiln_lookup_u8(table: *const u8, src: *const u8, dst: *mut u8, n: i64) {
    let n = n.max(0) as usize;
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::avx512()
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vbmi")
    {
        // SAFETY: forwarded; the CPU has AVX-512 BW and VBMI.
        i = unsafe { x86::bytes(table, src, dst, n) };
    }
    for j in i..n {
        // SAFETY: j < n; a byte indexes the 256 entries.
        unsafe { *dst.add(j) = *table.add(usize::from(*src.add(j))) };
    }
}

/// The `lookup_f32` routine.
///
/// # Safety
/// `table` holds 256 values; `src` `n` bytes, `dst` `n` values.
pub unsafe extern "C" fn kiln_lookup_f32(table: *const f32, src: *const u8, dst: *mut f32, n: i64) {
    let n = n.max(0) as usize;
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::avx512() {
        // SAFETY: forwarded; the CPU has AVX-512F.
        i = unsafe { x86::floats(table, src, dst, n) };
    }
    for j in i..n {
        // SAFETY: j < n; a byte indexes the 256 entries.
        unsafe { *dst.add(j) = *table.add(usize::from(*src.add(j))) };
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Whole runs of 64 of [`super::kiln_lookup_u8`]: the table in four registers, two
    /// two-register byte permutes by the low seven bits, the high bit choosing. Returns how
    /// many it did.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn bytes(table: *const u8, src: *const u8, dst: *mut u8, n: usize) -> usize {
        // SAFETY: the table's 256 bytes; 64 of src and dst from each i below n.
        unsafe {
            let t: [__m512i; 4] =
                std::array::from_fn(|k| _mm512_loadu_si512(table.add(64 * k).cast()));
            let mut i = 0;
            while i + 64 <= n {
                let x = _mm512_loadu_si512(src.add(i).cast());
                let lo = _mm512_permutex2var_epi8(t[0], x, t[1]);
                let hi = _mm512_permutex2var_epi8(t[2], x, t[3]);
                let high = _mm512_movepi8_mask(x);
                _mm512_storeu_si512(dst.add(i).cast(), _mm512_mask_blend_epi8(high, lo, hi));
                i += 64;
            }
            i
        }
    }

    /// Whole runs of 16 of [`super::kiln_lookup_f32`], by gathers. Returns how many it did.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn floats(
        table: *const f32,
        src: *const u8,
        dst: *mut f32,
        n: usize,
    ) -> usize {
        // SAFETY: 16 of src and dst from each i below n; every index below 256.
        unsafe {
            let mut i = 0;
            while i + 16 <= n {
                let x = _mm512_cvtepu8_epi32(_mm_loadu_si128(src.add(i).cast()));
                _mm512_storeu_ps(dst.add(i), _mm512_i32gather_ps::<4>(x, table.cast()));
                i += 16;
            }
            i
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte through both tables, at lengths around the vector widths, in place too.
    #[test]
    fn lookups_index_by_every_byte() {
        let bytes: Vec<u8> = (0..=255u8).rev().map(|b| b.wrapping_mul(7)).collect();
        let floats: Vec<f32> = (0..256).map(|b| b as f32 * 0.25 - 3.0).collect();
        for n in [0usize, 1, 15, 16, 63, 64, 65, 300] {
            let src: Vec<u8> = (0..n).map(|i| (i * 37 + 5) as u8).collect();
            let mut got = vec![0u8; n];
            let mut gotf = vec![0f32; n];
            // SAFETY: the tables hold 256; src, got and gotf n.
            unsafe {
                kiln_lookup_u8(bytes.as_ptr(), src.as_ptr(), got.as_mut_ptr(), n as i64);
                kiln_lookup_f32(floats.as_ptr(), src.as_ptr(), gotf.as_mut_ptr(), n as i64);
            }
            let want: Vec<u8> = src.iter().map(|&b| bytes[usize::from(b)]).collect();
            let wantf: Vec<f32> = src.iter().map(|&b| floats[usize::from(b)]).collect();
            assert_eq!(got, want, "{n}");
            assert_eq!(gotf, wantf, "{n}");
            let mut inplace = src.clone();
            // SAFETY: as above, dst = src.
            unsafe {
                let p = inplace.as_mut_ptr();
                kiln_lookup_u8(bytes.as_ptr(), p, p, n as i64);
            }
            assert_eq!(inplace, want, "{n} in place");
        }
    }
}
