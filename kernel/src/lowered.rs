//! What lowering a graph node produces, as the runtime keeps it: the kernel with its constant
//! buffers and output shapes ([`Lowered`]), or why the node cannot be lowered
//! ([`Unsupported`]: it then runs on the reference interpreter); the graph of one node that
//! lowering takes ([`single_node_graph`]); and packing constant product operands once
//! ([`prepack`]).

use std::collections::HashMap;

use ir::{Dim, Graph, NodeId, Op, Shape, Tensor, Value};

use crate::loops::{Buf, BufId, BufKind, Call, Expr, Kernel, Stmt};

/// Why a graph cannot be lowered (yet); the node then runs on the reference interpreter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// A lowered kernel and the constant tensors its `const` buffers hold.
#[derive(Clone, Debug)]
pub struct Lowered {
    /// Buffers: the graph's params in order, then its outputs in order, then constants and
    /// scratch.
    pub kernel: Kernel,
    pub consts: Vec<(BufId, Tensor)>,
    /// Shapes of the outputs, in order.
    pub outputs: Vec<Shape>,
}

impl Lowered {
    /// The output shapes under symbol bindings.
    pub fn out_shapes(
        &self,
        env: &HashMap<String, i64>,
    ) -> std::result::Result<Vec<Vec<usize>>, String> {
        self.outputs
            .iter()
            .map(|s| {
                let dims = s
                    .eval(&|n| env.get(n).copied())
                    .map_err(|e| e.to_string())?;
                dims.into_iter()
                    .map(|d| usize::try_from(d).map_err(|_| format!("a dimension is {d}")))
                    .collect()
            })
            .collect()
    }
}

/// Packed copies of constant product operands, shared by every kernel of an executable: an
/// unrolled recurrence's steps (one kernel each) pack their common weight once.
#[derive(Default)]
pub struct PackCache {
    /// By the source's data (kept alive here, so the address stays its own) and the
    /// operand's offset, strides and sizes: the source and its packed copy.
    /// (A 4-bit weight's key also holds its scales' and zero points' addresses.)
    packed: std::collections::HashMap<(usize, [i64; 8]), (Tensor, Tensor)>,
}

