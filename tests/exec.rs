//! Compiled executables through the public API: concurrent runs, symbols bound per run,
//! and bad inputs as errors that name what is wrong.

use kiln::{Executable, Tensor};

/// `g` compiled for `threads` threads, run on `x`, with the run's statistics.
fn run_at(g: &kiln::Graph, x: &Tensor, threads: usize) -> (Vec<Tensor>, kiln::RunStats) {
    let opts = kiln::CompileOptions {
        threads: Some(threads),
        ..Default::default()
    };
    let exe = kiln::compile(g, &opts).expect("compiles");
    exe.run_stats(std::slice::from_ref(x), &Default::default())
        .unwrap()
}

fn compile(text: &str) -> Executable {
    let g = kiln::parse_graph(text).expect("parses");
    kiln::compile(&g, &Default::default()).expect("compiles")
}

const EMBED: &str = r#"
func @embed {
  %0 = param {name="ids"} : i64[n]
  %1 = constant {value=[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]} : f32[3, 2]
  %2 = gather %1, %0 {axis=0} : f32[n, 2]
  %3 = tanh %2 : f32[n, 2]
  return %3 as "y"
}
"#;

#[test]
fn symbols_bind_per_run_without_recompiling() {
    let exe = compile(EMBED);
    for ids in [vec![0i64, 2], vec![1, -1, 0, 2]] {
        let n = ids.len();
        let out = exe
            .run(&[Tensor::from_vec(vec![n], ids.clone()).unwrap()])
            .unwrap();
        let got = out[0].as_slice::<f32>().unwrap();
        let table = [[1.0f64, 2.0], [3.0, 4.0], [5.0, 6.0]];
        for (i, &id) in ids.iter().enumerate() {
            let row = table[id.rem_euclid(3) as usize];
            for j in 0..2 {
                assert_eq!(got[i * 2 + j], row[j].tanh() as f32);
            }
        }
    }
}

#[test]
fn an_index_out_of_range_is_an_error_naming_the_node() {
    let exe = compile(EMBED);
    let err = exe
        .run(&[Tensor::from_vec(vec![2], vec![0i64, 3]).unwrap()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("out of range") && err.starts_with("%1 ("),
        "{err}"
    );
}

#[test]
fn wrong_inputs_are_errors_naming_the_input() {
    let exe = compile(EMBED);
    let err = exe
        .run(&[Tensor::from_vec(vec![2], vec![0i32, 1]).unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"ids\"") && err.contains("i64"), "{err}");
    let err = exe
        .run(&[Tensor::from_vec(vec![1, 2], vec![0i64, 1]).unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"ids\""), "{err}");
    let err = exe.run(&[]).unwrap_err().to_string();
    assert!(err.contains("expected 1 inputs"), "{err}");
}

#[test]
fn runs_from_many_threads_agree() {
    const MLP: &str = r#"
func @mlp {
  %0 = param {name="x"} : f32[b, 64]
  %1 = param {name="w"} : f32[64, 96]
  %2 = dot %0, %1 {lhs_contract=[1], rhs_contract=[0]} : f32[b, 96]
  %3 = exp %2 : f32[b, 96]
  %4 = reduce_sum %3 {axes=[1]} : f32[b]
  return %4 as "s"
}
"#;
    let exe = std::sync::Arc::new(compile(MLP));
    let x = kiln::Rng::new(1).tensor(kiln::DType::F32, &[32, 64]);
    let w = kiln::Rng::new(2).tensor(kiln::DType::F32, &[64, 96]);
    let want = exe.run(&[x.clone(), w.clone()]).unwrap();
    let g = kiln::parse_graph(MLP).unwrap();
    let oracle = kiln::interpret(
        &g,
        &[("x".into(), x.clone()), ("w".into(), w.clone())],
        &Default::default(),
    )
    .unwrap();
    let tol = kiln::onnx::Tolerance {
        rtol: 1e-4,
        atol: 1e-5,
    };
    assert!(kiln::onnx::mismatch(&want[0], &oracle[0].1, tol).is_none());
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (exe, x, w, want) = (exe.clone(), x.clone(), w.clone(), want.clone());
            s.spawn(move || {
                for _ in 0..20 {
                    let got = exe.run(&[x.clone(), w.clone()]).unwrap();
                    assert_eq!(got[0].as_slice::<f32>(), want[0].as_slice::<f32>());
                }
            });
        }
    });
}

