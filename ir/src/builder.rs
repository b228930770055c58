//! The Rust builder API: typed construction of graphs with numpy-style conveniences (implicit
//! broadcasting, negative axes, `keepdims`, matmul) and a few composites (softmax, layer norm,
//! GELU) expressed in primitives. Each call infers result types immediately, so mistakes are
//! reported at the call that makes them.

use crate::attr::ConstValue;
use crate::dim::Dim;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::graph::{Graph, Origin, Value};
use crate::ops::Op;
use crate::shape::{Shape, TensorType};
use crate::tensor::{Data, Tensor};

/// Builds one graph.
pub struct Builder {
    graph: Graph,
    origin: Origin,
    /// See [`Builder::check_at_run_time`].
    checked: bool,
}

impl Builder {
    pub fn new(name: &str) -> Builder {
        Builder {
            graph: Graph::new(name),
            origin: Origin::default(),
            checked: false,
        }
    }

    /// Continues building on an existing graph.
    pub fn on(graph: Graph) -> Builder {
        Builder {
            graph,
            origin: Origin::default(),
            checked: false,
        }
    }

    /// With `on`, facts about symbolic dims that the builder cannot prove — operands of a
    /// broadcast that must agree, a reshape's element counts — become `refine` nodes checked
    /// at run time instead of errors (dims that are constants and differ are still errors).
    /// Off by default: a program building a graph wants its mistake at the call that made
    /// it; an importer of a file whose exporter knew the shapes agree turns it on.
    pub fn check_at_run_time(&mut self, on: bool) {
        self.checked = on;
    }

    /// Whether unprovable dim facts become run-time checks (see
    /// [`Builder::check_at_run_time`]).
    pub fn checks_at_run_time(&self) -> bool {
        self.checked
    }

    /// `x` restated with the dims of `want` (same rank) where the two differ and one is
    /// symbolic — equal at run time, checked there; dims that are both constants stay (a
    /// mismatch the next op reports).
    pub fn refine_unproven(&mut self, x: Value, want: &Shape) -> Result<Value> {
        let dims: Vec<Dim> = (self.shape(x).dims().iter())
            .zip(want.dims())
            .map(|(d, w)| match (d.as_const(), w.as_const()) {
                (Some(_), Some(_)) => d.clone(),
                _ => w.clone(),
            })
            .collect();
        self.refine(x, Shape::new(dims))
    }

    /// `x` restated with the dims of `shape` (same rank), checked at run time: a `refine`
    /// node, or `x` itself when the shapes are already equal.
    pub fn refine(&mut self, x: Value, shape: impl Into<Shape>) -> Result<Value> {
        let shape = shape.into();
        if *self.shape(x) == shape {
            return Ok(x);
        }
        self.op1(Op::Refine { shape }, &[x])
    }

    /// Tags the nodes added from now on (frontends pass the source node's name).
    pub fn set_origin(&mut self, origin: Origin) {
        self.origin = origin;
    }

