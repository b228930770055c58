//! The Cranelift backend: compiles kernel IR to native functions of the host (through an
//! object file and `kernel::loader`, as artifacts load: one path for JIT and AOT code).
//!
//! Each kernel becomes `extern "C" fn(bufs: *const *mut u8, dims: *const i64) -> u32`, where
//! `bufs[i]` points at the data of `kernel.bufs[i]` and `dims[k]` is the value of
//! `kernel.dims[k]`; it returns 0, or the code of the first `Check` that fails.
//!
//! Scalar semantics follow the reference interpreter exactly. Floats: `+ - * /`, `sqrt`,
//! `recip` and the roundings are native in the value's dtype (for f32 that is identical to
//! computing in f64 and rounding once); everything else is computed in f64 — natively
//! (`rsqrt`) or through `extern "C"` helpers in this file (`exp`, `log`, `erf`, `pow`, `rem`,
//! ...) — and rounded to the dtype. Integers wrap at their width; division guards its divisor
//! so that no instruction can trap (the lowering puts a `Check` before every division whose
//! divisor may be zero).
//!
//! Loops marked `vector(_)` whose bodies are elementwise (stores and loop-local temporaries)
//! run 4 lanes at a time in SIMD registers, and reductions (`max`/`min` of f32, f64 sums of
//! f32 values) keep vector accumulators; both finish with the scalar loop. What is vectorized,
//! and the accuracy contract of the vector `exp`, `log`, `sigmoid`, `tanh` and `erf` (within
//! 2 ulp of the f64 function rounded, instead of exactly it), are in `simd.rs`. Parallel and unroll marks
//! run serially.

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, Block, BlockArg, FuncRef, Function, InstBuilder, MemFlagsData, Type,
    UserFuncName, Value,
};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FuncInstBuilder, FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_module::{FuncId, Linkage, Module};
use ir::{DType, Op, OpKind};

use kernel::routines::Sig;
use kernel::{is_native, Expr, Kernel, Mark, Stmt};

mod simd;
mod vmath;

/// Why kernels could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    /// The kernel uses an op or dtype this backend does not implement.
    #[error("kernel `{kernel}`: {message} is not supported by the Cranelift backend")]
    Unsupported { kernel: String, message: String },
    /// The kernel is malformed (an id out of range, operands of mismatched dtypes, ...).
    #[error("kernel `{kernel}` is malformed: {message}")]
    Invalid { kernel: String, message: String },
    /// Cranelift rejected the generated code or failed to link it.
    #[error("kernel `{kernel}`: Cranelift failed: {message}")]
    Backend { kernel: String, message: String },
    /// The host machine or its settings are not usable.
    #[error("Cranelift cannot target the host: {0}")]
    Host(String),
}

/// Kernels compiled for this machine and loaded: the JIT emits an object file and maps it
/// with the loader artifacts use (`kernel::loader`), so compiled and loaded code are the same
/// bytes. The code lives as long as this value.
pub type Compiled = kernel::loader::Image;

/// The code generator for the host machine: what its CPU has (SSE4.1, AVX, FMA, BMI, ...),
/// optimizing for speed, library functions called by absolute address.
pub(crate) fn host_isa() -> Result<cranelift_codegen::isa::OwnedTargetIsa, JitError> {
    let host = |e: &dyn std::fmt::Display| JitError::Host(e.to_string());
    cranelift_native::builder()
        .map_err(|e| host(&e))?
        .finish(shared_flags()?)
        .map_err(|e| host(&e))
}

/// The settings every kiln ISA shares: optimizing for speed, library functions called by
/// absolute address.
pub(crate) fn shared_flags() -> Result<settings::Flags, JitError> {
    let host = |e: &dyn std::fmt::Display| JitError::Host(e.to_string());
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(|e| host(&e))?;
    flags
        .set("use_colocated_libcalls", "false")
        .map_err(|e| host(&e))?;
    flags.set("is_pic", "false").map_err(|e| host(&e))?;
    Ok(settings::Flags::new(flags))
}

