//! Concrete tensors: a dtype-tagged vector of elements plus integer extents. Constants in graphs,
//! interpreter values and inputs/outputs all use this type; the data sits behind an `Arc` so
//! cloning a tensor (or a graph that holds it) never copies the elements.

use std::fmt;
use std::sync::Arc;

use half::{bf16, f16};

use crate::dtype::DType;
use crate::shape::{Shape, TensorType};

/// Elements of one tensor, in row-major order.
#[derive(Clone)]
pub enum Data {
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    Bool(Vec<bool>),
    // Narrow types: one bit pattern per element (see `narrow`).
    I4(Vec<u8>),
    U4(Vec<u8>),
    I2(Vec<u8>),
    U2(Vec<u8>),
    F8E4M3FN(Vec<u8>),
    F8E4M3FNUZ(Vec<u8>),
    F8E5M2(Vec<u8>),
    F8E5M2FNUZ(Vec<u8>),
    F8E8M0(Vec<u8>),
    F4E2M1(Vec<u8>),
}

/// Narrow dtypes with their Data constructors, for the macros below.
macro_rules! narrow_variants {
    ($m:ident) => {
        $m!(I4, U4, I2, U2, F8E4M3FN, F8E4M3FNUZ, F8E5M2, F8E5M2FNUZ, F8E8M0, F4E2M1)
    };
}

/// Runs `$body` with `$v` bound to the element vector of `$data`, whatever its dtype. The body
/// must produce the same type for every variant; `$wrap` names the constructor of the variant.
#[macro_export]
macro_rules! with_data {
    ($data:expr, $v:ident, $wrap:ident => $body:expr) => {
        match $data {
            $crate::Data::F16($v) => {
                #[allow(unused)]
                use $crate::Data::F16 as $wrap;
                $body
            }
            $crate::Data::BF16($v) => {
                #[allow(unused)]
                use $crate::Data::BF16 as $wrap;
                $body
            }
            $crate::Data::F32($v) => {
                #[allow(unused)]
                use $crate::Data::F32 as $wrap;
                $body
            }
            $crate::Data::F64($v) => {
                #[allow(unused)]
                use $crate::Data::F64 as $wrap;
                $body
            }
            $crate::Data::I8($v) => {
                #[allow(unused)]
                use $crate::Data::I8 as $wrap;
                $body
            }
            $crate::Data::I16($v) => {
                #[allow(unused)]
                use $crate::Data::I16 as $wrap;
                $body
            }
            $crate::Data::I32($v) => {
                #[allow(unused)]
                use $crate::Data::I32 as $wrap;
                $body
            }
            $crate::Data::I64($v) => {
                #[allow(unused)]
                use $crate::Data::I64 as $wrap;
                $body
            }
            $crate::Data::U8($v) => {
                #[allow(unused)]
                use $crate::Data::U8 as $wrap;
                $body
            }
            $crate::Data::U16($v) => {
                #[allow(unused)]
                use $crate::Data::U16 as $wrap;
                $body
            }
            $crate::Data::U32($v) => {
                #[allow(unused)]
                use $crate::Data::U32 as $wrap;
                $body
            }
            $crate::Data::U64($v) => {
                #[allow(unused)]
                use $crate::Data::U64 as $wrap;
                $body
            }
            $crate::Data::Bool($v) => {
                #[allow(unused)]
                use $crate::Data::Bool as $wrap;
                $body
            }
            $crate::Data::I4($v) => {
                #[allow(unused)]
                use $crate::Data::I4 as $wrap;
                $body
            }
            $crate::Data::U4($v) => {
                #[allow(unused)]
                use $crate::Data::U4 as $wrap;
                $body
            }
            $crate::Data::I2($v) => {
                #[allow(unused)]
                use $crate::Data::I2 as $wrap;
                $body
            }
            $crate::Data::U2($v) => {
                #[allow(unused)]
                use $crate::Data::U2 as $wrap;
                $body
            }
            $crate::Data::F8E4M3FN($v) => {
                #[allow(unused)]
                use $crate::Data::F8E4M3FN as $wrap;
                $body
            }
            $crate::Data::F8E4M3FNUZ($v) => {
                #[allow(unused)]
                use $crate::Data::F8E4M3FNUZ as $wrap;
                $body
            }
            $crate::Data::F8E5M2($v) => {
                #[allow(unused)]
                use $crate::Data::F8E5M2 as $wrap;
                $body
            }
            $crate::Data::F8E5M2FNUZ($v) => {
                #[allow(unused)]
                use $crate::Data::F8E5M2FNUZ as $wrap;
                $body
            }
            $crate::Data::F8E8M0($v) => {
                #[allow(unused)]
                use $crate::Data::F8E8M0 as $wrap;
                $body
            }
            $crate::Data::F4E2M1($v) => {
                #[allow(unused)]
                use $crate::Data::F4E2M1 as $wrap;
                $body
            }
        }
    };
}

