//! A model's interface: the inputs it declares (with the dims and shapes the options fix) and
//! the sequences and optionals it takes and returns.
//!
//! A run passes tensors, so a structured value travels as tensors under derived names: a
//! sequence `s` as `s[0]`, `s[1]`, …; an optional `o` as `o` (holding a tensor), as `o[0]`, …
//! (holding a sequence), or as nothing (none; an optional holding an empty sequence reads as
//! none too). The import resolves sequences to their tensors, so it needs the structure a run
//! gives — each sequence's length, whether each optional holds a value ([`Given`]) — and a
//! [`Model`](../../kiln/struct.Model.html) specializes on it.

use crate::onnx::OpError;

use std::collections::HashMap;

use ir::{DType, Dim, Shape, Tensor, TensorType};
use prost::Message;

use super::import::{sanitize, Ctx};
use super::proto::{self, GraphProto, ModelProto, TensorTypeProto, TypeProto, TypeValue};
use super::tensor::{decode, require_dtype};
use super::value::{Known, V};
use super::{ExternalData, ImportOptions};

/// What a run gives for a sequence or optional input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Given {
    /// An optional holding a tensor.
    Tensor,
    /// A sequence of this many tensors (or an optional holding one).
    Seq(usize),
    /// An optional holding nothing.
    None,
}

/// The kind of a declared value type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Tensor,
    /// A sequence of tensors.
    Sequence,
    Optional(Box<Kind>),
}

impl Kind {
    /// The kind of a value type; maps, sparse tensors and sequences of other than tensors are
    /// not supported.
    pub fn of(ty: Option<&TypeProto>) -> Result<Kind, OpError> {
        match ty.and_then(|t| t.value.as_ref()) {
            Some(TypeValue::TensorType(_)) => Ok(Kind::Tensor),
            Some(TypeValue::SequenceType(s)) => match Kind::of(s.elem_type.as_deref())? {
                Kind::Tensor => Ok(Kind::Sequence),
                _ => Err("sequences of other than tensors are not supported".into()),
            },
            Some(TypeValue::OptionalType(o)) => match Kind::of(o.elem_type.as_deref())? {
                Kind::Optional(_) => Err("optionals of optionals are not supported".into()),
                k => Ok(Kind::Optional(Box::new(k))),
            },
            Some(TypeValue::MapType(_)) => Err("maps are not supported".into()),
            Some(TypeValue::SparseTensorType(_)) => Err("sparse tensors are not supported".into()),
            None => Err("no type".into()),
        }
    }
}

/// The name under which tensor `i` of the sequence `name` travels.
pub fn element_name(name: &str, i: usize) -> String {
    format!("{name}[{i}]")
}

