//! The op table: every operation of the IR declared once, with its mnemonic, kind, operand count,
//! attributes and type rule. The `Op` enum, its printer and parser hooks and its type inference
//! are all generated from this one table, so adding an op is adding a row.

use crate::attr::{Attr, AttrCtx, ConstValue, Lit, PadMode, ReduceKind, ScatterReduction};
use crate::dim::Dim;
use crate::dtype::{DType, DTypeSet};
use crate::infer::*;
use crate::region::Region;
use crate::shape::{Shape, TensorType};

/// How many operands an op takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arity {
    Exactly(usize),
    AtLeast(usize),
}

impl Arity {
    pub fn accepts(self, n: usize) -> bool {
        match self {
            Arity::Exactly(k) => n == k,
            Arity::AtLeast(k) => n >= k,
        }
    }
}

impl std::fmt::Display for Arity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arity::Exactly(1) => write!(f, "1 operand"),
            Arity::Exactly(k) => write!(f, "{k} operands"),
            Arity::AtLeast(k) => write!(f, "at least {k} operands"),
        }
    }
}

/// The family an op belongs to; passes and backends dispatch on it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum OpKind {
    /// Graph inputs and constants: no operands.
    Source,
    /// One operand, applied element by element.
    Unary,
    /// Two operands of identical type, element by element.
    Binary,
    /// `select`: a bool condition and two operands of identical type.
    Ternary,
    /// Element type conversion.
    Cast,
    /// Data movement without arithmetic: reshape, transpose, broadcast, slice, pad, concat,
    /// gather and scatter.
    Movement,
    /// Reductions over axes.
    Reduce,
    /// Contractions: `dot` and `conv`.
    Contraction,
    /// Sliding-window reductions (pooling).
    Window,
    /// Sorting: `topk`.
    Sort,
    /// Decision trees: `tree_walk`.
    Tree,
    /// Recurrent layers over a whole sequence: `lstm`, `gru`, `rnn`.
    Recurrent,
    /// Kernel nodes that own a region: `fused`.
    Kernel,
    /// Control flow over a region: `loop`.
    Control,
    /// Results whose size depends on the data (`nonzero`, `nms`, `unique`): each defines
    /// the symbol `count`, bound when the node runs.
    Dynamic,
}

macro_rules! attr_out {
    ($out:ident, $f:ident) => {
        $out.push((stringify!($f), Attr::to_lit($f)))
    };
    ($out:ident, $f:ident, default($($d:tt)*)) => {
        if *$f != $($d)* {
            $out.push((stringify!($f), Attr::to_lit($f)))
        }
    };
    ($out:ident, $f:ident, result($($d:tt)*)) => {
        let _ = $f;
    };
    ($out:ident, $f:ident, region()) => {
        let _ = $f;
    };
}

macro_rules! attr_in {
    ($attrs:ident, $ctx:ident, $f:ident, $t:ty) => {
        take_attr::<$t>($attrs, stringify!($f), $ctx)?
            .ok_or_else(|| format!("missing attribute `{}`", stringify!($f)))?
    };
    ($attrs:ident, $ctx:ident, $f:ident, $t:ty, default($($d:tt)*)) => {
        take_attr::<$t>($attrs, stringify!($f), $ctx)?.unwrap_or_else(|| $($d)*)
    };
    ($attrs:ident, $ctx:ident, $f:ident, $t:ty, result($($d:tt)*)) => {
        ($($d)*)($ctx.results)?
    };
    ($attrs:ident, $ctx:ident, $f:ident, $t:ty, region()) => {
        $ctx.region
            .clone()
            .ok_or_else(|| "`fused` needs a body block after its type".to_string())?
    };
}

fn take_attr<T: Attr>(
    attrs: &mut Vec<(String, Lit)>,
    name: &str,
    ctx: &AttrCtx,
) -> Result<Option<T>, String> {
    match attrs.iter().position(|(n, _)| n == name) {
        None => Ok(None),
        Some(i) => {
            let (_, lit) = attrs.remove(i);
            T::from_lit(&lit, ctx)
                .map(Some)
                .map_err(|e| format!("attribute `{name}`: {e}"))
        }
    }
}