    /// The origin nodes added now are tagged with.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn ty(&self, v: Value) -> &TensorType {
        self.graph.value_type(v)
    }

    pub fn shape(&self, v: Value) -> &Shape {
        &self.ty(v).shape
    }

    pub fn dtype(&self, v: Value) -> DType {
        self.ty(v).dtype
    }

    pub fn rank(&self, v: Value) -> usize {
        self.ty(v).rank()
    }

    fn fail(&self, op: &str, message: impl Into<String>) -> Error {
        Error::Build {
            op: op.to_string(),
            origin: self.origin.name.as_ref().map(|n| n.to_string()),
            message: message.into(),
        }
    }

    /// Adds `op` applied to `inputs`, with types inferred; returns its results.
    pub fn op(&mut self, op: Op, inputs: &[Value]) -> Result<Vec<Value>> {
        if let Some(v) = inputs.iter().find(|&&v| !self.graph.contains_value(v)) {
            return Err(self.fail(op.mnemonic(), format!("{v:?} is not a value of this graph")));
        }
        let types: Vec<TensorType> = inputs.iter().map(|&v| self.ty(v).clone()).collect();
        let out = op.infer(&types).map_err(|m| self.fail(op.mnemonic(), m))?;
        let n = out.len();
        let id = self
            .graph
            .add_node(op, inputs.to_vec(), out, self.origin.clone())?;
        Ok((0..n).map(|i| Value::new(id, i as u32)).collect())
    }

    /// Adds a single-result op.
    pub fn op1(&mut self, op: Op, inputs: &[Value]) -> Result<Value> {
        let mnemonic = op.mnemonic();
        let out = self.op(op, inputs)?;
        match out.as_slice() {
            [v] => Ok(*v),
            _ => Err(self.fail(mnemonic, format!("has {} results, expected 1", out.len()))),
        }
    }

    pub fn param(&mut self, name: &str, dtype: DType, shape: impl Into<Shape>) -> Result<Value> {
        let ty = TensorType::new(dtype, shape);
        let op = Op::Param {
            name: name.to_string(),
            ty,
        };
        self.op1(op, &[])
    }

    pub fn constant(&mut self, tensor: Tensor) -> Result<Value> {
        self.op1(
            Op::Constant {
                value: ConstValue { name: None, tensor },
            },
            &[],
        )
    }

    /// A constant that prints as `@name` (weights).
    pub fn named_constant(&mut self, name: &str, tensor: Tensor) -> Result<Value> {
        let value = ConstValue {
            name: Some(name.into()),
            tensor,
        };
        self.op1(Op::Constant { value }, &[])
    }

    /// A rank-0 constant of `dtype`.
    pub fn scalar(&mut self, x: f64, dtype: DType) -> Result<Value> {
        let t = Tensor::new(vec![], Data::from_f64s(dtype, &[x])).expect("one element");
        self.constant(t)
    }

    /// A scalar of the dtype of `like`, broadcast to its shape.
    pub fn scalar_like(&mut self, x: f64, like: Value) -> Result<Value> {
        let s = self.scalar(x, self.dtype(like))?;
        let shape = self.shape(like).clone();
        self.broadcast_to(s, &shape)
    }

    pub fn output(&mut self, name: &str, v: Value) -> Result<()> {
        Ok(self.graph.add_output(name, v)?)
    }

    /// Verifies and returns the graph.
    pub fn finish(self) -> Result<Graph> {
        crate::verify::verify(&self.graph)?;
        Ok(self.graph)
    }

    /// Returns the graph without verifying it.
    pub fn into_graph(self) -> Graph {
        self.graph
    }

    /// Normalizes a possibly negative axis.
    pub fn axis(&self, v: Value, axis: i64) -> Result<i64> {
        let rank = self.rank(v) as i64;
        let a = if axis < 0 { axis + rank } else { axis };
        if (0..rank).contains(&a) {
            Ok(a)
        } else {
            Err(self.fail(
                "axis",
                format!("axis {axis} is out of range for rank {rank}"),
            ))
        }
    }

    /// The numpy broadcast of two shapes.
    pub fn broadcast_shapes(&self, a: &Shape, b: &Shape) -> Result<Shape> {
        let r = a.rank().max(b.rank());
        let one = Dim::Const(1);
        let mut dims = Vec::with_capacity(r);
        for i in 0..r {
            let da = (i + a.rank()).checked_sub(r).map_or(&one, |j| a.dim(j));
            let db = (i + b.rank()).checked_sub(r).map_or(&one, |j| b.dim(j));
            dims.push(if da == db || *db == one {
                da.clone()
            } else if *da == one {
                db.clone()
            } else if self.checked && (da.as_const().is_none() || db.as_const().is_none()) {
                // Equal at run time (checked there): the constant one, else the first.
                match db.as_const() {
                    Some(_) => db.clone(),
                    None => da.clone(),
                }
            } else {
                return Err(self.fail("broadcast", format!("shapes {a} and {b} do not broadcast")));
            });
        }
        Ok(Shape::new(dims))
    }

    /// Numpy-style broadcast of `x` to `shape` (aligned at the trailing axes).
    pub fn broadcast_to(&mut self, x: Value, shape: &Shape) -> Result<Value> {
        if self.shape(x) == shape {
            return Ok(x);
        }
        let (r, rx) = (shape.rank(), self.rank(x));
        let mut x = x;
        if self.checked && rx <= r {
            // Dims that are not 1 and differ from the target's must equal them at run time.
            let one = Dim::Const(1);
            let want: Vec<Dim> = (self.shape(x).dims().iter())
                .zip(&shape.dims()[r - rx..])
                .map(|(d, t)| if *d == one { d.clone() } else { t.clone() })
                .collect();
            x = self.refine_unproven(x, &Shape::new(want))?;
            if self.shape(x) == shape {
                return Ok(x);
            }
        }
        if rx > r {
            return Err(self.fail(
                "broadcast",
                format!(
                    "cannot broadcast {} to the lower rank {shape}",
                    self.shape(x)
                ),
            ));
        }
        let dims = ((r - rx) as i64..r as i64).collect();
        let op = Op::Broadcast {
            dims,
            shape: shape.clone(),
        };
        self.op1(op, &[x])
    }

    /// An elementwise op on operands broadcast to a common shape.
    pub fn elementwise(&mut self, op: Op, inputs: &[Value]) -> Result<Value> {
        let mut shape = Shape::scalar();
        for &v in inputs {
            shape = self.broadcast_shapes(&shape, &self.shape(v).clone())?;
        }
        let mut args = Vec::with_capacity(inputs.len());
        for &v in inputs {
            args.push(self.broadcast_to(v, &shape)?);
        }
        self.op1(op, &args)
    }

    pub fn add(&mut self, a: Value, b: Value) -> Result<Value> {
        self.elementwise(Op::Add, &[a, b])
    }

    pub fn sub(&mut self, a: Value, b: Value) -> Result<Value> {
        self.elementwise(Op::Sub, &[a, b])
    }

    pub fn mul(&mut self, a: Value, b: Value) -> Result<Value> {
        self.elementwise(Op::Mul, &[a, b])
    }

    pub fn div(&mut self, a: Value, b: Value) -> Result<Value> {
        self.elementwise(Op::Div, &[a, b])
    }

    pub fn max(&mut self, a: Value, b: Value) -> Result<Value> {
        self.elementwise(Op::Max, &[a, b])
    }

    pub fn min(&mut self, a: Value, b: Value) -> Result<Value> {
        self.elementwise(Op::Min, &[a, b])
    }

    pub fn pow(&mut self, a: Value, b: Value) -> Result<Value> {
        self.elementwise(Op::Pow, &[a, b])
    }

    pub fn select(&mut self, cond: Value, a: Value, b: Value) -> Result<Value> {
        self.elementwise(Op::Select, &[cond, a, b])
    }

    pub fn unary(&mut self, op: Op, x: Value) -> Result<Value> {
        self.op1(op, &[x])
    }

    pub fn exp(&mut self, x: Value) -> Result<Value> {
        self.unary(Op::Exp, x)
    }

    pub fn neg(&mut self, x: Value) -> Result<Value> {
        self.unary(Op::Neg, x)
    }

    pub fn sqrt(&mut self, x: Value) -> Result<Value> {
        self.unary(Op::Sqrt, x)
    }

    pub fn tanh(&mut self, x: Value) -> Result<Value> {
        self.unary(Op::Tanh, x)
    }

    pub fn sigmoid(&mut self, x: Value) -> Result<Value> {
        self.unary(Op::Sigmoid, x)
    }

    /// x * scalar, with the scalar in x's dtype.
    pub fn scale(&mut self, x: Value, s: f64) -> Result<Value> {
        let c = self.scalar_like(s, x)?;
        self.op1(Op::Mul, &[x, c])
    }

    pub fn relu(&mut self, x: Value) -> Result<Value> {
        let zero = self.scalar_like(0.0, x)?;
        self.op1(Op::Max, &[x, zero])
    }

    /// x * sigmoid(x)
    pub fn silu(&mut self, x: Value) -> Result<Value> {
        let s = self.sigmoid(x)?;
        self.op1(Op::Mul, &[x, s])
    }

    /// GELU in its exact (erf) form: x/2 * (1 + erf(x/sqrt(2))).
    pub fn gelu(&mut self, x: Value) -> Result<Value> {
        let scaled = self.scale(x, std::f64::consts::FRAC_1_SQRT_2)?;
        let e = self.unary(Op::Erf, scaled)?;
        let one = self.scalar_like(1.0, x)?;
        let e1 = self.op1(Op::Add, &[e, one])?;
        let half = self.scale(x, 0.5)?;
        self.op1(Op::Mul, &[half, e1])
    }

    pub fn cast(&mut self, x: Value, dtype: DType) -> Result<Value> {
        if self.dtype(x) == dtype {
            return Ok(x);
        }
        self.op1(
            Op::Cast {
                dtype,
                saturate: true,
            },
            &[x],
        )
    }

    pub fn reshape(&mut self, x: Value, shape: impl Into<Shape>) -> Result<Value> {
        let shape = shape.into();
        if *self.shape(x) == shape {
            return Ok(x);
        }
        if self.checked {
            let have = self.shape(x).numel();
            let want = shape.numel();
            if let (Ok(have), Ok(want)) = (have, want) {
                let unprovable = have.as_const().is_none() || want.as_const().is_none();
                if have != want && unprovable {
                    // Equal element counts checked at run time: flat, refined, reshaped.
                    let flat = self.reshape(x, Shape::new(vec![have]))?;
                    let flat = self.refine(flat, Shape::new(vec![want]))?;
                    return self.reshape(flat, shape);
                }
            }
        }
        self.op1(Op::Reshape { shape }, &[x])
    }

    pub fn transpose(&mut self, x: Value, perm: &[i64]) -> Result<Value> {
        if perm.iter().enumerate().all(|(i, &p)| p == i as i64) && perm.len() == self.rank(x) {
            return Ok(x);
        }
        self.op1(
            Op::Transpose {
                perm: perm.to_vec(),
            },
            &[x],
        )
    }

    /// Swaps the last two axes.
    pub fn transpose_last2(&mut self, x: Value) -> Result<Value> {
        let r = self.rank(x) as i64;
        if r < 2 {
            return Err(self.fail("transpose", "needs rank at least 2"));
        }
        let mut perm: Vec<i64> = (0..r).collect();
        perm.swap((r - 2) as usize, (r - 1) as usize);
        self.transpose(x, &perm)
    }

    /// Normalized, sorted, deduplicated axes.
    fn axes(&self, x: Value, axes: &[i64]) -> Result<Vec<i64>> {
        let mut out = axes
            .iter()
            .map(|&a| self.axis(x, a))
            .collect::<Result<Vec<_>>>()?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Re-inserts reduced axes as size 1.
    fn keep_dims(&mut self, r: Value, x: Value, axes: &[i64]) -> Result<Value> {
        let dims = self
            .shape(x)
            .dims()
            .iter()
            .enumerate()
            .map(|(i, d)| {
                if axes.contains(&(i as i64)) {
                    Dim::Const(1)
                } else {
                    d.clone()
                }
            })
            .collect::<Vec<_>>();
        self.reshape(r, Shape::new(dims))
    }

    /// A reduction (`Op::ReduceSum` etc. with its axes filled in) with numpy conveniences.
    pub fn reduce(
        &mut self,
        make: fn(Vec<i64>) -> Op,
        x: Value,
        axes: &[i64],
        keepdims: bool,
    ) -> Result<Value> {
        let axes = self.axes(x, axes)?;
        let r = self.op1(make(axes.clone()), &[x])?;
        if keepdims {
            self.keep_dims(r, x, &axes)
        } else {
            Ok(r)
        }
    }

    pub fn reduce_sum(&mut self, x: Value, axes: &[i64], keepdims: bool) -> Result<Value> {
        self.reduce(|axes| Op::ReduceSum { axes }, x, axes, keepdims)
    }

    pub fn reduce_max(&mut self, x: Value, axes: &[i64], keepdims: bool) -> Result<Value> {
        self.reduce(|axes| Op::ReduceMax { axes }, x, axes, keepdims)
    }

    /// The product of the given dims as a rank-0 tensor of `dtype`, symbolic or not.
    pub fn dim_product(&mut self, dims: &[Dim], dtype: DType) -> Result<Value> {
        let mut n = Dim::Const(1);
        for d in dims {
            n = n.mul(d).map_err(|e| self.fail("dims", e.to_string()))?;
        }
        match n.as_const() {
            Some(c) => self.scalar(c as f64, dtype),
            None => {
                let v = self.op1(Op::Dims { values: vec![n] }, &[])?;
                let v = self.reshape(v, Shape::scalar())?;
                self.cast(v, dtype)
            }
        }
    }

    pub fn reduce_mean(&mut self, x: Value, axes: &[i64], keepdims: bool) -> Result<Value> {
        let axes = self.axes(x, axes)?;
        let s = self.reduce_sum(x, &axes, keepdims)?;
        let dims: Vec<Dim> = axes
            .iter()
            .map(|&a| self.shape(x).dim(a as usize).clone())
            .collect();
        let n = self.dim_product(&dims, self.dtype(x))?;
        self.div(s, n)
    }

    /// exp(x - max) / sum(exp(x - max)) along `axis`. In f32 and f64 as exp(x - max) ·
    /// (1 / sum): one division per row instead of one per element, within an ulp of the
    /// quotient (16-bit and narrower floats divide: one more rounding there is visible).
    pub fn softmax(&mut self, x: Value, axis: i64) -> Result<Value> {
        let m = self.reduce_max(x, &[axis], true)?;
        let shifted = self.sub(x, m)?;
        let e = self.exp(shifted)?;
        let s = self.reduce_sum(e, &[axis], true)?;
        if matches!(self.dtype(x), DType::F32 | DType::F64) {
            let r = self.unary(Op::Recip, s)?;
            self.mul(e, r)
        } else {
            self.div(e, s)
        }
    }

    /// Normalizes over the last axis and applies scale and bias.
    pub fn layer_norm(&mut self, x: Value, gamma: Value, beta: Value, eps: f64) -> Result<Value> {
        let mean = self.reduce_mean(x, &[-1], true)?;
        let d = self.sub(x, mean)?;
        let sq = self.mul(d, d)?;
        let var = self.reduce_mean(sq, &[-1], true)?;
        let eps = self.scalar(eps, self.dtype(x))?;
        let var = self.add(var, eps)?;
        let inv = self.unary(Op::Rsqrt, var)?;
        let y = self.mul(d, inv)?;
        let y = self.mul(y, gamma)?;
        self.add(y, beta)
    }

    /// Numpy matmul: 1-d operands are promoted and squeezed back, batch axes broadcast.
    pub fn matmul(&mut self, a: Value, b: Value) -> Result<Value> {
        let (ra, rb) = (self.rank(a), self.rank(b));
        if ra == 0 || rb == 0 {
            return Err(self.fail("matmul", "operands must have rank at least 1"));
        }
        if ra == 1 || rb == 1 {
            let a2 = if ra == 1 { self.unsqueeze(a, 0)? } else { a };
            let b2 = if rb == 1 { self.unsqueeze(b, -1)? } else { b };
            let r = self.matmul(a2, b2)?;
            let rr = self.rank(r) as i64;
            let mut dims = self.shape(r).dims().to_vec();
            if rb == 1 {
                dims.remove((rr - 1) as usize);
            }
            if ra == 1 {
                dims.remove(dims.len() - if rb == 1 { 1 } else { 2 });
            }
            return self.reshape(r, Shape::new(dims));
        }
        if rb == 2 {
            // A weight matrix: contract without materializing broadcast copies.
            let op = Op::Dot {
                lhs_batch: vec![],
                rhs_batch: vec![],
                lhs_contract: vec![ra as i64 - 1],
                rhs_contract: vec![0],
            };
            return self.op1(op, &[a, b]);
        }
        let sa = Shape::new(self.shape(a).dims()[..ra - 2].to_vec());
        let sb = Shape::new(self.shape(b).dims()[..rb - 2].to_vec());
        let batch = self.broadcast_shapes(&sa, &sb)?;
        let nb = batch.rank();
        let full = |x: &Shape, r: usize| {
            let mut d = batch.dims().to_vec();
            d.extend_from_slice(&x.dims()[r - 2..]);
            Shape::new(d)
        };
        let (fa, fb) = (full(self.shape(a), ra), full(self.shape(b), rb));
        let a = self.broadcast_to(a, &fa)?;
        let b = self.broadcast_to(b, &fb)?;
        let bd: Vec<i64> = (0..nb as i64).collect();
        let op = Op::Dot {
            lhs_batch: bd.clone(),
            rhs_batch: bd,
            lhs_contract: vec![nb as i64 + 1],
            rhs_contract: vec![nb as i64],
        };
        self.op1(op, &[a, b])
    }

    /// Inserts an axis of size 1 at `axis` (negative counts from the end of the result).
    pub fn unsqueeze(&mut self, x: Value, axis: i64) -> Result<Value> {
        let r = self.rank(x) as i64 + 1;
        let a = if axis < 0 { axis + r } else { axis };
        if !(0..r).contains(&a) {
            return Err(self.fail("unsqueeze", format!("axis {axis} is out of range")));
        }
        let mut dims = self.shape(x).dims().to_vec();
        dims.insert(a as usize, Dim::Const(1));
        self.reshape(x, Shape::new(dims))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape;

    #[test]
    fn broadcasting_inserts_explicit_broadcasts() {
        let mut b = Builder::new("f");
        let x = b.param("x", DType::F32, shape!["n", 4]).unwrap();
        let y = b.param("y", DType::F32, shape![4]).unwrap();
        let s = b.add(x, y).unwrap();
        assert_eq!(b.ty(s).to_string(), "f32[n, 4]");
        b.output("s", s).unwrap();
        let g = b.finish().unwrap();
        assert_eq!(g.len(), 4);
    }

    #[test]
    fn errors_name_the_op() {
        let mut b = Builder::new("f");
        let x = b.param("x", DType::F32, shape![3]).unwrap();
        let y = b.param("y", DType::F32, shape![4]).unwrap();
        let e = b.add(x, y).unwrap_err();
        assert_eq!(
            e.to_string(),
            "broadcast: shapes [3] and [4] do not broadcast"
        );
        let i = b.param("i", DType::I32, shape![3]).unwrap();
        let e = b.unary(Op::Exp, i).unwrap_err();
        assert_eq!(e.to_string(), "exp: operand has dtype i32, expected float");
    }

    #[test]
    fn cloning_a_graph_shares_its_weights() {
        let mut b = Builder::new("f");
        let w = Tensor::from_vec(vec![1000], vec![0.5f32; 1000]).unwrap();
        let c = b.named_constant("w", w.clone()).unwrap();
        b.output("w", c).unwrap();
        let g = b.finish().unwrap();
        let copy = g.clone();
        let held = |g: &Graph| match g.node(g.outputs()[0].1.node).op() {
            Op::Constant { value } => value.tensor.clone(),
            _ => unreachable!("the output is the constant"),
        };
        assert!(held(&copy).ptr_eq(&w));
        assert!(held(&g).ptr_eq(&held(&copy)));
    }

    #[test]
    fn matmul_shapes() {
        let mut b = Builder::new("f");
        let a = b.param("a", DType::F32, shape!["b", 2, 3]).unwrap();
        let w = b.param("w", DType::F32, shape![3, 5]).unwrap();
        let v = b.param("v", DType::F32, shape![3]).unwrap();
        let c = b.param("c", DType::F32, shape![1, 5, 7]).unwrap();
        let aw = b.matmul(a, w).unwrap();
        assert_eq!(b.ty(aw).to_string(), "f32[b, 2, 5]");
        let av = b.matmul(a, v).unwrap();
        assert_eq!(b.ty(av).to_string(), "f32[b, 2]");
        let awc = b.matmul(aw, c).unwrap();
        assert_eq!(b.ty(awc).to_string(), "f32[b, 2, 7]");
    }
}
