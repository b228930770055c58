//! The Cranelift backend against hand-built kernels, for what kernel filetests
//! (`tests/filetests/kernel`, against the kernel interpreter) cannot say: the shared builders,
//! division that never traps, checks and malformed kernels here; SIMD code and the ulp bounds of vector transcendentals in `vector.rs`;
//! library routines, reductions and routine calls in `library.rs`.

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
    let c = compile(&[zip_kernel(d, to, &f)]).unwrap();
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

/// Compiles (the JIT's own vector code: library row routines come from a kernel transform
/// these kernels do not go through), counting the vector loops and reductions it made.
fn compile_counting(k: Kernel) -> (Compiled, (usize, usize)) {
    simd::COMPILED.with(|c| c.set((0, 0)));
    let c = compile(&[k]);
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

mod library;
mod vector;