/// The inputs of a model (initializers excluded), in order, with their kinds (a type kiln does
/// not support counts as a tensor: importing says what is wrong with it).
pub fn input_kinds(model: &ModelProto) -> Vec<(String, Kind)> {
    let Some(g) = &model.graph else {
        return vec![];
    };
    g.input
        .iter()
        .filter(|vi| !g.initializer.iter().any(|t| t.name == vi.name))
        .map(|vi| {
            let kind = Kind::of(vi.r#type.as_ref()).unwrap_or(Kind::Tensor);
            (vi.name.clone(), kind)
        })
        .collect()
}

/// The outputs of a model, in order, with their kinds (as [`input_kinds`]).
pub fn output_kinds(model: &ModelProto) -> Vec<(String, Kind)> {
    let Some(g) = &model.graph else {
        return vec![];
    };
    g.output
        .iter()
        .map(|vi| {
            let kind = Kind::of(vi.r#type.as_ref()).unwrap_or(Kind::Tensor);
            (vi.name.clone(), kind)
        })
        .collect()
}

/// The inputs of a model (initializers excluded) whose kind is a sequence or an optional.
pub fn structured_inputs(model: &ModelProto) -> Vec<(String, Kind)> {
    input_kinds(model)
        .into_iter()
        .filter(|(_, k)| *k != Kind::Tensor)
        .collect()
}

/// The structure a run's inputs (`has` says which names it gives) give each structured input.
pub fn given(structured: &[(String, Kind)], has: impl Fn(&str) -> bool) -> HashMap<String, Given> {
    let length = |name: &str| (0..).take_while(|&i| has(&element_name(name, i))).count();
    let mut out = HashMap::new();
    for (name, kind) in structured {
        let g = match kind {
            Kind::Tensor => continue,
            Kind::Sequence => Given::Seq(length(name)),
            Kind::Optional(inner) => match **inner {
                Kind::Tensor if has(name) => Given::Tensor,
                Kind::Sequence if has(&element_name(name, 0)) => Given::Seq(length(name)),
                _ => Given::None,
            },
        };
        out.insert(name.clone(), g);
    }
    out
}

/// The position `i` when `input` is `name[i]`, written as [`element_name`] writes it.
fn element_index(name: &str, input: &str) -> Option<usize> {
    let i: usize = input
        .strip_prefix(name)?
        .strip_prefix('[')?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    (element_name(name, i) == input).then_some(i)
}

/// Whether `input` names a tensor of one of the structured inputs (`s[0]` of a sequence `s`,
/// `o` of an optional tensor `o`).
pub fn is_structured_tensor(structured: &[(String, Kind)], input: &str) -> bool {
    structured.iter().any(|(n, kind)| match kind {
        Kind::Tensor => false,
        Kind::Sequence => element_index(n, input).is_some(),
        Kind::Optional(inner) => match **inner {
            Kind::Sequence => element_index(n, input).is_some(),
            _ => n == input,
        },
    })
}

/// Fails when the tensors a run gives for a sequence have a gap (`s[0]` and `s[2]` without
/// `s[1]`): what [`given`] counts would silently drop the rest.
pub fn check_given(structured: &[(String, Kind)], names: &[&str]) -> Result<(), OpError> {
    for (n, kind) in structured {
        let sequence = match kind {
            Kind::Sequence => true,
            Kind::Optional(inner) => **inner == Kind::Sequence,
            Kind::Tensor => false,
        };
        if !sequence {
            continue;
        }
        let mut given: Vec<usize> = names.iter().filter_map(|i| element_index(n, i)).collect();
        given.sort_unstable();
        if let Some(k) = (0..given.len()).find(|&k| given[k] != k) {
            return Err(format!(
                "input `{}` is given without `{}`: a sequence's tensors are `{}`, `{}`, … \
                 without gaps",
                element_name(n, given[k]),
                element_name(n, k),
                element_name(n, 0),
                element_name(n, 1)
            )
            .into());
        }
    }
    Ok(())
}

/// Decodes a serialized value of `kind` named `name` (a TensorProto, SequenceProto or
/// OptionalProto, as the ONNX node tests store inputs and outputs) into its tensors under their
/// interface names.
pub fn decode_value(
    bytes: &[u8],
    kind: &Kind,
    name: &str,
) -> Result<Vec<(String, Tensor)>, OpError> {
    let none = ExternalData::new();
    match kind {
        Kind::Tensor => {
            let t = proto::TensorProto::decode(bytes).map_err(OpError::from)?;
            Ok(vec![(name.to_string(), decode(&t, &none)?)])
        }
        Kind::Sequence => {
            let s = proto::SequenceProto::decode(bytes).map_err(OpError::from)?;
            sequence_tensors(&s, name)
        }
        Kind::Optional(inner) => {
            let o = proto::OptionalProto::decode(bytes).map_err(OpError::from)?;
            let declared = match **inner {
                Kind::Tensor => 1,
                _ => 3,
            };
            match (o.elem_type, &o.tensor_value, &o.sequence_value) {
                (0, _, _) => Ok(vec![]),
                (e, _, _) if e != declared => Err(format!(
                    "an optional of element type {e}, declared as holding {}",
                    if declared == 1 {
                        "a tensor"
                    } else {
                        "a sequence"
                    }
                )
                .into()),
                (1, Some(t), _) => Ok(vec![(name.to_string(), decode(t, &none)?)]),
                (3, _, Some(s)) => sequence_tensors(s, name),
                (e, _, _) => Err(format!("an optional of element type {e} holds no value").into()),
            }
        }
    }
}

fn sequence_tensors(
    s: &proto::SequenceProto,
    name: &str,
) -> Result<Vec<(String, Tensor)>, OpError> {
    // Element type 1 (tensors), or 0 for an empty sequence that does not say.
    let other = !s.sequence_values.is_empty() || !s.optional_values.is_empty();
    if other || !(s.elem_type == 1 || (s.elem_type == 0 && s.tensor_values.is_empty())) {
        return Err("sequences of other than tensors are not supported".into());
    }
    s.tensor_values
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let e = element_name(name, i);
            let t = decode(t, &ExternalData::new()).map_err(|err| format!("`{e}`: {err}"))?;
            Ok((e, t))
        })
        .collect()
}

