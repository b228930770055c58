//! Differential fuzz of code generation: random well-typed graphs (every op family, fused
//! kernels, awkward shapes, broadcasts, strides and values) compiled — each node alone, and
//! after the default pipeline — compute what the reference interpreter computes; convs and
//! products with random elementwise steps after them (fused into their routines or not);
//! quantized products and convs; and recurrent layers.
//! Long run: `PROPTEST_CASES=100000 cargo test --release --test jit_props`; `KILN_TRACE_SEED=1`
//! with `--nocapture` prints each graph first (to find one that crashes the process).

mod common;

use std::collections::HashMap;

use kiln::Tensor;
use proptest::prelude::*;

fn check(seed: u64, size: usize) -> Result<(), TestCaseError> {
    check_graph(common::random_graph(seed, size), seed)
}

fn check_graph(g: kiln::Graph, seed: u64) -> Result<(), TestCaseError> {
    if std::env::var_os("KILN_TRACE_SEED").is_some() {
        eprintln!("seed {seed}\n{}", kiln::print_graph(&g));
    }
    let mut bindings = HashMap::new();
    for (_, ty) in kiln::params(&g) {
        for d in ty.shape.dims() {
            for s in d.symbols() {
                bindings.insert(s.to_string(), 2 + (seed % 2) as i64);
            }
        }
    }
    let Ok(r) = kiln::random_inputs(&g, &bindings, seed) else {
        return Ok(());
    };
    let inputs: Vec<Tensor> = r.inputs.iter().map(|(_, t)| t.clone()).collect();
    // Random graphs can ask for tensors of gigabytes: a small limit turns those into errors,
    // and only graphs the interpreter runs within it are compiled.
    let want = {
        let v = kiln::ir::verify(&g).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let opts = kiln::interp::Options {
            bindings: bindings.clone(),
            max_tensor_bytes: 16 << 20,
        };
        match kiln::interp::run_with(&v, &inputs, &opts) {
            Ok(w) => w,
            Err(_) => return Ok(()),
        }
    };
    let o = kiln::optimize(&g, None, &HashMap::new())
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", kiln::print_graph(&g))))?;
    // Kernels accumulate in their own dtype where the interpreter accumulates in f64.
    let tol = kiln::onnx::Tolerance {
        rtol: 1e-3,
        atol: 1e-4,
    };
    let compare = common::continuous_outputs(&g);
    for (what, graph) in [("each node alone", &g), ("optimized", &o)] {
        let exe = kiln::executable(graph, &Default::default()).map_err(|e| {
            TestCaseError::fail(format!(
                "compiling ({what}): {e}\n{}",
                kiln::print_graph(graph)
            ))
        })?;
        let got = match exe.run_with(&inputs, &bindings) {
            Ok(got) => got,
            // Division by zero or an index out of range where the interpreter never looked
            // (the optimizer may remove dead code, never add failures).
            Err(e) if what == "optimized" => {
                return Err(TestCaseError::fail(format!(
                    "compiled ({what}) fails: {e}\n{}",
                    kiln::print_graph(graph)
                )))
            }
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "compiled ({what}) fails where the interpreter does not: {e}\n{}\n{}",
                    kiln::print_graph(graph),
                    exe.kernels_text()
                )))
            }
        };
        for (i, ((w, x), c)) in want.iter().zip(&got).zip(&compare).enumerate() {
            if w.dtype() != x.dtype() || w.shape() != x.shape() {
                return Err(TestCaseError::fail(format!(
                    "output {i} ({what}): {}{:?} instead of {}{:?}",
                    x.dtype(),
                    x.shape(),
                    w.dtype(),
                    w.shape()
                )));
            }
            let tol = if *c && what != "optimized" {
                tol
            } else if *c {
                let dt = common::float_eps(&g);
                kiln::onnx::Tolerance {
                    rtol: dt,
                    atol: dt / 3.0,
                }
            } else {
                continue;
            };
            if let Some(m) = kiln::onnx::mismatch(x, w, tol) {
                return Err(TestCaseError::fail(format!(
                    "output {i} ({what}): {m}\n{}\n{}",
                    kiln::print_graph(graph),
                    exe.kernels_text()
                )));
            }
        }
    }
    Ok(())
}

