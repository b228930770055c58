//! Type rules of the quantized products: `qdot` and `qconv` (8-bit operands summed in i32)
//! and `qdot4` (f32 rows by a blocked 4-bit weight).

use super::{rule_conv, rule_dot, Rule};
use crate::dim::Dim;
use crate::dtype::DType;
use crate::shape::{Shape, TensorType};

/// `qdot`: dot's rule on the widened operands (lhs u8 or i8, rhs i8, a scalar zero point of
/// lhs's type); the result f32.
pub(crate) fn rule_qdot(
    ins: &[TensorType],
    lhs_batch: &[i64],
    rhs_batch: &[i64],
    lhs_contract: &[i64],
    rhs_contract: &[i64],
) -> Rule {
    let out = rule_dot(
        &widened("qdot", ins)?,
        lhs_batch,
        rhs_batch,
        lhs_contract,
        rhs_contract,
    )?;
    Ok(vec![TensorType::new(DType::F32, out[0].shape.clone())])
}

/// `qconv`: conv's rule on the widened operands (x u8 or i8, w i8, a scalar zero point of
/// x's type); the result f32.
pub(crate) fn rule_qconv(
    ins: &[TensorType],
    stride: &[i64],
    dilation: &[i64],
    pad_low: &[i64],
    pad_high: &[i64],
    groups: &i64,
) -> Rule {
    let out = rule_conv(
        &widened("qconv", ins)?,
        stride,
        dilation,
        pad_low,
        pad_high,
        groups,
    )?;
    Ok(vec![TensorType::new(DType::F32, out[0].shape.clone())])
}

/// An 8-bit product's operands (u8 or i8 by i8, a scalar zero point of the first's dtype)
/// as the i32 values it sums.
fn widened(op: &str, ins: &[TensorType]) -> Result<[TensorType; 2], String> {
    let (l, r, z) = (&ins[0], &ins[1], &ins[2]);
    if !matches!(l.dtype, DType::U8 | DType::I8) || r.dtype != DType::I8 {
        return Err(format!(
            "{op} takes u8 or i8 by i8 operands, got {} and {}",
            l.dtype, r.dtype
        ));
    }
    if z.dtype != l.dtype || z.rank() != 0 {
        return Err(format!(
            "{op}'s zero point must be a {} scalar, got {z}",
            l.dtype
        ));
    }
    Ok([l, r].map(|t| TensorType::new(DType::I32, t.shape.clone())))
}

/// `qdot4 {block}(x, w, scale, zero)`: x f32 `[..., K]`; w u8 `[N, ceil(K/block)·block/2]`,
/// two 4-bit values a byte (low first); scale and zero f32 `[N, ceil(K/block)]`; the result
/// f32 `[..., N]`.
pub(crate) fn rule_qdot4(ins: &[TensorType], block: &i64, _quantize_x: &bool) -> Rule {
    let block = *block;
    let (x, w, s, z) = (&ins[0], &ins[1], &ins[2], &ins[3]);
    if !(16..=1 << 16).contains(&block) || block & (block - 1) != 0 {
        return Err(format!(
            "qdot4's block is {block}, not a power of two from 16 to 65536"
        ));
    }
    if x.dtype != DType::F32
        || w.dtype != DType::U8
        || s.dtype != DType::F32
        || z.dtype != DType::F32
    {
        return Err(format!(
            "qdot4 takes f32 rows, u8 packed weights and f32 scales and zero points, got {}, {}, {} and {}",
            x.dtype, w.dtype, s.dtype, z.dtype
        ));
    }
    if x.rank() == 0 || w.rank() != 2 || s.rank() != 2 || z.rank() != 2 {
        return Err(format!(
            "qdot4 takes rows [..., K] and a weight, scales and zero points of rank 2, got {x}, {w}, {s} and {z}"
        ));
    }
    let n = w.shape.dim(0);
    let k = x.shape.dim(x.rank() - 1);
    // ceil(K / block) blocks of block/2 bytes.
    let blocks = k
        .add(&Dim::Const(block - 1))
        .and_then(|d| d.floor_div(&Dim::Const(block)))
        .map_err(|e| e.to_string())?;
    let bytes = blocks
        .mul(&Dim::Const(block / 2))
        .map_err(|e| e.to_string())?;
    // Exactly these dims (the kernel trusts them: a symbolic K must be the weight's own).
    let same = |a: &Dim, b: &Dim| a == b;
    if !same(w.shape.dim(1), &bytes) {
        return Err(format!(
            "qdot4's weight {w} needs {bytes} bytes a row for K = {k} in blocks of {block}"
        ));
    }
    for (t, what) in [(s, "scales"), (z, "zero points")] {
        if !same(t.shape.dim(0), n) || !same(t.shape.dim(1), &blocks) {
            return Err(format!(
                "qdot4's {what} {t} must be [{n}, {blocks}] for the weight {w}"
            ));
        }
    }
    let mut dims = x.shape.dims()[..x.rank() - 1].to_vec();
    dims.push(n.clone());
    Ok(vec![TensorType::new(DType::F32, Shape::new(dims))])
}
