//! Element types of tensors and the dtype classes that type rules accept.

use std::fmt;

/// The element type of a tensor.
///
/// Quantized block types (e.g. 4-bit blocks of 32 with an f16 scale) will join this enum; every
/// size computation therefore goes through [`DType::storage_bytes`], which knows that an element
/// need not occupy a whole number of bytes.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, serde::Serialize, serde::Deserialize,
)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
    /// 4-bit signed integer.
    I4,
    /// 4-bit unsigned integer.
    U4,
    /// 2-bit signed integer.
    I2,
    /// 2-bit unsigned integer.
    U2,
    /// 8-bit float, 4 exponent bits, 3 mantissa bits, no infinities (OCP FP8 E4M3).
    F8E4M3FN,
    /// E4M3 without negative zero; NaN is 0x80.
    F8E4M3FNUZ,
    /// 8-bit float, 5 exponent bits, 2 mantissa bits, IEEE-style (OCP FP8 E5M2).
    F8E5M2,
    /// E5M2 without negative zero or infinities; NaN is 0x80.
    F8E5M2FNUZ,
    /// Power-of-two scale: 8 exponent bits, no sign or mantissa (OCP MX E8M0).
    F8E8M0,
    /// 4-bit float, 2 exponent bits, 1 mantissa bit (OCP MX FP4).
    F4E2M1,
}

impl DType {
    pub const ALL: [DType; 23] = [
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::Bool,
        DType::I4,
        DType::U4,
        DType::I2,
        DType::U2,
        DType::F8E4M3FN,
        DType::F8E4M3FNUZ,
        DType::F8E5M2,
        DType::F8E5M2FNUZ,
        DType::F8E8M0,
        DType::F4E2M1,
    ];

    /// The name used in `.kir` text (`f32`, `i64`, `bool`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::U64 => "u64",
            DType::Bool => "bool",
            DType::I4 => "i4",
            DType::U4 => "u4",
            DType::I2 => "i2",
            DType::U2 => "u2",
            DType::F8E4M3FN => "f8e4m3fn",
            DType::F8E4M3FNUZ => "f8e4m3fnuz",
            DType::F8E5M2 => "f8e5m2",
            DType::F8E5M2FNUZ => "f8e5m2fnuz",
            DType::F8E8M0 => "f8e8m0",
            DType::F4E2M1 => "f4e2m1",
        }
    }

    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bits one element occupies in memory.
    pub fn bits(self) -> u32 {
        match self {
            DType::I2 | DType::U2 => 2,
            DType::I4 | DType::U4 | DType::F4E2M1 => 4,
            DType::Bool | DType::I8 | DType::U8 => 8,
            DType::F8E4M3FN
            | DType::F8E4M3FNUZ
            | DType::F8E5M2
            | DType::F8E5M2FNUZ
            | DType::F8E8M0 => 8,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 16,
            DType::F32 | DType::I32 | DType::U32 => 32,
            DType::F64 | DType::I64 | DType::U64 => 64,
        }
    }

    /// Bytes needed to store `numel` elements, or `None` on overflow.
    pub fn storage_bytes(self, numel: u64) -> Option<u64> {
        numel
            .checked_mul(u64::from(self.bits()))?
            .checked_add(7)
            .map(|b| b / 8)
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            DType::F16
                | DType::BF16
                | DType::F32
                | DType::F64
                | DType::F8E4M3FN
                | DType::F8E4M3FNUZ
                | DType::F8E5M2
                | DType::F8E5M2FNUZ
                | DType::F8E8M0
                | DType::F4E2M1
        )
    }

    pub fn is_signed_int(self) -> bool {
        matches!(
            self,
            DType::I8 | DType::I16 | DType::I32 | DType::I64 | DType::I4 | DType::I2
        )
    }

    pub fn is_unsigned_int(self) -> bool {
        matches!(
            self,
            DType::U8 | DType::U16 | DType::U32 | DType::U64 | DType::U4 | DType::U2
        )
    }

    /// Types narrower than a byte or minifloats: stored one bit pattern per byte in memory,
    /// converted by [`crate::narrow`].
    pub fn is_narrow(self) -> bool {
        crate::narrow::is_narrow(self)
    }

    pub fn is_int(self) -> bool {
        self.is_signed_int() || self.is_unsigned_int()
    }

    pub fn is_bool(self) -> bool {
        self == DType::Bool
    }

    /// The least and greatest value of an integer type (as f64: exact up to 2^53, so the
    /// 64-bit types' ends round outward-safe only approximately); `None` for the others.
    pub fn int_range(self) -> Option<(f64, f64)> {
        if !self.is_int() {
            return None;
        }
        let bits = self.bits() as i32;
        Some(if self.is_signed_int() {
            (-(2f64.powi(bits - 1)), 2f64.powi(bits - 1) - 1.0)
        } else {
            (0.0, 2f64.powi(bits) - 1.0)
        })
    }

    /// The class bit of this dtype, for matching against a [`DTypeSet`].
    fn class(self) -> DTypeSet {
        if self.is_float() {
            DTypeSet::FLOAT
        } else if self.is_signed_int() {
            DTypeSet::SINT
        } else if self.is_unsigned_int() {
            DTypeSet::UINT
        } else {
            DTypeSet::BOOL
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of dtype classes: what an op's type rule accepts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DTypeSet(u8);

impl DTypeSet {
    pub const FLOAT: DTypeSet = DTypeSet(1);
    pub const SINT: DTypeSet = DTypeSet(2);
    pub const UINT: DTypeSet = DTypeSet(4);
    pub const BOOL: DTypeSet = DTypeSet(8);
    pub const INT: DTypeSet = DTypeSet(2 | 4);
    pub const SIGNED: DTypeSet = DTypeSet(1 | 2);
    pub const NUM: DTypeSet = DTypeSet(1 | 2 | 4);
    pub const LOGIC: DTypeSet = DTypeSet(2 | 4 | 8);
    pub const ALL: DTypeSet = DTypeSet(15);

    pub fn contains(self, dtype: DType) -> bool {
        self.0 & dtype.class().0 != 0
    }

    /// A human description for error messages ("float or signed integer").
    pub fn describe(self) -> String {
        let mut parts = Vec::new();
        if self.0 & DTypeSet::FLOAT.0 != 0 {
            parts.push("float");
        }
        match self.0 & DTypeSet::INT.0 {
            6 => parts.push("integer"),
            2 => parts.push("signed integer"),
            4 => parts.push("unsigned integer"),
            _ => {}
        }
        if self.0 & DTypeSet::BOOL.0 != 0 {
            parts.push("bool");
        }
        parts.join(" or ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_name("f8"), None);
    }

    #[test]
    fn storage_bytes_checks_overflow() {
        assert_eq!(DType::F32.storage_bytes(3), Some(12));
        assert_eq!(DType::F64.storage_bytes(u64::MAX / 4), None);
    }

    #[test]
    fn classes() {
        assert!(DTypeSet::SIGNED.contains(DType::I8));
        assert!(!DTypeSet::SIGNED.contains(DType::U8));
        assert!(DTypeSet::LOGIC.contains(DType::Bool));
        assert_eq!(DTypeSet::SIGNED.describe(), "float or signed integer");
        assert_eq!(DTypeSet::LOGIC.describe(), "integer or bool");
    }
}
