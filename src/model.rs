//! Models as users bring them: an executable for any input shapes when the import can keep
//! every shape symbolic, and otherwise one specialization per signature of the inputs (their
//! shapes, and the values of inputs that set shapes, axes or counts), compiled on first use and
//! kept in a bounded cache.
//!
//! An ONNX model often needs, at import, something only a run knows: a `Resize` over a
//! symbolic height, a `TopK` whose `k` is an input, a `Reshape` whose element counts are equal
//! only for real inputs. [`Model`] imports symbolically once; where that fails it imports
//! again for each run's signature — first with the values of the inputs alone (any shapes),
//! then with the shapes too — and records which input values the import read, so a later run
//! reuses the specialization exactly when it would import the same graph.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use frontends::onnx::proto::ModelProto;
use frontends::onnx::{ExternalData, Given, ImportError, ImportOptions, Kind};
use ir::{Graph, Shape, Tensor, TensorType};

use crate::{CompileOptions, Error, Executable, Result};

/// How many specializations a [`Model`] keeps by default.
pub const DEFAULT_CACHE: usize = 16;

/// Input values a graph was specialized for, by input name.
pub type Guards = Vec<(String, Tensor)>;

/// Values of a graph's symbols, sorted by name.
type Binding = Vec<(String, i64)>;

/// A note the model gives when it makes a specialization (for `--verbose` and `kiln bench`).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// How a [`Model`] imports, compiles and caches.
#[derive(Clone)]
pub struct ModelOptions {
    pub compile: CompileOptions,
    /// Values for symbols of the declared input shapes (`--dim batch=8`): fixed at import.
    pub dims: HashMap<String, i64>,
    /// Input shapes in place of the declared ones (`--input-shape x=1,3,320,320`).
    pub shapes: HashMap<String, Shape>,
    /// Specializations kept (least recently used ones are dropped); at least 1.
    pub cache_size: usize,
    /// Told about every specialization made.
    pub log: Option<Log>,
    /// Compile a symbolic graph once per binding of its symbols to the run's input shapes
    /// (its kernels then see static shapes, which the code generator makes faster: fixed
    /// loop bounds, direct convolutions, packed products), kept beside the import's
    /// specializations; the graph is not imported again. Off: one executable serves every
    /// shape. Artifacts (`kiln compile`) stay symbolic either way.
    pub shape_kernels: bool,
}

impl Default for ModelOptions {
    fn default() -> ModelOptions {
        ModelOptions {
            compile: CompileOptions::default(),
            dims: HashMap::new(),
            shapes: HashMap::new(),
            cache_size: DEFAULT_CACHE,
            log: None,
            shape_kernels: true,
        }
    }
}

enum Source {
    /// Decoded once; every specialization imports from it.
    Onnx {
        model: Box<ModelProto>,
        external: ExternalData,
    },
    Graph,
}

/// A graph, the input values it was specialized for and, once asked for, its executable
/// (and its executables for bindings of its symbols, most recently used first).
struct Compiled {
    graph: Arc<Graph>,
    /// The graph's parameters, when some has a symbolic shape (what binding needs).
    symbolic_params: Option<Vec<(String, TensorType)>>,
    guards: Guards,
    exe: OnceLock<Arc<Executable>>,
    /// `None`: the bound graph did not compile (a run violating a checked fact): the
    /// symbolic executable runs, and says why.
    bound: Mutex<Vec<(Binding, Option<Arc<Executable>>)>>,
}

impl Compiled {
    fn new(graph: Graph, guards: Guards) -> Arc<Compiled> {
        let params = crate::params(&graph);
        let symbolic = params.iter().any(|(_, t)| !t.shape.is_static());
        Arc::new(Compiled {
            symbolic_params: symbolic.then_some(params),
            graph: Arc::new(graph),
            guards,
            exe: OnceLock::new(),
            bound: Mutex::new(Vec::new()),
        })
    }