/// A Rust scalar type that is the element type of one dtype.
pub trait Element: Copy + Send + Sync + 'static {
    const DTYPE: DType;
    fn wrap(v: Vec<Self>) -> Data;
    fn slice(d: &Data) -> Option<&[Self]>;
}

macro_rules! element {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn wrap(v: Vec<Self>) -> Data {
                Data::$variant(v)
            }
            fn slice(d: &Data) -> Option<&[Self]> {
                match d {
                    Data::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    )*};
}

element!(
    f16 => F16, bf16 => BF16, f32 => F32, f64 => F64, i8 => I8, i16 => I16, i32 => I32,
    i64 => I64, u8 => U8, u16 => U16, u32 => U32, u64 => U64, bool => Bool,
);

impl Data {
    pub fn dtype(&self) -> DType {
        match self {
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
            Data::F32(_) => DType::F32,
            Data::F64(_) => DType::F64,
            Data::I8(_) => DType::I8,
            Data::I16(_) => DType::I16,
            Data::I32(_) => DType::I32,
            Data::I64(_) => DType::I64,
            Data::U8(_) => DType::U8,
            Data::U16(_) => DType::U16,
            Data::U32(_) => DType::U32,
            Data::U64(_) => DType::U64,
            Data::Bool(_) => DType::Bool,
            Data::I4(_) => DType::I4,
            Data::U4(_) => DType::U4,
            Data::I2(_) => DType::I2,
            Data::U2(_) => DType::U2,
            Data::F8E4M3FN(_) => DType::F8E4M3FN,
            Data::F8E4M3FNUZ(_) => DType::F8E4M3FNUZ,
            Data::F8E5M2(_) => DType::F8E5M2,
            Data::F8E5M2FNUZ(_) => DType::F8E5M2FNUZ,
            Data::F8E8M0(_) => DType::F8E8M0,
            Data::F4E2M1(_) => DType::F4E2M1,
        }
    }

    /// Narrow data from bit patterns (one per element).
    pub fn from_patterns(dtype: DType, v: Vec<u8>) -> Option<Data> {
        macro_rules! pick {
            ($($var:ident),*) => {
                match dtype {
                    $(DType::$var => Some(Data::$var(v)),)*
                    _ => None,
                }
            };
        }
        narrow_variants!(pick)
    }

    /// The bit patterns of narrow data.
    pub fn patterns(&self) -> Option<&[u8]> {
        macro_rules! pick {
            ($($var:ident),*) => {
                match self {
                    $(Data::$var(v) => Some(v),)*
                    _ => None,
                }
            };
        }
        narrow_variants!(pick)
    }

