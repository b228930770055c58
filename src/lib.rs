//! kiln — an optimizing compiler for machine-learning models.
//!
//! This crate is the public API and the driver: it re-exports the IR (build graphs with
//! [`Builder`], read and write `.kir` text), runs graphs on the reference interpreter, and reads
//! and writes `.npz` tensors. The `kiln` binary is a thin CLI over these functions.
//!
//! ```
//! use kiln::{shape, Builder, DType, Tensor};
//!
//! let mut b = Builder::new("double");
//! let x = b.param("x", DType::F32, shape!["n"])?;
//! let y = b.add(x, x)?;
//! b.output("y", y)?;
//! let g = b.finish()?;
//! let x = Tensor::from_vec(vec![3], vec![1.0f32, 2.0, 3.0])?;
//! let out = kiln::interpret(&g, &[("x".into(), x)], &Default::default())?;
//! assert_eq!(out[0].1.as_slice::<f32>(), Some(&[2.0f32, 4.0, 6.0][..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// The README's Rust code: every `rust` block is a program `cargo test` compiles and runs (its
/// `sh` blocks run in CI, from `.ci/run`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod artifact;
pub mod clib;
pub mod format;
pub mod graphviz;
pub mod model;
pub mod npz;
pub mod onnx;

use std::collections::HashMap;

/// The code generator: kernel IR, lowering and the JIT.
pub use codegen;
/// The model importers (ONNX decoding and import from bytes).
pub use frontends;
/// The whole IR crate, for what the re-exports above leave out.
pub use ir;
pub use ir::{
    parse_graph, parse_module, print_graph, print_module, shape, verify, Builder, ConstValue,
    DType, Data, Dim, Graph, Module, Op, PadMode, ReduceKind, ScatterReduction, Shape, Tensor,
    TensorType, Value,
};
pub use kernel;
/// The optimizer: pass registry, pipeline and options.
pub use passes;
/// The runtime crate: the interpreter, executables, the artifact container.
pub use runtime;
pub use runtime::exec::{CompileOptions, ExecError, Executable, RunStats};
pub use runtime::interp::{self, InterpError};
pub use runtime::Rng;

pub use model::{Model, ModelOptions};

/// Everything that can go wrong in the driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ir(#[from] ir::Error),
    #[error(transparent)]
    Interp(#[from] InterpError),
    #[error(transparent)]
    Npz(#[from] npz::NpzError),
    #[error(transparent)]
    Import(frontends::onnx::ImportError),
    #[error(transparent)]
    Pass(#[from] passes::Error),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("missing input \"{name}\" (the graph takes {})", expected.join(", "))]
    MissingInput { name: String, expected: Vec<String> },
    #[error(transparent)]
    Artifact(#[from] artifact::AotError),
    #[error("--dim {name}: the model has no symbol `{name}` ({})", match symbols.is_empty() {
        true => "its input shapes are all fixed".to_string(),
        false => format!("its symbols: {}", symbols.join(", ")),
    })]
    UnknownDim { name: String, symbols: Vec<String> },
    #[error("building the shared library: {0}")]
    SharedLibrary(String),
}

impl From<ir::ParseError> for Error {
    fn from(e: ir::ParseError) -> Error {
        Error::Ir(e.into())
    }
}

impl From<ir::VerifyErrors> for Error {
    fn from(e: ir::VerifyErrors) -> Error {
        Error::Ir(e.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The parameters of a graph: name and declared type, in order.
pub fn params(g: &Graph) -> Vec<(String, TensorType)> {
    g.params()
        .iter()
        .filter_map(|&p| match g.node(p).op() {
            Op::Param { name, ty } => Some((name.clone(), ty.clone())),
            _ => None,
        })
        .collect()
}

/// Orders named tensors as the parameters `params` (name and type, in order).
pub(crate) fn inputs_in_order(
    params: &[(String, TensorType)],
    inputs: &[(String, Tensor)],
) -> Result<Vec<Tensor>> {
    let expected: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    expected
        .iter()
        .map(|name| {
            inputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| Error::MissingInput {
                    name: name.clone(),
                    expected: expected.clone(),
                })
        })
        .collect()
}

/// Evaluates a graph without parameters on the reference interpreter: the constant folder of
/// the ONNX importer and of the `fold` pass. Folding is an optimization, so a computation too
/// large to fold is an error here and simply stays in the graph.
pub fn evaluate(g: &Graph) -> std::result::Result<Vec<Tensor>, String> {
    let v = verify(g).map_err(|e| e.to_string())?;
    let opts = interp::Options {
        max_tensor_bytes: 1 << 28,
        ..Default::default()
    };
    interp::run_with(&v, &[], &opts).map_err(|e| e.to_string())
}

/// Pass options with the interpreter as constant evaluator and the given symbol bindings.
pub fn pass_options(bindings: &HashMap<String, i64>) -> passes::Options<'static> {
    let mut target = passes::egraph::Target::default();
    // Convs take the blocked image layout where their routine has vector code for it (AVX2
    // or AVX-512: on every such machine the same graph).
    if kernel::avx2_fma() {
        target.block = kernel::routines::conv::blocked::BLOCK as i64;
    }
    passes::Options {
        evaluate: Some(&evaluate),
        bindings: bindings.clone(),
        target,
        ..Default::default()
    }
}

/// Optimizes `g` with the passes of a comma-separated list (`fold,cse`), or the default
/// pipeline for `None`.
pub fn optimize(g: &Graph, passes: Option<&str>, bindings: &HashMap<String, i64>) -> Result<Graph> {
    let list = passes::pass_list(passes)?;
    let (g, _) = passes::run(g, &list, &pass_options(bindings), &mut |_, _| {})?;
    Ok(g)
}

/// Optimizes `g` with the default pipeline and compiles it: every kernel the code generator
/// can lower becomes native code (the rest runs on the reference interpreter; see
/// [`Executable::coverage`]).
///
/// ```
/// use kiln::{shape, Builder, DType, Tensor};
///
/// let mut b = Builder::new("scale");
/// let x = b.param("x", DType::F32, shape!["n"])?;
/// let y = b.mul(x, x)?;
/// b.output("y", y)?;
/// let exe = kiln::compile(&b.finish()?, &Default::default())?;
/// let out = exe.run(&[Tensor::from_vec(vec![3], vec![1.0f32, 2.0, 3.0])?])?;
/// assert_eq!(out[0].as_slice::<f32>(), Some(&[1.0f32, 4.0, 9.0][..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn compile(g: &Graph, opts: &CompileOptions) -> Result<Executable> {
    let o = optimize(g, None, &HashMap::new())?;
    executable(&o, opts)
}

