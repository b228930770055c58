//! Recurrent layers (LSTM, GRU, RNN). A direction in ONNX's default form is the input
//! projection of every step (one matmul with its biases) and one `lstm`, `gru` or `rnn` node
//! (see [`one_op`]). Other layers: the input projection of all steps is one matmul per group
//! of gates (gates side by side with one activation: LSTM's i, o, f; GRU's z, r), then each
//! step is a small matmul per group (whose bias, input rows and activation become that
//! product's epilogue) plus the gates' combination — unrolled over a static
//! sequence of up to 256 steps, else (a symbolic or longer sequence) a `loop` whose body is
//! one step.
//! Variable sequence lengths freeze the state and zero the output past each sequence's end.

use crate::onnx::OpError;

use ir::{Builder, DType, Dim, Op, Shape, Value};

use super::{s, slice_axis};
use crate::onnx::import::{Ctx, Node};
use crate::onnx::value::V;

type R<T> = Result<T, OpError>;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Lstm,
    Gru,
    Rnn,
}

impl Kind {
    fn gates(self) -> i64 {
        match self {
            Kind::Lstm => 4,
            Kind::Gru => 3,
            Kind::Rnn => 1,
        }
    }

    fn default_acts(self) -> &'static [&'static str] {
        match self {
            Kind::Lstm => &["Sigmoid", "Tanh", "Tanh"],
            Kind::Gru => &["Sigmoid", "Tanh"],
            Kind::Rnn => &["Tanh"],
        }
    }
}

#[derive(Clone)]
struct Act {
    name: String,
    alpha: Option<f64>,
    beta: Option<f64>,
}

fn activate(b: &mut Builder, a: &Act, x: Value) -> R<Value> {
    let alpha = |d: f64| a.alpha.unwrap_or(d);
    let beta = |d: f64| a.beta.unwrap_or(d);
    let r = (|| -> ir::Result<Value> {
        Ok(match a.name.to_ascii_lowercase().as_str() {
            "sigmoid" => b.sigmoid(x)?,
            "tanh" => b.tanh(x)?,
            "relu" => b.relu(x)?,
            "affine" => {
                let y = b.scale(x, alpha(1.0))?;
                let c = b.scalar_like(beta(0.0), y)?;
                b.add(y, c)?
            }
            "leakyrelu" => {
                let z = b.scalar_like(0.0, x)?;
                let neg = b.op1(Op::Lt, &[x, z])?;
                let ax = b.scale(x, alpha(0.01))?;
                b.op1(Op::Select, &[neg, ax, x])?
            }
            "thresholdedrelu" => {
                let t = b.scalar_like(alpha(1.0), x)?;
                let z = b.scalar_like(0.0, x)?;
                let gt = b.op1(Op::Gt, &[x, t])?;
                b.op1(Op::Select, &[gt, x, z])?
            }
            "scaledtanh" => {
                let y = b.scale(x, beta(1.0))?;
                let y = b.tanh(y)?;
                b.scale(y, alpha(1.0))?
            }
            "hardsigmoid" => {
                let y = b.scale(x, alpha(0.2))?;
                let c = b.scalar_like(beta(0.5), y)?;
                let y = b.add(y, c)?;
                let one = b.scalar_like(1.0, y)?;
                let zero = b.scalar_like(0.0, y)?;
                let y = b.min(y, one)?;
                b.max(y, zero)?
            }
            "elu" => {
                let z = b.scalar_like(0.0, x)?;
                let e = b.exp(x)?;
                let one = b.scalar_like(1.0, x)?;
                let em1 = b.sub(e, one)?;
                let neg = b.scale(em1, alpha(1.0))?;
                let pos = b.op1(Op::Gt, &[x, z])?;
                b.op1(Op::Select, &[pos, x, neg])?
            }
            "softsign" => {
                let ax = b.unary(Op::Abs, x)?;
                let one = b.scalar_like(1.0, x)?;
                let d = b.add(ax, one)?;
                b.div(x, d)?
            }
            "softplus" => {
                let e = b.exp(x)?;
                let one = b.scalar_like(1.0, x)?;
                let t = b.add(e, one)?;
                b.unary(Op::Log, t)?
            }
            other => {
                return Err(ir::Error::Build {
                    op: other.to_string(),
                    origin: None,
                    message: "unknown recurrent activation".into(),
                })
            }
        })
    })();
    r.map_err(s)
}

