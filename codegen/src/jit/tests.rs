//! The Cranelift backend against hand-built kernels: scalar and SIMD semantics (ulp bounds
//! of the vector transcendentals), checks, library routines, threads.

use super::*;
use ir::Dim;
use kernel::{codes, Buf, BufKind, Code};

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Compiled>();
};

fn buf(name: &str, dtype: DType, kind: BufKind) -> Buf {
    Buf {
        name: name.into(),
        dtype,
        len: Dim::sym("n"),
        kind,
    }
}

fn op(op: Op, args: Vec<Expr>, dtype: DType) -> Expr {
    Expr::Op { op, args, dtype }
}

fn load(buf: usize, index: Expr) -> Expr {
    Expr::Load {
        buf,
        index: Box::new(index),
    }
}

fn v(i: usize) -> Expr {
    Expr::Var(i)
}

fn for_(var: usize, extent: Expr, body: Vec<Stmt>) -> Stmt {
    Stmt::Loop {
        var,
        extent,
        mark: Mark::Serial,
        body,
    }
}

fn store(buf: usize, index: Expr, value: Expr) -> Stmt {
    Stmt::Store { buf, index, value }
}

fn call(c: &Compiled, i: usize, bufs: &[*mut u8], dims: &[i64]) -> u32 {
    // SAFETY: each test sizes its buffers for the kernel it runs.
    unsafe { c.function(i)(bufs.as_ptr(), dims.as_ptr()) }
}

fn ptr<T>(v: &mut [T]) -> *mut u8 {
    v.as_mut_ptr().cast()
}

/// `out[i] = f(in[i])` for `i < dims[0]`.
fn map_kernel(from: DType, to: DType, f: impl Fn(Expr) -> Expr) -> Kernel {
    Kernel {
        name: "map".into(),
        bufs: vec![
            buf("x", from, BufKind::Input),
            buf("y", to, BufKind::Output),
        ],
        dims: vec![Dim::sym("n")],
        vars: vec![DType::I64],
        body: vec![for_(
            0,
            Expr::Dim(0),
            vec![store(1, v(0), f(load(0, v(0))))],
        )],
    }
}

fn run_map<A: Copy, B: Copy + Default>(k: Kernel, xs: &[A]) -> Vec<B> {
    let c = compile(&[k]).unwrap();
    let mut x = xs.to_vec();
    let mut y = vec![B::default(); xs.len()];
    assert_eq!(
        call(&c, 0, &[ptr(&mut x), ptr(&mut y)], &[xs.len() as i64]),
        0
    );
    y
}

/// `out[i] = f(a[i], b[i])`.
fn run_zip<A: Copy, B: Copy + Default>(
    d: DType,
    to: DType,
    f: impl Fn(Expr, Expr) -> Expr,
    a: &[A],
    b: &[A],
) -> Vec<B> {
    let k = Kernel {
        name: "zip".into(),
        bufs: vec![
            buf("a", d, BufKind::Input),
            buf("b", d, BufKind::Input),
            buf("y", to, BufKind::Output),
        ],
        dims: vec![Dim::sym("n")],
        vars: vec![DType::I64],
        body: vec![for_(
            0,
            Expr::Dim(0),
            vec![store(2, v(0), f(load(0, v(0)), load(1, v(0))))],
        )],
    };
    let c = compile(&[k]).unwrap();
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    let mut y = vec![B::default(); a.len()];
    let n = a.len() as i64;
    assert_eq!(
        call(&c, 0, &[ptr(&mut a), ptr(&mut b), ptr(&mut y)], &[n]),
        0
    );
    y
}

fn binop(o: Op, d: DType) -> impl Fn(Expr, Expr) -> Expr {
    move |a, b| op(o.clone(), vec![a, b], d)
}

#[test]
fn elementwise_add_with_a_symbolic_length() {
    let add = binop(Op::Add, DType::F32);
    for n in [0usize, 1, 7, 1000] {
        let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..n).map(|i| 1.0 / (i as f32 + 1.0)).collect();
        let y: Vec<f32> = run_zip(DType::F32, DType::F32, &add, &a, &b);
        let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        assert_eq!(y, want);
    }
}

#[test]
fn row_sums_with_an_accumulator() {
    // y[r] = sum_c x[r * cols + c]
    let k = Kernel {
        name: "rowsum".into(),
        bufs: vec![
            buf("x", DType::F32, BufKind::Input),
            buf("y", DType::F32, BufKind::Output),
        ],
        dims: vec![Dim::sym("r"), Dim::sym("c")],
        vars: vec![DType::I64, DType::I64, DType::F32],
        body: vec![for_(
            0,
            Expr::Dim(0),
            vec![
                Stmt::Set {
                    var: 2,
                    value: Expr::Float(0.0, DType::F32),
                },
                for_(
                    1,
                    Expr::Dim(1),
                    vec![Stmt::Set {
                        var: 2,
                        value: op(
                            Op::Add,
                            vec![v(2), load(0, v(0) * Expr::Dim(1) + v(1))],
                            DType::F32,
                        ),
                    }],
                ),
                store(1, v(0), v(2)),
            ],
        )],
    };
    let c = compile(&[k]).unwrap();
    let (rows, cols) = (3usize, 4usize);
    let mut x: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
    let mut y = vec![0f32; rows];
    let r = call(
        &c,
        0,
        &[ptr(&mut x), ptr(&mut y)],
        &[rows as i64, cols as i64],
    );
    assert_eq!(r, 0);
    assert_eq!(y, vec![6.0, 22.0, 38.0]);
    // Zero columns: every sum is the initial value.
    let mut y = vec![9f32; rows];
    call(&c, 0, &[ptr(&mut x), ptr(&mut y)], &[rows as i64, 0]);
    assert_eq!(y, vec![0.0; 3]);
}

#[test]
fn dot_of_2x3_and_3x2() {
    // c[i, j] = sum_k a[i, k] * b[k, j]
    let (i, j, kk, acc) = (0, 1, 2, 3);
    let k = Kernel {
        name: "dot".into(),
        bufs: vec![
            buf("a", DType::F32, BufKind::Input),
            buf("b", DType::F32, BufKind::Input),
            buf("c", DType::F32, BufKind::Output),
        ],
        dims: vec![],
        vars: vec![DType::I64, DType::I64, DType::I64, DType::F32],
        body: vec![for_(
            i,
            Expr::i64(2),
            vec![for_(
                j,
                Expr::i64(2),
                vec![
                    Stmt::Set {
                        var: acc,
                        value: Expr::Float(0.0, DType::F32),
                    },
                    for_(
                        kk,
                        Expr::i64(3),
                        vec![Stmt::Set {
                            var: acc,
                            value: op(
                                Op::Add,
                                vec![
                                    v(acc),
                                    op(
                                        Op::Mul,
                                        vec![
                                            load(0, v(i) * Expr::i64(3) + v(kk)),
                                            load(1, v(kk) * Expr::i64(2) + v(j)),
                                        ],
                                        DType::F32,
                                    ),
                                ],
                                DType::F32,
                            ),
                        }],
                    ),
                    store(2, v(i) * Expr::i64(2) + v(j), v(acc)),
                ],
            )],
        )],
    };
    let c = compile(&[k]).unwrap();
    let mut a = vec![1f32, 2., 3., 4., 5., 6.];
    let mut b = vec![7f32, 8., 9., 10., 11., 12.];
    let mut out = vec![0f32; 4];
    assert_eq!(
        call(&c, 0, &[ptr(&mut a), ptr(&mut b), ptr(&mut out)], &[]),
        0
    );
    assert_eq!(out, vec![58., 64., 139., 154.]);
}

#[test]
fn transcendental_functions_round_from_f64() {
    let xs: Vec<f32> = vec![
        -3.5,
        -1.0,
        -0.3,
        0.0,
        0.1,
        0.5,
        0.9,
        1.7,
        20.0,
        f32::NAN,
        f32::INFINITY,
    ];
    type F = fn(f64) -> f64;
    let cases: Vec<(Op, F)> = vec![
        (Op::Exp, f64::exp),
        (Op::Log, f64::ln),
        (Op::Tanh, f64::tanh),
        (Op::Erf, libm::erf),
        (Op::Sin, f64::sin),
        (Op::Cos, f64::cos),
        (Op::Atan, f64::atan),
        (Op::Asinh, f64::asinh),
        (Op::Sigmoid, |x| kernel::routines::math::sigmoid(x)),
        (Op::Rsqrt, |x| 1.0 / x.sqrt()),
        (Op::Recip, |x| 1.0 / x),
        (Op::Sqrt, f64::sqrt),
        (Op::Round, f64::round_ties_even),
        (Op::Floor, f64::floor),
        (Op::Sign, |x| kernel::routines::math::sign(x)),
    ];
    for (o, f) in cases {
        let k = map_kernel(DType::F32, DType::F32, |x| {
            op(o.clone(), vec![x], DType::F32)
        });
        let y: Vec<f32> = run_map(k, &xs);
        for (x, y) in xs.iter().zip(&y) {
            let want = f(f64::from(*x)) as f32;
            assert!(
                want.to_bits() == y.to_bits() || (want.is_nan() && y.is_nan()),
                "{}({x}) = {y}, expected {want}",
                o.mnemonic()
            );
        }
        // f64 data calls the same helpers without rounding.
        let xd: Vec<f64> = xs.iter().map(|&x| f64::from(x) * 1.1).collect();
        let k = map_kernel(DType::F64, DType::F64, |x| {
            op(o.clone(), vec![x], DType::F64)
        });
        let y: Vec<f64> = run_map(k, &xd);
        for (x, y) in xd.iter().zip(&y) {
            let want = f(*x);
            assert!(want.to_bits() == y.to_bits() || (want.is_nan() && y.is_nan()));
        }
    }
    assert_eq!(
        run_map::<f32, f32>(
            map_kernel(DType::F32, DType::F32, |x| op(
                Op::Sigmoid,
                vec![x],
                DType::F32
            )),
            &[-1000.0]
        ),
        vec![0.0]
    );
}

