//! The loop-level kernel IR: buffers, loop nests with marks, scalar expressions over loads,
//! accumulators and stores. Every backend takes this as its only input, and it prints as text
//! so that lowering is snapshot-tested (and parses back: [`crate::parse`]).
//!
//! Conventions a backend relies on:
//! - every buffer is a dense row-major array of its dtype; `bool` is one byte, 0 or 1;
//! - index expressions are `i64`; `Expr::Dim(k)` is entry `k` of the kernel's dim table, whose
//!   value the caller passes at run time, so one compiled kernel serves every binding of the
//!   graph's symbols;
//! - scalar ops are `ir` elementwise ops and mean exactly what the reference interpreter makes
//!   of them (float transcendental functions are evaluated in f64 and rounded), except that in
//!   `vector` loops a backend may compute f32 transcendental functions to within 2 ulp of that
//!   (the Cranelift backend does for `exp`, `log`, `sigmoid`, `tanh` and `erf`);
//! - a loop whose body is only `acc = add(acc, cast<f64>(e))` (the f64 accumulator of an f32
//!   sum) may be reassociated, so its result is within rounding of the sequential f64 sum;
//!   `max`/`min` accumulators give exactly the sequential result;
//! - a `Check` whose condition is false ends the kernel with its code (nonzero), before any
//!   access that the check guards.

use std::fmt::{self, Write};

use ir::{DType, Dim, Op};

/// Index of a buffer in [`Kernel::bufs`].
pub type BufId = usize;
/// Index of a scalar variable in [`Kernel::vars`].
pub type VarId = usize;

/// What a buffer is to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BufKind {
    /// Read-only operand.
    Input,
    /// Written once per element by the kernel.
    Output,
    /// Working memory of the kernel, provided by the caller; its contents do not survive.
    Scratch,
}

/// A dense array the kernel reads or writes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Buf {
    pub name: String,
    pub dtype: DType,
    /// Elements, as a dimension expression of the graph's symbols.
    pub len: Dim,
    pub kind: BufKind,
}

/// How a loop may be executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mark {
    Serial,
    /// Iterations are independent and may run on different threads.
    Parallel,
    /// Iterations are independent and may run in SIMD lanes of this width.
    Vector(u32),
    /// The body may be replicated this many times.
    Unroll(u32),
}

/// A statement.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Stmt {
    /// `for var in 0..extent`.
    Loop {
        var: VarId,
        extent: Expr,
        mark: Mark,
        #[serde(deserialize_with = "ir::deserialize_nested")]
        body: Vec<Stmt>,
    },
    /// Sets a scalar variable (declared by its first assignment; an accumulator is assigned
    /// before a loop and updated inside it).
    Set { var: VarId, value: Expr },
    /// `buf[index] = value`.
    Store {
        buf: BufId,
        index: Expr,
        value: Expr,
    },
    /// Ends the kernel with `code` unless `cond` (a bool) holds.
    Check { cond: Expr, code: u32 },
    /// A call of a library routine (`gemm`, `conv2d`, ...: [`crate::routines::ROUTINES`]).
    Call(Box<Call>),
}

/// A call of a library routine: its operands (a buffer and the offset of the first element
/// it touches, per operand of the routine, `None` for an absent optional one), its integer
/// arguments (i64 expressions) and scalar arguments (of the routine's dtypes), all in the
/// routine's order, and the variable its result is assigned to (routines with a result).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Call {
    /// The routine's name (as [`crate::routines::routine`] finds it).
    pub routine: String,
    pub operands: Vec<Option<(BufId, Expr)>>,
    pub ints: Vec<Expr>,
    pub scalars: Vec<Expr>,
    pub result: Option<VarId>,
}

impl Call {
    /// The routine called, if it is one of [`crate::routines::ROUTINES`].
    pub fn routine(&self) -> Option<&'static crate::routines::Routine> {
        crate::routines::routine(&self.routine)
    }

    /// The routine, with this call's operands and integer arguments checked against it.
    pub fn checked(&self) -> Result<&'static crate::routines::Routine, String> {
        let r = self
            .routine()
            .ok_or_else(|| format!("an unknown routine `{}`", self.routine))?;
        if self.operands.len() != r.operands.len()
            || self.ints.len() != r.ints.len()
            || self.scalars.len() != r.scalars.len()
        {
            return Err(format!(
                "`{}` with {} operands, {} integers and {} scalars (it takes {}, {} and {})",
                r.name,
                self.operands.len(),
                self.ints.len(),
                self.scalars.len(),
                r.operands.len(),
                r.ints.len(),
                r.scalars.len()
            ));
        }
        if self.result.is_some() != r.result.is_some() {
            return Err(match r.result {
                Some(_) => format!("`{}` whose result goes nowhere", r.name),
                None => format!("`{}` assigned to a variable (it has no result)", r.name),
            });
        }
        for (op, (name, role, _)) in self.operands.iter().zip(r.operands) {
            if op.is_none() && *role != crate::routines::Role::Optional {
                return Err(format!("`{}` without its operand `{name}`", r.name));
            }
        }
        // An epilogue's pair placement is one of its four codes.
        let at = r.scalars.iter().position(|(n, _)| *n == "pre_at");
        if let Some(Expr::Float(v, _)) = at.and_then(|i| self.scalars.get(i)) {
            if ![0.0, 1.0, 2.0, 3.0].contains(v) {
                return Err(format!("`{}` with pre_at {v}, not 0, 1, 2 or 3", r.name));
            }
        }
        Ok(r)
    }

    /// Integer argument `name` of the routine.
    pub fn int(&self, name: &str) -> Option<&Expr> {
        let r = self.routine()?;
        self.ints.get(r.ints.iter().position(|n| *n == name)?)
    }

    /// Operand `name` of the routine, when given.
    pub fn operand(&self, name: &str) -> Option<&(BufId, Expr)> {
        let r = self.routine()?;
        self.operands
            .get(r.operands.iter().position(|(n, _, _)| *n == name)?)?
            .as_ref()
    }

    /// Whether operand `i` is read or written (given, and not replaced by another given one).
    pub fn accessed(&self, i: usize) -> bool {
        let replaced = self
            .routine()
            .and_then(|r| r.replaces)
            .is_some_and(|(by, of)| of == i && self.operands.get(by).is_some_and(Option::is_some));
        self.operands.get(i).is_some_and(Option::is_some) && !replaced
    }
}

