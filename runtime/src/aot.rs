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
/// `target` (`host`, or a name the options' backend knows: `x86-64-v3`, ...) with the options'
/// backend. The same graph, target and kiln give the same bytes.
pub fn compile(g: &Graph, opts: &CompileOptions, target: &str) -> Result<Vec<u8>, AotError> {
    let backend = opts
        .backend
        .clone()
        .ok_or_else(|| ExecError::Codegen("no code generator to compile an artifact".into()))?;
    let described = backend.target(target).map_err(ExecError::from)?;
    let mut object = Vec::new();
    // The executable's plan is what loading restores; its code is the object's.
    let exe = Executable::with_code(g, opts, &mut |kernels| {
        let o = backend.object(kernels, target)?;
        object = o.bytes;
        let image =
            kernel::loader::Image::load(&object, kernels.len()).map_err(kernel::Error::from)?;
        Ok(Box::new(image))
    })?;
    let (plan, weights) = exe.save()?;
    Ok(artifact::write(
        env!("CARGO_PKG_VERSION"),
        &described.triple,
        &described.features,
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
    let host = kernel::target::host_triple();
    if a.target != host {
        return Err(AotError::Target {
            found: a.target,
            host,
        });
    }
    let missing = kernel::target::missing_features(&a.features);
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
            Err(e) => Err(kernel::Error::from(e).into()),
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
