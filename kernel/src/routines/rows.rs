//! Library routines for the hottest loops over contiguous f32 rows — a row's maximum, its
//! sum in f64, and `exp(x - s)` of every element (softmax's passes) — with 8-lane AVX2 and
//! FMA code where the CPU has them, which Cranelift's 128-bit vectors cannot match. Loops of
//! exactly these shapes become calls of them (`row_max`, `row_sum_f64`, `row_exp_sub` in
//! [`super::ROUTINES`]) by the `row-calls` kernel transform ([`crate::recognize`]). Results keep
//! the loops' semantics: the maximum is IEEE `maximum` (NaN if any element is NaN, -0 < +0);
//! `exp` is the JIT's own vector algorithm lane for lane.

/// `max(init, row[0], …, row[n-1])`, NaN if any of them is NaN, +0 above -0.
///
/// # Safety
/// `row` must be readable for `n` elements (`n >= 0`).
pub unsafe extern "C" fn kiln_row_max(row: *const f32, n: i64, init: f32) -> f32 {
    // SAFETY: forwarded.
    unsafe { row_extreme::<false>(row, n, init) }
}

/// `min(init, row[0], …, row[n-1])`, NaN if any of them is NaN, -0 below +0.
///
/// # Safety
/// `row` must be readable for `n` elements (`n >= 0`).
pub unsafe extern "C" fn kiln_row_min(row: *const f32, n: i64, init: f32) -> f32 {
    // SAFETY: forwarded.
    unsafe { row_extreme::<true>(row, n, init) }
}

/// The row's IEEE minimum (`MIN`) or maximum.
///
/// # Safety
/// As [`kiln_row_max`].
unsafe fn row_extreme<const MIN: bool>(row: *const f32, n: i64, init: f32) -> f32 {
    let n = n.max(0) as usize;
    // SAFETY: forwarded.
    if let Some(b) = unsafe { vector_bounds(row, n) } {
        return b.extreme::<MIN>(init);
    }
    // SAFETY: forwarded.
    let xs = unsafe { std::slice::from_raw_parts(row, n) };
    xs.iter().fold(init, |a, &x| extreme::<MIN>(a, x))
}

/// The row's [`Bounds`] in vector code, where the CPU has it (`None`: fold in scalar code).
///
/// # Safety
/// `row` readable for `n` elements.
unsafe fn vector_bounds(row: *const f32, n: usize) -> Option<Bounds> {
    #[cfg(target_arch = "x86_64")]
    if crate::avx512() {
        // SAFETY: the host has AVX-512; forwarded.
        return Some(unsafe { avx512::bounds(row, n) });
    }
    #[cfg(target_arch = "x86_64")]
    if crate::avx2_fma() {
        // SAFETY: the host has AVX2; forwarded.
        return Some(unsafe { avx2::bounds(row, n) });
    }
    None
}

/// Three integer extremes of a row's float bits, from which both its IEEE minimum and
/// maximum follow (and whether it holds a NaN) — one integer operation each per vector,
/// where mapping every float to an ordered key took three more. Negative floats' bits are
/// the unsigned numbers from 2^31 (larger magnitude, larger number); non-negative ones those
/// below, in their order; positive NaNs lie above +∞, negative ones above -∞.
#[derive(Clone, Copy, Debug)]
pub(in crate::routines) struct Bounds {
    /// The largest bits as a signed number: the largest non-negative float (or a positive
    /// NaN) if any; `i32::MIN` for none.
    smax: i32,
    /// The largest bits unsigned: the negative float of the largest magnitude (or a
    /// negative NaN) if any; 0 for none.
    umax: u32,
    /// The smallest bits unsigned: the smallest non-negative float if any, else the
    /// negative one of the smallest magnitude; `u32::MAX` for none.
    umin: u32,
}

impl Bounds {
    /// No elements.
    pub(in crate::routines) const NONE: Bounds = Bounds {
        smax: i32::MIN,
        umax: 0,
        umin: u32::MAX,
    };

    /// `init` and the elements' IEEE minimum (`MIN`) or maximum: NaN if any is NaN.
    pub(in crate::routines) fn extreme<const MIN: bool>(self, init: f32) -> f32 {
        // No elements: no unsigned number is below every other one (`u32::MAX` is a NaN's).
        if self.umin == u32::MAX && self.umax == 0 && self.smax == i32::MIN {
            return init;
        }
        if self.smax > 0x7f80_0000 || self.umax > 0xff80_0000 || init.is_nan() {
            return f32::NAN;
        }
        let bits = if MIN {
            if self.umax >= 0x8000_0000 {
                self.umax
            } else {
                self.umin
            }
        } else if self.smax >= 0 {
            self.smax as u32
        } else {
            self.umin
        };
        extreme::<MIN>(init, f32::from_bits(bits))
    }
}

/// The IEEE minimum and maximum of `n` f32s (+inf and -inf for none).
///
/// # Safety
/// `row` readable for `n` elements.
pub(super) unsafe fn row_bounds(row: *const f32, n: usize) -> (f32, f32) {
    let (lo, hi) = (f32::INFINITY, f32::NEG_INFINITY);
    // SAFETY: forwarded.
    match unsafe { vector_bounds(row, n) } {
        // Both from one pass.
        Some(b) => (b.extreme::<true>(lo), b.extreme::<false>(hi)),
        // SAFETY: forwarded (scalar code: a fold each).
        None => unsafe {
            let n = n as i64;
            (
                row_extreme::<true>(row, n, lo),
                row_extreme::<false>(row, n, hi),
            )
        },
    }
}

/// `dst[i] = u8(round(src[i] / s) + z)` for `i < n` (see the routine table's `row_quantize`).
///
/// # Safety
/// `src` readable and `dst` writable for `n` elements.
pub unsafe extern "C" fn kiln_row_quantize(src: *const f32, dst: *mut u8, n: i64, s: f32, z: f32) {
    // SAFETY: forwarded.
    unsafe { row_quantize(src, None, dst, n, (s, z)) }
}

/// `dst[i] = u8(i8(round(maximum(src[i], lo) / s)) + 128)` for `i < n` (see the routine
/// table's `row_quantize_s8`): the u8 quantizer of zero point 128, the same number for
/// every quotient but NaN (a NaN input or scale, 0/0, ∞/∞: i8's 0, so 128, where the u8
/// conversion gives 0) — patched after —, of the row clamped below a chunk at a time.
///
/// # Safety
/// `src` readable and `dst` writable for `n` elements.
pub unsafe extern "C" fn kiln_row_quantize_s8(
    src: *const f32,
    dst: *mut u8,
    n: i64,
    s: f32,
    lo: f32,
) {
    let n = n.max(0) as usize;
    if lo == f32::NEG_INFINITY {
        // SAFETY: forwarded.
        return unsafe { quantize_s8(src, dst, n, s) };
    }
    let mut clamped = [0f32; 256];
    for at in (0..n).step_by(clamped.len()) {
        let m = (n - at).min(clamped.len());
        for (j, c) in clamped[..m].iter_mut().enumerate() {
            // SAFETY: inside the row.
            let x = unsafe { *src.add(at + j) };
            // IEEE maximum but for the sign of a zero, which no quantized value keeps (a
            // select the compiler vectorizes).
            *c = if lo.is_nan() || x < lo { lo } else { x };
        }
        // SAFETY: m elements each side.
        unsafe { quantize_s8(clamped.as_ptr(), dst.add(at), m, s) };
    }
}