#[test]
fn float_binary_ops() {
    let a = [7.5f32, -7.0, 2.0, f32::NAN, 1.0, -0.5];
    let b = [2.0f32, 2.0, 10.0, 1.0, f32::NAN, 3.0];
    type F = fn(f64, f64) -> f64;
    let cases: Vec<(Op, F)> = vec![
        (Op::Rem, |a, b| a % b),
        (Op::Mod, |a, b| kernel::routines::math::modulo(a, b)),
        (Op::Pow, f64::powf),
        (Op::Atan2, f64::atan2),
        (Op::Max, |a, b| {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.max(b)
            }
        }),
        (Op::Min, |a, b| {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.min(b)
            }
        }),
        (Op::Div, |a, b| a / b),
    ];
    for (o, f) in cases {
        let y: Vec<f32> = run_zip(DType::F32, DType::F32, binop(o.clone(), DType::F32), &a, &b);
        for i in 0..a.len() {
            let want = f(f64::from(a[i]), f64::from(b[i])) as f32;
            assert!(
                want.to_bits() == y[i].to_bits() || (want.is_nan() && y[i].is_nan()),
                "{}({}, {}) = {}, expected {want}",
                o.mnemonic(),
                a[i],
                b[i],
                y[i]
            );
        }
    }
    // Comparisons: `ne` holds for NaN, the ordered ones do not.
    let lt: Vec<bool> = run_zip(DType::F32, DType::Bool, binop(Op::Lt, DType::Bool), &a, &b);
    assert_eq!(lt, vec![false, true, true, false, false, true]);
    let ne: Vec<bool> = run_zip(DType::F32, DType::Bool, binop(Op::Ne, DType::Bool), &a, &b);
    assert_eq!(ne, vec![true, true, true, true, true, true]);
    let nan: Vec<bool> = run_map(
        map_kernel(DType::F32, DType::Bool, |x| {
            op(Op::IsNan, vec![x], DType::Bool)
        }),
        &[1.0f32, f32::NAN, f32::INFINITY],
    );
    assert_eq!(nan, vec![false, true, false]);
    let inf: Vec<bool> = run_map(
        map_kernel(DType::F64, DType::Bool, |x| {
            op(Op::IsInf, vec![x], DType::Bool)
        }),
        &[1.0f64, f64::NAN, f64::NEG_INFINITY],
    );
    assert_eq!(inf, vec![false, false, true]);
}

#[test]
fn integers_wrap_and_shift_like_the_interpreter() {
    let add = binop(Op::Add, DType::U8);
    let y: Vec<u8> = run_zip(DType::U8, DType::U8, add, &[250u8, 1], &[10u8, 2]);
    assert_eq!(y, vec![4, 3]);
    let mul = binop(Op::Mul, DType::I64);
    let y: Vec<i64> = run_zip(DType::I64, DType::I64, mul, &[i64::MAX, -3], &[2, 5]);
    assert_eq!(y, vec![-2, -15]);
    let sub = binop(Op::Sub, DType::I32);
    let y: Vec<i32> = run_zip(DType::I32, DType::I32, sub, &[i32::MIN], &[1]);
    assert_eq!(y, vec![i32::MAX]);

    let shl = binop(Op::Shl, DType::U8);
    let y: Vec<u8> = run_zip(
        DType::U8,
        DType::U8,
        shl,
        &[1u8, 1, 3, 1],
        &[7u8, 8, 1, 255],
    );
    assert_eq!(y, vec![128, 0, 6, 0]);
    let shr = binop(Op::Shr, DType::I64);
    let y: Vec<i64> = run_zip(
        DType::I64,
        DType::I64,
        shr,
        &[-8i64, -8, 8, -8, 8],
        &[70, 1, 64, -1, -1],
    );
    assert_eq!(y, vec![-1, -4, 0, -1, 0]);
    let shr = binop(Op::Shr, DType::U16);
    let y: Vec<u16> = run_zip(
        DType::U16,
        DType::U16,
        shr,
        &[0x8000u16, 0x8000],
        &[15u16, 16],
    );
    assert_eq!(y, vec![1, 0]);
    let shl = binop(Op::Shl, DType::I32);
    let y: Vec<i32> = run_zip(DType::I32, DType::I32, shl, &[1i32, 1, 1], &[31, 32, -1]);
    assert_eq!(y, vec![i32::MIN, 0, 0]);

    let y: Vec<i8> = run_map(
        map_kernel(DType::I8, DType::I8, |x| op(Op::Neg, vec![x], DType::I8)),
        &[i8::MIN, 5],
    );
    assert_eq!(y, vec![i8::MIN, -5]);
    let y: Vec<i32> = run_map(
        map_kernel(DType::I32, DType::I32, |x| op(Op::Abs, vec![x], DType::I32)),
        &[i32::MIN, -5, 5],
    );
    assert_eq!(y, vec![i32::MIN, 5, 5]);
    let y: Vec<u8> = run_map(
        map_kernel(DType::U8, DType::U8, |x| op(Op::Abs, vec![x], DType::U8)),
        &[200u8],
    );
    assert_eq!(y, vec![200]);
    let y: Vec<i16> = run_map(
        map_kernel(DType::I16, DType::I16, |x| {
            op(Op::Sign, vec![x], DType::I16)
        }),
        &[-300i16, 0, 7],
    );
    assert_eq!(y, vec![-1, 0, 1]);
    let y: Vec<u32> = run_map(
        map_kernel(DType::U32, DType::U32, |x| {
            op(Op::Sign, vec![x], DType::U32)
        }),
        &[0u32, 0x8000_0000],
    );
    assert_eq!(y, vec![0, 1]);
    let y: Vec<u16> = run_map(
        map_kernel(DType::U16, DType::U16, |x| op(Op::Not, vec![x], DType::U16)),
        &[0u16],
    );
    assert_eq!(y, vec![0xffff]);
    let y: Vec<bool> = run_map(
        map_kernel(DType::Bool, DType::Bool, |x| {
            op(Op::Not, vec![x], DType::Bool)
        }),
        &[true, false],
    );
    assert_eq!(y, vec![false, true]);

    // Max/min and comparisons follow the signedness of the dtype.
    let max = binop(Op::Max, DType::U8);
    let y: Vec<u8> = run_zip(DType::U8, DType::U8, max, &[200u8], &[100u8]);
    assert_eq!(y, vec![200]);
    let max = binop(Op::Max, DType::I8);
    let y: Vec<i8> = run_zip(DType::I8, DType::I8, max, &[-56i8], &[100i8]);
    assert_eq!(y, vec![100]);
    let lt: Vec<bool> = run_zip(
        DType::U32,
        DType::Bool,
        binop(Op::Lt, DType::Bool),
        &[1u32],
        &[u32::MAX],
    );
    assert_eq!(lt, vec![true]);
    let lt: Vec<bool> = run_zip(
        DType::I32,
        DType::Bool,
        binop(Op::Lt, DType::Bool),
        &[1i32],
        &[-1],
    );
    assert_eq!(lt, vec![false]);
    let lt: Vec<bool> = run_zip(
        DType::Bool,
        DType::Bool,
        binop(Op::Lt, DType::Bool),
        &[false, true],
        &[true, true],
    );
    assert_eq!(lt, vec![true, false]);
}

#[test]
fn integer_division_matches_and_never_traps() {
    let a = [-7i32, 7, -7, 7, i32::MIN, i32::MIN, 5, 0];
    let b = [2i32, -2, -2, 2, -1, 1, 0, 3];
    let q: Vec<i32> = run_zip(DType::I32, DType::I32, binop(Op::Div, DType::I32), &a, &b);
    let r: Vec<i32> = run_zip(DType::I32, DType::I32, binop(Op::Rem, DType::I32), &a, &b);
    let m: Vec<i32> = run_zip(DType::I32, DType::I32, binop(Op::Mod, DType::I32), &a, &b);
    // Index 6 divides by zero: any value, but no crash.
    for i in [0, 1, 2, 3, 4, 5, 7] {
        let (x, y) = (i128::from(a[i]), i128::from(b[i]));
        assert_eq!(q[i], (x / y) as i32, "{x} / {y}");
        assert_eq!(r[i], (x % y) as i32, "{x} % {y}");
        let want = x.rem_euclid(y) + if y < 0 && x.rem_euclid(y) != 0 { y } else { 0 };
        assert_eq!(m[i], want as i32, "{x} mod {y}");
    }
    let q: Vec<i8> = run_zip(
        DType::I8,
        DType::I8,
        binop(Op::Div, DType::I8),
        &[i8::MIN, 9],
        &[-1i8, 0],
    );
    assert_eq!(q[0], i8::MIN);
    let q: Vec<u8> = run_zip(
        DType::U8,
        DType::U8,
        binop(Op::Div, DType::U8),
        &[200u8, 9],
        &[3u8, 0],
    );
    assert_eq!(q[0], 66);
    let m: Vec<u64> = run_zip(
        DType::U64,
        DType::U64,
        binop(Op::Mod, DType::U64),
        &[u64::MAX],
        &[10],
    );
    assert_eq!(m, vec![5]);
}