fn activations(n: &Node, kind: Kind, dirs: usize) -> R<Vec<Vec<Act>>> {
    let names: Vec<String> = match n.strings("activations")? {
        Some(v) => v,
        None => kind
            .default_acts()
            .iter()
            .cycle()
            .take(kind.default_acts().len() * dirs)
            .map(|s| s.to_string())
            .collect(),
    };
    let per = kind.default_acts().len();
    if names.len() != per * dirs {
        return Err(format!("{} activations, expected {}", names.len(), per * dirs).into());
    }
    let mut alphas = n
        .floats("activation_alpha")?
        .unwrap_or_default()
        .into_iter();
    let mut betas = n.floats("activation_beta")?.unwrap_or_default().into_iter();
    let uses_alpha = |m: &str| {
        matches!(
            m.to_ascii_lowercase().as_str(),
            "affine" | "leakyrelu" | "thresholdedrelu" | "scaledtanh" | "hardsigmoid" | "elu"
        )
    };
    let uses_beta = |m: &str| {
        matches!(
            m.to_ascii_lowercase().as_str(),
            "affine" | "scaledtanh" | "hardsigmoid"
        )
    };
    let acts: Vec<Act> = names
        .into_iter()
        .map(|name| Act {
            alpha: if uses_alpha(&name) {
                alphas.next().map(f64::from)
            } else {
                None
            },
            beta: if uses_beta(&name) {
                betas.next().map(f64::from)
            } else {
                None
            },
            name,
        })
        .collect();
    Ok(acts.chunks(per).map(|c| c.to_vec()).collect())
}

struct Dir<'a> {
    w: Value,
    r: Value,
    bias: Option<(Value, Value)>,
    peep: Option<Value>,
    h0: Value,
    c0: Option<Value>,
    acts: &'a [Act],
    reverse: bool,
}

struct Cfg {
    kind: Kind,
    hidden: i64,
    clip: Option<f64>,
    input_forget: bool,
    linear_before_reset: bool,
}

/// Gate `g`'s part of a weight, bias or pre-activation laid out gate after gate along `axis`.
fn gate(b: &mut Builder, v: Value, axis: usize, g: i64, h: i64) -> R<Value> {
    gates(b, v, axis, (g, 1), h)
}

/// Gates `g..g + n`'s part of a weight, bias or pre-activation laid out gate after gate along
/// `axis`.
fn gates(b: &mut Builder, v: Value, axis: usize, (g, n): (i64, i64), h: i64) -> R<Value> {
    slice_axis(b, v, axis, Dim::Const(g * h), Dim::Const((g + n) * h), 1)
}

fn clipped(b: &mut Builder, x: Value, clip: Option<f64>) -> R<Value> {
    match clip {
        Some(c) => {
            let lo = b.scalar_like(-c, x)?;
            let hi = b.scalar_like(c, x)?;
            let y = b.max(x, lo)?;
            b.min(y, hi).map_err(s)
        }
        None => Ok(x),
    }
}

/// The gates whose pre-activations are computed together, as `(first gate, gates)`: gates
/// side by side in W and R with the same activation and nothing added between the product and
/// the activation make one product of their columns (LSTM's input, output and forget gates;
/// GRU's update and reset gates), whose bias, input rows and activation are its epilogue —
/// one small product a step instead of three (an LSTM of 128 units: a step's products cost
/// more in calls than in multiply-adds). Peepholes (added before the activation) and a
/// coupled forget gate keep the gates apart.
fn gate_groups(cfg: &Cfg, peep: bool) -> Vec<(i64, i64)> {
    match cfg.kind {
        Kind::Lstm if !peep && !cfg.input_forget => vec![(0, 3), (3, 1)],
        Kind::Gru => vec![(0, 2), (2, 1)],
        k => (0..k.gates()).map(|g| (g, 1)).collect(),
    }
}

/// What one step of one direction reads besides its input projection and states.
struct StepDir<'a> {
    /// Rᵀ and the recurrent bias group by group of gates ([hidden, n·hidden] and [n·hidden],
    /// see [`gate_groups`]): each group's pre-activation is its own product, so its
    /// activation can be the product's epilogue.
    groups: Vec<(i64, i64)>,
    rt: Vec<Value>,
    rb: Option<Vec<Value>>,
    peep: Option<Value>,
    acts: &'a [Act],
}