    pub fn len(&self) -> usize {
        with_data!(self, v, _W => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` zeros (false for bool).
    pub fn zeros(dtype: DType, n: usize) -> Data {
        match dtype {
            DType::F16 => Data::F16(vec![f16::ZERO; n]),
            DType::BF16 => Data::BF16(vec![bf16::ZERO; n]),
            DType::F32 => Data::F32(vec![0.0; n]),
            DType::F64 => Data::F64(vec![0.0; n]),
            DType::I8 => Data::I8(vec![0; n]),
            DType::I16 => Data::I16(vec![0; n]),
            DType::I32 => Data::I32(vec![0; n]),
            DType::I64 => Data::I64(vec![0; n]),
            DType::U8 => Data::U8(vec![0; n]),
            DType::U16 => Data::U16(vec![0; n]),
            DType::U32 => Data::U32(vec![0; n]),
            DType::U64 => Data::U64(vec![0; n]),
            DType::Bool => Data::Bool(vec![false; n]),
            d => Data::from_patterns(d, vec![crate::narrow::encode_f64(d, 0.0, true); n])
                .expect("every remaining dtype is narrow"),
        }
    }

    /// Converts f64 values to `dtype` (floats round to nearest, integers truncate and
    /// saturate, NaN becomes 0, nonzero becomes true).
    pub fn from_f64s(dtype: DType, v: &[f64]) -> Data {
        match dtype {
            DType::F16 => Data::F16(v.iter().map(|&x| f16::from_f64(x)).collect()),
            DType::BF16 => Data::BF16(v.iter().map(|&x| bf16::from_f64(x)).collect()),
            DType::F32 => Data::F32(v.iter().map(|&x| x as f32).collect()),
            DType::F64 => Data::F64(v.to_vec()),
            DType::I8 => Data::I8(v.iter().map(|&x| x as i8).collect()),
            DType::I16 => Data::I16(v.iter().map(|&x| x as i16).collect()),
            DType::I32 => Data::I32(v.iter().map(|&x| x as i32).collect()),
            DType::I64 => Data::I64(v.iter().map(|&x| x as i64).collect()),
            DType::U8 => Data::U8(v.iter().map(|&x| x as u8).collect()),
            DType::U16 => Data::U16(v.iter().map(|&x| x as u16).collect()),
            DType::U32 => Data::U32(v.iter().map(|&x| x as u32).collect()),
            DType::U64 => Data::U64(v.iter().map(|&x| x as u64).collect()),
            DType::Bool => Data::Bool(v.iter().map(|&x| x != 0.0).collect()),
            d => Data::from_f64s_narrow(d, v, true),
        }
    }

    /// Converts f64 values to a narrow dtype; `saturate` clamps out-of-range floats to the
    /// largest finite value instead of infinity or NaN.
    pub fn from_f64s_narrow(dtype: DType, v: &[f64], saturate: bool) -> Data {
        let p = v
            .iter()
            .map(|&x| crate::narrow::encode_f64(dtype, x, saturate))
            .collect();
        Data::from_patterns(dtype, p).expect("a narrow dtype")
    }

    /// Converts i128 values to `dtype`, wrapping integers to their width.
    pub fn from_i128s(dtype: DType, v: &[i128]) -> Data {
        match dtype {
            DType::I8 => Data::I8(v.iter().map(|&x| x as i8).collect()),
            DType::I16 => Data::I16(v.iter().map(|&x| x as i16).collect()),
            DType::I32 => Data::I32(v.iter().map(|&x| x as i32).collect()),
            DType::I64 => Data::I64(v.iter().map(|&x| x as i64).collect()),
            DType::U8 => Data::U8(v.iter().map(|&x| x as u8).collect()),
            DType::U16 => Data::U16(v.iter().map(|&x| x as u16).collect()),
            DType::U32 => Data::U32(v.iter().map(|&x| x as u32).collect()),
            DType::U64 => Data::U64(v.iter().map(|&x| x as u64).collect()),
            DType::Bool => Data::Bool(v.iter().map(|&x| x != 0).collect()),
            DType::F16 => Data::F16(v.iter().map(|&x| f16::from_f64(x as f64)).collect()),
            DType::BF16 => Data::BF16(v.iter().map(|&x| bf16::from_f64(x as f64)).collect()),
            DType::F32 => Data::F32(v.iter().map(|&x| x as f32).collect()),
            DType::F64 => Data::F64(v.iter().map(|&x| x as f64).collect()),
            d => Data::from_patterns(
                d,
                v.iter()
                    .map(|&x| crate::narrow::encode_i128(d, x))
                    .collect(),
            )
            .expect("every remaining dtype is narrow"),
        }
    }

    /// Element `i` as f64 (lossy for 64-bit integers beyond 2^53).
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            Data::F16(v) => v[i].to_f64(),
            Data::BF16(v) => v[i].to_f64(),
            Data::F32(v) => f64::from(v[i]),
            Data::F64(v) => v[i],
            Data::I8(v) => f64::from(v[i]),
            Data::I16(v) => f64::from(v[i]),
            Data::I32(v) => f64::from(v[i]),
            Data::I64(v) => v[i] as f64,
            Data::U8(v) => f64::from(v[i]),
            Data::U16(v) => f64::from(v[i]),
            Data::U32(v) => f64::from(v[i]),
            Data::U64(v) => v[i] as f64,
            Data::Bool(v) => f64::from(u8::from(v[i])),
            d => crate::narrow::decode(d.dtype(), d.patterns().expect("narrow")[i]),
        }
    }

    /// Element `i` as i128, for integer and bool data; floats truncate toward zero.
    pub fn get_i128(&self, i: usize) -> i128 {
        match self {
            Data::I8(v) => v[i].into(),
            Data::I16(v) => v[i].into(),
            Data::I32(v) => v[i].into(),
            Data::I64(v) => v[i].into(),
            Data::U8(v) => v[i].into(),
            Data::U16(v) => v[i].into(),
            Data::U32(v) => v[i].into(),
            Data::U64(v) => v[i].into(),
            Data::Bool(v) => v[i].into(),
            d if d.dtype().is_narrow() => {
                crate::narrow::decode_i128(d.dtype(), d.patterns().expect("narrow")[i])
            }
            _ => self.get_f64(i) as i128,
        }
    }

    /// The raw bits of element `i`, for bitwise comparison and hashing (NaN == NaN here).
    pub fn bits(&self, i: usize) -> u64 {
        match self {
            Data::F16(v) => v[i].to_bits().into(),
            Data::BF16(v) => v[i].to_bits().into(),
            Data::F32(v) => v[i].to_bits().into(),
            Data::F64(v) => v[i].to_bits(),
            d if d.dtype().is_narrow() => u64::from(d.patterns().expect("narrow")[i]),
            _ => self.get_i128(i) as u64,
        }
    }

    /// Whether there are elements and all have element 0's bits (a splat).
    pub fn is_splat(&self) -> bool {
        fn all<T: Copy, B: PartialEq>(v: &[T], bits: impl Fn(T) -> B) -> bool {
            v.first().is_some_and(|&x| {
                let b = bits(x);
                v.iter().all(|&y| bits(y) == b)
            })
        }
        match self {
            Data::F16(v) => all(v, f16::to_bits),
            Data::BF16(v) => all(v, bf16::to_bits),
            Data::F32(v) => all(v, f32::to_bits),
            Data::F64(v) => all(v, f64::to_bits),
            Data::I8(v) => all(v, |x| x),
            Data::I16(v) => all(v, |x| x),
            Data::I32(v) => all(v, |x| x),
            Data::I64(v) => all(v, |x| x),
            Data::U8(v) => all(v, |x| x),
            Data::U16(v) => all(v, |x| x),
            Data::U32(v) => all(v, |x| x),
            Data::U64(v) => all(v, |x| x),
            Data::Bool(v) => all(v, |x| x),
            d => d.patterns().is_some_and(|p| all(p, |x| x)),
        }
    }

    /// Whether two data have the same dtype and the same bits element by element (NaNs with
    /// the same payload are equal, `0.0 != -0.0`).
    pub fn bits_eq(&self, other: &Data) -> bool {
        fn eq<T: Copy, B: PartialEq>(a: &[T], b: &[T], bits: impl Fn(T) -> B) -> bool {
            a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| bits(x) == bits(y))
        }
        match (self, other) {
            (Data::F16(a), Data::F16(b)) => eq(a, b, f16::to_bits),
            (Data::BF16(a), Data::BF16(b)) => eq(a, b, bf16::to_bits),
            (Data::F32(a), Data::F32(b)) => eq(a, b, f32::to_bits),
            (Data::F64(a), Data::F64(b)) => eq(a, b, f64::to_bits),
            (Data::I8(a), Data::I8(b)) => a == b,
            (Data::I16(a), Data::I16(b)) => a == b,
            (Data::I32(a), Data::I32(b)) => a == b,
            (Data::I64(a), Data::I64(b)) => a == b,
            (Data::U8(a), Data::U8(b)) => a == b,
            (Data::U16(a), Data::U16(b)) => a == b,
            (Data::U32(a), Data::U32(b)) => a == b,
            (Data::U64(a), Data::U64(b)) => a == b,
            (Data::Bool(a), Data::Bool(b)) => a == b,
            (a, b) => {
                a.dtype() == b.dtype() && a.patterns().is_some() && a.patterns() == b.patterns()
            }
        }
    }

    /// Gathers elements by source index; `None` entries take `fill` (element 0 of a one-element
    /// data of the same dtype), which is how padding is expressed.
    pub fn take(&self, index: &[Option<usize>], fill: Option<&Data>) -> Data {
        let zero = Data::zeros(self.dtype(), 1);
        let fill = fill
            .filter(|f| f.dtype() == self.dtype() && !f.is_empty())
            .unwrap_or(&zero);
        with_data!(self, v, W => {
            let f = match fill {
                W(x) => x[0],
                _ => unreachable!("fill has the dtype of the data"),
            };
            W(index.iter().map(|i| i.map_or(f, |i| v[i])).collect())
        })
    }

    /// Gathers elements by source index (no padding).
    pub fn take_all(&self, index: &[usize]) -> Data {
        with_data!(self, v, W => W(index.iter().map(|&i| v[i]).collect()))
    }

    /// Concatenates data of one dtype; `None` when the dtypes differ.
    pub fn concat(parts: &[&Data]) -> Option<Data> {
        let first = parts.first()?;
        let dtype = first.dtype();
        if parts.iter().any(|p| p.dtype() != dtype) {
            return None;
        }
        Some(with_data!(*first, _v, W => {
            let mut out = Vec::new();
            for p in parts {
                if let W(x) = p {
                    out.extend_from_slice(x);
                }
            }
            W(out)
        }))
    }
}

/// A concrete tensor. Immutable; clones share the elements.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Arc<Data>,
}

/// Why a tensor could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("tensor of shape {shape:?} needs {expected} elements, got {actual}")]
pub struct ShapeMismatch {
    pub shape: Vec<usize>,
    pub expected: usize,
    pub actual: usize,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Data) -> Result<Tensor, ShapeMismatch> {
        let expected = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        match expected {
            Some(n) if n == data.len() => Ok(Tensor {
                shape,
                data: Arc::new(data),
            }),
            _ => Err(ShapeMismatch {
                shape,
                expected: expected.unwrap_or(usize::MAX),
                actual: data.len(),
            }),
        }
    }

    /// The elements, when no other clone shares them (else the tensor back).
    pub fn into_data(self) -> Result<Data, Tensor> {
        let shape = self.shape;
        Arc::try_unwrap(self.data).map_err(|data| Tensor { shape, data })
    }

    pub fn from_vec<T: Element>(shape: Vec<usize>, v: Vec<T>) -> Result<Tensor, ShapeMismatch> {
        Tensor::new(shape, T::wrap(v))
    }

    pub fn scalar<T: Element>(v: T) -> Tensor {
        Tensor {
            shape: vec![],
            data: Arc::new(T::wrap(vec![v])),
        }
    }

    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: Arc::new(Data::zeros(dtype, n)),
        }
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn data(&self) -> &Data {
        &self.data
    }

    pub fn as_slice<T: Element>(&self) -> Option<&[T]> {
        T::slice(&self.data)
    }

    /// The same elements under another shape with as many elements.
    pub fn reshape(&self, shape: Vec<usize>) -> Result<Tensor, ShapeMismatch> {
        let n: Option<usize> = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(self.numel()) {
            return Err(ShapeMismatch {
                shape,
                expected: n.unwrap_or(usize::MAX),
                actual: self.numel(),
            });
        }
        Ok(Tensor {
            shape,
            data: self.data.clone(),
        })
    }

    pub fn ty(&self) -> TensorType {
        TensorType::new(self.dtype(), Shape::from_usizes(&self.shape))
    }

    /// All elements as f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        (0..self.numel()).map(|i| self.data.get_f64(i)).collect()
    }

    /// Whether two tensors hold the same shared buffer (a cheap identity test).
    pub fn ptr_eq(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.data, &other.data)
    }
}

impl PartialEq for Tensor {
    /// Bitwise equality: NaNs with the same payload are equal, `0.0 != -0.0`.
    fn eq(&self, other: &Tensor) -> bool {
        if self.shape != other.shape || self.dtype() != other.dtype() {
            return false;
        }
        self.ptr_eq(other) || self.data.bits_eq(&other.data)
    }
}

impl Eq for Tensor {}

impl std::hash::Hash for Tensor {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.shape.hash(state);
        self.dtype().hash(state);
        for i in 0..self.numel().min(64) {
            self.data.bits(i).hash(state);
        }
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({}{:?})", self.dtype(), self.shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splats_and_bitwise_equality() {
        assert!(Data::F32(vec![0.5; 1000]).is_splat());
        assert!(!Data::F32(vec![]).is_splat());
        assert!(!Data::F32(vec![0.0, -0.0]).is_splat());
        assert!(Data::F32(vec![f32::NAN; 3]).is_splat());
        assert!(!Data::I64(vec![1, 1, 2]).is_splat());
        assert!(Data::Bool(vec![true; 4]).is_splat());
        assert!(Data::I4(vec![3, 3]).is_splat());
        assert!(Data::F32(vec![f32::NAN, 1.0]).bits_eq(&Data::F32(vec![f32::NAN, 1.0])));
        assert!(!Data::F32(vec![0.0]).bits_eq(&Data::F32(vec![-0.0])));
        assert!(!Data::I32(vec![1]).bits_eq(&Data::U32(vec![1])));
        assert!(!Data::I4(vec![1]).bits_eq(&Data::U4(vec![1])));
        assert!(Data::U4(vec![1, 2]).bits_eq(&Data::U4(vec![1, 2])));
    }

    #[test]
    fn length_is_checked() {
        assert!(Tensor::from_vec(vec![2, 2], vec![1.0f32; 4]).is_ok());
        let e = Tensor::from_vec(vec![2, 3], vec![1.0f32; 4]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor of shape [2, 3] needs 6 elements, got 4"
        );
    }

    #[test]
    fn clones_share_data() {
        let t = Tensor::from_vec(vec![3], vec![1i64, 2, 3]).unwrap();
        let u = t.clone();
        assert!(t.ptr_eq(&u));
        assert_eq!(u.as_slice::<i64>(), Some(&[1i64, 2, 3][..]));
    }

    #[test]
    fn equality_is_bitwise() {
        let a = Tensor::from_vec(vec![1], vec![f32::NAN]).unwrap();
        let b = Tensor::from_vec(vec![1], vec![f32::NAN]).unwrap();
        assert_eq!(a, b);
        let z = Tensor::from_vec(vec![1], vec![0.0f32]).unwrap();
        let nz = Tensor::from_vec(vec![1], vec![-0.0f32]).unwrap();
        assert_ne!(z, nz);
    }

    #[test]
    fn take_pads_with_fill() {
        let d = Data::I32(vec![5, 6]);
        let fill = Data::I32(vec![-1]);
        let out = d.take(&[Some(1), None, Some(0)], Some(&fill));
        assert!(matches!(out, Data::I32(v) if v == vec![6, -1, 5]));
    }
}