#[test]
fn integer_pow() {
    let p: Vec<i32> = run_zip(
        DType::I32,
        DType::I32,
        binop(Op::Pow, DType::I32),
        &[3i32, 2, 2, -1, 1, 5, 2],
        &[4i32, 31, 32, -3, -7, -1, 0],
    );
    assert_eq!(p, vec![81, i32::MIN, 0, -1, 1, 0, 1]);
    let p: Vec<u8> = run_zip(
        DType::U8,
        DType::U8,
        binop(Op::Pow, DType::U8),
        &[3u8, 255],
        &[5u8, 2],
    );
    assert_eq!(p, vec![243, 1]);
}

#[test]
fn a_failing_check_returns_its_code_before_the_store() {
    // for i: check idx[i] < 4 else 1; y[i] = x[idx[i]]
    let k = Kernel {
        name: "gather".into(),
        bufs: vec![
            buf("x", DType::F32, BufKind::Input),
            buf("idx", DType::I64, BufKind::Input),
            buf("y", DType::F32, BufKind::Output),
        ],
        dims: vec![Dim::sym("n")],
        vars: vec![DType::I64],
        body: vec![for_(
            0,
            Expr::Dim(0),
            vec![
                Stmt::Check {
                    cond: op(Op::Lt, vec![load(1, v(0)), Expr::i64(4)], DType::Bool),
                    code: codes::INDEX_OUT_OF_RANGE,
                },
                store(2, v(0), load(0, load(1, v(0)))),
            ],
        )],
    };
    let c = compile(&[k]).unwrap();
    let mut x = vec![10f32, 11., 12., 13.];
    let mut idx = vec![3i64, 0, 1_000_000_000, 2];
    let mut y = vec![-1f32; 4];
    let r = call(&c, 0, &[ptr(&mut x), ptr(&mut idx), ptr(&mut y)], &[4]);
    assert_eq!(r, codes::INDEX_OUT_OF_RANGE);
    assert_eq!(y, vec![13., 10., -1., -1.]);
    let mut idx = vec![3i64, 0, 1, 2];
    let r = call(&c, 0, &[ptr(&mut x), ptr(&mut idx), ptr(&mut y)], &[4]);
    assert_eq!(r, 0);
    assert_eq!(y, vec![13., 10., 11., 12.]);
}

fn cast(to: DType) -> impl Fn(Expr) -> Expr {
    move |x| {
        op(
            Op::Cast {
                dtype: to,
                saturate: true,
            },
            vec![x],
            to,
        )
    }
}

#[test]
fn casts() {
    let xs = [
        -3.7f32,
        3.7,
        1e10,
        -1e10,
        f32::NAN,
        f32::INFINITY,
        -0.0,
        255.9,
        300.0,
    ];
    let y: Vec<i32> = run_map(map_kernel(DType::F32, DType::I32, cast(DType::I32)), &xs);
    assert_eq!(y, xs.iter().map(|&x| x as i32).collect::<Vec<_>>());
    let y: Vec<i8> = run_map(map_kernel(DType::F32, DType::I8, cast(DType::I8)), &xs);
    assert_eq!(y, xs.iter().map(|&x| x as i8).collect::<Vec<_>>());
    let y: Vec<u8> = run_map(map_kernel(DType::F32, DType::U8, cast(DType::U8)), &xs);
    assert_eq!(y, xs.iter().map(|&x| x as u8).collect::<Vec<_>>());
    let y: Vec<u16> = run_map(map_kernel(DType::F32, DType::U16, cast(DType::U16)), &xs);
    assert_eq!(y, xs.iter().map(|&x| x as u16).collect::<Vec<_>>());
    let y: Vec<u64> = run_map(map_kernel(DType::F32, DType::U64, cast(DType::U64)), &xs);
    assert_eq!(y, xs.iter().map(|&x| x as u64).collect::<Vec<_>>());
    let y: Vec<i64> = run_map(map_kernel(DType::F32, DType::I64, cast(DType::I64)), &xs);
    assert_eq!(y, xs.iter().map(|&x| x as i64).collect::<Vec<_>>());
    let y: Vec<bool> = run_map(map_kernel(DType::F32, DType::Bool, cast(DType::Bool)), &xs);
    assert_eq!(
        y,
        vec![true, true, true, true, true, true, false, true, true]
    );
    let y: Vec<f64> = run_map(
        map_kernel(DType::F32, DType::F64, cast(DType::F64)),
        &xs[..2],
    );
    assert_eq!(y, vec![f64::from(-3.7f32), f64::from(3.7f32)]);
    let y: Vec<f32> = run_map(
        map_kernel(DType::F64, DType::F32, cast(DType::F32)),
        &[0.1f64],
    );
    assert_eq!(y, vec![0.1f32]);

    let is = [i64::MAX, i64::MIN, (1 << 53) + 1, -5, 0];
    let y: Vec<f32> = run_map(map_kernel(DType::I64, DType::F32, cast(DType::F32)), &is);
    assert_eq!(y, is.iter().map(|&x| x as f32).collect::<Vec<_>>());
    let y: Vec<f64> = run_map(map_kernel(DType::I64, DType::F64, cast(DType::F64)), &is);
    assert_eq!(y, is.iter().map(|&x| x as f64).collect::<Vec<_>>());
    let us = [u64::MAX, (1 << 63) + 1, 3];
    let y: Vec<f32> = run_map(map_kernel(DType::U64, DType::F32, cast(DType::F32)), &us);
    assert_eq!(y, us.iter().map(|&x| x as f32).collect::<Vec<_>>());
    let y: Vec<f64> = run_map(
        map_kernel(DType::U32, DType::F64, cast(DType::F64)),
        &[u32::MAX],
    );
    assert_eq!(y, vec![f64::from(u32::MAX)]);
    let y: Vec<f32> = run_map(
        map_kernel(DType::I8, DType::F32, cast(DType::F32)),
        &[-128i8],
    );
    assert_eq!(y, vec![-128.0]);

    let y: Vec<f32> = run_map(
        map_kernel(DType::Bool, DType::F32, cast(DType::F32)),
        &[true, false],
    );
    assert_eq!(y, vec![1.0, 0.0]);
    let y: Vec<i64> = run_map(
        map_kernel(DType::Bool, DType::I64, cast(DType::I64)),
        &[true, false],
    );
    assert_eq!(y, vec![1, 0]);
    let y: Vec<bool> = run_map(
        map_kernel(DType::I32, DType::Bool, cast(DType::Bool)),
        &[0i32, -1, 256],
    );
    assert_eq!(y, vec![false, true, true]);
    let y: Vec<i8> = run_map(
        map_kernel(DType::I32, DType::I8, cast(DType::I8)),
        &[300i32, -129],
    );
    assert_eq!(y, vec![44, 127]);
    let y: Vec<i64> = run_map(map_kernel(DType::I8, DType::I64, cast(DType::I64)), &[-1i8]);
    assert_eq!(y, vec![-1]);
    let y: Vec<i32> = run_map(
        map_kernel(DType::U8, DType::I32, cast(DType::I32)),
        &[255u8],
    );
    assert_eq!(y, vec![255]);
    let y: Vec<u32> = run_map(
        map_kernel(DType::I32, DType::U32, cast(DType::U32)),
        &[-1i32],
    );
    assert_eq!(y, vec![u32::MAX]);
}

#[test]
fn select_picks_by_condition() {
    // y[i] = select(a[i] > b[i], a[i], b[i] * 2)
    let f = |a: Expr, b: Expr| {
        op(
            Op::Select,
            vec![
                op(Op::Gt, vec![a.clone(), b.clone()], DType::Bool),
                a,
                op(Op::Mul, vec![b, Expr::Float(2.0, DType::F64)], DType::F64),
            ],
            DType::F64,
        )
    };
    let y: Vec<f64> = run_zip(DType::F64, DType::F64, f, &[1.0f64, 5.0], &[2.0, 3.0]);
    assert_eq!(y, vec![4.0, 5.0]);
}

