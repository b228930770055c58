//! Rule sets, one file per topic; `README.md` states the invariants every rule keeps. This
//! module holds the matching helpers the rules share and the stages the passes run.

pub mod algebra;
pub mod int4;
pub mod layout;
pub mod quantize;
pub mod recognize;

use egg::Id;
use ir::{ConstValue, DType, Data, Op, Shape, Tensor};

use super::lang::{EGraph, EOp, Info};
use super::{Expr, Stage};

/// Algebraic simplification and layout normalization, run together.
pub static SIMPLIFY: Stage = Stage {
    name: "simplify",
    rules: &[
        algebra::MUL_ONE,
        algebra::ADD_ZERO,
        algebra::SUB_ZERO,
        algebra::DIV_ONE,
        algebra::NEG_NEG,
        algebra::EXP_LOG,
        algebra::LOG_EXP,
        algebra::DIV_CONST,
        algebra::SCALE_OUT_OF_DOT,
        algebra::SCALE_INTO_DOT,
        algebra::DOT_OF_SPLAT,
        algebra::SPLAT_CONSTANT,
        algebra::AFFINE_CHAIN,
        layout::TRANSPOSE_TRANSPOSE,
        layout::TRANSPOSE_IDENTITY,
        layout::RESHAPE_RESHAPE,
        layout::RESHAPE_IDENTITY,
        layout::TRANSPOSE_INTO_DOT,
        layout::SINK_BROADCAST,
    ],
};

/// Quantized arithmetic toward the fast products.
pub static QUANTIZE: Stage = Stage {
    name: "quantize",
    rules: &[
        quantize::INT_PRODUCT_F32,
        quantize::INT_DOT_EXACT,
        quantize::INT8_DOT,
        quantize::INT8_CONV,
        quantize::UNSIGNED_ACTIVATIONS,
        quantize::DEQUANTIZED_DOT,
        int4::DEQUANTIZED_DOT4,
        quantize::DEQUANTIZED_CONV,
        quantize::SATURATED_CLAMP,
        quantize::REQUANTIZE,
    ],
};

/// Variants of norms, softmax and activations toward their canonical forms.
pub static RECOGNIZE: Stage = Stage {
    name: "recognize",
    rules: &[
        recognize::POW_CONST,
        recognize::RECIPROCALS,
        recognize::SIGMOID,
    ],
};

/// The IR nodes of class `id`, with their operand classes.
pub fn nodes(eg: &EGraph, id: Id) -> impl Iterator<Item = (&Op, &[Id])> {
    eg[id]
        .nodes
        .iter()
        .filter_map(|n| match eg.analysis.op(n.op) {
            EOp::Ir(op) => Some((op, n.children.as_slice())),
            EOp::Proj(_) => None,
        })
}

/// The operands of the first node of class `id` whose op satisfies `pred`.
pub fn find(eg: &EGraph, id: Id, pred: impl Fn(&Op) -> bool) -> Option<(&Op, &[Id])> {
    nodes(eg, id).find(|(op, _)| pred(op))
}

pub fn info(eg: &EGraph, id: Id) -> &Info {
    &eg[id].data
}

/// A product of rows by a matrix: `dot(x, w)` without batch axes, contracting x's last axis
/// and axis 0 or 1 of a 2-D `w` — `(x, w, w's contracted axis)`.
pub fn rows_by_matrix(eg: &EGraph, op: &Op, args: &[Id]) -> Option<(Id, Id, usize)> {
    let Op::Dot {
        lhs_batch,
        rhs_batch,
        lhs_contract,
        rhs_contract,
    } = op
    else {
        return None;
    };
    let &[x, w] = args else { return None };
    let xr = info(eg, x).ty().shape.rank() as i64;
    let plain = lhs_batch.is_empty()
        && rhs_batch.is_empty()
        && *lhs_contract == [xr - 1]
        && info(eg, w).ty().shape.rank() == 2;
    match rhs_contract.as_slice() {
        &[k @ (0 | 1)] if plain => Some((x, w, k as usize)),
        _ => None,
    }
}

/// `f` of matrix class `w` contracted on `axis`, or else of `t` on the other axis where `w`
/// is `t` transposed (MatMul of a Transpose, Gemm's transB): its answer and the axis it
/// read.
pub fn either_layout<T>(
    eg: &EGraph,
    w: Id,
    axis: usize,
    mut f: impl FnMut(Id, usize) -> Option<T>,
) -> Option<(T, usize)> {
    if let Some(v) = f(w, axis) {
        return Some((v, axis));
    }
    nodes(eg, w).find_map(|(op, a)| match op {
        Op::Transpose { perm } if *perm == [1, 0] => Some((f(a[0], 1 - axis)?, 1 - axis)),
        _ => None,
    })
}

/// Whether class `id` holds real numbers wide enough for real-arithmetic identities (f32 and
/// f64): in 16-bit floats one rounding more or less is already a relative 1e-3, the tolerance
/// models are held to, and 8- or 4-bit floats change by much more than that.
pub fn is_real(eg: &EGraph, id: Id) -> bool {
    matches!(info(eg, id).ty().dtype, ir::DType::F32 | ir::DType::F64)
}

/// Whether every element of class `id` is `v`.
pub fn is_splat(eg: &EGraph, id: Id, v: f64) -> bool {
    info(eg, id).splat == Some(v)
}

/// A scalar constant `v` of `dtype`, broadcast to `shape`.
pub fn splat_expr(v: f64, dtype: DType, shape: &Shape) -> Option<Expr> {
    let t = Tensor::new(vec![], Data::from_f64s(dtype, &[v])).ok()?;
    let c = Expr::op(
        Op::Constant {
            value: ConstValue {
                name: None,
                tensor: t,
            },
        },
        [],
    );
    if shape.rank() == 0 {
        return Some(c);
    }
    Some(Expr::op(
        Op::Broadcast {
            dims: vec![],
            shape: shape.clone(),
        },
        [c],
    ))
}