    /// The executable for the graph with its symbols bound as `inputs` bind them. `None`
    /// when the graph has no symbols, the inputs do not bind them, or the bound graph does
    /// not compile (a checked fact the inputs violate): the symbolic executable then runs, or
    /// says why not.
    fn bound_executable(
        &self,
        opts: &ModelOptions,
        inputs: &[(String, Tensor)],
    ) -> Result<Option<Arc<Executable>>> {
        let Some(params) = &self.symbolic_params else {
            return Ok(None);
        };
        let Ok(ordered) = crate::inputs_in_order(params, inputs) else {
            return Ok(None);
        };
        let typed: Vec<(&str, &TensorType)> = params.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let Ok(env) = runtime::interp::bind_params(&typed, &ordered, &opts.dims) else {
            return Ok(None);
        };
        let mut key: Binding = env.into_iter().collect();
        key.sort();
        {
            let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = bound.iter().position(|(k, _)| *k == key) {
                let e = bound.remove(i);
                bound.insert(0, e.clone());
                return Ok(e.1);
            }
        }
        let bindings: HashMap<String, i64> = key.iter().cloned().collect();
        let copts = CompileOptions {
            guards: self.guards.clone(),
            ..opts.compile.clone()
        };
        let exe = crate::optimize(&self.graph, None, &bindings)
            .and_then(|g| Ok(Arc::new(crate::executable(&g, &copts)?)))
            .ok();
        if let (Some(log), Some(_)) = (&opts.log, &exe) {
            let shown: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            log(&format!("compiled kernels for {}", shown.join(", ")));
        }
        let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        bound.insert(0, (key, exe.clone()));
        bound.truncate(opts.cache_size.max(1));
        Ok(exe)
    }

    fn executable(&self, opts: &CompileOptions) -> Result<Arc<Executable>> {
        if let Some(e) = self.exe.get() {
            return Ok(e.clone());
        }
        let opts = CompileOptions {
            guards: self.guards.clone(),
            ..opts.clone()
        };
        let exe = Arc::new(crate::compile(&self.graph, &opts)?);
        Ok(self.exe.get_or_init(|| exe).clone())
    }
}

/// One specialization: the input shapes it was imported for; the input values it read are
/// its graph's guards.
struct Entry {
    /// Every input's shape, or empty when the graph keeps the declared (symbolic) shapes.
    shapes: Vec<(String, Vec<usize>)>,
    /// What the run gave each sequence and optional input (its length, whether it holds a
    /// value), sorted by name.
    given: Vec<(String, Given)>,
    compiled: Arc<Compiled>,
}

impl Entry {
    fn matches(&self, inputs: &[(String, Tensor)], given: &[(String, Given)]) -> bool {
        let find = |name: &str| inputs.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        self.given == given
            && self
                .shapes
                .iter()
                .all(|(n, s)| find(n).is_some_and(|t| t.shape() == s.as_slice()))
            && self
                .compiled
                .guards
                .iter()
                .all(|(n, v)| find(n).is_some_and(|t| t == v))
    }

    fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .given
            .iter()
            .map(|(n, g)| match g {
                Given::Seq(len) => format!("{n}: a sequence of {len}"),
                Given::Tensor => format!("{n}: a value"),
                Given::None => format!("{n}: none"),
            })
            .collect();
        parts.extend(self.shapes.iter().map(|(n, s)| format!("{n}: {s:?}")));
        parts.extend(self.compiled.guards.iter().map(|(n, v)| {
            let shown = crate::format::head(v, 8);
            format!("{n} = {shown}")
        }));
        if parts.is_empty() {
            "any input".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A model ready to run on inputs of any shape it admits. `run(&self)` may be called from
/// several threads; specializations are shared.
pub struct Model {
    source: Source,
    opts: ModelOptions,
    /// The inputs with the types the model declares (after `dims` and `shapes`); sequence and
    /// optional inputs are in `structured`.
    params: Vec<(String, TensorType)>,
    /// The sequence and optional inputs, whose tensors a run gives as `s[0]`, `s[1]`, …
    structured: Vec<(String, Kind)>,
    /// Every input, in order, with its kind.
    interface: Vec<(String, Kind)>,
    /// Every output, in order, with its kind.
    outputs: Vec<(String, Kind)>,
    /// The import with symbolic shapes, or why it failed (then runs specialize).
    symbolic: std::result::Result<Arc<Compiled>, ImportError>,
    /// Most recently used first.
    cache: Mutex<Vec<Arc<Entry>>>,
    /// Whether importing with input values alone (symbolic shapes) has failed once: later
    /// signatures go straight to shapes and values.
    values_alone_fail: std::sync::atomic::AtomicBool,
    made: std::sync::atomic::AtomicUsize,
}

impl Model {
    /// A model from ONNX bytes (and the external data files it names, by location).
    pub fn from_onnx(bytes: &[u8], external: ExternalData, opts: ModelOptions) -> Result<Model> {
        let model = frontends::onnx::decode_model(bytes).map_err(Error::Import)?;
        let declared = frontends::onnx::declared_inputs(&model, &ImportOptions::default());
        check_dims(&opts.dims, &graph_symbols(&declared.unwrap_or_default()))?;
        let interface = frontends::onnx::input_kinds(&model);
        let outputs = frontends::onnx::output_kinds(&model);
        let structured = frontends::onnx::structured_inputs(&model);
        let symbolic = import(
            &model,
            &external,
            &opts,
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
        )
        .map(|(g, _)| Compiled::new(g, vec![]));
        let params = match &symbolic {
            Ok(c) => crate::params(&c.graph),
            // Errors about the inputs themselves (and the options' shapes for them) do not go
            // away by specializing.
            Err(e) => frontends::onnx::declared_inputs(&model, &import_options(&opts))
                .map_err(|_| Error::Import(e.clone()))?,
        };
        Ok(Model {
            params,
            structured,
            interface,
            outputs,
            source: Source::Onnx {
                model: Box::new(model),
                external,
            },
            opts,
            symbolic,
            cache: Mutex::new(Vec::new()),
            values_alone_fail: false.into(),
            made: 0.into(),
        })
    }

    /// A model from a graph (built or parsed): always symbolic; `dims` bind its symbols at
    /// runs and `shapes` are checked against its parameters.
    pub fn from_graph(g: Graph, opts: ModelOptions) -> Result<Model> {
        let params = crate::params(&g);
        check_dims(&opts.dims, &graph_symbols(&params))?;
        let mut opts = opts;
        for (name, shape) in std::mem::take(&mut opts.shapes) {
            let (_, ty) = params.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                input_error(
                    &name,
                    format!(
                        "not an input of @{} (its inputs: {})",
                        g.name(),
                        names(&params)
                    ),
                )
            })?;
            ty.shape.bind(&shape, &mut opts.dims).map_err(|why| {
                input_error(&name, format!("declared {ty}, given {shape}: {why}"))
            })?;
        }
        let outputs = g
            .outputs()
            .iter()
            .map(|(n, _)| (n.clone(), Kind::Tensor))
            .collect();
        Ok(Model {
            interface: params
                .iter()
                .map(|(n, _)| (n.clone(), Kind::Tensor))
                .collect(),
            outputs,
            params,
            structured: vec![],
            source: Source::Graph,
            opts,
            symbolic: Ok(Compiled::new(g, vec![])),
            cache: Mutex::new(Vec::new()),
            values_alone_fail: false.into(),
            made: 0.into(),
        })
    }

    /// The inputs, in order, with their types (symbolic dims bind at runs).
    pub fn params(&self) -> &[(String, TensorType)] {
        &self.params
    }

    /// The sequence and optional inputs (not in [`Model::params`]): a run gives a sequence
    /// `s` as tensors `s[0]`, `s[1]`, …, an optional `o` as `o` (or `o[0]`, … for a sequence)
    /// or not at all (none).
    pub fn structured(&self) -> &[(String, Kind)] {
        &self.structured
    }

    /// Every input of the model, in order, with its kind (tensor, sequence, optional).
    pub fn interface(&self) -> &[(String, Kind)] {
        &self.interface
    }

    /// Every output of the model, in order, with its kind (a sequence output comes back as its
    /// tensors `y[0]`, `y[1]`, …).
    pub fn output_kinds(&self) -> &[(String, Kind)] {
        &self.outputs
    }

    /// Whether a run takes an input named `name`: a parameter, or a tensor of a sequence or
    /// optional input (`s[0]`, `s[1]`, …; `o`).
    pub fn takes(&self, name: &str) -> bool {
        self.params.iter().any(|(p, _)| p == name)
            || frontends::onnx::is_structured_tensor(&self.structured, name)
    }