#[test]
fn many_buffers_and_many_kernels() {
    const N: usize = 20;
    let mut bufs: Vec<Buf> = (0..N)
        .map(|i| buf(&format!("x{i}"), DType::I32, BufKind::Input))
        .collect();
    bufs.push(buf("y", DType::I32, BufKind::Output));
    let sum = (1..N).fold(load(0, v(0)), |acc, i| {
        op(Op::Add, vec![acc, load(i, v(0))], DType::I32)
    });
    let many = Kernel {
        name: "many".into(),
        bufs,
        dims: vec![Dim::sym("n")],
        vars: vec![DType::I64],
        body: vec![for_(0, Expr::Dim(0), vec![store(N, v(0), sum)])],
    };
    let neg = map_kernel(DType::I32, DType::I32, |x| op(Op::Neg, vec![x], DType::I32));
    let c = compile(&[neg, many]).unwrap();
    assert_eq!(c.len(), 2);
    let len = 5;
    let mut ins: Vec<Vec<i32>> = (0..N).map(|i| vec![i as i32; len]).collect();
    let mut y = vec![0i32; len];
    let mut ptrs: Vec<*mut u8> = ins.iter_mut().map(|v| ptr(v)).collect();
    ptrs.push(ptr(&mut y));
    assert_eq!(call(&c, 1, &ptrs, &[len as i64]), 0);
    assert_eq!(y, vec![(0..N as i32).sum::<i32>(); len]);
    let mut z = vec![0i32; len];
    assert_eq!(call(&c, 0, &[ptr(&mut y), ptr(&mut z)], &[len as i64]), 0);
    assert_eq!(z, vec![-190; len]);
    // Compiled kernels can be called from other threads.
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut a = vec![1i32, 2];
            let mut b = vec![0i32; 2];
            assert_eq!(call(&c, 0, &[ptr(&mut a), ptr(&mut b)], &[2]), 0);
            assert_eq!(b, vec![-1, -2]);
        });
    });
}

#[test]
fn unsupported_and_malformed_kernels_are_errors() {
    let k = map_kernel(DType::F16, DType::F16, |x| x);
    let e = compile(&[k]).err().unwrap();
    assert!(matches!(e, JitError::Unsupported { .. }));
    assert!(
        e.to_string().contains("`map`") && e.to_string().contains("f16"),
        "{e}"
    );

    let k = map_kernel(DType::F32, DType::F32, |x| {
        op(Op::Shl, vec![x.clone(), x], DType::F32)
    });
    let e = compile(&[k]).err().unwrap();
    assert!(e.to_string().contains("shl"), "{e}");

    let k = map_kernel(DType::F32, DType::I32, |x| x);
    let e = compile(&[k]).err().unwrap();
    assert!(matches!(e, JitError::Invalid { .. }), "{e}");

    let mut k = map_kernel(DType::F32, DType::F32, |x| x);
    k.body
        .push(store(7, Expr::i64(0), Expr::Float(0.0, DType::F32)));
    assert!(matches!(compile(&[k]), Err(JitError::Invalid { .. })));

    let k = map_kernel(DType::F32, DType::F32, |x| {
        op(Op::ReduceSum { axes: vec![0] }, vec![x], DType::F32)
    });
    let e = compile(&[k]).err().unwrap();
    assert!(e.to_string().contains("reduce_sum"), "{e}");
}

// ---- SIMD code (`simd.rs`) ----

/// Compiles `k`, returning how many vector loops and reductions took the SIMD path.
/// A softmax row through the library routines and through the JIT's own code: the
/// maximum (NaN, ±0 included) and `exp` agree to the bit, the f64 sum closely.
#[test]
fn row_routines_agree_with_the_vector_code() {
    // y[0] = max(x), y[1] = Σ x (f64, rounded), z[i] = exp(x[i] - y[0]).
    let (mx, sum) = (1usize, 2usize);
    let k = Kernel {
        name: "rows".into(),
        bufs: vec![
            buf("x", DType::F32, BufKind::Input),
            buf("y", DType::F32, BufKind::Output),
            buf("z", DType::F32, BufKind::Output),
        ],
        dims: vec![Dim::sym("n")],
        vars: vec![DType::I64, DType::F32, DType::F64, DType::I64, DType::I64],
        body: vec![
            Stmt::Set {
                var: mx,
                value: Expr::Float(f64::NEG_INFINITY, DType::F32),
            },
            for_(
                0,
                Expr::Dim(0),
                vec![Stmt::Set {
                    var: mx,
                    value: op(Op::Max, vec![v(mx), load(0, v(0))], DType::F32),
                }],
            ),
            store(1, Expr::i64(0), v(mx)),
            Stmt::Set {
                var: sum,
                value: Expr::Float(0.0, DType::F64),
            },
            for_(
                3,
                Expr::Dim(0),
                vec![Stmt::Set {
                    var: sum,
                    value: op(
                        Op::Add,
                        vec![
                            v(sum),
                            op(
                                Op::Cast {
                                    dtype: DType::F64,
                                    saturate: false,
                                },
                                vec![load(0, v(3))],
                                DType::F64,
                            ),
                        ],
                        DType::F64,
                    ),
                }],
            ),
            store(
                1,
                Expr::i64(1),
                op(
                    Op::Cast {
                        dtype: DType::F32,
                        saturate: false,
                    },
                    vec![v(sum)],
                    DType::F32,
                ),
            ),
            Stmt::Loop {
                var: 4,
                extent: Expr::Dim(0),
                mark: Mark::Vector(4),
                body: vec![store(
                    2,
                    v(4) + Expr::i64(0),
                    op(
                        Op::Exp,
                        vec![op(
                            Op::Sub,
                            vec![load(0, v(4)), load(1, Expr::i64(0))],
                            DType::F32,
                        )],
                        DType::F32,
                    ),
                )],
            },
        ],
    };
    let rows: Vec<Vec<f32>> = vec![
        (0..1003)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
            .collect(),
        [vec![-0.0; 21], vec![0.0], vec![-2.0; 9]].concat(),
        vec![-0.0; 19],
        [vec![1.0; 40], vec![f32::NAN], vec![2.0; 3]].concat(),
        vec![3.5; 5],
    ];
    let run = |lib: bool, x: &[f32]| -> (Vec<f32>, Vec<f32>) {
        rows::NO_ROW_CALLS.with(|c| c.set(!lib));
        let c = compile(std::slice::from_ref(&k)).unwrap();
        rows::NO_ROW_CALLS.with(|c| c.set(false));
        let (mut x, mut y, mut z) = (x.to_vec(), vec![0f32; 2], vec![0f32; x.len()]);
        let dims = [x.len() as i64];
        assert_eq!(
            call(&c, 0, &[ptr(&mut x), ptr(&mut y), ptr(&mut z)], &dims),
            0
        );
        (y, z)
    };
    for x in &rows {
        let ((y1, z1), (y0, z0)) = (run(true, x), run(false, x));
        assert_eq!(y1[0].to_bits(), y0[0].to_bits(), "max of {x:?}");
        let close = (y1[1] - y0[1]).abs() <= 1e-6 * y0[1].abs().max(1.0);
        assert!(close || (y1[1].is_nan() && y0[1].is_nan()), "sum of {x:?}");
        if kernel::avx2_fma() {
            for (a, b) in z1.iter().zip(&z0) {
                assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
            }
        }
    }
}

/// Compiles with the JIT's own vector code (no library row routines), counting the
/// vector loops and reductions it made.
fn compile_counting(k: Kernel) -> (Compiled, (usize, usize)) {
    simd::COMPILED.with(|c| c.set((0, 0)));
    rows::NO_ROW_CALLS.with(|c| c.set(true));
    let c = compile(&[k]);
    rows::NO_ROW_CALLS.with(|c| c.set(false));
    (c.unwrap(), simd::COMPILED.with(|c| c.get()))
}

/// `k` with every innermost loop marked `mark`.
fn with_mark(mut k: Kernel, mark: Mark) -> Kernel {
    fn go(body: &mut [Stmt], m: Mark) {
        for s in body {
            if let Stmt::Loop { mark: lm, body, .. } = s {
                if body.iter().any(|s| matches!(s, Stmt::Loop { .. })) {
                    go(body, m);
                } else {
                    *lm = m;
                }
            }
        }
    }
    go(&mut k.body, mark);
    k
}

fn same_bits<T: Copy + std::fmt::Debug>(a: &[T], b: &[T], what: &str) {
    assert_eq!(a.len(), b.len());
    for i in 0..a.len() {
        let (x, y) = (format!("{:?}", a[i]), format!("{:?}", b[i]));
        // NaN payloads may differ; everything else (signed zeros too) must not.
        assert!(
            x == y || (x == "NaN" && y == "NaN"),
            "{what}: element {i}: {x} vs {y}"
        );
    }
}

/// Special f32 values, then pseudo-random ones of every magnitude.
fn f32_samples() -> Vec<f32> {
    let mut xs = vec![
        0.0f32,
        -0.0,
        1.0,
        -1.0,
        0.5,
        -0.5,
        1.5,
        2.5,
        -2.5,
        3.5,
        1e-40,
        -1e-40,
        f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        f32::MIN,
        1e10,
        -3e9,
        123.456,
        7.0,
    ];
    let mut seed = 0x1234_5678u32;
    for _ in 0..20 {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let x = f32::from_bits(seed);
        xs.push(if x.is_nan() { 0.25 } else { x });
        xs.push((seed >> 8) as f32 / 65536.0 - 128.0);
    }
    xs
}