/// One step: from the step's input projection `xw` (per gate, [batch, hidden]), the states
/// and the mask of sequences still running, the next states and the step's output.
fn step(
    b: &mut Builder,
    cfg: &Cfg,
    d: &StepDir,
    xw: &[Value],
    (hs, cs): (Value, Option<Value>),
    mask: Option<Value>,
) -> R<(Value, Option<Value>, Value)> {
    let h = cfg.hidden;
    // Gate k's recurrent term lhs·Rᵀ_k (+ its bias); lhs is hs but for GRU's reset gate.
    let rec = |b: &mut Builder, lhs: Value, k: usize| -> R<Value> {
        let hr = b.matmul(lhs, d.rt[k])?;
        match &d.rb {
            Some(rb) => b.add(hr, rb[k]).map_err(s),
            None => Ok(hr),
        }
    };
    // Gate k's pre-activation: its input projection plus its recurrent term.
    let pre = |b: &mut Builder, k: usize| -> R<Value> {
        let hr = rec(b, hs, k)?;
        b.add(xw[k], hr).map_err(s)
    };
    let (h_new, c_new) = match cfg.kind {
        Kind::Rnn => {
            let pre = pre(b, 0)?;
            let pre = clipped(b, pre, cfg.clip)?;
            (activate(b, &d.acts[0], pre)?, None)
        }
        Kind::Lstm => {
            let c_prev = cs.ok_or("LSTM needs a cell state")?;
            let peep = |b: &mut Builder, k: i64, c: Value| -> R<Option<Value>> {
                match d.peep {
                    Some(p) => {
                        let pk =
                            slice_axis(b, p, 0, Dim::Const(k * h), Dim::Const((k + 1) * h), 1)?;
                        Ok(Some(b.mul(c, pk)?))
                    }
                    None => Ok(None),
                }
            };
            let with = |b: &mut Builder, x: Value, extra: Option<Value>| -> R<Value> {
                match extra {
                    Some(e) => b.add(x, e).map_err(s),
                    None => Ok(x),
                }
            };
            // The output gate: computed with the input and forget gates (one product,
            // `gate_groups`), or its pre-activation, whose peephole reads the new cell.
            enum Output {
                Ready(Value),
                After(Value),
            }
            let (i, f, gc, o) = if d.groups.len() == 2 {
                let iof = pre(b, 0)?;
                let iof = clipped(b, iof, cfg.clip)?;
                let iof = activate(b, &d.acts[0], iof)?;
                let (i, o, f) = (
                    gate(b, iof, 1, 0, h)?,
                    gate(b, iof, 1, 1, h)?,
                    gate(b, iof, 1, 2, h)?,
                );
                (i, f, pre(b, 1)?, Output::Ready(o))
            } else {
                let (gi, go, gf, gc) = (pre(b, 0)?, pre(b, 1)?, pre(b, 2)?, pre(b, 3)?);
                let pi = peep(b, 0, c_prev)?;
                let gi = with(b, gi, pi)?;
                let gi = clipped(b, gi, cfg.clip)?;
                let i = activate(b, &d.acts[0], gi)?;
                let f = if cfg.input_forget {
                    let one = b.scalar_like(1.0, i)?;
                    b.sub(one, i)?
                } else {
                    let pf = peep(b, 2, c_prev)?;
                    let gf = with(b, gf, pf)?;
                    let gf = clipped(b, gf, cfg.clip)?;
                    activate(b, &d.acts[0], gf)?
                };
                (i, f, gc, Output::After(go))
            };
            let gc = clipped(b, gc, cfg.clip)?;
            let cand = activate(b, &d.acts[1], gc)?;
            let fc = b.mul(f, c_prev)?;
            let ic = b.mul(i, cand)?;
            let c = b.add(fc, ic)?;
            let o = match o {
                Output::Ready(o) => o,
                Output::After(go) => {
                    let po = peep(b, 1, c)?;
                    let go = with(b, go, po)?;
                    let go = clipped(b, go, cfg.clip)?;
                    activate(b, &d.acts[0], go)?
                }
            };
            let hc = activate(b, &d.acts[2], c)?;
            (b.mul(o, hc)?, Some(c))
        }
        Kind::Gru => {
            // Update and reset gates as one product (`gate_groups`), the hidden gate apart.
            let xh = xw[1];
            let zr = pre(b, 0)?;
            let zr = clipped(b, zr, cfg.clip)?;
            let zr = activate(b, &d.acts[0], zr)?;
            let (z, r) = (gate(b, zr, 1, 0, h)?, gate(b, zr, 1, 1, h)?);
            let hh = if cfg.linear_before_reset {
                let t = rec(b, hs, 1)?;
                b.mul(r, t)?
            } else {
                let rhs = b.mul(r, hs)?;
                rec(b, rhs, 1)?
            };
            let pre = b.add(xh, hh)?;
            let pre = clipped(b, pre, cfg.clip)?;
            let cand = activate(b, &d.acts[1], pre)?;
            let one = b.scalar_like(1.0, z)?;
            let omz = b.sub(one, z)?;
            let a = b.mul(omz, cand)?;
            let zh = b.mul(z, hs)?;
            (b.add(a, zh)?, None)
        }
    };
    // Past a sequence's end the state stays and the output is zero.
    let (h_next, c_next, y) = match mask {
        Some(m) => {
            let zero = b.scalar_like(0.0, h_new)?;
            let hn = b.select(m, h_new, hs)?;
            let cn = match (c_new, cs) {
                (Some(cn), Some(cp)) => Some(b.select(m, cn, cp)?),
                _ => None,
            };
            let y = b.select(m, h_new, zero)?;
            (hn, cn, y)
        }
        None => (h_new, c_new, h_new),
    };
    Ok((h_next, c_next, y))
}