#[test]
fn thread_counts_agree_and_intermediates_share_memory() {
    // A softmax, a normalization and a batched product: stages big enough to be split over
    // threads, and intermediates whose lifetimes allow reuse.
    const NET: &str = r#"
func @net {
  %0 = param {name="x"} : f32[b, 8, 64, 64]
  %1 = reduce_max %0 {axes=[3]} : f32[b, 8, 64]
  %2 = broadcast %1 {dims=[0, 1, 2]} : f32[b, 8, 64, 64]
  %3 = sub %0, %2 : f32[b, 8, 64, 64]
  %4 = exp %3 : f32[b, 8, 64, 64]
  %5 = reduce_sum %4 {axes=[3]} : f32[b, 8, 64]
  %6 = broadcast %5 {dims=[0, 1, 2]} : f32[b, 8, 64, 64]
  %7 = div %4, %6 : f32[b, 8, 64, 64]
  %8 = dot %7, %0 {lhs_batch=[0, 1], rhs_batch=[0, 1], lhs_contract=[3], rhs_contract=[2]} : f32[b, 8, 64, 64]
  %9 = tanh %8 : f32[b, 8, 64, 64]
  %10 = mul %9, %7 : f32[b, 8, 64, 64]
  %11 = reduce_sum %10 {axes=[1]} : f32[b, 64, 64]
  return %11 as "y"
}
"#;
    let g = kiln::parse_graph(NET).expect("parses");
    let x = kiln::Rng::new(7).tensor(kiln::DType::F32, &[3, 8, 64, 64]);
    let oracle = kiln::interpret(&g, &[("x".into(), x.clone())], &Default::default()).unwrap();
    let mut first: Option<Tensor> = None;
    for threads in [1, 2, 3] {
        let (got, stats) = run_at(&g, &x, threads);
        let tol = kiln::onnx::Tolerance {
            rtol: 1e-4,
            atol: 1e-5,
        };
        if let Some(m) = kiln::onnx::mismatch(&got[0], &oracle[0].1, tol) {
            panic!("{threads} threads: {m}");
        }
        match &first {
            None => first = Some(got[0].clone()),
            Some(f) => assert_eq!(
                got[0].as_slice::<f32>(),
                f.as_slice::<f32>(),
                "{threads} threads"
            ),
        }
        assert!(stats.planned_bytes > 0);
        assert!(
            stats.planned_bytes < stats.total_bytes,
            "{} planned for {}",
            stats.planned_bytes,
            stats.total_bytes
        );
    }
}

#[test]
fn concats_of_computed_values_are_made_in_place() {
    // Channels of a batch-1 image concatenated, one concat inside another, and a part read
    // again after the concats: the parts' kernels write straight into the outer result.
    const NET: &str = r#"
func @cat {
  %0 = param {name="x"} : f32[1, 16, 32, 32]
  %1 = tanh %0 : f32[1, 16, 32, 32]
  %2 = exp %0 : f32[1, 16, 32, 32]
  %3 = concat %1, %2 {axis=1} : f32[1, 32, 32, 32]
  %4 = sigmoid %0 : f32[1, 16, 32, 32]
  %5 = concat %3, %4 {axis=1} : f32[1, 48, 32, 32]
  %6 = reduce_sum %5 {axes=[2, 3]} : f32[1, 48]
  %7 = reduce_max %1 {axes=[0, 2, 3]} : f32[16]
  return %6 as "sums", %7 as "max"
}
"#;
    let g = kiln::parse_graph(NET).expect("parses");
    let x = kiln::Rng::new(3).tensor(kiln::DType::F32, &[1, 16, 32, 32]);
    let oracle = kiln::interpret(&g, &[("x".into(), x.clone())], &Default::default()).unwrap();
    for threads in [1, 2] {
        let (got, stats) = run_at(&g, &x, threads);
        let tol = kiln::onnx::Tolerance {
            rtol: 1e-5,
            atol: 1e-5,
        };
        for (got, (name, want)) in got.iter().zip(&oracle) {
            if let Some(m) = kiln::onnx::mismatch(got, want, tol) {
                panic!("{threads} threads, {name}: {m}");
            }
        }
        // Copying, the outer concat's step alone holds its 192 KiB result, the inner one's
        // 128 KiB and a 64 KiB part; in place, the outer result holds every part.
        let part = 16 * 32 * 32 * 4;
        assert!(
            stats.planned_bytes < 4 * part,
            "{} bytes planned for parts of {part}",
            stats.planned_bytes
        );
    }
}

