//! Elementwise semantics on widened data: floats compute in f64 and round once to the result
//! dtype, integers compute in i128 and wrap to their width, so every dtype shares one
//! implementation per op and results are as exact as the result dtype allows.

use ir::{DType, Data, Op};
use kernel::routines::math;

/// Elements widened for computation.
#[derive(Clone, Debug)]
pub enum Wide {
    F(Vec<f64>),
    I(Vec<i128>),
    B(Vec<bool>),
}

impl Wide {
    /// Takes elements by source index.
    pub fn take(&self, index: &[usize]) -> Wide {
        match self {
            Wide::F(v) => Wide::F(index.iter().map(|&i| v[i]).collect()),
            Wide::I(v) => Wide::I(index.iter().map(|&i| v[i]).collect()),
            Wide::B(v) => Wide::B(index.iter().map(|&i| v[i]).collect()),
        }
    }
}

pub fn widen(d: &Data) -> Wide {
    let n = d.len();
    match d.dtype() {
        t if t.is_float() => Wide::F((0..n).map(|i| d.get_f64(i)).collect()),
        DType::Bool => match d {
            Data::Bool(v) => Wide::B(v.clone()),
            _ => unreachable!("bool dtype holds bool data"),
        },
        _ => Wide::I((0..n).map(|i| d.get_i128(i)).collect()),
    }
}

/// Rounds floats, wraps integers, and maps bools to 0/1, into `dtype`.
pub fn narrow(w: &Wide, dtype: DType) -> Data {
    match w {
        Wide::F(v) => Data::from_f64s(dtype, v),
        Wide::I(v) => Data::from_i128s(dtype, v),
        Wide::B(v) => match dtype {
            DType::Bool => Data::Bool(v.clone()),
            _ => Data::from_i128s(dtype, &v.iter().map(|&b| i128::from(b)).collect::<Vec<_>>()),
        },
    }
}

/// An 8-bit product's left operand (`qdot`, `qconv`) less its zero point `z`.
pub fn less_zero(l: Wide, z: i128) -> Wide {
    match l {
        Wide::I(l) => Wide::I(l.into_iter().map(|x| x - z).collect()),
        l => l,
    }
}

/// An 8-bit product's integer sums as its result: wrapped to i32, rounded to f32.
pub fn i32_sums_as_f32(r: &Wide) -> Result<Data, String> {
    let Wide::I(sums) = r else {
        return Err("a quantized product's sums are not integers".into());
    };
    let sums: Vec<f64> = sums.iter().map(|&x| f64::from(x as i32)).collect();
    Ok(Data::from_f64s(DType::F32, &sums))
}

/// The smallest and largest value of an integer dtype.
pub fn int_range(dtype: DType) -> (i128, i128) {
    match dtype {
        DType::I8 => (i8::MIN.into(), i8::MAX.into()),
        DType::I16 => (i16::MIN.into(), i16::MAX.into()),
        DType::I32 => (i32::MIN.into(), i32::MAX.into()),
        DType::I64 => (i64::MIN.into(), i64::MAX.into()),
        DType::U8 => (0, u8::MAX.into()),
        DType::U16 => (0, u16::MAX.into()),
        DType::U32 => (0, u32::MAX.into()),
        DType::U64 => (0, u64::MAX.into()),
        DType::I4 => (-8, 7),
        DType::U4 => (0, 15),
        DType::I2 => (-2, 1),
        DType::U2 => (0, 3),
        _ => (0, 1),
    }
}

