//! 4-bit weights dequantized in blocks read by a product — DequantizeLinear's `block_size`
//! form on int4 and uint4, as onnxruntime's QDQ 4-bit quantizer (and other exporters) write
//! MatMulNBits' weights — become the packed-weight `qdot4`, not an f32 weight eight times
//! the bytes that fold will not make and every run would dequantize.

use egg::Id;
use ir::{ConstValue, DType, Data, Op, Tensor};

use super::{either_layout, info, nodes, rows_by_matrix};
use crate::egraph::lang::{EGraph, EOp};
use crate::egraph::{Expr, Rule};

/// dot(x, (cast(q4) − cast(z))·s) = qdot4(x, packed q4, s, z) for a constant int4 or uint4
/// weight `q4` (`[K, N]`, or `[N, K]` read the other way), its scale and zero point constant
/// over blocks of K (a power of two from 16: DequantizeLinear's blocks, or the largest that
/// holds for per-column or per-tensor ones). Each weight is `(q − z)·s` in f32 either way;
/// signed weights and zero points both move by 8 into the nibbles' 0..=15. Rows `x` f32
/// `[..., K]`, no batch axes.
pub const DEQUANTIZED_DOT4: Rule = Rule {
    name: "dequantized-dot4",
    search: |eg, id| {
        let mut out = Vec::new();
        // Made once: the packing reads the whole weight.
        if nodes(eg, id).any(|(op, _)| matches!(op, Op::Qdot4 { .. })) {
            return out;
        }
        for (op, args) in nodes(eg, id) {
            let Some((x, w, kaxis)) = rows_by_matrix(eg, op, args) else {
                continue;
            };
            if info(eg, x).ty().dtype != DType::F32 || info(eg, id).ty().dtype != DType::F32 {
                continue;
            }
            let read = |w: Id, k: usize| packed(eg, w, k);
            let Some((p, _)) = either_layout(eg, w, kaxis, read) else {
                continue;
            };
            let q = Op::Qdot4 {
                block: p.block,
                quantize_x: false,
            };
            out.push(Expr::op(q, [x.into(), p.bytes, p.scales, p.zeros]));
            break;
        }
        out
    },
};

/// A weight as `qdot4` reads it: nibbles `[N, ⌈K/block⌉·block/2]`, scales and zero points
/// `[N, ⌈K/block⌉]`.
struct Packed {
    block: i64,
    bytes: Expr,
    scales: Expr,
    zeros: Expr,
}

/// A per-weight parameter known at compile time.
enum Param<'a> {
    /// One value.
    Splat(f64),
    /// Constant over blocks of `block` along K: values `[blocks, N]` (K the first axis) or
    /// `[N, blocks]` (K the second), as DequantizeLinear's blocked parameters import:
    /// `reshape(broadcast(c))`, maybe sliced to K.
    Blocks { t: &'a Tensor, block: usize },
    /// A value per weight, laid out as the weight.
    Full(&'a Tensor),
}

impl Param<'_> {
    /// The value for weight (k, n), `kaxis` the weight's K axis.
    fn at(&self, k: usize, n: usize, kaxis: usize) -> f64 {
        match self {
            Param::Splat(v) => *v,
            Param::Blocks { t, block } => {
                let (nb, cols) = if kaxis == 0 {
                    (t.shape()[0], t.shape()[2])
                } else {
                    (t.shape()[1], t.shape()[0])
                };
                let i = if kaxis == 0 {
                    (k / block) * cols + n
                } else {
                    n * nb + k / block
                };
                t.data().get_f64(i)
            }
            Param::Full(t) => {
                let i = if kaxis == 0 {
                    k * t.shape()[1] + n
                } else {
                    n * t.shape()[1] + k
                };
                t.data().get_f64(i)
            }
        }
    }

    /// Whether it is constant over every block of `p` along K (`k` of them in all).
    fn blocks_of(&self, p: usize, (k, n): (usize, usize), kaxis: usize) -> bool {
        match self {
            Param::Splat(_) => true,
            // Blocks of `p` inside the parameter's (or one block for all of K).
            Param::Blocks { block, .. } => block % p == 0 || *block >= k,
            Param::Full(_) => (0..n).all(|j| {
                (0..k).step_by(p).all(|b| {
                    let first = self.at(b, j, kaxis).to_bits();
                    (b..k.min(b + p)).all(|i| self.at(i, j, kaxis).to_bits() == first)
                })
            }),
        }
    }
}