#[test]
fn a_resample_index_out_of_range_is_an_error_naming_the_node() {
    let exe = compile(
        r#"
func @resample {
  %0 = param {name="x"} : f32[2, 3]
  %1 = param {name="i"} : i64[2, 2]
  %2 = constant {value=[[0.5, 0.5], [1.0, 0.0]]} : f32[2, 2]
  %3 = resample %0, %1, %2 {axis=1} : f32[2, 2]
  return %3 as "y"
}
"#,
    );
    let x = Tensor::from_vec(vec![2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let ok = exe
        .run(&[
            x.clone(),
            Tensor::from_vec(vec![2, 2], vec![0i64, 2, 1, 1]).unwrap(),
        ])
        .unwrap();
    assert_eq!(ok[0].as_slice::<f32>().unwrap(), [2.0, 2.0, 5.0, 5.0]);
    for bad in [3i64, -1] {
        let i = Tensor::from_vec(vec![2, 2], vec![0i64, 1, bad, 0]).unwrap();
        let err = exe.run(&[x.clone(), i]).unwrap_err().to_string();
        assert!(
            err.contains("out of range") && err.starts_with("%3 ("),
            "{err}"
        );
    }
}

/// A 4-bit product of a small constant weight runs on its f32 dequantization (made once),
/// and its artifact keeps the nibbles: the dequantized copy is remade on loading, not stored.
#[test]
fn four_bit_weights_stay_packed_in_artifacts() {
    let (n, k, block) = (96usize, 256usize, 32usize);
    let nb = k / block;
    let mut rng = kiln::Rng::new(7);
    let ints = |t: Tensor| -> Vec<String> {
        t.as_slice::<f32>()
            .unwrap()
            .iter()
            .map(|v| ((v.abs() * 1000.0) as u32 % 256).to_string())
            .collect()
    };
    let bytes = ints(rng.tensor(kiln::DType::F32, &[n * k / 2]));
    let scales: Vec<String> = (0..n * nb)
        .map(|i| format!("{}", 0.01 + (i % 7) as f32 / 64.0))
        .collect();
    let zeros: Vec<String> = (0..n * nb).map(|i| format!("{}", i % 16)).collect();
    let rows = |v: &[String], w: usize| -> String {
        let r: Vec<String> = v.chunks(w).map(|c| format!("[{}]", c.join(", "))).collect();
        format!("[{}]", r.join(", "))
    };
    let text = format!(
        r#"
func @four_bit {{
  %x = param {{name="x"}} : f32[16, {k}]
  %w = constant {{value={}}} : u8[{n}, {}]
  %s = constant {{value={}}} : f32[{n}, {nb}]
  %z = constant {{value={}}} : f32[{n}, {nb}]
  %y = qdot4 %x, %w, %s, %z {{block={block}}} : f32[16, {n}]
  %r = tanh %y : f32[16, {n}]
  return %r as "y"
}}
"#,
        rows(&bytes, k / 2),
        k / 2,
        rows(&scales, nb),
        rows(&zeros, nb),
    );
    let g = kiln::parse_graph(&text).unwrap();
    let x = rng.tensor(kiln::DType::F32, &[16, k]);
    let oracle = kiln::interpret(&g, &[("x".into(), x.clone())], &Default::default()).unwrap();
    let o = kiln::optimize(&g, None, &Default::default()).unwrap();
    let bytes = kiln::artifact::compile(&o, &Default::default(), "host").unwrap();
    let a = kiln::runtime::artifact::read(&bytes).unwrap();
    let weights = a.section("weights").unwrap().len();
    // The nibbles (12 KiB) and scales; the f32 weight alone would be 96 KiB.
    assert!(
        weights < 24 * 1024,
        "the artifact's weights are {weights} bytes"
    );
    let tol = kiln::onnx::Tolerance {
        rtol: 1e-4,
        atol: 1e-4,
    };
    let jit = kiln::compile(&o, &Default::default()).unwrap();
    let loaded = kiln::artifact::load(&bytes, &Default::default()).unwrap();
    for exe in [&jit, &loaded] {
        let got = exe.run(std::slice::from_ref(&x)).unwrap();
        assert!(kiln::onnx::mismatch(&got[0], &oracle[0].1, tol).is_none());
    }
}

/// `dynamic_quantize` (ONNX DynamicQuantizeLinear as one op) is the ops it is defined by —
/// the interpreter's and the compiled routine's results, at one thread and two, are the
/// definition's bits: numbers of either sign or one, all zeros, one element, NaN,
/// infinities, halves that round to even, and more elements than one thread's part.
#[test]
fn dynamic_quantize_is_the_ops_it_is_defined_by() {
    use kiln::{Builder, DType, Op, Shape};
    /// DynamicQuantizeLinear in elementwise ops and reductions (as importers once wrote it).
    fn definition(b: &mut Builder, x: kiln::Value) -> kiln::Result<[kiln::Value; 3]> {
        let all: Vec<i64> = (0..b.rank(x) as i64).collect();
        let zero = b.scalar(0.0, DType::F32)?;
        let hi = b.reduce_max(x, &all, false)?;
        let hi = b.max(hi, zero)?;
        let lo = b.reduce(|axes| Op::ReduceMin { axes }, x, &all, false)?;
        let lo = b.min(lo, zero)?;
        let range = b.sub(hi, lo)?;
        let same = b.op1(Op::Eq, &[hi, lo])?;
        let one = b.scalar(1.0, DType::F32)?;
        let range = b.op1(Op::Select, &[same, one, range])?;
        let top = b.scalar(255.0, DType::F32)?;
        let s = b.div(range, top)?;
        let z = b.div(lo, s)?;
        let z = b.sub(zero, z)?;
        let z = b.max(z, zero)?;
        let z = b.min(z, top)?;
        let z = b.unary(Op::Round, z)?;
        let q = b.div(x, s)?;
        let q = b.unary(Op::Round, q)?;
        let q = b.add(q, z)?;
        let q = b.max(q, zero)?;
        let q = b.min(q, top)?;
        let q = b.cast(q, DType::U8)?;
        let z8 = b.cast(z, DType::U8)?;
        Ok([q, s, z8])
    }
    let graph = |n: usize, op: bool| {
        let mut b = Builder::new("dq");
        let x = b
            .param("x", DType::F32, Shape::from_consts(&[n as i64]))
            .unwrap();
        let outs = if op {
            let o = b.op(Op::DynamicQuantize, &[x]).unwrap();
            [o[0], o[1], o[2]]
        } else {
            definition(&mut b, x).unwrap()
        };
        for (name, v) in ["q", "s", "z"].iter().zip(outs) {
            b.output(name, v).unwrap();
        }
        b.finish().unwrap()
    };
    let mut rng = kiln::Rng::new(5);
    let big: Vec<f32> = (0..40_000)
        .map(|i| (i % 1000) as f32 * 0.37 - 100.0)
        .collect();
    let cases: Vec<Vec<f32>> = vec![
        (0..100).map(|_| rng.range(-3.0, 5.0) as f32).collect(),
        vec![0.0; 7],
        vec![-0.0, 0.0],
        vec![3.0],
        vec![-2.0, -5.0, -1.0],
        vec![1.0, 2.0, 255.0, 0.5, 1.5, 2.5],
        // A scale of 1/128 and a zero point of exactly 2.5 (even: 2), values 2.5 and 3.5.
        vec![-0.019_531_25, 1.972_656_3, 0.019_531_25, 0.027_343_75],
        vec![-1.0, f32::NAN, 2.0],
        vec![-1.0, f32::INFINITY, 2.0],
        vec![f32::NEG_INFINITY, 1.0],
        (0..300).map(|i| i as f32 - 100.5).collect(),
        big,
    ];
    let bits = |t: &Tensor| -> Vec<u64> {
        match t.as_slice::<f32>() {
            Some(v) => v
                .iter()
                .map(|x| {
                    if x.is_nan() {
                        1 << 40
                    } else {
                        u64::from(x.to_bits())
                    }
                })
                .collect(),
            None => t
                .as_slice::<u8>()
                .unwrap()
                .iter()
                .map(|&x| u64::from(x))
                .collect(),
        }
    };
    for x in cases {
        let n = x.len();
        let input = vec![(
            "x".to_string(),
            Tensor::from_vec(vec![n], x.clone()).unwrap(),
        )];
        let none = std::collections::HashMap::new();
        let want: Vec<Vec<u64>> = kiln::interpret(&graph(n, false), &input, &none)
            .unwrap()
            .iter()
            .map(|(_, t)| bits(t))
            .collect();
        let g = graph(n, true);
        let got: Vec<Vec<u64>> = kiln::interpret(&g, &input, &none)
            .unwrap()
            .iter()
            .map(|(_, t)| bits(t))
            .collect();
        assert_eq!(got, want, "interpreted, {:?}", &x[..n.min(8)]);
        let text = kiln::print_graph(&kiln::optimize(&g, None, &none).unwrap());
        assert!(text.contains("dynamic_quantize"), "{text}");
        for threads in [1, 2] {
            let (outs, _) = run_at(&g, &input[0].1, threads);
            let got: Vec<Vec<u64>> = outs.iter().map(bits).collect();
            assert_eq!(
                got,
                want,
                "compiled, {threads} threads, {:?}",
                &x[..n.min(8)]
            );
        }
    }
}
