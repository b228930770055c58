//! Ahead-of-time code: kernels compiled once into a relocatable object file
//! (cranelift-object; function `kiln_kernel_{i}` for kernel `i`), which `kernel::loader`
//! loads without Cranelift.
//!
//! The object is for a [target](isa): the host the compiler runs on (its CPU's features), an
//! x86-64 level (`x86-64-v3`) or a CPU Cranelift knows (`skylake`, `znver3`); checking that a
//! loading CPU has the features it needs is the caller's (the artifact's header records them).

use crate::jit::JitError;
use cranelift_codegen::isa::{OwnedTargetIsa, TargetIsa};
use cranelift_codegen::settings::Configurable;
use cranelift_module::{default_libcall_names, Linkage};
use cranelift_object::{ObjectBuilder, ObjectModule};
use kernel::Kernel;

/// Compiles kernels into an object file for the host (see the module docs).
pub fn compile_object(kernels: &[Kernel]) -> Result<Vec<u8>, JitError> {
    compile_object_for(crate::jit::host_isa()?, kernels)
}

/// Compiles kernels into an object file for `isa` (from [`isa`]).
pub fn compile_object_for(isa: OwnedTargetIsa, kernels: &[Kernel]) -> Result<Vec<u8>, JitError> {
    crate::jit::count_compilation();
    let backend = |message: String| JitError::Backend {
        kernel: "<object>".into(),
        message,
    };
    let builder = ObjectBuilder::new(isa, "kiln", default_libcall_names())
        .map_err(|e| backend(e.to_string()))?;
    let mut module = ObjectModule::new(builder);
    crate::jit::define_all(&mut module, kernels, Linkage::Export)?;
    module.finish().emit().map_err(|e| backend(e.to_string()))
}

/// The code generator for a target: `host` (this machine's CPU and its features), or a
/// Cranelift CPU preset for this machine's architecture — an x86-64 level (`x86-64`,
/// `x86-64-v2`, `x86-64-v3`, `x86-64-v4`) or a CPU (`haswell`, `skylake`, `znver3`, ...).
pub fn isa(target: &str) -> Result<OwnedTargetIsa, JitError> {
    if target == "host" {
        return crate::jit::host_isa();
    }
    let fail = |m: String| JitError::Host(m);
    let triple = target_lexicon::Triple::host();
    let mut builder = cranelift_codegen::isa::lookup(triple.clone())
        .map_err(|e| fail(format!("{triple}: {e}")))?;
    let presets: Vec<String> = builder
        .iter()
        .filter(|s| matches!(s.kind, cranelift_codegen::settings::SettingKind::Preset))
        .map(|s| s.name.to_string())
        .collect();
    if !presets.iter().any(|p| p == target) {
        return Err(fail(format!(
            "unknown target `{target}` for {triple}: use host or one of {}",
            presets.join(", ")
        )));
    }
    builder
        .enable(target)
        .map_err(|e| fail(format!("target `{target}`: {e}")))?;
    builder
        .finish(crate::jit::shared_flags()?)
        .map_err(|e| fail(format!("target `{target}`: {e}")))
}

/// The target triple and the CPU features (neutral names, `avx2`, `sse4.1`, ...) that code
/// from [`compile_object`] assumes: what this machine's code generator enables.
pub fn target() -> Result<(String, Vec<String>), JitError> {
    Ok(describe(&*crate::jit::host_isa()?))
}

