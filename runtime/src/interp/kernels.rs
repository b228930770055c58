//! The reference semantics of kernel IR: runs a kernel statement by statement on host buffers,
//! every scalar op through the interpreter's [`super::elementwise`] and every routine call
//! through the routine table's host function (after checking every operand's range against
//! the routine's bounds). Every backend is checked against it (the kernel filetests); it is
//! slow and checks every access.

use ir::{DType, Data};
use kernel::{Expr, Kernel, Stmt};

/// Runs `k` over `bufs` (one per kernel buffer, of its dtype and at least its length) with the
/// dim table's values `dims`: `Ok(0)`, or `Ok(code)` when a check ends the kernel. An access
/// out of its buffer, a variable read before it is set or an operand of the wrong dtype is an
/// error (compiled code would misbehave there).
pub fn run(k: &Kernel, bufs: &mut [Data], dims: &[i64]) -> Result<u32, String> {
    k.check_ids().map_err(|e| e.to_string())?;
    if bufs.len() != k.bufs.len() || dims.len() != k.dims.len() {
        return Err(format!(
            "kernel `{}` takes {} buffers and {} dims, given {} and {}",
            k.name,
            k.bufs.len(),
            k.dims.len(),
            bufs.len(),
            dims.len()
        ));
    }
    for (b, d) in k.bufs.iter().zip(bufs.iter()) {
        if b.dtype != d.dtype() {
            return Err(format!(
                "buffer `{}` is {}, given {}",
                b.name,
                b.dtype,
                d.dtype()
            ));
        }
    }
    let mut m = Machine {
        k,
        bufs,
        dims,
        vars: vec![None; k.vars.len()],
    };
    m.stmts(&k.body)
        .map_err(|e| format!("kernel `{}`: {e}", k.name))
}

struct Machine<'a> {
    k: &'a Kernel,
    bufs: &'a mut [Data],
    dims: &'a [i64],
    /// Each variable's value (one element of its dtype) once set.
    vars: Vec<Option<Data>>,
}

/// One element of `dtype` holding `v`.
fn scalar(dtype: DType, v: f64, i: i64) -> Data {
    match dtype {
        DType::Bool => Data::Bool(vec![i != 0]),
        d if d.is_float() => Data::from_f64s(d, &[v]),
        d => Data::from_i128s(d, &[i.into()]),
    }
}