/// [`kiln_row_quantize_s8`] without the clamp.
///
/// # Safety
/// As [`kiln_row_quantize_s8`].
unsafe fn quantize_s8(src: *const f32, dst: *mut u8, n: usize, s: f32) {
    // SAFETY: forwarded.
    unsafe { row_quantize(src, None, dst, n as i64, (s, 128.0)) };
    // A NaN quotient came out 0: only bytes of 0 (rare: −128 on the int8 scale) are looked
    // at again, found eight at a time (a byte of 0 in a word: its borrow reaches bit 7).
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut i = 0;
    while i < n {
        if i + 8 <= n {
            // SAFETY: eight bytes inside the row.
            let w = unsafe { std::ptr::read_unaligned(dst.add(i).cast::<u64>()) };
            if w.wrapping_sub(ONES) & !w & (ONES << 7) == 0 {
                i += 8;
                continue;
            }
        }
        for j in i..(i + 8).min(n) {
            // SAFETY: inside the rows.
            unsafe {
                if *dst.add(j) == 0 && (*src.add(j) / s).is_nan() {
                    *dst.add(j) = 128;
                }
            }
        }
        i += 8;
    }
}

/// `dst[i] = u8(round((src[i] + (f32(res[i]) - rz)·rs) / s) + z)` for `i < n`: a quantizer
/// of a sum with a dequantized u8 residual (see the routine table's `row_quantize_res`).
///
/// # Safety
/// `src` and `res` readable and `dst` writable for `n` elements.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_row_quantize_res(
    src: *const f32,
    res: *const u8,
    dst: *mut u8,
    n: i64,
    s: f32,
    z: f32,
    rz: f32,
    rs: f32,
) {
    let r = Residual {
        row: res,
        z: rz,
        s: rs,
    };
    // SAFETY: forwarded.
    unsafe { row_quantize(src, Some(r), dst, n, (s, z)) }
}

/// A u8 row dequantized as `(f32(row[i]) - z)·s` and added before a quantizer.
#[derive(Clone, Copy)]
pub(super) struct Residual {
    row: *const u8,
    z: f32,
    s: f32,
}

/// [`kiln_row_quantize`], with a residual or without.
///
/// # Safety
/// The rows hold `n` elements.
pub(super) unsafe fn row_quantize(
    src: *const f32,
    res: Option<Residual>,
    dst: *mut u8,
    n: i64,
    sz: (f32, f32),
) {
    let n = n.max(0) as usize;
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::avx512() && std::arch::is_x86_feature_detected!("avx512dq") {
        // SAFETY: the host has AVX-512 F and DQ; forwarded.
        i = unsafe { avx512::quantize(src, res, dst, n, sz) };
    } else if crate::avx2_fma() {
        // SAFETY: the host has AVX2; forwarded.
        i = unsafe { avx2::quantize(src, res, dst, n, sz) };
    }
    for j in i..n {
        // SAFETY: inside the rows.
        unsafe {
            let mut x = *src.add(j);
            if let Some(r) = res {
                x += (f32::from(*r.row.add(j)) - r.z) * r.s;
            }
            *dst.add(j) = quantize(x, sz.0, sz.1);
        }
    }
}

/// `dst[i] = (f32(src[i]) - z) * s` for `i < n` (see the routine table's `row_dequantize`).
///
/// # Safety
/// `src` readable and `dst` writable for `n` elements.
pub unsafe extern "C" fn kiln_row_dequantize(
    src: *const u8,
    dst: *mut f32,
    n: i64,
    z: f32,
    s: f32,
) {
    let n = n.max(0) as usize;
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::avx512() {
        // SAFETY: the host has AVX-512; forwarded.
        i = unsafe { avx512::dequantize(src, dst, n, z, s) };
    } else if crate::avx2_fma() {
        // SAFETY: the host has AVX2; forwarded.
        i = unsafe { avx2::dequantize(src, dst, n, z, s) };
    }
    for j in i..n {
        // SAFETY: inside both rows.
        unsafe { *dst.add(j) = (f32::from(*src.add(j)) - z) * s };
    }
}

/// The reciprocal of a quantizer's scale `s` where the AVX2 loop may round `x·(1/s)`
/// instead of dividing — `s` and `1/s` normal and the zero point `z` finite — with how far
/// (relative to it) such a product may be from the rounded quotient: 1.5 units in the last
/// place, bounded here by 2^-21 of it. A product that far from a half-integer rounds as the
/// quotient does (the same integer, ties to even included); one closer to a half-integer is
/// divided. A division costs ten times a product's throughput.
fn reciprocal(s: f32, z: f32) -> Option<f32> {
    let r = 1.0 / s;
    (s.is_normal() && r.is_normal() && z.is_finite()).then_some(r)
}

/// The margin of [`reciprocal`]: a product `q` nearer than `|q|·RECIP_MARGIN` to a
/// half-integer is divided instead.
const RECIP_MARGIN: f32 = 1.0 / (1u32 << 21) as f32;

/// Two multipliers bracketing division by a quantizer's scale `s`, and a bound on the
/// dividends (the AVX-512 loop's; the AVX2 one rounds by [`reciprocal`]). The products
/// `x·below` and `x·above` lie on either side of the rounded quotient `x / s` (each within
/// 2^-20 of it relatively, the roundings of `1/s`, of the multipliers and of the products
/// being under 2^-23 together), so where both round to the same integer the quotient does
/// too — ties to even included, as rounding is monotone. They lie about 2^-19·|x/s| apart:
/// past |x/s| of 2^19 they never round alike and the vector is divided. The bound (|x/s|
/// of 2^22) is what keeps larger dividends, infinities and NaN from converting to
/// i32::MIN on both sides (alike): clamped to it, they divide too. `None` (divide) unless
/// `s` and `1/s` are normal and the zero point `z` is an integer within 2^16 (added in
/// integers).
fn bracket(s: f32, z: f32) -> Option<(f32, f32, f32)> {
    let r = 1.0 / s;
    let ok = s.is_normal() && r.is_normal() && z.fract() == 0.0 && z.abs() <= 65536.0;
    let e = 1.0 / (1u32 << 20) as f32;
    let most = (s.abs() * (1u32 << 22) as f32).min(f32::MAX);
    ok.then_some((r * (1.0 - e), r * (1.0 + e), most))
}

/// One element of [`kiln_row_quantize`], as the JIT's scalar code computes it.
pub(super) fn quantize(x: f32, s: f32, z: f32) -> u8 {
    let y = (x / s).round_ties_even() + z;
    // Truncating and saturating (NaN 0), as a conversion to u8.
    if y.is_nan() {
        0
    } else {
        y.clamp(0.0, 255.0) as u8
    }
}

/// IEEE minimum (`MIN`) or maximum of two.
fn extreme<const MIN: bool>(a: f32, b: f32) -> f32 {
    if MIN {
        minimum(a, b)
    } else {
        maximum(a, b)
    }
}