impl From<Gemm> for Call {
    fn from(g: Gemm) -> Call {
        let mut operands = vec![
            Some((g.a, g.a_off)),
            Some((g.b, g.b_off)),
            g.b_packed.map(|p| (p, Expr::i64(0))),
            Some((g.c, g.c_off)),
        ];
        operands.extend(g.epilogue.operands());
        Call {
            routine: "gemm".into(),
            operands,
            ints: vec![
                g.a_rs,
                g.a_cs,
                g.b_rs,
                g.b_cs,
                g.c_rs,
                g.m,
                g.n,
                g.k,
                Expr::i64(i64::from(g.epilogue.cols)),
                Expr::i64(g.epilogue.act),
            ],
            scalars: g.epilogue.scalars(),
            result: None,
        }
    }
}

impl Gemm {
    /// The quantized product's call (`qgemm`): A u8 with rows `a_rs` apart (its columns
    /// contiguous), B i8, `za` A's zero point.
    pub fn quantized(self, za: (BufId, Expr)) -> Call {
        let mut operands = vec![
            Some((self.a, self.a_off)),
            Some((self.b, self.b_off)),
            self.b_packed.map(|p| (p, Expr::i64(0))),
            Some(za),
            Some((self.c, self.c_off)),
        ];
        operands.extend(self.epilogue.operands());
        Call {
            routine: "qgemm".into(),
            operands,
            ints: vec![
                self.a_rs,
                self.b_rs,
                self.b_cs,
                self.c_rs,
                self.m,
                self.n,
                self.k,
                Expr::i64(i64::from(self.epilogue.cols)),
                Expr::i64(self.epilogue.act),
            ],
            scalars: self.epilogue.scalars(),
            result: None,
        }
    }
}

impl From<Conv2d> for Call {
    fn from(c: Conv2d) -> Call {
        let g = c.geometry;
        let mut operands = vec![
            Some((c.x, c.x_off)),
            Some((c.k, c.k_off)),
            Some((c.out, c.out_off)),
        ];
        operands.extend(c.epilogue.operands());
        Call {
            routine: "conv2d".into(),
            operands,
            ints: [
                g.h,
                g.w,
                g.oh,
                g.ow,
                g.kh,
                g.kw,
                g.sh,
                g.sw,
                g.dh,
                g.dw,
                g.ph,
                g.pw,
                c.epilogue.act,
            ]
            .map(Expr::i64)
            .to_vec(),
            scalars: c.epilogue.scalars(),
            result: None,
        }
    }
}

/// What a product or convolution call applies to each output as it stores it (see
/// [`crate::routines::epilogue`]): `post(act(min(max((pre(x)·scale·scale2 + shift) + res[at],
/// lo), hi)))` (`pre` after the scale with `pre_after_scale`, `scale2` after that, the shift
/// before everything with `shift_first`), each operand at its offset (the per-row or per-column ones at the call's first row
/// or column, the residual at the output's offset), absent parts skipped.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Epilogue {
    pub scale: Option<(BufId, Expr)>,
    pub shift: Option<(BufId, Expr)>,
    pub res: Option<(BufId, Expr)>,
    /// A second scale, per row or column as `scale`, after `scale` and the pair after it (a
    /// batch norm between a requantizer and the next quantizer).
    pub scale2: Option<(BufId, Expr)>,
    pub lo: f64,
    pub hi: f64,
    /// Whether scale, shift and scale2 are per column (products only).
    pub cols: bool,
    /// The activation: 0 none, 1 sigmoid, 2 tanh, ... (as `routines::epilogue::Act::of`).
    pub act: i64,
    /// A quantize-dequantize pair first: scale, zero point, the quantized type's range and
    /// the dequantizer's scale (`routines::epilogue::Quant`).
    pub pre: Option<[f64; 5]>,
    /// Whether `pre` comes after the scale (a quantized product's dequantization).
    pub pre_after_scale: bool,
    /// Whether the shift comes first (an integer bias before a requantizer's scale).
    pub shift_first: bool,
    /// A quantize-dequantize pair last.
    pub post: Option<[f64; 5]>,
}

