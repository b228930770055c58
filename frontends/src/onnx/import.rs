//! The import driver: decodes the model, binds inputs and initializers, walks the nodes in
//! order through the op registry, folds constant subcomputations, and names the outputs.

use crate::onnx::OpError;

use std::collections::HashMap;

use ir::{Builder, Dim, Graph, Op, Origin, Shape, Tensor, TensorType, Value};

use super::proto::{self, AttributeProto, GraphProto, ModelProto, NodeProto};
use super::registry;
use super::tensor::decode;
use super::value::{Known, V};
use super::{interface, ImportError, ImportOptions};

/// Results of the largest folded computation kept as constants, in elements.
const FOLD_LIMIT: usize = 1 << 22;

/// Ops that must not be folded at import even on constant inputs.
const NO_FOLD: &[&str] = &[
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Bernoulli",
    "Multinomial",
    "Dropout",
    // A quantized weight stays packed in the graph: the optimizer's `quantize` stage takes
    // its integers into 8-bit products, and `dequantize` folds what is left.
    "DequantizeLinear",
];

/// One node being imported: the proto, its resolved opset version, and attribute access.
pub struct Node<'a> {
    pub proto: &'a NodeProto,
    pub version: i64,
}

impl<'a> Node<'a> {
    pub fn op(&self) -> &str {
        &self.proto.op_type
    }

    /// Input `i`'s name, `None` when absent or empty (an omitted optional input).
    pub fn input(&self, i: usize) -> Option<&'a str> {
        self.proto
            .input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn num_inputs(&self) -> usize {
        self.proto.input.len()
    }

    /// Input `i`, which must be present.
    pub fn req(&self, i: usize) -> Result<&'a str, OpError> {
        Ok(self
            .input(i)
            .ok_or_else(|| format!("missing required input {i}"))?)
    }

    pub fn num_outputs(&self) -> usize {
        self.proto.output.len()
    }

    /// Whether output `i` is wanted (present and non-empty).
    pub fn wants_output(&self, i: usize) -> bool {
        self.proto.output.get(i).is_some_and(|s| !s.is_empty())
    }

    fn attr(&self, name: &str) -> Option<&'a AttributeProto> {
        self.proto.attribute.iter().find(|a| a.name == name)
    }

    fn typed(&self, name: &str, want: i32) -> Result<Option<&'a AttributeProto>, OpError> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if a.r#type == want || a.r#type == proto::attr_type::UNDEFINED => Ok(Some(a)),
            Some(a) => Err(format!(
                "attribute `{name}` has type {}, expected {}",
                attr_type_name(a.r#type),
                attr_type_name(want)
            )
            .into()),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.attr(name).is_some()
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>, OpError> {
        Ok(self.typed(name, proto::attr_type::INT)?.map(|a| a.i))
    }

    pub fn int_or(&self, name: &str, default: i64) -> Result<i64, OpError> {
        Ok(self.int(name)?.unwrap_or(default))
    }

    pub fn float(&self, name: &str) -> Result<Option<f32>, OpError> {
        Ok(self.typed(name, proto::attr_type::FLOAT)?.map(|a| a.f))
    }

    pub fn float_or(&self, name: &str, default: f32) -> Result<f32, OpError> {
        Ok(self.float(name)?.unwrap_or(default))
    }

    pub fn string(&self, name: &str) -> Result<Option<String>, OpError> {
        Ok(self
            .typed(name, proto::attr_type::STRING)?
            .map(|a| {
                String::from_utf8(a.s.clone())
                    .map_err(|_| format!("attribute `{name}` is not UTF-8"))
            })
            .transpose()?)
    }

    pub fn string_or(&self, name: &str, default: &str) -> Result<String, OpError> {
        Ok(self.string(name)?.unwrap_or_else(|| default.to_string()))
    }

    pub fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, OpError> {
        Ok(self
            .typed(name, proto::attr_type::INTS)?
            .map(|a| a.ints.clone()))
    }

    /// An ints attribute that must have `len` entries; `[default; len]` when absent.
    pub fn ints_len(&self, name: &str, len: usize, default: i64) -> Result<Vec<i64>, OpError> {
        match self.ints(name)? {
            None => Ok(vec![default; len]),
            Some(v) if v.len() == len => Ok(v),
            Some(v) => {
                Err(format!("attribute `{name}` has {} entries, expected {len}", v.len()).into())
            }
        }
    }

    pub fn floats(&self, name: &str) -> Result<Option<Vec<f32>>, OpError> {
        Ok(self
            .typed(name, proto::attr_type::FLOATS)?
            .map(|a| a.floats.clone()))
    }

    pub fn strings(&self, name: &str) -> Result<Option<Vec<String>>, OpError> {
        Ok(self
            .typed(name, proto::attr_type::STRINGS)?
            .map(|a| {
                a.strings
                    .iter()
                    .map(|s| {
                        String::from_utf8(s.clone())
                            .map_err(|_| format!("attribute `{name}` is not UTF-8"))
                    })
                    .collect()
            })
            .transpose()?)
    }

    pub fn type_proto(&self, name: &str) -> Result<Option<&'a proto::TypeProto>, OpError> {
        Ok(self
            .typed(name, proto::attr_type::TYPE_PROTO)?
            .and_then(|a| a.tp.as_ref()))
    }

    pub fn graph(&self, name: &str) -> Result<&'a GraphProto, OpError> {
        Ok(self
            .typed(name, proto::attr_type::GRAPH)?
            .and_then(|a| a.g.as_deref())
            .ok_or_else(|| format!("missing graph attribute `{name}`"))?)
    }

    pub fn tensor(&self, name: &str, ext: &super::ExternalData) -> Result<Option<Tensor>, OpError> {
        Ok(self
            .typed(name, proto::attr_type::TENSOR)?
            .map(|a| {
                let t =
                    a.t.as_ref()
                        .ok_or_else(|| format!("attribute `{name}` has no tensor"))?;
                decode(t, ext).map_err(|e| format!("attribute `{name}`: {e}"))
            })
            .transpose()?)
    }
}