/// `init + Σ row[i]` in f64.
///
/// # Safety
/// `row` must be readable for `n` elements (`n >= 0`).
pub unsafe extern "C" fn kiln_row_sum_f64(row: *const f32, n: i64, init: f64) -> f64 {
    // SAFETY: forwarded.
    unsafe { row_sum::<false>(row, n, init) }
}

/// `init + Σ f64(row[i]·row[i])` (each square rounded to f32): a variance's sum.
///
/// # Safety
/// `row` must be readable for `n` elements (`n >= 0`).
pub unsafe extern "C" fn kiln_row_sumsq_f64(row: *const f32, n: i64, init: f64) -> f64 {
    // SAFETY: forwarded.
    unsafe { row_sum::<true>(row, n, init) }
}

/// [`kiln_row_sum_f64`] of the elements or (`SQ`) their squares.
///
/// # Safety
/// As [`kiln_row_sum_f64`].
unsafe fn row_sum<const SQ: bool>(row: *const f32, n: i64, init: f64) -> f64 {
    let n = n.max(0) as usize;
    #[cfg(target_arch = "x86_64")]
    if crate::avx2_fma() {
        // SAFETY: the host has AVX2; forwarded.
        return unsafe { avx2::sum::<SQ>(row, n, init) };
    }
    // SAFETY: forwarded.
    let xs = unsafe { std::slice::from_raw_parts(row, n) };
    xs.iter()
        .fold(init, |a, &x| a + f64::from(if SQ { x * x } else { x }))
}

/// `dst[i] = exp(src[i] - s)` for `i < n` (`dst` may be `src`).
///
/// # Safety
/// `src` readable and `dst` writable for `n` elements; they are the same or do not overlap.
pub unsafe extern "C" fn kiln_row_exp_sub(src: *const f32, dst: *mut f32, n: i64, s: f32) {
    let n = n.max(0) as usize;
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::avx512() {
        // SAFETY: the host has AVX-512; forwarded.
        i = unsafe { avx512::exp_sub(src, dst, n, s) };
    } else if crate::avx2_fma() {
        // SAFETY: the host has AVX2 and FMA; forwarded.
        i = unsafe { avx2::exp_sub(src, dst, n, s) };
    }
    while i < n {
        // SAFETY: `i < n`.
        unsafe { *dst.add(i) = exp(*src.add(i) - s) };
        i += 1;
    }
}

/// `dst[i] = act(src[i])` for `i < n`, `act` an epilogue's activation code (1 sigmoid, 2
/// tanh; see [`super::epilogue::Act::of`]), computed as the epilogues of products and convs
/// compute it — the vector loops' own algorithm, 16 or 8 lanes at a time.
///
/// # Safety
/// `src` readable and `dst` writable for `n` elements; they are the same or do not overlap.
pub unsafe extern "C" fn kiln_row_act(src: *const f32, dst: *mut f32, n: i64, act: i64) {
    let e = super::epilogue::Epilogue {
        act: super::epilogue::Act::of(act),
        ..super::epilogue::Epilogue::NONE
    };
    // SAFETY: forwarded; no per-row or per-column operands.
    unsafe { epilogue_row(src, dst, n, &e) };
}

/// `dst = e(src)` along one row of `n`: copied (unless in place), then the epilogue.
///
/// # Safety
/// As [`kiln_row_act`]; `e`'s operands hold one row's (a scale: one value).
unsafe fn epilogue_row(src: *const f32, dst: *mut f32, n: i64, e: &super::epilogue::Epilogue) {
    let n = n.max(0) as usize;
    if n == 0 {
        return;
    }
    if !std::ptr::eq(src, dst) {
        // SAFETY: forwarded; distinct rows do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
    }
    // SAFETY: one row of n elements at dst.
    unsafe { e.block(dst, n, 1, n) };
}

/// `dst[i] = (q(round((src[i]·m + r[i]) / s) + z) − zo)·d` for `i < n` (`r` null: no row
/// added), `q` a conversion to the
/// integers `lo..=hi` as the JIT converts (NaN 0, saturating, truncating toward zero) and
/// back: a quantize-dequantize pair of any scale and zero points (`zo` the one subtracted:
/// a dequantizer's, or a dynamic quantizer's zero point taken off in integers), of the row
/// scaled by `m` — each step rounded to f32 as the loop's ops are, 16 or 8 lanes at a time.
///
/// # Safety
/// `src` (and `r` unless null) readable and `dst` writable for `n` elements; `src` and `dst`
/// are the same or do not overlap, `r` does not overlap `dst`.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_row_qdq(
    src: *const f32,
    r: *const f32,
    dst: *mut f32,
    n: i64,
    m: f32,
    s: f32,
    z: f32,
    zo: f32,
    lo: f32,
    hi: f32,
    d: f32,
) {
    let n = n.max(0) as usize;
    let p = Pair {
        r,
        m,
        s,
        z,
        zo,
        lo,
        hi,
        d,
    };
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::avx512() {
        // SAFETY: the host has AVX-512; forwarded.
        i = unsafe { avx512::qdq(src, dst, n, &p) };
    } else if crate::avx2_fma() {
        // SAFETY: the host has AVX2; forwarded.
        i = unsafe { avx2::qdq(src, dst, n, &p) };
    }
    for j in i..n {
        // SAFETY: inside the rows (an element is read before it is written).
        unsafe { *dst.add(j) = p.one(*src.add(j), j) };
    }
}

/// The operands of [`kiln_row_qdq`].
pub(super) struct Pair {
    /// A row added after the scale (null for none).
    r: *const f32,
    m: f32,
    s: f32,
    z: f32,
    zo: f32,
    lo: f32,
    hi: f32,
    d: f32,
}

impl Pair {
    /// Element `j`, `x` its source.
    ///
    /// # Safety
    /// `r`, unless null, holds element `j`.
    unsafe fn one(&self, x: f32, j: usize) -> f32 {
        let mut x = x * self.m;
        if !self.r.is_null() {
            // SAFETY: the caller's.
            x += unsafe { *self.r.add(j) };
        }
        let t = (x / self.s).round_ties_even() + self.z;
        // The conversion's integer back as f32: +0 for NaN and for (−1, 0).
        let c = if t.is_nan() {
            0.0
        } else {
            t.clamp(self.lo, self.hi).trunc() + 0.0
        };
        (c - self.zo) * self.d
    }
}

/// IEEE `maximum`: NaN if either is NaN, +0 above -0.
pub(super) fn maximum(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a == b {
        // Equal: only the signs of zeros can differ; +0 wins.
        if a.is_sign_negative() {
            b
        } else {
            a
        }
    } else if a > b {
        a
    } else {
        b
    }
}

/// IEEE `minimum`: NaN if either is NaN, -0 below +0.
pub(super) fn minimum(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if a == b {
        // Equal: only the signs of zeros can differ; -0 wins.
        if a.is_sign_negative() {
            a
        } else {
            b
        }
    } else if a < b {
        a
    } else {
        b
    }
}

// The f32 `exp` of the JIT (codegen's `backend/cranelift/jit/vmath.rs`, `vexp`) and of these
// routines, which share these constants: n = round(x·log2 e) by adding and subtracting MAGIC
// (1.5·2^23), r = x - n·C1 - n·C2 (ln 2 in two parts), e^r ≈ 1 + r + r²·P(r).
/// log2(e), for the shared `exp` (see the comment above).
pub const LOG2E: f32 = std::f32::consts::LOG2_E;
/// 1.5·2^23: adding and subtracting it rounds to an integer.
pub const MAGIC: f32 = 12_582_912.0;
/// ln 2, high part.
pub const C1: f32 = 0.693_359_4;
/// ln 2, low part.
pub const C2: f32 = -2.121_944_4e-4;
/// The polynomial P of e^r ≈ 1 + r + r²·P(r).
pub const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5e-1,
];

