//! The CLI's model files: what a file is (decided by its content, not its name), the options
//! every command that loads a model shares (`--func`, `--dim`, `--input-shape`), and the inputs
//! of a run (from `--inputs`, or random).

use std::collections::HashMap;
use std::path::Path;

use frontends::onnx::Kind as Kind_;
use kiln::{Graph, Model, ModelOptions, Shape, Tensor, TensorType};

use crate::Failure;

/// What a model file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A compiled `.kiln` artifact.
    Artifact,
    /// An ONNX protobuf.
    Onnx,
    /// `.kir` text.
    Kir,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Artifact => "a compiled .kiln artifact",
            Kind::Onnx => "an ONNX model",
            Kind::Kir => ".kir text",
        }
    }
}

/// The kind of a file's bytes: the artifact magic, else text that does not decode as ONNX is
/// `.kir`, else ONNX (whose decoding then reports what is wrong).
pub fn kind_of(bytes: &[u8]) -> Kind {
    if kiln::artifact::is_artifact(bytes) {
        return Kind::Artifact;
    }
    // Real ONNX files are almost never valid UTF-8 (weights); only text pays a trial decode.
    match std::str::from_utf8(bytes) {
        Ok(_) if kiln::frontends::onnx::decode_model(bytes).map_or(true, |m| m.graph.is_none()) => {
            Kind::Kir
        }
        _ => Kind::Onnx,
    }
}

/// Refuses a file of a kind the command cannot take, saying what it is.
pub fn expect_kind(path: &Path, kind: Kind, wanted: &[Kind], hint: &str) -> Result<(), Failure> {
    if wanted.contains(&kind) {
        return Ok(());
    }
    let takes: Vec<&str> = wanted.iter().map(|k| k.describe()).collect();
    Err(Failure(format!(
        "{} is {}; this command takes {}{hint}",
        path.display(),
        kind.describe(),
        takes.join(" or ")
    )))
}

pub fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure(format!("cannot read {}: {e}", path.display())))
}

/// Parses `.kir` text, with diagnostics prefixed by the path.
pub fn parse_kir_text(path: &Path, bytes: &[u8]) -> Result<kiln::Module, Failure> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Failure(format!("{} is not UTF-8 text", path.display())))?;
    kiln::parse_module(text).map_err(|e| {
        Failure(format!(
            "{}:{}: error: {}",
            path.display(),
            e.loc,
            e.message
        ))
    })
}

/// Parses a .kir file (refusing artifacts and ONNX models by name).
pub fn parse_kir(path: &Path) -> Result<kiln::Module, Failure> {
    let bytes = read(path)?;
    expect_kind(path, kind_of(&bytes), &[Kind::Kir], "")?;
    parse_kir_text(path, &bytes)
}

/// `--dim NAME=VALUE`.
pub fn parse_binding(s: &str) -> Result<(String, i64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got `{s}`"))?;
    let v = value
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("`{value}` is not an integer"))?;
    if v < 0 {
        return Err(format!("a dimension cannot be negative, got {v}"));
    }
    Ok((name.trim().to_string(), v))
}

/// `--input-shape NAME=D0,D1,...` (an empty list is a scalar).
pub fn parse_input_shape(s: &str) -> Result<(String, Vec<i64>), String> {
    let (name, dims) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("expected NAME=D0,D1,..., got `{s}`"))?;
    let dims = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| match d.parse::<i64>() {
            Ok(v) if v >= 0 => Ok(v),
            _ => Err(format!("`{d}` is not a dimension (a non-negative integer)")),
        })
        .collect::<Result<_, _>>()?;
    Ok((name.trim().to_string(), dims))
}

/// How a command picks and specializes a model.
#[derive(clap::Args, Clone, Default)]
pub struct ModelArgs {
    /// The function of a .kir file (default: @main, else the first function)
    #[arg(long)]
    pub func: Option<String>,
    /// Set a symbolic dimension the model's inputs declare, e.g. --dim batch=8 (repeatable)
    #[arg(long = "dim", value_name = "NAME=VALUE", value_parser = parse_binding)]
    pub dims: Vec<(String, i64)>,
    /// Fix an input's shape, e.g. --input-shape images=1,3,320,320 (repeatable); it must
    /// agree with what the model declares
    #[arg(long = "input-shape", value_name = "NAME=D0,D1,...", value_parser = parse_input_shape)]
    pub shapes: Vec<(String, Vec<i64>)>,
    /// Run and bench: compile one executable for every input shape, instead of kernels for
    /// the shapes of the inputs given (faster, and compiled again for other shapes);
    /// artifacts are symbolic either way
    #[arg(long)]
    pub symbolic: bool,
}

impl ModelArgs {
    pub fn bindings(&self) -> HashMap<String, i64> {
        self.dims.iter().cloned().collect()
    }

    pub fn options(&self, compile: kiln::CompileOptions) -> ModelOptions {
        ModelOptions {
            compile,
            dims: self.bindings(),
            shapes: self
                .shapes
                .iter()
                .map(|(n, d)| (n.clone(), Shape::from_consts(d)))
                .collect(),
            shape_kernels: !self.symbolic,
            ..Default::default()
        }
    }
}