fn attr_type_name(t: i32) -> &'static str {
    use proto::attr_type::*;
    match t {
        FLOAT => "FLOAT",
        INT => "INT",
        STRING => "STRING",
        TENSOR => "TENSOR",
        GRAPH => "GRAPH",
        FLOATS => "FLOATS",
        INTS => "INTS",
        STRINGS => "STRINGS",
        TENSORS => "TENSORS",
        GRAPHS => "GRAPHS",
        SPARSE_TENSOR => "SPARSE_TENSOR",
        SPARSE_TENSORS => "SPARSE_TENSORS",
        TYPE_PROTO => "TYPE_PROTO",
        TYPE_PROTOS => "TYPE_PROTOS",
        _ => "UNDEFINED",
    }
}

/// The state of one import.
pub struct Ctx<'o> {
    pub b: Builder,
    pub(super) env: HashMap<String, V>,
    pub opts: &'o ImportOptions<'o>,
    fresh: usize,
    /// The node (and opset version) that produced each value, for demand-driven
    /// specialization: a value needed at import time is recomputed from its producers.
    producers: HashMap<String, (NodeProto, i64, usize)>,
    /// Values so recomputed.
    demanded: std::cell::RefCell<HashMap<String, Tensor>>,
    /// The specialized inputs whose values an op needed (see [`Imported::read`]).
    read: std::cell::RefCell<std::collections::BTreeSet<String>>,
    /// Opset versions per domain, for the nodes of subgraphs too.
    opsets: HashMap<String, i64>,
    /// Nesting depth of inlined subgraphs.
    depth: usize,
    /// Names given to constants (after their ONNX values), to keep them unique.
    const_names: HashMap<String, Tensor>,
}