/// The constant tensor class `id` holds (seen through a reshape, which keeps the order).
fn constant(eg: &EGraph, id: Id) -> Option<&Tensor> {
    let direct = |id: Id| {
        eg[id]
            .nodes
            .iter()
            .find_map(|n| match eg.analysis.op(n.op) {
                EOp::Ir(Op::Constant { value }) => Some(&value.tensor),
                _ => None,
            })
    };
    direct(id).or_else(|| {
        nodes(eg, id).find_map(|(op, a)| match op {
            Op::Reshape { .. } => direct(a[0]),
            _ => None,
        })
    })
}

/// Whether a conversion from `dt` to f32 keeps every value (integers of 16 bits or fewer,
/// 16-bit floats).
fn exact(dt: DType) -> bool {
    (dt.is_int() && dt.bits() <= 16) || matches!(dt, DType::F16 | DType::BF16 | DType::F32)
}

/// Class `id`'s static dims.
fn dims(eg: &EGraph, id: Id) -> Option<Vec<usize>> {
    (info(eg, id).ty().shape.dims().iter())
        .map(|d| d.as_const().map(|v| v as usize))
        .collect()
}

/// Parameter class `id` of a weight of static `shape` (K along `kaxis`), when known: a splat,
/// a constant laid out as the weight (through an exact conversion: f16 scales, integer zero
/// points), or [`blocks`].
fn param(eg: &EGraph, id: Id, shape: [usize; 2], kaxis: usize) -> Option<Param<'_>> {
    if let Some(v) = info(eg, id).splat {
        return Some(Param::Splat(v));
    }
    let full = nodes(eg, id)
        .find_map(|(op, a)| match op {
            Op::Cast { .. } if exact(info(eg, a[0]).ty().dtype) => Some(a[0]),
            _ => None,
        })
        .into_iter()
        .chain([id])
        .find_map(|c| constant(eg, c).filter(|t| t.shape() == shape));
    if let Some(t) = full {
        return Some(Param::Full(t));
    }
    let (k, n) = if kaxis == 0 {
        (shape[0], shape[1])
    } else {
        (shape[1], shape[0])
    };
    match blocks(eg, id, kaxis, true, 8)? {
        Param::Blocks { t, block } => {
            let (nb, cols) = if kaxis == 0 {
                (t.shape()[0], t.shape()[2])
            } else {
                (t.shape()[1], t.shape()[0])
            };
            (cols == n && nb * block >= k).then_some(Param::Blocks { t, block })
        }
        _ => None,
    }
}

/// Blocks as DequantizeLinear's import makes them: a constant `[blocks, 1, N]` broadcast to
/// `[blocks, block, N]` and merged into `[K, N]` (K first; else `[N, blocks, 1]` to `[N,
/// blocks, block]` to `[N, K]`), through exact conversions and slices from 0 (to K), in the
/// order the importer and the rewrites leave them. `merged`: above the merge still. Every
/// step keeps each value's coordinates, so weight (k, n) reads entry `k / block` for column n.
fn blocks(eg: &EGraph, id: Id, kaxis: usize, merged: bool, depth: usize) -> Option<Param<'_>> {
    if depth == 0 {
        return None;
    }
    nodes(eg, id).find_map(|(op, a)| match op {
        Op::Cast { .. } if exact(info(eg, a[0]).ty().dtype) => {
            blocks(eg, a[0], kaxis, merged, depth - 1)
        }
        Op::Slice { start, stride, .. }
            if merged
                && start.iter().all(|s| s.as_const() == Some(0))
                && stride.iter().all(|&s| s == 1) =>
        {
            blocks(eg, a[0], kaxis, true, depth - 1)
        }
        Op::Reshape { .. } if merged => {
            let (from, to) = (dims(eg, a[0])?, dims(eg, id)?);
            let ok = match (from.as_slice(), to.as_slice()) {
                (&[p, q, r], &[k, n]) if kaxis == 0 => (k, n) == (p * q, r),
                (&[p, q, r], &[n, k]) => (n, k) == (p, q * r),
                _ => false,
            };
            ok.then(|| blocks(eg, a[0], kaxis, false, depth - 1))?
        }
        Op::Broadcast { dims: along, .. } if !merged && *along == [0, 1, 2] => {
            let wide = dims(eg, id)?;
            // The constant, through a few exact conversions (bounded: a class may hold a
            // conversion of itself).
            let mut c = a[0];
            let mut t = constant(eg, c);
            for _ in 0..depth {
                if t.is_some() {
                    break;
                }
                c = nodes(eg, c).find_map(|(op, b)| match op {
                    Op::Cast { .. } if exact(info(eg, b[0]).ty().dtype) => Some(b[0]),
                    _ => None,
                })?;
                t = constant(eg, c);
            }
            let t = t?;
            let (unit, block) = if kaxis == 0 {
                ([wide[0], 1, wide[2]], wide[1])
            } else {
                ([wide[0], wide[1], 1], wide[2])
            };
            (t.shape() == unit && block > 0).then_some(Param::Blocks { t, block })
        }
        _ => None,
    })
}

