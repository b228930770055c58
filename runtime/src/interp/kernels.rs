//! The reference semantics of kernel IR: runs a kernel statement by statement on host buffers,
//! every scalar op through the interpreter's [`super::elementwise`] and every routine call
//! through the routine table's host function. Every backend is checked against it (the
//! kernel filetests); it is slow and checks every access.

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
                let mut ptrs = Vec::new();
                for (op, &(name, _, dtype)) in c.operands.iter().zip(r.operands) {
                    let Some((b, off)) = op else {
                        ptrs.push(std::ptr::null_mut());
                        continue;
                    };
                    let off = self.int(off)?;
                    let buf = &mut self.bufs[*b];
                    if buf.dtype() != dtype || off < 0 || off as usize > buf.len() {
                        return Err(format!(
                            "operand `{name}` of `{}` at {off} of a {} buffer of {}",
                            r.name,
                            buf.dtype(),
                            buf.len()
                        ));
                    }
                    let base: *mut u8 = ir::with_data!(buf, v, _W => v.as_mut_ptr().cast());
                    ptrs.push(base.wrapping_add(off as usize * kernel::elem_bytes(dtype)));
                }
                let ints = c
                    .ints
                    .iter()
                    .map(|e| self.int(e))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut scalars = Vec::with_capacity(c.scalars.len());
                for (e, &(name, dtype)) in c.scalars.iter().zip(r.scalars) {
                    let v = self.eval(e)?;
                    if v.dtype() != dtype {
                        return Err(format!("argument `{name}` of `{}` is not {dtype}", r.name));
                    }
                    scalars.push(v.get_f64(0));
                }
                // SAFETY: every operand is a live buffer of the routine's dtype from its
                // offset on; that the routine stays inside it is what its extents promise (the
                // same trust compiled kernels place in the table).
                let got = unsafe { (r.call)(&ptrs, &ints, &scalars) };
                if let (Some(v), Some(d)) = (c.result, r.result) {
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
  call gemm(a: x[0], b: x[1], b_packed: -, c: c[0]; a_rs=1 a_cs=1 b_rs=1 b_cs=1 c_rs=1 m=1 n=1 k=2)
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
        assert_eq!(f(&bufs[3]), [1.0 * 2.0 + 2.0 * 3.0]);
        // Out of bounds is an error, not a panic.
        let e = run(&k, &mut bufs, &[4]).unwrap_err();
        assert!(e.contains("index 3 out of `y` (3 elements)"), "{e}");
    }
}