impl<'o> Ctx<'o> {
    pub(super) fn new(name: &str, opts: &'o ImportOptions<'o>) -> Ctx<'o> {
        // Shape facts the exporter knew but symbols cannot prove are checked at run time.
        let mut b = Builder::new(name);
        b.check_at_run_time(true);
        Ctx {
            b,
            env: HashMap::new(),
            opts,
            fresh: 0,
            producers: HashMap::new(),
            demanded: Default::default(),
            read: Default::default(),
            opsets: HashMap::new(),
            const_names: HashMap::new(),
            depth: 0,
        }
    }

    pub fn get(&self, name: &str) -> Result<&V, OpError> {
        Ok(self
            .env
            .get(name)
            .ok_or_else(|| format!("value `{name}` is used before it is defined"))?)
    }

    /// Type of the named value.
    pub fn ty(&self, name: &str) -> Result<TensorType, OpError> {
        Ok(self.get(name)?.ty.clone())
    }

    /// The IR value of `name`, materializing a known value on first use.
    pub fn ir(&mut self, name: &str) -> Result<Value, OpError> {
        let v = self.get(name)?.clone();
        if let Some(value) = v.value {
            return Ok(value);
        }
        let value = self.materialize(&v, Some(name))?;
        if let Some(e) = self.env.get_mut(name) {
            e.value = Some(value);
        }
        Ok(value)
    }

    /// An IR value for a V that may only be known.
    pub fn value_of(&mut self, v: &V) -> Result<Value, OpError> {
        match v.value {
            Some(x) => Ok(x),
            None => self.materialize(v, None),
        }
    }

    /// A constant for known data: named after its ONNX value (so it prints as `@name`) unless
    /// it is small.
    fn constant(&mut self, t: &Tensor, name: Option<&str>) -> Result<Value, OpError> {
        let Some(base) = name.filter(|_| t.numel() > 16) else {
            return self.b.constant(t.clone()).map_err(OpError::from);
        };
        let mut name = base.to_string();
        let mut k = 1;
        while let Some(existing) = self.const_names.get(&name) {
            if existing == t {
                break;
            }
            k += 1;
            name = format!("{base}.{k}");
        }
        self.const_names.insert(name.clone(), t.clone());
        self.b
            .named_constant(&name, t.clone())
            .map_err(OpError::from)
    }

    fn materialize(&mut self, v: &V, name: Option<&str>) -> Result<Value, OpError> {
        match &v.known {
            Some(Known::Data(t)) => self.constant(t, name),
            Some(Known::Dims { dims, scalar }) => {
                if let Some(t) = v.known_tensor() {
                    return self.b.constant(t).map_err(OpError::from);
                }
                let d = self
                    .b
                    .op1(
                        Op::Dims {
                            values: dims.clone(),
                        },
                        &[],
                    )
                    .map_err(OpError::from)?;
                let d = if *scalar {
                    self.b.reshape(d, Shape::scalar()).map_err(OpError::from)?
                } else {
                    d
                };
                Ok(self.b.cast(d, v.ty.dtype)?)
            }
            Some(Known::Seq { .. }) => Err("a sequence is used where a tensor is expected".into()),
            Some(Known::Opt(_)) => Err("an optional is used where a tensor is expected".into()),
            None => Err("value has neither an IR value nor a known value".into()),
        }
    }

    /// The value of `name` at import time: known, a specialized input, or recomputed from
    /// its producers when those lead back to known values and specialized inputs only.
    fn demand(&self, name: &str, depth: usize) -> Option<Tensor> {
        if let Some(t) = self.env.get(name).and_then(V::known_tensor) {
            return Some(t);
        }
        if let Some(t) = self.opts.specialize.get(name) {
            self.read.borrow_mut().insert(name.to_string());
            return Some(t.clone());
        }
        if let Some(t) = self.demanded.borrow().get(name) {
            return Some(t.clone());
        }
        let eval = self.opts.evaluate?;
        let (proto, version, index) = self.producers.get(name)?;
        if depth > 64 || NO_FOLD.contains(&proto.op_type.as_str()) {
            return None;
        }
        let domain = if proto.domain == "ai.onnx" {
            ""
        } else {
            proto.domain.as_str()
        };
        let f = registry::lookup(domain, &proto.op_type, *version)?;
        let mut scratch = Ctx::new("demand", self.opts);
        scratch.opsets = self.opsets.clone();
        // Subgraphs (If branches, loop bodies) may read outer values by name: those are
        // demanded too, so the scratch import sees them.
        let implicit = proto
            .attribute
            .iter()
            .flat_map(|a| a.g.as_deref().into_iter().chain(&a.graphs))
            .flat_map(outer_names)
            .filter(|n| self.env.contains_key(n));
        let explicit = proto.input.iter().filter(|s| !s.is_empty()).cloned();
        for input in explicit.chain(implicit.collect::<Vec<_>>()) {
            let t = self.demand(&input, depth + 1)?;
            if t.numel() > FOLD_LIMIT {
                return None;
            }
            scratch.env.insert(input, V::data(t));
        }
        let node = Node {
            proto,
            version: *version,
        };
        let outs = f(&mut scratch, &node).ok()?;
        self.read.borrow_mut().extend(scratch.read.take());
        let v = outs.get(*index)?;
        let t = match v.known_tensor() {
            Some(t) => t,
            None => {
                let x = scratch.value_of(v).ok()?;
                scratch.b.output("o", x).ok()?;
                let g = scratch.b.finish().ok()?;
                if !small_results(&g) {
                    return None;
                }
                eval(&g).ok()?.into_iter().next()?
            }
        };
        self.demanded
            .borrow_mut()
            .insert(name.to_string(), t.clone());
        Some(t)
    }

    /// The known value of an input as integers (dims must be constant); see [`Ctx::demand`].
    pub fn static_ints(&self, name: &str) -> Result<Vec<i64>, OpError> {
        let v = self.get(name)?;
        if let Some(x) = v.known_ints() {
            return Ok(x);
        }
        match self.demand(name, 0) {
            Some(t) if t.dtype().is_int() => Ok((0..t.numel())
                .map(|i| t.data().get_i128(i) as i64)
                .collect()),
            _ => Err(format!(
                "`{name}` must be known when the model is imported (it sets a shape or size)"
            )
            .into()),
        }
    }

    /// Like [`Ctx::static_ints`] but symbolic dims are allowed.
    pub fn static_dims(&self, name: &str) -> Result<Vec<Dim>, OpError> {
        let v = self.get(name)?;
        if let Some(x) = v.known_dims() {
            return Ok(x);
        }
        self.static_ints(name)
            .map(|v| v.into_iter().map(Dim::Const).collect())
    }

    /// The tensors of a sequence value and their element type.
    pub fn seq(&self, name: &str) -> Result<(Vec<V>, ir::DType), OpError> {
        match &self.get(name)?.known {
            Some(Known::Seq { items, dtype }) => Ok((items.clone(), *dtype)),
            _ => Err(format!("`{name}` is not a sequence").into()),
        }
    }

    /// The value of `name` if the import can know it (see [`Ctx::demand`]), else `None`.
    pub fn try_static(&self, name: &str) -> Option<Tensor> {
        self.get(name).ok()?;
        self.demand(name, 0)
    }

    /// The known value of an input as a tensor; see [`Ctx::demand`].
    pub fn static_tensor(&self, name: &str) -> Result<Tensor, OpError> {
        self.get(name)?;
        Ok(self
            .demand(name, 0)
            .ok_or_else(|| format!("`{name}` must be known when the model is imported"))?)
    }

    /// Imports the nodes of a subgraph (a Scan/Loop body or an If branch) into the current
    /// graph with its formal inputs bound to `args`, and returns its outputs. Names the body
    /// defines are scoped to it; outer values stay visible.
    pub fn inline(&mut self, g: &GraphProto, args: Vec<V>) -> Result<Vec<V>, OpError> {
        if self.depth > 16 {
            return Err("subgraphs nest too deeply".into());
        }
        if g.input.len() != args.len() {
            return Err(format!(
                "the subgraph takes {} inputs, got {}",
                g.input.len(),
                args.len()
            )
            .into());
        }
        let mut shadowed: Vec<(String, Option<V>)> = Vec::new();
        let mut bind = |env: &mut HashMap<String, V>, name: &str, v: V| {
            shadowed.push((name.to_string(), env.insert(name.to_string(), v)));
        };
        for init in &g.initializer {
            let t = decode(init, &self.opts.external_data)
                .map_err(|e| format!("initializer `{}`: {e}", init.name))?;
            bind(&mut self.env, &init.name, V::data(t));
        }
        for (vi, v) in g.input.iter().zip(args) {
            bind(&mut self.env, &vi.name, v);
        }
        for n in &g.node {
            for out in n.output.iter().filter(|o| !o.is_empty()) {
                let prev = self.env.get(out).cloned();
                shadowed.push((out.clone(), prev));
            }
        }
        self.depth += 1;
        let opsets = self.opsets.clone();
        let mut result = Ok(());
        for n in &g.node {
            if let Err(e) = import_node(self, n, &opsets) {
                result = Err(format!("in subgraph: {e}").into());
                break;
            }
        }
        self.depth -= 1;
        let outs = result.and_then(|()| {
            g.output
                .iter()
                .map(|o| self.get(&o.name).cloned())
                .collect::<Result<Vec<_>, _>>()
        });
        // Restore the outer scope, newest binding first.
        for (name, prev) in shadowed.into_iter().rev() {
            match prev {
                Some(v) => {
                    self.env.insert(name, v);
                }
                None => {
                    self.env.remove(&name);
                }
            }
        }
        outs
    }

    /// Imports subgraph `g` as a graph of its own (a `loop` body) rather than inline. Its
    /// parameters are `g`'s inputs in the order `order` gives (indices into `g.input`), typed
    /// by `types` (in that order), then one per outer value the subgraph reads that is not
    /// known at import; inputs in `known` are known values instead. Its outputs are `g`'s
    /// outputs at `outputs`, the first `carry` of them refined to the types of the first
    /// `carry` parameters; outputs at `must_be_true` must be known true. Returns the graph and
    /// the outer values its extra parameters stand for.
    #[allow(clippy::too_many_arguments)]
    pub fn region(
        &mut self,
        g: &GraphProto,
        order: &[usize],
        types: &[ir::TensorType],
        known: &[(usize, Tensor)],
        outputs: &[usize],
        carry: usize,
        must_be_true: &[usize],
    ) -> Result<(ir::Graph, Vec<Value>), OpError> {
        if order.len() + known.len() != g.input.len() || types.len() != order.len() {
            return Err(format!(
                "the subgraph takes {} inputs, got {}",
                g.input.len(),
                types.len()
            )
            .into());
        }
        let mut body = Builder::new("body");
        body.check_at_run_time(true);
        body.set_origin(self.b.origin().clone());
        let outer_b = std::mem::replace(&mut self.b, body);
        // Outer values the subgraph reads: known ones are materialized inside again, the
        // others become parameters after the subgraph's own.
        let mut shadowed: Vec<(String, Option<V>)> = Vec::new();
        let mut captured = Vec::new();
        let result = (|| -> Result<Vec<V>, OpError> {
            let mut args: Vec<Option<V>> = vec![None; g.input.len()];
            for (&i, t) in order.iter().zip(types) {
                let name = &g
                    .input
                    .get(i)
                    .ok_or("a subgraph input is out of range")?
                    .name;
                let p = self
                    .b
                    .param(&format!("in:{name}"), t.dtype, t.shape.clone())
                    .map_err(OpError::from)?;
                args[i] = Some(self.v(p));
            }
            for (i, t) in known {
                let slot = args.get_mut(*i).ok_or("a subgraph input is out of range")?;
                *slot = Some(V::data(t.clone()));
            }
            for name in outer_names(g) {
                let Some(v) = self.env.get(&name).cloned() else {
                    continue;
                };
                let inner = match (&v.known, v.value) {
                    (Some(_), _) => V {
                        value: None,
                        ..v.clone()
                    },
                    (None, Some(outer)) => {
                        let p = (self.b)
                            .param(&format!("outer:{name}"), v.ty.dtype, v.ty.shape.clone())
                            .map_err(OpError::from)?;
                        captured.push(outer);
                        V {
                            value: Some(p),
                            ..v.clone()
                        }
                    }
                    (None, None) => continue,
                };
                shadowed.push((name.clone(), self.env.insert(name, inner)));
            }
            let args = args
                .into_iter()
                .map(|a| a.ok_or_else(|| "a subgraph input has no value".to_string()))
                .collect::<Result<Vec<V>, String>>()?;
            self.inline(g, args)
        })();
        let result = result.and_then(|outs| {
            for &i in must_be_true {
                let t = outs.get(i).and_then(|v| v.known_tensor());
                if !t.is_some_and(|t| t.numel() == 1 && t.data().get_i128(0) != 0) {
                    return Err("the loop's condition is only known at run time".into());
                }
            }
            let params = self.b.graph().params().to_vec();
            for (k, &i) in outputs.iter().enumerate() {
                let v = outs.get(i).ok_or("the subgraph has too few outputs")?;
                let mut x = self.value_of(v)?;
                if k < carry {
                    let want = self.b.graph().node(params[k]).types()[0].clone();
                    if self.b.ty(x).dtype != want.dtype {
                        return Err(format!(
                            "carried value {k} enters as {want} but the body returns {}",
                            self.b.ty(x)
                        )
                        .into());
                    }
                    x = self.b.refine(x, want.shape).map_err(OpError::from)?;
                }
                let name = &g.output[i].name;
                self.b.output(name, x).map_err(OpError::from)?;
            }
            Ok(())
        });
        for (name, prev) in shadowed.into_iter().rev() {
            match prev {
                Some(v) => self.env.insert(name, v),
                None => self.env.remove(&name),
            };
        }
        let body = std::mem::replace(&mut self.b, outer_b);
        result?;
        let graph = body.finish().map_err(OpError::from)?;
        Ok((graph, captured))
    }

    /// A V for an IR value.
    pub fn v(&self, value: Value) -> V {
        V {
            value: Some(value),
            ty: self.b.ty(value).clone(),
            known: None,
        }
    }

    /// A fresh symbol for a dim nobody named.
    pub fn fresh_symbol(&mut self, hint: &str) -> Dim {
        self.fresh += 1;
        Dim::sym(&format!("{}_{}", sanitize(hint), self.fresh))
    }
}

