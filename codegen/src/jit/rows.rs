//! Loops the JIT hands to library routines ([`kernel::routines::rows`]): a row's f32 maximum, its f64
//! sum, and `dst = exp(src - s)` along a row, when the loop is exactly that over contiguous
//! f32 elements. The routines run 8-lane AVX2 code where the host has it, with the loops'
//! semantics.

use cranelift_codegen::ir::{types, InstBuilder};
use ir::{DType, Op};

use super::simd::{mentions, reduction, well_formed, Reduction};
use super::{Lower, R};
use kernel::{Expr, Stmt, VarId};

#[cfg(test)]
thread_local! {
    /// Keeps loops away from the library routines on this thread (tests of the JIT's own
    /// vector code).
    pub(super) static NO_ROW_CALLS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `off` when `index` is `off + var` (either order, or `var` alone) and `off` does not read
/// `var`.
fn contiguous(index: &Expr, var: VarId) -> Option<Expr> {
    if *index == Expr::Var(var) {
        return Some(Expr::i64(0));
    }
    let Expr::Op {
        op: Op::Add,
        args,
        dtype: DType::I64,
    } = index
    else {
        return None;
    };
    let off = match args.as_slice() {
        [Expr::Var(v), off] | [off, Expr::Var(v)] if *v == var => off,
        _ => return None,
    };
    (!mentions(off, &|w| w == var)).then(|| off.clone())
}

/// Whether `e` loads from buffer `b`.
fn reads(e: &Expr, b: usize) -> bool {
    match e {
        Expr::Load { buf, index } => *buf == b || reads(index, b),
        Expr::Op { args, .. } => args.iter().any(|a| reads(a, b)),
        _ => false,
    }
}

impl Lower<'_, '_> {
    /// The f32 buffer and offset of a load along the row of loop `var`.
    fn row_load(&self, e: &Expr, var: VarId) -> Option<(usize, Expr)> {
        match e {
            Expr::Load { buf, index }
                if *buf < self.k.bufs.len() && self.k.bufs[*buf].dtype == DType::F32 =>
            {
                Some((*buf, contiguous(index, var)?))
            }
            _ => None,
        }
    }

    /// Emits loop `var in 0..extent` over `body` as a library call if it has one of the
    /// shapes above; whether it did.
    pub(super) fn row_call(
        &mut self,
        var: VarId,
        extent: &Expr,
        body: &[Stmt],
        vector: bool,
    ) -> R<bool> {
        #[cfg(test)]
        if NO_ROW_CALLS.with(std::cell::Cell::get) {
            return Ok(false);
        }
        let k = self.k;
        let [s] = body else {
            return Ok(false);
        };
        if let Some(Reduction { acc, op, dtype, e }) = reduction(k, var, body) {
            // Max along a row, or the f64 sum (min has no routine).
            let (name, ty) = match (op, dtype) {
                (Op::Max, DType::F32) => ("kiln_row_max", types::F32),
                (Op::Add, DType::F64) => ("kiln_row_sum_f64", types::F64),
                _ => return Ok(false),
            };
            let Some((buf, off)) = self.row_load(e, var) else {
                return Ok(false);
            };
            if mentions(&off, &|w| w == acc) {
                return Ok(false);
            }
            let p = self.address(buf, &off)?;
            let n = self.expr_of(extent, DType::I64, "a loop extent")?;
            let (accv, _) = self.var(acc)?;
            let cur = self.b.use_var(accv);
            let f = self.import(name, &[self.ptr, types::I64, ty], Some(ty))?;
            let call = self.b.ins().call(f, &[p, n, cur]);
            let r = self.b.inst_results(call)[0];
            self.def(accv, r)?;
            return Ok(true);
        }
        let (Stmt::Store { buf, index, value }, true) = (s, vector) else {
            return Ok(false);
        };
        let dst = *buf;
        if dst >= k.bufs.len() || k.bufs[dst].dtype != DType::F32 {
            return Ok(false);
        }
        let Some(doff) = contiguous(index, var) else {
            return Ok(false);
        };
        let Expr::Op {
            op: Op::Exp,
            args,
            dtype: DType::F32,
        } = value
        else {
            return Ok(false);
        };
        let [arg] = args.as_slice() else {
            return Ok(false);
        };
        let (x, s) = match arg {
            Expr::Op {
                op: Op::Sub,
                args,
                dtype: DType::F32,
            } if args.len() == 2 => (&args[0], Some(&args[1])),
            x => (x, None),
        };
        let Some((src, soff)) = self.row_load(x, var) else {
            return Ok(false);
        };
        // In place, or apart (distinct buffers never overlap).
        if src == dst && soff != doff {
            return Ok(false);
        }
        if let Some(s) = s {
            if !well_formed(k, s)
                || s.dtype(k) != DType::F32
                || mentions(s, &|w| w == var)
                || reads(s, dst)
            {
                return Ok(false);
            }
        }
        let sp = self.address(src, &soff)?;
        let dp = self.address(dst, &doff)?;
        let n = self.expr_of(extent, DType::I64, "a loop extent")?;
        let sv = match s {
            Some(s) => self.expr_of(s, DType::F32, "a row's shift")?,
            None => self.b.ins().f32const(0.0),
        };
        let f = self.import(
            "kiln_row_exp_sub",
            &[self.ptr, self.ptr, types::I64, types::F32],
            None,
        )?;
        self.b.ins().call(f, &[sp, dp, n, sv]);
        Ok(true)
    }
}