/// How an input's IR parameters make its import value.
pub(super) enum Layout {
    Tensor(String),
    Seq(Vec<String>, DType),
    Opt(Option<Box<Layout>>, DType),
}

impl Layout {
    fn value(&self, params: &HashMap<String, V>) -> V {
        match self {
            Layout::Tensor(n) => params[n].clone(),
            Layout::Seq(names, dtype) => {
                V::seq(names.iter().map(|n| params[n].clone()).collect(), *dtype)
            }
            Layout::Opt(item, dtype) => V::optional(item.as_ref().map(|l| l.value(params)), *dtype),
        }
    }
}

/// The element type of a tensor, sequence or optional type.
pub(crate) fn element_dtype(ty: Option<&TypeProto>) -> Result<DType, OpError> {
    match ty.and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(tt)) => require_dtype(tt.elem_type),
        Some(TypeValue::SequenceType(s)) => element_dtype(s.elem_type.as_deref()),
        Some(TypeValue::OptionalType(o)) => element_dtype(o.elem_type.as_deref()),
        _ => Err("no element type".into()),
    }
}

/// Adds the tensors input `name` of type `ty` travels as to `declared`, as the options' `given`
/// structure says, and says how they make its value.
fn flatten(
    ctx: &mut Ctx,
    name: &str,
    ty: Option<&TypeProto>,
    declared: &mut Vec<(String, TensorType)>,
) -> Result<Layout, OpError> {
    let kind = Kind::of(ty)?;
    let given = ctx.opts.given.get(name).copied();
    match (kind, ty.and_then(|t| t.value.as_ref())) {
        (Kind::Tensor, Some(TypeValue::TensorType(tt))) => {
            declared.push((name.to_string(), tensor_type(ctx, name, tt, false)?));
            Ok(Layout::Tensor(name.to_string()))
        }
        (Kind::Sequence, Some(TypeValue::SequenceType(s))) => {
            let Some(Given::Seq(len)) = given else {
                return Err(format!(
                    "a sequence, whose length only a run knows: give its tensors as `{}`, `{}`, \
                     … (the import specializes on the length)",
                    element_name(name, 0),
                    element_name(name, 1)
                )
                .into());
            };
            let Some(TypeValue::TensorType(tt)) =
                s.elem_type.as_deref().and_then(|t| t.value.as_ref())
            else {
                return Err("sequences of other than tensors are not supported".into());
            };
            let mut names = Vec::with_capacity(len);
            for i in 0..len {
                let e = element_name(name, i);
                declared.push((e.clone(), tensor_type(ctx, &e, tt, true)?));
                names.push(e);
            }
            Ok(Layout::Seq(names, require_dtype(tt.elem_type)?))
        }
        (Kind::Optional(_), Some(TypeValue::OptionalType(o))) => {
            let dtype = element_dtype(ty)?;
            match given {
                Some(Given::None) => Ok(Layout::Opt(None, dtype)),
                Some(_) => {
                    let item = flatten(ctx, name, o.elem_type.as_deref(), declared)?;
                    Ok(Layout::Opt(Some(Box::new(item)), dtype))
                }
                None => Err(format!(
                    "an optional, which only a run says holds a value or not: give it as `{name}` \
                     (a tensor) or `{}`, … (a sequence), or leave it out (none)",
                    element_name(name, 0)
                )
                .into()),
            }
        }
        _ => Err("unsupported type".into()),
    }
}