/// The names a subgraph reads from enclosing scopes: inputs of its nodes (and of theirs,
/// recursively) that it neither takes, holds as an initializer nor defines.
fn outer_names(g: &GraphProto) -> Vec<String> {
    let mut defined: std::collections::HashSet<&str> = g
        .input
        .iter()
        .map(|v| v.name.as_str())
        .chain(g.initializer.iter().map(|t| t.name.as_str()))
        .collect();
    let mut out = Vec::new();
    for n in &g.node {
        let nested = n
            .attribute
            .iter()
            .flat_map(|a| a.g.as_deref().into_iter().chain(&a.graphs))
            .flat_map(outer_names);
        for name in n.input.iter().cloned().chain(nested) {
            if !name.is_empty() && !defined.contains(name.as_str()) && !out.contains(&name) {
                out.push(name);
            }
        }
        defined.extend(n.output.iter().map(String::as_str));
    }
    out
}

/// Turns an ONNX dim_param or value name into a valid symbol.
pub fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        s.insert(0, 'd');
    }
    if !ir::is_valid_symbol(&s) {
        s.push('_');
    }
    s
}

/// The opset version per domain; `ai.onnx` and the empty domain are the same.
pub fn opsets(model: &ModelProto) -> HashMap<String, i64> {
    let mut out = HashMap::new();
    for o in &model.opset_import {
        let domain = if o.domain == "ai.onnx" {
            ""
        } else {
            o.domain.as_str()
        };
        out.insert(domain.to_string(), o.version);
    }
    out
}