/// Runs `k` (vector-marked innermost loops) and the same kernel with serial loops on
/// buffers `inputs` (as bytes) and one output of `n` elements of `T`, and checks both give
/// the same bits and that the vector one took the SIMD path.
fn vector_vs_scalar<T: Copy + Default + PartialEq + std::fmt::Debug>(
    k: Kernel,
    inputs: &mut [Vec<u8>],
    n: usize,
    what: &str,
) -> Vec<T> {
    let mut outs = Vec::new();
    for mark in [Mark::Vector(4), Mark::Serial] {
        let (c, (vec, _)) = compile_counting(with_mark(k.clone(), mark));
        assert_eq!(vec, usize::from(mark != Mark::Serial), "{what}: SIMD path");
        let mut y = vec![T::default(); n];
        let mut ptrs: Vec<*mut u8> = inputs.iter_mut().map(|b| b.as_mut_ptr()).collect();
        ptrs.push(ptr(&mut y));
        assert_eq!(call(&c, 0, &ptrs, &[n as i64]), 0);
        outs.push(y);
    }
    same_bits(&outs[0], &outs[1], what);
    outs.pop().unwrap()
}

fn bytes<T: Copy>(v: &[T]) -> Vec<u8> {
    // SAFETY: plain numbers viewed as their bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
        .to_vec()
}

fn zip_kernel(d: DType, to: DType, f: &dyn Fn(Expr, Expr) -> Expr) -> Kernel {
    Kernel {
        name: "zip".into(),
        bufs: vec![
            buf("a", d, BufKind::Input),
            buf("b", d, BufKind::Input),
            buf("y", to, BufKind::Output),
        ],
        dims: vec![Dim::sym("n")],
        vars: vec![DType::I64],
        body: vec![for_(
            0,
            Expr::Dim(0),
            vec![store(2, v(0), f(load(0, v(0)), load(1, v(0))))],
        )],
    }
}

#[test]
fn vector_float_ops_match_the_scalar_code() {
    let xs = f32_samples();
    let (a, b): (Vec<f32>, Vec<f32>) = xs
        .iter()
        .flat_map(|&a| xs.iter().map(move |&b| (a, b)))
        .unzip();
    let n = a.len();
    let f = DType::F32;
    let unary = [
        Op::Neg,
        Op::Abs,
        Op::Sqrt,
        Op::Floor,
        Op::Ceil,
        Op::Round,
        Op::Recip,
        Op::Rsqrt,
    ];
    for o in unary {
        let k = map_kernel(f, f, |x| op(o.clone(), vec![x], f));
        simd::LANEWISE.with(|c| c.set(0));
        let y: Vec<f32> = vector_vs_scalar(k, &mut [bytes(&a)], n, o.mnemonic());
        assert_eq!(simd::LANEWISE.with(|c| c.get()), 0, "{o:?} lane by lane");
        // And against Rust.
        let r: fn(f32) -> f32 = match o {
            Op::Neg => |x| -x,
            Op::Abs => f32::abs,
            Op::Sqrt => f32::sqrt,
            Op::Floor => f32::floor,
            Op::Ceil => f32::ceil,
            Op::Round => f32::round_ties_even,
            Op::Rsqrt => |x| (1.0 / f64::from(x).sqrt()) as f32,
            _ => |x| 1.0 / x,
        };
        same_bits(&y, &a.iter().map(|&x| r(x)).collect::<Vec<_>>(), "vs rust");
    }
    for o in [Op::IsNan, Op::IsInf] {
        let k = map_kernel(f, DType::I32, |x| {
            cast(DType::I32)(op(o.clone(), vec![x], DType::Bool))
        });
        vector_vs_scalar::<i32>(k, &mut [bytes(&a)], n, o.mnemonic());
    }
    for o in [Op::Add, Op::Sub, Op::Mul, Op::Div, Op::Max, Op::Min] {
        let k = zip_kernel(f, f, &binop(o.clone(), f));
        let y: Vec<f32> = vector_vs_scalar(k, &mut [bytes(&a), bytes(&b)], n, o.mnemonic());
        if matches!(o, Op::Add | Op::Sub | Op::Mul | Op::Div) {
            let r: fn(f32, f32) -> f32 = match o {
                Op::Add => |x, y| x + y,
                Op::Sub => |x, y| x - y,
                Op::Mul => |x, y| x * y,
                _ => |x, y| x / y,
            };
            let want: Vec<f32> = a.iter().zip(&b).map(|(&x, &y)| r(x, y)).collect();
            same_bits(&y, &want, "vs rust");
        }
    }
    for o in [Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge] {
        // As a mask for select, and as a value.
        let sel = |x: Expr, y: Expr| {
            let c = op(o.clone(), vec![x.clone(), y.clone()], DType::Bool);
            op(Op::Select, vec![c, x, y], f)
        };
        vector_vs_scalar::<f32>(
            zip_kernel(f, f, &sel),
            &mut [bytes(&a), bytes(&b)],
            n,
            "sel",
        );
        let val = |x: Expr, y: Expr| cast(f)(op(o.clone(), vec![x, y], DType::Bool));
        vector_vs_scalar::<f32>(
            zip_kernel(f, f, &val),
            &mut [bytes(&a), bytes(&b)],
            n,
            "cmp",
        );
    }
    // Bool logic on masks, and casts.
    let logic = |x: Expr, y: Expr| {
        let p = op(Op::Lt, vec![x.clone(), y.clone()], DType::Bool);
        let q = op(Op::Gt, vec![x.clone(), Expr::Float(0.0, f)], DType::Bool);
        let r = op(Op::Ne, vec![y, Expr::Float(1.0, f)], DType::Bool);
        let pq = op(Op::And, vec![p.clone(), q.clone()], DType::Bool);
        let x1 = op(Op::Xor, vec![pq, r.clone()], DType::Bool);
        let o1 = op(
            Op::Or,
            vec![op(Op::Not, vec![p], DType::Bool), r],
            DType::Bool,
        );
        let s = op(Op::And, vec![x1, o1], DType::Bool);
        op(Op::Add, vec![cast(f)(s), cast(f)(cast(DType::Bool)(x))], f)
    };
    vector_vs_scalar::<f32>(
        zip_kernel(f, f, &logic),
        &mut [bytes(&a), bytes(&b)],
        n,
        "logic",
    );
    let k = map_kernel(f, DType::I32, cast(DType::I32));
    let y: Vec<i32> = vector_vs_scalar(k, &mut [bytes(&a)], n, "f32 -> i32");
    assert_eq!(y, a.iter().map(|&x| x as i32).collect::<Vec<_>>());
}

#[test]
fn vector_integer_ops_and_casts_match_the_scalar_code() {
    let vals = [
        0i32,
        1,
        -1,
        2,
        -7,
        7,
        123_456,
        -99_999,
        i32::MIN,
        i32::MAX,
        1 << 24,
        16_777_217,
    ];
    let (a, b): (Vec<i32>, Vec<i32>) = vals
        .iter()
        .flat_map(|&a| vals.iter().map(move |&b| (a, b)))
        .unzip();
    let n = a.len();
    for d in [DType::I32, DType::U32] {
        for o in [
            Op::Add,
            Op::Sub,
            Op::Mul,
            Op::And,
            Op::Or,
            Op::Xor,
            Op::Max,
            Op::Min,
        ] {
            let k = zip_kernel(d, d, &binop(o.clone(), d));
            vector_vs_scalar::<i32>(k, &mut [bytes(&a), bytes(&b)], n, o.mnemonic());
        }
        for o in [Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge] {
            let k = zip_kernel(d, d, &|x, y| {
                cast(d)(op(o.clone(), vec![x, y], DType::Bool))
            });
            let y: Vec<i32> = vector_vs_scalar(k, &mut [bytes(&a), bytes(&b)], n, o.mnemonic());
            if o == Op::Lt {
                let want: Vec<i32> = if d == DType::I32 {
                    a.iter().zip(&b).map(|(x, y)| i32::from(x < y)).collect()
                } else {
                    a.iter()
                        .zip(&b)
                        .map(|(&x, &y)| i32::from((x as u32) < (y as u32)))
                        .collect()
                };
                assert_eq!(y, want, "{d} lt");
            }
        }
        for o in [Op::Neg, Op::Not, Op::Abs] {
            let k = map_kernel(d, d, |x| op(o.clone(), vec![x], d));
            vector_vs_scalar::<i32>(k, &mut [bytes(&a)], n, o.mnemonic());
        }
        let k = map_kernel(d, DType::F32, cast(DType::F32));
        let y: Vec<f32> = vector_vs_scalar(k, &mut [bytes(&a)], n, "int -> f32");
        let want: Vec<f32> = if d == DType::I32 {
            a.iter().map(|&x| x as f32).collect()
        } else {
            a.iter().map(|&x| x as u32 as f32).collect()
        };
        same_bits(&y, &want, "int -> f32");
        let other = if d == DType::I32 {
            DType::U32
        } else {
            DType::I32
        };
        let k = map_kernel(d, other, |x| cast(other)(cast(DType::Bool)(cast(other)(x))));
        vector_vs_scalar::<i32>(k, &mut [bytes(&a)], n, "int -> bool -> int");
        // Select on an integer condition between integers.
        let k = zip_kernel(d, d, &|x, y| {
            let c = op(Op::Gt, vec![x.clone(), y.clone()], DType::Bool);
            op(Op::Select, vec![c, y, x], d)
        });
        vector_vs_scalar::<i32>(k, &mut [bytes(&a), bytes(&b)], n, "select");
    }
    // u32 -> f32 rounds like the scalar code above 2^31.
    let us = [
        u32::MAX,
        0x8000_0001,
        0x8000_0080,
        0x8000_0081,
        0x8000_0180,
        0xffff_ff7f,
        0xffff_ff80,
        3,
        0x7fff_ffff,
    ];
    let k = map_kernel(DType::U32, DType::F32, cast(DType::F32));
    let y: Vec<f32> = vector_vs_scalar(k, &mut [bytes(&us)], us.len(), "u32 -> f32");
    same_bits(&y, &us.iter().map(|&x| x as f32).collect::<Vec<_>>(), "u32");
}

