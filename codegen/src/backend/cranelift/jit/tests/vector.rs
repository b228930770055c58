//! Vector loops against the scalar code: elementwise ops, casts, tails, gathers, and the ulp
//! bounds of the vector transcendentals.

use super::*;

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