fn node_error(n: &NodeProto, error: impl Into<OpError>) -> ImportError {
    ImportError {
        node: Some(n.name.clone())
            .filter(|s| !s.is_empty())
            .or_else(|| n.output.first().cloned()),
        op: Some(if n.domain.is_empty() || n.domain == "ai.onnx" {
            n.op_type.clone()
        } else {
            format!("{}::{}", n.domain, n.op_type)
        }),
        error: error.into(),
    }
}

/// An imported graph and what the import read of the options.
pub struct Imported {
    pub graph: Graph,
    /// The inputs of [`ImportOptions::specialize`] whose values the import used (a shape, axes,
    /// a count): the graph is valid only for those values. Sorted.
    pub read: Vec<String>,
}

/// Imports a decoded model.
pub fn import_model(model: &ModelProto, opts: &ImportOptions) -> Result<Graph, ImportError> {
    import_model_reporting(model, opts).map(|i| i.graph)
}

/// Imports a decoded model and says which specialized input values it depends on.
pub fn import_model_reporting(
    model: &ModelProto,
    opts: &ImportOptions,
) -> Result<Imported, ImportError> {
    let fail = |m: String| ImportError::model(m);
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| fail("the model has no graph".into()))?;
    let opsets = opsets(model);
    if !opsets.contains_key("") && graph.node.iter().any(|n| n.domain.is_empty()) {
        return Err(fail("the model imports no ai.onnx opset".into()));
    }
    let name = if graph.name.is_empty() {
        "main"
    } else {
        &graph.name
    };
    let mut ctx = Ctx::new(&sanitize(name), opts);
    ctx.opsets = opsets.clone();
    interface::bind_graph_inputs(&mut ctx, graph).map_err(ImportError::model)?;
    for n in &graph.node {
        import_node(&mut ctx, n, &opsets)?;
    }
    let mut outputs = Vec::new();
    for out in &graph.output {
        ctx.get(&out.name)
            .cloned()
            .and_then(|v| interface::flatten_output(&mut ctx, &out.name, &v, &mut outputs))
            .map_err(|e| fail(format!("output `{}`: {e}", out.name)))?;
    }
    for (i, (name, _)) in outputs.iter().enumerate() {
        if outputs[..i].iter().any(|(n, _)| n == name) {
            return Err(fail(format!(
                "two outputs travel as `{name}` (a tensor output of that name and an element of a \
                 sequence output)"
            )));
        }
    }
    for (name, v) in outputs {
        ctx.b.output(&name, v).map_err(ImportError::model)?;
    }
    let read = ctx.read.take().into_iter().collect();
    let graph = ctx.b.finish().map_err(ImportError::model)?;
    Ok(Imported { graph, read })
}

