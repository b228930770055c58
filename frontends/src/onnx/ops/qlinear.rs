//! com.microsoft's QOperator ops — what onnxruntime's `quantize_static` writes with
//! `quant_format=QOperator` around QLinearConv and QLinearMatMul, and what the ONNX model
//! zoo's int8 models carry: each is its float op between dequantized inputs and a quantized
//! output, imported as exactly that (DequantizeLinear, the float op, QuantizeLinear through
//! their own importers; QLinearWhere passes its condition through), so the QDQ form's
//! rewrites take them from there. QGemm is the integer product QLinearMatMul is, with Gemm's
//! transposes, `alpha` and an i32 bias; and MatMulIntegerToFloat and DynamicQuantizeMatMul,
//! onnxruntime's fusions of a dynamically quantized product in the models it saves
//! optimized, are the ops they fuse.

use ir::{DType, Value};

use super::quant::{broadcastable, check_scale, check_zero_point, minus_zero_point, saturate};
use super::{one, Res};
use crate::onnx::import::{Ctx, Node};
use crate::onnx::proto::{AttributeProto, NodeProto};
use crate::onnx::registry;
use crate::onnx::OpError;

type R<T> = Result<T, OpError>;

/// How a QOperator op reads its inputs: the positions of its quantized operands (each a
/// value, its scale and its zero point), of its output's scale and zero point, and the
/// float op (and its opset version) between them.
struct Form<'a> {
    /// An input passed to the float op first, as it is (QLinearWhere's condition).
    lead: Option<usize>,
    operands: Vec<usize>,
    out: usize,
    float: &'a str,
    version: i64,
}

/// A QOperator op: DequantizeLinear of each operand, the float op, QuantizeLinear.
pub fn qlinear(ctx: &mut Ctx, n: &Node) -> Res {
    let form = match n.op() {
        "QLinearAdd" | "QLinearMul" => Form {
            lead: None,
            operands: vec![0, 3],
            out: 6,
            float: if n.op() == "QLinearAdd" { "Add" } else { "Mul" },
            version: 14,
        },
        "QLinearSigmoid"
        | "QLinearLeakyRelu"
        | "QLinearSoftmax"
        | "QLinearGlobalAveragePool"
        | "QLinearAveragePool"
        | "QLinearReduceMean" => Form {
            lead: None,
            operands: vec![0],
            out: 3,
            float: &n.op()["QLinear".len()..],
            // Softmax's semantics are those of the opset its attribute names (the 2-d
            // flattening before 13); ReduceMean's are opset 13's (`axes` an attribute).
            version: match n.op() {
                "QLinearSoftmax" => n.int("opset")?.ok_or("missing attribute `opset`")?,
                "QLinearReduceMean" => 13,
                _ => 19,
            },
        },
        // Y's scale and zero point first, then each input's triple.
        "QLinearConcat" => {
            let count = n.num_inputs();
            if count < 5 || !(count - 2).is_multiple_of(3) {
                return Err(format!(
                    "QLinearConcat takes Y's scale and zero point and triples of inputs, got {count} inputs"
                )
                .into());
            }
            Form {
                lead: None,
                operands: (2..count).step_by(3).collect(),
                out: 0,
                float: "Concat",
                version: 13,
            }
        }
        // The condition, then X's and Y's triples, then Z's scale and zero point.
        "QLinearWhere" => Form {
            lead: Some(0),
            operands: vec![1, 4],
            out: 7,
            float: "Where",
            version: 16,
        },
        other => return Err(format!("`{other}` is not a QOperator op kiln knows").into()),
    };
    // A channels-last image (NHWC) pools as NCHW between two transposes.
    let channels_last = n.int_or("channels_last", 0)? != 0;
    let mut inputs: Vec<String> = form
        .lead
        .map(|i| n.req(i))
        .transpose()?
        .into_iter()
        .map(String::from)
        .collect();
    for (i, &at) in form.operands.iter().enumerate() {
        let x = n.req(at)?;
        let zero = zero_point(ctx, n, at + 2, x)?;
        let args = vec![x.to_string(), n.req(at + 1)?.to_string(), zero];
        let mut v = call(
            ctx,
            n,
            "DequantizeLinear",
            21,
            args,
            vec![],
            &format!("dq{i}"),
        )?;
        if channels_last {
            v = last_to_first(ctx, v, true)?;
        }
        inputs.push(define(ctx, n, &format!("x{i}"), v));
    }
    // The float op keeps the node's own attributes (axis, alpha, kernel_shape, ...) but
    // onnxruntime's own.
    let attrs: Vec<AttributeProto> = (n.proto.attribute.iter())
        .filter(|a| !matches!(a.name.as_str(), "channels_last" | "opset"))
        .cloned()
        .collect();
    let mut y = call(ctx, n, form.float, form.version, inputs, attrs, "float")?;
    if channels_last {
        y = last_to_first(ctx, y, false)?;
    }
    let y = define(ctx, n, "y", y);
    let zero = zero_point(ctx, n, form.out + 1, n.req(form.operands[0])?)?;
    let args = vec![y, n.req(form.out)?.to_string(), zero];
    let q = call(ctx, n, "QuantizeLinear", 21, args, vec![], "q")?;
    one(ctx, q)
}