/// An ISA's target triple and the CPU features its code assumes, by the neutral names of
/// [`kernel::target`] (Cranelift's `has_sse41` is `sse4.1`).
pub fn describe(isa: &dyn TargetIsa) -> (String, Vec<String>) {
    let features = isa
        .isa_flags()
        .iter()
        .filter(|f| f.as_bool() == Some(true))
        .filter_map(|f| f.name.strip_prefix("has_"))
        .map(|f| {
            match f {
                "sse41" => "sse4.1",
                "sse42" => "sse4.2",
                "avx_vnni" => "avxvnni",
                f => f,
            }
            .to_string()
        })
        .collect();
    (isa.triple().to_string(), features)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ir::{DType, Dim, Op};
    use kernel::loader::Image;
    use kernel::{Buf, BufKind, Code, Expr, KernelFn, Mark, Stmt};

    /// `y[i] = exp(x[i]) + 1` (a vector loop calling nothing) and a softmax-ish row max that
    /// calls a library routine.
    fn kernels() -> Vec<Kernel> {
        let buf = |name: &str, kind| Buf {
            name: name.into(),
            dtype: DType::F32,
            len: Dim::sym("n"),
            kind,
        };
        let load = |b: usize, i: Expr| Expr::Load {
            buf: b,
            index: Box::new(i),
        };
        let exp1 = Kernel {
            name: "exp1".into(),
            bufs: vec![buf("x", BufKind::Input), buf("y", BufKind::Output)],
            dims: vec![Dim::sym("n")],
            vars: vec![DType::I64],
            body: vec![Stmt::Loop {
                var: 0,
                extent: Expr::Dim(0),
                mark: Mark::Vector(4),
                body: vec![Stmt::Store {
                    buf: 1,
                    index: Expr::Var(0),
                    value: Expr::Op {
                        op: Op::Add,
                        args: vec![
                            Expr::Op {
                                op: Op::Exp,
                                args: vec![load(0, Expr::Var(0))],
                                dtype: DType::F32,
                            },
                            Expr::Float(1.0, DType::F32),
                        ],
                        dtype: DType::F32,
                    },
                }],
            }],
        };
        let max = Kernel {
            name: "max".into(),
            bufs: vec![buf("x", BufKind::Input), buf("y", BufKind::Output)],
            dims: vec![Dim::sym("n")],
            vars: vec![DType::I64, DType::F32],
            body: vec![
                Stmt::Set {
                    var: 1,
                    value: Expr::Float(f64::NEG_INFINITY, DType::F32),
                },
                Stmt::Loop {
                    var: 0,
                    extent: Expr::Dim(0),
                    mark: Mark::Serial,
                    body: vec![Stmt::Set {
                        var: 1,
                        value: Expr::Op {
                            op: Op::Max,
                            args: vec![Expr::Var(1), load(0, Expr::Var(0))],
                            dtype: DType::F32,
                        },
                    }],
                },
                Stmt::Store {
                    buf: 1,
                    index: Expr::i64(0),
                    value: Expr::Var(1),
                },
            ],
        };
        vec![exp1, max]
    }

    fn run(f: KernelFn, x: &mut [f32]) -> Vec<f32> {
        let mut y = vec![0f32; x.len()];
        let bufs = [x.as_mut_ptr().cast::<u8>(), y.as_mut_ptr().cast::<u8>()];
        let dims = [x.len() as i64];
        // SAFETY: both buffers hold `n` elements.
        assert_eq!(unsafe { f(bufs.as_ptr(), dims.as_ptr()) }, 0);
        y
    }

    #[test]
    fn loaded_objects_compute_what_the_jit_does_and_are_deterministic() {
        let ks = kernels();
        let obj = compile_object(&ks).unwrap();
        assert_eq!(obj, compile_object(&ks).unwrap(), "two compilations differ");
        let image = Image::load(&obj, ks.len()).unwrap();
        let jit = crate::jit::compile(&ks).unwrap();
        let x: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.05).collect();
        for i in 0..ks.len() {
            let (a, b) = (
                run(image.function(i), &mut x.clone()),
                run(jit.function(i), &mut x.clone()),
            );
            assert!(
                a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
                "kernel {i}"
            );
        }
        assert_eq!(run(image.function(1), &mut x.clone())[0], 25.0);
    }

    #[test]
    fn the_target_names_features_this_machine_has() {
        let (triple, features) = target().unwrap();
        assert!(!triple.is_empty());
        // The loader knows x86-64's features (elsewhere artifacts need none it can check).
        if cfg!(target_arch = "x86_64") {
            assert!(
                features
                    .iter()
                    .all(|f| kernel::target::FEATURES.contains(&f.as_str())),
                "{features:?}"
            );
        }
    }

    #[test]
    fn damaged_objects_are_errors() {
        let obj = compile_object(&kernels()).unwrap();
        assert!(Image::load(&obj[..obj.len() / 2], 2).is_err());
        assert!(Image::load(b"not an object", 1).is_err());
        assert!(Image::load(&obj, 3).is_err(), "a missing kernel");
        // Flipped bytes across the header and the tables: an error or a load, never a crash
        // (code bytes themselves are the artifact checksum's to protect).
        for at in (0..obj.len().min(4096)).step_by(7) {
            let mut bad = obj.clone();
            bad[at] ^= 0x5a;
            let _ = Image::load(&bad, 2);
        }
    }
}