/// Sequences longer than this run as a `loop` rather than unrolled (so do symbolic ones).
const UNROLL_MAX: i64 = 256;

/// Runs one direction over `x` ([seq, batch, input]); returns the outputs ([seq, batch,
/// hidden], in time order) and the final states. `mask` ([seq, batch, hidden]) says which
/// sequences are still running at each step.
fn run(
    b: &mut Builder,
    cfg: &Cfg,
    d: &Dir,
    x: Value,
    mask: Option<Value>,
) -> R<(Value, Value, Option<Value>)> {
    if let Some(done) = one_op(b, cfg, d, x, mask)? {
        return Ok(done);
    }
    let h = cfg.hidden;
    let wt = b.transpose(d.w, &[1, 0])?;
    let rt = b.transpose(d.r, &[1, 0])?;
    let (seq, batch) = (b.shape(x).dim(0).clone(), b.shape(x).dim(1).clone());
    // The input projection of every step at once, gate by gate: one large product per gate
    // instead of one small one per step; each gate's lies contiguous, so a step's rows are
    // laid out as its recurrent product.
    let mut xw_all = Vec::new();
    let mut rts = Vec::new();
    let mut rbs = Vec::new();
    let groups = gate_groups(cfg, d.peep.is_some());
    for &k in &groups {
        let wt_k = gates(b, wt, 1, k, h)?;
        // Bias split into input and recurrent halves (GRU needs them apart).
        let wb_k = match d.bias {
            Some((wb, rb)) => {
                rbs.push(gates(b, rb, 0, k, h)?);
                Some(gates(b, wb, 0, k, h)?)
            }
            None => None,
        };
        xw_all.push(projection(b, x, wt_k, wb_k)?);
        rts.push(gates(b, rt, 1, k, h)?);
    }
    let sd = StepDir {
        groups,
        rt: rts,
        rb: d.bias.map(|_| rbs),
        peep: d.peep,
        acts: d.acts,
    };
    let unrolled = seq.as_const().filter(|&n| n <= UNROLL_MAX);
    let Some(n) = unrolled else {
        return run_loop(b, cfg, &sd, d, &xw_all, mask);
    };
    let (mut hs, mut cs) = (d.h0, d.c0);
    let mut ys = vec![None; n as usize];
    let order: Vec<i64> = if d.reverse {
        (0..n).rev().collect()
    } else {
        (0..n).collect()
    };
    let at = |b: &mut Builder, v: Value, t: i64, dims: Vec<Dim>| -> R<Value> {
        let e = slice_axis(b, v, 0, Dim::Const(t), Dim::Const(t + 1), 1)?;
        b.reshape(e, Shape::new(dims)).map_err(s)
    };
    for t in order {
        let xw = xw_all
            .iter()
            .map(|&v| {
                let width = b.shape(v).dim(2).clone();
                at(b, v, t, vec![batch.clone(), width])
            })
            .collect::<R<Vec<_>>>()?;
        let m = match mask {
            Some(m) => Some(at(b, m, t, vec![batch.clone(), Dim::Const(h)])?),
            None => None,
        };
        let (h_next, c_next, y) = step(b, cfg, &sd, &xw, (hs, cs), m)?;
        hs = h_next;
        cs = c_next;
        ys[t as usize] = Some(y);
    }
    let ys = ys
        .into_iter()
        .map(|y| y.ok_or_else(|| "a step produced no output".to_string()))
        .collect::<Result<Vec<_>, String>>()?;
    let y = if ys.is_empty() {
        let z = b.scalar(0.0, b.dtype(x))?;
        b.broadcast_to(z, &Shape::new(vec![seq, batch, Dim::Const(h)]))?
    } else {
        // The steps' [batch, hidden] outputs joined row-wise, then seen as [seq, batch,
        // hidden]: no view node per step.
        let rows = b.op1(Op::Concat { axis: 0 }, &ys)?;
        b.reshape(rows, Shape::new(vec![seq, batch, Dim::Const(h)]))?
    };
    Ok((y, hs, cs))
}