macro_rules! ops {
    ($(
        $(#[doc = $doc:literal])*
        $var:ident = $mn:literal, $kind:ident, $arity:expr
            $(, { $( $f:ident : $t:ty $( = $how:ident ( $($hx:tt)* ) )? ),* $(,)? })?
            => $rule:expr;
    )*) => {
        /// An operation of the IR. See the table in `ops.rs` for each op's semantics.
        #[derive(Clone, PartialEq, Eq, Hash, Debug)]
        pub enum Op {
            $( $(#[doc = $doc])* $var $({ $( $f: $t ),* })? ),*
        }

        impl Op {
            /// Every mnemonic, in table order.
            pub const MNEMONICS: &'static [&'static str] = &[$($mn),*];

            /// The name of the op in `.kir` text.
            pub fn mnemonic(&self) -> &'static str {
                match self { $( Op::$var { .. } => $mn, )* }
            }

            pub fn kind(&self) -> OpKind {
                match self { $( Op::$var { .. } => OpKind::$kind, )* }
            }

            pub fn arity(&self) -> Arity {
                match self { $( Op::$var { .. } => $arity, )* }
            }

            /// The op's documentation line from the table.
            pub fn doc_of(mnemonic: &str) -> Option<&'static str> {
                match mnemonic { $( $mn => Some(concat!($($doc, "\n"),*).trim()), )* _ => None }
            }

            /// Result types from operand types, or why the operands are not acceptable.
            pub fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
                let arity = self.arity();
                if !arity.accepts(inputs.len()) {
                    return Err(format!(
                        "`{}` takes {arity}, got {}",
                        self.mnemonic(),
                        inputs.len()
                    ));
                }
                let out = match self {
                    $( Op::$var { $($($f),*)? } => ($rule)(inputs $($(, $f)*)?), )*
                }?;
                for t in &out {
                    check_result_type(t)?;
                }
                Ok(out)
            }

            /// The attributes that text shows, in table order; defaults and attributes implied by
            /// the result types are left out.
            pub fn attrs(&self) -> Vec<(&'static str, Lit)> {
                #[allow(unused_mut)]
                let mut out = Vec::new();
                match self {
                    $( Op::$var { $($($f),*)? } => { $($( attr_out!(out, $f $(, $how($($hx)*))?); )*)? } )*
                }
                out
            }

            /// Builds an op from its mnemonic and attribute literals; `Ok(None)` for an unknown
            /// mnemonic. Every attribute must be consumed.
            pub fn from_text(
                mnemonic: &str,
                mut attrs: Vec<(String, Lit)>,
                ctx: &AttrCtx,
            ) -> Result<Option<Op>, String> {
                let known: &[&str] = match mnemonic {
                    $( $mn => &[$($(stringify!($f)),*)?], )*
                    _ => return Ok(None),
                };
                if let Some((name, _)) = attrs.iter().find(|(n, _)| !known.contains(&n.as_str())) {
                    let has = if known.is_empty() {
                        "it has none".to_string()
                    } else {
                        format!("it has {}", known.join(", "))
                    };
                    return Err(format!("`{mnemonic}` has no attribute `{name}` ({has})"));
                }
                #[allow(unused)]
                let a = &mut attrs;
                let op = match mnemonic {
                    $( $mn => Op::$var $({ $( $f: attr_in!(a, ctx, $f, $t $(, $how($($hx)*))?) ),* })?, )*
                    _ => return Ok(None),
                };
                if let Some((name, _)) = attrs.first() {
                    return Err(format!("`{mnemonic}` has no attribute `{name}`"));
                }
                Ok(Some(op))
            }
        }
    };
}

fn result_type(results: &[TensorType]) -> Result<TensorType, String> {
    results
        .first()
        .cloned()
        .ok_or_else(|| "missing result type".to_string())
}

fn result_shape(results: &[TensorType]) -> Result<Shape, String> {
    result_type(results).map(|t| t.shape)
}

fn result_dtype(results: &[TensorType]) -> Result<DType, String> {
    result_type(results).map(|t| t.dtype)
}

use Arity::{AtLeast, Exactly};

