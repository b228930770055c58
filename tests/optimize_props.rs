//! The optimizer preserves meaning: random well-typed graphs (every op family, awkward values)
//! through the default pipeline compute what they computed before, on random inputs, within
//! float tolerance. Long run: `PROPTEST_CASES=100000 cargo test --release --test optimize_props`.

mod common;

use kiln::Graph;
use proptest::prelude::*;
use std::collections::HashMap;

fn check(seed: u64, size: usize) -> Result<(), TestCaseError> {
    let g = common::random_graph(seed, size);
    let o = kiln::optimize(&g, None, &HashMap::new())
        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", kiln::print_graph(&g))))?;
    let mut bindings = HashMap::new();
    for (_, ty) in kiln::params(&g) {
        for d in ty.shape.dims() {
            for s in d.symbols() {
                bindings.insert(s.to_string(), 2);
            }
        }
    }
    let Ok(r) = kiln::random_inputs(&g, &bindings, seed) else {
        return Ok(());
    };
    // Rewrites may round differently (and log(exp x) = x is more exact than the original):
    // the tolerance follows the least precise float type the graph computes in.
    let eps = common::float_eps(&g);
    let tol = kiln::onnx::Tolerance {
        rtol: eps,
        atol: eps / 3.0,
    };
    // Random graphs can ask for tensors of gigabytes: a small limit turns those into errors.
    let run = |g: &Graph| -> Result<Vec<kiln::Tensor>, String> {
        let v = kiln::ir::verify(g).map_err(|e| e.to_string())?;
        let inputs: Vec<kiln::Tensor> = r.inputs.iter().map(|(_, t)| t.clone()).collect();
        let opts = kiln::interp::Options {
            bindings: bindings.clone(),
            max_tensor_bytes: 16 << 20,
        };
        kiln::interp::run_with(&v, &inputs, &opts).map_err(|e| e.to_string())
    };
    let names: Vec<&String> = g.outputs().iter().map(|(n, _)| n).collect();
    let (want, got) = (run(&g), run(&o));
    match (want, got) {
        (Ok(want), Ok(got)) => {
            let compare = common::continuous_outputs(&g);
            let outs = names.iter().zip(&want).zip(&got).zip(&compare);
            for (((name, w), x), _) in outs.filter(|(_, c)| **c) {
                if let Some(m) = kiln::onnx::mismatch(x, w, tol) {
                    return Err(TestCaseError::fail(format!(
                        "output {name}: {m}\noriginal:\n{}\noptimized:\n{}",
                        kiln::print_graph(&g),
                        kiln::print_graph(&o)
                    )));
                }
            }
            Ok(())
        }
        // Dead code that would have failed (an unbound symbol, a division by zero nobody
        // reads) may be gone.
        (Err(_), _) => Ok(()),
        (Ok(_), Err(e)) => Err(TestCaseError::fail(format!(
            "the optimized graph fails: {e}\n{}",
            kiln::print_graph(&o)
        ))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(200)))]

    #[test]
    fn optimization_preserves_results(seed in any::<u64>(), size in 1usize..24) {
        check(seed, size)?;
    }
}
