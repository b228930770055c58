//! Scalar math kernels call (`extern "C"`, f64 and i64): the reference interpreter's formulas,
//! written once — the interpreter evaluates the same functions (`sign`, `sigmoid`, `modulo`,
//! `ipow`).

macro_rules! unary {
    ($($name:ident($x:ident) $body:expr;)*) => {
        $(pub extern "C" fn $name($x: f64) -> f64 { $body })*
    };
}

unary! {
    exp(x) x.exp();
    log(x) x.ln();
    sin(x) x.sin();
    cos(x) x.cos();
    tan(x) x.tan();
    asin(x) x.asin();
    acos(x) x.acos();
    atan(x) x.atan();
    sinh(x) x.sinh();
    cosh(x) x.cosh();
    asinh(x) x.asinh();
    acosh(x) x.acosh();
    atanh(x) x.atanh();
    tanh(x) x.tanh();
    erf(x) libm::erf(x);
}

pub extern "C" fn sign(x: f64) -> f64 {
    if x.is_nan() {
        x
    } else if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

pub extern "C" fn sigmoid(x: f64) -> f64 {
    // Written so that neither branch overflows.
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

pub extern "C" fn rem(a: f64, b: f64) -> f64 {
    a % b
}

pub extern "C" fn modulo(a: f64, b: f64) -> f64 {
    let r = a % b;
    if r != 0.0 && ((r < 0.0) != (b < 0.0)) {
        r + b
    } else {
        r
    }
}

pub extern "C" fn pow(a: f64, b: f64) -> f64 {
    a.powf(b)
}

pub extern "C" fn atan2(a: f64, b: f64) -> f64 {
    a.atan2(b)
}

/// Integer power in i128, wrapping; negative exponents give 0 except for bases 1 and -1.
pub fn ipow(mut base: i128, mut exp: i128) -> i128 {
    if exp < 0 {
        return match base {
            1 => 1,
            -1 => {
                if exp % 2 == 0 {
                    1
                } else {
                    -1
                }
            }
            _ => 0,
        };
    }
    let mut acc: i128 = 1;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = acc.wrapping_mul(base);
        }
        base = base.wrapping_mul(base);
        exp >>= 1;
    }
    acc
}

/// Signed operands, sign-extended to i64; the result wraps to the caller's width.
pub extern "C" fn ipow_s(a: i64, b: i64) -> i64 {
    ipow(a.into(), b.into()) as i64
}

/// Unsigned operands (as raw bits), zero-extended to 64 bits.
pub extern "C" fn ipow_u(a: i64, b: i64) -> i64 {
    ipow((a as u64).into(), (b as u64).into()) as i64
}