ops! {
    /// Graph input `name`, of the type written after the colon.
    Param = "param", Source, Exactly(0), { name: String, ty: TensorType = result(result_type) }
        => rule_param;
    /// A constant tensor: inline elements, a splat, or `@name` of a module constant.
    Constant = "constant", Source, Exactly(0), { value: ConstValue } => rule_constant;
    /// Counts 0, 1, 2, ... along `axis`, repeated along the other axes.
    Iota = "iota", Source, Exactly(0), { axis: i64, ty: TensorType = result(result_type) }
        => rule_iota;
    /// The values of dimension expressions as an i64 vector, evaluated when the graph runs
    /// (what ONNX `Shape` becomes when dims are symbolic).
    Dims = "dims", Source, Exactly(0), { values: Vec<Dim> } => rule_dims;

    /// -x
    Neg = "neg", Unary, Exactly(1) => unary(DTypeSet::SIGNED);
    /// |x|
    Abs = "abs", Unary, Exactly(1) => unary(DTypeSet::NUM);
    /// -1, 0 or 1 (NaN stays NaN)
    Sign = "sign", Unary, Exactly(1) => unary(DTypeSet::NUM);
    /// e^x
    Exp = "exp", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// natural logarithm
    Log = "log", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// square root
    Sqrt = "sqrt", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// 1/sqrt(x)
    Rsqrt = "rsqrt", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// 1/x
    Recip = "recip", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// sine
    Sin = "sin", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// cosine
    Cos = "cos", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// tangent
    Tan = "tan", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// arcsine
    Asin = "asin", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// arccosine
    Acos = "acos", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// arctangent
    Atan = "atan", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// hyperbolic sine
    Sinh = "sinh", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// hyperbolic cosine
    Cosh = "cosh", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// inverse hyperbolic sine
    Asinh = "asinh", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// inverse hyperbolic cosine
    Acosh = "acosh", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// inverse hyperbolic tangent
    Atanh = "atanh", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// hyperbolic tangent
    Tanh = "tanh", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// 1/(1+e^-x)
    Sigmoid = "sigmoid", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// the Gauss error function
    Erf = "erf", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// round toward -inf
    Floor = "floor", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// round toward +inf
    Ceil = "ceil", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// round half to even
    Round = "round", Unary, Exactly(1) => unary(DTypeSet::FLOAT);
    /// logical not of bools, bitwise not of integers
    Not = "not", Unary, Exactly(1) => unary(DTypeSet::LOGIC);
    /// whether x is NaN
    IsNan = "is_nan", Unary, Exactly(1) => predicate(DTypeSet::FLOAT);
    /// whether x is +inf or -inf
    IsInf = "is_inf", Unary, Exactly(1) => predicate(DTypeSet::FLOAT);

    /// a + b (integers wrap)
    Add = "add", Binary, Exactly(2) => binary(DTypeSet::NUM);
    /// a - b
    Sub = "sub", Binary, Exactly(2) => binary(DTypeSet::NUM);
    /// a * b
    Mul = "mul", Binary, Exactly(2) => binary(DTypeSet::NUM);
    /// a / b (integers truncate toward zero; dividing an integer by zero is an error)
    Div = "div", Binary, Exactly(2) => binary(DTypeSet::NUM);
    /// remainder with the sign of a, like C fmod
    Rem = "rem", Binary, Exactly(2) => binary(DTypeSet::NUM);
    /// remainder with the sign of b, like Python %
    Mod = "mod", Binary, Exactly(2) => binary(DTypeSet::NUM);
    /// a to the power b
    Pow = "pow", Binary, Exactly(2) => binary(DTypeSet::NUM);
    /// the larger of a and b (NaN if either is)
    Max = "max", Binary, Exactly(2) => binary(DTypeSet::NUM);
    /// the smaller of a and b (NaN if either is)
    Min = "min", Binary, Exactly(2) => binary(DTypeSet::NUM);
    /// atan(a/b) in the quadrant of (b, a)
    Atan2 = "atan2", Binary, Exactly(2) => binary(DTypeSet::FLOAT);
    /// logical and of bools, bitwise and of integers
    And = "and", Binary, Exactly(2) => binary(DTypeSet::LOGIC);
    /// logical or of bools, bitwise or of integers
    Or = "or", Binary, Exactly(2) => binary(DTypeSet::LOGIC);
    /// logical xor of bools, bitwise xor of integers
    Xor = "xor", Binary, Exactly(2) => binary(DTypeSet::LOGIC);
    /// a shifted left by b bits (0 once b reaches the bit width)
    Shl = "shl", Binary, Exactly(2) => binary(DTypeSet::INT);
    /// a shifted right by b bits (arithmetic for signed integers)
    Shr = "shr", Binary, Exactly(2) => binary(DTypeSet::INT);
    /// a == b
    Eq = "eq", Binary, Exactly(2) => compare(DTypeSet::ALL);
    /// a != b
    Ne = "ne", Binary, Exactly(2) => compare(DTypeSet::ALL);
    /// a < b
    Lt = "lt", Binary, Exactly(2) => compare(DTypeSet::ALL);
    /// a <= b
    Le = "le", Binary, Exactly(2) => compare(DTypeSet::ALL);
    /// a > b
    Gt = "gt", Binary, Exactly(2) => compare(DTypeSet::ALL);
    /// a >= b
    Ge = "ge", Binary, Exactly(2) => compare(DTypeSet::ALL);
    /// cond ? a : b, element by element
    Select = "select", Ternary, Exactly(3) => rule_select;

    /// Converts elements to the result dtype (floats to integers truncate and saturate, NaN
    /// becoming 0; nonzero becomes true). Narrow floats round to nearest-even; out-of-range
    /// values clamp to the largest finite value, or with `saturate=false` become inf/NaN.
    Cast = "cast", Cast, Exactly(1),
        { dtype: DType = result(result_dtype), saturate: bool = default(true) } => rule_cast;

    /// The same bits read as the result dtype, which has the operand's bit width (little
    /// endian; ONNX BitCast): no value conversion.
    Bitcast = "bitcast", Movement, Exactly(1), { dtype: DType = result(result_dtype) }
        => rule_bitcast;

    /// The same elements in row-major order under the result shape.
    Reshape = "reshape", Movement, Exactly(1), { shape: Shape = result(result_shape) }
        => rule_reshape;
    /// The operand unchanged, its shape restated as the result shape (same rank): a fact the
    /// importer could not prove (element counts that agree, a dim that must be 1, operands
    /// that must match) checked at run time. Each result dim must equal the operand's under
    /// the run's symbols; a run where one does not is an error naming the node and both dims.
    Refine = "refine", Movement, Exactly(1), { shape: Shape = result(result_shape) }
        => rule_refine;
    /// Result axis `i` is operand axis `perm[i]`.
    Transpose = "transpose", Movement, Exactly(1), { perm: Vec<i64> } => rule_transpose;
    /// Operand axis `i` becomes result axis `dims[i]` (dims strictly increasing); operand dims of
    /// size 1 stretch; the other result axes repeat.
    Broadcast = "broadcast", Movement, Exactly(1),
        { dims: Vec<i64>, shape: Shape = result(result_shape) } => rule_broadcast;
    /// Elements start, start+stride, ... before limit, per axis; a negative stride walks down
    /// from start to just above limit.
    Slice = "slice", Movement, Exactly(1), { start: Vec<Dim>, limit: Vec<Dim>, stride: Vec<i64> }
        => rule_slice;
    /// Adds low/high elements before/after each axis (negative amounts crop), filled with the
    /// scalar second operand or by the mode.
    Pad = "pad", Movement, Exactly(2),
        { low: Vec<i64>, high: Vec<i64>, mode: PadMode = default(PadMode::Constant) } => rule_pad;
    /// Joins operands along `axis`.
    Concat = "concat", Movement, AtLeast(1), { axis: i64 } => rule_concat;
    /// Picks slices of the first operand along `axis` by the integer indices of the second;
    /// negative indices count from the end; an index out of range is an error.
    Gather = "gather", Movement, Exactly(2), { axis: i64 } => rule_gather;
    /// Picks slices addressed by the last axis of the indices (ONNX GatherND).
    GatherNd = "gather_nd", Movement, Exactly(2), { batch_dims: i64 = default(0) }
        => rule_gather_nd;
    /// Copies the data and writes updates at the addressed slices (ONNX ScatterND).
    ScatterNd = "scatter_nd", Movement, Exactly(3),
        { reduction: ScatterReduction = default(ScatterReduction::None) } => rule_scatter_nd;

    /// Sum over `axes` (which disappear from the shape).
    ReduceSum = "reduce_sum", Reduce, Exactly(1), { axes: Vec<i64> } => reduce(DTypeSet::NUM);
    /// Product over `axes`.
    ReduceProd = "reduce_prod", Reduce, Exactly(1), { axes: Vec<i64> } => reduce(DTypeSet::NUM);
    /// Maximum over `axes`.
    ReduceMax = "reduce_max", Reduce, Exactly(1), { axes: Vec<i64> } => reduce(DTypeSet::NUM);
    /// Minimum over `axes`.
    ReduceMin = "reduce_min", Reduce, Exactly(1), { axes: Vec<i64> } => reduce(DTypeSet::NUM);
    /// Index (i64) of the first maximum along `axis`, or of the last with `last=true`.
    ArgMax = "argmax", Reduce, Exactly(1), { axis: i64, last: bool = default(false) }
        => rule_arg_reduce;
    /// Index (i64) of the first minimum along `axis`, or of the last with `last=true`.
    ArgMin = "argmin", Reduce, Exactly(1), { axis: i64, last: bool = default(false) }
        => rule_arg_reduce;
    /// ONNX DynamicQuantizeLinear of an f32 tensor x, as these ops compute it: with
    /// `lo = min(reduce_min(x), 0)` and `hi = max(reduce_max(x), 0)` (every axis), the scale
    /// `s = select(hi == lo, 1, hi − lo) / 255` and the zero point
    /// `z = round(min(max(0 − lo / s, 0), 255))`; results `cast<u8>(round(x / s) + z)` (x's
    /// shape), `s` (f32 `[]`) and `cast<u8>(z)` (u8 `[]`). One pass for both extremes, where
    /// the ops take one each.
    DynamicQuantize = "dynamic_quantize", Reduce, Exactly(1) => rule_dynamic_quantize;

    /// General contraction: result axes are the batch axes, then the remaining lhs axes, then
    /// the remaining rhs axes; contracted axes are summed over.
    Dot = "dot", Contraction, Exactly(2), {
        lhs_batch: Vec<i64> = default(Vec::<i64>::new()),
        rhs_batch: Vec<i64> = default(Vec::<i64>::new()),
        lhs_contract: Vec<i64>,
        rhs_contract: Vec<i64>,
    } => rule_dot;
    /// A quantized product: `dot`'s contraction of `(lhs - zero)` with `rhs`, summed in i32
    /// (wrapping) and converted to f32 (rounded to nearest) — exactly `cast<f32>` of the
    /// integer `dot` of the widened operands. lhs u8 or i8, rhs i8, `zero` a scalar of lhs's
    /// dtype (its zero point).
    Qdot = "qdot", Contraction, Exactly(3), {
        lhs_batch: Vec<i64> = default(Vec::<i64>::new()),
        rhs_batch: Vec<i64> = default(Vec::<i64>::new()),
        lhs_contract: Vec<i64>,
        rhs_contract: Vec<i64>,
    } => rule_qdot;
    /// A product with a blocked 4-bit weight (com.microsoft MatMulNBits):
    /// `y[..., n] = Σ_k x[..., k] · ((w[n, k] − zero[n, k/block]) · scale[n, k/block])`, the
    /// weight's value `w[n, k]` the 4 bits of byte `k/2` of row n (the low ones for even k).
    /// x f32 `[..., K]`, w u8 `[N, ceil(K/block)·block/2]`, scale and zero f32
    /// `[N, ceil(K/block)]`; the result f32 `[..., N]`. block a power of two from 16. With
    /// `quantize_x` (MatMulNBits' `accuracy_level` 4), each block of x's rows is first
    /// quantized to int8 and read back: `x[k] = q[k] · s`, `s = max|x| / 127` over the block,
    /// `q = round(x · (127 / max|x|))` half to even (0 for a block of zeros; NaN counts for
    /// nothing in the maximum and quantizes to 0; an infinite element makes `s` infinite and
    /// every value of its block NaN, 0·∞).
    Qdot4 = "qdot4", Contraction, Exactly(4), {
        block: i64,
        quantize_x: bool = default(false),
    } => rule_qdot4;
    /// N-d convolution (cross-correlation) of input [N, C, ...] with weight [O, C/groups, ...].
    Conv = "conv", Contraction, Exactly(2), {
        stride: Vec<i64>,
        dilation: Vec<i64>,
        pad_low: Vec<i64>,
        pad_high: Vec<i64>,
        groups: i64 = default(1),
    } => rule_conv;
    /// A quantized convolution: `conv` of `(x − zero)` with `w` (padding adds nothing),
    /// summed in i32 (wrapping) and converted to f32 — exactly `cast<f32>` of the integer
    /// `conv` of the widened operands with x's padding at its zero point. x u8 or i8, w i8,
    /// `zero` a scalar of x's dtype.
    Qconv = "qconv", Contraction, Exactly(3), {
        stride: Vec<i64>,
        dilation: Vec<i64>,
        pad_low: Vec<i64>,
        pad_high: Vec<i64>,
        groups: i64 = default(1),
    } => rule_qconv;
    /// A 2-D `conv` into a channel-blocked image (NCHWc): result `[N, O/block, OH, OW,
    /// block]` (channel `block·ob + j` of pixel (y, x) at `[n, ob, y, x, j]`), input blocked
    /// the same way (`[N, C/block, H, W, block]`) or plain (`[N, C, H, W]`), weight `[O,
    /// C/groups, kh, kw]` as conv's; O a multiple of `block`. A dense conv's weight may have
    /// fewer channels than a blocked input's lanes, as long as they reach its last block:
    /// the sums read only the first ones (a layout's padding lanes are never read).
    ConvBlocked = "conv_blocked", Contraction, Exactly(2), {
        stride: Vec<i64>,
        dilation: Vec<i64>,
        pad_low: Vec<i64>,
        pad_high: Vec<i64>,
        groups: i64 = default(1),
        block: i64,
    } => rule_conv_blocked;
    /// Sliding-window reduction over every axis (pooling); padding takes the identity of `kind`.
    ReduceWindow = "reduce_window", Window, Exactly(1), {
        kind: ReduceKind,
        window: Vec<i64>,
        stride: Vec<i64>,
        dilation: Vec<i64>,
        pad_low: Vec<i64>,
        pad_high: Vec<i64>,
    } => rule_reduce_window;
    /// Interpolation along `axis` by taps: result position `o` of that axis is
    /// `w[o, 0]·x[.., i[o, 0], ..] + w[o, 1]·x[.., i[o, 1], ..] + …`, with the i64 indices `i`
    /// (`[out, taps]`, each in `0..n` of the axis, else an error) and the weights `w` (same
    /// shape, x's dtype), each product rounded and summed left to right (Resize's separable
    /// interpolation: nearest, linear, cubic, antialiased).
    Resample = "resample", Window, Exactly(3), { axis: i64 } => rule_resample;
    /// The k largest (or smallest) elements along `axis`, sorted, and their i64 indices; ties
    /// go to the lower index.
    TopK = "topk", Sort, Exactly(1), { k: i64, axis: i64, largest: bool = default(true) }
        => rule_topk;
    /// Walks every row of `x` (`[B, F]`, floats) down every tree of a forest given as per-node
    /// tables — feature (i64 `[N]`), threshold (`[N]`, x's dtype), rule (i64 `[N]`: 0 `x ≤ t`,
    /// 1 `x < t`, 2 `x ≥ t`, 3 `x > t`, 4 `x = t`, 5 `x ≠ t`, 6 a leaf), yes and no (i64
    /// `[N]`: the next node when the rule holds, or not), nan_yes (bool `[N]`: a NaN feature
    /// goes to yes; otherwise the rule decides) and roots (i64 `[T]`) — to a leaf: the result
    /// (i64 `[B, T]`) is each row's leaf per tree. A feature or node index out of range, a rule code
    /// outside 0..=6, or a walk of more than N steps (a cycle) is an error.
    TreeWalk = "tree_walk", Tree, Exactly(8) => rule_tree_walk;
    /// One direction of an LSTM layer over a sequence, in ONNX's default form (sigmoid gates,
    /// tanh cell and output, no peepholes or clip): from the input projection with both biases
    /// xw (`[S, B, 4H]`, gates i, o, f, c side by side), the recurrent weights transposed rt
    /// (`[H, 4H]`) and the initial states h0 and c0 (`[B, H]`), each step t (from S-1 down with
    /// `reverse`) computes `g = xw[t] + h·rt`, `c = σ(g_f)·c + σ(g_i)·tanh(g_c)` and
    /// `h = σ(g_o)·tanh(c)`. Results: every step's h (`[S, B, H]`, in time order), and the last
    /// h and c (`[B, H]`; h0 and c0 when S is 0).
    Lstm = "lstm", Recurrent, Exactly(4), { reverse: bool = default(false) } => rule_lstm;
    /// One direction of a GRU layer over a sequence in ONNX's default form (sigmoid gates, tanh
    /// candidate, no clip): from the input projection xw (`[S, B, 3H]`, gates z, r, n side by
    /// side, with every bias but the n gate's recurrent one), the recurrent weights transposed
    /// rt (`[H, 3H]`, columns by gate as xw), that bias rbn (`[H]`) and the initial state h0
    /// (`[B, H]`), each step t (from S-1 down with `reverse`) computes `z = σ(xw_z + h·rt_z)`,
    /// `r = σ(xw_r + h·rt_r)`, `n = tanh(xw_n + r·(h·rt_n + rbn))` with `linear_before_reset`,
    /// else `n = tanh(xw_n + ((r·h)·rt_n + rbn))`, and `h = (1 - z)·n + z·h`. Results: every
    /// step's h (`[S, B, H]`, in time order) and the last h (`[B, H]`; h0 when S is 0).
    Gru = "gru", Recurrent, Exactly(4),
        { reverse: bool = default(false), linear_before_reset: bool = default(false) }
        => rule_gru;
    /// One direction of a simple recurrent layer over a sequence with ONNX RNN's default tanh
    /// (no clip): from the input projection with both biases xw (`[S, B, H]`), the recurrent
    /// weights transposed rt (`[H, H]`) and the initial state h0 (`[B, H]`), each step t (from
    /// S-1 down with `reverse`) computes `h = tanh(xw[t] + h·rt)`. Results: every step's h
    /// (`[S, B, H]`, in time order) and the last h (`[B, H]`; h0 when S is 0).
    Rnn = "rnn", Recurrent, Exactly(3), { reverse: bool = default(false) } => rule_rnn;

    /// The indices of the nonzero elements, in row-major order, as [rank, count] i64; `count`
    /// is a symbol this node defines (bound when it runs).
    NonZero = "nonzero", Dynamic, Exactly(1), { count: Dim } => rule_nonzero;
    /// Non-maximum suppression (ONNX NonMaxSuppression) of boxes [B, N, 4] by scores
    /// [B, C, N]: per batch and class, boxes scoring above the threshold (operand 4, when
    /// `thresholded`) are kept in descending score order (ties: lower index first) unless their
    /// IoU with a kept box exceeds operand 3, at most operand 2 (i64) per class. Corners
    /// [y1, x1, y2, x2] in either order, or [x, y, w, h] around the centre with `center`.
    /// Result: [count, 3] i64 rows (batch, class, box); `count` is defined here.
    Nms = "nms", Dynamic, Exactly(5),
        { center: bool = default(false), thresholded: bool = default(true), count: Dim }
        => rule_nms;
    /// 0, 1, …, n-1 (i64) for the integer scalar operand n (nothing when n ≤ 0): `count`, the
    /// length, is a symbol this node defines (a Range or a Loop's trip count read from data).
    DynIota = "dyn_iota", Dynamic, Exactly(1), { count: Dim } => rule_dyn_iota;
    /// `topk` with k the scalar integer operand 1, known only at run time (at most the
    /// axis's length): the k-sized axis is `count`, a symbol this node defines.
    DynTopK = "dyn_topk", Dynamic, Exactly(2),
        { axis: i64, largest: bool = default(true), count: Dim } => rule_dyn_topk;
    /// Operand 1 when the scalar bool operand 0 holds, else operand 2 (both computed; one
    /// dtype and rank): where their dims may differ, the result's are symbols this node
    /// defines (an If whose branches differ in size on a runtime condition).
    Choose = "choose", Dynamic, Exactly(3), { shape: Shape = result(result_shape) } => rule_choose;
    /// The distinct elements (flattened, or slices along `axis` when given), ascending with
    /// `sorted`, else in order of first occurrence. Results: the distinct values (`count` of
    /// them, the symbol this node defines), the index of each one's first occurrence, the
    /// index among them of every element (or slice), and how often each occurs (all i64).
    Unique = "unique", Dynamic, Exactly(1),
        { axis: Vec<i64> = default(Vec::<i64>::new()), sorted: bool = default(true), count: Dim }
        => rule_unique;

    /// A kernel: runs its body (a region whose parameters are the operands, in order) as one
    /// unit. `kind` names what the body computes when a pass recognized it (`softmax`).
    Fused = "fused", Kernel, AtLeast(0), { kind: String = default(String::new()), body: Region = region() }
        => rule_fused;

    /// Runs its body `count` times, step t = 0, 1, … (count-1 down to 0 with `reverse`).
    /// Operands: `carry` values carried from step to step, then `scan` sequences whose axis 0
    /// has `count` entries (step t reads entry t), then values every step reads unchanged. The
    /// body's parameters are the carried values, one entry of each sequence and the unchanged
    /// values, in that order; its outputs are the next carried values, then values collected
    /// per step. Results: the carried values after the last step, then the collected values
    /// stacked along a new axis 0 (entry t from step t).
    Loop = "loop", Control, AtLeast(0), {
        count: Dim,
        carry: i64,
        scan: i64,
        reverse: bool = default(false),
        body: Region = region(),
    } => rule_loop;
}

