//! Narrow element types: 4- and 2-bit integers and the 8-, 4-bit minifloats of quantized models.
//! Each element is kept as its bit pattern in one byte; this module converts between those
//! patterns and f64 / i128, rounding to nearest-even and saturating as ONNX specifies.

use crate::dtype::DType;

/// A minifloat format: sign (or not), exponent and mantissa widths, bias, and how it spells
/// infinity and NaN.
#[derive(Clone, Copy)]
struct Format {
    signed: bool,
    exp: u32,
    man: u32,
    bias: i32,
    /// IEEE-style infinities (all-ones exponent, zero mantissa).
    inf: bool,
    /// NaN is the pattern that would be negative zero; there is no negative zero ("FNUZ").
    nan_is_neg_zero: bool,
    /// NaN is all ones ("FN": the top exponent is otherwise an ordinary binade).
    nan_all_ones: bool,
}

fn format(d: DType) -> Option<Format> {
    let f = |signed, exp, man, bias, inf, nuz, ones| Format {
        signed,
        exp,
        man,
        bias,
        inf,
        nan_is_neg_zero: nuz,
        nan_all_ones: ones,
    };
    Some(match d {
        DType::F8E4M3FN => f(true, 4, 3, 7, false, false, true),
        DType::F8E4M3FNUZ => f(true, 4, 3, 8, false, true, false),
        DType::F8E5M2 => f(true, 5, 2, 15, true, false, false),
        DType::F8E5M2FNUZ => f(true, 5, 2, 16, false, true, false),
        DType::F4E2M1 => f(true, 2, 1, 1, false, false, false),
        DType::F8E8M0 => f(false, 8, 0, 127, false, false, true),
        _ => return None,
    })
}

impl Format {
    fn width(self) -> u32 {
        u32::from(self.signed) + self.exp + self.man
    }

    fn sign_bit(self) -> u8 {
        if self.signed {
            1 << (self.exp + self.man)
        } else {
            0
        }
    }

    fn nan(self) -> u8 {
        if self.nan_is_neg_zero {
            self.sign_bit()
        } else if self.inf {
            // Quiet NaN: top exponent, top mantissa bit.
            (((1u32 << self.exp) - 1) << self.man | 1 << (self.man.max(1) - 1)) as u8
        } else if self.nan_all_ones {
            ((1u32 << (self.exp + self.man)) - 1) as u8
        } else {
            // No NaN at all (f4e2m1): NaN becomes negative zero, as ml_dtypes does.
            self.sign_bit()
        }
    }

    fn is_nan(self, b: u8) -> bool {
        let mag = b & !self.sign_bit();
        let top = ((1u32 << self.exp) - 1) as u8;
        let e = mag >> self.man;
        let m = mag & ((1u8 << self.man) - 1);
        if self.nan_is_neg_zero {
            return b == self.sign_bit();
        }
        if self.inf {
            return e == top && m != 0;
        }
        self.nan_all_ones && mag == ((1u32 << (self.exp + self.man)) - 1) as u8
    }

    /// The value of a non-NaN magnitude pattern.
    fn magnitude(self, mag: u8) -> f64 {
        let e = i32::from(mag >> self.man);
        let m = f64::from(mag & ((1u8 << self.man) - 1));
        let scale = f64::from(1u32 << self.man);
        if self.inf && e == (1 << self.exp) - 1 {
            return f64::INFINITY;
        }
        if e == 0 && self.man > 0 {
            (m / scale) * 2f64.powi(1 - self.bias)
        } else {
            (1.0 + m / scale) * 2f64.powi(e - self.bias)
        }
    }

    /// The largest finite magnitude pattern.
    fn max_mag(self) -> u8 {
        let man_ones = (1u32 << self.man) - 1;
        let top = (1u32 << self.exp) - 1;
        let m = if self.inf {
            (top - 1) << self.man | man_ones
        } else if self.nan_all_ones {
            (top << self.man | man_ones) - 1
        } else {
            top << self.man | man_ones
        };
        m as u8
    }

    fn decode(self, b: u8) -> f64 {
        if self.is_nan(b) {
            return f64::NAN;
        }
        let mag = self.magnitude(b & !self.sign_bit());
        if self.signed && b & self.sign_bit() != 0 {
            -mag
        } else {
            mag
        }
    }

