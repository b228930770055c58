//! Convolutions into channel-blocked images (`conv_blocked`, NCHWc): `conv2d_nchwc` calls
//! over images, groups of output blocks and runs of output rows, in parallel, with the
//! epilogue the routine applies as it stores.

use super::epilogue::Chain;
use super::*;

/// The block a `conv2d_nchwc` call works in.
use kernel::routines::conv::blocked;

const BLOCK: i64 = blocked::BLOCK as i64;

impl Lowering<'_> {
    /// Whether `conv_blocked` node `v` runs as `conv2d_nchwc` calls: f32, static shapes,
    /// blocks of 16, dense (one group) or depthwise from a blocked input.
    pub(super) fn blocked_calls(&self, v: Value) -> bool {
        let node = self.g.node(v.node);
        let Op::ConvBlocked { groups, block, .. } = node.op() else {
            return false;
        };
        let [xv, wv] = node.inputs() else {
            return false;
        };
        let (xs, ws) = (&self.ty(*xv).shape, &self.ty(*wv).shape);
        let depthwise = xs.rank() == 5 && ws.dim(1).as_const() == Some(1) && *groups > 1;
        (*groups == 1 || depthwise && ws.dim(0).as_const() == Some(*groups))
            && *block == BLOCK
            && self.ty(v).dtype == DType::F32
            && [*xv, *wv, v].iter().all(|&u| self.ty(u).shape.is_static())
    }

    /// A blocked conv (see [`Lowering::blocked_calls`]) as `conv2d_nchwc` calls, `chain`
    /// applied as they store (then `out` is its end).
    pub(super) fn conv_blocked(
        &mut self,
        v: Value,
        out: BufId,
        chain: Option<&Chain>,
    ) -> Result<()> {
        if !self.blocked_calls(v) {
            return unsupported(
                "`conv_blocked` other than f32, static, blocks of 16, dense or depthwise",
            );
        }
        let node = self.g.node(v.node);
        let Op::ConvBlocked {
            stride,
            dilation,
            pad_low,
            groups,
            ..
        } = node.op()
        else {
            unreachable!("checked by blocked_calls")
        };
        let (stride, dilation, pad_low) = (stride.clone(), dilation.clone(), pad_low.clone());
        let groups_n = *groups;
        let (xv, wv) = (node.inputs()[0], node.inputs()[1]);
        for op in [xv, wv] {
            if !self.bufs.contains_key(&op) {
                let n = self.k.bufs.len();
                let b = self.buf(format!("t{n}"), self.ty(op), BufKind::Scratch)?;
                self.elementwise_nest(op, b)?;
            }
        }
        let (xb, wb) = (self.bufs[&xv], self.bufs[&wv]);
        let xs = static_dims(&self.ty(xv).shape);
        let ws = static_dims(&self.ty(wv).shape);
        let os = static_dims(&self.ty(v).shape);
        let blocked_in = xs.len() == 5;
        // The channels the sums read (a dense conv's filters may leave out a blocked input's
        // padding lanes), and those the input holds.
        let held = if blocked_in { xs[1] * BLOCK } else { xs[1] };
        let c = if groups_n == 1 { ws[1] } else { held };
        let (n, h, w) = (xs[0], xs[2], xs[3]);
        let (o, oh, ow) = (os[1] * BLOCK, os[2], os[3]);
        let (ob, kh, kw) = (os[1], ws[2], ws[3]);
        let (mut stride, mut dilation, mut pad_low) = (stride, dilation, pad_low);
        // A 1-D conv along the rows of one-column images (`[c, h, 1]`, as exporters write
        // Conv1D) is the same conv along one row (`[c, 1, h]`: the same memory): the routine
        // then takes tiles of many pixels along it instead of one pixel a row.
        let column = w == 1 && ow == 1 && kw == 1 && pad_low[1] == 0 && h > 1;
        let (h, w, oh, ow, kh, kw) = if column {
            stride.swap(0, 1);
            dilation.swap(0, 1);
            pad_low.swap(0, 1);
            (w, h, ow, oh, kw, kh)
        } else {
            (h, w, oh, ow, kh, kw)
        };
        // Groups of up to four output blocks (64 filters or channels) by runs of rows: at
        // least eight units of work where the rows allow, for the threads.
        // The routine's geometry: h, w, oh, ow, kh, kw, strides, dilations, low pads.
        let shape = [h, w, oh, ow, kh, kw];
        let shape: [i64; 12] = std::array::from_fn(|i| match i {
            0..6 => shape[i],
            6..8 => stride[i - 6],
            8..10 => dilation[i - 8],
            _ => pad_low[i - 10],
        });
        let geometry = kernel::routines::conv::Geometry::of(shape);
        let wino = blocked_in
            && groups_n == 1
            && blocked::runs_by_winograd(c as usize, o as usize, &geometry);
        // Winograd's calls take every block (one input transform serves them all), runs of
        // whole tile rows (two rows high: a run that starts inside one computes all of it)
        // and as many as fill a chunk of the routine's.
        let per = if wino { ob } else { 4 };
        let groups = (ob + per - 1) / per;
        let runs = (8 / (n * groups).max(1)).clamp(1, oh.max(1));
        let mut rows = (oh + runs - 1) / runs;
        if wino {
            let least = 2 * blocked::winograd_chunk_rows(ow as usize) as i64;
            rows = rows.max(least).min(oh);
            if rows % 2 == 1 && rows < oh {
                rows += 1;
            }
        }
        let runs = (oh + rows - 1) / rows;
        let iv = self.var(DType::I64);
        let i = Expr::Var(iv);
        let split = |i: &Expr, k: i64, m: i64| -> Expr {
            let q = if k == 1 {
                i.clone()
            } else {
                Expr::index_op(Op::Div, i.clone(), Expr::i64(k))
            };
            if m == 0 {
                q
            } else {
                Expr::index_op(Op::Rem, q, Expr::i64(m))
            }
        };
        // Iteration i: image i / (groups·runs), run (i / groups) % runs, group i % groups —
        // rows outermost, so that a thread's contiguous range of iterations is a band of rows
        // of every block, the band the next conv's range reads (see `runtime`'s split).
        let img = if n == 1 {
            Expr::i64(0)
        } else {
            split(&i, groups * runs, 0)
        };
        let run = if runs == 1 {
            Expr::i64(0)
        } else {
            split(&i, groups, runs)
        };
        let grp = if groups == 1 {
            Expr::i64(0)
        } else {
            split(&i, 1, groups)
        };
        let ob0 = grp * Expr::i64(per);
        let obn = Expr::index_op(
            Op::Min,
            Expr::i64(per),
            Expr::i64(ob) + ob0.clone() * Expr::i64(-1),
        );
        let y0 = run * Expr::i64(rows);
        let nrows = Expr::index_op(
            Op::Min,
            Expr::i64(rows),
            Expr::i64(oh) + y0.clone() * Expr::i64(-1),
        );
        let out_off = img.clone() * Expr::i64(o * oh * ow);
        let epilogue = Chain::of(chain, &Expr::i64(0), &out_off);
        let geo = [c, o]
            .into_iter()
            .chain(shape)
            .chain([if blocked_in { BLOCK } else { 0 }, groups_n]);
        let mut ints: Vec<Expr> = geo.into_iter().map(Expr::i64).collect();
        ints.extend([ob0, obn, y0, nrows, Expr::i64(epilogue.act)]);
        let mut operands = vec![
            Some((xb, img * Expr::i64(held * h * w))),
            Some((wb, Expr::i64(0))),
            None,
            Some((out, out_off)),
        ];
        operands.extend(epilogue.operands());
        let call = kernel::Call {
            routine: "conv2d_nchwc".into(),
            operands,
            ints,
            scalars: epilogue.scalars(),
            result: None,
        };
        self.k.body.push(Stmt::Loop {
            var: iv,
            extent: Expr::i64(n * groups * runs),
            mark: Mark::Parallel,
            body: vec![Stmt::Call(Box::new(call))],
        });
        self.bufs.insert(v, out);
        Ok(())
    }
}