/// One lane of the JIT's vector `exp` (with fused multiply-adds in the polynomial).
pub(super) fn exp(x: f32) -> f32 {
    // Below the clamp the result is 0 (e^-104 rounds to 0), without an underflow.
    if x < -104.0 {
        return 0.0;
    }
    // NaN stays NaN.
    let x = x.clamp(-104.0, 89.0);
    let tm = x * LOG2E + MAGIC;
    let n = tm - MAGIC;
    let ni = (tm.to_bits() as i32).wrapping_sub(0x4b40_0000);
    let r = x - n * C1;
    let r = r - n * C2;
    let mut p = P[0];
    for &c in &P[1..] {
        p = p.mul_add(r, c);
    }
    let y = p * (r * r) + r + 1.0;
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let pow2 = |k: i32| f32::from_bits(((k + 127) << 23) as u32);
    y * pow2(n1) * pow2(n2)
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    /// Float bits mapped to i32 so that signed order is the float order (-0 below +0), NaNs
    /// aside; the map is its own inverse.
    #[inline(always)]
    pub(in crate::routines) unsafe fn key(x: __m256) -> __m256i {
        unsafe {
            let b = _mm256_castps_si256(x);
            let m = _mm256_srli_epi32::<1>(_mm256_srai_epi32::<31>(b));
            _mm256_xor_si256(b, m)
        }
    }

    /// The row's [`super::Bounds`]: 16 elements a step, the rest in scalar.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bounds(row: *const f32, n: usize) -> super::Bounds {
        unsafe {
            let mut smax = _mm256_set1_epi32(i32::MIN);
            let mut umax = _mm256_setzero_si256();
            let mut umin = _mm256_set1_epi32(-1);
            let mut i = 0;
            while i + 16 <= n {
                for h in 0..2 {
                    let x = _mm256_loadu_si256(row.add(i + 8 * h).cast());
                    smax = _mm256_max_epi32(smax, x);
                    umax = _mm256_max_epu32(umax, x);
                    umin = _mm256_min_epu32(umin, x);
                }
                i += 16;
            }
            let mut lanes = [[0u32; 8]; 3];
            for (l, v) in lanes.iter_mut().zip([smax, umax, umin]) {
                _mm256_storeu_si256(l.as_mut_ptr().cast(), v);
            }
            let mut b = super::Bounds::NONE;
            let rest = std::slice::from_raw_parts(row.add(i).cast::<u32>(), n - i);
            for &x in lanes[0].iter().chain(rest) {
                b.smax = b.smax.max(x as i32);
            }
            for &x in lanes[1].iter().chain(rest) {
                b.umax = b.umax.max(x);
            }
            for &x in lanes[2].iter().chain(rest) {
                b.umin = b.umin.min(x);
            }
            b
        }
    }

    /// The row's sum in f64, of its squares (`SQ`, each rounded to f32 first) or itself.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn sum<const SQ: bool>(row: *const f32, n: usize, init: f64) -> f64 {
        unsafe {
            let mut acc = [_mm256_setzero_pd(); 4];
            let mut i = 0;
            while i + 16 <= n {
                for (q, a) in acc.iter_mut().enumerate() {
                    let mut x = _mm_loadu_ps(row.add(i + 4 * q));
                    if SQ {
                        x = _mm_mul_ps(x, x);
                    }
                    *a = _mm256_add_pd(*a, _mm256_cvtps_pd(x));
                }
                i += 16;
            }
            let s = _mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3]));
            let mut lanes = [0f64; 4];
            _mm256_storeu_pd(lanes.as_mut_ptr(), s);
            let mut t = init + ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]));
            while i < n {
                let x = *row.add(i);
                t += f64::from(if SQ { x * x } else { x });
                i += 1;
            }
            t
        }
    }

    /// Whole vectors of [`super::kiln_row_quantize`] as [`super::avx512`]'s, 8 lanes a step.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantize(
        src: *const f32,
        res: Option<super::Residual>,
        dst: *mut u8,
        n: usize,
        (s, z): (f32, f32),
    ) -> usize {
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        unsafe {
            let (sv, zv) = (_mm256_set1_ps(s), _mm256_set1_ps(z));
            let (rz, rs) = res.map_or((0.0, 0.0), |r| (r.z, r.s));
            let (rzv, rsv) = (_mm256_set1_ps(rz), _mm256_set1_ps(rs));
            let (lo, hi) = (_mm256_setzero_ps(), _mm256_set1_ps(255.0));
            let recip = super::reciprocal(s, z);
            let rv = _mm256_set1_ps(recip.unwrap_or(0.0));
            let (margin, half) = (_mm256_set1_ps(super::RECIP_MARGIN), _mm256_set1_ps(0.5));
            let sign = _mm256_set1_ps(-0.0);
            // The low byte of each lane, lanes 0-3 and 4-7 gathered in the first 8 bytes.
            let bytes = _mm256_setr_epi8(
                0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1,
                -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
            );
            let mut i = 0;
            while i + 8 <= n {
                let mut x = _mm256_loadu_ps(src.add(i));
                if let Some(r) = res {
                    let b = _mm_loadl_epi64(r.row.add(i).cast());
                    let d = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
                    x = _mm256_add_ps(x, _mm256_mul_ps(_mm256_sub_ps(d, rzv), rsv));
                }
                let mut q = None;
                if recip.is_some() {
                    let p = _mm256_mul_ps(x, rv);
                    let r = _mm256_round_ps::<NEAREST>(p);
                    let d = _mm256_andnot_ps(sign, _mm256_sub_ps(p, r));
                    let near = _mm256_fnmadd_ps(_mm256_andnot_ps(sign, p), margin, half);
                    if _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(d, near)) == 0 {
                        q = Some(r);
                    }
                }
                let q = q.unwrap_or_else(|| _mm256_round_ps::<NEAREST>(_mm256_div_ps(x, sv)));
                let q = _mm256_add_ps(q, zv);
                // `max` answers its second operand, 0, for a NaN.
                let q = _mm256_min_ps(_mm256_max_ps(q, lo), hi);
                let b = _mm256_shuffle_epi8(_mm256_cvttps_epi32(q), bytes);
                let lo4 = _mm256_castsi256_si128(b);
                let hi4 = _mm256_extracti128_si256::<1>(b);
                _mm_storel_epi64(dst.add(i).cast(), _mm_unpacklo_epi32(lo4, hi4));
                i += 8;
            }
            i
        }
    }

    /// Whole vectors of [`super::kiln_row_qdq`], 8 lanes a step.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn qdq(src: *const f32, dst: *mut f32, n: usize, p: &super::Pair) -> usize {
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        const TO_ZERO: i32 = _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC;
        unsafe {
            let [m, s, z, zo, lo, hi, d] =
                [p.m, p.s, p.z, p.zo, p.lo, p.hi, p.d].map(|v| _mm256_set1_ps(v));
            let zero = _mm256_setzero_ps();
            let mut i = 0;
            while i + 8 <= n {
                let mut x = _mm256_mul_ps(_mm256_loadu_ps(src.add(i)), m);
                if !p.r.is_null() {
                    x = _mm256_add_ps(x, _mm256_loadu_ps(p.r.add(i)));
                }
                let t = _mm256_round_ps::<NEAREST>(_mm256_div_ps(x, s));
                let t = _mm256_add_ps(t, z);
                let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(t, t);
                // `max` answers its second operand for a NaN: zeroed after.
                let c = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
                let c = _mm256_add_ps(_mm256_round_ps::<TO_ZERO>(c), zero);
                let c = _mm256_andnot_ps(nan, c);
                _mm256_storeu_ps(dst.add(i), _mm256_mul_ps(_mm256_sub_ps(c, zo), d));
                i += 8;
            }
            i
        }
    }

    /// Whole vectors of [`super::kiln_row_dequantize`], 8 lanes a step.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dequantize(
        src: *const u8,
        dst: *mut f32,
        n: usize,
        z: f32,
        s: f32,
    ) -> usize {
        unsafe {
            let (zv, sv) = (_mm256_set1_ps(z), _mm256_set1_ps(s));
            let mut i = 0;
            while i + 8 <= n {
                let b = _mm_loadl_epi64(src.add(i).cast());
                let x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
                _mm256_storeu_ps(dst.add(i), _mm256_mul_ps(_mm256_sub_ps(x, zv), sv));
                i += 8;
            }
            i
        }
    }

    /// Eight lanes of the JIT's `exp`.
    #[inline(always)]
    pub(in crate::routines) unsafe fn exp8(x: __m256) -> __m256 {
        use super::{C1, C2, LOG2E, MAGIC, P};
        unsafe {
            let lo = _mm256_set1_ps(-104.0);
            let hi = _mm256_set1_ps(89.0);
            // Lanes below the clamp are 0, computed from 0 (see `avx512::exp16`).
            let gone = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
            let x = _mm256_andnot_ps(gone, x);
            // Clamped with NaN kept (comparisons with NaN are false).
            let x = _mm256_blendv_ps(x, hi, _mm256_cmp_ps::<_CMP_LT_OQ>(hi, x));
            let magic = _mm256_set1_ps(MAGIC);
            let tm = _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), magic);
            let n = _mm256_sub_ps(tm, magic);
            let ni = _mm256_sub_epi32(_mm256_castps_si256(tm), _mm256_set1_epi32(0x4b40_0000));
            let r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(C1)));
            let r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(C2)));
            let mut p = _mm256_set1_ps(P[0]);
            for &c in &P[1..] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
            }
            let y = _mm256_mul_ps(p, _mm256_mul_ps(r, r));
            let y = _mm256_add_ps(_mm256_add_ps(y, r), _mm256_set1_ps(1.0));
            let n1 = _mm256_srai_epi32::<1>(ni);
            let n2 = _mm256_sub_epi32(ni, n1);
            let bias = _mm256_set1_epi32(127);
            let s1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n1, bias)));
            let s2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n2, bias)));
            _mm256_andnot_ps(gone, _mm256_mul_ps(_mm256_mul_ps(y, s1), s2))
        }
    }

    /// Whole blocks of 8; returns where the rest starts.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_sub(src: *const f32, dst: *mut f32, n: usize, s: f32) -> usize {
        unsafe {
            let sv = _mm256_set1_ps(s);
            let mut i = 0;
            while i + 8 <= n {
                let x = _mm256_sub_ps(_mm256_loadu_ps(src.add(i)), sv);
                _mm256_storeu_ps(dst.add(i), exp8(x));
                i += 8;
            }
            i
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::avx2::key`] for 16 lanes.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(in crate::routines) fn key(x: __m512) -> __m512i {
        let b = _mm512_castps_si512(x);
        _mm512_xor_si512(b, _mm512_srli_epi32::<1>(_mm512_srai_epi32::<31>(b)))
    }

    /// The row's [`super::Bounds`]: 32 elements a step, then 16, then a masked step.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn bounds(row: *const f32, n: usize) -> super::Bounds {
        unsafe {
            let mut smax = [_mm512_set1_epi32(i32::MIN); 2];
            let mut umax = [_mm512_setzero_si512(); 2];
            let mut umin = [_mm512_set1_epi32(-1); 2];
            let mut i = 0;
            while i + 32 <= n {
                for h in 0..2 {
                    let x = _mm512_loadu_si512(row.add(i + 16 * h).cast());
                    smax[h] = _mm512_max_epi32(smax[h], x);
                    umax[h] = _mm512_max_epu32(umax[h], x);
                    umin[h] = _mm512_min_epu32(umin[h], x);
                }
                i += 32;
            }
            let (mut smax, mut umax, mut umin) = (
                _mm512_max_epi32(smax[0], smax[1]),
                _mm512_max_epu32(umax[0], umax[1]),
                _mm512_min_epu32(umin[0], umin[1]),
            );
            while i < n {
                // The last 1 to 31 elements: a whole vector, then a masked one.
                let m = if n - i >= 16 {
                    !0
                } else {
                    ((1u32 << (n - i)) - 1) as __mmask16
                };
                let x = _mm512_maskz_loadu_epi32(m, row.add(i).cast());
                smax = _mm512_mask_max_epi32(smax, m, smax, x);
                umax = _mm512_mask_max_epu32(umax, m, umax, x);
                umin = _mm512_mask_min_epu32(umin, m, umin, x);
                i += 16;
            }
            super::Bounds {
                smax: _mm512_reduce_max_epi32(smax),
                umax: _mm512_reduce_max_epu32(umax),
                umin: _mm512_reduce_min_epu32(umin),
            }
        }
    }

    /// Quotients `q` as the bytes a quantizer stores, in i32 lanes: rounded to even, `z`
    /// added, clamped to 0..=255 in floats (the maximum answers its second operand, 0, for a
    /// NaN) so that the truncating conversion never overflows. `qconv2d_u8`'s stores too.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(in crate::routines) fn bytes_of(q: __m512, z: __m512) -> __m512i {
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let q = _mm512_add_ps(_mm512_roundscale_ps::<NEAREST>(q), z);
        let q = _mm512_min_ps(_mm512_max_ps(q, _mm512_setzero_ps()), _mm512_set1_ps(255.0));
        _mm512_cvttps_epi32(q)
    }

    /// Whole vectors of [`super::kiln_row_quantize`] (the rest left to the caller): where
    /// [`super::bracket`] allows, each quotient rounded to an integer by way of two products
    /// that bracket it (a vector where they round apart divided), the zero point added and
    /// the clamp taken in integers; otherwise divided, the clamp in floats (where `max`
    /// makes NaN 0), so the truncating conversion never overflows. Returns how many it did.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn quantize(
        src: *const f32,
        res: Option<super::Residual>,
        dst: *mut u8,
        n: usize,
        (s, z): (f32, f32),
    ) -> usize {
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let (sv, zv) = (_mm512_set1_ps(s), _mm512_set1_ps(z));
        let (rz, rs) = res.map_or((0.0, 0.0), |r| (r.z, r.s));
        let (rzv, rsv) = (_mm512_set1_ps(rz), _mm512_set1_ps(rs));
        let b = super::bracket(s, z);
        let (below, above, most) = b.unwrap_or_default();
        let (below, above) = (_mm512_set1_ps(below), _mm512_set1_ps(above));
        let (most, zi) = (_mm512_set1_ps(most), _mm512_set1_epi32(z as i32));
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: 16 elements of both rows from i.
            unsafe {
                let mut x = _mm512_loadu_ps(src.add(i));
                if let Some(r) = res {
                    let b = _mm_loadu_si128(r.row.add(i).cast());
                    let d = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
                    x = _mm512_add_ps(x, _mm512_mul_ps(_mm512_sub_ps(d, rzv), rsv));
                }
                let mut done = false;
                if b.is_some() {
                    // |x| at most the bound, its sign kept (`vrangeps`, which answers the
                    // bound for a NaN): lanes clamped round apart, and their vector divides.
                    let c = _mm512_range_ps::<0b0010>(x, most);
                    let q0 = _mm512_cvt_roundps_epi32::<NEAREST>(_mm512_mul_ps(c, below));
                    let q1 = _mm512_cvt_roundps_epi32::<NEAREST>(_mm512_mul_ps(c, above));
                    if _mm512_cmpneq_epi32_mask(q0, q1) == 0 {
                        // Non-negative, saturated to 255 by the unsigned narrowing.
                        let q = _mm512_max_epi32(_mm512_add_epi32(q0, zi), _mm512_setzero_si512());
                        _mm_storeu_si128(dst.add(i).cast(), _mm512_cvtusepi32_epi8(q));
                        done = true;
                    }
                }
                if !done {
                    let q = bytes_of(_mm512_div_ps(x, sv), zv);
                    _mm_storeu_si128(dst.add(i).cast(), _mm512_cvtepi32_epi8(q));
                }
            }
            i += 16;
        }
        i
    }

    /// Whole vectors of [`super::kiln_row_qdq`]; returns how many it did.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn qdq(src: *const f32, dst: *mut f32, n: usize, p: &super::Pair) -> usize {
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        const TO_ZERO: i32 = _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC;
        let [m, s, z, zo, lo, hi, d] =
            [p.m, p.s, p.z, p.zo, p.lo, p.hi, p.d].map(|v| _mm512_set1_ps(v));
        let zero = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: 16 elements of both rows from i.
            unsafe {
                let mut x = _mm512_mul_ps(_mm512_loadu_ps(src.add(i)), m);
                if !p.r.is_null() {
                    x = _mm512_add_ps(x, _mm512_loadu_ps(p.r.add(i)));
                }
                let t = _mm512_roundscale_ps::<NEAREST>(_mm512_div_ps(x, s));
                let t = _mm512_add_ps(t, z);
                let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(t, t);
                let c = _mm512_min_ps(_mm512_max_ps(t, lo), hi);
                let c = _mm512_add_ps(_mm512_roundscale_ps::<TO_ZERO>(c), zero);
                let c = _mm512_mask_mov_ps(c, nan, zero);
                _mm512_storeu_ps(dst.add(i), _mm512_mul_ps(_mm512_sub_ps(c, zo), d));
            }
            i += 16;
        }
        i
    }

    /// Whole vectors of [`super::kiln_row_dequantize`]; returns how many it did.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dequantize(
        src: *const u8,
        dst: *mut f32,
        n: usize,
        z: f32,
        s: f32,
    ) -> usize {
        let (zv, sv) = (_mm512_set1_ps(z), _mm512_set1_ps(s));
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: 16 elements of both rows from i.
            unsafe {
                let b = _mm_loadu_si128(src.add(i).cast());
                let x = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
                _mm512_storeu_ps(dst.add(i), _mm512_mul_ps(_mm512_sub_ps(x, zv), sv));
            }
            i += 16;
        }
        i
    }

    /// Sixteen lanes of the JIT's `exp`: [`super::avx2`]'s `exp8` operation for operation.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(in crate::routines) fn exp16(x: __m512) -> __m512 {
        use super::{C1, C2, LOG2E, MAGIC, P};
        let lo = _mm512_set1_ps(-104.0);
        let hi = _mm512_set1_ps(89.0);
        // Lanes below the clamp are 0 (e^-104 rounds to 0): computed from 0 instead and
        // zeroed at the end, so that no lane underflows — each instruction with an underflowing
        // lane costs a microcode assist, and a softmax's masked scores are all such lanes.
        let gone = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo);
        let x = _mm512_maskz_mov_ps(!gone, x);
        // Clamped with NaN kept (comparisons with NaN are false).
        let x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(hi, x), x, hi);
        let magic = _mm512_set1_ps(MAGIC);
        let tm = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)), magic);
        let n = _mm512_sub_ps(tm, magic);
        let ni = _mm512_sub_epi32(_mm512_castps_si512(tm), _mm512_set1_epi32(0x4b40_0000));
        let r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(C1)));
        let r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(C2)));
        let mut p = _mm512_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_mul_ps(p, _mm512_mul_ps(r, r));
        let y = _mm512_add_ps(_mm512_add_ps(y, r), _mm512_set1_ps(1.0));
        let n1 = _mm512_srai_epi32::<1>(ni);
        let n2 = _mm512_sub_epi32(ni, n1);
        let bias = _mm512_set1_epi32(127);
        let s1 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n1, bias)));
        let s2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n2, bias)));
        _mm512_maskz_mov_ps(!gone, _mm512_mul_ps(_mm512_mul_ps(y, s1), s2))
    }

    /// Whole blocks of 16; returns where the rest starts.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_sub(src: *const f32, dst: *mut f32, n: usize, s: f32) -> usize {
        unsafe {
            let sv = _mm512_set1_ps(s);
            let mut i = 0;
            while i + 16 <= n {
                let x = _mm512_sub_ps(_mm512_loadu_ps(src.add(i)), sv);
                _mm512_storeu_ps(dst.add(i), exp16(x));
                i += 16;
            }
            i
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_max_and_min_are_ieee() {
        let rows: Vec<Vec<f32>> = vec![
            (0..37).map(|i| (i as f32 * 0.37).sin()).collect(),
            vec![-0.0; 20],
            [vec![-0.0; 17], vec![0.0], vec![-1.0; 5]].concat(),
            [vec![-3.0; 18], vec![f32::NAN], vec![5.0]].concat(),
            vec![f32::NEG_INFINITY; 19],
            // Long enough for whole vector steps: a NaN and signed zeros inside them.
            [vec![-2.0; 45], vec![f32::NAN], vec![1.0; 24]].concat(),
            [vec![-0.0; 40], vec![0.0], vec![-0.0; 30]].concat(),
            // A NaN of either sign among numbers of both signs, in vector steps and after.
            [vec![-1.0; 20], vec![-f32::NAN], vec![0.5; 20]].concat(),
            [vec![-1.0; 20], vec![0.5; 20], vec![f32::NAN]].concat(),
            [vec![f32::INFINITY; 33], vec![f32::NEG_INFINITY; 2]].concat(),
            (0..100).map(|i| -(i as f32)).collect(),
            vec![
                -1e-40, -2e-40, 3e-41, -7.0, 1e30, -1e30, 0.5, 0.25, 0.125, 9.0, 1.0, 2.0, 3.0,
                4.0, 5.0, 6.0, 7.5,
            ],
            vec![],
        ];
        for row in &rows {
            for init in [f32::NEG_INFINITY, -0.0, 0.0, 100.0] {
                let want = row.iter().fold(init, |a, &x| maximum(a, x));
                // SAFETY: the row holds its elements.
                let got = unsafe { kiln_row_max(row.as_ptr(), row.len() as i64, init) };
                assert_eq!(got.to_bits(), want.to_bits(), "{row:?} from {init}");
                if want.is_nan() {
                    assert!(got.is_nan());
                }
                let want_min = row.iter().fold(-init, |a, &x| minimum(a, x));
                // SAFETY: as above.
                let got = unsafe { kiln_row_min(row.as_ptr(), row.len() as i64, -init) };
                assert_eq!(
                    got.to_bits(),
                    want_min.to_bits(),
                    "min {row:?} from {}",
                    -init
                );
                // Every instruction set's bounds give both.
                #[cfg(target_arch = "x86_64")]
                for b in [
                    // SAFETY: each only where the host has its instructions; the row holds
                    // its elements.
                    crate::avx2_fma().then(|| unsafe { avx2::bounds(row.as_ptr(), row.len()) }),
                    crate::avx512().then(|| unsafe { avx512::bounds(row.as_ptr(), row.len()) }),
                ]
                .into_iter()
                .flatten()
                {
                    assert_eq!(
                        b.extreme::<false>(init).to_bits(),
                        want.to_bits(),
                        "{row:?}"
                    );
                    let got = b.extreme::<true>(-init);
                    assert_eq!(got.to_bits(), want_min.to_bits(), "{row:?}");
                }
            }
        }
    }

    #[test]
    fn row_quantize_matches_the_scalar_code() {
        let mut src: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.37).collect();
        src.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            2.5,
            3.5,
            -2.5,
            1e30,
        ]);
        let scales = [
            (0.5f32, 128.0f32),
            (1.0, 0.0),
            (3.0, 17.0),
            (0.012_345_7, 131.0),
            (7.3 / 255.0, 0.0),
            (1e-3, 255.0),
            (f32::MIN_POSITIVE / 4.0, 9.0),
            (1e38, 3.0),
            (0.25, f32::INFINITY),
            (-0.37, 100.0),
            (0.1, 0.5),
            (1.0 / 3.0, 70000.0),
            (0.5, -3.0),
        ];
        for (s, z) in scales {
            let mut src = src.clone();
            // Quotients at, just below and just above half-integers (where rounding by the
            // reciprocal could go the other way), and huge ones.
            for k in -300..300 {
                let h = (k as f32 + 0.5) * s;
                src.extend([h, h.next_up(), h.next_down(), (k as f32 + 0.5) / (1.0 / s)]);
                src.extend([h.next_up().next_up(), h.next_down().next_down()]);
            }
            src.extend([3e5 * s, 1.5e6 * s + s / 2.0, -4e6 * s]);
            // A NaN among small numbers (a whole vector of them, whatever the alignment).
            src.extend([1.0; 15].iter().chain(&[f32::NAN]).chain(&[1.0; 15]));
            // And numbers of every size.
            let mut next = super::super::lcg(s.to_bits().into());
            src.extend((0..4000).map(|_| f32::from_bits((next() >> 32) as u32)));
            let want: Vec<u8> = src.iter().map(|&x| quantize(x, s, z)).collect();
            let mut got = vec![7u8; src.len()];
            // SAFETY: both rows hold their elements.
            unsafe { kiln_row_quantize(src.as_ptr(), got.as_mut_ptr(), src.len() as i64, s, z) };
            assert_eq!(got, want, "s {s} z {z}");
            #[cfg(target_arch = "x86_64")]
            if crate::avx2_fma() {
                got.fill(7);
                // SAFETY: the host has AVX2; both rows hold their elements.
                let i = unsafe {
                    avx2::quantize(src.as_ptr(), None, got.as_mut_ptr(), src.len(), (s, z))
                };
                assert_eq!(got[..i], want[..i], "avx2: s {s} z {z}");
            }
        }
        // Ties to even, NaN 0, saturation both ways.
        assert_eq!(quantize(2.5, 1.0, 0.0), 2);
        assert_eq!(quantize(3.5, 1.0, 0.0), 4);
        assert_eq!(quantize(f32::NAN, 1.0, 0.0), 0);
        assert_eq!(quantize(1e30, 1.0, 0.0), 255);
        assert_eq!(quantize(-1e30, 1.0, 0.0), 0);
    }

    /// The shifted int8 quantizer is its definition — the i8 conversion (saturating, NaN 0)
    /// plus 128 — on halves, NaNs, infinities, zeros of both signs and numbers of every size.
    #[test]
    fn row_quantize_s8_is_the_shifted_int8_quantizer() {
        let mut next = super::super::lcg(11);
        // (A scale of 0, ∞ or NaN: quotients of NaN, 0/0 and ∞/∞ among the others.)
        let odd = [0.0, -0.0, f32::INFINITY, f32::NAN, -0.5];
        let scales = [0.007_872_998f32, 1.0, 0.5, 3.1, 1e-30]
            .into_iter()
            .chain(odd);
        // Without a clamp, a ReLU's, others (NaN: every quotient NaN), over 3,000 elements
        // (chunks of the clamped row).
        let clamps = [f32::NEG_INFINITY, 0.0, -0.0, -3.5, 0.3, f32::NAN];
        for (s, lo) in scales.flat_map(|s| clamps.map(|lo| (s, lo))) {
            let mut src: Vec<f32> = (-400..400).map(|k| (k as f32 + 0.5) * s).collect();
            src.extend([
                f32::NAN,
                -f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                0.0,
                -0.0,
            ]);
            src.extend([127.5 * s, -128.5 * s, 127.49 * s, -128.51 * s, 1e30, -1e30]);
            src.extend((0..3000).map(|_| f32::from_bits((next() >> 32) as u32)));
            let want: Vec<u8> = src
                .iter()
                .map(|&x| {
                    let r = (maximum(x, lo) / s).round_ties_even();
                    // Rust's `as` saturates and takes NaN to 0, as kiln's conversions do.
                    (i32::from(r as i8) + 128) as u8
                })
                .collect();
            let mut got = vec![7u8; src.len()];
            // SAFETY: both rows hold their elements.
            unsafe {
                kiln_row_quantize_s8(src.as_ptr(), got.as_mut_ptr(), src.len() as i64, s, lo)
            };
            assert_eq!(got, want, "s {s} lo {lo}");
        }
    }

    #[test]
    fn a_residual_is_dequantized_and_added_first() {
        let src: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.037).collect();
        let res: Vec<u8> = (0..1000).map(|i| (i * 53 % 256) as u8).collect();
        for (s, z, rz, rs) in [
            (0.05f32, 3.0f32, 0.0f32, 0.016f32),
            (0.012, 111.0, 128.0, 0.5),
        ] {
            let want: Vec<u8> = (src.iter().zip(&res))
                .map(|(&x, &r)| quantize(x + (f32::from(r) - rz) * rs, s, z))
                .collect();
            for n in [src.len(), 9, 23] {
                let mut got = vec![7u8; n];
                // SAFETY: the rows hold n elements.
                unsafe {
                    kiln_row_quantize_res(
                        src.as_ptr(),
                        res.as_ptr(),
                        got.as_mut_ptr(),
                        n as i64,
                        s,
                        z,
                        rz,
                        rs,
                    )
                };
                assert_eq!(got, want[..n], "s {s} z {z} n {n}");
                #[cfg(target_arch = "x86_64")]
                if crate::avx2_fma() {
                    let r = Some(Residual {
                        row: res.as_ptr(),
                        z: rz,
                        s: rs,
                    });
                    let mut got = vec![7u8; n];
                    // SAFETY: the host has AVX2; the rows hold n elements.
                    let i = unsafe { avx2::quantize(src.as_ptr(), r, got.as_mut_ptr(), n, (s, z)) };
                    assert_eq!(got[..i], want[..i], "avx2: s {s} z {z}");
                }
            }
        }
    }

    #[test]
    fn row_qdq_is_the_elementwise_ops() {
        let mut src: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.0137).collect();
        // (A row added after the scale: `quarter`, below.)
        src.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            1e30,
            0.0125,
            -0.004,
        ]);
        // (s, z, zo, lo, hi, d): a u8 pair, an i8 pair without a dequantizer scale, a zero
        // point that is not an integer, one taken off apart, a scale of 0.
        let quarter = vec![0.25f32; src.len()];
        for (s, z, zo, lo, hi, d) in [
            (0.0125f32, 136.0f32, 136.0f32, 0.0f32, 255.0f32, 0.0125f32),
            (0.05, 0.0, 0.0, -128.0, 127.0, 1.0),
            (0.05, 3.5, 3.5, 0.0, 255.0, 0.5),
            (0.02, 7.0, 6.0, -128.0, 127.0, 1.0),
            (0.0, 1.0, 1.0, 0.0, 255.0, 1.0),
        ] {
            let want: Vec<u32> = src
                .iter()
                .map(|&x| {
                    // The loop's ops: cast<u8|i8> truncates and saturates (NaN 0), and back.
                    let t = ((x * 0.75 + 0.25) / s).round_ties_even() + z;
                    let q = if t.is_nan() {
                        0
                    } else {
                        t.clamp(lo, hi) as i32
                    };
                    ((q as f32 - zo) * d).to_bits()
                })
                .collect();
            let mut got = vec![f32::NAN; src.len()];
            // SAFETY: both rows hold their elements.
            unsafe {
                let n = src.len() as i64;
                let r = quarter.as_ptr();
                kiln_row_qdq(
                    src.as_ptr(),
                    r,
                    got.as_mut_ptr(),
                    n,
                    0.75,
                    s,
                    z,
                    zo,
                    lo,
                    hi,
                    d,
                )
            };
            let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "s {s} z {z} zo {zo}");
            #[cfg(target_arch = "x86_64")]
            if crate::avx2_fma() {
                let p = Pair {
                    r: quarter.as_ptr(),
                    m: 0.75,
                    s,
                    z,
                    zo,
                    lo,
                    hi,
                    d,
                };
                let mut got = vec![f32::NAN; src.len()];
                // SAFETY: the host has AVX2; both rows hold their elements.
                let i = unsafe { avx2::qdq(src.as_ptr(), got.as_mut_ptr(), src.len(), &p) };
                let got: Vec<u32> = got[..i].iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want[..i], "avx2: s {s} z {z} zo {zo}");
            }
        }
    }

    #[test]
    fn row_dequantize_is_the_elementwise_ops() {
        let src: Vec<u8> = (0..1000).map(|i| (i * 37 % 256) as u8).collect();
        for (z, s) in [
            (0.0f32, 0.018_375_764f32),
            (128.0, 0.5),
            (3.0, -1e-3),
            (0.5, 7.0),
        ] {
            let want: Vec<u32> = src
                .iter()
                .map(|&x| ((f32::from(x) - z) * s).to_bits())
                .collect();
            for n in [src.len(), 7, 17] {
                let mut got = vec![f32::NAN; n];
                // SAFETY: both rows hold n elements.
                unsafe { kiln_row_dequantize(src.as_ptr(), got.as_mut_ptr(), n as i64, z, s) };
                let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want[..n], "z {z} s {s}");
                #[cfg(target_arch = "x86_64")]
                if crate::avx2_fma() {
                    let mut got = vec![f32::NAN; n];
                    // SAFETY: the host has AVX2; both rows hold n elements.
                    let i = unsafe { avx2::dequantize(src.as_ptr(), got.as_mut_ptr(), n, z, s) };
                    let got: Vec<u32> = got[..i].iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want[..i], "avx2: z {z} s {s}");
                }
            }
        }
    }

    #[test]
    fn row_sum_matches_f64_sum() {
        let row: Vec<f32> = (0..1001).map(|i| (i as f32 * 0.731).cos() * 1e3).collect();
        let want: f64 = row.iter().map(|&x| f64::from(x)).sum::<f64>() + 0.5;
        // SAFETY: the row holds its elements.
        let got = unsafe { kiln_row_sum_f64(row.as_ptr(), row.len() as i64, 0.5) };
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{got} vs {want}"
        );
        // The squares, each rounded to f32 before it is added.
        let want: f64 = row.iter().map(|&x| f64::from(x * x)).sum::<f64>() + 0.5;
        // SAFETY: the row holds its elements.
        let got = unsafe { kiln_row_sumsq_f64(row.as_ptr(), row.len() as i64, 0.5) };
        assert!((got - want).abs() <= 1e-12 * want, "{got} vs {want}");
        let wide: f64 = row
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            + 0.5;
        assert!(wide != want && (got - wide).abs() > 1e-9 * wide.abs().min(1.0));
    }

    #[test]
    fn row_exp_matches_the_scalar_lanes_and_libm() {
        let mut src: Vec<f32> = (0..4000).map(|i| (i as f32 - 2000.0) * 0.06).collect();
        src.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            88.7,
            -103.0,
            -87.5,
            -103.7,
            -104.2,
            -250.0,
            -3.0e38,
        ]);
        // Below the clamp every path gives +0 without computing an underflow: exactly what
        // the clamped value itself computes to (so results are as they were with the clamp).
        assert_eq!(exp(-104.0).to_bits(), 0);
        let s = 0.25;
        let mut dst = vec![0f32; src.len()];
        // SAFETY: both hold `src.len()` elements.
        unsafe { kiln_row_exp_sub(src.as_ptr(), dst.as_mut_ptr(), src.len() as i64, s) };
        for (&x, &y) in src.iter().zip(&dst) {
            let lane = exp(x - s);
            if x - s < -104.0 {
                assert_eq!(y.to_bits(), 0, "exp({x} - {s})");
            }
            assert!(
                y.to_bits() == lane.to_bits() || (y.is_nan() && lane.is_nan()),
                "exp({x} - {s}): {y} vs {lane}"
            );
            // The shift rounds to f32 first; from there, within 2 ulp of exp.
            let exact = f64::from(x - s).exp();
            if exact.is_finite() && exact > 1e-37 && exact < 1e38 {
                let ulp = (exact as f32).to_bits().abs_diff(y.to_bits());
                assert!(ulp <= 2, "exp({x} - {s}) = {y}, {ulp} ulp from {exact}");
            }
        }
    }
}