/// Packs, once, the right operands of the kernel's products that are constant — kernel
/// constants, or operands the caller knows (`operands[i]` for input buffer `i`) — with static
/// offsets, strides and sizes, so that products do not pack them on every call; and makes the
/// Winograd transforms of `conv2d_wino`'s constant filters and the blocked order of
/// `conv2d_nchwc`'s. The packed
/// copies become constant buffers of the kernel; `cache` shares them between kernels.
pub fn prepack(l: &mut Lowered, operands: &[Option<&Tensor>], cache: &mut PackCache) {
    fn walk(body: &mut [Stmt], f: &mut dyn FnMut(&mut Call)) {
        for s in body {
            s.walk_mut(&mut |s| {
                if let Stmt::Call(c) = s {
                    if matches!(
                        c.routine.as_str(),
                        "gemm"
                            | "qgemm"
                            | "qgemm4"
                            | "qconv2d"
                            | "qconv2d_u8"
                            | "conv2d_wino"
                            | "conv2d_nchwc"
                            | "lstm"
                            | "gru"
                            | "rnn"
                    ) && c.checked().is_ok()
                    {
                        f(c)
                    }
                }
            });
        }
    }
    let mut body = std::mem::take(&mut l.kernel.body);
    let mut done: Vec<((BufId, [i64; 8]), BufId)> = Vec::new();
    // The gemm's operands: a, b, b_packed, c; its integers: a_rs, a_cs, b_rs, b_cs, c_rs, m,
    // n, k (see `routines::ROUTINES`).
    walk(&mut body, &mut |g: &mut Call| {
        let c = |e: Option<&Expr>| e.and_then(|e| crate::stages::eval(e, &[]));
        // A conv's filters (`w`: o·c·3·3 from its offset) become their Winograd transforms;
        // a product's B its packed panels. The key: the operand, its offset and sizes.
        let wino = g.routine == "conv2d_wino";
        let qgemm = g.routine == "qgemm";
        let qgemm4 = g.routine == "qgemm4";
        let qconv = matches!(g.routine.as_str(), "qconv2d" | "qconv2d_u8");
        let blocked = g.routine == "conv2d_nchwc";
        // A recurrence's gates by the passes that sum them (see `rnn::pack`): an LSTM's 4, a
        // GRU's 3 (2 then 1 when its reset gate applies before the product), a simple RNN's 1.
        let passes: &[usize] = match (g.routine.as_str(), c(g.int("linear_before_reset"))) {
            ("lstm", _) => &[4],
            ("gru", Some(0)) => &[2, 1],
            ("gru", Some(_)) => &[3],
            ("rnn", _) => &[1],
            _ => &[],
        };
        let gates = passes.iter().sum::<usize>() as i64;
        if gates == 0 && g.operand("rt").is_some() {
            // A GRU whose form is not a constant: its weights stay as they are.
            return;
        }
        let name = match () {
            _ if wino || blocked || qgemm4 || qconv => "w",
            _ if gates > 0 => "rt",
            _ => "b",
        };
        let Some((b, b_off)) = g.operand(name).cloned() else {
            return;
        };
        // What is packed: 0 a product's B, 1 Winograd transforms, 2 dense blocked filters
        // (from a blocked input), 3 dense ones from a plain input, 4 depthwise ones, 5 an
        // LSTM's recurrent weights, 6 a GRU's, 7 a simple RNN's, 8 a GRU's whose reset gate
        // applies before the product, 9 a quantized product's int8 B, 10 a small 4-bit
        // weight dequantized, 11 a quantized conv's filters.
        let (kind, sizes) = if gates > 0 {
            let h = c(g.int("hidden"));
            let cols = h.map(|h| gates * h);
            let kind = match passes {
                [4] => 5,
                [3] => 6,
                [1] => 7,
                _ => 8,
            };
            (kind, (cols, Some(1), cols, h))
        } else if wino {
            (1, (Some(0), Some(0), c(g.int("o")), c(g.int("c"))))
        } else if blocked {
            let kind = match (c(g.int("groups")), c(g.int("xb"))) {
                (Some(1), Some(0)) => 3,
                (Some(1), Some(_)) => 2,
                _ => 4,
            };
            let taps = (c(g.int("kh")), c(g.int("kw")));
            (kind, (taps.0, taps.1, c(g.int("o")), c(g.int("c"))))
        } else if qconv {
            let taps = (c(g.int("kh")), c(g.int("kw")));
            (11, (taps.0, taps.1, c(g.int("o")), c(g.int("c"))))
        } else if qgemm4 {
            // Only small weights, and only where more rows than the streaming kernel's
            // come (or may): larger ones, and matrix-vector products, read the nibbles.
            let (m, n, k) = (c(g.int("m")), c(g.int("n")), c(g.int("k")));
            let small = n
                .zip(k)
                .is_some_and(|(n, k)| n.saturating_mul(k) <= SMALL_4BIT);
            if !small || m.is_some_and(|m| m <= crate::routines::gemm::nbits::THIN as i64) {
                return;
            }
            (10, (c(g.int("block")), Some(0), n, k))
        } else {
            let sizes = (
                c(g.int("b_rs")),
                c(g.int("b_cs")),
                c(g.int("n")),
                c(g.int("k")),
            );
            (if qgemm { 9 } else { 0 }, sizes)
        };
        let (Some(off), (Some(rs), Some(cs), Some(n), Some(k))) = (c(Some(&b_off)), sizes) else {
            return;
        };
        // Where the packed copy goes: the operand that replaces B (a 4-bit weight's
        // `b_packed`, which replaces nothing: its source stays, to remake it from).
        let slot = g.routine().and_then(|r| match r.replaces {
            Some((slot, _)) => Some(slot),
            None => r.operands.iter().position(|o| o.0 == "b_packed"),
        });
        let Some(slot) = slot else {
            return;
        };
        // The tensor a buffer holds, when known: an operand the caller knows, or a constant.
        let known = |x: BufId| {
            operands
                .get(x)
                .copied()
                .flatten()
                .or_else(|| l.consts.iter().find(|(y, _)| *y == x).map(|(_, t)| t))
        };
        // A 4-bit weight's scales and zero points are part of what its packed copy is made
        // of: their tensors' addresses (and offsets) join the key.
        let addr = |name: &str| {
            let (x, x_off) = g.operand(name).cloned()?;
            let t = known(x)?;
            Some((t.data() as *const ir::Data as i64) ^ (c(Some(&x_off))? << 48))
        };
        let (sa, za) = (addr("w_scale").unwrap_or(0), addr("w_zero").unwrap_or(0));
        let key = (b, [kind, off, rs, cs, n, k, sa, za]);
        if let Some((_, p)) = done.iter().find(|(x, _)| *x == key) {
            g.operands[slot] = Some((*p, Expr::i64(0)));
            return;
        }
        let Some(t) = known(b) else { return };
        let source = (t.data() as *const ir::Data as usize, key.1);
        let four_bit = match (qgemm4, cache.packed.get(&source)) {
            (false, _) => None,
            (true, Some((_, packed))) => Some(packed.clone()),
            (true, None) => {
                let Some(p) = dequantized_4bit(g, &known) else {
                    return;
                };
                cache.packed.insert(source, (t.clone(), p.clone()));
                Some(p)
            }
        };
        let mut install = |l: &mut Lowered, packed: Tensor| {
            l.kernel.bufs.push(Buf {
                name: format!("packed{}", l.kernel.bufs.len()),
                dtype: packed.dtype(),
                len: Dim::constant(packed.numel() as i64),
                kind: BufKind::Input,
            });
            let p = l.kernel.bufs.len() - 1;
            l.consts.push((p, packed));
            g.operands[slot] = Some((p, Expr::i64(0)));
            done.push((key, p));
        };
        // A small 4-bit weight: dequantized, as an f32 product's packed B.
        if let Some(packed) = four_bit {
            install(l, packed);
            return;
        }
        // A quantized product's int8 B (or a quantized conv's filters, tap by tap): its
        // panels, with the columns' sums.
        if qgemm || qconv {
            let Some((data, off, n, k)) = sized(t.as_slice::<i8>(), off, n, k) else {
                return;
            };
            let packed = match cache.packed.get(&source) {
                Some((_, packed)) => packed.clone(),
                None => {
                    let p = if qconv {
                        let (Ok(kh), Ok(kw)) = (usize::try_from(rs), usize::try_from(cs)) else {
                            return;
                        };
                        crate::routines::qconv::pack_filters(&data[off..], n, k, kh, kw)
                    } else {
                        crate::routines::qgemm::pack_b(&data[off..], rs, cs, k, n)
                    };
                    let Some(p) = p else {
                        return;
                    };
                    let Ok(p) = Tensor::new(vec![p.len()], ir::Data::I8(p)) else {
                        return;
                    };
                    cache.packed.insert(source, (t.clone(), p.clone()));
                    p
                }
            };
            install(l, packed);
            return;
        }
        let Some((data, off, n, k)) = sized(t.as_slice::<f32>(), off, n, k) else {
            return;
        };
        let t = match cache.packed.get(&source) {
            Some((_, packed)) => packed.clone(),
            None => {
                let packed = if gates > 0 {
                    let Some(p) = crate::routines::rnn::pack(&data[off..], k, passes) else {
                        return;
                    };
                    p
                } else if blocked {
                    use crate::routines::conv::blocked::{pack_depthwise, pack_filters};
                    let (Ok(kh), Ok(kw)) = (usize::try_from(rs), usize::try_from(cs)) else {
                        return;
                    };
                    let per = if kind == 4 { 1 } else { k };
                    let Some(w) = data[off..].get(..n * per * kh * kw) else {
                        return;
                    };
                    let p = match kind {
                        2 => pack_filters(w, n, k, (kh, kw), 16),
                        3 => pack_filters(w, n, k, (kh, kw), k),
                        _ => pack_depthwise(w, k, (kh, kw)),
                    };
                    let Some(p) = p else { return };
                    p
                } else if wino {
                    // n filters of k channels.
                    let Some(w) = data[off..].get(..n * k * 9) else {
                        return;
                    };
                    // Infinite or NaN filters (or transforms that overflow) take the
                    // direct sum: the transforms would mix them into NaN.
                    let u = crate::routines::conv::winograd::transform_filters(w, n, k);
                    if !u.iter().all(|x| x.is_finite()) {
                        return;
                    }
                    u
                } else {
                    let Some(p) = crate::routines::gemm::pack_b(&data[off..], rs, cs, k, n) else {
                        return;
                    };
                    p
                };
                let len = packed.len();
                let Ok(packed) = Tensor::new(vec![len], ir::Data::F32(packed)) else {
                    return;
                };
                cache.packed.insert(source, (t.clone(), packed.clone()));
                packed
            }
        };
        install(l, t);
    });
    l.kernel.body = body;
}