impl Default for Epilogue {
    fn default() -> Epilogue {
        Epilogue {
            scale: None,
            shift: None,
            res: None,
            scale2: None,
            lo: f64::NEG_INFINITY,
            hi: f64::INFINITY,
            cols: false,
            act: 0,
            pre: None,
            pre_after_scale: false,
            shift_first: false,
            post: None,
        }
    }
}

impl Epilogue {
    /// The call's optional operands `scale`, `shift`, `res` and `scale2`.
    pub fn operands(&self) -> [Option<(BufId, Expr)>; 4] {
        [
            self.scale.clone(),
            self.shift.clone(),
            self.res.clone(),
            self.scale2.clone(),
        ]
    }

    /// The call's scalar arguments `lo` and `hi`, then its pairs' (zeros for none) with
    /// `pre`'s place.
    pub fn scalars(&self) -> Vec<Expr> {
        let mut s = vec![self.lo, self.hi];
        s.extend(self.pre.unwrap_or([0.0; 5]));
        // `pre`'s place: 1 after the scale, plus 2 with the shift first.
        s.push(f64::from(
            u8::from(self.pre_after_scale) + 2 * u8::from(self.shift_first),
        ));
        s.extend(self.post.unwrap_or([0.0; 5]));
        s.into_iter().map(|v| Expr::Float(v, DType::F32)).collect()
    }
}

/// The one way to look into statements: what a statement holds directly — its expressions,
/// the buffers it accesses itself (a store's target, a library routine's operands, each with
/// the offset the routine reads it from) and its nested statements. Analyses and rewrites
/// walk kernels through these rather than matching every statement kind.
impl Stmt {
    /// The expressions the statement holds directly (a loop's extent, not its body's):
    /// values, indices, conditions, a library routine's offsets, strides and sizes.
    pub fn exprs(&self) -> Vec<&Expr> {
        match self {
            Stmt::Loop { extent, .. } => vec![extent],
            Stmt::Set { value, .. } => vec![value],
            Stmt::Store { index, value, .. } => vec![index, value],
            Stmt::Check { cond, .. } => vec![cond],
            Stmt::Call(c) => {
                let offsets = c.operands.iter().flatten().map(|(_, off)| off);
                offsets.chain(&c.ints).chain(&c.scalars).collect()
            }
        }
    }

    /// [`Stmt::exprs`], to rewrite them.
    pub fn exprs_mut(&mut self) -> Vec<&mut Expr> {
        match self {
            Stmt::Loop { extent, .. } => vec![extent],
            Stmt::Set { value, .. } => vec![value],
            Stmt::Store { index, value, .. } => vec![index, value],
            Stmt::Check { cond, .. } => vec![cond],
            Stmt::Call(c) => {
                let c = &mut **c;
                let offsets = c.operands.iter_mut().flatten().map(|(_, off)| off);
                offsets
                    .chain(c.ints.iter_mut())
                    .chain(c.scalars.iter_mut())
                    .collect()
            }
        }
    }

    /// The buffers the statement accesses itself, outside the loads of its expressions, with
    /// whether it writes them: a store's target, a library routine's operands (a product
    /// whose B was packed ahead of time reads the packed copy, never B).
    pub fn operands(&self) -> Vec<(BufId, bool)> {
        match self {
            Stmt::Store { buf, .. } => vec![(*buf, true)],
            Stmt::Call(c) => {
                let roles = c.routine().map_or(&[][..], |r| r.operands);
                c.operands
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| c.accessed(i))
                    .filter_map(|(i, op)| {
                        let write = roles
                            .get(i)
                            .is_some_and(|(_, role, _)| *role == crate::routines::Role::Write);
                        op.as_ref().map(|(b, _)| (*b, write))
                    })
                    .collect()
            }
            Stmt::Loop { .. } | Stmt::Set { .. } | Stmt::Check { .. } => vec![],
        }
    }

    /// Every buffer the statement itself names: its [`Stmt::operands`], and a routine's
    /// operands even when another replaces them (a product's B when it reads a packed copy).
    pub fn named_buffers(&self) -> Vec<BufId> {
        match self {
            Stmt::Call(c) => c.operands.iter().flatten().map(|(b, _)| *b).collect(),
            s => s.operands().into_iter().map(|(b, _)| b).collect(),
        }
    }

    /// A library routine's operands with the offsets it reads or writes them from, to
    /// rewrite where an operand lives (a store's index is among [`Stmt::exprs_mut`]).
    pub fn operand_offsets_mut(&mut self) -> Vec<(BufId, &mut Expr)> {
        match self {
            Stmt::Call(c) => c
                .operands
                .iter_mut()
                .flatten()
                .map(|(b, off)| (*b, off))
                .collect(),
            _ => vec![],
        }
    }

    /// The variable the statement assigns: a `Set`'s, or a routine call's result.
    pub fn sets(&self) -> Option<VarId> {
        match self {
            Stmt::Set { var, .. } => Some(*var),
            Stmt::Call(c) => c.result,
            _ => None,
        }
    }

    /// The statements nested in this one (a loop's body).
    pub fn body(&self) -> &[Stmt] {
        match self {
            Stmt::Loop { body, .. } => body,
            _ => &[],
        }
    }

    /// [`Stmt::body`], to rewrite it.
    pub fn body_mut(&mut self) -> &mut [Stmt] {
        match self {
            Stmt::Loop { body, .. } => body,
            _ => &mut [],
        }
    }

    /// Calls `f` on this statement and every statement nested in it, outer first.
    pub fn walk(&self, f: &mut dyn FnMut(&Stmt)) {
        f(self);
        for s in self.body() {
            s.walk(f);
        }
    }

    /// [`Stmt::walk`], to rewrite them.
    pub fn walk_mut(&mut self, f: &mut dyn FnMut(&mut Stmt)) {
        f(self);
        for s in self.body_mut() {
            s.walk_mut(f);
        }
    }
}