impl Op {
    /// This op with every dimension expression in its attributes (parameter and `iota` types,
    /// `dims` values, `reshape` and `broadcast` shapes, `slice` bounds) mapped by `f`: how
    /// symbols are bound or specialized.
    pub fn map_dims<E: From<String>>(&self, f: &dyn Fn(&Dim) -> Result<Dim, E>) -> Result<Op, E> {
        let dims = |ds: &[Dim]| ds.iter().map(f).collect::<Result<Vec<Dim>, E>>();
        let shape = |s: &Shape| dims(s.dims()).map(Shape::new);
        let ty = |t: &TensorType| -> Result<TensorType, E> {
            Ok(TensorType::new(t.dtype, shape(&t.shape)?))
        };
        Ok(match self {
            Op::Param { name, ty: t } => Op::Param {
                name: name.clone(),
                ty: ty(t)?,
            },
            Op::Iota { axis, ty: t } => Op::Iota {
                axis: *axis,
                ty: ty(t)?,
            },
            Op::Dims { values } => Op::Dims {
                values: dims(values)?,
            },
            Op::Reshape { shape: s } => Op::Reshape { shape: shape(s)? },
            Op::Refine { shape: s } => Op::Refine { shape: shape(s)? },
            Op::Choose { shape: s } => Op::Choose { shape: shape(s)? },
            Op::Broadcast { dims: d, shape: s } => Op::Broadcast {
                dims: d.clone(),
                shape: shape(s)?,
            },
            Op::Slice {
                start,
                limit,
                stride,
            } => Op::Slice {
                start: dims(start)?,
                limit: dims(limit)?,
                stride: stride.clone(),
            },
            Op::Fused { kind, body } => Op::Fused {
                kind: kind.clone(),
                body: Region::new(body.graph().map_ops(&|op| op.map_dims(f))?),
            },
            Op::Loop {
                count,
                carry,
                scan,
                reverse,
                body,
            } => Op::Loop {
                count: f(count)?,
                carry: *carry,
                scan: *scan,
                reverse: *reverse,
                body: Region::new(body.graph().map_ops(&|op| op.map_dims(f))?),
            },
            op => op.clone(),
        })
    }