/// QGemm: `(A − a_zero)·(B − b_zero)` summed in i32 (A and B transposed as `transA` and
/// `transB` say), plus the optional i32 bias C (after the conversion to f32, as
/// `quant::requantize`), scaled by `alpha·a_scale·b_scale` (B's scale
/// and zero point per tensor or per column) — divided by `y_scale`, rounded and saturated
/// around `y_zero_point` when those are given, f32 otherwise, as onnxruntime computes it.
pub fn qgemm(ctx: &mut Ctx, n: &Node) -> Res {
    let names: Vec<&str> = (0..6).map(|i| n.req(i)).collect::<R<_>>()?;
    let mut v = Vec::new();
    for nm in &names {
        v.push(ctx.ir(nm)?);
    }
    let c = n.input(6).map(|c| ctx.ir(c)).transpose()?;
    let y_scale = n.input(7).map(|s| ctx.ir(s)).transpose()?;
    let y_zero = n.input(8).map(|z| ctx.ir(z)).transpose()?;
    check_zero_point(&ctx.b, v[0], Some(v[2]), "A")?;
    check_zero_point(&ctx.b, v[3], Some(v[5]), "B")?;
    check_scale(ctx, names[1], super::quant::Scaling::Multiplies)?;
    check_scale(ctx, names[4], super::quant::Scaling::Multiplies)?;
    if let Some(s) = n.input(7) {
        check_scale(ctx, s, super::quant::Scaling::Divides)?;
    }
    let (trans_a, trans_b) = (n.int_or("transA", 0)? != 0, n.int_or("transB", 0)? != 0);
    let alpha = n.float_or("alpha", 1.0)? as f64;
    let b = &mut ctx.b;
    for (x, what) in [(v[0], "A"), (v[3], "B")] {
        if b.rank(x) != 2 {
            return Err(format!("QGemm's {what} must be a matrix, got {}", b.shape(x)).into());
        }
    }
    // B's zero point runs along its columns: axis 1 of [K, N], axis 0 of [N, K].
    let a = minus_zero_point(b, v[0], Some(v[2]), 0)?;
    let bm = minus_zero_point(b, v[3], Some(v[5]), usize::from(!trans_b))?;
    let a = if trans_a { b.transpose(a, &[1, 0])? } else { a };
    let bm = if trans_b {
        b.transpose(bm, &[1, 0])?
    } else {
        bm
    };
    let acc = b.matmul(a, bm)?;
    let shape = b.shape(acc).clone();
    // The output scale as onnxruntime forms it: alpha·a_scale·b_scale (per column), over
    // y_scale.
    let sa = broadcastable(b, v[1], &shape, Ok(0), 0)?;
    let sb = broadcastable(b, v[4], &shape, Ok(1), 0)?;
    let al = b.scalar(alpha, DType::F32)?;
    let al = b.broadcast_to(al, &shape)?;
    let sa = b.broadcast_to(sa, &shape)?;
    let sb = b.broadcast_to(sb, &shape)?;
    let m = b.mul(al, sa)?;
    let mut m = b.mul(m, sb)?;
    if let Some(ys) = y_scale {
        let ys = broadcastable(b, ys, &shape, Ok(0), 0)?;
        let ys = b.broadcast_to(ys, &shape)?;
        m = b.div(m, ys)?;
    }
    // The bias after the sums' conversion (as `requantize` adds it: the same number for
    // sums and bias within 2^24).
    let mut accf = b.cast(acc, DType::F32)?;
    if let Some(c) = c {
        if b.dtype(c) != DType::I32 {
            return Err(format!("QGemm's bias C is {}, not i32", b.dtype(c)).into());
        }
        let c = b.cast(c, DType::F32)?;
        let c = b.broadcast_to(c, &shape)?;
        accf = b.add(accf, c)?;
    }
    let y = b.mul(accf, m)?;
    let y = match (y_scale, y_zero) {
        (Some(_), Some(z)) => {
            let out = b.dtype(z);
            saturate(b, y, Some(z), out)?
        }
        (None, Some(_)) => return Err("QGemm's y_zero_point needs y_scale".into()),
        _ => y,
    };
    one(ctx, y)
}