/// The graph outputs a value named `name` becomes: a tensor itself, a sequence its tensors
/// (`name[i]`), an optional what it holds (nothing when none).
pub(super) fn flatten_output(
    ctx: &mut Ctx,
    name: &str,
    v: &V,
    out: &mut Vec<(String, ir::Value)>,
) -> Result<(), OpError> {
    match &v.known {
        Some(Known::Seq { items, .. }) => {
            for (i, item) in items.iter().enumerate() {
                flatten_output(ctx, &element_name(name, i), item, out)?;
            }
        }
        Some(Known::Opt(item)) => {
            if let Some(item) = item {
                flatten_output(ctx, name, item, out)?;
            }
        }
        _ => out.push((name.to_string(), ctx.value_of(v)?)),
    }
    Ok(())
}

/// The dtype and shape an input declares. Dims an exporter left open (no value, an empty
/// `dim_param`, or a value of -1 or 0, as paddle2onnx and old tf2onnx write them) become fresh
/// symbols; `dim_param` strings of any spelling become symbols. The tensors of a sequence
/// (`element`) may differ in shape: each gets its own symbols.
fn tensor_type(
    ctx: &mut Ctx,
    name: &str,
    tt: &TensorTypeProto,
    element: bool,
) -> Result<TensorType, OpError> {
    let dtype = require_dtype(tt.elem_type)?;
    // Not from a specialized value's shape: a specialization keyed by values alone would then
    // serve runs of other shapes.
    let shape = match (&tt.shape, ctx.opts.shapes.get(name)) {
        (Some(shape), _) => shape,
        // No declared shape: the rank is unknown, but a given shape says it.
        (None, Some(given)) => return Ok(TensorType::new(dtype, given.clone())),
        (None, None) => {
            return Err(
                "input has no shape (its rank is unknown; give its shape, e.g. --input-shape)"
                    .into(),
            )
        }
    };
    let mut dims = Vec::with_capacity(shape.dim.len());
    for (a, d) in shape.dim.iter().enumerate() {
        dims.push(match &d.value {
            Some(proto::DimValue::DimValue(v)) if *v > 0 => Dim::Const(*v),
            // A name says which dims are equal; `?` and other punctuation name nothing.
            Some(proto::DimValue::DimParam(p))
                if !element && p.chars().any(|c| c.is_alphanumeric()) =>
            {
                Dim::sym(&sanitize(p.trim()))
            }
            _ => ctx.fresh_symbol(&format!("{}_{a}", name.replace('[', "_").replace(']', ""))),
        });
    }
    Ok(TensorType::new(dtype, Shape::new(dims)))
}

/// Applies the import options' `dims` and `shapes` to the declared input types: symbols bound
/// by `dims` or by a given shape become constants in every input that uses them. A given shape
/// must agree with what the model declares (rank, fixed dims, one value per symbol).
fn specialize_inputs(
    opts: &ImportOptions,
    declared: &mut [(String, TensorType)],
) -> Result<(), OpError> {
    let mut given: Vec<&String> = opts.shapes.keys().collect();
    given.sort();
    for name in given {
        if !declared.iter().any(|(n, _)| n == name) {
            let names: Vec<&str> = declared.iter().map(|(n, _)| n.as_str()).collect();
            return Err(format!(
                "a shape is given for `{name}`, which is not an input of the model (its inputs: {})",
                names.join(", ")
            ).into());
        }
    }
    let mut bound: HashMap<String, i64> = opts.dims.clone();
    for (name, ty) in declared.iter() {
        let Some(given) = opts.shapes.get(name) else {
            continue;
        };
        ty.shape.bind(given, &mut bound).map_err(|why| {
            format!(
                "input `{name}`: the model declares {ty}, given {}: {why}",
                TensorType::new(ty.dtype, given.clone())
            )
        })?;
    }
    for (name, ty) in declared.iter_mut() {
        let shape = ty
            .shape
            .substitute(&|s| bound.get(s).map(|v| Dim::Const(*v)))
            .map_err(|e| format!("input `{name}`: {e}"))?;
        // A given shape may fix dims the declaration leaves as expressions.
        ty.shape = match opts.shapes.get(name) {
            Some(given) => Shape::new(
                shape
                    .dims()
                    .iter()
                    .zip(given.dims())
                    .map(|(d, g)| {
                        if g.as_const().is_some() {
                            g.clone()
                        } else {
                            d.clone()
                        }
                    })
                    .collect(),
            ),
            None => shape,
        };
        for d in ty.shape.dims() {
            if d.as_const().is_some_and(|v| v < 0) {
                return Err(format!("input `{name}`: a dim is {d}").into());
            }
        }
    }
    Ok(())
}