/// Maximum with NaN propagation.
pub fn fmax(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Minimum with NaN propagation.
pub fn fmin(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

fn unary_f(op: &Op, x: f64) -> f64 {
    match op {
        Op::Neg => -x,
        Op::Abs => x.abs(),
        Op::Sign => math::sign(x),
        Op::Exp => x.exp(),
        Op::Log => x.ln(),
        Op::Sqrt => x.sqrt(),
        Op::Rsqrt => 1.0 / x.sqrt(),
        Op::Recip => 1.0 / x,
        Op::Sin => x.sin(),
        Op::Cos => x.cos(),
        Op::Tan => x.tan(),
        Op::Asin => x.asin(),
        Op::Acos => x.acos(),
        Op::Atan => x.atan(),
        Op::Sinh => x.sinh(),
        Op::Cosh => x.cosh(),
        Op::Asinh => x.asinh(),
        Op::Acosh => x.acosh(),
        Op::Atanh => x.atanh(),
        Op::Tanh => x.tanh(),
        Op::Sigmoid => math::sigmoid(x),
        Op::Erf => libm::erf(x),
        Op::Floor => x.floor(),
        Op::Ceil => x.ceil(),
        Op::Round => x.round_ties_even(),
        _ => unreachable!("{} is not a float unary op", op.mnemonic()),
    }
}

fn unary_i(op: &Op, x: i128) -> i128 {
    match op {
        Op::Neg => x.wrapping_neg(),
        Op::Abs => x.wrapping_abs(),
        Op::Sign => x.signum(),
        Op::Not => !x,
        _ => unreachable!("{} is not an integer unary op", op.mnemonic()),
    }
}

/// Applies a unary op (including `is_nan`/`is_inf`, which produce bools).
pub fn unary(op: &Op, x: &Wide) -> Wide {
    match (op, x) {
        (Op::IsNan, Wide::F(v)) => Wide::B(v.iter().map(|x| x.is_nan()).collect()),
        (Op::IsInf, Wide::F(v)) => Wide::B(v.iter().map(|x| x.is_infinite()).collect()),
        (_, Wide::F(v)) => Wide::F(v.iter().map(|&x| unary_f(op, x)).collect()),
        (_, Wide::I(v)) => Wide::I(v.iter().map(|&x| unary_i(op, x)).collect()),
        (Op::Not, Wide::B(v)) => Wide::B(v.iter().map(|x| !x).collect()),
        _ => unreachable!("the verifier admits no other unary op on bools"),
    }
}

fn cmp<T: PartialOrd>(op: &Op, a: T, b: T) -> bool {
    match op {
        Op::Eq => a == b,
        Op::Ne => a != b,
        Op::Lt => a < b,
        Op::Le => a <= b,
        Op::Gt => a > b,
        Op::Ge => a >= b,
        _ => unreachable!("{} is not a comparison", op.mnemonic()),
    }
}

fn is_compare(op: &Op) -> bool {
    matches!(op, Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge)
}

fn binary_f(op: &Op, a: f64, b: f64) -> f64 {
    match op {
        Op::Add => a + b,
        Op::Sub => a - b,
        Op::Mul => a * b,
        Op::Div => a / b,
        Op::Rem => a % b,
        Op::Mod => math::modulo(a, b),
        Op::Pow => a.powf(b),
        Op::Max => fmax(a, b),
        Op::Min => fmin(a, b),
        Op::Atan2 => a.atan2(b),
        _ => unreachable!("{} is not a float binary op", op.mnemonic()),
    }
}

/// Integer binary ops; `Err` on division by zero.
fn binary_i(op: &Op, a: i128, b: i128, dtype: DType) -> Result<i128, String> {
    let bits = i128::from(dtype.bits());
    Ok(match op {
        Op::Add => a.wrapping_add(b),
        Op::Sub => a.wrapping_sub(b),
        Op::Mul => a.wrapping_mul(b),
        Op::Div | Op::Rem | Op::Mod if b == 0 => return Err("integer division by zero".to_string()),
        Op::Div => a / b,
        Op::Rem => a % b,
        Op::Mod => a.rem_euclid(b) + if b < 0 && a.rem_euclid(b) != 0 { b } else { 0 },
        Op::Pow => math::ipow(a, b),
        Op::Max => a.max(b),
        Op::Min => a.min(b),
        Op::And => a & b,
        Op::Or => a | b,
        Op::Xor => a ^ b,
        Op::Shl => {
            if (0..bits).contains(&b) {
                a.wrapping_shl(b as u32)
            } else {
                0
            }
        }
        Op::Shr => {
            if (0..bits).contains(&b) {
                a >> b
            } else if a < 0 {
                -1
            } else {
                0
            }
        }
        _ => unreachable!("{} is not an integer binary op", op.mnemonic()),
    })
}

fn binary_b(op: &Op, a: bool, b: bool) -> bool {
    match op {
        Op::And => a & b,
        Op::Or => a | b,
        Op::Xor => a ^ b,
        _ => unreachable!("{} is not a bool binary op", op.mnemonic()),
    }
}

/// Applies a binary op to equally long operands of one dtype.
pub fn binary(op: &Op, a: &Wide, b: &Wide, dtype: DType) -> Result<Wide, String> {
    Ok(match (a, b) {
        (Wide::F(x), Wide::F(y)) if is_compare(op) => {
            Wide::B(x.iter().zip(y).map(|(&a, &b)| cmp(op, a, b)).collect())
        }
        (Wide::I(x), Wide::I(y)) if is_compare(op) => {
            Wide::B(x.iter().zip(y).map(|(&a, &b)| cmp(op, a, b)).collect())
        }
        (Wide::B(x), Wide::B(y)) if is_compare(op) => {
            Wide::B(x.iter().zip(y).map(|(&a, &b)| cmp(op, a, b)).collect())
        }
        (Wide::F(x), Wide::F(y)) => {
            Wide::F(x.iter().zip(y).map(|(&a, &b)| binary_f(op, a, b)).collect())
        }
        (Wide::I(x), Wide::I(y)) => Wide::I(
            x.iter()
                .zip(y)
                .map(|(&a, &b)| binary_i(op, a, b, dtype))
                .collect::<Result<_, _>>()?,
        ),
        (Wide::B(x), Wide::B(y)) => {
            Wide::B(x.iter().zip(y).map(|(&a, &b)| binary_b(op, a, b)).collect())
        }
        _ => unreachable!("the verifier admits only operands of one dtype"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_ops_wrap_at_the_dtype_width() {
        let a = widen(&Data::U8(vec![250]));
        let b = widen(&Data::U8(vec![10]));
        let s = binary(&Op::Add, &a, &b, DType::U8).unwrap();
        assert!(matches!(narrow(&s, DType::U8), Data::U8(v) if v == vec![4]));
        let m = binary(
            &Op::Mul,
            &widen(&Data::I64(vec![i64::MAX])),
            &widen(&Data::I64(vec![2])),
            DType::I64,
        )
        .unwrap();
        assert!(matches!(narrow(&m, DType::I64), Data::I64(v) if v == vec![-2]));
    }

    #[test]
    fn division_semantics() {
        let a = widen(&Data::I32(vec![-7, 7, -7]));
        let b = widen(&Data::I32(vec![2, -2, 0]));
        assert!(binary(&Op::Div, &a, &b, DType::I32).is_err());
        let a = widen(&Data::I32(vec![-7, 7]));
        let b = widen(&Data::I32(vec![2, -2]));
        let q = narrow(&binary(&Op::Div, &a, &b, DType::I32).unwrap(), DType::I32);
        let r = narrow(&binary(&Op::Rem, &a, &b, DType::I32).unwrap(), DType::I32);
        let m = narrow(&binary(&Op::Mod, &a, &b, DType::I32).unwrap(), DType::I32);
        assert!(matches!(q, Data::I32(v) if v == vec![-3, -3]));
        assert!(matches!(r, Data::I32(v) if v == vec![-1, 1]));
        assert!(matches!(m, Data::I32(v) if v == vec![1, -1]));
        let fm = binary_f(&Op::Mod, -7.0, 2.0);
        assert_eq!(fm, 1.0);
    }

    #[test]
    fn shifts_past_the_width_clear() {
        assert_eq!(binary_i(&Op::Shl, 1, 8, DType::U8), Ok(0));
        assert_eq!(binary_i(&Op::Shr, -8, 70, DType::I64), Ok(-1));
        assert_eq!(binary_i(&Op::Shr, -8, 1, DType::I64), Ok(-4));
    }

    #[test]
    fn float_results_round_once() {
        let x = widen(&Data::F32(vec![0.1]));
        let y = widen(&Data::F32(vec![0.2]));
        let s = narrow(&binary(&Op::Add, &x, &y, DType::F32).unwrap(), DType::F32);
        assert!(matches!(s, Data::F32(v) if v == vec![0.1f32 + 0.2f32]));
        assert!(fmax(f64::NAN, 1.0).is_nan());
        assert_eq!(unary_f(&Op::Round, 2.5), 2.0);
        assert_eq!(unary_f(&Op::Sigmoid, -1000.0), 0.0);
    }
}