thread_local! {
    static COMPILATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many times this thread has run Cranelift ([`compile`] or
/// [`crate::aot::compile_object`]): lets tests show that a path never compiles.
pub fn compilations_on_this_thread() -> usize {
    COMPILATIONS.with(std::cell::Cell::get)
}

/// Counts one run of Cranelift on this thread.
pub(crate) fn count_compilation() {
    COMPILATIONS.with(|c| c.set(c.get() + 1));
}

/// Compiles kernels for the host machine, ready to call: an object file
/// ([`crate::aot::compile_object`]) loaded in place.
pub fn compile(kernels: &[Kernel]) -> Result<Compiled, JitError> {
    let obj = crate::aot::compile_object(kernels)?;
    kernel::loader::Image::load(&obj, kernels.len()).map_err(|e| JitError::Backend {
        kernel: "<module>".into(),
        message: e.to_string(),
    })
}

/// Declares and defines `kiln_kernel_{i}` for every kernel, with `linkage`.
pub(crate) fn define_all(
    module: &mut dyn Module,
    kernels: &[Kernel],
    linkage: Linkage,
) -> Result<Vec<FuncId>, JitError> {
    let ptr = module.target_config().pointer_type();
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    let mut ids = Vec::with_capacity(kernels.len());
    for (i, k) in kernels.iter().enumerate() {
        let backend = |message: String| JitError::Backend {
            kernel: k.name.clone(),
            message,
        };
        let mut sig = module.make_signature();
        sig.params.push(AbiParam::new(ptr));
        sig.params.push(AbiParam::new(ptr));
        sig.returns.push(AbiParam::new(types::I32));
        let id = module
            .declare_function(&format!("kiln_kernel_{i}"), linkage, &sig)
            .map_err(|e| backend(e.to_string()))?;
        ctx.func.signature = sig;
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        lower_kernel(module, &mut ctx.func, &mut fctx, k)?;
        module
            .define_function(id, &mut ctx)
            .map_err(|e| backend(format!("{e:?}")))?;
        module.clear_context(&mut ctx);
        ids.push(id);
    }
    Ok(ids)
}

/// The Cranelift type that holds a value of a native dtype.
fn cl_type(d: DType) -> Option<Type> {
    Some(match d {
        DType::F32 => types::F32,
        DType::F64 => types::F64,
        DType::I8 | DType::U8 | DType::Bool => types::I8,
        DType::I16 | DType::U16 => types::I16,
        DType::I32 | DType::U32 => types::I32,
        DType::I64 | DType::U64 => types::I64,
        _ => return None,
    })
}

/// Integer dtypes kernels compute in.
fn is_int(d: DType) -> bool {
    is_native(d) && d.is_int()
}

fn is_signed(d: DType) -> bool {
    is_native(d) && d.is_signed_int()
}

fn is_float(d: DType) -> bool {
    is_native(d) && d.is_float()
}

fn lower_kernel(
    module: &mut dyn Module,
    func: &mut Function,
    fctx: &mut FunctionBuilderContext,
    k: &Kernel,
) -> Result<(), JitError> {
    let unsupported = |message: String| JitError::Unsupported {
        kernel: k.name.clone(),
        message,
    };
    for b in &k.bufs {
        if cl_type(b.dtype).is_none() {
            return Err(unsupported(format!(
                "dtype {} (buffer `{}`)",
                b.dtype, b.name
            )));
        }
    }
    let ptr = module.target_config().pointer_type();
    let mut b = FunctionBuilder::new(func, fctx);
    let mut vars = Vec::with_capacity(k.vars.len());
    for (i, &d) in k.vars.iter().enumerate() {
        let ty = cl_type(d).ok_or_else(|| unsupported(format!("dtype {d} (variable v{i})")))?;
        vars.push(b.declare_var(ty));
    }
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let (bufs_p, dims_p) = (b.block_params(entry)[0], b.block_params(entry)[1]);
    // Pointers and dims are loaded once, at entry; unused ones are removed by the optimizer.
    let table = MemFlagsData::trusted().with_readonly();
    let mut bases = Vec::with_capacity(k.bufs.len());
    for i in 0..k.bufs.len() {
        let off = i32::try_from(i * ptr.bytes() as usize).map_err(|_| JitError::Invalid {
            kernel: k.name.clone(),
            message: "too many buffers".into(),
        })?;
        bases.push(b.ins().load(ptr, table, bufs_p, off));
    }
    let mut dims = Vec::with_capacity(k.dims.len());
    for i in 0..k.dims.len() {
        let off = i32::try_from(i * 8).map_err(|_| JitError::Invalid {
            kernel: k.name.clone(),
            message: "too many dims".into(),
        })?;
        dims.push(b.ins().load(types::I64, table, dims_p, off));
    }
    let fail = b.create_block();
    b.append_block_param(fail, types::I32);
    let mut l = Lower {
        k,
        b,
        module,
        ptr,
        bases,
        dims,
        vars,
        fail,
        refs: HashMap::new(),
        hoisted: HashMap::new(),
    };
    l.stmts(&k.body)?;
    let zero = l.b.ins().iconst(types::I32, 0);
    l.b.ins().return_(&[zero]);
    l.b.switch_to_block(fail);
    let code = l.b.block_params(fail)[0];
    l.b.ins().return_(&[code]);
    l.b.seal_all_blocks();
    let config = l.module.target_config();
    l.b.finalize(config);
    Ok(())
}

struct Lower<'a, 'f> {
    k: &'a Kernel,
    b: FunctionBuilder<'f>,
    module: &'a mut dyn Module,
    ptr: Type,
    bases: Vec<Value>,
    dims: Vec<Value>,
    vars: Vec<Variable>,
    /// Returns its `i32` parameter: where failing checks go.
    fail: Block,
    refs: HashMap<&'static str, FuncRef>,
    /// Loop-invariant subexpressions of the vector loop being lowered, computed before it
    /// (keyed by address: they are nodes of `k`); empty outside vector loops.
    hoisted: HashMap<*const Expr, (Value, DType)>,
}

type R<T> = Result<T, JitError>;
/// Code emitted by a callback (a loop body, a loop preheader).
type Emit<'e, L> = &'e mut dyn FnMut(&mut L) -> R<()>;

impl<'f> Lower<'_, 'f> {
    fn ins(&mut self) -> FuncInstBuilder<'_, 'f> {
        self.b.ins()
    }

    fn invalid(&self, message: impl Into<String>) -> JitError {
        JitError::Invalid {
            kernel: self.k.name.clone(),
            message: message.into(),
        }
    }

    fn unsupported(&self, message: impl Into<String>) -> JitError {
        JitError::Unsupported {
            kernel: self.k.name.clone(),
            message: message.into(),
        }
    }

    fn var(&self, v: usize) -> R<(Variable, DType)> {
        match (self.vars.get(v), self.k.vars.get(v)) {
            (Some(&var), Some(&d)) => Ok((var, d)),
            _ => Err(self.invalid(format!("variable v{v} is not declared"))),
        }
    }

    fn stmts(&mut self, body: &[Stmt]) -> R<()> {
        for s in body {
            self.stmt(s)?;
        }
        Ok(())
    }

    fn stmt(&mut self, s: &Stmt) -> R<()> {
        match s {
            Stmt::Loop {
                var,
                extent,
                mark,
                body,
            } => {
                let (v, d) = self.var(*var)?;
                if d != DType::I64 {
                    return Err(self.invalid(format!("loop variable v{var} is {d}, not i64")));
                }
                // Vector loops and reductions get SIMD code (`simd.rs`); parallel and unroll
                // marks run serially.
                if matches!(mark, Mark::Vector(_)) && self.vector_loop(*var, extent, body)? {
                    return Ok(());
                }
                if self.reduction_loop(*var, extent, body)? {
                    return Ok(());
                }
                let n = self.expr_of(extent, DType::I64, "a loop extent")?;
                let zero = self.b.ins().iconst(types::I64, 0);
                self.counted_loop(v, zero, n, 1, None, &mut |s| s.stmts(body))?;
            }
            Stmt::Set { var, value } => {
                let (v, d) = self.var(*var)?;
                let x = self.expr_of(value, d, &format!("the value set to v{var}"))?;
                self.def(v, x)?;
            }
            Stmt::Store { buf, index, value } => {
                let d = self.buf_dtype(*buf)?;
                let addr = self.address(*buf, index)?;
                let name = &self.k.bufs[*buf].name;
                let x = self.expr_of(value, d, &format!("the value stored to `{name}`"))?;
                self.b
                    .ins()
                    .store(MemFlagsData::new().with_notrap(), x, addr, 0);
            }
            Stmt::Call(c) => self.routine_call(c)?,
            Stmt::Check { cond, code } => {
                let c = self.expr_of(cond, DType::Bool, "a check condition")?;
                let code = self.b.ins().iconst(types::I32, i64::from(*code));
                let cont = self.b.create_block();
                self.b
                    .ins()
                    .brif(c, cont, &[], self.fail, &[BlockArg::Value(code)]);
                self.b.switch_to_block(cont);
            }
        }
        Ok(())
    }

    /// `for v in start..end` by `step` (which must divide `end - start` unless it is 1): the
    /// body runs while `v < end`; `pre` runs once before the first iteration, if any.
    fn counted_loop(
        &mut self,
        v: Variable,
        start: Value,
        end: Value,
        step: i64,
        pre: Option<Emit<'_, Self>>,
        body: Emit<'_, Self>,
    ) -> R<()> {
        self.def(v, start)?;
        let body_b = self.b.create_block();
        let exit = self.b.create_block();
        let any = self.b.ins().icmp(IntCC::SignedLessThan, start, end);
        if let Some(pre) = pre {
            let pre_b = self.b.create_block();
            self.b.ins().brif(any, pre_b, &[], exit, &[]);
            self.b.switch_to_block(pre_b);
            pre(self)?;
            self.b.ins().jump(body_b, &[]);
        } else {
            self.b.ins().brif(any, body_b, &[], exit, &[]);
        }
        self.b.switch_to_block(body_b);
        body(self)?;
        let i = self.use_var(v)?;
        let next = self.b.ins().iadd_imm_s(i, step);
        self.def(v, next)?;
        let more = self.b.ins().icmp(IntCC::SignedLessThan, next, end);
        self.b.ins().brif(more, body_b, &[], exit, &[]);
        self.b.switch_to_block(exit);
        Ok(())
    }

    fn def(&mut self, v: Variable, x: Value) -> R<()> {
        self.b
            .try_def_var(v, x)
            .map_err(|e| self.invalid(format!("{e}")))
    }

    fn use_var(&mut self, v: Variable) -> R<Value> {
        self.b
            .try_use_var(v)
            .map_err(|e| self.invalid(format!("{e}")))
    }

    fn buf_dtype(&self, buf: usize) -> R<DType> {
        self.k
            .bufs
            .get(buf)
            .map(|b| b.dtype)
            .ok_or_else(|| self.invalid(format!("buffer {buf} does not exist")))
    }

    /// The address of `buf[index]`.
    fn address(&mut self, buf: usize, index: &Expr) -> R<Value> {
        let i = self.expr_of(index, DType::I64, "an index")?;
        self.address_at(buf, i)
    }

    /// The address of `buf[i]`, `i` an i64 value.
    fn address_at(&mut self, buf: usize, i: Value) -> R<Value> {
        let d = self.buf_dtype(buf)?;
        let i = if self.ptr == types::I64 {
            i
        } else {
            self.b.ins().ireduce(self.ptr, i)
        };
        let shift = i64::from(kernel::elem_bytes(d).trailing_zeros());
        let off = self.b.ins().ishl_imm_u(i, shift);
        Ok(self.b.ins().iadd(self.bases[buf], off))
    }

    /// Lowers `e`, which must have dtype `want`.
    fn expr_of(&mut self, e: &Expr, want: DType, what: &str) -> R<Value> {
        let (x, d) = self.expr(e)?;
        if d != want {
            return Err(self.invalid(format!("{what} is {d}, expected {want}")));
        }
        Ok(x)
    }

    /// An integer constant of `ty`, with the bits above the type's width cleared.
    fn iconst(&mut self, ty: Type, v: i64) -> Value {
        let bits = ty.bits();
        let v = if bits >= 64 {
            v
        } else {
            v & ((1i64 << bits) - 1)
        };
        self.b.ins().iconst(ty, v)
    }

    fn fconst(&mut self, d: DType, v: f64) -> Value {
        if d == DType::F32 {
            self.b.ins().f32const(v as f32)
        } else {
            self.b.ins().f64const(v)
        }
    }

    fn expr(&mut self, e: &Expr) -> R<(Value, DType)> {
        if let Some(&h) = self.hoisted.get(&(e as *const Expr)) {
            return Ok(h);
        }
        Ok(match e {
            Expr::Int(v, d) => {
                let x = match *d {
                    d if is_float(d) => self.fconst(d, *v as f64),
                    DType::Bool => self.b.ins().iconst(types::I8, i64::from(*v != 0)),
                    d => match cl_type(d) {
                        Some(ty) => self.iconst(ty, *v),
                        None => return Err(self.unsupported(format!("dtype {d} (a constant)"))),
                    },
                };
                (x, *d)
            }
            Expr::Float(v, d) => {
                if !is_float(*d) {
                    return Err(self.unsupported(format!("a float constant of dtype {d}")));
                }
                (self.fconst(*d, *v), *d)
            }
            Expr::Dim(k) => match self.dims.get(*k) {
                Some(&x) => (x, DType::I64),
                None => return Err(self.invalid(format!("dim {k} is not in the dim table"))),
            },
            Expr::Var(v) => {
                let (var, d) = self.var(*v)?;
                (self.use_var(var)?, d)
            }
            Expr::Load { buf, index } => {
                let d = self.buf_dtype(*buf)?;
                let addr = self.address(*buf, index)?;
                let ty = cl_type(d).expect("buffer dtypes were checked");
                let x = self
                    .b
                    .ins()
                    .load(ty, MemFlagsData::new().with_notrap(), addr, 0);
                (x, d)
            }
            Expr::Op { op, args, dtype } => {
                let x = self.op(op, args, *dtype)?;
                (x, *dtype)
            }
        })
    }

    fn op(&mut self, op: &Op, args: &[Expr], dtype: DType) -> R<Value> {
        let mut vals = Vec::with_capacity(args.len());
        for a in args {
            vals.push(self.expr(a)?);
        }
        self.apply(op, &vals, dtype)
    }

    /// `op` of lowered operands.
    fn apply(&mut self, op: &Op, vals: &[(Value, DType)], dtype: DType) -> R<Value> {
        let name = match op {
            Op::Cast { .. } => "cast",
            _ => op.mnemonic(),
        };
        let arity = match op.kind() {
            OpKind::Unary | OpKind::Cast => 1,
            OpKind::Binary => 2,
            OpKind::Ternary => 3,
            _ => return Err(self.unsupported(format!("op `{name}`"))),
        };
        if vals.len() != arity {
            return Err(self.invalid(format!(
                "`{name}` takes {arity} operands, got {}",
                vals.len()
            )));
        }
        let (x, d) = match op.kind() {
            OpKind::Unary => self.unary(op, vals[0].0, vals[0].1)?,
            OpKind::Binary => {
                let ((a, da), (b, db)) = (vals[0], vals[1]);
                if da != db {
                    return Err(self.invalid(format!("`{name}` of {da} and {db}")));
                }
                self.binary(op, a, b, da)?
            }
            OpKind::Ternary => {
                let ((c, dc), (a, da), (b, db)) = (vals[0], vals[1], vals[2]);
                if !matches!(op, Op::Select) {
                    return Err(self.unsupported(format!("op `{name}`")));
                }
                if dc != DType::Bool || da != db {
                    return Err(self.invalid(format!("`select` of {dc}, {da} and {db}")));
                }
                (self.b.ins().select(c, a, b), da)
            }
            _ => {
                let Op::Cast { dtype: to, .. } = op else {
                    return Err(self.unsupported(format!("op `{name}`")));
                };
                (self.cast(vals[0].0, vals[0].1, *to)?, *to)
            }
        };
        if d != dtype {
            return Err(self.invalid(format!(
                "`{name}` gives {d}, but the expression is typed {dtype}"
            )));
        }
        Ok(x)
    }

    /// A call of a library routine: every operand's address (null for an absent optional
    /// one), then every integer argument as i64, then every scalar argument in its dtype, as
    /// the routine table says; its result, if it has one, set to the call's variable.
    fn routine_call(&mut self, c: &kernel::Call) -> R<()> {
        let r = c.checked().map_err(|m| self.invalid(m))?;
        let mut args = Vec::with_capacity(c.operands.len() + c.ints.len());
        for (op, &(_, _, dtype)) in c.operands.iter().zip(r.operands) {
            match op {
                Some((buf, off)) => {
                    if self.buf_dtype(*buf)? != dtype {
                        return Err(
                            self.unsupported(format!("{} on buffers that are not {dtype}", r.name))
                        );
                    }
                    args.push(self.address(*buf, off)?);
                }
                None => args.push(self.b.ins().iconst(self.ptr, 0)),
            }
        }
        for x in &c.ints {
            args.push(self.expr_of(x, DType::I64, "a routine's integer argument")?);
        }
        let mut params = vec![self.ptr; r.operands.len()];
        params.extend(vec![types::I64; r.ints.len()]);
        for (x, &(_, d)) in c.scalars.iter().zip(r.scalars) {
            args.push(self.expr_of(x, d, "a routine's scalar argument")?);
            params.push(cl_type(d).ok_or_else(|| self.unsupported(format!("{d} arguments")))?);
        }
        let ret = match r.result {
            Some(d) => Some(cl_type(d).ok_or_else(|| self.unsupported(format!("{d} results")))?),
            None => None,
        };
        let f = self.import(r.symbol, &params, ret)?;
        let call = self.b.ins().call(f, &args);
        if let Some(v) = c.result {
            let (var, d) = self.var(v)?;
            if Some(d) != r.result {
                return Err(self.invalid(format!("v{v} is {d}, `{}` gives another", r.name)));
            }
            let x = self.b.inst_results(call)[0];
            self.def(var, x)?;
        }
        Ok(())
    }

    /// A reference to library function `name` taking `params` and returning `ret` (declared
    /// once per function).
    fn import(
        &mut self,
        name: &'static str,
        params: &[Type],
        ret: Option<Type>,
    ) -> R<cranelift_codegen::ir::FuncRef> {
        if let Some(&f) = self.refs.get(name) {
            return Ok(f);
        }
        let mut sig = self.module.make_signature();
        for &t in params {
            sig.params.push(AbiParam::new(t));
        }
        sig.returns.extend(ret.map(AbiParam::new));
        let id = self
            .module
            .declare_function(name, Linkage::Import, &sig)
            .map_err(|e| JitError::Backend {
                kernel: self.k.name.clone(),
                message: e.to_string(),
            })?;
        let f = self.module.declare_func_in_func(id, self.b.func);
        self.refs.insert(name, f);
        Ok(f)
    }

    /// Calls helper `name`; the arguments must match its shape.
    fn call(&mut self, name: &'static str, args: &[Value]) -> R<Value> {
        let shape = kernel::routines::math()
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|&(_, s, _)| s)
            .expect("helpers are in the table");
        let (arg, n) = match shape {
            Sig::F1 => (types::F64, 1),
            Sig::F2 => (types::F64, 2),
            Sig::I2 => (types::I64, 2),
        };
        let f = self.import(name, &vec![arg; n], Some(arg))?;
        let inst = self.b.ins().call(f, args);
        Ok(self.b.inst_results(inst)[0])
    }

    fn widen(&mut self, x: Value, d: DType) -> Value {
        if d == DType::F32 {
            self.b.ins().fpromote(types::F64, x)
        } else {
            x
        }
    }

    fn narrow(&mut self, x: Value, d: DType) -> Value {
        if d == DType::F32 {
            self.b.ins().fdemote(types::F32, x)
        } else {
            x
        }
    }

    /// `name(x)` computed in f64 and rounded to `d`.
    fn call_f1(&mut self, name: &'static str, x: Value, d: DType) -> R<Value> {
        let w = self.widen(x, d);
        let r = self.call(name, &[w])?;
        Ok(self.narrow(r, d))
    }

    fn call_f2(&mut self, name: &'static str, a: Value, b: Value, d: DType) -> R<Value> {
        let (wa, wb) = (self.widen(a, d), self.widen(b, d));
        let r = self.call(name, &[wa, wb])?;
        Ok(self.narrow(r, d))
    }

    fn unary(&mut self, op: &Op, x: Value, d: DType) -> R<(Value, DType)> {
        let bad = |s: &Self| s.unsupported(format!("op `{}` on {d}", op.mnemonic()));
        if is_float(d) {
            let r = match op {
                Op::IsNan => {
                    let r = self.ins().fcmp(FloatCC::Unordered, x, x);
                    return Ok((r, DType::Bool));
                }
                Op::IsInf => {
                    let a = self.ins().fabs(x);
                    let inf = self.fconst(d, f64::INFINITY);
                    let r = self.ins().fcmp(FloatCC::Equal, a, inf);
                    return Ok((r, DType::Bool));
                }
                Op::Neg => self.ins().fneg(x),
                Op::Abs => self.ins().fabs(x),
                Op::Sqrt => self.ins().sqrt(x),
                Op::Floor => self.ins().floor(x),
                Op::Ceil => self.ins().ceil(x),
                Op::Round => self.ins().nearest(x),
                Op::Recip => {
                    let one = self.fconst(d, 1.0);
                    self.ins().fdiv(one, x)
                }
                Op::Rsqrt => {
                    // Two operations: in f64, rounded once, as the interpreter does.
                    let w = self.widen(x, d);
                    let s = self.ins().sqrt(w);
                    let one = self.ins().f64const(1.0);
                    let r = self.ins().fdiv(one, s);
                    self.narrow(r, d)
                }
                _ => {
                    let name = match op {
                        Op::Sign => "kiln_sign",
                        Op::Exp => "kiln_exp",
                        Op::Log => "kiln_log",
                        Op::Sin => "kiln_sin",
                        Op::Cos => "kiln_cos",
                        Op::Tan => "kiln_tan",
                        Op::Asin => "kiln_asin",
                        Op::Acos => "kiln_acos",
                        Op::Atan => "kiln_atan",
                        Op::Sinh => "kiln_sinh",
                        Op::Cosh => "kiln_cosh",
                        Op::Asinh => "kiln_asinh",
                        Op::Acosh => "kiln_acosh",
                        Op::Atanh => "kiln_atanh",
                        Op::Tanh => "kiln_tanh",
                        Op::Sigmoid => "kiln_sigmoid",
                        Op::Erf => "kiln_erf",
                        _ => return Err(bad(self)),
                    };
                    self.call_f1(name, x, d)?
                }
            };
            return Ok((r, d));
        }
        if d == DType::Bool {
            return match op {
                Op::Not => Ok((self.ins().bxor_imm_u(x, 1), d)),
                _ => Err(bad(self)),
            };
        }
        if !is_int(d) {
            return Err(bad(self));
        }
        let ty = cl_type(d).expect("integer dtypes are native");
        let r = match op {
            Op::Neg => self.ins().ineg(x),
            Op::Abs if is_signed(d) => self.ins().iabs(x),
            // Unsigned values are their own magnitude.
            Op::Abs => x,
            Op::Not => self.ins().bnot(x),
            Op::Sign => {
                let zero = self.iconst(ty, 0);
                let cc = if is_signed(d) {
                    IntCC::SignedGreaterThan
                } else {
                    IntCC::UnsignedGreaterThan
                };
                let gt = self.ins().icmp(cc, x, zero);
                let lt = self.ins().icmp(IntCC::SignedLessThan, x, zero);
                let (gt, lt) = if ty == types::I8 {
                    (gt, lt)
                } else {
                    (self.ins().uextend(ty, gt), self.ins().uextend(ty, lt))
                };
                if is_signed(d) {
                    self.ins().isub(gt, lt)
                } else {
                    gt
                }
            }
            _ => return Err(bad(self)),
        };
        Ok((r, d))
    }

    fn binary(&mut self, op: &Op, a: Value, b: Value, d: DType) -> R<(Value, DType)> {
        let bad = |s: &Self| s.unsupported(format!("op `{}` on {d}", op.mnemonic()));
        let cmp = match op {
            Op::Eq => Some((IntCC::Equal, IntCC::Equal, FloatCC::Equal)),
            Op::Ne => Some((IntCC::NotEqual, IntCC::NotEqual, FloatCC::NotEqual)),
            Op::Lt => Some((
                IntCC::SignedLessThan,
                IntCC::UnsignedLessThan,
                FloatCC::LessThan,
            )),
            Op::Le => Some((
                IntCC::SignedLessThanOrEqual,
                IntCC::UnsignedLessThanOrEqual,
                FloatCC::LessThanOrEqual,
            )),
            Op::Gt => Some((
                IntCC::SignedGreaterThan,
                IntCC::UnsignedGreaterThan,
                FloatCC::GreaterThan,
            )),
            Op::Ge => Some((
                IntCC::SignedGreaterThanOrEqual,
                IntCC::UnsignedGreaterThanOrEqual,
                FloatCC::GreaterThanOrEqual,
            )),
            _ => None,
        };
        if let Some((s, u, f)) = cmp {
            // `!=` is true when either side is NaN (Cranelift's `ne` is unordered-or-unequal);
            // the other float comparisons are ordered. Bools compare as 0 < 1.
            let r = if is_float(d) {
                self.ins().fcmp(f, a, b)
            } else if is_signed(d) {
                self.ins().icmp(s, a, b)
            } else {
                self.ins().icmp(u, a, b)
            };
            return Ok((r, DType::Bool));
        }
        if is_float(d) {
            let r = match op {
                Op::Add => self.ins().fadd(a, b),
                Op::Sub => self.ins().fsub(a, b),
                Op::Mul => self.ins().fmul(a, b),
                Op::Div => self.ins().fdiv(a, b),
                // NaN if either is NaN, like the interpreter's `fmax`/`fmin`.
                Op::Max => self.ins().fmax(a, b),
                Op::Min => self.ins().fmin(a, b),
                Op::Rem => self.call_f2("kiln_rem", a, b, d)?,
                Op::Mod => self.call_f2("kiln_mod", a, b, d)?,
                Op::Pow => self.call_f2("kiln_pow", a, b, d)?,
                Op::Atan2 => self.call_f2("kiln_atan2", a, b, d)?,
                _ => return Err(bad(self)),
            };
            return Ok((r, d));
        }
        if d == DType::Bool {
            let r = match op {
                Op::And => self.ins().band(a, b),
                Op::Or => self.ins().bor(a, b),
                Op::Xor => self.ins().bxor(a, b),
                _ => return Err(bad(self)),
            };
            return Ok((r, d));
        }
        if !is_int(d) {
            return Err(bad(self));
        }
        let ty = cl_type(d).expect("integer dtypes are native");
        let signed = is_signed(d);
        let r = match op {
            Op::Add => self.ins().iadd(a, b),
            Op::Sub => self.ins().isub(a, b),
            Op::Mul => self.ins().imul(a, b),
            Op::And => self.ins().band(a, b),
            Op::Or => self.ins().bor(a, b),
            Op::Xor => self.ins().bxor(a, b),
            Op::Max if signed => self.ins().smax(a, b),
            Op::Max => self.ins().umax(a, b),
            Op::Min if signed => self.ins().smin(a, b),
            Op::Min => self.ins().umin(a, b),
            Op::Div | Op::Rem | Op::Mod => self.divide(op, a, b, ty, signed),
            Op::Shl | Op::Shr => {
                // In range when 0 <= b < bits: as unsigned, that is one comparison.
                let bits = self.iconst(ty, i64::from(ty.bits()));
                let ok = self.ins().icmp(IntCC::UnsignedLessThan, b, bits);
                match (op, signed) {
                    (Op::Shl, _) => {
                        let s = self.ins().ishl(a, b);
                        let zero = self.iconst(ty, 0);
                        self.ins().select(ok, s, zero)
                    }
                    (_, true) => {
                        // Out of range gives the sign: a shift by bits - 1.
                        let top = self.iconst(ty, i64::from(ty.bits()) - 1);
                        let amt = self.ins().select(ok, b, top);
                        self.ins().sshr(a, amt)
                    }
                    _ => {
                        let s = self.ins().ushr(a, b);
                        let zero = self.iconst(ty, 0);
                        self.ins().select(ok, s, zero)
                    }
                }
            }
            Op::Pow => {
                let (name, wa, wb) = if ty == types::I64 {
                    let n = if signed { "kiln_ipow_s" } else { "kiln_ipow_u" };
                    (n, a, b)
                } else if signed {
                    let wa = self.ins().sextend(types::I64, a);
                    let wb = self.ins().sextend(types::I64, b);
                    ("kiln_ipow_s", wa, wb)
                } else {
                    let wa = self.ins().uextend(types::I64, a);
                    let wb = self.ins().uextend(types::I64, b);
                    ("kiln_ipow_u", wa, wb)
                };
                let r = self.call(name, &[wa, wb])?;
                if ty == types::I64 {
                    r
                } else {
                    self.ins().ireduce(ty, r)
                }
            }
            _ => return Err(bad(self)),
        };
        Ok((r, d))
    }

    /// Integer `div`, `rem` and `mod` that never trap: a zero divisor is replaced by 1 (the
    /// lowering checks divisors before, so the result is never used), and a divisor of -1 is
    /// handled without `sdiv`, whose `MIN / -1` traps.
    fn divide(&mut self, op: &Op, a: Value, b: Value, ty: Type, signed: bool) -> Value {
        let zero = self.iconst(ty, 0);
        let one = self.iconst(ty, 1);
        let is_zero = self.b.ins().icmp(IntCC::Equal, b, zero);
        if !signed {
            let safe = self.b.ins().select(is_zero, one, b);
            return match op {
                Op::Div => self.b.ins().udiv(a, safe),
                _ => self.b.ins().urem(a, safe),
            };
        }
        let minus_one = self.iconst(ty, -1);
        let is_m1 = self.b.ins().icmp(IntCC::Equal, b, minus_one);
        let unsafe_ = self.b.ins().bor(is_zero, is_m1);
        let safe = self.b.ins().select(unsafe_, one, b);
        match op {
            Op::Div => {
                // a / -1 = -a, wrapping (MIN / -1 = MIN, as the interpreter's wrap gives).
                let q = self.b.ins().sdiv(a, safe);
                let neg = self.b.ins().ineg(a);
                self.b.ins().select(is_m1, neg, q)
            }
            // a % 1 = 0 = a % -1.
            Op::Rem => self.b.ins().srem(a, safe),
            _ => {
                // Floor modulo: the remainder takes the sign of the divisor.
                let r = self.b.ins().srem(a, safe);
                let nonzero = self.b.ins().icmp(IntCC::NotEqual, r, zero);
                let rneg = self.b.ins().icmp(IntCC::SignedLessThan, r, zero);
                let bneg = self.b.ins().icmp(IntCC::SignedLessThan, b, zero);
                let differ = self.b.ins().bxor(rneg, bneg);
                let adjust = self.b.ins().band(nonzero, differ);
                let sum = self.b.ins().iadd(r, b);
                self.b.ins().select(adjust, sum, r)
            }
        }
    }

    /// Converts as the interpreter does: floats round to nearest; floats to integers truncate
    /// and saturate, NaN becoming 0; integers wrap; nonzero becomes true; bools are 0 and 1.
    fn cast(&mut self, x: Value, from: DType, to: DType) -> R<Value> {
        let (Some(fty), Some(tty)) = (cl_type(from), cl_type(to)) else {
            return Err(self.unsupported(format!("cast from {from} to {to}")));
        };
        if from == to {
            return Ok(x);
        }
        if to == DType::Bool {
            return Ok(if is_float(from) {
                let zero = self.fconst(from, 0.0);
                self.ins().fcmp(FloatCC::NotEqual, x, zero)
            } else {
                let zero = self.iconst(fty, 0);
                self.ins().icmp(IntCC::NotEqual, x, zero)
            });
        }
        if is_float(from) && is_float(to) {
            return Ok(if to == DType::F64 {
                self.ins().fpromote(tty, x)
            } else {
                self.ins().fdemote(tty, x)
            });
        }
        if is_float(from) {
            // Saturating conversions exist for 32 and 64 bits; narrower targets saturate to
            // 32 bits and clamp, which is the same as saturating to their own range.
            return Ok(match to {
                DType::I32 | DType::I64 => self.ins().fcvt_to_sint_sat(tty, x),
                DType::U32 | DType::U64 => self.ins().fcvt_to_uint_sat(tty, x),
                DType::I8 | DType::I16 => {
                    let w = self.ins().fcvt_to_sint_sat(types::I32, x);
                    let bits = tty.bits();
                    let lo = self.iconst(types::I32, -(1i64 << (bits - 1)));
                    let hi = self.iconst(types::I32, (1i64 << (bits - 1)) - 1);
                    let c = self.ins().smax(w, lo);
                    let c = self.ins().smin(c, hi);
                    self.ins().ireduce(tty, c)
                }
                _ => {
                    let w = self.ins().fcvt_to_uint_sat(types::I32, x);
                    let hi = self.iconst(types::I32, (1i64 << tty.bits()) - 1);
                    let c = self.ins().umin(w, hi);
                    self.ins().ireduce(tty, c)
                }
            });
        }
        // From an integer or a bool (unsigned 0 or 1).
        let signed = is_signed(from);
        if is_float(to) {
            return Ok(match (fty == types::I64, signed) {
                (true, true) => self.ins().fcvt_from_sint(tty, x),
                (true, false) => self.ins().fcvt_from_uint(tty, x),
                (false, true) => {
                    let w = self.ins().sextend(types::I64, x);
                    self.ins().fcvt_from_sint(tty, w)
                }
                (false, false) => {
                    // Zero-extended, the value is a nonnegative i64: the signed conversion
                    // is exact and cheaper.
                    let w = self.ins().uextend(types::I64, x);
                    self.ins().fcvt_from_sint(tty, w)
                }
            });
        }
        Ok(match fty.bits().cmp(&tty.bits()) {
            std::cmp::Ordering::Equal => x,
            std::cmp::Ordering::Greater => self.ins().ireduce(tty, x),
            std::cmp::Ordering::Less if signed => self.ins().sextend(tty, x),
            std::cmp::Ordering::Less => self.ins().uextend(tty, x),
        })
    }
}

#[cfg(test)]
mod tests;