impl Expr {
    /// Calls `f` on this expression and every one inside it, outer first.
    pub fn walk(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Load { index, .. } => index.walk(f),
            Expr::Op { args, .. } => args.iter().for_each(|a| a.walk(f)),
            _ => {}
        }
    }

    /// Whether the expression loads from buffer `b`.
    pub fn loads(&self, b: BufId) -> bool {
        let mut found = false;
        self.walk(&mut |e| found |= matches!(e, Expr::Load { buf, .. } if *buf == b));
        found
    }
}

/// `out[out_off + oy·ow + ox] = Σ x[x_off + iy·w + ix] · k[k_off + ky·kw + kx]` over the taps
/// inside the input (`iy = oy·sh + ky·dh - ph`, `ix = ox·sw + kx·dw - pw`): one channel of a
/// depthwise conv. Offsets are i64 expressions; the geometry is static.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Conv2d {
    pub x: BufId,
    pub x_off: Expr,
    pub k: BufId,
    pub k_off: Expr,
    pub out: BufId,
    pub out_off: Expr,
    pub geometry: crate::routines::conv::Geometry,
    pub epilogue: Epilogue,
}

/// `c[c_off + i*c_rs + j] = Σ_l a[a_off + i*a_rs + l*a_cs] · b[b_off + l*b_rs + j*b_cs]` for
/// `i < m`, `j < n`, `l < k` (`c_rs >= n`; `n` for a dense C); every field an i64 expression
/// except the buffers (f32).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Gemm {
    pub a: BufId,
    pub a_off: Expr,
    pub a_rs: Expr,
    pub a_cs: Expr,
    pub b: BufId,
    pub b_off: Expr,
    pub b_rs: Expr,
    pub b_cs: Expr,
    pub c: BufId,
    pub c_off: Expr,
    pub c_rs: Expr,
    pub m: Expr,
    pub n: Expr,
    pub k: Expr,
    /// A buffer holding `b` already packed by [`crate::routines::gemm::pack_b`] for this `k` and `n`
    /// (set for constant operands, packed once at compile time).
    pub b_packed: Option<BufId>,
    pub epilogue: Epilogue,
}

/// A scalar expression.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(into = "ExprRepr", try_from = "ExprRepr")]
pub enum Expr {
    /// An integer or bool constant of the dtype (bools are 0 or 1).
    Int(i64, DType),
    /// A float constant of the dtype.
    Float(f64, DType),
    /// Entry of the dim table (i64).
    Dim(usize),
    /// A loop index (i64) or a scalar variable.
    Var(VarId),
    /// `buf[index]`.
    Load { buf: BufId, index: Box<Expr> },
    /// An elementwise `ir` op (unary, binary, compare, select, cast) giving `dtype`.
    Op {
        op: Op,
        args: Vec<Expr>,
        dtype: DType,
    },
}

/// An [`Expr`] as serialized: scalar ops by mnemonic and attributes (as `.kir` text has
/// them), rebuilt by the op table, so that a deserialized op is one the table can make.
#[derive(serde::Serialize, serde::Deserialize)]
enum ExprRepr {
    Int(i64, DType),
    Float(f64, DType),
    Dim(usize),
    Var(VarId),
    Load {
        buf: BufId,
        #[serde(deserialize_with = "ir::deserialize_nested")]
        index: Box<Expr>,
    },
    Op {
        mnemonic: String,
        attrs: Vec<(String, ir::Lit)>,
        #[serde(deserialize_with = "ir::deserialize_nested")]
        args: Vec<Expr>,
        dtype: DType,
    },
}