    /// Rounds to nearest, ties to even; out of range becomes the largest finite value when
    /// `saturate`, else infinity (or NaN for formats without one).
    fn encode(self, x: f64, saturate: bool) -> u8 {
        if x.is_nan() {
            return self.nan();
        }
        let neg = x.is_sign_negative();
        if neg && !self.signed {
            return self.nan();
        }
        let sign = if neg && !(self.nan_is_neg_zero && x == 0.0) {
            self.sign_bit()
        } else {
            0
        };
        let a = x.abs();
        let max = self.max_mag();
        let max_v = self.magnitude(max);
        // The would-be next value above the largest finite one decides overflow rounding.
        let next_v = self.magnitude_above(max);
        let overflow = |s: u8| -> u8 {
            if saturate || !(self.inf || self.nan_all_ones || self.nan_is_neg_zero) {
                s | max
            } else if self.inf {
                s | (((1u32 << self.exp) - 1) << self.man) as u8
            } else {
                self.nan()
            }
        };
        if a.is_infinite() {
            return overflow(sign);
        }
        if a > max_v {
            let mid = (max_v + next_v) / 2.0;
            let max_even = max & 1 == 0;
            if a < mid || (a == mid && max_even) {
                return sign | max;
            }
            return overflow(sign);
        }
        // The largest pattern not above `a` (magnitudes grow with the pattern), then the
        // nearer of it and its successor, ties to the even pattern.
        let (mut lo, mut hi) = (0u8, max);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if self.magnitude(mid) <= a {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let pick = if lo == max {
            lo
        } else {
            let (vl, vh) = (self.magnitude(lo), self.magnitude(lo + 1));
            if a - vl < vh - a || (a - vl == vh - a && lo & 1 == 0) {
                lo
            } else {
                lo + 1
            }
        };
        if pick == 0 && self.nan_is_neg_zero {
            return 0;
        }
        sign | pick
    }

    /// The value one step above pattern `mag` as if the format continued.
    fn magnitude_above(self, mag: u8) -> f64 {
        let e = i32::from(mag >> self.man);
        let m = u32::from(mag & ((1u8 << self.man) - 1)) + 1;
        let scale = f64::from(1u32 << self.man);
        (1.0 + f64::from(m) / scale) * 2f64.powi(e - self.bias)
    }
}

/// E8M0 scales: 2^(e-127); conversion rounds up to the next power of two (ONNX's default).
fn encode_e8m0(x: f64, saturate: bool) -> u8 {
    let f = x as f32;
    let bits = f.to_bits();
    let exp = (bits >> 23) & 0xFF;
    if exp == 0xFF {
        return 0xFF;
    }
    let mut e = exp as u16;
    if bits & 0x7F_FFFF != 0 && !(saturate && exp == 0xFE) {
        e += 1;
    }
    e.min(0xFF) as u8
}

fn int_width(d: DType) -> Option<(u32, bool)> {
    match d {
        DType::I4 => Some((4, true)),
        DType::U4 => Some((4, false)),
        DType::I2 => Some((2, true)),
        DType::U2 => Some((2, false)),
        _ => None,
    }
}

/// Whether `d` is stored as one bit pattern per byte.
pub fn is_narrow(d: DType) -> bool {
    format(d).is_some() || int_width(d).is_some()
}

/// The value of a bit pattern.
pub fn decode(d: DType, b: u8) -> f64 {
    if let Some((w, signed)) = int_width(d) {
        return decode_int(w, signed, b) as f64;
    }
    match format(d) {
        Some(f) if d == DType::F8E8M0 => {
            if b == 0xFF {
                f64::NAN
            } else {
                2f64.powi(i32::from(b) - f.bias)
            }
        }
        Some(f) => f.decode(b & ((1u16 << f.width()) - 1) as u8),
        None => f64::NAN,
    }
}

fn decode_int(w: u32, signed: bool, b: u8) -> i128 {
    let v = i128::from(b & ((1u16 << w) - 1) as u8);
    if signed && v >= 1 << (w - 1) {
        v - (1 << w)
    } else {
        v
    }
}

/// The integer value of a bit pattern (floats truncate toward zero).
pub fn decode_i128(d: DType, b: u8) -> i128 {
    match int_width(d) {
        Some((w, signed)) => decode_int(w, signed, b),
        None => {
            let v = decode(d, b);
            if v.is_finite() {
                v.trunc() as i128
            } else {
                0
            }
        }
    }
}

/// The pattern of a value: floats round to nearest-even (saturating when asked); integers
/// truncate toward zero and wrap to the width, NaN and infinities becoming 0.
pub fn encode_f64(d: DType, x: f64, saturate: bool) -> u8 {
    if let Some((w, _)) = int_width(d) {
        let v = if x.is_finite() { x.trunc() as i128 } else { 0 };
        return (v & ((1 << w) - 1)) as u8;
    }
    if d == DType::F8E8M0 {
        return encode_e8m0(x, saturate);
    }
    match format(d) {
        Some(f) => f.encode(x, saturate),
        None => 0,
    }
}

/// The pattern of an integer value (integers wrap).
pub fn encode_i128(d: DType, x: i128) -> u8 {
    match int_width(d) {
        Some((w, _)) => (x & ((1 << w) - 1)) as u8,
        None => encode_f64(d, x as f64, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_all(d: DType) {
        for b in 0..=255u8 {
            let f = format(d).unwrap();
            if u32::from(b) >= 1 << f.width() {
                continue;
            }
            let v = decode(d, b);
            if v.is_nan() {
                continue;
            }
            assert_eq!(
                decode(d, encode_f64(d, v, false)),
                v,
                "{d:?} pattern {b:#x} = {v}"
            );
        }
    }

    #[test]
    fn every_finite_pattern_round_trips() {
        for d in [
            DType::F8E4M3FN,
            DType::F8E4M3FNUZ,
            DType::F8E5M2,
            DType::F8E5M2FNUZ,
            DType::F4E2M1,
        ] {
            round_trip_all(d);
        }
    }

    #[test]
    fn float8_limits_match_the_spec() {
        assert_eq!(decode(DType::F8E4M3FN, 0x7E), 448.0);
        assert!(decode(DType::F8E4M3FN, 0x7F).is_nan());
        assert_eq!(decode(DType::F8E4M3FNUZ, 0x7F), 240.0);
        assert!(decode(DType::F8E4M3FNUZ, 0x80).is_nan());
        assert_eq!(decode(DType::F8E5M2, 0x7B), 57344.0);
        assert_eq!(decode(DType::F8E5M2, 0x7C), f64::INFINITY);
        assert_eq!(decode(DType::F4E2M1, 0x7), 6.0);
        assert_eq!(decode(DType::F8E8M0, 127), 1.0);
    }

    #[test]
    fn rounding_and_overflow() {
        // Ties go to the even pattern; past the top, saturate or overflow.
        assert_eq!(encode_f64(DType::F8E4M3FN, 464.0, false), 0x7E);
        assert!(decode(DType::F8E4M3FN, encode_f64(DType::F8E4M3FN, 465.0, false)).is_nan());
        assert_eq!(encode_f64(DType::F8E4M3FN, 1e10, true), 0x7E);
        assert_eq!(encode_f64(DType::F8E5M2, 61440.0, false), 0x7C);
        assert_eq!(encode_f64(DType::F8E5M2, 61440.0, true), 0x7B);
        assert_eq!(encode_f64(DType::F8E5M2, -0.0, false), 0x80);
        assert_eq!(encode_f64(DType::F8E5M2FNUZ, -0.0, false), 0x00);
        assert_eq!(encode_f64(DType::F4E2M1, 1e10, false), 0x7);
        assert_eq!(encode_f64(DType::F8E8M0, 3.0, false), 129);
        assert_eq!(decode(DType::F8E8M0, 129), 4.0);
    }

    #[test]
    fn narrow_integers_wrap() {
        assert_eq!(
            decode_i128(DType::I4, encode_f64(DType::I4, 300.0, true)),
            -4
        );
        assert_eq!(decode_i128(DType::U4, encode_f64(DType::U4, -9.7, true)), 7);
        assert_eq!(decode_i128(DType::I2, encode_i128(DType::I2, 2)), -2);
        assert_eq!(encode_f64(DType::I4, f64::NAN, true), 0);
    }
}