/// The name of a zero point at input `at`, or of a zero of `like`'s type where it is absent
/// (the ops' default).
fn zero_point(ctx: &mut Ctx, n: &Node, at: usize, like: &str) -> R<String> {
    if let Some(z) = n.input(at) {
        return Ok(z.to_string());
    }
    let dt = ctx.ty(like)?.dtype;
    let z = ctx.b.scalar(0.0, dt)?;
    Ok(define(ctx, n, &format!("zero{at}"), z))
}

/// Names `v` after the node's output and `what` (unique to the node) for the importers
/// called on it.
fn define(ctx: &mut Ctx, n: &Node, what: &str, v: Value) -> String {
    let base = n.proto.output.first().map_or("", String::as_str);
    let name = format!("{base}#{what}");
    let value = ctx.v(v);
    ctx.env.insert(name.clone(), value);
    name
}

/// Imports ai.onnx `op` (as of opset `version`) on the named `inputs` with `attrs`: its
/// first output.
fn call(
    ctx: &mut Ctx,
    n: &Node,
    op: &str,
    version: i64,
    inputs: Vec<String>,
    attrs: Vec<AttributeProto>,
    what: &str,
) -> R<Value> {
    let f = registry::lookup("", op, version)
        .ok_or_else(|| format!("no {op} importer at opset {version}"))?;
    let base = n.proto.output.first().map_or("", String::as_str);
    let proto = NodeProto {
        op_type: op.to_string(),
        name: n.proto.name.clone(),
        input: inputs,
        output: vec![format!("{base}#{what}")],
        attribute: attrs,
        ..Default::default()
    };
    let node = Node {
        proto: &proto,
        version,
    };
    let outs = f(ctx, &node)?;
    let first = outs
        .into_iter()
        .next()
        .ok_or_else(|| format!("{op} gave no output"))?;
    ctx.value_of(&first)
}

/// A channels-last image `[N, ..., C]` as channels-first `[N, C, ...]` (or back, `to_first`
/// false).
fn last_to_first(ctx: &mut Ctx, v: Value, to_first: bool) -> R<Value> {
    let b = &mut ctx.b;
    let r = b.rank(v);
    if r < 3 {
        return Err(format!(
            "a channels-last image needs rank 3 or more, got {}",
            b.shape(v)
        )
        .into());
    }
    let perm: Vec<i64> = if to_first {
        [0, r - 1]
            .into_iter()
            .chain(1..r - 1)
            .map(|a| a as i64)
            .collect()
    } else {
        [0].into_iter()
            .chain(2..r)
            .chain([1])
            .map(|a| a as i64)
            .collect()
    };
    Ok(b.transpose(v, &perm)?)
}