    /// The options the model was made with.
    pub fn options(&self) -> &ModelOptions {
        &self.opts
    }

    /// The graph with symbolic shapes, when the import could keep them; otherwise why not
    /// (runs then specialize).
    pub fn symbolic(&self) -> std::result::Result<&Graph, &ImportError> {
        self.symbolic.as_ref().map(|c| &*c.graph)
    }

    /// How many specializations have been made so far.
    pub fn specializations(&self) -> usize {
        self.made.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The graph a run on `inputs` executes: the symbolic one, or the specialization for the
    /// inputs' signature.
    pub fn graph_for(&self, inputs: &[(String, Tensor)]) -> Result<Arc<Graph>> {
        Ok(self.compiled_for(inputs)?.graph.clone())
    }

    /// The graph a run on `inputs` executes and the input values it depends on (empty for
    /// the symbolic graph): what an artifact compiled for these inputs must check at run time
    /// (`CompileOptions::guards`).
    pub fn specialization(&self, inputs: &[(String, Tensor)]) -> Result<(Arc<Graph>, Guards)> {
        let c = self.compiled_for(inputs)?;
        Ok((c.graph.clone(), c.guards.clone()))
    }

    /// The executable a run on `inputs` uses, compiling it on first use: with
    /// [`ModelOptions::shape_kernels`], one for the inputs' shapes.
    pub fn executable_for(&self, inputs: &[(String, Tensor)]) -> Result<Arc<Executable>> {
        let c = self.compiled_for(inputs)?;
        if self.opts.shape_kernels && !self.opts.compile.interpret_only {
            if let Some(exe) = c.bound_executable(&self.opts, inputs)? {
                return Ok(exe);
            }
        }
        c.executable(&self.opts.compile)
    }

    /// Runs compiled code on named inputs; returns the named outputs.
    pub fn run(&self, inputs: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let exe = self.executable_for(inputs)?;
        crate::execute(&exe, inputs, &self.opts.dims)
    }

    /// Runs the reference interpreter on the graph a run on `inputs` would compile.
    pub fn interpret(&self, inputs: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let g = self.graph_for(inputs)?;
        crate::interpret(&g, inputs, &self.opts.dims)
    }

    fn compiled_for(&self, inputs: &[(String, Tensor)]) -> Result<Arc<Compiled>> {
        let err = match &self.symbolic {
            Ok(c) => return Ok(c.clone()),
            Err(e) => e,
        };
        let Source::Onnx { model, external } = &self.source else {
            return Err(Error::Import(err.clone()));
        };
        let names: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
        frontends::onnx::check_given(&self.structured, &names)
            .map_err(|e| Error::Import(ImportError::model(e)))?;
        let given = frontends::onnx::given(&self.structured, |n| names.contains(&n));
        let mut given_sorted: Vec<(String, Given)> = given.clone().into_iter().collect();
        given_sorted.sort_by(|a, b| a.0.cmp(&b.0));
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = cache.iter().position(|e| e.matches(inputs, &given_sorted)) {
                let e = cache.remove(i);
                cache.insert(0, e.clone());
                return Ok(e.compiled.clone());
            }
        }
        let inputs: Vec<(String, Tensor)> = inputs
            .iter()
            .filter(|(n, _)| self.takes(n))
            .cloned()
            .collect();
        let inputs = inputs.as_slice();
        let values: HashMap<String, Tensor> = inputs.iter().cloned().collect();
        let mut entry = None;
        if !self
            .values_alone_fail
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            match import(
                model,
                external,
                &self.opts,
                values.clone(),
                HashMap::new(),
                given.clone(),
            ) {
                Ok((g, read)) => entry = Some((g, read, vec![])),
                Err(_) => self
                    .values_alone_fail
                    .store(true, std::sync::atomic::Ordering::Relaxed),
            }
        }
        let (graph, read, shapes) = match entry {
            Some(e) => e,
            None => {
                let shapes: HashMap<String, Shape> = inputs
                    .iter()
                    .map(|(n, t)| (n.clone(), Shape::from_usizes(t.shape())))
                    .collect();
                let (g, read) = import(model, external, &self.opts, values, shapes, given)
                    .map_err(Error::Import)?;
                let shapes = inputs
                    .iter()
                    .map(|(n, t)| (n.clone(), t.shape().to_vec()))
                    .collect();
                (g, read, shapes)
            }
        };
        let guards = read
            .into_iter()
            .filter_map(|n| inputs.iter().find(|(x, _)| *x == n).cloned())
            .collect();
        let entry = Arc::new(Entry {
            shapes,
            given: given_sorted,
            compiled: Compiled::new(graph, guards),
        });
        let made = 1 + self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(log) = &self.opts.log {
            log(&format!(
                "specialized the model for {} (specialization {made}; {})",
                entry.describe(),
                err
            ));
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(0, entry.clone());
        cache.truncate(self.opts.cache_size.max(1));
        Ok(entry.compiled.clone())
    }
}