/// Every step's input projection at once, `[seq, batch, columns]`: `x` (`[seq, batch,
/// input]`) seen as `[seq·batch, input]` times `wt` (`[input, columns]`), plus `bias`
/// (`[columns]`) when given.
fn projection(b: &mut Builder, x: Value, wt: Value, bias: Option<Value>) -> R<Value> {
    let xshape = b.shape(x).clone();
    let (seq, batch) = (xshape.dim(0).clone(), xshape.dim(1).clone());
    let rows = seq.mul(&batch)?;
    let x2 = b.reshape(x, Shape::new(vec![rows, xshape.dim(2).clone()]))?;
    let mut xw = b.matmul(x2, wt)?;
    if let Some(bias) = bias {
        xw = b.add(xw, bias)?;
    }
    let columns = b.shape(wt).dim(1).clone();
    b.reshape(xw, Shape::new(vec![seq, batch, columns]))
        .map_err(s)
}

/// [`run`] as one `lstm`, `gru` or `rnn` node when the layer has its default form (f32; default
/// activations; no clip or sequence lengths; an LSTM without peepholes or coupled gates),
/// whatever the sequence's length: the input projection of every step with the biases that add
/// to it is one product, and the recurrence one routine call (no per-step nodes to compile).
/// `None` for any other layer.
fn one_op(
    b: &mut Builder,
    cfg: &Cfg,
    d: &Dir,
    x: Value,
    mask: Option<Value>,
) -> R<Option<(Value, Value, Option<Value>)>> {
    let names = d.acts.iter().map(|a| a.name.to_ascii_lowercase());
    let default = names.eq(cfg
        .kind
        .default_acts()
        .iter()
        .map(|a| a.to_ascii_lowercase()));
    let form = match cfg.kind {
        Kind::Lstm => !cfg.input_forget && d.peep.is_none() && d.c0.is_some(),
        Kind::Gru | Kind::Rnn => true,
    };
    if !(form && default && cfg.clip.is_none() && mask.is_none() && b.dtype(x) == DType::F32) {
        return Ok(None);
    }
    let h = cfg.hidden;
    let wt = b.transpose(d.w, &[1, 0])?;
    // The biases the input projection takes: both, but a GRU's n gate's recurrent one (the
    // reset gate multiplies it), which the `gru` node takes apart (zero without biases).
    let mut rbn = None;
    let bias = match d.bias {
        Some((wb, rb)) => {
            let rb = match cfg.kind {
                Kind::Gru => {
                    let zr = gates(b, rb, 0, (0, 2), h)?;
                    rbn = Some(gate(b, rb, 0, 2, h)?);
                    let zero = b.scalar(0.0, DType::F32)?;
                    let zeros = b.broadcast_to(zero, &Shape::new(vec![Dim::Const(h)]))?;
                    b.op1(Op::Concat { axis: 0 }, &[zr, zeros])?
                }
                _ => rb,
            };
            Some(b.add(wb, rb)?)
        }
        None => None,
    };
    let xw = projection(b, x, wt, bias)?;
    let rt = b.transpose(d.r, &[1, 0])?;
    let reverse = d.reverse;
    Ok(Some(match (cfg.kind, d.c0) {
        (Kind::Lstm, Some(c0)) => {
            let outs = b.op(Op::Lstm { reverse }, &[xw, rt, d.h0, c0])?;
            (outs[0], outs[1], Some(outs[2]))
        }
        (Kind::Rnn, _) => {
            let outs = b.op(Op::Rnn { reverse }, &[xw, rt, d.h0])?;
            (outs[0], outs[1], None)
        }
        _ => {
            let rbn = match rbn {
                Some(v) => v,
                None => {
                    let zero = b.scalar(0.0, DType::F32)?;
                    b.broadcast_to(zero, &Shape::new(vec![Dim::Const(h)]))?
                }
            };
            let linear_before_reset = cfg.linear_before_reset;
            let op = Op::Gru {
                reverse,
                linear_before_reset,
            };
            let outs = b.op(op, &[xw, rt, rbn, d.h0])?;
            (outs[0], outs[1], None)
        }
    }))
}

