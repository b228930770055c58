//! ONNX sequences and optionals, resolved at import: a sequence whose length the import knows is
//! the list of its tensors (`Known::Seq`), so SequenceConstruct/Insert/At/Erase/Length,
//! SplitToSequence, ConcatFromSequence and SequenceMap become the IR values they select, slice,
//! concatenate or compute; an optional is its value or none (`Known::Opt`). Positions and split
//! sizes must be known at import (from constants, or a specialization on a run's inputs, as
//! the lengths of sequence inputs are).

use crate::onnx::OpError;

use ir::{DType, Dim, Op, Shape, Tensor};

use super::{axis, slice_axis, Res};
use crate::onnx::import::{Ctx, Node};
use crate::onnx::tensor::require_dtype;
use crate::onnx::value::{Known, V};

/// A position in a sequence of `len` tensors (negative counts from the end); `insert` admits
/// `len` itself.
fn position(
    ctx: &Ctx,
    n: &Node,
    input: usize,
    len: usize,
    insert: bool,
) -> Result<Option<usize>, OpError> {
    let Some(name) = n.input(input) else {
        return Ok(None);
    };
    let p = *ctx
        .static_ints(name)?
        .first()
        .ok_or("the position is empty")?;
    let len = len as i64;
    let hi = if insert { len } else { len - 1 };
    let q = if p < 0 { p + len } else { p };
    if q < 0 || q > hi {
        return Err(format!("position {p} is out of range for a sequence of {len} tensors").into());
    }
    Ok(Some(q as usize))
}

pub fn sequence_empty(_: &mut Ctx, n: &Node) -> Res {
    let dtype = match n.int("dtype")? {
        Some(t) => require_dtype(t as i32)?,
        None => DType::F32,
    };
    Ok(vec![V::seq(vec![], dtype)])
}

pub fn sequence_construct(ctx: &mut Ctx, n: &Node) -> Res {
    let items: Vec<V> = (0..n.num_inputs())
        .filter_map(|i| n.input(i))
        .map(|name| ctx.get(name).cloned())
        .collect::<Result<_, _>>()?;
    let dtype = items
        .first()
        .ok_or("SequenceConstruct needs a tensor")?
        .dtype();
    if items.iter().any(|v| v.dtype() != dtype) {
        return Err("the tensors of a sequence must have one element type".into());
    }
    Ok(vec![V::seq(items, dtype)])
}

pub fn sequence_insert(ctx: &mut Ctx, n: &Node) -> Res {
    let (mut items, dtype) = ctx.seq(n.req(0)?)?;
    let t = ctx.get(n.req(1)?)?.clone();
    if t.dtype() != dtype {
        return Err(format!(
            "inserting a {} tensor into a sequence of {dtype}",
            t.dtype()
        )
        .into());
    }
    let at = position(ctx, n, 2, items.len(), true)?.unwrap_or(items.len());
    items.insert(at, t);
    Ok(vec![V::seq(items, dtype)])
}

pub fn sequence_at(ctx: &mut Ctx, n: &Node) -> Res {
    let (items, _) = ctx.seq(n.req(0)?)?;
    let at = position(ctx, n, 1, items.len(), false)?.ok_or("missing the position")?;
    Ok(vec![items[at].clone()])
}

pub fn sequence_erase(ctx: &mut Ctx, n: &Node) -> Res {
    let (mut items, dtype) = ctx.seq(n.req(0)?)?;
    if items.is_empty() {
        return Err("erasing from an empty sequence".into());
    }
    let at = position(ctx, n, 1, items.len(), false)?.unwrap_or(items.len() - 1);
    items.remove(at);
    Ok(vec![V::seq(items, dtype)])
}

pub fn sequence_length(ctx: &mut Ctx, n: &Node) -> Res {
    let (items, _) = ctx.seq(n.req(0)?)?;
    let t = Tensor::from_vec(vec![], vec![items.len() as i64])?;
    Ok(vec![V::data(t)])
}

pub fn split_to_sequence(ctx: &mut Ctx, n: &Node) -> Res {
    let name = n.req(0)?;
    let x = ctx.ir(name)?;
    let shape = ctx.b.shape(x).clone();
    let a = axis(n.int_or("axis", 0)?, shape.rank())?;
    let len = shape
        .dim(a)
        .as_const()
        .ok_or("SplitToSequence needs the split axis known when the model is imported")?;
    let keepdims = n.int_or("keepdims", 1)? != 0;
    // Chunk sizes: one per element without `split`, a scalar size (the last chunk may be
    // smaller), or the sizes listed.
    let (sizes, unit) = match n.input(1) {
        None => (vec![1; len as usize], true),
        Some(sp) => {
            let v = ctx.static_ints(sp)?;
            if ctx.get(sp)?.rank() == 0 {
                let c = *v.first().ok_or("empty split")?;
                if c <= 0 {
                    return Err(format!("split size {c} must be positive").into());
                }
                let mut sizes = vec![c; (len / c) as usize];
                if len % c != 0 {
                    sizes.push(len % c);
                }
                (sizes, false)
            } else {
                if v.iter().any(|&c| c < 0) || v.iter().sum::<i64>() != len {
                    return Err(
                        format!("split sizes {v:?} do not sum to the axis length {len}").into(),
                    );
                }
                (v, false)
            }
        }
    };
    let mut items = Vec::with_capacity(sizes.len());
    let mut start = 0;
    for size in sizes {
        let mut part = slice_axis(
            &mut ctx.b,
            x,
            a,
            Dim::Const(start),
            Dim::Const(start + size),
            1,
        )?;
        if unit && !keepdims {
            let mut dims = ctx.b.shape(part).dims().to_vec();
            dims.remove(a);
            part = ctx.b.reshape(part, Shape::new(dims))?;
        }
        items.push(ctx.v(part));
        start += size;
    }
    let dtype = ctx.b.ty(x).dtype;
    Ok(vec![V::seq(items, dtype)])
}

