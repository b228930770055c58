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
    packed: std::collections::HashMap<(usize, [i64; 6]), (Tensor, Tensor)>,
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
                        "gemm" | "qgemm" | "conv2d_wino" | "conv2d_nchwc" | "lstm" | "gru" | "rnn"
                    ) && c.checked().is_ok()
                    {
                        f(c)
                    }
                }
            });
        }
    }
    let mut body = std::mem::take(&mut l.kernel.body);
    let mut done: Vec<((BufId, [i64; 6]), BufId)> = Vec::new();
    // The gemm's operands: a, b, b_packed, c; its integers: a_rs, a_cs, b_rs, b_cs, c_rs, m,
    // n, k (see `routines::ROUTINES`).
    walk(&mut body, &mut |g: &mut Call| {
        let c = |e: Option<&Expr>| e.and_then(|e| crate::stages::eval(e, &[]));
        // A conv's filters (`w`: o·c·3·3 from its offset) become their Winograd transforms;
        // a product's B its packed panels. The key: the operand, its offset and sizes.
        let wino = g.routine == "conv2d_wino";
        let qgemm = g.routine == "qgemm";
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
            _ if wino || blocked => "w",
            _ if gates > 0 => "rt",
            _ => "b",
        };
        let Some((b, b_off)) = g.operand(name).cloned() else {
            return;
        };
        // What is packed: 0 a product's B, 1 Winograd transforms, 2 dense blocked filters
        // (from a blocked input), 3 dense ones from a plain input, 4 depthwise ones, 5 an
        // LSTM's recurrent weights, 6 a GRU's, 7 a simple RNN's, 8 a GRU's whose reset gate
        // applies before the product, 9 a quantized product's int8 B.
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
        // Where the packed copy goes: the operand that replaces B.
        let Some((slot, _)) = g.routine().and_then(|r| r.replaces) else {
            return;
        };
        let key = (b, [kind, off, rs, cs, n, k]);
        if let Some((_, p)) = done.iter().find(|(x, _)| *x == key) {
            g.operands[slot] = Some((*p, Expr::i64(0)));
            return;
        }
        let known = operands
            .get(b)
            .copied()
            .flatten()
            .or_else(|| l.consts.iter().find(|(x, _)| *x == b).map(|(_, t)| t));
        let Some(t) = known else { return };
        let source = (t.data() as *const ir::Data as usize, key.1);
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
        // A quantized product's int8 B: its panels, with the columns' sums.
        if qgemm {
            let Some((data, off, n, k)) = sized(t.as_slice::<i8>(), off, n, k) else {
                return;
            };
            let packed = match cache.packed.get(&source) {
                Some((_, packed)) => packed.clone(),
                None => {
                    let Some(p) = crate::routines::qgemm::pack_b(&data[off..], rs, cs, k, n) else {
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
