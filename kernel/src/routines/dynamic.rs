//! The dynamic quantizer (`dynamic_quantize`, ONNX DynamicQuantizeLinear): both extremes of
//! a tensor in one pass (`rows`' bounds), the scale and zero point, then its values
//! quantized as `row_quantize` does.

use super::rows;

/// ONNX DynamicQuantizeLinear of `n` f32s (see the routine table's `dynamic_quantize`): both
/// extremes in one pass, the scale and zero point as the op's scalar arithmetic computes
/// them, then the elements quantized as [`rows::kiln_row_quantize`] does (in parts over the helper
/// threads where there are enough of them).
///
/// # Safety
/// `x` readable and `q` writable for `n` elements; `s` and `z` writable.
pub unsafe extern "C" fn kiln_dynamic_quantize(
    x: *const f32,
    q: *mut u8,
    s: *mut f32,
    z: *mut u8,
    n: i64,
) {
    let n = n.max(0) as usize;
    // SAFETY: forwarded.
    let (lo, hi) = unsafe { rows::row_bounds(x, n) };
    let (lo, hi) = (rows::minimum(lo, 0.0), rows::maximum(hi, 0.0));
    let range = if hi == lo { 1.0 } else { hi - lo };
    let scale = range / 255.0;
    let zero = rows::minimum(rows::maximum(0.0 - lo / scale, 0.0), 255.0).round_ties_even();
    const PART: usize = 1 << 14;
    let parts = (n / PART).clamp(1, crate::threads::helpers() + 1);
    let (x, q) = (x as usize, q as usize);
    crate::threads::parallel_for(parts, |p| {
        let (from, to) = (n * p / parts, n * (p + 1) / parts);
        let (x, q) = (
            (x as *const f32).wrapping_add(from),
            (q as *mut u8).wrapping_add(from),
        );
        // SAFETY: part p of both rows.
        unsafe { rows::row_quantize(x, None, q, (to - from) as i64, (scale, zero)) };
    });
    // SAFETY: the scalars are writable.
    unsafe {
        *s = scale;
        // The conversion to u8 of a number in 0..=255 or NaN (0).
        *z = if zero.is_nan() { 0 } else { zero as u8 };
    }
}
