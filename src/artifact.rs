//! Compiled models as files (`.kiln`): the driver's face of [`runtime::aot`], which compiles
//! a graph's kernels into an artifact and loads one without the compiler.

pub use runtime::aot::{is_artifact, AotError};

use crate::{CompileOptions, Error, Executable, Graph};

/// Compiles `g` (already optimized, as the executable will run it) into artifact bytes for
/// `target`: `host` (this machine), an x86-64 level (`x86-64-v3`) or a CPU Cranelift knows
/// (`skylake`). The same graph, target and kiln give the same bytes.
pub fn compile(g: &Graph, opts: &CompileOptions, target: &str) -> Result<Vec<u8>, Error> {
    Ok(runtime::aot::compile(
        g,
        &crate::with_backend(opts),
        target,
    )?)
}

/// Makes an executable from artifact bytes it keeps (a memory map of a `.kiln` file, say:
/// `Arc::new(map)`): the weights are used in place, nothing is copied.
pub fn load_shared(
    bytes: runtime::exec::SharedBytes,
    opts: &CompileOptions,
) -> Result<Executable, Error> {
    Ok(runtime::aot::load_shared(bytes, opts)?)
}

/// The kernels' relocatable object file inside artifact bytes (`kiln_kernel_{i}` for kernel
/// `i`).
pub fn object_code(bytes: &[u8]) -> Result<&[u8], Error> {
    let a = runtime::artifact::read(bytes).map_err(AotError::from)?;
    Ok(a.section("object")
        .ok_or(AotError::MissingSection("object"))?)
}

/// Makes an executable from artifact bytes, checking the container, the kiln version, the
/// target and the CPU's features before any of its code is mapped.
pub fn load(bytes: &[u8], opts: &CompileOptions) -> Result<Executable, Error> {
    Ok(runtime::aot::load(bytes, opts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mlp_example_round_trips_without_the_compiler_and_damage_is_an_error() {
        let text = include_str!("../examples/mlp.kir");
        let g = crate::parse_graph(text).unwrap();
        let opts = CompileOptions::default();
        let bytes = compile(&g, &opts, "host").unwrap();
        assert_eq!(
            bytes,
            compile(&g, &opts, "host").unwrap(),
            "compiling twice differs"
        );
        // Loading never runs the compiler (it counts per thread; the JIT counts, to show it).
        let before = codegen::jit::compilations_on_this_thread();
        let exe = load(&bytes, &opts).unwrap();
        assert_eq!(codegen::jit::compilations_on_this_thread(), before);
        let jit = crate::executable(&g, &opts).unwrap();
        assert_eq!(codegen::jit::compilations_on_this_thread(), before + 1);
        let x = crate::Rng::new(3).tensor(crate::DType::F32, &[5, 4]);
        let a = exe.run(std::slice::from_ref(&x)).unwrap();
        let b = jit.run(std::slice::from_ref(&x)).unwrap();
        assert_eq!(a, b);
        for at in (0..bytes.len()).step_by(97) {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert!(load(&bad, &opts).is_err(), "a flip at {at} loaded");
        }
        assert!(load(&bytes[..bytes.len() - 1], &opts).is_err());
    }

    /// A product with a constant and a softmax, over a symbolic batch.
    const TEXT: &str = "func @main {
  %0 = param {name=\"x\"} : f32[n, 3]
  %1 = constant {value=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]} : f32[3, 2]
  %2 = dot %0, %1 {lhs_contract=[1], rhs_contract=[0]} : f32[n, 2]
  %3 = exp %2 : f32[n, 2]
  return %3 as \"y\"
}
";

    /// `bytes` written again with the header fields `edit` changes.
    fn rewritten(
        bytes: &[u8],
        edit: impl Fn(&mut String, &mut String, &mut Vec<String>),
    ) -> Vec<u8> {
        let a = runtime::artifact::read(bytes).unwrap();
        let (mut version, mut target, mut features) =
            (a.kiln_version.clone(), a.target.clone(), a.features.clone());
        edit(&mut version, &mut target, &mut features);
        let sections: Vec<(&str, &[u8])> =
            a.sections.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        runtime::artifact::write(&version, &target, &features, &sections)
    }

    #[test]
    fn distinct_constants_of_types_kernels_do_not_read_stay_distinct() {
        // Two f16 constants of one shape (f16 runs on the interpreter): each keeps its values.
        let text = "func @main {
  %0 = param {name=\"x\"} : f16[2]
  %1 = constant {value=[1.0, 2.0]} : f16[2]
  %2 = constant {value=[10.0, 20.0]} : f16[2]
  %3 = add %0, %1 : f16[2]
  %4 = mul %3, %2 : f16[2]
  return %4 as \"y\"
}
";
        let g = crate::parse_graph(text).unwrap();
        let opts = CompileOptions::default();
        let x = crate::Tensor::zeros(crate::DType::F16, vec![2]);
        let want = crate::executable(&g, &opts)
            .unwrap()
            .run(std::slice::from_ref(&x));
        let bytes = compile(&g, &opts, "host").unwrap();
        let got = runtime::aot::load(&bytes, &opts).unwrap().run(&[x]);
        assert_eq!(got.unwrap(), want.unwrap());
    }

    #[test]
    fn loads_and_runs_and_refuses_other_versions_targets_and_cpus() {
        let g = crate::parse_graph(TEXT).unwrap();
        let opts = CompileOptions::default();
        let bytes = compile(&g, &opts, "host").unwrap();
        assert_eq!(
            rewritten(&bytes, |_, _, _| {}),
            bytes,
            "rewriting is faithful"
        );
        let x = crate::Tensor::new(
            vec![2, 3],
            crate::Data::F32(vec![0.5, -1.0, 2.0, 0.0, 1.0, -0.5]),
        )
        .unwrap();
        // The weight is saved packed for the product; its original, which nothing reads
        // then, is left out.
        let weights = runtime::artifact::read(&bytes)
            .unwrap()
            .section("weights")
            .unwrap()
            .to_vec();
        let original: Vec<u8> = [1f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let packed_rows: Vec<u8> = [1f32, 2.0, 0.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let has = |b: &[u8]| weights.windows(b.len()).any(|w| w == b);
        assert!(has(&packed_rows) && !has(&original));
        let exe = runtime::aot::load(&bytes, &opts).unwrap();
        assert!(exe.graph().is_none());
        assert_eq!(exe.name(), "main");
        assert_eq!(exe.params()[0].0, "x");
        assert_eq!(exe.outputs()[0].1.to_string(), "f32[n, 2]");
        let want = crate::executable(&g, &opts)
            .unwrap()
            .run(std::slice::from_ref(&x));
        assert_eq!(exe.run(&[x]).unwrap(), want.unwrap());
        let older = rewritten(&bytes, |v, _, _| *v = "0.0.1".into());
        assert!(matches!(
            runtime::aot::load(&older, &opts),
            Err(AotError::KilnVersion { found }) if found == "0.0.1"
        ));
        let foreign = rewritten(&bytes, |_, t, _| *t = "riscv64gc-unknown-linux-gnu".into());
        assert!(matches!(
            runtime::aot::load(&foreign, &opts),
            Err(AotError::Target { .. })
        ));
        let future = rewritten(&bytes, |_, _, f| f.push("teleport".into()));
        let e = runtime::aot::load(&future, &opts)
            .err()
            .expect("no CPU has has_teleport");
        assert!(
            matches!(&e, AotError::MissingFeatures(m) if m == &["teleport"]),
            "{e}"
        );
        assert!(e.to_string().contains("lacks features"), "{e}");
    }
}