/// Lowers and compiles a graph as it is (already optimized: no passes run) with the options'
/// code generator, or Cranelift when they name none.
pub fn executable(g: &Graph, opts: &CompileOptions) -> Result<Executable> {
    Ok(Executable::new(g, &with_backend(opts))?)
}

/// `opts` with the default code generator (Cranelift, `codegen::backend()`) when they name
/// none: the runtime compiles nothing by itself.
pub fn with_backend(opts: &CompileOptions) -> CompileOptions {
    let mut o = opts.clone();
    o.backend.get_or_insert_with(codegen::backend);
    o
}

/// Runs a compiled graph with inputs matched by parameter name; returns the outputs with
/// their names.
pub fn execute(
    exe: &Executable,
    inputs: &[(String, Tensor)],
    bindings: &HashMap<String, i64>,
) -> Result<Vec<(String, Tensor)>> {
    let ordered = inputs_in_order(exe.params(), inputs)?;
    let outs = exe.run_with(&ordered, bindings)?;
    Ok(exe
        .outputs()
        .iter()
        .map(|(n, _)| n.clone())
        .zip(outs)
        .collect())
}

/// Verifies `g` and runs it on the reference interpreter with inputs matched by parameter name;
/// returns the outputs with their names.
pub fn interpret(
    g: &Graph,
    inputs: &[(String, Tensor)],
    bindings: &HashMap<String, i64>,
) -> Result<Vec<(String, Tensor)>> {
    let v = verify(g)?;
    let ordered = inputs_in_order(&params(g), inputs)?;
    let opts = interp::Options {
        bindings: bindings.clone(),
        ..Default::default()
    };
    let outs = interp::run_with(&v, &ordered, &opts)?;
    Ok(g.outputs()
        .iter()
        .map(|(n, _)| n.clone())
        .zip(outs)
        .collect())
}

/// Generated inputs, and the symbols that were not bound and so were set to 1.
pub struct RandomInputs {
    pub inputs: Vec<(String, Tensor)>,
    pub defaulted: Vec<String>,
}

/// The largest random input [`random_inputs`] makes.
pub const MAX_RANDOM_BYTES: u64 = 4 << 30;

/// Deterministic random inputs for every parameter; symbols take their value from `bindings`
/// or, when absent there, 1 (the symbols so defaulted are returned too).
pub fn random_inputs(
    g: &Graph,
    bindings: &HashMap<String, i64>,
    seed: u64,
) -> Result<RandomInputs> {
    random_inputs_for(&params(g), bindings, seed)
}

/// [`random_inputs`] for parameters given by name and type (an executable's
/// [`Executable::params`]).
pub fn random_inputs_for(
    params: &[(String, TensorType)],
    bindings: &HashMap<String, i64>,
    seed: u64,
) -> Result<RandomInputs> {
    let mut rng = Rng::new(seed);
    let mut defaulted = Vec::new();
    let mut out = Vec::new();
    for (name, ty) in params.iter().cloned() {
        let mut dims = Vec::with_capacity(ty.rank());
        for d in ty.shape.dims() {
            for s in d.symbols() {
                if !bindings.contains_key(&*s) && !defaulted.iter().any(|x: &String| **x == *s) {
                    defaulted.push(s.to_string());
                }
            }
            let v = d
                .eval(&|s| bindings.get(s).copied().or(Some(1)))
                .map_err(|e| {
                    Error::Interp(InterpError::Input {
                        name: name.clone(),
                        message: e.to_string(),
                    })
                })?;
            dims.push(usize::try_from(v).map_err(|_| {
                Error::Interp(InterpError::Input {
                    name: name.clone(),
                    message: format!("dimension {d} evaluates to {v}"),
                })
            })?);
        }
        let numel = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        if numel
            .and_then(|n| ty.dtype.storage_bytes(n))
            .is_none_or(|b| b > MAX_RANDOM_BYTES)
        {
            return Err(Error::Interp(InterpError::Input {
                name,
                message: format!(
                    "a random {}{dims:?} input would exceed {MAX_RANDOM_BYTES} bytes",
                    ty.dtype
                ),
            }));
        }
        out.push((name, rng.tensor(ty.dtype, &dims)));
    }
    Ok(RandomInputs {
        inputs: out,
        defaulted,
    })
}