/// [`run`] as a `loop` over the steps: the body is one [`step`], carrying the states and
/// scanning the input projection (and the mask).
fn run_loop(
    b: &mut Builder,
    cfg: &Cfg,
    sd: &StepDir,
    d: &Dir,
    xw_all: &[Value],
    mask: Option<Value>,
) -> R<(Value, Value, Option<Value>)> {
    let mut body = Builder::new("step");
    body.set_origin(b.origin().clone());
    let entry = |b: &Builder, v: Value| -> ir::TensorType {
        let t = b.ty(v);
        ir::TensorType::new(t.dtype, Shape::new(t.shape.dims()[1..].to_vec()))
    };
    let param = |body: &mut Builder, name: &str, t: ir::TensorType| -> R<Value> {
        body.param(name, t.dtype, t.shape).map_err(s)
    };
    let mut operands = vec![d.h0];
    let hs = param(&mut body, "h", b.ty(d.h0).clone())?;
    let cs = match d.c0 {
        Some(c) => {
            operands.push(c);
            Some(param(&mut body, "c", b.ty(c).clone())?)
        }
        None => None,
    };
    let carry = operands.len();
    let mut xw = Vec::new();
    for (k, &v) in xw_all.iter().enumerate() {
        operands.push(v);
        xw.push(param(&mut body, &format!("xw{k}"), entry(b, v))?);
    }
    let m = match mask {
        Some(m) => {
            operands.push(m);
            Some(param(&mut body, "mask", entry(b, m))?)
        }
        None => None,
    };
    let scan = operands.len() - carry;
    let mut invariant = |body: &mut Builder, name: &str, v: Option<Value>| -> R<Option<Value>> {
        match v {
            Some(v) => {
                operands.push(v);
                Ok(Some(param(body, name, b.ty(v).clone())?))
            }
            None => Ok(None),
        }
    };
    let mut rt = Vec::new();
    for (k, &v) in sd.rt.iter().enumerate() {
        rt.push(invariant(&mut body, &format!("rt{k}"), Some(v))?.ok_or("no R")?);
    }
    let rb = match &sd.rb {
        Some(rbs) => {
            let mut rb = Vec::new();
            for (k, &v) in rbs.iter().enumerate() {
                rb.push(invariant(&mut body, &format!("rb{k}"), Some(v))?.ok_or("no bias")?);
            }
            Some(rb)
        }
        None => None,
    };
    let peep = invariant(&mut body, "peep", sd.peep)?;
    let inner = StepDir {
        groups: sd.groups.clone(),
        rt,
        rb,
        peep,
        acts: sd.acts,
    };
    let (h_next, c_next, y) = step(&mut body, cfg, &inner, &xw, (hs, cs), m)?;
    body.output("h", h_next)?;
    if let Some(c) = c_next {
        body.output("c", c)?;
    }
    body.output("y", y)?;
    let body = body.finish()?;
    let count = b.shape(xw_all[0]).dim(0).clone();
    let outs = b.op(
        Op::Loop {
            count,
            carry: carry as i64,
            scan: scan as i64,
            reverse: d.reverse,
            body: ir::Region::new(body),
        },
        &operands,
    )?;
    match outs.as_slice() {
        [h, y] => Ok((*y, *h, None)),
        [h, c, y] => Ok((*y, *h, Some(*c))),
        _ => Err("a recurrent loop has the wrong number of results".into()),
    }
}

fn recurrent(ctx: &mut Ctx, n: &Node, kind: Kind) -> R<Vec<V>> {
    let w = ctx.ir(n.req(1)?)?;
    let r = ctx.ir(n.req(2)?)?;
    recurrent_with(ctx, n, kind, w, r)
}