    /// The symbol a `Dynamic` op defines: its result sizes come from the data.
    pub fn defines(&self) -> Option<&Dim> {
        match self {
            Op::NonZero { count }
            | Op::Nms { count, .. }
            | Op::Unique { count, .. }
            | Op::DynTopK { count, .. }
            | Op::DynIota { count } => Some(count),
            _ => None,
        }
    }

    /// The region the op owns (`fused` and `loop` bodies).
    pub fn region(&self) -> Option<&Region> {
        match self {
            Op::Fused { body, .. } | Op::Loop { body, .. } => Some(body),
            _ => None,
        }
    }

    /// Elementwise ops: unary, binary, select and cast.
    pub fn is_elementwise(&self) -> bool {
        matches!(
            self.kind(),
            OpKind::Unary | OpKind::Binary | OpKind::Ternary | OpKind::Cast
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mnemonics_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for m in Op::MNEMONICS {
            assert!(seen.insert(m), "duplicate mnemonic {m}");
            assert!(
                Op::doc_of(m).is_some_and(|d| !d.is_empty()),
                "{m} has no doc"
            );
        }
    }

    #[test]
    fn attrs_round_trip_through_text() {
        let op = Op::Dot {
            lhs_batch: vec![0],
            rhs_batch: vec![0],
            lhs_contract: vec![2],
            rhs_contract: vec![1],
        };
        let attrs: Vec<(String, Lit)> = op
            .attrs()
            .into_iter()
            .map(|(n, l)| (n.to_string(), l))
            .collect();
        let ctx = AttrCtx {
            results: &[],
            constant: &|_| None,
            region: None,
        };
        assert_eq!(Op::from_text("dot", attrs, &ctx), Ok(Some(op)));
    }

    #[test]
    fn defaults_are_not_printed() {
        let op = Op::Dot {
            lhs_batch: vec![],
            rhs_batch: vec![],
            lhs_contract: vec![1],
            rhs_contract: vec![0],
        };
        let names: Vec<_> = op.attrs().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["lhs_contract", "rhs_contract"]);
    }

    #[test]
    fn unknown_and_missing_attributes() {
        let ctx = AttrCtx {
            results: &[],
            constant: &|_| None,
            region: None,
        };
        let e = Op::from_text("transpose", vec![], &ctx).unwrap_err();
        assert_eq!(e, "missing attribute `perm`");
        let attrs = vec![("axis".to_string(), Lit::Num("0".into()))];
        let e = Op::from_text("add", attrs, &ctx).unwrap_err();
        assert_eq!(e, "`add` has no attribute `axis` (it has none)");
        assert_eq!(Op::from_text("frobnicate", vec![], &ctx), Ok(None));
    }
}