/// Distance in representable f32 values.
fn ulps(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let i = i64::from(x.to_bits() as i32);
        if i < 0 {
            i64::from(i32::MIN) - i
        } else {
            i
        }
    };
    (key(a) - key(b)).unsigned_abs()
}

#[test]
fn vector_exp_sigmoid_and_tanh_are_within_2_ulp() {
    // Every 601st float in [-110, 95], the specials, subnormals and tiny values.
    let mut xs: Vec<f32> = Vec::new();
    let mut x = -110f32;
    while x < 95.0 {
        xs.push(x);
        let b = x.to_bits();
        // Positive floats (and +0) have the sign bit clear; negative ones step towards
        // -0 by decreasing bits.
        x = f32::from_bits(if b < 0x8000_0000 {
            b + 601
        } else if b - 0x8000_0000 > 601 {
            b - 601
        } else {
            0
        });
    }
    xs.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-45,
        -1e-45,
        1e-40,
        1e-4,
        -1e-4,
        88.72283,
        88.72284,
        -103.972,
        -87.33655,
        f32::MAX,
        f32::MIN,
    ]);
    type F = fn(f64) -> f64;
    let cases: [(Op, F, u64); 3] = [
        (Op::Exp, f64::exp, 1),
        (Op::Sigmoid, |x| kernel::routines::math::sigmoid(x), 2),
        (Op::Tanh, f64::tanh, 1),
    ];
    for (o, f, bound) in cases {
        let (worst, at) = vector_ulps(&o, f, &xs);
        assert!(worst <= bound, "{}: {worst} ulp at {at}", o.mnemonic());
    }
}

/// Runs `y[i] = o(x[i])` as a vector loop over `xs`, with and without fused multiply-adds
/// (if the host has them), checking that the loop and `o` took the SIMD path (no op lane
/// by lane), that NaN gives NaN and that ±0, ±inf give exactly `f` rounded; returns the
/// largest distance in ulp from `f` rounded, and where.
fn vector_ulps(o: &Op, f: fn(f64) -> f64, xs: &[f32]) -> (u64, f32) {
    let mut worst = (0, 0.0);
    for no_fma in [false, true] {
        simd::NO_FMA.with(|c| c.set(no_fma));
        let w = vector_ulps_once(o, f, xs);
        simd::NO_FMA.with(|c| c.set(false));
        if w.0 >= worst.0 {
            worst = w;
        }
    }
    worst
}

fn vector_ulps_once(o: &Op, f: fn(f64) -> f64, xs: &[f32]) -> (u64, f32) {
    let k = with_mark(
        map_kernel(DType::F32, DType::F32, |x| {
            op(o.clone(), vec![x], DType::F32)
        }),
        Mark::Vector(4),
    );
    simd::LANEWISE.with(|c| c.set(0));
    let (c, counts) = compile_counting(k);
    assert_eq!(counts, (1, 0));
    assert_eq!(
        simd::LANEWISE.with(|c| c.get()),
        0,
        "{} lane by lane",
        o.mnemonic()
    );
    let n = xs.len();
    let mut x = xs.to_vec();
    let mut y = vec![0f32; n];
    assert_eq!(call(&c, 0, &[ptr(&mut x), ptr(&mut y)], &[n as i64]), 0);
    let mut worst = (0, 0.0);
    for (&x, &y) in xs.iter().zip(&y) {
        let want = f(f64::from(x)) as f32;
        if want.is_nan() || y.is_nan() {
            assert!(y.is_nan() && want.is_nan(), "{}({x}) = {y}", o.mnemonic());
            continue;
        }
        if !x.is_finite() || x == 0.0 {
            assert_eq!(y.to_bits(), want.to_bits(), "{}({x})", o.mnemonic());
        }
        let u = ulps(y, want);
        if u > worst.0 {
            worst = (u, x);
        }
    }
    worst
}

/// Every `stride`-th float from `lo` up to `hi` (both finite, same sign or `lo` = 0).
fn floats_between(lo: f32, hi: f32, stride: u32) -> Vec<f32> {
    let (a, b) = (lo.abs().to_bits(), hi.abs().to_bits());
    let sign = if hi < 0.0 || lo < 0.0 { 0x8000_0000 } else { 0 };
    (a.min(b)..=a.max(b))
        .step_by(stride as usize)
        .map(|u| f32::from_bits(u | sign))
        .collect()
}

/// Specials, every 4099th float of both signs (all magnitudes, subnormals included), and
/// `dense` grids.
fn ulp_samples(dense: &[(f32, f32, u32)]) -> Vec<f32> {
    let mut xs = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-45,
        -1e-45,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1.0,
        -1.0,
        f32::MAX,
        f32::MIN,
    ];
    xs.extend(floats_between(0.0, f32::MAX, 4099));
    xs.extend(floats_between(-0.0, f32::MIN, 4099));
    for &(lo, hi, stride) in dense {
        xs.extend(floats_between(lo, hi, stride));
    }
    xs
}

#[test]
fn vector_erf_is_within_1_ulp() {
    // Densely over [-4.5, 4.5], where erf is not yet ±1: both polynomial pieces, the
    // switch at 0.921875, the saturation near 3.92.
    let xs = ulp_samples(&[(0.0, 4.5, 1201), (-0.0, -4.5, 1201), (0.9, 0.95, 7)]);
    let (worst, at) = vector_ulps(&Op::Erf, libm::erf, &xs);
    assert!(worst <= 1, "erf: {worst} ulp at {at}");
    // The ends: erf(±4) is exactly ±1; tiny and subnormal x, odd.
    let ys: Vec<f32> = run_map(
        with_mark(
            map_kernel(DType::F32, DType::F32, |x| op(Op::Erf, vec![x], DType::F32)),
            Mark::Vector(4),
        ),
        // Eight: all in the vector loop, none in the scalar tail.
        &[4.0f32, -4.0, 3.95, 1e-30, -1e-30, 1e-40, -1e-40, 5.0],
    );
    assert_eq!(&ys[..3], &[1.0, -1.0, 1.0]);
    assert!(ulps(ys[3], libm::erf(f64::from(1e-30f32)) as f32) <= 1);
    assert_eq!(ys[4], -ys[3]);
    assert!(ulps(ys[5], libm::erf(f64::from(1e-40f32)) as f32) <= 1);
    assert_eq!((ys[6], ys[7]), (-ys[5], 1.0));
}

#[test]
fn vector_log_is_within_1_ulp() {
    // Densely near 1 (where the result is small and the relative error shows) and over
    // the subnormals.
    let xs = ulp_samples(&[
        (0.5, 2.0, 61),
        (0.999, 1.001, 3),
        (0.0, f32::MIN_POSITIVE, 997),
        (-0.0, -2.0, 30011),
    ]);
    let (worst, at) = vector_ulps(&Op::Log, f64::ln, &xs);
    assert!(worst <= 1, "log: {worst} ulp at {at}");
}

#[test]
fn lanewise_ops_are_counted() {
    // The counter the ulp tests rely on sees an op without a vector form.
    simd::LANEWISE.with(|c| c.set(0));
    let k = with_mark(
        map_kernel(DType::F32, DType::F32, |x| op(Op::Sin, vec![x], DType::F32)),
        Mark::Vector(4),
    );
    let (_, counts) = compile_counting(k);
    assert_eq!(counts, (1, 0));
    assert_eq!(simd::LANEWISE.with(|c| c.get()), 1);
}

/// Every f32 through the vector `erf` and `log`, against the f64 functions rounded
/// (minutes; run with `--ignored`).
#[test]
#[ignore = "exhaustive over every f32 (minutes): run with --ignored"]
fn vector_erf_and_log_exhaustively() {
    type F = fn(f64) -> f64;
    let cases: [(Op, F); 2] = [(Op::Erf, libm::erf), (Op::Log, f64::ln)];
    for (o, f) in cases {
        let mut worst = (0, 0.0);
        for chunk in 0..1024u32 {
            let xs: Vec<f32> = (0..1u32 << 22)
                .map(|i| f32::from_bits(chunk << 22 | i))
                .collect();
            let w = vector_ulps(&o, f, &xs);
            if w.0 > worst.0 {
                worst = w;
            }
        }
        eprintln!("{}: worst {} ulp at {:e}", o.mnemonic(), worst.0, worst.1);
        assert!(
            worst.0 <= 1,
            "{}: {} ulp at {}",
            o.mnemonic(),
            worst.0,
            worst.1
        );
    }
}

