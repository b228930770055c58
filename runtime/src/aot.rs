//! Compiled models as files (`.kiln`): [`compile`] writes an executable's saved plan, its
//! weights and its kernels as native code into an [`artifact`] container; [`load`] makes an
//! [`Executable`] from one without invoking the code generator at all: the plan is
//! deserialized, the weights are read in place ([`load_shared`]) and the code
//! is mapped from the artifact's object file. This lives in the runtime so that programs
//! embedding a model (the C library of `kiln compile --emit so`) need nothing of the
//! compiler's front half.
//!
//! Sections: `plan` (see [`Executable::save`]: steps, kernel IR, slots, the interface with its
//! symbolic shapes, how many kernel functions; postcard), `weights` (every constant's
//! little-endian bytes, each 64-byte aligned), `object` (the kernels' object file).

use std::sync::Arc;

use ir::Graph;

use crate::artifact::{self, ArtifactError};
use crate::exec::{CompileOptions, ExecError, Executable, SharedBytes};

/// Why an artifact cannot be made or used.
#[derive(Debug, thiserror::Error)]
pub enum AotError {
    #[error(transparent)]
    Container(#[from] ArtifactError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("the artifact was built by kiln {found}; this is kiln {}", env!("CARGO_PKG_VERSION"))]
    KilnVersion { found: String },
    #[error("the artifact is for {found}; this machine is {host}")]
    Target { found: String, host: String },
    #[error("this CPU lacks features the artifact's code needs: {}", .0.join(", "))]
    MissingFeatures(Vec<String>),
    #[error("the artifact has no `{0}` section")]
    MissingSection(&'static str),
}

/// Compiles `g` (already optimized, as the executable will run it) into artifact bytes for
/// `target` (see [`codegen::aot::isa`]: `host`, `x86-64-v3`, ...). The same graph, target
/// and kiln give the same bytes.
pub fn compile(g: &Graph, opts: &CompileOptions, target: &str) -> Result<Vec<u8>, AotError> {
    let codegen = |e: &dyn std::fmt::Display| ExecError::Codegen(e.to_string());
    let isa = codegen::aot::isa(target).map_err(|e| codegen(&e))?;
    let (triple, features) = codegen::aot::describe(&*isa);
    let mut isa = Some(isa);
    let mut object = Vec::new();
    // The executable's plan is what loading restores; its code is the object's.
    let exe = Executable::with_code(g, opts, &mut |kernels| {
        let isa = isa
            .take()
            .ok_or_else(|| codegen(&"kernels asked for twice"))?;
        object = codegen::aot::compile_object_for(isa, kernels).map_err(|e| codegen(&e))?;
        let image = kernel::loader::Image::load(&object, kernels.len()).map_err(|e| codegen(&e))?;
        Ok(Box::new(image))
    })?;
    let (plan, weights) = exe.save()?;
    Ok(artifact::write(
        env!("CARGO_PKG_VERSION"),
        &triple,
        &features,
        &[("plan", &plan), ("weights", &weights), ("object", &object)],
    ))
}

/// Makes an executable from artifact bytes (copied: see [`load_shared`] to use them in
/// place), checking the container, the kiln version, the target and the CPU's features
/// before any of its code is mapped.
pub fn load(bytes: &[u8], opts: &CompileOptions) -> Result<Executable, AotError> {
    load_shared(Arc::new(bytes.to_vec()), opts)
}

/// [`load`] from bytes the executable keeps — a memory map of a `.kiln` file, a library's
/// static data: its weights are read in place, nothing is copied.
pub fn load_shared(bytes: SharedBytes, opts: &CompileOptions) -> Result<Executable, AotError> {
    let all: &[u8] = (*bytes).as_ref();
    let a = artifact::read(all)?;
    if a.kiln_version != env!("CARGO_PKG_VERSION") {
        return Err(AotError::KilnVersion {
            found: a.kiln_version,
        });
    }
    let (host, _) = codegen::aot::target().map_err(|e| ExecError::Codegen(e.to_string()))?;
    if a.target != host {
        return Err(AotError::Target {
            found: a.target,
            host,
        });
    }
    let missing = artifact::missing_features(&a.features);
    if !missing.is_empty() {
        return Err(AotError::MissingFeatures(missing));
    }
    let section = |name: &'static str| a.section(name).ok_or(AotError::MissingSection(name));
    let object = section("object")?;
    let weights = section("weights")?;
    // Where the weights are in `bytes` (sections borrow from them).
    let at = weights.as_ptr() as usize - all.as_ptr() as usize;
    // The plan says how many kernel functions the object holds.
    Ok(Executable::from_saved(
        section("plan")?,
        &mut |n| match kernel::loader::Image::load(object, n) {
            Ok(image) => Ok(Box::new(image)),
            Err(e) => Err(ExecError::Codegen(e.to_string())),
        },
        bytes.clone(),
        at..at + weights.len(),
        opts,
    )?)
}

impl Executable {
    /// An executable from `.kiln` artifact bytes (see [`load`]).
    pub fn load(bytes: &[u8], opts: &CompileOptions) -> Result<Executable, AotError> {
        load(bytes, opts)
    }

    /// An executable from `.kiln` artifact bytes it keeps, such as a memory map of the file:
    /// weights used in place (see [`load_shared`]).
    pub fn load_shared(bytes: SharedBytes, opts: &CompileOptions) -> Result<Executable, AotError> {
        load_shared(bytes, opts)
    }
}

/// A tensor's elements as little-endian bytes (narrow types: one bit pattern per element, in
/// a byte of its own); `None` for a dtype without a byte layout.
pub fn encode(t: &ir::Tensor) -> Option<Vec<u8>> {
    use ir::Data;
    fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        v.iter().flat_map(|&x| f(x)).collect()
    }
    Some(match t.data() {
        Data::F16(v) => le(v, |x| x.to_bits().to_le_bytes()),
        Data::BF16(v) => le(v, |x| x.to_bits().to_le_bytes()),
        Data::F32(v) => le(v, f32::to_le_bytes),
        Data::F64(v) => le(v, f64::to_le_bytes),
        Data::I8(v) => le(v, i8::to_le_bytes),
        Data::I16(v) => le(v, i16::to_le_bytes),
        Data::I32(v) => le(v, i32::to_le_bytes),
        Data::I64(v) => le(v, i64::to_le_bytes),
        Data::U8(v) => v.clone(),
        Data::U16(v) => le(v, u16::to_le_bytes),
        Data::U32(v) => le(v, u32::to_le_bytes),
        Data::U64(v) => le(v, u64::to_le_bytes),
        Data::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
        d => d.patterns()?.to_vec(),
    })
}

/// How many bytes [`encode`] writes for `numel` elements of `dtype` (types narrower than a
/// byte take one each); `None` on overflow.
pub fn encoded_len(dtype: ir::DType, numel: u64) -> Option<u64> {
    match dtype.bits() {
        8.. => dtype.storage_bytes(numel),
        _ => Some(numel),
    }
}

/// The tensor of `dtype` and `shape` in `bytes` (as [`encode`] wrote it).
pub fn decode(dtype: ir::DType, shape: Vec<usize>, bytes: &[u8]) -> Option<ir::Tensor> {
    use half::{bf16, f16};
    use ir::{DType, Data};
    fn le<T, const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Option<Vec<T>> {
        b.len().is_multiple_of(N).then(|| {
            b.chunks_exact(N)
                .map(|c| f(c.try_into().expect("N bytes")))
                .collect()
        })
    }
    let data = match dtype {
        DType::F16 => Data::F16(le(bytes, |b| f16::from_bits(u16::from_le_bytes(b)))?),
        DType::BF16 => Data::BF16(le(bytes, |b| bf16::from_bits(u16::from_le_bytes(b)))?),
        DType::F32 => Data::F32(le(bytes, f32::from_le_bytes)?),
        DType::F64 => Data::F64(le(bytes, f64::from_le_bytes)?),
        DType::I8 => Data::I8(le(bytes, i8::from_le_bytes)?),
        DType::I16 => Data::I16(le(bytes, i16::from_le_bytes)?),
        DType::I32 => Data::I32(le(bytes, i32::from_le_bytes)?),
        DType::I64 => Data::I64(le(bytes, i64::from_le_bytes)?),
        DType::U8 => Data::U8(bytes.to_vec()),
        DType::U16 => Data::U16(le(bytes, u16::from_le_bytes)?),
        DType::U32 => Data::U32(le(bytes, u32::from_le_bytes)?),
        DType::U64 => Data::U64(le(bytes, u64::from_le_bytes)?),
        DType::Bool => Data::Bool(bytes.iter().map(|&b| b != 0).collect()),
        d => Data::from_patterns(d, bytes.to_vec())?,
    };
    ir::Tensor::new(shape, data).ok()
}

/// Whether `bytes` look like an artifact (they start with its magic).
pub fn is_artifact(bytes: &[u8]) -> bool {
    bytes.starts_with(artifact::MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let a = artifact::read(bytes).unwrap();
        let (mut version, mut target, mut features) =
            (a.kiln_version.clone(), a.target.clone(), a.features.clone());
        edit(&mut version, &mut target, &mut features);
        let sections: Vec<(&str, &[u8])> =
            a.sections.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        artifact::write(&version, &target, &features, &sections)
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
        let g = ir::parse_graph(text).unwrap();
        let opts = CompileOptions::default();
        let x = ir::Tensor::zeros(ir::DType::F16, vec![2]);
        let want = Executable::new(&g, &opts)
            .unwrap()
            .run(std::slice::from_ref(&x));
        let bytes = compile(&g, &opts, "host").unwrap();
        let got = load(&bytes, &opts).unwrap().run(&[x]);
        assert_eq!(got.unwrap(), want.unwrap());
    }

    #[test]
    fn loads_and_runs_and_refuses_other_versions_targets_and_cpus() {
        let g = ir::parse_graph(TEXT).unwrap();
        let opts = CompileOptions::default();
        let bytes = compile(&g, &opts, "host").unwrap();
        assert_eq!(
            rewritten(&bytes, |_, _, _| {}),
            bytes,
            "rewriting is faithful"
        );
        let x = ir::Tensor::new(
            vec![2, 3],
            ir::Data::F32(vec![0.5, -1.0, 2.0, 0.0, 1.0, -0.5]),
        )
        .unwrap();
        // The weight is saved packed for the product; its original, which nothing reads
        // then, is left out.
        let weights = artifact::read(&bytes)
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
        let exe = load(&bytes, &opts).unwrap();
        assert!(exe.graph().is_none());
        assert_eq!(exe.name(), "main");
        assert_eq!(exe.params()[0].0, "x");
        assert_eq!(exe.outputs()[0].1.to_string(), "f32[n, 2]");
        let want = Executable::new(&g, &opts)
            .unwrap()
            .run(std::slice::from_ref(&x));
        assert_eq!(exe.run(&[x]).unwrap(), want.unwrap());
        let older = rewritten(&bytes, |v, _, _| *v = "0.0.1".into());
        assert!(matches!(
            load(&older, &opts),
            Err(AotError::KilnVersion { found }) if found == "0.0.1"
        ));
        let foreign = rewritten(&bytes, |_, t, _| *t = "riscv64gc-unknown-linux-gnu".into());
        assert!(matches!(
            load(&foreign, &opts),
            Err(AotError::Target { .. })
        ));
        let future = rewritten(&bytes, |_, _, f| f.push("has_teleport".into()));
        let e = load(&future, &opts).err().expect("no CPU has has_teleport");
        assert!(
            matches!(&e, AotError::MissingFeatures(m) if m == &["has_teleport"]),
            "{e}"
        );
        assert!(e.to_string().contains("lacks features"), "{e}");
    }
}