/// The inputs of a model (initializers excluded) with the types the import gives them: the
/// declared types with `opts.dims` and `opts.shapes` applied, open dims as fresh symbols. A
/// sequence or optional input counts as the tensors [`ImportOptions::given`] says it holds
/// (none when it says nothing).
pub fn declared_inputs(
    model: &ModelProto,
    opts: &ImportOptions,
) -> Result<Vec<(String, TensorType)>, OpError> {
    let mut ctx = Ctx::new("inputs", opts);
    let mut declared = Vec::new();
    if let Some(g) = &model.graph {
        let inits: std::collections::HashSet<&str> =
            g.initializer.iter().map(|t| t.name.as_str()).collect();
        for vi in g
            .input
            .iter()
            .filter(|vi| !inits.contains(vi.name.as_str()))
        {
            let kind = Kind::of(vi.r#type.as_ref());
            // A sequence or optional the options give no structure for has no tensors yet.
            if kind.is_ok_and(|k| k != Kind::Tensor) && !opts.given.contains_key(&vi.name) {
                continue;
            }
            flatten(&mut ctx, &vi.name, vi.r#type.as_ref(), &mut declared)
                .map_err(|e| format!("input `{}`: {e}", vi.name))?;
        }
    }
    specialize_inputs(opts, &mut declared)?;
    Ok(declared)
}

/// Binds a graph's initializers (as known values) and inputs (as parameters, sequences and
/// optionals as [`ImportOptions::given`] says) in the import's scope.
pub(super) fn bind_graph_inputs(ctx: &mut Ctx, graph: &GraphProto) -> Result<(), OpError> {
    for init in &graph.initializer {
        let t = decode(init, &ctx.opts.external_data)
            .map_err(|e| format!("initializer `{}`: {e}", init.name))?;
        ctx.env.insert(init.name.clone(), V::data(t));
    }
    if !graph.sparse_initializer.is_empty() {
        return Err("sparse initializers are not supported".into());
    }
    let mut declared = Vec::new();
    let mut layouts = Vec::new();
    for input in &graph.input {
        if ctx.env.contains_key(&input.name) {
            continue; // an initializer listed as an input (IR < 4) stays a constant
        }
        let layout = flatten(ctx, &input.name, input.r#type.as_ref(), &mut declared)
            .map_err(|e| format!("input `{}`: {e}", input.name))?;
        layouts.push((input.name.clone(), layout));
    }
    for (i, (name, _)) in declared.iter().enumerate() {
        if declared[..i].iter().any(|(n, _)| n == name) {
            return Err(format!(
                "two inputs travel as `{name}` (a tensor input of that name and an element of a \
                 sequence input, or an optional)"
            )
            .into());
        }
    }
    specialize_inputs(ctx.opts, &mut declared)?;
    let mut params = HashMap::new();
    for (name, ty) in declared {
        let p = ctx
            .b
            .param(&name, ty.dtype, ty.shape.clone())
            .map_err(|e| format!("input `{name}`: {e}"))?;
        params.insert(name, ctx.v(p));
    }
    for (name, layout) in layouts {
        let v = layout.value(&params);
        ctx.env.insert(name, v);
    }
    Ok(())
}