#[test]
fn vector_loops_handle_tails_strides_broadcasts_and_gathers() {
    // for i vector:
    //   t = (x[i] + s[0]) * x[2i + 1]
    //   y[i] = t + x[idx[i]] + x[i / 2] + x[(n - 1) - i]
    //   z[3i + 1] = t;  w[i] = cast<f64>(t) * 0.5;  q[i] = cast<i32>(t) + cast<i32>(i)
    let f = DType::F32;
    let (x, s, idx, y, z, w, q) = (0, 1, 2, 3, 4, 5, 6);
    let add = |a, b| op(Op::Add, vec![a, b], f);
    let i = || v(0);
    let k = Kernel {
        name: "mix".into(),
        bufs: vec![
            buf("x", f, BufKind::Input),
            buf("s", f, BufKind::Input),
            buf("idx", DType::I64, BufKind::Input),
            buf("y", f, BufKind::Output),
            buf("z", f, BufKind::Output),
            buf("w", DType::F64, BufKind::Output),
            buf("q", DType::I32, BufKind::Output),
        ],
        dims: vec![Dim::sym("n")],
        vars: vec![DType::I64, f],
        body: vec![Stmt::Loop {
            var: 0,
            extent: Expr::Dim(0),
            mark: Mark::Vector(4),
            body: vec![
                Stmt::Set {
                    var: 1,
                    value: op(
                        Op::Mul,
                        vec![
                            add(load(x, i()), load(s, Expr::i64(0))),
                            load(x, Expr::i64(2) * i() + Expr::i64(1)),
                        ],
                        f,
                    ),
                },
                store(
                    y,
                    i(),
                    add(
                        add(v(1), load(x, load(idx, i()))),
                        add(
                            load(x, Expr::index_op(Op::Div, i(), Expr::i64(2))),
                            load(
                                x,
                                Expr::index_op(Op::Sub, Expr::Dim(0) + Expr::i64(-1), i()),
                            ),
                        ),
                    ),
                ),
                store(z, Expr::i64(3) * i() + Expr::i64(1), v(1)),
                store(
                    w,
                    i(),
                    op(
                        Op::Mul,
                        vec![cast(DType::F64)(v(1)), Expr::Float(0.5, DType::F64)],
                        DType::F64,
                    ),
                ),
                store(
                    q,
                    i(),
                    op(
                        Op::Add,
                        vec![cast(DType::I32)(v(1)), cast(DType::I32)(i())],
                        DType::I32,
                    ),
                ),
            ],
        }],
    };
    let (c, counts) = compile_counting(k);
    assert_eq!(counts, (1, 0));
    for n in [0usize, 1, 3, 4, 5, 7, 8, 17, 1000] {
        let mut xv: Vec<f32> = (0..2 * n + 2).map(|j| (j as f32) * 0.25 - 3.0).collect();
        let mut sv = vec![1.5f32];
        let mut iv: Vec<i64> = (0..n).map(|j| ((j * 7 + 3) % (2 * n + 1)) as i64).collect();
        let mut yv = vec![0f32; n];
        let mut zv = vec![-9f32; 3 * n + 2];
        let mut wv = vec![0f64; n];
        let mut qv = vec![0i32; n];
        let r = call(
            &c,
            0,
            &[
                ptr(&mut xv),
                ptr(&mut sv),
                ptr(&mut iv),
                ptr(&mut yv),
                ptr(&mut zv),
                ptr(&mut wv),
                ptr(&mut qv),
            ],
            &[n as i64],
        );
        assert_eq!(r, 0);
        for j in 0..n {
            let t = (xv[j] + sv[0]) * xv[2 * j + 1];
            let want = (t + xv[iv[j] as usize]) + (xv[j / 2] + xv[n - 1 - j]);
            assert_eq!(yv[j].to_bits(), want.to_bits(), "n {n} y[{j}]");
            assert_eq!(zv[3 * j + 1], t, "n {n} z[{}]", 3 * j + 1);
            assert_eq!(wv[j], f64::from(t) * 0.5, "n {n} w[{j}]");
            assert_eq!(qv[j], (t as i32).wrapping_add(j as i32), "n {n} q[{j}]");
        }
        // Strided stores leave the other elements alone.
        for (j, &zj) in zv.iter().enumerate() {
            if j % 3 != 1 || j / 3 >= n {
                assert_eq!(zj, -9.0, "n {n} z[{j}] was written");
            }
        }
    }
}

#[test]
fn vector_loops_mix_native_and_per_lane_ops() {
    // y[i] = erf(x[i]) + cast<f32>(cast<f64>(x[i]) * 1.5) + pow(x[i], 0.5) + sign(x[i])
    //        + exp(x[i]) * sigmoid(x[i])
    let f = DType::F32;
    let k = map_kernel(f, f, |x| {
        let e = op(Op::Erf, vec![x.clone()], f);
        let w = cast(f)(op(
            Op::Mul,
            vec![cast(DType::F64)(x.clone()), Expr::Float(1.5, DType::F64)],
            DType::F64,
        ));
        let p = op(Op::Pow, vec![x.clone(), Expr::Float(0.5, f)], f);
        let s = op(Op::Sign, vec![x.clone()], f);
        let sum = op(
            Op::Add,
            vec![op(Op::Add, vec![e, w], f), op(Op::Add, vec![p, s], f)],
            f,
        );
        let es = op(
            Op::Mul,
            vec![op(Op::Exp, vec![x.clone()], f), op(Op::Sigmoid, vec![x], f)],
            f,
        );
        op(Op::Add, vec![sum, es], f)
    });
    let xs: Vec<f32> = (0..103).map(|j| (j as f32 - 50.0) * 0.173).collect();
    let vk = with_mark(k.clone(), Mark::Vector(4));
    let (c, counts) = compile_counting(vk);
    assert_eq!(counts, (1, 0));
    let mut x = xs.clone();
    let mut y = vec![0f32; xs.len()];
    assert_eq!(
        call(&c, 0, &[ptr(&mut x), ptr(&mut y)], &[xs.len() as i64]),
        0
    );
    for (j, &x) in xs.iter().enumerate() {
        let xd = f64::from(x);
        let a = (libm::erf(xd) as f32 + (xd * 1.5) as f32)
            + (xd.powf(0.5) as f32 + kernel::routines::math::sign(xd) as f32);
        let want = a + xd.exp() as f32 * kernel::routines::math::sigmoid(xd) as f32;
        let got = y[j];
        assert!(
            (got.is_nan() && want.is_nan()) || (got - want).abs() <= 4e-7 * want.abs().max(1.0),
            "x {x}: {got} vs {want}"
        );
    }
}

/// `y[r] = fold over c < cols of x[r * cols + c] * s[r]` with `acc = op(acc, ...)`.
fn reduction_kernel(o: Op, sum: bool) -> Kernel {
    let f = DType::F32;
    let acc_t = if sum { DType::F64 } else { f };
    let e = op(
        Op::Mul,
        vec![load(0, v(0) * Expr::Dim(1) + v(1)), load(1, v(0))],
        f,
    );
    let e = if sum { cast(DType::F64)(e) } else { e };
    let init = if sum {
        Expr::Float(0.0, DType::F64)
    } else if o == Op::Max {
        Expr::Float(f64::NEG_INFINITY, f)
    } else {
        Expr::Float(f64::INFINITY, f)
    };
    Kernel {
        name: "reduce".into(),
        bufs: vec![
            buf("x", f, BufKind::Input),
            buf("s", f, BufKind::Input),
            buf("y", acc_t, BufKind::Output),
        ],
        dims: vec![Dim::sym("r"), Dim::sym("c")],
        vars: vec![DType::I64, DType::I64, acc_t],
        body: vec![for_(
            0,
            Expr::Dim(0),
            vec![
                Stmt::Set {
                    var: 2,
                    value: init,
                },
                for_(
                    1,
                    Expr::Dim(1),
                    vec![Stmt::Set {
                        var: 2,
                        value: op(o, vec![v(2), e], acc_t),
                    }],
                ),
                store(2, v(0), v(2)),
            ],
        )],
    }
}

#[test]
fn max_and_min_reductions_match_the_sequential_fold() {
    // Cranelift's fmax/fmin: NaN if either is NaN; -0 < +0.
    let fold = |o: &Op, a: f32, b: f32| -> f32 {
        if a.is_nan() || b.is_nan() {
            f32::NAN
        } else if a == b {
            if (*o == Op::Max) == a.is_sign_positive() {
                a
            } else {
                b
            }
        } else if *o == Op::Max {
            a.max(b)
        } else {
            a.min(b)
        }
    };
    for o in [Op::Max, Op::Min] {
        let (c, counts) = compile_counting(reduction_kernel(o.clone(), false));
        assert_eq!(counts, (0, 1));
        for cols in [0usize, 1, 3, 7, 8, 9, 15, 16, 17, 100, 1000] {
            let rows = 6;
            let mut x: Vec<f32> = (0..rows * cols)
                .map(|j| ((j * 7919) % 1009) as f32 - 500.0)
                .collect();
            // Row 1: a NaN in the middle; row 2: in the tail; row 3: signed zeros only;
            // row 4: all -inf / +inf.
            if cols > 0 {
                x[cols + cols / 2] = f32::NAN;
                x[2 * cols + cols - 1] = f32::NAN;
                for j in 0..cols {
                    x[3 * cols + j] = if j % 3 == 0 { 0.0 } else { -0.0 };
                    x[4 * cols + j] = if o == Op::Max {
                        f32::NEG_INFINITY
                    } else {
                        f32::INFINITY
                    };
                }
            }
            let mut s = vec![1.0f32, 1.0, 2.0, 1.0, 1.0, -0.5];
            let mut y = vec![0f32; rows];
            let r = call(
                &c,
                0,
                &[ptr(&mut x), ptr(&mut s), ptr(&mut y)],
                &[rows as i64, cols as i64],
            );
            assert_eq!(r, 0);
            for row in 0..rows {
                let init = if o == Op::Max {
                    f32::NEG_INFINITY
                } else {
                    f32::INFINITY
                };
                let want = (0..cols).fold(init, |a, j| fold(&o, a, x[row * cols + j] * s[row]));
                same_bits(
                    &[y[row]],
                    &[want],
                    &format!("{} cols {cols} row {row}", o.mnemonic()),
                );
            }
        }
    }
}