impl From<Expr> for ExprRepr {
    fn from(e: Expr) -> ExprRepr {
        match e {
            Expr::Int(v, d) => ExprRepr::Int(v, d),
            Expr::Float(v, d) => ExprRepr::Float(v, d),
            Expr::Dim(k) => ExprRepr::Dim(k),
            Expr::Var(v) => ExprRepr::Var(v),
            Expr::Load { buf, index } => ExprRepr::Load { buf, index },
            Expr::Op { op, args, dtype } => ExprRepr::Op {
                mnemonic: op.mnemonic().to_string(),
                attrs: op
                    .attrs()
                    .into_iter()
                    .map(|(n, l)| (n.to_string(), l))
                    .collect(),
                args,
                dtype,
            },
        }
    }
}

impl TryFrom<ExprRepr> for Expr {
    type Error = String;

    fn try_from(r: ExprRepr) -> Result<Expr, String> {
        Ok(match r {
            ExprRepr::Int(v, d) => Expr::Int(v, d),
            ExprRepr::Float(v, d) => Expr::Float(v, d),
            ExprRepr::Dim(k) => Expr::Dim(k),
            ExprRepr::Var(v) => Expr::Var(v),
            ExprRepr::Load { buf, index } => Expr::Load { buf, index },
            ExprRepr::Op {
                mnemonic,
                attrs,
                args,
                dtype,
            } => {
                // Attributes that text leaves to the result type (a cast's target) come from
                // the scalar's dtype.
                let results = [ir::TensorType::new(dtype, ir::Shape::scalar())];
                let ctx = ir::AttrCtx {
                    results: &results,
                    constant: &|_| None,
                    region: None,
                };
                let op = Op::from_text(&mnemonic, attrs, &ctx)?
                    .ok_or_else(|| format!("unknown op `{mnemonic}`"))?;
                Expr::Op { op, args, dtype }
            }
        })
    }
}

/// A kernel: one function over its buffers.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Kernel {
    pub name: String,
    /// Inputs, outputs and scratch buffers; the caller passes one pointer per buffer, in order.
    pub bufs: Vec<Buf>,
    /// Dimension expressions the caller evaluates and passes, in order.
    pub dims: Vec<Dim>,
    /// Types of scalar variables (loop indices are i64).
    pub vars: Vec<DType>,
    pub body: Vec<Stmt>,
}

/// Codes a `Check` may end a kernel with.
pub mod codes {
    /// An index operand outside its axis.
    pub const INDEX_OUT_OF_RANGE: u32 = 1;
    /// An integer division by zero.
    pub const DIVISION_BY_ZERO: u32 = 2;

    /// What a code means.
    pub fn message(code: u32) -> &'static str {
        match code {
            INDEX_OUT_OF_RANGE => "an index is out of range",
            DIVISION_BY_ZERO => "integer division by zero",
            _ => "unknown failure",
        }
    }
}

/// Dtypes that kernels compute in natively.
pub fn is_native(d: DType) -> bool {
    matches!(
        d,
        DType::F32
            | DType::F64
            | DType::I8
            | DType::I16
            | DType::I32
            | DType::I64
            | DType::U8
            | DType::U16
            | DType::U32
            | DType::U64
            | DType::Bool
    )
}

/// Bytes of one element of a native dtype.
pub fn elem_bytes(d: DType) -> usize {
    (d.bits() as usize).div_ceil(8)
}

impl Expr {
    /// An i64 constant.
    pub fn i64(v: i64) -> Expr {
        Expr::Int(v, DType::I64)
    }
}

/// `a + b` on i64 indices, folding constants.
impl std::ops::Add for Expr {
    type Output = Expr;
    fn add(self, other: Expr) -> Expr {
        match (self, other) {
            (Expr::Int(0, _), e) | (e, Expr::Int(0, _)) => e,
            (Expr::Int(a, DType::I64), Expr::Int(b, DType::I64)) => Expr::i64(a.wrapping_add(b)),
            (a, b) => match regroup(&a, &b).or_else(|| regroup(&b, &a)) {
                Some(x) => x,
                None => Expr::Op {
                    op: Op::Add,
                    args: vec![a, b],
                    dtype: DType::I64,
                },
            },
        }
    }
}

/// `div(x, c) · c + rem(x, c)` is `x` (truncating division and remainder, any `x`, any
/// nonzero `c`): a reshape that splits an axis and one that joins it again meet as this.
fn regroup(prod: &Expr, rem: &Expr) -> Option<Expr> {
    let op = |e: &Expr, want: Op| match e {
        Expr::Op {
            op,
            args,
            dtype: DType::I64,
        } if *op == want && args.len() == 2 => Some((args[0].clone(), args[1].clone())),
        _ => None,
    };
    let (p, q) = op(prod, Op::Mul)?;
    let (x, c) = op(rem, Op::Rem)?;
    [(p.clone(), q.clone()), (q, p)]
        .into_iter()
        .find_map(|(d, c2)| match op(&d, Op::Div) {
            Some((x2, c3)) if c2 == c && c3 == c && x2 == x => Some(x.clone()),
            _ => None,
        })
}