/// A `qgemm4` call's weight dequantized as the B of an f32 product, packed (what its
/// `b_packed` holds), from its weight, scales and zero points (`known` gives a buffer's
/// tensor); `None` when one is not known or does not fit the call's sizes.
fn dequantized_4bit<'t>(g: &Call, known: &dyn Fn(BufId) -> Option<&'t Tensor>) -> Option<Tensor> {
    let c = |e: Option<&Expr>| e.and_then(|e| crate::stages::eval(e, &[]));
    let operand = |name: &str| -> Option<(&'t Tensor, usize)> {
        let (b, off) = g.operand(name)?;
        let t = known(*b)?;
        Some((t, usize::try_from(c(Some(off))?).ok()?))
    };
    let ((w, wo), (s, so), (z, zo)) = (operand("w")?, operand("w_scale")?, operand("w_zero")?);
    let (w, s, z) = (
        w.as_slice::<u8>()?,
        s.as_slice::<f32>()?,
        z.as_slice::<f32>()?,
    );
    let size = |name: &str| usize::try_from(c(g.int(name))?).ok();
    let (n, k, block) = (size("n")?, size("k")?, size("block")?);
    let p = crate::routines::gemm::nbits::dequantized_b(
        w.get(wo..)?,
        s.get(so..)?,
        z.get(zo..)?,
        n,
        k,
        block,
    )?;
    Tensor::new(vec![p.len()], ir::Data::F32(p)).ok()
}