/// com.microsoft MatMulIntegerToFloat (onnxruntime's fusion of a dynamically quantized
/// product, in the models it saves optimized): `(A − a_zero)·(B − b_zero)` summed in i32,
/// times `a_scale·b_scale` (B's per tensor or per column), plus the optional bias.
pub fn matmul_integer_to_float(ctx: &mut Ctx, n: &Node) -> Res {
    let a = ctx.ir(n.req(0)?)?;
    let bm = ctx.ir(n.req(1)?)?;
    let sa = ctx.ir(n.req(2)?)?;
    let sb = ctx.ir(n.req(3)?)?;
    let za = n.input(4).map(|z| ctx.ir(z)).transpose()?;
    let zb = n.input(5).map(|z| ctx.ir(z)).transpose()?;
    let bias = n.input(6).map(|z| ctx.ir(z)).transpose()?;
    check_scale(ctx, n.req(2)?, super::quant::Scaling::Multiplies)?;
    check_scale(ctx, n.req(3)?, super::quant::Scaling::Multiplies)?;
    let y = integer_to_float(&mut ctx.b, (a, za, sa), (bm, zb, sb), bias)?;
    one(ctx, y)
}

/// com.microsoft DynamicQuantizeMatMul: A (f32) quantized to u8 as DynamicQuantizeLinear
/// does, then [`matmul_integer_to_float`] with B (its scale and zero point per tensor or per
/// column) and the optional bias.
pub fn dynamic_quantize_matmul(ctx: &mut Ctx, n: &Node) -> Res {
    let a = ctx.ir(n.req(0)?)?;
    let bm = ctx.ir(n.req(1)?)?;
    let sb = ctx.ir(n.req(2)?)?;
    let zb = n.input(3).map(|z| ctx.ir(z)).transpose()?;
    let bias = n.input(4).map(|z| ctx.ir(z)).transpose()?;
    check_scale(ctx, n.req(2)?, super::quant::Scaling::Multiplies)?;
    let b = &mut ctx.b;
    let a = b.cast(a, DType::F32)?;
    let q = b.op(ir::Op::DynamicQuantize, &[a])?;
    let y = integer_to_float(b, (q[0], Some(q[2]), q[1]), (bm, zb, sb), bias)?;
    one(ctx, y)
}

/// The product of two quantized operands (each a value, its zero point and its scale) in
/// i32, converted, scaled by the scales' product and shifted by `bias` — the form
/// onnxruntime's dynamic quantizer writes, which the optimizer makes one 8-bit product.
fn integer_to_float(
    b: &mut ir::Builder,
    (a, za, sa): (Value, Option<Value>, Value),
    (bm, zb, sb): (Value, Option<Value>, Value),
    bias: Option<Value>,
) -> R<Value> {
    check_zero_point(b, a, za, "A")?;
    check_zero_point(b, bm, zb, "B")?;
    let (ra, rb) = (b.rank(a), b.rank(bm));
    if ra == 0 || rb < 2 {
        return Err(format!("A {} and B {} do not multiply", b.shape(a), b.shape(bm)).into());
    }
    // A's zero point runs along its rows, B's along its columns.
    let a = minus_zero_point(b, a, za, ra.saturating_sub(2))?;
    let bm = minus_zero_point(b, bm, zb, rb - 1)?;
    let acc = b.matmul(a, bm)?;
    let shape = b.shape(acc).clone();
    let r = shape.rank();
    let sa = broadcastable(b, sa, &shape, Ok(r.saturating_sub(2)), 0)?;
    let sb = broadcastable(b, sb, &shape, Ok(r - 1), 0)?;
    let m = b.mul(sa, sb)?;
    let m = b.broadcast_to(m, &shape)?;
    let accf = b.cast(acc, DType::F32)?;
    let mut y = b.mul(accf, m)?;
    if let Some(bias) = bias {
        let bias = b.broadcast_to(bias, &shape)?;
        y = b.add(y, bias)?;
    }
    Ok(y)
}
