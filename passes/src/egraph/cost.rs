//! The cost model: the time a node would take on a target, as bytes moved over the target's
//! bandwidth plus flops over its peak plus a fixed cost per kernel launch. Values that depend
//! only on constants cost nothing (they fold, unless fold has run: [`Target::folds`]);
//! sources and reshapes (views) cost nothing.
//! Symbolic dims count as [`Target::symbol_size`].

use ir::{Dim, Op, TensorType};

use super::lang::{EOp, Info};

/// What the cost model knows of a machine.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: &'static str,
    /// Bytes per nanosecond.
    pub bandwidth: f64,
    /// Flops per nanosecond.
    pub peak: f64,
    /// Nanoseconds per kernel launch.
    pub launch: f64,
    /// The size assumed for a symbolic dim.
    pub symbol_size: i64,
    /// Channels per block of the blocked image layout (`layout`) convs take; 0 for none.
    pub block: i64,
    /// Whether values of constants alone cost nothing (`fold` computes them later); not so
    /// once it has run: those left are ones it does not fold — refused past its size limits
    /// (a weight's dequantization), built on `iota`, or with no evaluator — and run every
    /// time.
    pub folds: bool,
}

impl Default for Target {
    /// A 2-core x86-64 CPU (the machine kiln is developed on).
    fn default() -> Target {
        Target {
            name: "cpu",
            bandwidth: 10.0,
            peak: 50.0,
            launch: 200.0,
            symbol_size: 16,
            block: 0,
            folds: true,
        }
    }
}

impl Target {
    /// Pricing inside a kernel body: intermediates stay in registers and there are no
    /// launches, so only arithmetic counts.
    pub fn in_kernel(&self) -> Target {
        Target {
            bandwidth: f64::INFINITY,
            launch: 0.0,
            ..self.clone()
        }
    }

    pub fn numel(&self, ty: &TensorType) -> f64 {
        ty.shape.dims().iter().map(|d| self.dim(d) as f64).product()
    }

    pub fn dim(&self, d: &Dim) -> i64 {
        d.eval(&|_| Some(self.symbol_size))
            .unwrap_or(self.symbol_size)
    }

    pub fn bytes(&self, ty: &TensorType) -> f64 {
        self.numel(ty) * ty.dtype.bits() as f64 / 8.0
    }

    /// The cost of computing a node of class `info` from operands `args`.
    pub fn node_cost(&self, op: &EOp, info: &Info, args: &[&Info]) -> f64 {
        let op = match op {
            EOp::Proj(_) => return 0.0,
            EOp::Ir(op) => op,
        };
        // Constant values fold away, when their shapes are known.
        if self.folds && info.constant && info.types.iter().all(|t| t.shape.is_static()) {
            return 0.0;
        }
        match op {
            // Views: folded into the indexing of whatever reads them.
            Op::Param { .. }
            | Op::Constant { .. }
            | Op::Reshape { .. }
            | Op::Refine { .. }
            | Op::Broadcast { .. }
            | Op::Dims { .. } => return 0.0,
            _ => {}
        }
        let out: f64 = info.types.iter().map(|t| self.bytes(t)).sum();
        let inp: f64 = args.iter().map(|a| self.bytes(a.ty())).sum();
        let arg_types: Vec<&TensorType> = args.iter().map(|a| a.ty()).collect();
        let flops = self.flops(op, &info.types, &arg_types);
        self.launch + (out + inp) / self.bandwidth + flops / self.peak
    }

    /// Arithmetic work of one op; a kernel's is its body's.
    pub fn flops(&self, op: &Op, results: &[TensorType], args: &[&TensorType]) -> f64 {
        let Some(first) = results.first() else {
            return 0.0;
        };
        let out = self.numel(first);
        match op {
            Op::Fused { body, .. } => {
                let g = body.graph();
                g.node_ids()
                    .into_iter()
                    .map(|id| {
                        let n = g.node(id);
                        let ins: Vec<&TensorType> =
                            n.inputs().iter().map(|&v| g.value_type(v)).collect();
                        self.flops(n.op(), n.types(), &ins)
                    })
                    .sum()
            }
            Op::Param { .. }
            | Op::Constant { .. }
            | Op::Reshape { .. }
            | Op::Refine { .. }
            | Op::Dims { .. } => 0.0,
            Op::Dot { lhs_contract, .. } => {
                let lhs = args[0];
                let k: f64 = lhs_contract
                    .iter()
                    .map(|&a| self.dim(lhs.shape.dim(a as usize)) as f64)
                    .product();
                2.0 * out * k * scalar_product(first)
            }
            // 8-bit products: four multiply-adds where f32 has one (u8 activations: the
            // routines'; signed ones run as scalar loops).
            Op::Qdot { lhs_contract, .. } => {
                let lhs = args[0];
                let k: f64 = lhs_contract
                    .iter()
                    .map(|&a| self.dim(lhs.shape.dim(a as usize)) as f64)
                    .product();
                0.5 * out * k * unsigned(lhs)
            }
            // A 4-bit weight's product: f32 multiply-adds, each weight unpacked once a call.
            Op::Qdot4 { .. } => {
                let k = args[0].shape.dims().last().map_or(1, |d| self.dim(d)) as f64;
                2.0 * out * k
            }
            // 8-bit convs: four multiply-adds where f32 has one, as `qdot`.
            Op::Qconv { .. } => {
                let w = args[1];
                let per = self.numel(w) / self.dim(w.shape.dim(0)).max(1) as f64;
                0.5 * out * per * unsigned(args[0])
            }
            Op::Conv { .. } | Op::ConvBlocked { .. } => {
                let w = args[1];
                let per = self.numel(w) / self.dim(w.shape.dim(0)).max(1) as f64;
                2.0 * out * per * scalar_product(first)
            }
            Op::ReduceWindow { window, .. } => out * window.iter().product::<i64>() as f64,
            Op::Resample { .. } => 2.0 * out * self.dim(args[1].shape.dim(1)) as f64,
            _ if op.kind() == ir::OpKind::Reduce => self.numel(args[0]),
            Op::Exp
            | Op::Log
            | Op::Tanh
            | Op::Sigmoid
            | Op::Erf
            | Op::Sin
            | Op::Cos
            | Op::Sqrt
            | Op::Rsqrt => 8.0 * out,
            Op::Div | Op::Rem | Op::Mod | Op::Recip => 4.0 * out,
            // A libcall per element even in vector code (about 15 ns, where a vector square
            // root costs a few per four lanes).
            Op::Pow => 64.0 * out,
            _ => out,
        }
    }
}

/// How much slower an 8-bit product runs per flop with activations of this type: u8 ones are
/// the routines', others scalar loops — measured about 0.2 G multiply-adds/s (mlp_s8's
/// classifier on Zen 3) against the routines' 40–60: at 16× it won against its own u8 form
/// (`unsigned-activations`, whose conversion is priced as three passes) and ran 35× slower
/// than the f32 product it replaced.
fn unsigned(x: &TensorType) -> f64 {
    if x.dtype == ir::DType::U8 {
        1.0
    } else {
        128.0
    }
}

/// How much slower a product of this result type runs per flop than an f32 one: only f32
/// products have vector library kernels; the others lower to scalar loops.
fn scalar_product(ty: &TensorType) -> f64 {
    if ty.dtype == ir::DType::F32 {
        1.0
    } else {
        8.0
    }
}
