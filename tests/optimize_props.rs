//! The optimizer preserves meaning: random well-typed graphs (every op family, awkward values)
//! through the default pipeline compute what they computed before, on random inputs, within
//! float tolerance. Long run: `PROPTEST_CASES=100000 cargo test --release --test optimize_props`.

mod common;

use std::collections::HashMap;

use kiln::{Graph, Op, Value};
use proptest::prelude::*;

/// Whether an op turns a one-ulp difference of float operands into an arbitrary difference:
/// rounding to integers, remainders, comparisons, float-to-integer casts, arg-reductions, and
/// in 16-bit floats (whose rounding error is 2^-8) the ops with unbounded derivatives.
fn unstable(g: &Graph, op: &Op, inputs: &[Value]) -> bool {
    let float_in = inputs.iter().any(|&v| g.value_type(v).dtype.is_float());
    let coarse = inputs.iter().any(|&v| {
        let d = g.value_type(v).dtype;
        d.is_float() && !matches!(d, kiln::DType::F32 | kiln::DType::F64)
    });
    float_in
        && match op {
            Op::Floor | Op::Ceil | Op::Round | Op::Sign | Op::Rem | Op::Mod => true,
            Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge => true,
            Op::ArgMax { .. } | Op::ArgMin { .. } | Op::TopK { .. } => true,
            Op::Cast { dtype, .. } => !dtype.is_float(),
            Op::Div | Op::Recip | Op::Rsqrt | Op::Sqrt | Op::Log | Op::Pow => coarse,
            Op::Tan | Op::Asin | Op::Acos | Op::Acosh | Op::Atanh => coarse,
            Op::Fused { body, .. } => {
                let b = body.graph();
                b.node_ids()
                    .into_iter()
                    .any(|id| unstable(b, b.node(id).op(), b.node(id).inputs()))
            }
            _ => false,
        }
}

/// Outputs of `g` whose value depends on no unstable op: there, rewrites that round
/// differently may only differ by rounding.
fn continuous_outputs(g: &Graph) -> Vec<bool> {
    let mut memo: HashMap<kiln::ir::NodeId, bool> = HashMap::new();
    for id in g.topo_order().expect("acyclic") {
        let n = g.node(id);
        let bad = unstable(g, n.op(), n.inputs()) || n.inputs().iter().any(|v| !memo[&v.node]);
        memo.insert(id, !bad);
    }
    g.outputs().iter().map(|(_, v)| memo[&v.node]).collect()
}

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
    let eps = g
        .node_ids()
        .into_iter()
        .flat_map(|id| g.node(id).types().to_vec())
        .map(|t| match t.dtype {
            kiln::DType::F64 | kiln::DType::F32 => 1e-3,
            kiln::DType::F16 | kiln::DType::BF16 => 3e-2,
            d if d.is_float() => 0.3,
            _ => 1e-3,
        })
        .fold(1e-3, f64::max);
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
            let compare = continuous_outputs(&g);
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
