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

mod rows;
mod simd;

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
                if self.row_call(*var, extent, body, matches!(mark, Mark::Vector(_)))? {
                    return Ok(());
                }
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
            Stmt::Gemm(g) => self.gemm(g)?,
            Stmt::Conv2d(c) => self.conv2d(c)?,
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

    /// A call of the library matrix product.
    fn gemm(&mut self, g: &kernel::Gemm) -> R<()> {
        for b in [g.a, g.b, g.c] {
            if self.buf_dtype(b)? != DType::F32 {
                return Err(self.unsupported("gemm on buffers that are not f32"));
            }
        }
        let mut args = Vec::new();
        for (buf, off, rs, cs) in [
            (g.a, &g.a_off, Some(&g.a_rs), Some(&g.a_cs)),
            (g.b, &g.b_off, Some(&g.b_rs), Some(&g.b_cs)),
            (g.c, &g.c_off, None, None),
        ] {
            let p = self.address(buf, off)?;
            args.push(p);
            for x in [rs, cs].into_iter().flatten() {
                args.push(self.expr_of(x, DType::I64, "a gemm stride")?);
            }
        }
        for x in [&g.c_rs, &g.m, &g.n, &g.k] {
            args.push(self.expr_of(x, DType::I64, "a gemm size")?);
        }
        // kiln_sgemm_packed(a, a_rs, a_cs, b, b_rs, b_cs, bp, c, ldc, m, n, k); bp null
        // unless B was packed ahead of time.
        let bp = match g.b_packed {
            Some(p) => {
                if self.buf_dtype(p)? != DType::F32 {
                    return Err(self.invalid("a packed gemm operand that is not f32"));
                }
                self.bases[p]
            }
            None => self.b.ins().iconst(self.ptr, 0),
        };
        args.insert(6, bp);
        let f = self.import(
            "kiln_sgemm_packed",
            &[
                self.ptr,
                types::I64,
                types::I64,
                self.ptr,
                types::I64,
                types::I64,
                self.ptr,
                self.ptr,
                types::I64,
                types::I64,
                types::I64,
                types::I64,
            ],
            None,
        )?;
        self.b.ins().call(f, &args);
        Ok(())
    }

    /// `kiln_conv2d_plane(x, k, out, h, w, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw)`.
    fn conv2d(&mut self, c: &kernel::Conv2d) -> R<()> {
        for b in [c.x, c.k, c.out] {
            if self.buf_dtype(b)? != DType::F32 {
                return Err(self.unsupported("conv2d on buffers that are not f32"));
            }
        }
        let mut args = Vec::new();
        for (buf, off) in [(c.x, &c.x_off), (c.k, &c.k_off), (c.out, &c.out_off)] {
            args.push(self.address(buf, off)?);
        }
        let g = &c.geometry;
        for v in [
            g.h, g.w, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.ph, g.pw,
        ] {
            args.push(self.b.ins().iconst(types::I64, v));
        }
        let mut params = vec![self.ptr; 3];
        params.extend([types::I64; 12]);
        let f = self.import("kiln_conv2d_plane", &params, None)?;
        self.b.ins().call(f, &args);
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
mod tests {
    use super::*;
    use ir::Dim;
    use kernel::{codes, Buf, BufKind, Code};

    const _: () = {
        const fn send_sync<T: Send + Sync>() {}
        send_sync::<Compiled>();
    };

    fn buf(name: &str, dtype: DType, kind: BufKind) -> Buf {
        Buf {
            name: name.into(),
            dtype,
            len: Dim::sym("n"),
            kind,
        }
    }

    fn op(op: Op, args: Vec<Expr>, dtype: DType) -> Expr {
        Expr::Op { op, args, dtype }
    }

    fn load(buf: usize, index: Expr) -> Expr {
        Expr::Load {
            buf,
            index: Box::new(index),
        }
    }

    fn v(i: usize) -> Expr {
        Expr::Var(i)
    }

    fn for_(var: usize, extent: Expr, body: Vec<Stmt>) -> Stmt {
        Stmt::Loop {
            var,
            extent,
            mark: Mark::Serial,
            body,
        }
    }

    fn store(buf: usize, index: Expr, value: Expr) -> Stmt {
        Stmt::Store { buf, index, value }
    }

    fn call(c: &Compiled, i: usize, bufs: &[*mut u8], dims: &[i64]) -> u32 {
        // SAFETY: each test sizes its buffers for the kernel it runs.
        unsafe { c.function(i)(bufs.as_ptr(), dims.as_ptr()) }
    }

    fn ptr<T>(v: &mut [T]) -> *mut u8 {
        v.as_mut_ptr().cast()
    }

    /// `out[i] = f(in[i])` for `i < dims[0]`.
    fn map_kernel(from: DType, to: DType, f: impl Fn(Expr) -> Expr) -> Kernel {
        Kernel {
            name: "map".into(),
            bufs: vec![
                buf("x", from, BufKind::Input),
                buf("y", to, BufKind::Output),
            ],
            dims: vec![Dim::sym("n")],
            vars: vec![DType::I64],
            body: vec![for_(
                0,
                Expr::Dim(0),
                vec![store(1, v(0), f(load(0, v(0))))],
            )],
        }
    }

    fn run_map<A: Copy, B: Copy + Default>(k: Kernel, xs: &[A]) -> Vec<B> {
        let c = compile(&[k]).unwrap();
        let mut x = xs.to_vec();
        let mut y = vec![B::default(); xs.len()];
        assert_eq!(
            call(&c, 0, &[ptr(&mut x), ptr(&mut y)], &[xs.len() as i64]),
            0
        );
        y
    }

    /// `out[i] = f(a[i], b[i])`.
    fn run_zip<A: Copy, B: Copy + Default>(
        d: DType,
        to: DType,
        f: impl Fn(Expr, Expr) -> Expr,
        a: &[A],
        b: &[A],
    ) -> Vec<B> {
        let k = Kernel {
            name: "zip".into(),
            bufs: vec![
                buf("a", d, BufKind::Input),
                buf("b", d, BufKind::Input),
                buf("y", to, BufKind::Output),
            ],
            dims: vec![Dim::sym("n")],
            vars: vec![DType::I64],
            body: vec![for_(
                0,
                Expr::Dim(0),
                vec![store(2, v(0), f(load(0, v(0)), load(1, v(0))))],
            )],
        };
        let c = compile(&[k]).unwrap();
        let (mut a, mut b) = (a.to_vec(), b.to_vec());
        let mut y = vec![B::default(); a.len()];
        let n = a.len() as i64;
        assert_eq!(
            call(&c, 0, &[ptr(&mut a), ptr(&mut b), ptr(&mut y)], &[n]),
            0
        );
        y
    }

    fn binop(o: Op, d: DType) -> impl Fn(Expr, Expr) -> Expr {
        move |a, b| op(o.clone(), vec![a, b], d)
    }

    #[test]
    fn elementwise_add_with_a_symbolic_length() {
        let add = binop(Op::Add, DType::F32);
        for n in [0usize, 1, 7, 1000] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 / (i as f32 + 1.0)).collect();
            let y: Vec<f32> = run_zip(DType::F32, DType::F32, &add, &a, &b);
            let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            assert_eq!(y, want);
        }
    }

    #[test]
    fn row_sums_with_an_accumulator() {
        // y[r] = sum_c x[r * cols + c]
        let k = Kernel {
            name: "rowsum".into(),
            bufs: vec![
                buf("x", DType::F32, BufKind::Input),
                buf("y", DType::F32, BufKind::Output),
            ],
            dims: vec![Dim::sym("r"), Dim::sym("c")],
            vars: vec![DType::I64, DType::I64, DType::F32],
            body: vec![for_(
                0,
                Expr::Dim(0),
                vec![
                    Stmt::Set {
                        var: 2,
                        value: Expr::Float(0.0, DType::F32),
                    },
                    for_(
                        1,
                        Expr::Dim(1),
                        vec![Stmt::Set {
                            var: 2,
                            value: op(
                                Op::Add,
                                vec![v(2), load(0, v(0) * Expr::Dim(1) + v(1))],
                                DType::F32,
                            ),
                        }],
                    ),
                    store(1, v(0), v(2)),
                ],
            )],
        };
        let c = compile(&[k]).unwrap();
        let (rows, cols) = (3usize, 4usize);
        let mut x: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut y = vec![0f32; rows];
        let r = call(
            &c,
            0,
            &[ptr(&mut x), ptr(&mut y)],
            &[rows as i64, cols as i64],
        );
        assert_eq!(r, 0);
        assert_eq!(y, vec![6.0, 22.0, 38.0]);
        // Zero columns: every sum is the initial value.
        let mut y = vec![9f32; rows];
        call(&c, 0, &[ptr(&mut x), ptr(&mut y)], &[rows as i64, 0]);
        assert_eq!(y, vec![0.0; 3]);
    }

    #[test]
    fn dot_of_2x3_and_3x2() {
        // c[i, j] = sum_k a[i, k] * b[k, j]
        let (i, j, kk, acc) = (0, 1, 2, 3);
        let k = Kernel {
            name: "dot".into(),
            bufs: vec![
                buf("a", DType::F32, BufKind::Input),
                buf("b", DType::F32, BufKind::Input),
                buf("c", DType::F32, BufKind::Output),
            ],
            dims: vec![],
            vars: vec![DType::I64, DType::I64, DType::I64, DType::F32],
            body: vec![for_(
                i,
                Expr::i64(2),
                vec![for_(
                    j,
                    Expr::i64(2),
                    vec![
                        Stmt::Set {
                            var: acc,
                            value: Expr::Float(0.0, DType::F32),
                        },
                        for_(
                            kk,
                            Expr::i64(3),
                            vec![Stmt::Set {
                                var: acc,
                                value: op(
                                    Op::Add,
                                    vec![
                                        v(acc),
                                        op(
                                            Op::Mul,
                                            vec![
                                                load(0, v(i) * Expr::i64(3) + v(kk)),
                                                load(1, v(kk) * Expr::i64(2) + v(j)),
                                            ],
                                            DType::F32,
                                        ),
                                    ],
                                    DType::F32,
                                ),
                            }],
                        ),
                        store(2, v(i) * Expr::i64(2) + v(j), v(acc)),
                    ],
                )],
            )],
        };
        let c = compile(&[k]).unwrap();
        let mut a = vec![1f32, 2., 3., 4., 5., 6.];
        let mut b = vec![7f32, 8., 9., 10., 11., 12.];
        let mut out = vec![0f32; 4];
        assert_eq!(
            call(&c, 0, &[ptr(&mut a), ptr(&mut b), ptr(&mut out)], &[]),
            0
        );
        assert_eq!(out, vec![58., 64., 139., 154.]);
    }

    #[test]
    fn transcendental_functions_round_from_f64() {
        let xs: Vec<f32> = vec![
            -3.5,
            -1.0,
            -0.3,
            0.0,
            0.1,
            0.5,
            0.9,
            1.7,
            20.0,
            f32::NAN,
            f32::INFINITY,
        ];
        type F = fn(f64) -> f64;
        let cases: Vec<(Op, F)> = vec![
            (Op::Exp, f64::exp),
            (Op::Log, f64::ln),
            (Op::Tanh, f64::tanh),
            (Op::Erf, libm::erf),
            (Op::Sin, f64::sin),
            (Op::Cos, f64::cos),
            (Op::Atan, f64::atan),
            (Op::Asinh, f64::asinh),
            (Op::Sigmoid, |x| kernel::routines::math::sigmoid(x)),
            (Op::Rsqrt, |x| 1.0 / x.sqrt()),
            (Op::Recip, |x| 1.0 / x),
            (Op::Sqrt, f64::sqrt),
            (Op::Round, f64::round_ties_even),
            (Op::Floor, f64::floor),
            (Op::Sign, |x| kernel::routines::math::sign(x)),
        ];
        for (o, f) in cases {
            let k = map_kernel(DType::F32, DType::F32, |x| {
                op(o.clone(), vec![x], DType::F32)
            });
            let y: Vec<f32> = run_map(k, &xs);
            for (x, y) in xs.iter().zip(&y) {
                let want = f(f64::from(*x)) as f32;
                assert!(
                    want.to_bits() == y.to_bits() || (want.is_nan() && y.is_nan()),
                    "{}({x}) = {y}, expected {want}",
                    o.mnemonic()
                );
            }
            // f64 data calls the same helpers without rounding.
            let xd: Vec<f64> = xs.iter().map(|&x| f64::from(x) * 1.1).collect();
            let k = map_kernel(DType::F64, DType::F64, |x| {
                op(o.clone(), vec![x], DType::F64)
            });
            let y: Vec<f64> = run_map(k, &xd);
            for (x, y) in xd.iter().zip(&y) {
                let want = f(*x);
                assert!(want.to_bits() == y.to_bits() || (want.is_nan() && y.is_nan()));
            }
        }
        assert_eq!(
            run_map::<f32, f32>(
                map_kernel(DType::F32, DType::F32, |x| op(
                    Op::Sigmoid,
                    vec![x],
                    DType::F32
                )),
                &[-1000.0]
            ),
            vec![0.0]
        );
    }

    #[test]
    fn float_binary_ops() {
        let a = [7.5f32, -7.0, 2.0, f32::NAN, 1.0, -0.5];
        let b = [2.0f32, 2.0, 10.0, 1.0, f32::NAN, 3.0];
        type F = fn(f64, f64) -> f64;
        let cases: Vec<(Op, F)> = vec![
            (Op::Rem, |a, b| a % b),
            (Op::Mod, |a, b| kernel::routines::math::modulo(a, b)),
            (Op::Pow, f64::powf),
            (Op::Atan2, f64::atan2),
            (Op::Max, |a, b| {
                if a.is_nan() || b.is_nan() {
                    f64::NAN
                } else {
                    a.max(b)
                }
            }),
            (Op::Min, |a, b| {
                if a.is_nan() || b.is_nan() {
                    f64::NAN
                } else {
                    a.min(b)
                }
            }),
            (Op::Div, |a, b| a / b),
        ];
        for (o, f) in cases {
            let y: Vec<f32> = run_zip(DType::F32, DType::F32, binop(o.clone(), DType::F32), &a, &b);
            for i in 0..a.len() {
                let want = f(f64::from(a[i]), f64::from(b[i])) as f32;
                assert!(
                    want.to_bits() == y[i].to_bits() || (want.is_nan() && y[i].is_nan()),
                    "{}({}, {}) = {}, expected {want}",
                    o.mnemonic(),
                    a[i],
                    b[i],
                    y[i]
                );
            }
        }
        // Comparisons: `ne` holds for NaN, the ordered ones do not.
        let lt: Vec<bool> = run_zip(DType::F32, DType::Bool, binop(Op::Lt, DType::Bool), &a, &b);
        assert_eq!(lt, vec![false, true, true, false, false, true]);
        let ne: Vec<bool> = run_zip(DType::F32, DType::Bool, binop(Op::Ne, DType::Bool), &a, &b);
        assert_eq!(ne, vec![true, true, true, true, true, true]);
        let nan: Vec<bool> = run_map(
            map_kernel(DType::F32, DType::Bool, |x| {
                op(Op::IsNan, vec![x], DType::Bool)
            }),
            &[1.0f32, f32::NAN, f32::INFINITY],
        );
        assert_eq!(nan, vec![false, true, false]);
        let inf: Vec<bool> = run_map(
            map_kernel(DType::F64, DType::Bool, |x| {
                op(Op::IsInf, vec![x], DType::Bool)
            }),
            &[1.0f64, f64::NAN, f64::NEG_INFINITY],
        );
        assert_eq!(inf, vec![false, false, true]);
    }

    #[test]
    fn integers_wrap_and_shift_like_the_interpreter() {
        let add = binop(Op::Add, DType::U8);
        let y: Vec<u8> = run_zip(DType::U8, DType::U8, add, &[250u8, 1], &[10u8, 2]);
        assert_eq!(y, vec![4, 3]);
        let mul = binop(Op::Mul, DType::I64);
        let y: Vec<i64> = run_zip(DType::I64, DType::I64, mul, &[i64::MAX, -3], &[2, 5]);
        assert_eq!(y, vec![-2, -15]);
        let sub = binop(Op::Sub, DType::I32);
        let y: Vec<i32> = run_zip(DType::I32, DType::I32, sub, &[i32::MIN], &[1]);
        assert_eq!(y, vec![i32::MAX]);

        let shl = binop(Op::Shl, DType::U8);
        let y: Vec<u8> = run_zip(
            DType::U8,
            DType::U8,
            shl,
            &[1u8, 1, 3, 1],
            &[7u8, 8, 1, 255],
        );
        assert_eq!(y, vec![128, 0, 6, 0]);
        let shr = binop(Op::Shr, DType::I64);
        let y: Vec<i64> = run_zip(
            DType::I64,
            DType::I64,
            shr,
            &[-8i64, -8, 8, -8, 8],
            &[70, 1, 64, -1, -1],
        );
        assert_eq!(y, vec![-1, -4, 0, -1, 0]);
        let shr = binop(Op::Shr, DType::U16);
        let y: Vec<u16> = run_zip(
            DType::U16,
            DType::U16,
            shr,
            &[0x8000u16, 0x8000],
            &[15u16, 16],
        );
        assert_eq!(y, vec![1, 0]);
        let shl = binop(Op::Shl, DType::I32);
        let y: Vec<i32> = run_zip(DType::I32, DType::I32, shl, &[1i32, 1, 1], &[31, 32, -1]);
        assert_eq!(y, vec![i32::MIN, 0, 0]);

        let y: Vec<i8> = run_map(
            map_kernel(DType::I8, DType::I8, |x| op(Op::Neg, vec![x], DType::I8)),
            &[i8::MIN, 5],
        );
        assert_eq!(y, vec![i8::MIN, -5]);
        let y: Vec<i32> = run_map(
            map_kernel(DType::I32, DType::I32, |x| op(Op::Abs, vec![x], DType::I32)),
            &[i32::MIN, -5, 5],
        );
        assert_eq!(y, vec![i32::MIN, 5, 5]);
        let y: Vec<u8> = run_map(
            map_kernel(DType::U8, DType::U8, |x| op(Op::Abs, vec![x], DType::U8)),
            &[200u8],
        );
        assert_eq!(y, vec![200]);
        let y: Vec<i16> = run_map(
            map_kernel(DType::I16, DType::I16, |x| {
                op(Op::Sign, vec![x], DType::I16)
            }),
            &[-300i16, 0, 7],
        );
        assert_eq!(y, vec![-1, 0, 1]);
        let y: Vec<u32> = run_map(
            map_kernel(DType::U32, DType::U32, |x| {
                op(Op::Sign, vec![x], DType::U32)
            }),
            &[0u32, 0x8000_0000],
        );
        assert_eq!(y, vec![0, 1]);
        let y: Vec<u16> = run_map(
            map_kernel(DType::U16, DType::U16, |x| op(Op::Not, vec![x], DType::U16)),
            &[0u16],
        );
        assert_eq!(y, vec![0xffff]);
        let y: Vec<bool> = run_map(
            map_kernel(DType::Bool, DType::Bool, |x| {
                op(Op::Not, vec![x], DType::Bool)
            }),
            &[true, false],
        );
        assert_eq!(y, vec![false, true]);

        // Max/min and comparisons follow the signedness of the dtype.
        let max = binop(Op::Max, DType::U8);
        let y: Vec<u8> = run_zip(DType::U8, DType::U8, max, &[200u8], &[100u8]);
        assert_eq!(y, vec![200]);
        let max = binop(Op::Max, DType::I8);
        let y: Vec<i8> = run_zip(DType::I8, DType::I8, max, &[-56i8], &[100i8]);
        assert_eq!(y, vec![100]);
        let lt: Vec<bool> = run_zip(
            DType::U32,
            DType::Bool,
            binop(Op::Lt, DType::Bool),
            &[1u32],
            &[u32::MAX],
        );
        assert_eq!(lt, vec![true]);
        let lt: Vec<bool> = run_zip(
            DType::I32,
            DType::Bool,
            binop(Op::Lt, DType::Bool),
            &[1i32],
            &[-1],
        );
        assert_eq!(lt, vec![false]);
        let lt: Vec<bool> = run_zip(
            DType::Bool,
            DType::Bool,
            binop(Op::Lt, DType::Bool),
            &[false, true],
            &[true, true],
        );
        assert_eq!(lt, vec![true, false]);
    }

    #[test]
    fn integer_division_matches_and_never_traps() {
        let a = [-7i32, 7, -7, 7, i32::MIN, i32::MIN, 5, 0];
        let b = [2i32, -2, -2, 2, -1, 1, 0, 3];
        let q: Vec<i32> = run_zip(DType::I32, DType::I32, binop(Op::Div, DType::I32), &a, &b);
        let r: Vec<i32> = run_zip(DType::I32, DType::I32, binop(Op::Rem, DType::I32), &a, &b);
        let m: Vec<i32> = run_zip(DType::I32, DType::I32, binop(Op::Mod, DType::I32), &a, &b);
        // Index 6 divides by zero: any value, but no crash.
        for i in [0, 1, 2, 3, 4, 5, 7] {
            let (x, y) = (i128::from(a[i]), i128::from(b[i]));
            assert_eq!(q[i], (x / y) as i32, "{x} / {y}");
            assert_eq!(r[i], (x % y) as i32, "{x} % {y}");
            let want = x.rem_euclid(y) + if y < 0 && x.rem_euclid(y) != 0 { y } else { 0 };
            assert_eq!(m[i], want as i32, "{x} mod {y}");
        }
        let q: Vec<i8> = run_zip(
            DType::I8,
            DType::I8,
            binop(Op::Div, DType::I8),
            &[i8::MIN, 9],
            &[-1i8, 0],
        );
        assert_eq!(q[0], i8::MIN);
        let q: Vec<u8> = run_zip(
            DType::U8,
            DType::U8,
            binop(Op::Div, DType::U8),
            &[200u8, 9],
            &[3u8, 0],
        );
        assert_eq!(q[0], 66);
        let m: Vec<u64> = run_zip(
            DType::U64,
            DType::U64,
            binop(Op::Mod, DType::U64),
            &[u64::MAX],
            &[10],
        );
        assert_eq!(m, vec![5]);
    }

    #[test]
    fn integer_pow() {
        let p: Vec<i32> = run_zip(
            DType::I32,
            DType::I32,
            binop(Op::Pow, DType::I32),
            &[3i32, 2, 2, -1, 1, 5, 2],
            &[4i32, 31, 32, -3, -7, -1, 0],
        );
        assert_eq!(p, vec![81, i32::MIN, 0, -1, 1, 0, 1]);
        let p: Vec<u8> = run_zip(
            DType::U8,
            DType::U8,
            binop(Op::Pow, DType::U8),
            &[3u8, 255],
            &[5u8, 2],
        );
        assert_eq!(p, vec![243, 1]);
    }

    #[test]
    fn a_failing_check_returns_its_code_before_the_store() {
        // for i: check idx[i] < 4 else 1; y[i] = x[idx[i]]
        let k = Kernel {
            name: "gather".into(),
            bufs: vec![
                buf("x", DType::F32, BufKind::Input),
                buf("idx", DType::I64, BufKind::Input),
                buf("y", DType::F32, BufKind::Output),
            ],
            dims: vec![Dim::sym("n")],
            vars: vec![DType::I64],
            body: vec![for_(
                0,
                Expr::Dim(0),
                vec![
                    Stmt::Check {
                        cond: op(Op::Lt, vec![load(1, v(0)), Expr::i64(4)], DType::Bool),
                        code: codes::INDEX_OUT_OF_RANGE,
                    },
                    store(2, v(0), load(0, load(1, v(0)))),
                ],
            )],
        };
        let c = compile(&[k]).unwrap();
        let mut x = vec![10f32, 11., 12., 13.];
        let mut idx = vec![3i64, 0, 1_000_000_000, 2];
        let mut y = vec![-1f32; 4];
        let r = call(&c, 0, &[ptr(&mut x), ptr(&mut idx), ptr(&mut y)], &[4]);
        assert_eq!(r, codes::INDEX_OUT_OF_RANGE);
        assert_eq!(y, vec![13., 10., -1., -1.]);
        let mut idx = vec![3i64, 0, 1, 2];
        let r = call(&c, 0, &[ptr(&mut x), ptr(&mut idx), ptr(&mut y)], &[4]);
        assert_eq!(r, 0);
        assert_eq!(y, vec![13., 10., 11., 12.]);
    }

    fn cast(to: DType) -> impl Fn(Expr) -> Expr {
        move |x| {
            op(
                Op::Cast {
                    dtype: to,
                    saturate: true,
                },
                vec![x],
                to,
            )
        }
    }

    #[test]
    fn casts() {
        let xs = [
            -3.7f32,
            3.7,
            1e10,
            -1e10,
            f32::NAN,
            f32::INFINITY,
            -0.0,
            255.9,
            300.0,
        ];
        let y: Vec<i32> = run_map(map_kernel(DType::F32, DType::I32, cast(DType::I32)), &xs);
        assert_eq!(y, xs.iter().map(|&x| x as i32).collect::<Vec<_>>());
        let y: Vec<i8> = run_map(map_kernel(DType::F32, DType::I8, cast(DType::I8)), &xs);
        assert_eq!(y, xs.iter().map(|&x| x as i8).collect::<Vec<_>>());
        let y: Vec<u8> = run_map(map_kernel(DType::F32, DType::U8, cast(DType::U8)), &xs);
        assert_eq!(y, xs.iter().map(|&x| x as u8).collect::<Vec<_>>());
        let y: Vec<u16> = run_map(map_kernel(DType::F32, DType::U16, cast(DType::U16)), &xs);
        assert_eq!(y, xs.iter().map(|&x| x as u16).collect::<Vec<_>>());
        let y: Vec<u64> = run_map(map_kernel(DType::F32, DType::U64, cast(DType::U64)), &xs);
        assert_eq!(y, xs.iter().map(|&x| x as u64).collect::<Vec<_>>());
        let y: Vec<i64> = run_map(map_kernel(DType::F32, DType::I64, cast(DType::I64)), &xs);
        assert_eq!(y, xs.iter().map(|&x| x as i64).collect::<Vec<_>>());
        let y: Vec<bool> = run_map(map_kernel(DType::F32, DType::Bool, cast(DType::Bool)), &xs);
        assert_eq!(
            y,
            vec![true, true, true, true, true, true, false, true, true]
        );
        let y: Vec<f64> = run_map(
            map_kernel(DType::F32, DType::F64, cast(DType::F64)),
            &xs[..2],
        );
        assert_eq!(y, vec![f64::from(-3.7f32), f64::from(3.7f32)]);
        let y: Vec<f32> = run_map(
            map_kernel(DType::F64, DType::F32, cast(DType::F32)),
            &[0.1f64],
        );
        assert_eq!(y, vec![0.1f32]);

        let is = [i64::MAX, i64::MIN, (1 << 53) + 1, -5, 0];
        let y: Vec<f32> = run_map(map_kernel(DType::I64, DType::F32, cast(DType::F32)), &is);
        assert_eq!(y, is.iter().map(|&x| x as f32).collect::<Vec<_>>());
        let y: Vec<f64> = run_map(map_kernel(DType::I64, DType::F64, cast(DType::F64)), &is);
        assert_eq!(y, is.iter().map(|&x| x as f64).collect::<Vec<_>>());
        let us = [u64::MAX, (1 << 63) + 1, 3];
        let y: Vec<f32> = run_map(map_kernel(DType::U64, DType::F32, cast(DType::F32)), &us);
        assert_eq!(y, us.iter().map(|&x| x as f32).collect::<Vec<_>>());
        let y: Vec<f64> = run_map(
            map_kernel(DType::U32, DType::F64, cast(DType::F64)),
            &[u32::MAX],
        );
        assert_eq!(y, vec![f64::from(u32::MAX)]);
        let y: Vec<f32> = run_map(
            map_kernel(DType::I8, DType::F32, cast(DType::F32)),
            &[-128i8],
        );
        assert_eq!(y, vec![-128.0]);

        let y: Vec<f32> = run_map(
            map_kernel(DType::Bool, DType::F32, cast(DType::F32)),
            &[true, false],
        );
        assert_eq!(y, vec![1.0, 0.0]);
        let y: Vec<i64> = run_map(
            map_kernel(DType::Bool, DType::I64, cast(DType::I64)),
            &[true, false],
        );
        assert_eq!(y, vec![1, 0]);
        let y: Vec<bool> = run_map(
            map_kernel(DType::I32, DType::Bool, cast(DType::Bool)),
            &[0i32, -1, 256],
        );
        assert_eq!(y, vec![false, true, true]);
        let y: Vec<i8> = run_map(
            map_kernel(DType::I32, DType::I8, cast(DType::I8)),
            &[300i32, -129],
        );
        assert_eq!(y, vec![44, 127]);
        let y: Vec<i64> = run_map(map_kernel(DType::I8, DType::I64, cast(DType::I64)), &[-1i8]);
        assert_eq!(y, vec![-1]);
        let y: Vec<i32> = run_map(
            map_kernel(DType::U8, DType::I32, cast(DType::I32)),
            &[255u8],
        );
        assert_eq!(y, vec![255]);
        let y: Vec<u32> = run_map(
            map_kernel(DType::I32, DType::U32, cast(DType::U32)),
            &[-1i32],
        );
        assert_eq!(y, vec![u32::MAX]);
    }

    #[test]
    fn select_picks_by_condition() {
        // y[i] = select(a[i] > b[i], a[i], b[i] * 2)
        let f = |a: Expr, b: Expr| {
            op(
                Op::Select,
                vec![
                    op(Op::Gt, vec![a.clone(), b.clone()], DType::Bool),
                    a,
                    op(Op::Mul, vec![b, Expr::Float(2.0, DType::F64)], DType::F64),
                ],
                DType::F64,
            )
        };
        let y: Vec<f64> = run_zip(DType::F64, DType::F64, f, &[1.0f64, 5.0], &[2.0, 3.0]);
        assert_eq!(y, vec![4.0, 5.0]);
    }

    #[test]
    fn many_buffers_and_many_kernels() {
        const N: usize = 20;
        let mut bufs: Vec<Buf> = (0..N)
            .map(|i| buf(&format!("x{i}"), DType::I32, BufKind::Input))
            .collect();
        bufs.push(buf("y", DType::I32, BufKind::Output));
        let sum = (1..N).fold(load(0, v(0)), |acc, i| {
            op(Op::Add, vec![acc, load(i, v(0))], DType::I32)
        });
        let many = Kernel {
            name: "many".into(),
            bufs,
            dims: vec![Dim::sym("n")],
            vars: vec![DType::I64],
            body: vec![for_(0, Expr::Dim(0), vec![store(N, v(0), sum)])],
        };
        let neg = map_kernel(DType::I32, DType::I32, |x| op(Op::Neg, vec![x], DType::I32));
        let c = compile(&[neg, many]).unwrap();
        assert_eq!(c.len(), 2);
        let len = 5;
        let mut ins: Vec<Vec<i32>> = (0..N).map(|i| vec![i as i32; len]).collect();
        let mut y = vec![0i32; len];
        let mut ptrs: Vec<*mut u8> = ins.iter_mut().map(|v| ptr(v)).collect();
        ptrs.push(ptr(&mut y));
        assert_eq!(call(&c, 1, &ptrs, &[len as i64]), 0);
        assert_eq!(y, vec![(0..N as i32).sum::<i32>(); len]);
        let mut z = vec![0i32; len];
        assert_eq!(call(&c, 0, &[ptr(&mut y), ptr(&mut z)], &[len as i64]), 0);
        assert_eq!(z, vec![-190; len]);
        // Compiled kernels can be called from other threads.
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut a = vec![1i32, 2];
                let mut b = vec![0i32; 2];
                assert_eq!(call(&c, 0, &[ptr(&mut a), ptr(&mut b)], &[2]), 0);
                assert_eq!(b, vec![-1, -2]);
            });
        });
    }

    #[test]
    fn unsupported_and_malformed_kernels_are_errors() {
        let k = map_kernel(DType::F16, DType::F16, |x| x);
        let e = compile(&[k]).err().unwrap();
        assert!(matches!(e, JitError::Unsupported { .. }));
        assert!(
            e.to_string().contains("`map`") && e.to_string().contains("f16"),
            "{e}"
        );

        let k = map_kernel(DType::F32, DType::F32, |x| {
            op(Op::Shl, vec![x.clone(), x], DType::F32)
        });
        let e = compile(&[k]).err().unwrap();
        assert!(e.to_string().contains("shl"), "{e}");

        let k = map_kernel(DType::F32, DType::I32, |x| x);
        let e = compile(&[k]).err().unwrap();
        assert!(matches!(e, JitError::Invalid { .. }), "{e}");

        let mut k = map_kernel(DType::F32, DType::F32, |x| x);
        k.body
            .push(store(7, Expr::i64(0), Expr::Float(0.0, DType::F32)));
        assert!(matches!(compile(&[k]), Err(JitError::Invalid { .. })));

        let k = map_kernel(DType::F32, DType::F32, |x| {
            op(Op::ReduceSum { axes: vec![0] }, vec![x], DType::F32)
        });
        let e = compile(&[k]).err().unwrap();
        assert!(e.to_string().contains("reduce_sum"), "{e}");
    }

    // ---- SIMD code (`simd.rs`) ----

    /// Compiles `k`, returning how many vector loops and reductions took the SIMD path.
    /// A softmax row through the library routines and through the JIT's own code: the
    /// maximum (NaN, ±0 included) and `exp` agree to the bit, the f64 sum closely.
    #[test]
    fn row_routines_agree_with_the_vector_code() {
        // y[0] = max(x), y[1] = Σ x (f64, rounded), z[i] = exp(x[i] - y[0]).
        let (mx, sum) = (1usize, 2usize);
        let k = Kernel {
            name: "rows".into(),
            bufs: vec![
                buf("x", DType::F32, BufKind::Input),
                buf("y", DType::F32, BufKind::Output),
                buf("z", DType::F32, BufKind::Output),
            ],
            dims: vec![Dim::sym("n")],
            vars: vec![DType::I64, DType::F32, DType::F64, DType::I64, DType::I64],
            body: vec![
                Stmt::Set {
                    var: mx,
                    value: Expr::Float(f64::NEG_INFINITY, DType::F32),
                },
                for_(
                    0,
                    Expr::Dim(0),
                    vec![Stmt::Set {
                        var: mx,
                        value: op(Op::Max, vec![v(mx), load(0, v(0))], DType::F32),
                    }],
                ),
                store(1, Expr::i64(0), v(mx)),
                Stmt::Set {
                    var: sum,
                    value: Expr::Float(0.0, DType::F64),
                },
                for_(
                    3,
                    Expr::Dim(0),
                    vec![Stmt::Set {
                        var: sum,
                        value: op(
                            Op::Add,
                            vec![
                                v(sum),
                                op(
                                    Op::Cast {
                                        dtype: DType::F64,
                                        saturate: false,
                                    },
                                    vec![load(0, v(3))],
                                    DType::F64,
                                ),
                            ],
                            DType::F64,
                        ),
                    }],
                ),
                store(
                    1,
                    Expr::i64(1),
                    op(
                        Op::Cast {
                            dtype: DType::F32,
                            saturate: false,
                        },
                        vec![v(sum)],
                        DType::F32,
                    ),
                ),
                Stmt::Loop {
                    var: 4,
                    extent: Expr::Dim(0),
                    mark: Mark::Vector(4),
                    body: vec![store(
                        2,
                        v(4) + Expr::i64(0),
                        op(
                            Op::Exp,
                            vec![op(
                                Op::Sub,
                                vec![load(0, v(4)), load(1, Expr::i64(0))],
                                DType::F32,
                            )],
                            DType::F32,
                        ),
                    )],
                },
            ],
        };
        let rows: Vec<Vec<f32>> = vec![
            (0..1003)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
                .collect(),
            [vec![-0.0; 21], vec![0.0], vec![-2.0; 9]].concat(),
            vec![-0.0; 19],
            [vec![1.0; 40], vec![f32::NAN], vec![2.0; 3]].concat(),
            vec![3.5; 5],
        ];
        let run = |lib: bool, x: &[f32]| -> (Vec<f32>, Vec<f32>) {
            rows::NO_ROW_CALLS.with(|c| c.set(!lib));
            let c = compile(std::slice::from_ref(&k)).unwrap();
            rows::NO_ROW_CALLS.with(|c| c.set(false));
            let (mut x, mut y, mut z) = (x.to_vec(), vec![0f32; 2], vec![0f32; x.len()]);
            let dims = [x.len() as i64];
            assert_eq!(
                call(&c, 0, &[ptr(&mut x), ptr(&mut y), ptr(&mut z)], &dims),
                0
            );
            (y, z)
        };
        for x in &rows {
            let ((y1, z1), (y0, z0)) = (run(true, x), run(false, x));
            assert_eq!(y1[0].to_bits(), y0[0].to_bits(), "max of {x:?}");
            let close = (y1[1] - y0[1]).abs() <= 1e-6 * y0[1].abs().max(1.0);
            assert!(close || (y1[1].is_nan() && y0[1].is_nan()), "sum of {x:?}");
            if kernel::avx2_fma() {
                for (a, b) in z1.iter().zip(&z0) {
                    assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
                }
            }
        }
    }

    /// Compiles with the JIT's own vector code (no library row routines), counting the
    /// vector loops and reductions it made.
    fn compile_counting(k: Kernel) -> (Compiled, (usize, usize)) {
        simd::COMPILED.with(|c| c.set((0, 0)));
        rows::NO_ROW_CALLS.with(|c| c.set(true));
        let c = compile(&[k]);
        rows::NO_ROW_CALLS.with(|c| c.set(false));
        (c.unwrap(), simd::COMPILED.with(|c| c.get()))
    }

    /// `k` with every innermost loop marked `mark`.
    fn with_mark(mut k: Kernel, mark: Mark) -> Kernel {
        fn go(body: &mut [Stmt], m: Mark) {
            for s in body {
                if let Stmt::Loop { mark: lm, body, .. } = s {
                    if body.iter().any(|s| matches!(s, Stmt::Loop { .. })) {
                        go(body, m);
                    } else {
                        *lm = m;
                    }
                }
            }
        }
        go(&mut k.body, mark);
        k
    }

    fn same_bits<T: Copy + std::fmt::Debug>(a: &[T], b: &[T], what: &str) {
        assert_eq!(a.len(), b.len());
        for i in 0..a.len() {
            let (x, y) = (format!("{:?}", a[i]), format!("{:?}", b[i]));
            // NaN payloads may differ; everything else (signed zeros too) must not.
            assert!(
                x == y || (x == "NaN" && y == "NaN"),
                "{what}: element {i}: {x} vs {y}"
            );
        }
    }

    /// Special f32 values, then pseudo-random ones of every magnitude.
    fn f32_samples() -> Vec<f32> {
        let mut xs = vec![
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            0.5,
            -0.5,
            1.5,
            2.5,
            -2.5,
            3.5,
            1e-40,
            -1e-40,
            f32::MIN_POSITIVE,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN,
            1e10,
            -3e9,
            123.456,
            7.0,
        ];
        let mut seed = 0x1234_5678u32;
        for _ in 0..20 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let x = f32::from_bits(seed);
            xs.push(if x.is_nan() { 0.25 } else { x });
            xs.push((seed >> 8) as f32 / 65536.0 - 128.0);
        }
        xs
    }

    /// Runs `k` (vector-marked innermost loops) and the same kernel with serial loops on
    /// buffers `inputs` (as bytes) and one output of `n` elements of `T`, and checks both give
    /// the same bits and that the vector one took the SIMD path.
    fn vector_vs_scalar<T: Copy + Default + PartialEq + std::fmt::Debug>(
        k: Kernel,
        inputs: &mut [Vec<u8>],
        n: usize,
        what: &str,
    ) -> Vec<T> {
        let mut outs = Vec::new();
        for mark in [Mark::Vector(4), Mark::Serial] {
            let (c, (vec, _)) = compile_counting(with_mark(k.clone(), mark));
            assert_eq!(vec, usize::from(mark != Mark::Serial), "{what}: SIMD path");
            let mut y = vec![T::default(); n];
            let mut ptrs: Vec<*mut u8> = inputs.iter_mut().map(|b| b.as_mut_ptr()).collect();
            ptrs.push(ptr(&mut y));
            assert_eq!(call(&c, 0, &ptrs, &[n as i64]), 0);
            outs.push(y);
        }
        same_bits(&outs[0], &outs[1], what);
        outs.pop().unwrap()
    }

    fn bytes<T: Copy>(v: &[T]) -> Vec<u8> {
        // SAFETY: plain numbers viewed as their bytes.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
            .to_vec()
    }

    fn zip_kernel(d: DType, to: DType, f: &dyn Fn(Expr, Expr) -> Expr) -> Kernel {
        Kernel {
            name: "zip".into(),
            bufs: vec![
                buf("a", d, BufKind::Input),
                buf("b", d, BufKind::Input),
                buf("y", to, BufKind::Output),
            ],
            dims: vec![Dim::sym("n")],
            vars: vec![DType::I64],
            body: vec![for_(
                0,
                Expr::Dim(0),
                vec![store(2, v(0), f(load(0, v(0)), load(1, v(0))))],
            )],
        }
    }

    #[test]
    fn vector_float_ops_match_the_scalar_code() {
        let xs = f32_samples();
        let (a, b): (Vec<f32>, Vec<f32>) = xs
            .iter()
            .flat_map(|&a| xs.iter().map(move |&b| (a, b)))
            .unzip();
        let n = a.len();
        let f = DType::F32;
        let unary = [
            Op::Neg,
            Op::Abs,
            Op::Sqrt,
            Op::Floor,
            Op::Ceil,
            Op::Round,
            Op::Recip,
            Op::Rsqrt,
        ];
        for o in unary {
            let k = map_kernel(f, f, |x| op(o.clone(), vec![x], f));
            simd::LANEWISE.with(|c| c.set(0));
            let y: Vec<f32> = vector_vs_scalar(k, &mut [bytes(&a)], n, o.mnemonic());
            assert_eq!(simd::LANEWISE.with(|c| c.get()), 0, "{o:?} lane by lane");
            // And against Rust.
            let r: fn(f32) -> f32 = match o {
                Op::Neg => |x| -x,
                Op::Abs => f32::abs,
                Op::Sqrt => f32::sqrt,
                Op::Floor => f32::floor,
                Op::Ceil => f32::ceil,
                Op::Round => f32::round_ties_even,
                Op::Rsqrt => |x| (1.0 / f64::from(x).sqrt()) as f32,
                _ => |x| 1.0 / x,
            };
            same_bits(&y, &a.iter().map(|&x| r(x)).collect::<Vec<_>>(), "vs rust");
        }
        for o in [Op::IsNan, Op::IsInf] {
            let k = map_kernel(f, DType::I32, |x| {
                cast(DType::I32)(op(o.clone(), vec![x], DType::Bool))
            });
            vector_vs_scalar::<i32>(k, &mut [bytes(&a)], n, o.mnemonic());
        }
        for o in [Op::Add, Op::Sub, Op::Mul, Op::Div, Op::Max, Op::Min] {
            let k = zip_kernel(f, f, &binop(o.clone(), f));
            let y: Vec<f32> = vector_vs_scalar(k, &mut [bytes(&a), bytes(&b)], n, o.mnemonic());
            if matches!(o, Op::Add | Op::Sub | Op::Mul | Op::Div) {
                let r: fn(f32, f32) -> f32 = match o {
                    Op::Add => |x, y| x + y,
                    Op::Sub => |x, y| x - y,
                    Op::Mul => |x, y| x * y,
                    _ => |x, y| x / y,
                };
                let want: Vec<f32> = a.iter().zip(&b).map(|(&x, &y)| r(x, y)).collect();
                same_bits(&y, &want, "vs rust");
            }
        }
        for o in [Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge] {
            // As a mask for select, and as a value.
            let sel = |x: Expr, y: Expr| {
                let c = op(o.clone(), vec![x.clone(), y.clone()], DType::Bool);
                op(Op::Select, vec![c, x, y], f)
            };
            vector_vs_scalar::<f32>(
                zip_kernel(f, f, &sel),
                &mut [bytes(&a), bytes(&b)],
                n,
                "sel",
            );
            let val = |x: Expr, y: Expr| cast(f)(op(o.clone(), vec![x, y], DType::Bool));
            vector_vs_scalar::<f32>(
                zip_kernel(f, f, &val),
                &mut [bytes(&a), bytes(&b)],
                n,
                "cmp",
            );
        }
        // Bool logic on masks, and casts.
        let logic = |x: Expr, y: Expr| {
            let p = op(Op::Lt, vec![x.clone(), y.clone()], DType::Bool);
            let q = op(Op::Gt, vec![x.clone(), Expr::Float(0.0, f)], DType::Bool);
            let r = op(Op::Ne, vec![y, Expr::Float(1.0, f)], DType::Bool);
            let pq = op(Op::And, vec![p.clone(), q.clone()], DType::Bool);
            let x1 = op(Op::Xor, vec![pq, r.clone()], DType::Bool);
            let o1 = op(
                Op::Or,
                vec![op(Op::Not, vec![p], DType::Bool), r],
                DType::Bool,
            );
            let s = op(Op::And, vec![x1, o1], DType::Bool);
            op(Op::Add, vec![cast(f)(s), cast(f)(cast(DType::Bool)(x))], f)
        };
        vector_vs_scalar::<f32>(
            zip_kernel(f, f, &logic),
            &mut [bytes(&a), bytes(&b)],
            n,
            "logic",
        );
        let k = map_kernel(f, DType::I32, cast(DType::I32));
        let y: Vec<i32> = vector_vs_scalar(k, &mut [bytes(&a)], n, "f32 -> i32");
        assert_eq!(y, a.iter().map(|&x| x as i32).collect::<Vec<_>>());
    }

    #[test]
    fn vector_integer_ops_and_casts_match_the_scalar_code() {
        let vals = [
            0i32,
            1,
            -1,
            2,
            -7,
            7,
            123_456,
            -99_999,
            i32::MIN,
            i32::MAX,
            1 << 24,
            16_777_217,
        ];
        let (a, b): (Vec<i32>, Vec<i32>) = vals
            .iter()
            .flat_map(|&a| vals.iter().map(move |&b| (a, b)))
            .unzip();
        let n = a.len();
        for d in [DType::I32, DType::U32] {
            for o in [
                Op::Add,
                Op::Sub,
                Op::Mul,
                Op::And,
                Op::Or,
                Op::Xor,
                Op::Max,
                Op::Min,
            ] {
                let k = zip_kernel(d, d, &binop(o.clone(), d));
                vector_vs_scalar::<i32>(k, &mut [bytes(&a), bytes(&b)], n, o.mnemonic());
            }
            for o in [Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge] {
                let k = zip_kernel(d, d, &|x, y| {
                    cast(d)(op(o.clone(), vec![x, y], DType::Bool))
                });
                let y: Vec<i32> = vector_vs_scalar(k, &mut [bytes(&a), bytes(&b)], n, o.mnemonic());
                if o == Op::Lt {
                    let want: Vec<i32> = if d == DType::I32 {
                        a.iter().zip(&b).map(|(x, y)| i32::from(x < y)).collect()
                    } else {
                        a.iter()
                            .zip(&b)
                            .map(|(&x, &y)| i32::from((x as u32) < (y as u32)))
                            .collect()
                    };
                    assert_eq!(y, want, "{d} lt");
                }
            }
            for o in [Op::Neg, Op::Not, Op::Abs] {
                let k = map_kernel(d, d, |x| op(o.clone(), vec![x], d));
                vector_vs_scalar::<i32>(k, &mut [bytes(&a)], n, o.mnemonic());
            }
            let k = map_kernel(d, DType::F32, cast(DType::F32));
            let y: Vec<f32> = vector_vs_scalar(k, &mut [bytes(&a)], n, "int -> f32");
            let want: Vec<f32> = if d == DType::I32 {
                a.iter().map(|&x| x as f32).collect()
            } else {
                a.iter().map(|&x| x as u32 as f32).collect()
            };
            same_bits(&y, &want, "int -> f32");
            let other = if d == DType::I32 {
                DType::U32
            } else {
                DType::I32
            };
            let k = map_kernel(d, other, |x| cast(other)(cast(DType::Bool)(cast(other)(x))));
            vector_vs_scalar::<i32>(k, &mut [bytes(&a)], n, "int -> bool -> int");
            // Select on an integer condition between integers.
            let k = zip_kernel(d, d, &|x, y| {
                let c = op(Op::Gt, vec![x.clone(), y.clone()], DType::Bool);
                op(Op::Select, vec![c, y, x], d)
            });
            vector_vs_scalar::<i32>(k, &mut [bytes(&a), bytes(&b)], n, "select");
        }
        // u32 -> f32 rounds like the scalar code above 2^31.
        let us = [
            u32::MAX,
            0x8000_0001,
            0x8000_0080,
            0x8000_0081,
            0x8000_0180,
            0xffff_ff7f,
            0xffff_ff80,
            3,
            0x7fff_ffff,
        ];
        let k = map_kernel(DType::U32, DType::F32, cast(DType::F32));
        let y: Vec<f32> = vector_vs_scalar(k, &mut [bytes(&us)], us.len(), "u32 -> f32");
        same_bits(&y, &us.iter().map(|&x| x as f32).collect::<Vec<_>>(), "u32");
    }

    /// Distance in representable f32 values.
    fn ulps(a: f32, b: f32) -> u64 {
        let key = |x: f32| {
            let i = i64::from(x.to_bits() as i32);
            if i < 0 {
                i64::from(i32::MIN) - i
            } else {
                i
            }
        };
        (key(a) - key(b)).unsigned_abs()
    }

    #[test]
    fn vector_exp_sigmoid_and_tanh_are_within_2_ulp() {
        // Every 601st float in [-110, 95], the specials, subnormals and tiny values.
        let mut xs: Vec<f32> = Vec::new();
        let mut x = -110f32;
        while x < 95.0 {
            xs.push(x);
            let b = x.to_bits();
            // Positive floats (and +0) have the sign bit clear; negative ones step towards
            // -0 by decreasing bits.
            x = f32::from_bits(if b < 0x8000_0000 {
                b + 601
            } else if b - 0x8000_0000 > 601 {
                b - 601
            } else {
                0
            });
        }
        xs.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e-45,
            -1e-45,
            1e-40,
            1e-4,
            -1e-4,
            88.72283,
            88.72284,
            -103.972,
            -87.33655,
            f32::MAX,
            f32::MIN,
        ]);
        type F = fn(f64) -> f64;
        let cases: [(Op, F, u64); 3] = [
            (Op::Exp, f64::exp, 1),
            (Op::Sigmoid, |x| kernel::routines::math::sigmoid(x), 2),
            (Op::Tanh, f64::tanh, 1),
        ];
        for (o, f, bound) in cases {
            let (worst, at) = vector_ulps(&o, f, &xs);
            assert!(worst <= bound, "{}: {worst} ulp at {at}", o.mnemonic());
        }
    }

    /// Runs `y[i] = o(x[i])` as a vector loop over `xs`, with and without fused multiply-adds
    /// (if the host has them), checking that the loop and `o` took the SIMD path (no op lane
    /// by lane), that NaN gives NaN and that ±0, ±inf give exactly `f` rounded; returns the
    /// largest distance in ulp from `f` rounded, and where.
    fn vector_ulps(o: &Op, f: fn(f64) -> f64, xs: &[f32]) -> (u64, f32) {
        let mut worst = (0, 0.0);
        for no_fma in [false, true] {
            simd::NO_FMA.with(|c| c.set(no_fma));
            let w = vector_ulps_once(o, f, xs);
            simd::NO_FMA.with(|c| c.set(false));
            if w.0 >= worst.0 {
                worst = w;
            }
        }
        worst
    }

    fn vector_ulps_once(o: &Op, f: fn(f64) -> f64, xs: &[f32]) -> (u64, f32) {
        let k = with_mark(
            map_kernel(DType::F32, DType::F32, |x| {
                op(o.clone(), vec![x], DType::F32)
            }),
            Mark::Vector(4),
        );
        simd::LANEWISE.with(|c| c.set(0));
        let (c, counts) = compile_counting(k);
        assert_eq!(counts, (1, 0));
        assert_eq!(
            simd::LANEWISE.with(|c| c.get()),
            0,
            "{} lane by lane",
            o.mnemonic()
        );
        let n = xs.len();
        let mut x = xs.to_vec();
        let mut y = vec![0f32; n];
        assert_eq!(call(&c, 0, &[ptr(&mut x), ptr(&mut y)], &[n as i64]), 0);
        let mut worst = (0, 0.0);
        for (&x, &y) in xs.iter().zip(&y) {
            let want = f(f64::from(x)) as f32;
            if want.is_nan() || y.is_nan() {
                assert!(y.is_nan() && want.is_nan(), "{}({x}) = {y}", o.mnemonic());
                continue;
            }
            if !x.is_finite() || x == 0.0 {
                assert_eq!(y.to_bits(), want.to_bits(), "{}({x})", o.mnemonic());
            }
            let u = ulps(y, want);
            if u > worst.0 {
                worst = (u, x);
            }
        }
        worst
    }

    /// Every `stride`-th float from `lo` up to `hi` (both finite, same sign or `lo` = 0).
    fn floats_between(lo: f32, hi: f32, stride: u32) -> Vec<f32> {
        let (a, b) = (lo.abs().to_bits(), hi.abs().to_bits());
        let sign = if hi < 0.0 || lo < 0.0 { 0x8000_0000 } else { 0 };
        (a.min(b)..=a.max(b))
            .step_by(stride as usize)
            .map(|u| f32::from_bits(u | sign))
            .collect()
    }

    /// Specials, every 4099th float of both signs (all magnitudes, subnormals included), and
    /// `dense` grids.
    fn ulp_samples(dense: &[(f32, f32, u32)]) -> Vec<f32> {
        let mut xs = vec![
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e-45,
            -1e-45,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1.0,
            -1.0,
            f32::MAX,
            f32::MIN,
        ];
        xs.extend(floats_between(0.0, f32::MAX, 4099));
        xs.extend(floats_between(-0.0, f32::MIN, 4099));
        for &(lo, hi, stride) in dense {
            xs.extend(floats_between(lo, hi, stride));
        }
        xs
    }

    #[test]
    fn vector_erf_is_within_1_ulp() {
        // Densely over [-4.5, 4.5], where erf is not yet ±1: both polynomial pieces, the
        // switch at 0.921875, the saturation near 3.92.
        let xs = ulp_samples(&[(0.0, 4.5, 1201), (-0.0, -4.5, 1201), (0.9, 0.95, 7)]);
        let (worst, at) = vector_ulps(&Op::Erf, libm::erf, &xs);
        assert!(worst <= 1, "erf: {worst} ulp at {at}");
        // The ends: erf(±4) is exactly ±1; tiny and subnormal x, odd.
        let ys: Vec<f32> = run_map(
            with_mark(
                map_kernel(DType::F32, DType::F32, |x| op(Op::Erf, vec![x], DType::F32)),
                Mark::Vector(4),
            ),
            // Eight: all in the vector loop, none in the scalar tail.
            &[4.0f32, -4.0, 3.95, 1e-30, -1e-30, 1e-40, -1e-40, 5.0],
        );
        assert_eq!(&ys[..3], &[1.0, -1.0, 1.0]);
        assert!(ulps(ys[3], libm::erf(f64::from(1e-30f32)) as f32) <= 1);
        assert_eq!(ys[4], -ys[3]);
        assert!(ulps(ys[5], libm::erf(f64::from(1e-40f32)) as f32) <= 1);
        assert_eq!((ys[6], ys[7]), (-ys[5], 1.0));
    }

    #[test]
    fn vector_log_is_within_1_ulp() {
        // Densely near 1 (where the result is small and the relative error shows) and over
        // the subnormals.
        let xs = ulp_samples(&[
            (0.5, 2.0, 61),
            (0.999, 1.001, 3),
            (0.0, f32::MIN_POSITIVE, 997),
            (-0.0, -2.0, 30011),
        ]);
        let (worst, at) = vector_ulps(&Op::Log, f64::ln, &xs);
        assert!(worst <= 1, "log: {worst} ulp at {at}");
    }

    #[test]
    fn lanewise_ops_are_counted() {
        // The counter the ulp tests rely on sees an op without a vector form.
        simd::LANEWISE.with(|c| c.set(0));
        let k = with_mark(
            map_kernel(DType::F32, DType::F32, |x| op(Op::Sin, vec![x], DType::F32)),
            Mark::Vector(4),
        );
        let (_, counts) = compile_counting(k);
        assert_eq!(counts, (1, 0));
        assert_eq!(simd::LANEWISE.with(|c| c.get()), 1);
    }

    /// Every f32 through the vector `erf` and `log`, against the f64 functions rounded
    /// (minutes; run with `--ignored`).
    #[test]
    #[ignore = "exhaustive over every f32 (minutes): run with --ignored"]
    fn vector_erf_and_log_exhaustively() {
        type F = fn(f64) -> f64;
        let cases: [(Op, F); 2] = [(Op::Erf, libm::erf), (Op::Log, f64::ln)];
        for (o, f) in cases {
            let mut worst = (0, 0.0);
            for chunk in 0..1024u32 {
                let xs: Vec<f32> = (0..1u32 << 22)
                    .map(|i| f32::from_bits(chunk << 22 | i))
                    .collect();
                let w = vector_ulps(&o, f, &xs);
                if w.0 > worst.0 {
                    worst = w;
                }
            }
            eprintln!("{}: worst {} ulp at {:e}", o.mnemonic(), worst.0, worst.1);
            assert!(
                worst.0 <= 1,
                "{}: {} ulp at {}",
                o.mnemonic(),
                worst.0,
                worst.1
            );
        }
    }

    #[test]
    fn vector_loops_handle_tails_strides_broadcasts_and_gathers() {
        // for i vector:
        //   t = (x[i] + s[0]) * x[2i + 1]
        //   y[i] = t + x[idx[i]] + x[i / 2] + x[(n - 1) - i]
        //   z[3i + 1] = t;  w[i] = cast<f64>(t) * 0.5;  q[i] = cast<i32>(t) + cast<i32>(i)
        let f = DType::F32;
        let (x, s, idx, y, z, w, q) = (0, 1, 2, 3, 4, 5, 6);
        let add = |a, b| op(Op::Add, vec![a, b], f);
        let i = || v(0);
        let k = Kernel {
            name: "mix".into(),
            bufs: vec![
                buf("x", f, BufKind::Input),
                buf("s", f, BufKind::Input),
                buf("idx", DType::I64, BufKind::Input),
                buf("y", f, BufKind::Output),
                buf("z", f, BufKind::Output),
                buf("w", DType::F64, BufKind::Output),
                buf("q", DType::I32, BufKind::Output),
            ],
            dims: vec![Dim::sym("n")],
            vars: vec![DType::I64, f],
            body: vec![Stmt::Loop {
                var: 0,
                extent: Expr::Dim(0),
                mark: Mark::Vector(4),
                body: vec![
                    Stmt::Set {
                        var: 1,
                        value: op(
                            Op::Mul,
                            vec![
                                add(load(x, i()), load(s, Expr::i64(0))),
                                load(x, Expr::i64(2) * i() + Expr::i64(1)),
                            ],
                            f,
                        ),
                    },
                    store(
                        y,
                        i(),
                        add(
                            add(v(1), load(x, load(idx, i()))),
                            add(
                                load(x, Expr::index_op(Op::Div, i(), Expr::i64(2))),
                                load(
                                    x,
                                    Expr::index_op(Op::Sub, Expr::Dim(0) + Expr::i64(-1), i()),
                                ),
                            ),
                        ),
                    ),
                    store(z, Expr::i64(3) * i() + Expr::i64(1), v(1)),
                    store(
                        w,
                        i(),
                        op(
                            Op::Mul,
                            vec![cast(DType::F64)(v(1)), Expr::Float(0.5, DType::F64)],
                            DType::F64,
                        ),
                    ),
                    store(
                        q,
                        i(),
                        op(
                            Op::Add,
                            vec![cast(DType::I32)(v(1)), cast(DType::I32)(i())],
                            DType::I32,
                        ),
                    ),
                ],
            }],
        };
        let (c, counts) = compile_counting(k);
        assert_eq!(counts, (1, 0));
        for n in [0usize, 1, 3, 4, 5, 7, 8, 17, 1000] {
            let mut xv: Vec<f32> = (0..2 * n + 2).map(|j| (j as f32) * 0.25 - 3.0).collect();
            let mut sv = vec![1.5f32];
            let mut iv: Vec<i64> = (0..n).map(|j| ((j * 7 + 3) % (2 * n + 1)) as i64).collect();
            let mut yv = vec![0f32; n];
            let mut zv = vec![-9f32; 3 * n + 2];
            let mut wv = vec![0f64; n];
            let mut qv = vec![0i32; n];
            let r = call(
                &c,
                0,
                &[
                    ptr(&mut xv),
                    ptr(&mut sv),
                    ptr(&mut iv),
                    ptr(&mut yv),
                    ptr(&mut zv),
                    ptr(&mut wv),
                    ptr(&mut qv),
                ],
                &[n as i64],
            );
            assert_eq!(r, 0);
            for j in 0..n {
                let t = (xv[j] + sv[0]) * xv[2 * j + 1];
                let want = (t + xv[iv[j] as usize]) + (xv[j / 2] + xv[n - 1 - j]);
                assert_eq!(yv[j].to_bits(), want.to_bits(), "n {n} y[{j}]");
                assert_eq!(zv[3 * j + 1], t, "n {n} z[{}]", 3 * j + 1);
                assert_eq!(wv[j], f64::from(t) * 0.5, "n {n} w[{j}]");
                assert_eq!(qv[j], (t as i32).wrapping_add(j as i32), "n {n} q[{j}]");
            }
            // Strided stores leave the other elements alone.
            for (j, &zj) in zv.iter().enumerate() {
                if j % 3 != 1 || j / 3 >= n {
                    assert_eq!(zj, -9.0, "n {n} z[{j}] was written");
                }
            }
        }
    }

    #[test]
    fn vector_loops_mix_native_and_per_lane_ops() {
        // y[i] = erf(x[i]) + cast<f32>(cast<f64>(x[i]) * 1.5) + pow(x[i], 0.5) + sign(x[i])
        //        + exp(x[i]) * sigmoid(x[i])
        let f = DType::F32;
        let k = map_kernel(f, f, |x| {
            let e = op(Op::Erf, vec![x.clone()], f);
            let w = cast(f)(op(
                Op::Mul,
                vec![cast(DType::F64)(x.clone()), Expr::Float(1.5, DType::F64)],
                DType::F64,
            ));
            let p = op(Op::Pow, vec![x.clone(), Expr::Float(0.5, f)], f);
            let s = op(Op::Sign, vec![x.clone()], f);
            let sum = op(
                Op::Add,
                vec![op(Op::Add, vec![e, w], f), op(Op::Add, vec![p, s], f)],
                f,
            );
            let es = op(
                Op::Mul,
                vec![op(Op::Exp, vec![x.clone()], f), op(Op::Sigmoid, vec![x], f)],
                f,
            );
            op(Op::Add, vec![sum, es], f)
        });
        let xs: Vec<f32> = (0..103).map(|j| (j as f32 - 50.0) * 0.173).collect();
        let vk = with_mark(k.clone(), Mark::Vector(4));
        let (c, counts) = compile_counting(vk);
        assert_eq!(counts, (1, 0));
        let mut x = xs.clone();
        let mut y = vec![0f32; xs.len()];
        assert_eq!(
            call(&c, 0, &[ptr(&mut x), ptr(&mut y)], &[xs.len() as i64]),
            0
        );
        for (j, &x) in xs.iter().enumerate() {
            let xd = f64::from(x);
            let a = (libm::erf(xd) as f32 + (xd * 1.5) as f32)
                + (xd.powf(0.5) as f32 + kernel::routines::math::sign(xd) as f32);
            let want = a + xd.exp() as f32 * kernel::routines::math::sigmoid(xd) as f32;
            let got = y[j];
            assert!(
                (got.is_nan() && want.is_nan()) || (got - want).abs() <= 4e-7 * want.abs().max(1.0),
                "x {x}: {got} vs {want}"
            );
        }
    }

    /// `y[r] = fold over c < cols of x[r * cols + c] * s[r]` with `acc = op(acc, ...)`.
    fn reduction_kernel(o: Op, sum: bool) -> Kernel {
        let f = DType::F32;
        let acc_t = if sum { DType::F64 } else { f };
        let e = op(
            Op::Mul,
            vec![load(0, v(0) * Expr::Dim(1) + v(1)), load(1, v(0))],
            f,
        );
        let e = if sum { cast(DType::F64)(e) } else { e };
        let init = if sum {
            Expr::Float(0.0, DType::F64)
        } else if o == Op::Max {
            Expr::Float(f64::NEG_INFINITY, f)
        } else {
            Expr::Float(f64::INFINITY, f)
        };
        Kernel {
            name: "reduce".into(),
            bufs: vec![
                buf("x", f, BufKind::Input),
                buf("s", f, BufKind::Input),
                buf("y", acc_t, BufKind::Output),
            ],
            dims: vec![Dim::sym("r"), Dim::sym("c")],
            vars: vec![DType::I64, DType::I64, acc_t],
            body: vec![for_(
                0,
                Expr::Dim(0),
                vec![
                    Stmt::Set {
                        var: 2,
                        value: init,
                    },
                    for_(
                        1,
                        Expr::Dim(1),
                        vec![Stmt::Set {
                            var: 2,
                            value: op(o, vec![v(2), e], acc_t),
                        }],
                    ),
                    store(2, v(0), v(2)),
                ],
            )],
        }
    }

    #[test]
    fn max_and_min_reductions_match_the_sequential_fold() {
        // Cranelift's fmax/fmin: NaN if either is NaN; -0 < +0.
        let fold = |o: &Op, a: f32, b: f32| -> f32 {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else if a == b {
                if (*o == Op::Max) == a.is_sign_positive() {
                    a
                } else {
                    b
                }
            } else if *o == Op::Max {
                a.max(b)
            } else {
                a.min(b)
            }
        };
        for o in [Op::Max, Op::Min] {
            let (c, counts) = compile_counting(reduction_kernel(o.clone(), false));
            assert_eq!(counts, (0, 1));
            for cols in [0usize, 1, 3, 7, 8, 9, 15, 16, 17, 100, 1000] {
                let rows = 6;
                let mut x: Vec<f32> = (0..rows * cols)
                    .map(|j| ((j * 7919) % 1009) as f32 - 500.0)
                    .collect();
                // Row 1: a NaN in the middle; row 2: in the tail; row 3: signed zeros only;
                // row 4: all -inf / +inf.
                if cols > 0 {
                    x[cols + cols / 2] = f32::NAN;
                    x[2 * cols + cols - 1] = f32::NAN;
                    for j in 0..cols {
                        x[3 * cols + j] = if j % 3 == 0 { 0.0 } else { -0.0 };
                        x[4 * cols + j] = if o == Op::Max {
                            f32::NEG_INFINITY
                        } else {
                            f32::INFINITY
                        };
                    }
                }
                let mut s = vec![1.0f32, 1.0, 2.0, 1.0, 1.0, -0.5];
                let mut y = vec![0f32; rows];
                let r = call(
                    &c,
                    0,
                    &[ptr(&mut x), ptr(&mut s), ptr(&mut y)],
                    &[rows as i64, cols as i64],
                );
                assert_eq!(r, 0);
                for row in 0..rows {
                    let init = if o == Op::Max {
                        f32::NEG_INFINITY
                    } else {
                        f32::INFINITY
                    };
                    let want = (0..cols).fold(init, |a, j| fold(&o, a, x[row * cols + j] * s[row]));
                    same_bits(
                        &[y[row]],
                        &[want],
                        &format!("{} cols {cols} row {row}", o.mnemonic()),
                    );
                }
            }
        }
    }

    #[test]
    fn f64_sums_of_f32_values_match_the_sequential_sum() {
        let (c, counts) = compile_counting(reduction_kernel(Op::Add, true));
        assert_eq!(counts, (0, 1));
        for cols in [0usize, 1, 3, 7, 8, 9, 15, 16, 17, 100, 1000, 4099] {
            let rows = 3;
            let mut x: Vec<f32> = (0..rows * cols)
                .map(|j| (((j * 7919) % 1009) as f32 - 500.0) * 1.37e-3)
                .collect();
            let mut s = vec![1.0f32, -3.0, 0.1];
            let mut y = vec![0f64; rows];
            let r = call(
                &c,
                0,
                &[ptr(&mut x), ptr(&mut s), ptr(&mut y)],
                &[rows as i64, cols as i64],
            );
            assert_eq!(r, 0);
            for row in 0..rows {
                let terms = (0..cols).map(|j| f64::from(x[row * cols + j] * s[row]));
                let want: f64 = terms.clone().sum();
                let mag: f64 = terms.map(f64::abs).sum();
                assert!(
                    (y[row] - want).abs() <= 1e-15 * mag,
                    "cols {cols} row {row}: {} vs {want}",
                    y[row]
                );
            }
        }
        // Special values: infinities and NaN propagate, -0 sums stay -0.
        for (vals, want) in [
            (
                vec![1.0f32, f32::INFINITY, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
                f64::INFINITY,
            ),
            (
                vec![
                    f32::INFINITY,
                    1.0,
                    2.0,
                    3.0,
                    4.0,
                    5.0,
                    6.0,
                    7.0,
                    f32::NEG_INFINITY,
                ],
                f64::NAN,
            ),
            (
                vec![1.0, 2.0, 3.0, f32::NAN, 4.0, 5.0, 6.0, 7.0, 8.0],
                f64::NAN,
            ),
        ] {
            let mut x = vals.clone();
            let mut s = vec![1.0f32];
            let mut y = vec![0f64; 1];
            call(
                &c,
                0,
                &[ptr(&mut x), ptr(&mut s), ptr(&mut y)],
                &[1, vals.len() as i64],
            );
            same_bits(&y, &[want], "special sum");
        }
    }

    #[test]
    fn loops_that_are_not_vectorizable_stay_scalar() {
        // A loop-carried temporary, a check and a byte store: scalar, and still right.
        let f = DType::F32;
        let carried = Kernel {
            name: "carried".into(),
            bufs: vec![buf("x", f, BufKind::Input), buf("y", f, BufKind::Output)],
            dims: vec![Dim::sym("n")],
            vars: vec![DType::I64, f],
            body: vec![
                Stmt::Set {
                    var: 1,
                    value: Expr::Float(0.0, f),
                },
                Stmt::Loop {
                    var: 0,
                    extent: Expr::Dim(0),
                    mark: Mark::Vector(4),
                    body: vec![
                        store(1, v(0), v(1)),
                        Stmt::Set {
                            var: 1,
                            value: load(0, v(0)),
                        },
                    ],
                },
            ],
        };
        let (c, counts) = compile_counting(carried);
        assert_eq!(counts, (0, 0));
        let mut x = vec![1f32, 2., 3., 4., 5., 6.];
        let mut y = vec![0f32; 6];
        assert_eq!(call(&c, 0, &[ptr(&mut x), ptr(&mut y)], &[6]), 0);
        assert_eq!(y, vec![0., 1., 2., 3., 4., 5.]);
        let bytes_out = with_mark(
            map_kernel(f, DType::Bool, |x| {
                op(Op::Gt, vec![x, Expr::Float(0.0, f)], DType::Bool)
            }),
            Mark::Vector(4),
        );
        let (c, counts) = compile_counting(bytes_out);
        assert_eq!(counts, (0, 0));
        let mut x = vec![1f32, -2., 3., 0., 5.];
        let mut y = vec![false; 5];
        assert_eq!(call(&c, 0, &[ptr(&mut x), ptr(&mut y)], &[5]), 0);
        assert_eq!(y, vec![true, false, true, false, true]);
        // An f32 sum (not the lowering's f64 rule) is not reassociated.
        let (_, counts) = compile_counting(Kernel {
            vars: vec![DType::I64, DType::I64, f],
            ..reduction_kernel(Op::Add, false)
        });
        assert_eq!(counts, (0, 0));
    }
}