/// `a * b` on i64 indices, folding constants.
impl std::ops::Mul for Expr {
    type Output = Expr;
    fn mul(self, other: Expr) -> Expr {
        match (self, other) {
            (Expr::Int(0, _), _) | (_, Expr::Int(0, _)) => Expr::i64(0),
            (Expr::Int(1, _), e) | (e, Expr::Int(1, _)) => e,
            (Expr::Int(a, DType::I64), Expr::Int(b, DType::I64)) => Expr::i64(a.wrapping_mul(b)),
            (a, b) => Expr::Op {
                op: Op::Mul,
                args: vec![a, b],
                dtype: DType::I64,
            },
        }
    }
}

impl Expr {
    /// An i64 op on indices (`div`, `mod`, ...).
    pub fn index_op(op: Op, a: Expr, b: Expr) -> Expr {
        if matches!(op, Op::Div) && b == Expr::i64(1) {
            return a;
        }
        Expr::Op {
            op,
            args: vec![a, b],
            dtype: DType::I64,
        }
    }

    /// The dtype of the value.
    pub fn dtype(&self, k: &Kernel) -> DType {
        match self {
            Expr::Int(_, d) | Expr::Float(_, d) | Expr::Op { dtype: d, .. } => *d,
            Expr::Dim(_) => DType::I64,
            Expr::Var(v) => k.vars[*v],
            Expr::Load { buf, .. } => k.bufs[*buf].dtype,
        }
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mark::Serial => Ok(()),
            Mark::Parallel => write!(f, " parallel"),
            Mark::Vector(n) => write!(f, " vector({n})"),
            Mark::Unroll(n) => write!(f, " unroll({n})"),
        }
    }
}

impl Kernel {
    /// Checks that every buffer, dim and variable a statement names exists and every call is
    /// of a known routine with its operands and arguments (deserialized kernels are checked
    /// before anything indexes by them).
    pub fn check_ids(&self) -> Result<(), crate::Error> {
        let (bufs, dims, vars) = (self.bufs.len(), self.dims.len(), self.vars.len());
        let buf = |b: BufId| match b < bufs {
            true => Ok(()),
            false => Err(format!("buffer {b} of {bufs}")),
        };
        fn expr(
            e: &Expr,
            buf: &dyn Fn(BufId) -> Result<(), String>,
            d: usize,
            v: usize,
        ) -> Result<(), String> {
            match e {
                Expr::Dim(k) if *k >= d => Err(format!("dim {k} of {d}")),
                Expr::Var(x) if *x >= v => Err(format!("variable {x} of {v}")),
                Expr::Load { buf: b, index } => {
                    buf(*b)?;
                    expr(index, buf, d, v)
                }
                Expr::Op { args, .. } => args.iter().try_for_each(|a| expr(a, buf, d, v)),
                _ => Ok(()),
            }
        }
        let mut result = Ok(());
        for s in &self.body {
            s.walk(&mut |s| {
                if result.is_err() {
                    return;
                }
                let var = match s {
                    Stmt::Loop { var, .. } => Some(*var),
                    s => s.sets(),
                };
                let call = match s {
                    Stmt::Call(c) => c.checked().and_then(|r| match (c.result, r.result) {
                        (Some(v), Some(d)) if self.vars.get(v).is_some_and(|&t| t != d) => Err(
                            format!("v{v}, a {}, for the {d} `{}` gives", self.vars[v], r.name),
                        ),
                        _ => Ok(()),
                    }),
                    _ => Ok(()),
                };
                result = call
                    .and_then(|()| {
                        var.filter(|&x| x >= vars)
                            .map_or(Ok(()), |x| Err(format!("variable {x} of {vars}")))
                    })
                    .and_then(|()| s.named_buffers().into_iter().try_for_each(buf))
                    .and_then(|()| {
                        s.exprs()
                            .into_iter()
                            .try_for_each(|e| expr(e, &buf, dims, vars))
                    });
            });
        }
        result.map_err(|m| crate::Error::Malformed(format!("kernel `{}` names {m}", self.name)))
    }

    fn expr(&self, e: &Expr, out: &mut String) {
        match e {
            Expr::Int(v, DType::I64) => write!(out, "{v}").unwrap(),
            Expr::Int(v, DType::Bool) => write!(out, "{}", *v != 0).unwrap(),
            Expr::Int(v, d) => write!(out, "{v}:{d}").unwrap(),
            Expr::Float(v, d) => write!(out, "{v:?}:{d}").unwrap(),
            Expr::Dim(k) => write!(out, "{{{}}}", self.dims[*k]).unwrap(),
            Expr::Var(v) => write!(out, "v{v}").unwrap(),
            Expr::Load { buf, index } => {
                out.push_str(&self.bufs[*buf].name);
                out.push('[');
                self.expr(index, out);
                out.push(']');
            }
            Expr::Op { op, args, dtype } => {
                let infix = match op {
                    Op::Add => Some("+"),
                    Op::Mul => Some("*"),
                    _ => None,
                };
                match (infix, args.as_slice()) {
                    (Some(sym), [a, b]) if *dtype == DType::I64 => {
                        out.push('(');
                        self.expr(a, out);
                        write!(out, " {sym} ").unwrap();
                        self.expr(b, out);
                        out.push(')');
                    }
                    _ => {
                        match op {
                            Op::Cast { .. } => write!(out, "cast<{dtype}>").unwrap(),
                            _ => out.push_str(op.mnemonic()),
                        }
                        out.push_str(&ir::attrs_text(op));
                        out.push('(');
                        for (i, a) in args.iter().enumerate() {
                            if i > 0 {
                                out.push_str(", ");
                            }
                            self.expr(a, out);
                        }
                        out.push(')');
                    }
                }
            }
        }
    }