/// A loaded model file (either is a large struct, used once per command).
#[allow(clippy::large_enum_variant)]
pub enum Loaded {
    Artifact(kiln::Executable),
    Model(Model),
}

impl Loaded {
    /// The function's name and its inputs.
    pub fn interface(&self) -> (&str, &[(String, TensorType)]) {
        match self {
            Loaded::Artifact(exe) => (exe.name(), exe.params()),
            Loaded::Model(m) => (m.symbolic().map_or("main", |g| g.name()), m.params()),
        }
    }

    /// Every output, in order, with its kind (see [`Model::output_kinds`]).
    pub fn outputs(&self) -> Vec<(String, Kind_)> {
        match self {
            Loaded::Artifact(exe) => tensors(exe.outputs()),
            Loaded::Model(m) => m.output_kinds().to_vec(),
        }
    }

    /// Every input, in order, with its kind (see [`Model::interface`]).
    pub fn inputs(&self) -> Vec<(String, Kind_)> {
        match self {
            Loaded::Artifact(exe) => tensors(exe.params()),
            Loaded::Model(m) => m.interface().to_vec(),
        }
    }
}

/// An artifact's inputs or outputs: tensors all.
fn tensors(list: &[(String, TensorType)]) -> Vec<(String, Kind_)> {
    list.iter()
        .map(|(n, _)| (n.clone(), Kind_::Tensor))
        .collect()
}

/// Opens a model file of any kind: artifacts are loaded (memory-mapped), ONNX models and
/// `.kir` functions become [`Model`]s with `opts`.
pub fn open(path: &Path, args: &ModelArgs, opts: ModelOptions) -> Result<Loaded, Failure> {
    let file = path.display();
    if is_artifact_file(path) {
        if !args.shapes.is_empty() {
            return Err(Failure(format!(
                "{file} is a compiled artifact: its input shapes were set when it was compiled \
                 (--input-shape applies to `kiln compile`)"
            )));
        }
        let exe = load_artifact(path, &opts.compile)?;
        let symbols = kiln::model::graph_symbols(exe.params());
        kiln::model::check_dims(&args.bindings(), &symbols)
            .map_err(|e| Failure(format!("{file}: {e}")))?;
        return Ok(Loaded::Artifact(exe));
    }
    let bytes = read(path)?;
    let model = match kind_of(&bytes) {
        Kind::Onnx => {
            let external = external_data(path, &bytes)?;
            Model::from_onnx(&bytes, external, opts)
        }
        Kind::Kir => {
            let g = pick_function(path, parse_kir_text(path, &bytes)?, args.func.as_deref())?;
            let diags = crate::kir::verify_diagnostics(path, &g);
            if !diags.is_empty() {
                return Err(Failure(diags.join("\n")));
            }
            Model::from_graph(g, opts)
        }
        Kind::Artifact => unreachable!("artifacts are mapped above"),
    };
    model
        .map(Loaded::Model)
        .map_err(|e| Failure(format!("{file}: {e}")))
}

/// Opens a model that a command needs as one graph (opt, graph, compile): the import with
/// symbolic shapes, or an error saying which shapes to give when it needs them.
pub fn open_graph(path: &Path, args: &ModelArgs, what: &str) -> Result<Graph, Failure> {
    let model = match open(path, args, args.options(Default::default()))? {
        Loaded::Model(m) => m,
        Loaded::Artifact(_) => {
            return Err(Failure(format!(
                "{} is a compiled .kiln artifact; {what} needs the model it was compiled from \
                 (`kiln inspect` describes the artifact)",
                path.display()
            )))
        }
    };
    match model.symbolic() {
        Ok(g) => Ok(g.clone()),
        Err(e) => Err(Failure(format!(
            "{}: {e}\nnote: {what} needs this model's input shapes; give them with \
             --input-shape NAME=D0,D1,... or --dim SYMBOL=N (its inputs: {})",
            path.display(),
            describe_params(model.params())
        ))),
    }
}

pub fn describe_params(params: &[(String, TensorType)]) -> String {
    let v: Vec<String> = params.iter().map(|(n, t)| format!("{n}: {t}")).collect();
    v.join(", ")
}

/// Reads the external data files an ONNX model names (relative to the model).
pub fn external_data(
    path: &Path,
    bytes: &[u8],
) -> Result<kiln::frontends::onnx::ExternalData, Failure> {
    let model = kiln::frontends::onnx::decode_model(bytes)
        .map_err(|e| Failure(format!("{}: {e}", path.display())))?;
    let mut external = kiln::frontends::onnx::ExternalData::new();
    let dir = path.parent().unwrap_or(Path::new("."));
    for loc in kiln::frontends::onnx::external_data_locations(&model) {
        let data = read(&dir.join(&loc))?;
        external.insert(loc, data.into());
    }
    Ok(external)
}

