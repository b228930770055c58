//! Library routines from compiled kernels: softmax's row routines, reductions, loops that
//! stay scalar, and routine calls (`Stmt::Call`) in the table's operand order.

use super::*;

/// A softmax row through the library routines (the `row-calls` transform) and through the
/// JIT's own code: the maximum (NaN, ±0 included) and `exp` agree to the bit, the f64 sum
/// closely.
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
    let mut calls = k.clone();
    kernel::recognize::row_calls(&mut calls);
    let routines: Vec<&str> = calls
        .body
        .iter()
        .filter_map(|s| match s {
            Stmt::Call(c) => Some(c.routine.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(routines, ["row_max", "row_sum_f64", "row_exp_sub"]);
    let run = |lib: bool, x: &[f32]| -> (Vec<f32>, Vec<f32>) {
        let c = compile(std::slice::from_ref(if lib { &calls } else { &k })).unwrap();
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
            epilogue: Default::default(),
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
        epilogue: Default::default(),
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