    fn stmts(&self, body: &[Stmt], depth: usize, out: &mut String) {
        let pad = "  ".repeat(depth);
        for s in body {
            out.push_str(&pad);
            match s {
                Stmt::Loop {
                    var,
                    extent,
                    mark,
                    body,
                } => {
                    write!(out, "for v{var} in 0..").unwrap();
                    self.expr(extent, out);
                    writeln!(out, "{mark} {{").unwrap();
                    self.stmts(body, depth + 1, out);
                    writeln!(out, "{pad}}}").unwrap();
                    continue;
                }
                Stmt::Set { var, value } => {
                    write!(out, "v{var}: {} = ", self.vars[*var]).unwrap();
                    self.expr(value, out);
                }
                Stmt::Store { buf, index, value } => {
                    write!(out, "{}[", self.bufs[*buf].name).unwrap();
                    self.expr(index, out);
                    out.push_str("] = ");
                    self.expr(value, out);
                }
                Stmt::Check { cond, code } => {
                    out.push_str("check ");
                    self.expr(cond, out);
                    write!(out, " else {code}").unwrap();
                }
                Stmt::Call(c) => {
                    let e = |x: &Expr| {
                        let mut t = String::new();
                        self.expr(x, &mut t);
                        t
                    };
                    let r = c.routine();
                    let names = r.map(|r| (r.operands, r.ints));
                    if let Some(v) = c.result {
                        let d = self.vars.get(v).map_or("?".into(), |d| d.to_string());
                        write!(out, "v{v}: {d} = ").unwrap();
                    }
                    write!(out, "call {}(", c.routine).unwrap();
                    for (i, op) in c.operands.iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        if let Some((n, _, _)) = names.and_then(|(ops, _)| ops.get(i)) {
                            write!(out, "{n}: ").unwrap();
                        }
                        match op {
                            Some((b, off)) => write!(out, "{}[{}]", self.bufs[*b].name, e(off)),
                            None => write!(out, "-"),
                        }
                        .unwrap();
                    }
                    out.push(';');
                    for (i, x) in c.ints.iter().enumerate() {
                        match names.and_then(|(_, ints)| ints.get(i)) {
                            Some(n) => write!(out, " {n}={}", e(x)),
                            None => write!(out, " {}", e(x)),
                        }
                        .unwrap();
                    }
                    for (i, x) in c.scalars.iter().enumerate() {
                        match r.and_then(|r| r.scalars.get(i)) {
                            Some((n, _)) => write!(out, " {n}={}", e(x)),
                            None => write!(out, " {}", e(x)),
                        }
                        .unwrap();
                    }
                    out.push(')');
                }
            }
            out.push('\n');
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        write!(out, "kernel @{}(", self.name).unwrap();
        let mut first = true;
        // Every buffer in order (the order a caller passes them in), scratch too.
        for b in &self.bufs {
            if !first {
                out.push_str(", ");
            }
            first = false;
            let dir = match b.kind {
                BufKind::Input => "in",
                BufKind::Output => "out",
                BufKind::Scratch => "scratch",
            };
            write!(out, "{dir} {}: {}[{}]", b.name, b.dtype, b.len).unwrap();
        }
        out.push_str(") {\n");
        self.stmts(&self.body, 1, &mut out);
        out.push('}');
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An epilogue's `pre_at` is one of its four codes: 3 (a pair after the scale, the shift
    /// first) passes, 5 is refused with the routine's name.
    #[test]
    fn calls_refuse_an_unknown_pair_place() {
        let epilogue = Epilogue {
            pre_after_scale: true,
            shift_first: true,
            ..Epilogue::default()
        };
        let at = |v: f64| {
            let mut c = Call {
                routine: "qgemm4".into(),
                operands: vec![Some((0, Expr::i64(0))); 10],
                ints: vec![Expr::i64(1); 9],
                scalars: epilogue.scalars(),
                result: None,
            };
            let i = crate::routines::routine("qgemm4")
                .and_then(|r| r.scalars.iter().position(|(n, _)| *n == "pre_at"))
                .expect("qgemm4 has pre_at");
            c.scalars[i] = Expr::Float(v, DType::F32);
            c.checked().map(|r| r.name)
        };
        assert_eq!(at(3.0), Ok("qgemm4"));
        let err = at(5.0).expect_err("pre_at 5 refused");
        assert!(err.contains("qgemm4") && err.contains("pre_at 5"), "{err}");
    }

    #[test]
    fn an_axis_split_and_joined_again_is_the_index_itself() {
        let op = |op: Op, a: Expr, b: Expr| Expr::index_op(op, a, b);
        let (x, c) = (Expr::Var(0) * Expr::i64(3) + Expr::Var(1), Expr::i64(4));
        let split = |x: &Expr, c: &Expr| {
            (
                op(Op::Div, x.clone(), c.clone()),
                op(Op::Rem, x.clone(), c.clone()),
            )
        };
        let (q, r) = split(&x, &c);
        // Either order of the sum and of the product.
        assert_eq!(q.clone() * c.clone() + r.clone(), x);
        assert_eq!(r.clone() + c.clone() * q.clone(), x);
        // Not for another divisor, another dividend or a floored modulus.
        let (q5, _) = split(&x, &Expr::i64(5));
        assert_ne!(q5 * c.clone() + r.clone(), x);
        let (qy, _) = split(&Expr::Var(2), &c);
        assert_ne!(qy * c.clone() + r, x);
        let m = op(Op::Mod, x.clone(), c.clone());
        assert_ne!(q * c + m, x);
    }

    /// postcard bytes of `Load { buf: 0, index: … }` nested `depth` times around `Dim(0)`.
    fn nested_loads(depth: usize) -> Vec<u8> {
        let mut b = [4u8, 0].repeat(depth);
        b.extend([2, 0]);
        b
    }

    #[test]
    fn the_visitor_sees_every_expression_operand_and_nested_statement() {
        let load = |buf: BufId| Expr::Load {
            buf,
            index: Box::new(Expr::Var(0)),
        };
        let gemm = Gemm {
            a: 0,
            a_off: Expr::i64(0),
            a_rs: Expr::i64(4),
            a_cs: Expr::i64(1),
            b: 1,
            b_off: Expr::Var(0),
            b_rs: Expr::i64(2),
            b_cs: Expr::i64(1),
            c: 2,
            c_off: Expr::i64(0),
            c_rs: Expr::i64(2),
            m: Expr::i64(3),
            n: Expr::i64(2),
            k: Expr::i64(4),
            b_packed: Some(5),
            epilogue: Default::default(),
        };
        let mut s = Stmt::Loop {
            var: 0,
            extent: Expr::Dim(0),
            mark: Mark::Serial,
            body: vec![
                Stmt::Store {
                    buf: 3,
                    index: Expr::Var(0),
                    value: load(4),
                },
                Stmt::Call(Box::new(gemm.into())),
            ],
        };
        let mut seen = Vec::new();
        s.walk(&mut |s| seen.push(s.operands()));
        // The loop, the store (writes 3), the product (reads A and the packed B, never B;
        // writes C).
        assert_eq!(
            seen,
            vec![
                vec![],
                vec![(3, true)],
                vec![(0, false), (5, false), (2, true)]
            ]
        );
        assert!(s.body()[0].exprs().iter().any(|e| e.loads(4)));
        // Rewriting every expression reaches the product's fields too.
        let mut n = 0;
        s.walk_mut(&mut |s| {
            for e in s.exprs_mut() {
                if *e == Expr::Var(0) {
                    *e = Expr::i64(7);
                    n += 1;
                }
            }
        });
        assert_eq!(n, 2, "the store's index and the product's b_off");
        let Stmt::Call(g) = &s.body()[1] else {
            unreachable!()
        };
        assert_eq!(g.operand("b"), Some(&(1, Expr::i64(7))));
    }

    #[test]
    fn expressions_round_trip_and_hostile_nesting_is_an_error() {
        let e = Expr::Op {
            op: Op::Cast {
                dtype: DType::F64,
                saturate: false,
            },
            args: vec![Expr::Load {
                buf: 1,
                index: Box::new(Expr::Dim(0) + Expr::Var(2)),
            }],
            dtype: DType::F64,
        };
        let back: Expr = postcard::from_bytes(&postcard::to_stdvec(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        let shallow: Expr = postcard::from_bytes(&nested_loads(100)).unwrap();
        assert!(matches!(shallow, Expr::Load { .. }));
        // Deep enough to exhaust a thread's stack without the limit (postcard keeps no
        // message: that it returns at all is the point).
        assert!(postcard::from_bytes::<Expr>(&nested_loads(1_000_000)).is_err());
        assert!(postcard::from_bytes::<Expr>(&nested_loads(ir::MAX_NESTING as usize + 1)).is_err());
        assert!(postcard::from_bytes::<Expr>(&nested_loads(ir::MAX_NESTING as usize - 1)).is_ok());
        // The limit resets: a later, shallow expression still loads.
        assert!(postcard::from_bytes::<Expr>(&nested_loads(3)).is_ok());
        // An op the table does not know is an error, not a panic.
        let bad = Expr::Op {
            op: Op::Neg,
            args: vec![Expr::Dim(0)],
            dtype: DType::I64,
        };
        let mut bytes = postcard::to_stdvec(&bad).unwrap();
        let at = bytes.windows(3).position(|w| w == b"neg").unwrap();
        bytes[at..at + 3].copy_from_slice(b"nog");
        assert!(postcard::from_bytes::<Expr>(&bytes).is_err());
    }
}