/// The constant buffers of `kernel` that [`derive()`] remakes from its other constants: packed
/// copies larger than what they are made from (a small 4-bit weight dequantized), which a
/// saved plan leaves out.
pub fn derived(kernel: &Kernel) -> Vec<BufId> {
    let mut out = Vec::new();
    for s in &kernel.body {
        s.walk(&mut |s| {
            if let Stmt::Call(c) = s {
                if c.routine == "qgemm4" {
                    out.extend(c.operand("b_packed").map(|(b, _)| *b));
                }
            }
        });
    }
    // Calls sharing a weight share its packed copy.
    out.sort_unstable();
    out.dedup();
    out
}

/// Remakes buffer `buf` of `kernel` (one of [`derived`]'s) from the tensors `known` gives
/// for its other buffers; `None` when it is not one, or they are not all known.
pub fn derive<'t>(
    kernel: &Kernel,
    buf: BufId,
    known: &dyn Fn(BufId) -> Option<&'t Tensor>,
) -> Option<Tensor> {
    let mut call = None;
    for s in &kernel.body {
        s.walk(&mut |s| match s {
            Stmt::Call(c)
                if c.routine == "qgemm4"
                    && c.operand("b_packed").is_some_and(|(b, _)| *b == buf) =>
            {
                call = Some(c.clone())
            }
            _ => {}
        });
    }
    dequantized_4bit(&*call?, known)
}

/// The most values (n·k) of a 4-bit weight dequantized ahead of time (1 MiB as f32): past it,
/// products read the nibbles.
const SMALL_4BIT: i64 = 1 << 18;

/// A constant operand's data with its offset and sizes, when they are usable: nonnegative,
/// nonempty, the offset inside the data.
fn sized<T>(data: Option<&[T]>, off: i64, n: i64, k: i64) -> Option<(&[T], usize, usize, usize)> {
    let (data, off) = (data?, usize::try_from(off).ok()?);
    let (n, k) = (usize::try_from(n).ok()?, usize::try_from(k).ok()?);
    (k > 0 && n > 0 && off <= data.len()).then_some((data, off, n, k))
}

/// A graph holding node `id` of `g` alone, its operands as params: what lowering (`Backend::lower`) takes to
/// compile a node that is not a fused kernel.
pub fn single_node_graph(g: &Graph, id: NodeId) -> Graph {
    let node = g.node(id);
    if let Op::Fused { body, .. } = node.op() {
        return body.graph().clone();
    }
    let mut s = Graph::new(g.name());
    let mut inputs = Vec::new();
    for (i, &v) in node.inputs().iter().enumerate() {
        let ty = g.value_type(v).clone();
        let op = Op::Param {
            name: format!("in{i}"),
            ty: ty.clone(),
        };
        let p = s
            .add_node(op, vec![], vec![ty], Default::default())
            .expect("no operands");
        inputs.push(Value::new(p, 0));
    }
    let n = s
        .add_node(
            node.op().clone(),
            inputs,
            node.types().to_vec(),
            node.origin().clone(),
        )
        .expect("operands are params of this graph");
    for i in 0..node.types().len() {
        s.add_output(&format!("out{i}"), Value::new(n, i as u32))
            .expect("a value of this graph");
    }
    s
}
