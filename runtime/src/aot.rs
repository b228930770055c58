//! Compiled models as files (`.kiln`): [`compile`] writes a graph's kernels as native code
//! with the graph and its weights into an [`artifact`] container; [`load`] makes an
//! [`Executable`] from one without invoking the code generator's compiler (the kernels are
//! lowered again — deterministic, cheap — to recover their plan, and their code is mapped from
//! the artifact's object file). This lives in the runtime so that programs embedding a model
//! (the C library of `kiln compile --emit so`) need nothing of the compiler's front half.
//!
//! Sections: `graph` (the graph as text, named constants `extern`), `weights` (the named
//! constants' little-endian bytes, each 64-byte aligned), `weights.index` (per constant a
//! line `name<TAB>dtype<TAB>dims<TAB>offset<TAB>bytes`), `object` (the kernels' object file),
//! `kernels` (how many).

use std::collections::BTreeMap;

use ir::Graph;

use crate::artifact::{self, ArtifactError};
use crate::exec::{CompileOptions, ExecError, Executable};

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
    #[error("the artifact's {what}: {message}")]
    Bad { what: &'static str, message: String },
}

fn bad(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> AotError {
    move |e| AotError::Bad {
        what,
        message: e.to_string(),
    }
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
    let mut count = 0usize;
    // Lowering as the executable will, keeping the object (and checking it loads).
    Executable::with_code(g, opts, &mut |kernels| {
        let isa = isa
            .take()
            .ok_or_else(|| codegen(&"kernels asked for twice"))?;
        object = codegen::aot::compile_object_for(isa, kernels).map_err(|e| codegen(&e))?;
        count = kernels.len();
        let image = codegen::aot::Image::load(&object, kernels.len()).map_err(|e| codegen(&e))?;
        Ok(Box::new(image))
    })?;
    let text = ir::print_module_with(
        std::slice::from_ref(g),
        &ir::PrintOptions {
            external_data: true,
            ..Default::default()
        },
    );
    let (mut weights, mut index) = (Vec::new(), String::new());
    for (name, t) in ir::named_constants(g) {
        let bytes = encode(&t).ok_or_else(|| AotError::Bad {
            what: "weights",
            message: format!("constant @{name} of {} cannot be stored", t.dtype()),
        })?;
        weights.resize(weights.len().div_ceil(64) * 64, 0);
        let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
        index.push_str(&format!(
            "{name}\t{}\t{}\t{}\t{}\n",
            t.dtype(),
            dims.join(","),
            weights.len(),
            bytes.len()
        ));
        weights.extend(bytes);
    }
    let count = (count as u64).to_le_bytes();
    Ok(artifact::write(
        env!("CARGO_PKG_VERSION"),
        &triple,
        &features,
        &[
            ("graph", text.as_bytes()),
            ("weights", &weights),
            ("weights.index", index.as_bytes()),
            ("object", &object),
            ("kernels", &count),
        ],
    ))
}

/// Makes an executable from artifact bytes, checking the container, the kiln version, the
/// target and the CPU's features before any of its code is mapped.
pub fn load(bytes: &[u8], opts: &CompileOptions) -> Result<Executable, AotError> {
    let a = artifact::read(bytes).map_err(AotError::from)?;
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
    let weights = read_weights(section("weights.index")?, section("weights")?)?;
    let text = std::str::from_utf8(section("graph")?).map_err(|e| bad("graph")(&e))?;
    let g = ir::parse_graph_with(text, &weights).map_err(|e| bad("graph")(&e))?;
    let count: [u8; 8] = section("kernels")?.try_into().map_err(|_| AotError::Bad {
        what: "kernel count",
        message: "not 8 bytes".into(),
    })?;
    let count = u64::from_le_bytes(count);
    let object = section("object")?;
    let exe = Executable::with_code(&g, opts, &mut |kernels| {
        if kernels.len() as u64 != count {
            return Err(ExecError::Codegen(format!(
                "the graph lowers to {} kernels, the artifact's code has {count}",
                kernels.len()
            )));
        }
        let image = codegen::aot::Image::load(object, kernels.len())
            .map_err(|e| ExecError::Codegen(e.to_string()))?;
        Ok(Box::new(image))
    })?;
    Ok(exe)
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

/// The named constants listed in `index`, from `data`.
fn read_weights(index: &[u8], data: &[u8]) -> Result<BTreeMap<String, ir::Tensor>, AotError> {
    let fail = |line: usize, m: &str| AotError::Bad {
        what: "weights",
        message: format!("index line {}: {m}", line + 1),
    };
    let index = std::str::from_utf8(index).map_err(|e| bad("weights index")(&e))?;
    let mut out = BTreeMap::new();
    for (i, line) in index.lines().enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        let [name, dtype, dims, off, len] = f.as_slice() else {
            return Err(fail(i, "not five fields"));
        };
        let dtype = ir::DType::from_name(dtype).ok_or_else(|| fail(i, "unknown dtype"))?;
        let shape = dims
            .split(',')
            .filter(|d| !d.is_empty())
            .map(|d| d.parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| fail(i, "bad dims"))?;
        let (off, len) = off
            .parse::<usize>()
            .ok()
            .zip(len.parse::<usize>().ok())
            .ok_or_else(|| fail(i, "bad offset or length"))?;
        let bytes = off
            .checked_add(len)
            .and_then(|end| data.get(off..end))
            .ok_or_else(|| fail(i, "outside the weights"))?;
        let t = decode(dtype, shape, bytes).ok_or_else(|| fail(i, "data does not fit its type"))?;
        out.insert(name.to_string(), t);
    }
    Ok(out)
}

/// Whether `bytes` look like an artifact (they start with its magic).
pub fn is_artifact(bytes: &[u8]) -> bool {
    bytes.starts_with(artifact::MAGIC)
}