fn import_node(
    ctx: &mut Ctx,
    n: &NodeProto,
    opsets: &HashMap<String, i64>,
) -> Result<(), ImportError> {
    let domain = if n.domain == "ai.onnx" {
        ""
    } else {
        n.domain.as_str()
    };
    let version = *opsets.get(domain).ok_or_else(|| {
        node_error(
            n,
            format!("the model imports no opset for domain `{}`", n.domain),
        )
    })?;
    let f = registry::lookup(domain, &n.op_type, version).ok_or_else(|| {
        node_error(
            n,
            format!(
                "unsupported op {}{} (opset {version})",
                if domain.is_empty() {
                    String::new()
                } else {
                    format!("{domain}::")
                },
                n.op_type
            ),
        )
    })?;
    let node = Node { proto: n, version };
    for name in n.input.iter().filter(|s| !s.is_empty()) {
        ctx.get(name).map_err(|e| node_error(n, e))?;
    }
    let label = if n.name.is_empty() {
        n.output.first().cloned().unwrap_or_default()
    } else {
        n.name.clone()
    };
    ctx.b.set_origin(Origin::named(&label));
    // An importer that panics is a bug in kiln, but the user still gets an error naming the
    // node rather than an abort.
    let outs =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match fold(ctx, &node, f) {
            Some(outs) => Ok(outs),
            None => f(ctx, &node),
        }))
        .unwrap_or_else(|panic| {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!("internal error (a bug in kiln): {msg}").into())
        })
        .map_err(|e| node_error(n, e))?;
    for (i, name) in n.output.iter().enumerate() {
        if name.is_empty() {
            continue;
        }
        ctx.producers.insert(name.clone(), (n.clone(), version, i));
        let v = outs
            .get(i)
            .cloned()
            .ok_or_else(|| node_error(n, format!("output {i} (`{name}`) is not supported")))?;
        ctx.env.insert(name.clone(), v);
    }
    Ok(())
}