/// `g` compiled by the default pipeline computes the interpreter's bits (NaNs alike) on every
/// output, stable or not; and, where it is `fusable`, its kernels keep no rounding where a
/// product became a `gemm` call (its QDQ pairs are that call's epilogue).
fn check_exact(g: kiln::Graph, fusable: bool, seed: u64) -> Result<(), TestCaseError> {
    let Ok(r) = kiln::random_inputs(&g, &HashMap::new(), seed) else {
        return Ok(());
    };
    let inputs: Vec<Tensor> = r.inputs.iter().map(|(_, t)| t.clone()).collect();
    let v = kiln::ir::verify(&g).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let want = kiln::interp::run(&v, &inputs).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let o = kiln::optimize(&g, None, &HashMap::new())
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", kiln::print_graph(&g))))?;
    let exe = kiln::executable(&o, &Default::default())
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let got = exe
        .run_with(&inputs, &HashMap::new())
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    // (A conv's pairs may stay in a loop: where its blocked result goes back to the plain
    // layout first.)
    let text = exe.kernels_text();
    let called = fusable && text.contains("call gemm") && !text.contains("call conv2d");
    let (before, after) = (kiln::print_graph(&g), kiln::print_graph(&o));
    prop_assert!(
        !called || !text.contains("round("),
        "a pair left to a loop:\n{before}\n{after}\n{text}"
    );
    for (w, x) in want.iter().zip(&got) {
        let (w, x) = (w.to_f64_vec(), x.to_f64_vec());
        let same = w.len() == x.len()
            && w.iter()
                .zip(&x)
                .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
        prop_assert!(same, "{:?}\nvs the interpreter's\n{:?}\n{}", x, w, text);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(200)))]

    #[test]
    fn compiled_code_matches_the_interpreter(seed in any::<u64>(), size in 1usize..20) {
        check(seed, size)?;
    }

    /// Products by weights and the elementwise steps after them (a bias per column, a
    /// residual — at times cut from a longer parameter —, clamps, a sigmoid or tanh), fused
    /// into `gemm` or left to loops.
    #[test]
    fn products_and_their_epilogues_match_the_interpreter(seed in any::<u64>()) {
        if let Some(g) = common::dot_graph(seed) {
            check_graph(g, seed)?;
        }
    }

    /// Quantized products as importers write them (MatMulInteger's and QDQ's forms), taken
    /// into `qdot` and the `qgemm` routine by the optimizer, with steps after them.
    #[test]
    fn quantized_products_match_the_interpreter(seed in any::<u64>()) {
        if let Some(g) = common::quantized::quantized_graph(seed) {
            // MatMulInteger's form always becomes the 8-bit product, QDQ's when its weight is
            // past 64 KiB as f32 (smaller ones are dequantized at compile time first).
            let dynamic = g
                .node_ids()
                .into_iter()
                .any(|id| g.node(id).types().iter().any(|t| t.dtype == kiln::DType::I32));
            let big = g.node_ids().into_iter().any(|id| match g.node(id).op() {
                kiln::Op::Constant { value } => {
                    value.tensor.dtype() == kiln::DType::I8 && value.tensor.numel() > 16384
                }
                _ => false,
            });
            let o = kiln::optimize(&g, None, &HashMap::new())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let text = kiln::print_graph(&o);
            prop_assert!(!(dynamic || big) || text.contains("qdot"), "no qdot in\n{}", text);
            check_graph(g, seed)?;
        }
    }

    /// 4-bit weights dequantized in blocks (DequantizeLinear's QDQ form), taken into the
    /// packed `qdot4` and the `qgemm4` routine by the optimizer (every generated weight
    /// is past 64 KiB as f32, its scales constant over blocks of 16 at least).
    #[test]
    fn int4_weights_match_the_interpreter(seed in any::<u64>()) {
        if let Some(g) = common::quantized::int4_graph(seed) {
            let o = kiln::optimize(&g, None, &HashMap::new())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let text = kiln::print_graph(&o);
            prop_assert!(text.contains("qdot4"), "no qdot4 in\n{}", text);
            check_graph(g, seed)?;
        }
    }

    /// QDQ convs, taken into `qconv` and the `qconv2d` routine by the optimizer (every
    /// generated one has filters past 64 KiB as f32 and one group), with steps after them.
    #[test]
    fn quantized_convs_match_the_interpreter(seed in any::<u64>()) {
        if let Some(g) = common::quantized::quantized_conv_graph(seed) {
            let o = kiln::optimize(&g, None, &HashMap::new())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let text = kiln::print_graph(&o);
            prop_assert!(text.contains("qconv"), "no qconv in\n{}", text);
            check_graph(g, seed)?;
        }
    }

    /// QDQ pairs around exact integer sums (a product's, a convolution's), a batch norm
    /// between them at times: fused into the routines' epilogues, the interpreter's bits.
    #[test]
    fn qdq_pairs_in_epilogues_match_the_interpreter(seed in any::<u64>()) {
        if let Some((g, fusable)) = common::quantized::qdq_pair_graph(seed) {
            check_exact(g, fusable, seed)?;
        }
    }

    /// LSTM, GRU and simple recurrent layers (their routines: blocks of units, tails, both directions, packed or
    /// given weights, split over threads or not).
    #[test]
    fn recurrent_layers_match_the_interpreter(seed in any::<u64>()) {
        if let Some(g) = common::recurrent_graph(seed) {
            check_graph(g, seed)?;
        }
    }

    /// Convolutions and the elementwise steps after them, which their routines may apply as
    /// they store (fused epilogues) or leave to loops.
    #[test]
    fn convolutions_and_their_epilogues_match_the_interpreter(seed in any::<u64>()) {
        if let Some(g) = common::conv_graph(seed) {
            check_graph(g, seed)?;
        }
    }
}