/// Imports a decoded model with the model's options plus values and shapes; returns the
/// graph and the inputs whose values it read.
fn import(
    model: &ModelProto,
    external: &ExternalData,
    opts: &ModelOptions,
    specialize: HashMap<String, Tensor>,
    mut shapes: HashMap<String, Shape>,
    given: HashMap<String, Given>,
) -> std::result::Result<(Graph, Vec<String>), ImportError> {
    for (n, s) in &opts.shapes {
        shapes.entry(n.clone()).or_insert_with(|| s.clone());
    }
    let o = ImportOptions {
        external_data: external.clone(),
        specialize,
        shapes,
        given,
        ..import_options(opts)
    };
    frontends::onnx::import_model_reporting(model, &o).map(|i| (i.graph, i.read))
}

/// The import options a model's options imply (no specialization).
fn import_options(opts: &ModelOptions) -> ImportOptions<'static> {
    ImportOptions {
        dims: opts.dims.clone(),
        shapes: opts.shapes.clone(),
        evaluate: Some(&crate::evaluate),
        ..Default::default()
    }
}

fn names(params: &[(String, TensorType)]) -> String {
    let v: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    v.join(", ")
}

fn input_error(name: &str, message: String) -> Error {
    Error::Interp(crate::InterpError::Input {
        name: name.to_string(),
        message,
    })
}

/// The symbols of parameters' shapes, sorted.
pub fn graph_symbols(params: &[(String, TensorType)]) -> Vec<String> {
    let mut out: Vec<String> = params
        .iter()
        .flat_map(|(_, t)| t.shape.dims().iter().flat_map(|d| d.symbols()))
        .map(|s| s.to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `--dim` must name a symbol the model has.
pub fn check_dims(dims: &HashMap<String, i64>, symbols: &[String]) -> Result<()> {
    let mut unknown: Vec<&String> = dims.keys().filter(|d| !symbols.contains(d)).collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(d) => Err(Error::UnknownDim {
            name: d.to_string(),
            symbols: symbols.to_vec(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{shape, Builder, DType};

    #[test]
    fn graphs_check_dims_and_shapes_against_their_parameters() {
        let mut b = Builder::new("f");
        let x = b.param("x", DType::F32, shape!["n", 3]).unwrap();
        let y = b.add(x, x).unwrap();
        b.output("y", y).unwrap();
        let g = b.finish().unwrap();
        let opts = |dims: &[(&str, i64)], shapes: &[(&str, &[i64])]| ModelOptions {
            dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            shapes: shapes
                .iter()
                .map(|(k, v)| (k.to_string(), Shape::from_consts(v)))
                .collect(),
            ..Default::default()
        };
        let e = Model::from_graph(g.clone(), opts(&[("m", 2)], &[]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("`m`") && e.contains("n"), "{e}");
        let e = Model::from_graph(g.clone(), opts(&[], &[("x", &[2, 4])]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("axis 1 is 3, not 4"), "{e}");
        let e = Model::from_graph(g.clone(), opts(&[], &[("z", &[2, 3])]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not an input"), "{e}");
        let m = Model::from_graph(g, opts(&[], &[("x", &[2, 3])])).unwrap();
        assert_eq!(m.options().dims.get("n"), Some(&2));
        let x = Tensor::from_vec(vec![2, 3], vec![1.0f32; 6]).unwrap();
        let out = m.run(&[("x".into(), x)]).unwrap();
        assert_eq!(out[0].1.as_slice::<f32>(), Some(&[2.0f32; 6][..]));
    }
}