/// A recurrent layer whose W and R are given (the node's inputs 1 and 2 are not read).
fn recurrent_with(ctx: &mut Ctx, n: &Node, kind: Kind, w: Value, r: Value) -> R<Vec<V>> {
    let mut x = ctx.ir(n.req(0)?)?;
    super::rank_in(&ctx.b, x, &[3], "X")?;
    super::rank_in(&ctx.b, w, &[3], "W")?;
    super::rank_in(&ctx.b, r, &[3], "R")?;
    let bias = n.input(3).map(|v| ctx.ir(v)).transpose()?;
    let lens = n.input(4).map(|v| ctx.ir(v)).transpose()?;
    let h0 = n.input(5).map(|v| ctx.ir(v)).transpose()?;
    let c0 = if kind == Kind::Lstm {
        n.input(6).map(|v| ctx.ir(v)).transpose()?
    } else {
        None
    };
    let peep = if kind == Kind::Lstm {
        n.input(7).map(|v| ctx.ir(v)).transpose()?
    } else {
        None
    };
    let direction = n.string_or("direction", "forward")?;
    let dirs = if direction == "bidirectional" { 2 } else { 1 };
    let layout = n.int_or("layout", 0)?;
    let acts = activations(n, kind, dirs)?;
    let hidden = match n.int("hidden_size")? {
        Some(h) => h,
        None => ctx
            .b
            .shape(r)
            .dim(2)
            .as_const()
            .ok_or("hidden_size must be static")?,
    };
    let cfg = Cfg {
        kind,
        hidden,
        clip: n.float("clip")?.map(f64::from),
        input_forget: n.int_or("input_forget", 0)? != 0,
        linear_before_reset: n.int_or("linear_before_reset", 0)? != 0,
    };
    let b = &mut ctx.b;
    // Batch-major layout: X is [batch, seq, input] and the initial states [batch, dirs,
    // hidden]; the steps below read them sequence- and direction-major.
    let (mut h0, mut c0) = (h0, c0);
    if layout == 1 {
        x = b.transpose(x, &[1, 0, 2])?;
        h0 = h0.map(|v| b.transpose(v, &[1, 0, 2])).transpose()?;
        c0 = c0.map(|v| b.transpose(v, &[1, 0, 2])).transpose()?;
    }
    let xshape = b.shape(x).clone();
    let seq = xshape.dim(0).clone();
    let batch = xshape.dim(1).clone();
    let dt = b.dtype(x);
    // Which sequences are still running at each step: [seq, batch, hidden].
    let mask: Option<Value> = match lens {
        Some(l) => {
            let l = b.cast(l, DType::I64)?;
            let l = b.reshape(
                l,
                Shape::new(vec![Dim::Const(1), batch.clone(), Dim::Const(1)]),
            )?;
            let t = b.op1(
                Op::Iota {
                    axis: 0,
                    ty: ir::TensorType::new(
                        DType::I64,
                        Shape::new(vec![seq.clone(), Dim::Const(1), Dim::Const(1)]),
                    ),
                },
                &[],
            )?;
            let m = b.elementwise(Op::Lt, &[t, l])?;
            let full = Shape::new(vec![seq.clone(), batch.clone(), Dim::Const(hidden)]);
            Some(b.broadcast_to(m, &full)?)
        }
        None => None,
    };
    let state_shape = Shape::new(vec![batch.clone(), Dim::Const(hidden)]);
    let zeros = |b: &mut Builder| -> R<Value> {
        let z = b.scalar(0.0, dt)?;
        b.broadcast_to(z, &state_shape).map_err(s)
    };
    let pick = |b: &mut Builder, v: Value, d: usize, len: Dim| -> R<Value> {
        let x = slice_axis(b, v, 0, Dim::Const(d as i64), Dim::Const(d as i64 + 1), 1)?;
        let mut rest = b.shape(x).dims()[1..].to_vec();
        if rest.is_empty() {
            rest.push(len);
        }
        b.reshape(x, Shape::new(rest)).map_err(s)
    };
    let g = kind.gates();
    let mut ys_all = Vec::new();
    let mut hs_all = Vec::new();
    let mut cs_all = Vec::new();
    for (d, acts_d) in acts.iter().enumerate() {
        let wd = pick(b, w, d, Dim::Const(0))?;
        let rd = pick(b, r, d, Dim::Const(0))?;
        let bias_d = match bias {
            Some(bv) => {
                let bd = pick(b, bv, d, Dim::Const(0))?;
                let wb = slice_axis(b, bd, 0, Dim::Const(0), Dim::Const(g * hidden), 1)?;
                let rb = slice_axis(
                    b,
                    bd,
                    0,
                    Dim::Const(g * hidden),
                    Dim::Const(2 * g * hidden),
                    1,
                )?;
                Some((wb, rb))
            }
            None => None,
        };
        let h0d = match h0 {
            Some(h) => pick(b, h, d, Dim::Const(0))?,
            None => zeros(b)?,
        };
        let c0d = match (kind, c0) {
            (Kind::Lstm, Some(c)) => Some(pick(b, c, d, Dim::Const(0))?),
            (Kind::Lstm, None) => Some(zeros(b)?),
            _ => None,
        };
        let peep_d = match peep {
            Some(p) => Some(pick(b, p, d, Dim::Const(0))?),
            None => None,
        };
        let dir = Dir {
            w: wd,
            r: rd,
            bias: bias_d,
            peep: peep_d,
            h0: h0d,
            c0: c0d,
            acts: acts_d,
            reverse: direction == "reverse" || d == 1,
        };
        let (ys, hl, cl) = run(b, &cfg, &dir, x, mask)?;
        ys_all.push(b.unsqueeze(ys, 1)?);
        hs_all.push(hl);
        if let Some(c) = cl {
            cs_all.push(c);
        }
    }
    // Y: [seq, dirs, batch, hidden]; Y_h, Y_c: [dirs, batch, hidden].
    let unit =
        |b: &mut Builder, v: Value, at: usize| -> R<Value> { b.unsqueeze(v, at as i64).map_err(s) };
    let mut y = b.op1(Op::Concat { axis: 1 }, &ys_all)?;
    let stack = |b: &mut Builder, vs: &[Value]| -> R<Value> {
        let u: Vec<Value> = vs.iter().map(|&v| unit(b, v, 0)).collect::<R<_>>()?;
        b.op1(Op::Concat { axis: 0 }, &u).map_err(s)
    };
    let mut yh = stack(b, &hs_all)?;
    let mut yc = if cs_all.is_empty() {
        None
    } else {
        Some(stack(b, &cs_all)?)
    };
    if layout == 1 {
        y = b.transpose(y, &[2, 0, 1, 3])?;
        yh = b.transpose(yh, &[1, 0, 2])?;
        yc = yc.map(|c| b.transpose(c, &[1, 0, 2])).transpose()?;
    }
    let mut out = vec![ctx.v(y), ctx.v(yh)];
    if let Some(c) = yc {
        out.push(ctx.v(c));
    }
    Ok(out)
}