impl Machine<'_> {
    fn stmts(&mut self, body: &[Stmt]) -> Result<u32, String> {
        for s in body {
            let code = self.stmt(s)?;
            if code != 0 {
                return Ok(code);
            }
        }
        Ok(0)
    }

    fn stmt(&mut self, s: &Stmt) -> Result<u32, String> {
        match s {
            Stmt::Loop {
                var, extent, body, ..
            } => {
                let n = self.int(extent)?;
                for i in 0..n.max(0) {
                    self.vars[*var] = Some(Data::I64(vec![i]));
                    let code = self.stmts(body)?;
                    if code != 0 {
                        return Ok(code);
                    }
                }
            }
            Stmt::Set { var, value } => {
                let v = self.eval(value)?;
                if v.dtype() != self.k.vars[*var] {
                    return Err(format!(
                        "v{var} is {}, set to a {}",
                        self.k.vars[*var],
                        v.dtype()
                    ));
                }
                self.vars[*var] = Some(v);
            }
            Stmt::Store { buf, index, value } => {
                let i = self.index(*buf, index)?;
                let v = self.eval(value)?;
                let name = &self.k.bufs[*buf].name;
                ir::with_data!(&mut self.bufs[*buf], d, W => match &v {
                    W(x) => d[i] = x[0],
                    _ => return Err(format!("a {} stored into `{name}`", v.dtype())),
                });
            }
            Stmt::Check { cond, code } => {
                if self.int(cond)? == 0 {
                    return Ok(*code);
                }
            }
            Stmt::Call(c) => {
                let r = c.checked()?;
                let ints = c
                    .ints
                    .iter()
                    .map(|e| self.int(e))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut ptrs = Vec::new();
                let mut ranges: Vec<(usize, usize, usize, bool)> = Vec::new();
                for (i, (op, &(name, role, dtype))) in c.operands.iter().zip(r.operands).enumerate()
                {
                    let Some((b, off)) = op else {
                        ptrs.push(std::ptr::null_mut());
                        continue;
                    };
                    let off = self.int(off)?;
                    let buf = &mut self.bufs[*b];
                    let len = buf.len() as i64;
                    // Every element the call touches lies in the buffer (the routine's
                    // bounds under these integers).
                    let touched = (r.bounds)(i, &ints)
                        .map(|(lo, hi)| (off.checked_add(lo), off.checked_add(hi)));
                    let inside = match touched {
                        None => (0..=len).contains(&off),
                        Some((Some(lo), Some(hi))) => lo >= 0 && hi < len,
                        Some(_) => false,
                    };
                    if buf.dtype() != dtype || !inside {
                        return Err(format!(
                            "operand `{name}` of `{}` at {off} reaches outside its {} buffer of {len}",
                            r.name,
                            buf.dtype(),
                        ));
                    }
                    if let Some((Some(lo), Some(hi))) = touched {
                        if c.accessed(i) {
                            let write = role == kernel::routines::Role::Write;
                            ranges.push((*b, lo as usize, hi as usize, write));
                        }
                    }
                    let base: *mut u8 = ir::with_data!(buf, v, _W => v.as_mut_ptr().cast());
                    ptrs.push(base.wrapping_add(off as usize * kernel::elem_bytes(dtype)));
                }
                // A written range overlaps another operand's only when they are the same
                // range (in place) and the routine allows it.
                for (x, &(b, lo, hi, w)) in ranges.iter().enumerate() {
                    for &(b2, lo2, hi2, w2) in &ranges[x + 1..] {
                        let overlap = b == b2 && lo <= hi2 && lo2 <= hi;
                        let same = r.in_place && (lo, hi) == (lo2, hi2);
                        if overlap && (w || w2) && !same {
                            return Err(format!("`{}` writes an operand another overlaps", r.name));
                        }
                    }
                }
                let mut scalars = Vec::with_capacity(c.scalars.len());
                for (e, &(name, dtype)) in c.scalars.iter().zip(r.scalars) {
                    let v = self.eval(e)?;
                    if v.dtype() != dtype {
                        return Err(format!("argument `{name}` of `{}` is not {dtype}", r.name));
                    }
                    scalars.push(v.get_f64(0));
                }
                // SAFETY: every operand is a live buffer of the routine's dtype holding every
                // element the routine's bounds say the call touches; written ranges overlap
                // other operands only in place.
                let got = unsafe { (r.call)(&ptrs, &ints, &scalars) };
                if let (Some(v), Some(d)) = (c.result, r.result) {
                    if self.k.vars[v] != d {
                        return Err(format!(
                            "v{v} is {}, `{}` gives {d}",
                            self.k.vars[v], r.name
                        ));
                    }
                    self.vars[v] = Some(scalar(d, got, got as i64));
                }
            }
        }
        Ok(0)
    }

    /// An i64 or bool value as an integer.
    fn int(&mut self, e: &Expr) -> Result<i64, String> {
        let v = self.eval(e)?;
        match v.dtype() {
            DType::I64 | DType::Bool => Ok(v.get_i128(0) as i64),
            d => Err(format!("a {d} value where i64 is expected")),
        }
    }

    fn index(&mut self, buf: usize, e: &Expr) -> Result<usize, String> {
        let i = self.int(e)?;
        let (b, len) = (&self.k.bufs[buf], self.bufs[buf].len());
        match usize::try_from(i) {
            Ok(i) if i < len => Ok(i),
            _ => Err(format!("index {i} out of `{}` ({len} elements)", b.name)),
        }
    }

    fn eval(&mut self, e: &Expr) -> Result<Data, String> {
        Ok(match e {
            Expr::Int(v, d) => scalar(*d, *v as f64, *v),
            Expr::Float(v, d) => scalar(*d, *v, *v as i64),
            Expr::Dim(k) => Data::I64(vec![self.dims[*k]]),
            Expr::Var(v) => self.vars[*v]
                .clone()
                .ok_or_else(|| format!("v{v} is read before it is set"))?,
            Expr::Load { buf, index } => {
                let i = self.index(*buf, index)?;
                self.bufs[*buf].take_all(&[i])
            }
            Expr::Op { op, args, dtype } => {
                let vals = args
                    .iter()
                    .map(|a| self.eval(a))
                    .collect::<Result<Vec<_>, _>>()?;
                let refs: Vec<&Data> = vals.iter().collect();
                super::elementwise(op, &refs, *dtype)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_loops_accumulators_checks_and_calls() {
        let k = kernel::parse_kernel(
            "kernel @k(in x: f32[n], out y: f32[n], out s: f64[1], out c: f32[1]) {
  v1: f64 = 0.0:f64
  for v0 in 0..{n} {
    y[v0] = mul(x[v0], 2.0:f32)
    v1: f64 = add(v1, cast<f64>(x[v0]))
  }
  s[0] = v1
  call gemm(a: x[0], b: x[1], b_packed: -, c: c[0], scale: -, shift: -, res: -, scale2: -; a_rs=1 a_cs=1 b_rs=1 b_cs=1 c_rs=1 m=1 n=1 k=2 cols=0 act=0 lo=-inf:f32 hi=inf:f32 pre_s=0.01:f32 pre_z=3.0:f32 pre_lo=0.0:f32 pre_hi=255.0:f32 pre_d=0.01:f32 pre_at=0.0:f32 post_s=0.0:f32 post_z=0.0:f32 post_lo=0.0:f32 post_hi=0.0:f32 post_d=0.0:f32)
  check lt({n}, 3) else 7
  y[0] = 0.0:f32
}",
        )
        .unwrap();
        let mut bufs = vec![
            Data::F32(vec![1.0, 2.0, 3.0]),
            Data::F32(vec![0.0; 3]),
            Data::F64(vec![0.0]),
            Data::F32(vec![0.0]),
        ];
        assert_eq!(run(&k, &mut bufs, &[3]), Ok(7));
        let f = |d: &Data| (0..d.len()).map(|i| d.get_f64(i)).collect::<Vec<_>>();
        assert_eq!(f(&bufs[1]), [2.0, 4.0, 6.0]);
        assert_eq!(f(&bufs[2]), [6.0]);
        // The product through its quantize-dequantize pair: 8 / 0.01 + 3 saturates at 255.
        assert_eq!(f(&bufs[3]), [((255.0f32 - 3.0) * 0.01) as f64]);
        // Out of bounds is an error, not a panic.
        let e = run(&k, &mut bufs, &[4]).unwrap_err();
        assert!(e.contains("index 3 out of `y` (3 elements)"), "{e}");
        // So is a call that would reach past its operand, or write over another operand.
        let calls = |stmt: &str| {
            let k = kernel::parse_kernel(&format!(
                "kernel @c(in x: f32[4], out y: f32[4]) {{\n  {stmt}\n}}"
            ))
            .unwrap();
            let mut bufs = vec![Data::F32(vec![1.0; 4]), Data::F32(vec![0.0; 4])];
            run(&k, &mut bufs, &[])
        };
        assert_eq!(
            calls("call row_exp_sub(src: x[0], dst: y[0]; n=4 s=0.0:f32)"),
            Ok(0)
        );
        let far = calls("call row_exp_sub(src: x[1], dst: y[0]; n=4 s=0.0:f32)").unwrap_err();
        assert!(
            far.contains("operand `src` of `row_exp_sub` at 1 reaches outside"),
            "{far}"
        );
        let wide = calls(
            "call gemm(a: x[0], b: x[0], b_packed: -, c: y[0], scale: -, shift: -, res: -, scale2: -; a_rs=2 a_cs=1 \
             b_rs=2 b_cs=1 c_rs=2 m=2 n=2 k=3 cols=0 act=0 lo=-inf:f32 hi=inf:f32 pre_s=0.0:f32 \
             pre_z=0.0:f32 pre_lo=0.0:f32 pre_hi=0.0:f32 pre_d=0.0:f32 pre_at=0.0:f32 \
             post_s=0.0:f32 post_z=0.0:f32 post_lo=0.0:f32 post_hi=0.0:f32 post_d=0.0:f32)",
        )
        .unwrap_err();
        assert!(wide.contains("operand `a` of `gemm`"), "{wide}");
        let overlap = calls("call row_exp_sub(src: y[0], dst: y[1]; n=3 s=0.0:f32)").unwrap_err();
        assert!(overlap.contains("overlaps"), "{overlap}");
        // In place is allowed only to routines that say so: a recurrence reads h0 while it
        // writes its steps' h.
        assert_eq!(
            calls("call row_exp_sub(src: y[0], dst: y[0]; n=4 s=0.0:f32)"),
            Ok(0)
        );
        let rnn = "call rnn(xw: x[0], rt: x[0], rt_packed: -, h0: x[0], y: y[0], h: y[2]; \
                   seq=1 batch=1 hidden=1 reverse=0)";
        assert_eq!(calls(rnn), Ok(0));
        let in_place = calls(&rnn.replace("h0: x[0], y: y[0]", "h0: y[0], y: y[0]")).unwrap_err();
        assert!(
            in_place.contains("`rnn` writes an operand another overlaps"),
            "{in_place}"
        );
    }
}