/// The function `name` of a module (default @main, else the first).
pub fn pick_function(path: &Path, m: kiln::Module, name: Option<&str>) -> Result<Graph, Failure> {
    let names: Vec<String> = m.graphs().map(|g| format!("@{}", g.name())).collect();
    let mut graphs: Vec<Graph> = m.funcs.into_iter().map(|f| f.graph).collect();
    let want = name.map(|n| n.trim_start_matches('@'));
    let pos = match want {
        Some(n) => graphs.iter().position(|g| g.name() == n),
        None => graphs
            .iter()
            .position(|g| g.name() == "main")
            .or((!graphs.is_empty()).then_some(0)),
    };
    match pos {
        Some(i) => Ok(graphs.swap_remove(i)),
        None if names.is_empty() => Err(Failure(format!("{} has no functions", path.display()))),
        None => Err(Failure(format!(
            "{} has no function @{}; it has {}",
            path.display(),
            want.unwrap_or("main"),
            names.join(", ")
        ))),
    }
}

/// Loads a .kiln file, memory-mapped (its weights are used in place); errors name the file.
pub fn load_artifact(
    path: &Path,
    opts: &kiln::CompileOptions,
) -> Result<kiln::Executable, Failure> {
    let file = path.display();
    if opts.interpret_only {
        return Err(Failure(format!(
            "{file} is a compiled artifact: --interp needs the model it was compiled from"
        )));
    }
    let load = || {
        let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
        // SAFETY: mapped read-only; kiln does not change the file while it runs, and a file
        // changed by others under a running model is outside what kiln can defend against.
        // Populated: the checksum reads every page at once, cheaper mapped up front than
        // faulted.
        let map =
            unsafe { memmap2::MmapOptions::new().populate().map(&f) }.map_err(|e| e.to_string())?;
        kiln::artifact::load_shared(std::sync::Arc::new(map), opts).map_err(|e| e.to_string())
    };
    load().map_err(|e| Failure(format!("{file}: {e}")))
}

/// Whether `path` is a file starting as a .kiln artifact does (unreadable files are not:
/// reading them again reports why).
pub fn is_artifact_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| kiln::artifact::is_artifact(&head))
}

/// The inputs of a function `name` with parameters `params` (of `all` its inputs: sequences
/// and optionals travel as the tensors `s[0]`, `s[1]`, …): from files (see
/// [`crate::data::read_tensors`]), the missing ones random when `random` is set (symbols from
/// the given inputs, then `bindings`, else 1; a sequence not given is empty).
pub fn prepare_inputs(
    name: &str,
    params: &[(String, TensorType)],
    all: &[(String, Kind_)],
    files: &[std::path::PathBuf],
    random: bool,
    seed: u64,
    bindings: &HashMap<String, i64>,
) -> Result<Vec<(String, Tensor)>, Failure> {
    let func = name;
    let structured: Vec<(String, Kind_)> = all
        .iter()
        .filter(|(_, k)| *k != Kind_::Tensor)
        .cloned()
        .collect();
    let structured = structured.as_slice();
    let mut inputs = crate::data::read_tensors(files, "input_", all)?;
    for (name, _) in &inputs {
        if !params.iter().any(|(p, _)| p == name)
            && !frontends::onnx::is_structured_tensor(structured, name)
        {
            eprintln!("note: input \"{name}\" is not a parameter of @{func}; ignored");
        }
    }
    let given = frontends::onnx::given(structured, |n| inputs.iter().any(|(x, _)| x == n));
    for (s, _) in structured {
        let what = match given.get(s) {
            Some(frontends::onnx::Given::None) => "none",
            Some(frontends::onnx::Given::Seq(0)) => "an empty sequence",
            _ => continue,
        };
        eprintln!(
            "note: input `{s}` is {what} (give its tensors as `{}`, `{}`, … in --inputs)",
            frontends::onnx::element_name(s, 0),
            frontends::onnx::element_name(s, 1)
        );
    }
    let missing: Vec<&str> = params
        .iter()
        .filter(|(p, _)| !inputs.iter().any(|(n, _)| n == p))
        .map(|(p, _)| p.as_str())
        .collect();
    if !missing.is_empty() {
        if !random {
            return Err(Failure(format!(
                "@{func} needs inputs {}: pass --inputs FILE.npz or --random-inputs",
                missing.join(", ")
            )));
        }
        let mut env = bindings.clone();
        // Symbols already fixed by the given inputs keep their values.
        for (p, ty) in params {
            let Some((_, t)) = inputs.iter().find(|(n, _)| n == p) else {
                continue;
            };
            if t.shape().len() == ty.rank() {
                for (d, &n) in ty.shape.dims().iter().zip(t.shape()) {
                    if let Some(s) = d.as_sym() {
                        env.entry(s.to_string()).or_insert(n as i64);
                    }
                }
            }
        }
        let random = kiln::random_inputs_for(params, &env, seed)?;
        for s in random.defaulted {
            eprintln!("note: symbol `{s}` set to 1 (bind it with --dim {s}=N)");
        }
        for (name, t) in random.inputs {
            if missing.contains(&name.as_str()) {
                inputs.push((name, t));
            }
        }
    }
    Ok(inputs)
}
