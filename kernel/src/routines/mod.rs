//! The library routines kernels call: f32 matrix products ([`gemm`]), plane convolutions
//! ([`conv`]), softmax's row passes ([`rows`]) and scalar math ([`mod@math`]), each under the
//! symbol compiled code refers to it by. Host code, with AVX2 and FMA paths chosen at run time.

pub mod conv;
pub mod gemm;
pub mod math;
pub mod rows;

/// Signatures of the scalar math routines.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sig {
    /// `fn(f64) -> f64`
    F1,
    /// `fn(f64, f64) -> f64`
    F2,
    /// `fn(i64, i64) -> i64`
    I2,
}

/// The scalar math routines kernels call: name, signature, address.
pub fn math() -> [(&'static str, Sig, *const u8); 23] {
    type F1 = extern "C" fn(f64) -> f64;
    type F2 = extern "C" fn(f64, f64) -> f64;
    type I2 = extern "C" fn(i64, i64) -> i64;
    let f1 = |f: F1| f as *const u8;
    let f2 = |f: F2| f as *const u8;
    let i2 = |f: I2| f as *const u8;
    [
        ("kiln_sign", Sig::F1, f1(math::sign)),
        ("kiln_exp", Sig::F1, f1(math::exp)),
        ("kiln_log", Sig::F1, f1(math::log)),
        ("kiln_sin", Sig::F1, f1(math::sin)),
        ("kiln_cos", Sig::F1, f1(math::cos)),
        ("kiln_tan", Sig::F1, f1(math::tan)),
        ("kiln_asin", Sig::F1, f1(math::asin)),
        ("kiln_acos", Sig::F1, f1(math::acos)),
        ("kiln_atan", Sig::F1, f1(math::atan)),
        ("kiln_sinh", Sig::F1, f1(math::sinh)),
        ("kiln_cosh", Sig::F1, f1(math::cosh)),
        ("kiln_asinh", Sig::F1, f1(math::asinh)),
        ("kiln_acosh", Sig::F1, f1(math::acosh)),
        ("kiln_atanh", Sig::F1, f1(math::atanh)),
        ("kiln_tanh", Sig::F1, f1(math::tanh)),
        ("kiln_sigmoid", Sig::F1, f1(math::sigmoid)),
        ("kiln_erf", Sig::F1, f1(math::erf)),
        ("kiln_rem", Sig::F2, f2(math::rem)),
        ("kiln_mod", Sig::F2, f2(math::modulo)),
        ("kiln_pow", Sig::F2, f2(math::pow)),
        ("kiln_atan2", Sig::F2, f2(math::atan2)),
        ("kiln_ipow_s", Sig::I2, i2(math::ipow_s)),
        ("kiln_ipow_u", Sig::I2, i2(math::ipow_u)),
    ]
}

/// Every routine kernels may call, by the name their code refers to it (what a loader links
/// objects against).
pub fn symbols() -> Vec<(&'static str, *const u8)> {
    let mut v: Vec<(&'static str, *const u8)> = math().iter().map(|&(n, _, a)| (n, a)).collect();
    v.extend([
        ("kiln_sgemm", gemm::kiln_sgemm as *const u8),
        ("kiln_sgemm_packed", gemm::kiln_sgemm_packed as *const u8),
        ("kiln_row_max", rows::kiln_row_max as *const u8),
        ("kiln_row_sum_f64", rows::kiln_row_sum_f64 as *const u8),
        ("kiln_row_exp_sub", rows::kiln_row_exp_sub as *const u8),
        ("kiln_conv2d_plane", conv::kiln_conv2d_plane as *const u8),
    ]);
    v
}