pub fn lstm(ctx: &mut Ctx, n: &Node) -> super::Res {
    recurrent(ctx, n, Kind::Lstm)
}

pub fn gru(ctx: &mut Ctx, n: &Node) -> super::Res {
    recurrent(ctx, n, Kind::Gru)
}

pub fn rnn(ctx: &mut Ctx, n: &Node) -> super::Res {
    recurrent(ctx, n, Kind::Rnn)
}

/// com.microsoft::DynamicQuantizeLSTM: an LSTM whose W `[dirs, input, 4·hidden]` and R
/// `[dirs, hidden, 4·hidden]` are 8-bit with a scale and zero point per direction (or per
/// direction and column), dequantized here to the float layout of ONNX LSTM. onnxruntime also
/// quantizes the activations of every step; kiln computes them in float, so results differ
/// from its by that quantization's error.
pub fn dynamic_quantize_lstm(ctx: &mut Ctx, n: &Node) -> super::Res {
    let dequant = |ctx: &mut Ctx, q: usize, scale: usize, zp: usize, what: &str| -> R<Value> {
        let q = ctx.ir(n.req(q)?)?;
        let scale = ctx.ir(n.req(scale)?)?;
        let zp = ctx.ir(n.req(zp)?)?;
        let b = &mut ctx.b;
        super::rank_in(b, q, &[3], what)?;
        // Scales of [dirs] or [dirs, 4·hidden] apply per direction (and column).
        let per = |b: &mut Builder, v: Value| -> R<Value> {
            let vd = b.shape(v).dims().to_vec();
            let shape = match vd.len() {
                1 => vec![vd[0].clone(), Dim::Const(1), Dim::Const(1)],
                2 => vec![vd[0].clone(), Dim::Const(1), vd[1].clone()],
                r => return Err(format!("a {what} scale or zero point of rank {r}").into()),
            };
            b.reshape(v, Shape::new(shape)).map_err(s)
        };
        let q = b.cast(q, DType::F32)?;
        let zp = b.cast(zp, DType::F32)?;
        let zp = per(b, zp)?;
        let scale = per(b, scale)?;
        let w = b.sub(q, zp)?;
        let w = b.mul(w, scale)?;
        b.transpose(w, &[0, 2, 1]).map_err(s)
    };
    let w = dequant(ctx, 1, 8, 9, "W")?;
    let r = dequant(ctx, 2, 10, 11, "R")?;
    recurrent_with(ctx, n, Kind::Lstm, w, r)
}