#[test]
fn f64_sums_of_f32_values_match_the_sequential_sum() {
    let (c, counts) = compile_counting(reduction_kernel(Op::Add, true));
    assert_eq!(counts, (0, 1));
    for cols in [0usize, 1, 3, 7, 8, 9, 15, 16, 17, 100, 1000, 4099] {
        let rows = 3;
        let mut x: Vec<f32> = (0..rows * cols)
            .map(|j| (((j * 7919) % 1009) as f32 - 500.0) * 1.37e-3)
            .collect();
        let mut s = vec![1.0f32, -3.0, 0.1];
        let mut y = vec![0f64; rows];
        let r = call(
            &c,
            0,
            &[ptr(&mut x), ptr(&mut s), ptr(&mut y)],
            &[rows as i64, cols as i64],
        );
        assert_eq!(r, 0);
        for row in 0..rows {
            let terms = (0..cols).map(|j| f64::from(x[row * cols + j] * s[row]));
            let want: f64 = terms.clone().sum();
            let mag: f64 = terms.map(f64::abs).sum();
            assert!(
                (y[row] - want).abs() <= 1e-15 * mag,
                "cols {cols} row {row}: {} vs {want}",
                y[row]
            );
        }
    }
    // Special values: infinities and NaN propagate, -0 sums stay -0.
    for (vals, want) in [
        (
            vec![1.0f32, f32::INFINITY, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            f64::INFINITY,
        ),
        (
            vec![
                f32::INFINITY,
                1.0,
                2.0,
                3.0,
                4.0,
                5.0,
                6.0,
                7.0,
                f32::NEG_INFINITY,
            ],
            f64::NAN,
        ),
        (
            vec![1.0, 2.0, 3.0, f32::NAN, 4.0, 5.0, 6.0, 7.0, 8.0],
            f64::NAN,
        ),
    ] {
        let mut x = vals.clone();
        let mut s = vec![1.0f32];
        let mut y = vec![0f64; 1];
        call(
            &c,
            0,
            &[ptr(&mut x), ptr(&mut s), ptr(&mut y)],
            &[1, vals.len() as i64],
        );
        same_bits(&y, &[want], "special sum");
    }
}

#[test]
fn loops_that_are_not_vectorizable_stay_scalar() {
    // A loop-carried temporary, a check and a byte store: scalar, and still right.
    let f = DType::F32;
    let carried = Kernel {
        name: "carried".into(),
        bufs: vec![buf("x", f, BufKind::Input), buf("y", f, BufKind::Output)],
        dims: vec![Dim::sym("n")],
        vars: vec![DType::I64, f],
        body: vec![
            Stmt::Set {
                var: 1,
                value: Expr::Float(0.0, f),
            },
            Stmt::Loop {
                var: 0,
                extent: Expr::Dim(0),
                mark: Mark::Vector(4),
                body: vec![
                    store(1, v(0), v(1)),
                    Stmt::Set {
                        var: 1,
                        value: load(0, v(0)),
                    },
                ],
            },
        ],
    };
    let (c, counts) = compile_counting(carried);
    assert_eq!(counts, (0, 0));
    let mut x = vec![1f32, 2., 3., 4., 5., 6.];
    let mut y = vec![0f32; 6];
    assert_eq!(call(&c, 0, &[ptr(&mut x), ptr(&mut y)], &[6]), 0);
    assert_eq!(y, vec![0., 1., 2., 3., 4., 5.]);
    let bytes_out = with_mark(
        map_kernel(f, DType::Bool, |x| {
            op(Op::Gt, vec![x, Expr::Float(0.0, f)], DType::Bool)
        }),
        Mark::Vector(4),
    );
    let (c, counts) = compile_counting(bytes_out);
    assert_eq!(counts, (0, 0));
    let mut x = vec![1f32, -2., 3., 0., 5.];
    let mut y = vec![false; 5];
    assert_eq!(call(&c, 0, &[ptr(&mut x), ptr(&mut y)], &[5]), 0);
    assert_eq!(y, vec![true, false, true, false, true]);
    // An f32 sum (not the lowering's f64 rule) is not reassociated.
    let (_, counts) = compile_counting(Kernel {
        vars: vec![DType::I64, DType::I64, f],
        ..reduction_kernel(Op::Add, false)
    });
    assert_eq!(counts, (0, 0));
}

/// The routine table's calls reach their host functions with their operands and integers in
/// the table's order: a product at offsets (with and without B packed ahead of time) and a
/// plane convolution, against plain loops.
#[test]
fn routine_calls_pass_operands_and_integers_in_table_order() {
    let f32buf = |name: &str, kind| buf(name, DType::F32, kind);
    // c[1 + i*3 + j] = Σ_l a[2 + i*4 + l] · b[l*3 + j] for a 2×4 by 4×3 product.
    let (m, n, k) = (2usize, 3usize, 4usize);
    let a: Vec<f32> = (0..2 + m * k).map(|x| x as f32 * 0.5 - 1.0).collect();
    let b: Vec<f32> = (0..k * n).map(|x| (x as f32).sin()).collect();
    let mut want = vec![0f32; 1 + m * n];
    for i in 0..m {
        for j in 0..n {
            want[1 + i * n + j] = (0..k).map(|l| a[2 + i * k + l] * b[l * n + j]).sum();
        }
    }
    let packed = kernel::routines::gemm::pack_b(&b, n as i64, 1, k, n).unwrap();
    for with_packed in [false, true] {
        let g = kernel::Gemm {
            a: 0,
            a_off: Expr::i64(2),
            a_rs: Expr::i64(k as i64),
            a_cs: Expr::i64(1),
            b: 1,
            b_off: Expr::i64(0),
            b_rs: Expr::i64(n as i64),
            b_cs: Expr::i64(1),
            c: 2,
            c_off: Expr::i64(1),
            c_rs: Expr::i64(n as i64),
            m: Expr::i64(m as i64),
            n: Expr::i64(n as i64),
            k: Expr::i64(k as i64),
            b_packed: with_packed.then_some(3),
        };
        let kern = Kernel {
            name: "gemm_call".into(),
            bufs: vec![
                f32buf("a", BufKind::Input),
                f32buf("b", BufKind::Input),
                f32buf("c", BufKind::Output),
                f32buf("bp", BufKind::Input),
            ],
            dims: vec![Dim::sym("n")],
            vars: vec![],
            body: vec![Stmt::Call(Box::new(g.into()))],
        };
        let c = compile(&[kern]).unwrap();
        let (mut a, mut b, mut bp) = (a.clone(), b.clone(), packed.clone());
        let mut got = vec![0f32; 1 + m * n];
        let bufs = [ptr(&mut a), ptr(&mut b), ptr(&mut got), ptr(&mut bp)];
        assert_eq!(call(&c, 0, &bufs, &[0]), 0);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-5,
                "packed {with_packed}: {got:?} vs {want:?}"
            );
        }
    }
    // A 4×4 plane by a 3×3 filter, stride 1, padding 1: out[oy·4 + ox].
    let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let w: Vec<f32> = (0..9).map(|v| 1.0 + v as f32 * 0.25).collect();
    let mut want = vec![0f32; 16];
    for oy in 0..4i64 {
        for ox in 0..4i64 {
            let mut s = 0f32;
            for ky in 0..3i64 {
                for kx in 0..3i64 {
                    let (iy, ix) = (oy + ky - 1, ox + kx - 1);
                    if (0..4).contains(&iy) && (0..4).contains(&ix) {
                        s += x[(iy * 4 + ix) as usize] * w[(ky * 3 + kx) as usize];
                    }
                }
            }
            want[(oy * 4 + ox) as usize] = s;
        }
    }
    let conv = kernel::Conv2d {
        x: 0,
        x_off: Expr::i64(0),
        k: 1,
        k_off: Expr::i64(0),
        out: 2,
        out_off: Expr::i64(0),
        geometry: kernel::routines::conv::Geometry {
            h: 4,
            w: 4,
            oh: 4,
            ow: 4,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            ph: 1,
            pw: 1,
        },
    };
    let kern = Kernel {
        name: "conv_call".into(),
        bufs: vec![
            f32buf("x", BufKind::Input),
            f32buf("k", BufKind::Input),
            f32buf("out", BufKind::Output),
        ],
        dims: vec![Dim::sym("n")],
        vars: vec![],
        body: vec![Stmt::Call(Box::new(conv.into()))],
    };
    let c = compile(&[kern]).unwrap();
    let (mut x, mut w) = (x, w);
    let mut got = vec![0f32; 16];
    assert_eq!(
        call(&c, 0, &[ptr(&mut x), ptr(&mut w), ptr(&mut got)], &[0]),
        0
    );
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-4, "{got:?} vs {want:?}");
    }
}