pub fn concat_from_sequence(ctx: &mut Ctx, n: &Node) -> Res {
    let (items, _) = ctx.seq(n.req(0)?)?;
    if items.is_empty() {
        return Err("ConcatFromSequence of an empty sequence".into());
    }
    let new_axis = n.int_or("new_axis", 0)? != 0;
    let rank = items[0].rank() + usize::from(new_axis);
    let a = axis(n.int("axis")?.ok_or("missing attribute `axis`")?, rank)?;
    let mut vals = Vec::with_capacity(items.len());
    for v in &items {
        let x = ctx.value_of(v)?;
        vals.push(if new_axis {
            ctx.b.unsqueeze(x, a as i64)?
        } else {
            x
        });
    }
    let y = ctx.b.op1(Op::Concat { axis: a as i64 }, &vals)?;
    Ok(vec![ctx.v(y)])
}

/// SequenceMap: the body once per position, over the tensors at that position of the sequence
/// inputs (and the tensor inputs as they are); each body output makes one output sequence.
pub fn sequence_map(ctx: &mut Ctx, n: &Node) -> Res {
    let body = n.graph("body")?;
    let (first, _) = ctx.seq(n.req(0)?)?;
    let len = first.len();
    let mut others = Vec::new();
    for i in 1..n.num_inputs() {
        let name = n.req(i)?;
        others.push(match ctx.seq(name) {
            Ok((items, _)) if items.len() == len => Ok(items),
            Ok((items, _)) => {
                return Err(format!(
                    "the sequences are of lengths {len} and {} (`{name}`)",
                    items.len()
                )
                .into())
            }
            Err(_) => Err(ctx.get(name)?.clone()),
        });
    }
    let mut outs: Vec<Vec<V>> = vec![Vec::with_capacity(len); body.output.len()];
    for (i, x) in first.iter().enumerate() {
        let mut args = vec![x.clone()];
        for o in &others {
            args.push(match o {
                Ok(items) => items[i].clone(),
                Err(t) => t.clone(),
            });
        }
        for (j, v) in ctx.inline(body, args)?.into_iter().enumerate() {
            outs[j].push(v);
        }
    }
    outs.into_iter()
        .zip(&body.output)
        .map(|(items, o)| {
            let dtype = match items.first() {
                Some(v) => v.dtype(),
                None => crate::onnx::interface::element_dtype(o.r#type.as_ref())?,
            };
            Ok(V::seq(items, dtype))
        })
        .collect()
}

/// Optional: an optional holding the input, or none of the `type` attribute's element type.
pub fn optional(ctx: &mut Ctx, n: &Node) -> Res {
    if let Some(x) = n.input(0) {
        let v = ctx.get(x)?.clone();
        let dtype = v.dtype();
        return Ok(vec![V::optional(Some(v), dtype)]);
    }
    let ty = n
        .type_proto("type")?
        .ok_or("an empty Optional needs the `type` attribute")?;
    let dtype = crate::onnx::interface::element_dtype(Some(ty))?;
    Ok(vec![V::optional(None, dtype)])
}

/// OptionalHasElement: false for none or an absent input, true otherwise (a tensor or sequence
/// counts as an optional holding it, from opset 18).
pub fn optional_has_element(ctx: &mut Ctx, n: &Node) -> Res {
    let has = match n.input(0) {
        None => false,
        Some(x) => !matches!(ctx.get(x)?.known, Some(Known::Opt(None))),
    };
    Ok(vec![V::data(Tensor::scalar(has))])
}

/// OptionalGetElement: what an optional holds (a tensor or sequence is its own element).
pub fn optional_get_element(ctx: &mut Ctx, n: &Node) -> Res {
    let v = ctx.get(n.req(0)?)?;
    match &v.known {
        Some(Known::Opt(Some(item))) => Ok(vec![(**item).clone()]),
        Some(Known::Opt(None)) => Err("the optional holds no value".into()),
        _ => Ok(vec![v.clone()]),
    }
}