/// The int4 or uint4 weight `w` dequantizes, packed for `qdot4` (K along `kaxis`).
fn packed(eg: &EGraph, w: Id, kaxis: usize) -> Option<Packed> {
    let dims = info(eg, w).ty().shape.dims();
    let shape = [dims[0].as_const()? as usize, dims[1].as_const()? as usize];
    let (k, n) = if kaxis == 0 {
        (shape[0], shape[1])
    } else {
        (shape[1], shape[0])
    };
    // The nibbles of cast(q) (and the zero point's class of cast(q) − zero).
    let nibbles = |c: Id| {
        nodes(eg, c).find_map(|(op, a)| match op {
            Op::Cast {
                dtype: DType::F32, ..
            } => constant(eg, a[0])
                .filter(|t| matches!(t.dtype(), DType::U4 | DType::I4) && t.shape() == shape),
            _ => None,
        })
    };
    let weight = |body: Id| -> Option<(&Tensor, Option<Id>)> {
        if let Some(q) = nibbles(body) {
            return Some((q, None));
        }
        nodes(eg, body).find_map(|(op, a)| match op {
            Op::Sub => Some((nibbles(a[0])?, Some(a[1]))),
            _ => None,
        })
    };
    let (q, zero, scale) = nodes(eg, w).find_map(|(op, a)| {
        if *op != Op::Mul {
            return None;
        }
        [(a[0], a[1]), (a[1], a[0])]
            .into_iter()
            .find_map(|(body, scale)| weight(body).map(|(q, z)| (q, z, scale)))
    })?;
    let s = param(eg, scale, shape, kaxis)?;
    let z = match zero {
        Some(z) => param(eg, z, shape, kaxis)?,
        None => Param::Splat(0.0),
    };
    // The largest power of two every parameter is constant over, from 16 (qdot4's least).
    let most = k.next_power_of_two().clamp(16, 1 << 16);
    let block = std::iter::successors(Some(16usize), |p| Some(p * 2))
        .take_while(|&p| p <= most)
        .take_while(|&p| [&s, &z].iter().all(|v| v.blocks_of(p, (k, n), kaxis)))
        .last()?;
    let blocks = k.div_ceil(block);
    // Signed nibbles and zero points move by 8 (the bit pattern's top bit flipped).
    let signed = q.dtype() == DType::I4;
    let (Data::U4(bits) | Data::I4(bits)) = q.data() else {
        return None;
    };
    let flip = if signed { 8u8 } else { 0 };
    let row = blocks * block / 2;
    let mut bytes = vec![0u8; n * row];
    for (i, &b) in bits.iter().enumerate() {
        let (kk, nn) = if kaxis == 0 {
            (i / n, i % n)
        } else {
            (i % k, i / k)
        };
        bytes[nn * row + kk / 2] |= ((b ^ flip) & 15) << (4 * (kk % 2));
    }
    let shift = if signed { 8.0 } else { 0.0 };
    let per_block = |p: &Param, add: f64| -> Vec<f32> {
        (0..n)
            .flat_map(|j| (0..blocks).map(move |b| (j, b)))
            .map(|(j, b)| (p.at(b * block, j, kaxis) + add) as f32)
            .collect()
    };
    // A zero point or scale that is not a finite f32 leaves the f32 weight (and its error);
    // so does a signed weight's zero point that is no integer (moved by 8, it would round).
    let (scales, zeros) = (per_block(&s, 0.0), per_block(&z, shift));
    let whole = !signed || zeros.iter().all(|v| v.fract() == 0.0 && v.abs() < 65536.0);
    if !whole || !scales.iter().chain(&zeros).all(|v| v.is_finite()) {
        return None;
    }
    let konst = |shape: Vec<usize>, data: Data| -> Option<Expr> {
        let tensor = Tensor::new(shape, data).ok()?;
        let value = ConstValue { name: None, tensor };
        Some(Expr::op(Op::Constant { value }, []))
    };
    Some(Packed {
        block: block as i64,
        bytes: konst(vec![n, row], Data::U8(bytes))?,
        scales: konst(vec![n, blocks], Data::F32(scales))?,
        zeros: konst(vec![n, blocks], Data::F32(zeros))?,
    })
}