/// Whether no output of a scratch graph is known, before evaluating it, to exceed
/// [`FOLD_LIMIT`] elements (a placeholder weight's `ConstantOfShape` of 100M elements stays a
/// broadcast, unevaluated). Outputs of data-dependent size (`NonZero` of a constant) are
/// evaluated and their size checked after.
fn small_results(g: &ir::Graph) -> bool {
    g.outputs().iter().all(|(_, v)| {
        let dims = g.value_type(*v).shape.as_consts();
        let n = dims.map(|d| {
            d.iter()
                .try_fold(1usize, |n, &x| n.checked_mul(usize::try_from(x).ok()?))
        });
        !matches!(n, Some(None)) && n.flatten().is_none_or(|n| n <= FOLD_LIMIT)
    })
}

/// Evaluates a node whose inputs are all known constants, when the options carry an evaluator:
/// the node is imported into a scratch graph over constants and run. Any failure just means
/// "import it normally".
fn fold(ctx: &mut Ctx, node: &Node, f: registry::ImportFn) -> Option<Vec<V>> {
    let eval = ctx.opts.evaluate?;
    if NO_FOLD.contains(&node.op()) || node.proto.input.iter().all(|s| s.is_empty()) {
        return None;
    }
    let mut scratch = Ctx::new("fold", ctx.opts);
    scratch.opsets = ctx.opsets.clone();
    for name in node.proto.input.iter().filter(|s| !s.is_empty()) {
        let t = ctx.get(name).ok()?.known_tensor()?;
        scratch.env.insert(name.clone(), V::data(t));
    }
    let outs = f(&mut scratch, node).ok()?;
    if outs.iter().all(|v| v.value.is_none()) {
        // Computed from known values alone (e.g. Shape arithmetic): nothing to run.
        return Some(outs);
    }
    for (i, v) in outs.iter().enumerate() {
        let x = scratch.value_of(v).ok()?;
        scratch.b.output(&format!("o{i}"), x).ok()?;
    }
    let g = scratch.b.finish().ok()?;
    if !small_results(&g) {
        return None;
    }
    let results = eval(&g).ok()?;
    if results.iter().any(|t| t.numel() > FOLD_LIMIT) {
        return None;
    }
    Some(results.into_iter().map(V::data).collect())
}
