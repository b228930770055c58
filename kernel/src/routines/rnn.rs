//! Recurrent layers over a whole sequence in one call (the `lstm`, `gru` and `rnn`
//! routines): each step's gates are summed in registers for a block of 16 hidden units and its
//! rows (the gates' columns of the transposed recurrent weights, one FMA chain over k per
//! element), and the cell update runs on those registers before anything is stored — one pass
//! a step instead of a product, an activation pass and the cell's elementwise kernels (two
//! passes for a GRU whose reset gate applies before the product).
//!
//! Threads split the hidden units (slices of blocks), each keeping its slice's weights in its
//! own cache for the whole sequence, and meet once a pass: a slice publishes how many passes it
//! has finished, and a pass starts when every slice has finished the one before (it reads the
//! whole previous h). Slices are claimed, not assigned: a thread waiting on a slice no thread
//! has claimed takes it, so a run whose helpers never come finishes alone. Every element is
//! computed the same way whoever computes it, so results do not depend on the thread count;
//! AVX-512, AVX2 and the portable code give the same bits (sums in the same order, the
//! activations of [`super::epilogue`]).

use super::epilogue::Act;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Hidden units per block: one 16-lane vector of each gate.
const BLOCK: usize = 16;

/// Multiply-adds a step's slice should have at least, for a split over threads to pay (a
/// step's meeting costs about one cross-core round trip, 0.3 µs).
const SLICE_WORK: usize = 1 << 16;

/// What a pass over the units computes: a step of a cell, or (a GRU whose reset gate applies
/// before the product) one of a step's two phases.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cell {
    /// Gates i, o, f, c; a cell state.
    Lstm,
    /// Gates z, r, n, the reset gate applied after the product (`linear_before_reset`).
    Gru,
    /// One gate, tanh.
    Rnn,
    /// A GRU step's first phase when the reset gate applies before the product: gates z and
    /// r; z goes to `y` (until the second phase replaces it with h), r·h to `rh`.
    GruGates,
    /// That step's second phase: gate n from the product of `rh` (all of it: the phases meet
    /// in between), then h.
    GruNew,
}

impl Cell {
    /// The gates a pass sums.
    fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru => 3,
            Cell::Rnn | Cell::GruNew => 1,
            Cell::GruGates => 2,
        }
    }

    /// The layer's gates (columns of its input projection and weights, by `hidden`), and the
    /// first a pass reads.
    fn columns(self) -> (usize, usize) {
        match self {
            Cell::Lstm => (4, 0),
            Cell::Gru | Cell::GruGates => (3, 0),
            Cell::GruNew => (3, 2),
            Cell::Rnn => (1, 0),
        }
    }
}

/// What one step of one slice reads and writes.
#[derive(Clone, Copy)]
struct Step {
    cell: Cell,
    /// The step's input projection, `[batch, G·hidden]` for the layer's G gates.
    xw: *const f32,
    /// Transposed recurrent weights, `[hidden, G·hidden]`, or them [`pack`]ed.
    rt: *const f32,
    /// Whether `rt` is packed.
    packed: bool,
    /// The rows the product reads, `[batch, hidden]`: the previous h, or `rh` (`GruNew`).
    h: *const f32,
    /// The previous h, `[batch, hidden]`.
    prev: *const f32,
    /// `GruGates` and `GruNew`: r·h, `[batch, hidden]`; null otherwise.
    rh: *mut f32,
    /// LSTM: the cell state, `[batch, hidden]`: read, then overwritten. GRU: null.
    c: *mut f32,
    /// GRU: the recurrent bias of the n gate, `[hidden]` (added to its product). LSTM: null.
    rbn: *const f32,
    /// This step's h, `[batch, hidden]`.
    y: *mut f32,
    batch: usize,
    hidden: usize,
}

// SAFETY: slices write disjoint units of `c` and `y`; what they read is written only before the
// step (ordered by the slices' progress counters).
unsafe impl Send for Step {}
unsafe impl Sync for Step {}

/// One LSTM unit of one row from its four pre-activation sums (without the input projection):
/// the new (c, h). What every vector path computes lane by lane.
fn lstm_cell(acc: [f32; 4], x: [f32; 4], c: f32) -> (f32, f32) {
    let pre = |g: usize| acc[g] + x[g];
    let (i, o, f) = (
        Act::Sigmoid.one(pre(0)),
        Act::Sigmoid.one(pre(1)),
        Act::Sigmoid.one(pre(2)),
    );
    let cand = Act::Tanh.one(pre(3));
    let c = f * c + i * cand;
    (c, o * Act::Tanh.one(c))
}

/// One GRU unit of one row from its three gates' products, input projections, the n gate's
/// recurrent bias and the previous h: the new h. What every vector path computes lane by lane.
fn gru_cell(acc: [f32; 3], x: [f32; 3], rbn: f32, h: f32) -> f32 {
    let z = Act::Sigmoid.one(acc[0] + x[0]);
    let r = Act::Sigmoid.one(acc[1] + x[1]);
    let n = Act::Tanh.one(x[2] + r * (acc[2] + rbn));
    blend(z, n, h)
}

/// A GRU's new h from its update gate z, candidate n and previous h.
fn blend(z: f32, n: f32, h: f32) -> f32 {
    (1.0 - z) * n + z * h
}

impl Step {
    /// Passes over the units a step takes: 2 for a GRU whose reset gate applies before the
    /// product, else 1.
    fn phases(&self) -> usize {
        if self.cell == Cell::GruGates {
            2
        } else {
            1
        }
    }

    /// Pass `p` of a sequence of `seq` steps whose first is `self` (`h` and `prev` then being
    /// h0, `xw` and `y` the whole sequence's): step `p / phases`, which reads h0 or the
    /// previous step's h.
    fn pass(&self, p: usize, seq: usize, reverse: bool) -> Step {
        let (j, phase) = (p / self.phases(), p % self.phases());
        let at = |j: usize| if reverse { seq - 1 - j } else { j };
        let state = self.batch * self.hidden;
        let prev = match j {
            0 => self.h,
            _ => self.y.wrapping_add(at(j - 1) * state),
        };
        let step = Step {
            xw: self.xw.wrapping_add(at(j) * self.cell.columns().0 * state),
            h: prev,
            prev,
            y: self.y.wrapping_add(at(j) * state),
            ..*self
        };
        match phase {
            0 => step,
            _ => Step {
                cell: Cell::GruNew,
                h: self.rh,
                ..step
            },
        }
    }

    /// The first step of a sequence (see [`Step::pass`]) from a routine's arguments, without
    /// the operands of one cell (`c`, `rbn`: null).
    #[allow(clippy::too_many_arguments)]
    fn first(
        cell: Cell,
        xw: *const f32,
        (rt, rt_packed): (*const f32, *const f32),
        h0: *const f32,
        y: *mut f32,
        batch: usize,
        hidden: usize,
    ) -> Step {
        Step {
            cell,
            xw,
            rt: if rt_packed.is_null() { rt } else { rt_packed },
            packed: !rt_packed.is_null(),
            h: h0,
            prev: h0,
            rh: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            rbn: std::ptr::null(),
            y,
            batch,
            hidden,
        }
    }

    fn gates(&self) -> usize {
        self.cell.gates()
    }

    /// Where unit `u`'s weights start (the pass's first gate, k = 0), and how far apart its k
    /// steps and its gates are.
    fn weights(&self, u: usize) -> (*const f32, usize, usize) {
        let (g, hd) = (self.gates(), self.hidden);
        let (all, first) = self.cell.columns();
        match self.packed {
            // The passes' gates are packed one after another (see [`pack`]).
            true => (
                self.rt
                    .wrapping_add(packed_len(hd, first) + u / BLOCK * hd * g * BLOCK + u % BLOCK),
                g * BLOCK,
                BLOCK,
            ),
            false => (self.rt.wrapping_add(first * hd + u), all * hd, hd),
        }
    }

    /// Where row `row`'s input projection for the pass's first gate and unit `u` is.
    fn input(&self, row: usize, u: usize) -> *const f32 {
        let (all, first) = self.cell.columns();
        self.xw.wrapping_add((row * all + first) * self.hidden + u)
    }

    /// Units `u0..u1` of every row, portably.
    ///
    /// # Safety
    /// The pointers hold what the fields say.
    unsafe fn units_portable(&self, u0: usize, u1: usize) {
        let hd = self.hidden;
        for r in 0..self.batch {
            for u in u0..u1 {
                let (w, ks, gs) = self.weights(u);
                let mut acc = [0f32; 4];
                let mut x = [0f32; 4];
                // SAFETY: in bounds by the fields' shapes.
                unsafe {
                    for k in 0..hd {
                        let h = *self.h.add(r * hd + k);
                        for (g, a) in acc[..self.gates()].iter_mut().enumerate() {
                            *a = h.mul_add(*w.add(k * ks + g * gs), *a);
                        }
                    }
                    for (g, v) in x[..self.gates()].iter_mut().enumerate() {
                        *v = *self.input(r, u).add(g * hd);
                    }
                    let at = r * hd + u;
                    let prev = *self.prev.add(at);
                    *self.y.add(at) = match self.cell {
                        Cell::Lstm => {
                            let (c, h) = lstm_cell(acc, x, *self.c.add(at));
                            *self.c.add(at) = c;
                            h
                        }
                        Cell::Gru => {
                            let (a, x) = ([acc[0], acc[1], acc[2]], [x[0], x[1], x[2]]);
                            gru_cell(a, x, *self.rbn.add(u), prev)
                        }
                        Cell::Rnn => Act::Tanh.one(acc[0] + x[0]),
                        Cell::GruGates => {
                            let r = Act::Sigmoid.one(acc[1] + x[1]);
                            *self.rh.add(at) = r * prev;
                            Act::Sigmoid.one(acc[0] + x[0])
                        }
                        Cell::GruNew => {
                            let n = Act::Tanh.one(x[0] + (acc[0] + *self.rbn.add(u)));
                            blend(*self.y.add(at), n, prev)
                        }
                    };
                }
            }
        }
    }

    /// Blocks `b0..b1` of hidden units, every row.
    ///
    /// # Safety
    /// As [`Step::units_portable`].
    unsafe fn blocks(&self, b0: usize, b1: usize) {
        let (u0, u1) = (b0 * BLOCK, (b1 * BLOCK).min(self.hidden));
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F; the rest as this function's.
                return unsafe { avx512::units(self, u0, u1) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA.
                let done = unsafe { avx2::units(self, u0, u1) };
                // SAFETY: as this function's.
                return unsafe { self.units_portable(done, u1) };
            }
        }
        // SAFETY: as this function's.
        unsafe { self.units_portable(u0, u1) }
    }
}

/// Elements of the recurrent weights of `hidden` units and `gates` gates [`pack`]ed.
pub fn packed_len(hidden: usize, gates: usize) -> usize {
    hidden.div_ceil(BLOCK) * BLOCK * gates * hidden
}

/// The transposed recurrent weights `rt` (`[hidden, G·hidden]`, G the sum of `passes`) in the
/// order steps read them: pass by pass (the gates each pass sums: `[4]` for an LSTM, `[3]` a
/// GRU, `[2, 1]` a GRU whose reset gate applies before the product, `[1]` an RNN), block by
/// block of 16 units, k by k, the pass's gates' 16 columns side by side (units past `hidden`
/// zero), so that a block's weights are one sequential run. `None` when `rt` is shorter than
/// its shape says.
pub fn pack(rt: &[f32], hidden: usize, passes: &[usize]) -> Option<Vec<f32>> {
    let all: usize = passes.iter().sum();
    let rt = rt.get(..all * hidden * hidden)?;
    if hidden == 0 {
        return Some(Vec::new());
    }
    let mut out = vec![0f32; packed_len(hidden, all)];
    let mut first = 0;
    for &gates in passes {
        let part = &mut out[packed_len(hidden, first)..packed_len(hidden, first + gates)];
        for (b, block) in part.chunks_exact_mut(gates * BLOCK * hidden).enumerate() {
            for (k, row) in block.chunks_exact_mut(gates * BLOCK).enumerate() {
                for (g, lanes) in row.chunks_exact_mut(BLOCK).enumerate() {
                    let u0 = b * BLOCK;
                    let n = BLOCK.min(hidden - u0);
                    let at = k * all * hidden + (first + g) * hidden + u0;
                    lanes[..n].copy_from_slice(&rt[at..at + n]);
                }
            }
        }
        first += gates;
    }
    Some(out)
}

/// What a recurrent routine's operand holds (`ROUTINES` sizes them by it).
#[derive(Clone, Copy)]
pub(super) enum Operand {
    /// Every step's input projection: `seq·batch·gates·hidden`.
    Projection,
    /// The transposed recurrent weights: `hidden·gates·hidden`.
    Weights,
    /// Them [`pack`]ed: [`packed_len`]`(hidden, gates)`.
    Packed,
    /// One value a unit: `hidden`.
    Units,
    /// Every step's h: `seq·batch·hidden`.
    Steps,
    /// A state: `batch·hidden`.
    State,
}

/// The `lstm` routine's operands, in its order in `ROUTINES`: xw, rt, rt_packed, h0, c0, y,
/// h, c.
pub(super) const LSTM: [Operand; 8] = {
    use Operand::*;
    [
        Projection, Weights, Packed, State, State, Steps, State, State,
    ]
};

/// The `gru` routine's operands: xw, rt, rt_packed, rbn, h0, y, h.
pub(super) const GRU: [Operand; 7] = {
    use Operand::*;
    [Projection, Weights, Packed, Units, State, Steps, State]
};

/// The `rnn` routine's operands: xw, rt, rt_packed, h0, y, h.
pub(super) const RNN: [Operand; 6] = {
    use Operand::*;
    [Projection, Weights, Packed, State, Steps, State]
};

/// The elements an operand of a recurrent routine touches from its offset, from the
/// routine's integers (`seq`, `batch`, `hidden` first) and its layer's gates; the packed
/// weights as at least `(hidden + 15)·hidden·gates`, which holds `16·⌈hidden/16⌉·hidden·gates`.
pub(super) fn extent(op: Operand, gates: i64, i: &[crate::Expr]) -> Option<crate::Expr> {
    use crate::Expr;
    let n = |k: usize| i.get(k).cloned();
    let g = Expr::i64(gates);
    Some(match op {
        Operand::Projection => n(0)? * n(1)? * n(2)? * g,
        Operand::Weights => n(2)? * n(2)? * g,
        Operand::Packed => (n(2)? + Expr::i64(15)) * n(2)? * g,
        Operand::Units => n(2)?,
        Operand::Steps => n(0)? * n(1)? * n(2)?,
        Operand::State => n(1)? * n(2)?,
    })
}

/// The lowest and highest element an operand of a recurrent routine touches from its
/// offset, under evaluated integers (`seq`, `batch`, `hidden` first); `None` when none.
pub(super) fn bounds(op: Operand, gates: usize, i: &[i64]) -> Option<super::Range> {
    let state = i[1].checked_mul(i[2])?;
    let len = match op {
        Operand::Projection => i[0].checked_mul(state)?.checked_mul(gates as i64)?,
        Operand::Weights => i[2].checked_mul(i[2])?.checked_mul(gates as i64)?,
        Operand::Packed => i64::try_from(packed_len(usize::try_from(i[2]).ok()?, gates)).ok()?,
        Operand::Units => i[2],
        Operand::Steps => i[0].checked_mul(state)?,
        Operand::State => state,
    };
    (len > 0).then_some((0, len - 1))
}

/// A counter on its own cache line.
#[repr(align(128))]
#[derive(Default)]
struct Line(AtomicUsize);

/// One direction of an LSTM layer over `seq` steps (see the `lstm` op): `y` (`[seq, batch,
/// hidden]`) gets every step's h in time order, `h` and `c` (`[batch, hidden]`) the last
/// states (h0 and c0 when `seq` is 0); steps run from `seq - 1` down when `reverse` is nonzero.
///
/// # Safety
/// `xw` holds `seq·batch·4·hidden` elements, `rt` `hidden·4·hidden` (or, unless null,
/// `rt_packed` [`packed_len`]`(hidden, 4)`: `rt` [`pack`]ed, and `rt` is not read), `h0`,
/// `c0`, `h` and `c` `batch·hidden`, `y` `seq·batch·hidden`; `y`, `h` and `c` overlap no
/// other operand (`c` may be `c0`).
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_lstm(
    xw: *const f32,
    rt: *const f32,
    rt_packed: *const f32,
    h0: *const f32,
    c0: *const f32,
    y: *mut f32,
    h: *mut f32,
    c: *mut f32,
    seq: i64,
    batch: i64,
    hidden: i64,
    reverse: i64,
) {
    let [seq, batch, hidden] = sizes(seq, batch, hidden);
    // SAFETY: both hold `batch·hidden` elements (they may be one buffer).
    unsafe { std::ptr::copy(c0, c, batch * hidden) };
    let base = Step {
        c,
        ..Step::first(Cell::Lstm, xw, (rt, rt_packed), h0, y, batch, hidden)
    };
    // SAFETY: as this function's.
    unsafe { sequence(&base, seq, reverse != 0, h) };
}

/// One direction of a GRU layer (see the `gru` op) over `seq` steps: `y` (`[seq, batch,
/// hidden]`) gets every step's h in time order, `h` (`[batch, hidden]`) the last (h0 when
/// `seq` is 0); steps run from `seq - 1` down when `reverse` is nonzero; the reset gate
/// applies after the product when `linear_before_reset` is nonzero, else before it (two
/// passes a step, which meet in between).
///
/// # Safety
/// `xw` holds `seq·batch·3·hidden` elements, `rt` `hidden·3·hidden` (or, unless null,
/// `rt_packed` [`packed_len`]`(hidden, 3)`: `rt` [`pack`]ed by passes `[3]`, or `[2, 1]` when
/// the reset gate applies before the product, and `rt` is not read), `rbn`
/// `hidden`, `h0` and `h` `batch·hidden`, `y` `seq·batch·hidden`; `y` and `h` overlap no other
/// operand.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_gru(
    xw: *const f32,
    rt: *const f32,
    rt_packed: *const f32,
    rbn: *const f32,
    h0: *const f32,
    y: *mut f32,
    h: *mut f32,
    seq: i64,
    batch: i64,
    hidden: i64,
    reverse: i64,
    linear_before_reset: i64,
) {
    let [seq, batch, hidden] = sizes(seq, batch, hidden);
    let mut rh = match linear_before_reset {
        0 => vec![0f32; batch * hidden],
        _ => Vec::new(),
    };
    let (cell, rh) = match linear_before_reset {
        0 => (Cell::GruGates, rh.as_mut_ptr()),
        _ => (Cell::Gru, std::ptr::null_mut()),
    };
    let base = Step {
        rbn,
        rh,
        ..Step::first(cell, xw, (rt, rt_packed), h0, y, batch, hidden)
    };
    // SAFETY: as this function's; `rh` holds batch·hidden elements when a pass writes it.
    unsafe { sequence(&base, seq, reverse != 0, h) };
}

/// One direction of a simple recurrent layer with tanh (see the `rnn` op) over `seq` steps:
/// `y` (`[seq, batch, hidden]`) gets every step's h in time order, `h` (`[batch, hidden]`) the
/// last (h0 when `seq` is 0); steps run from `seq - 1` down when `reverse` is nonzero.
///
/// # Safety
/// `xw` holds `seq·batch·hidden` elements, `rt` `hidden·hidden` (or, unless null, `rt_packed`
/// [`packed_len`]`(hidden, 1)`: `rt` [`pack`]ed, and `rt` is not read), `h0` and `h`
/// `batch·hidden`, `y` `seq·batch·hidden`; `y` and `h` overlap no other operand.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_rnn(
    xw: *const f32,
    rt: *const f32,
    rt_packed: *const f32,
    h0: *const f32,
    y: *mut f32,
    h: *mut f32,
    seq: i64,
    batch: i64,
    hidden: i64,
    reverse: i64,
) {
    let [seq, batch, hidden] = sizes(seq, batch, hidden);
    let base = Step::first(Cell::Rnn, xw, (rt, rt_packed), h0, y, batch, hidden);
    // SAFETY: as this function's.
    unsafe { sequence(&base, seq, reverse != 0, h) };
}

/// A routine's sizes, negative ones as 0.
fn sizes(seq: i64, batch: i64, hidden: i64) -> [usize; 3] {
    [seq, batch, hidden].map(|n| n.max(0) as usize)
}

/// Every step of a sequence whose first is `base`, then the last h into `h` (h0 when `seq` is
/// 0).
///
/// # Safety
/// As [`kiln_lstm`] or [`kiln_gru`].
unsafe fn sequence(base: &Step, seq: usize, reverse: bool, h: *mut f32) {
    let state = base.batch * base.hidden;
    let last = match seq {
        _ if seq == 0 || state == 0 => base.h,
        _ => {
            // SAFETY: as this function's.
            unsafe { steps(base, seq, reverse) };
            base.y
                .wrapping_add(if reverse { 0 } else { seq - 1 } * state)
        }
    };
    // SAFETY: both hold `state` elements (a kernel never passes h as another operand).
    unsafe { std::ptr::copy(last, h, state) };
}

/// Every pass of a sequence whose first is `base` (see [`Step::pass`]), over this thread and
/// its helpers.
///
/// # Safety
/// As [`sequence`]; `seq` is at least 1.
unsafe fn steps(base: &Step, seq: usize, reverse: bool) {
    let (batch, hidden) = (base.batch, base.hidden);
    let step = |p: usize| base.pass(p, seq, reverse);
    let passes = seq * base.phases();
    let blocks = hidden.div_ceil(BLOCK);
    let work = batch * base.cell.columns().0 * hidden * hidden / base.phases();
    let slices = (crate::threads::helpers() + 1)
        .min(blocks)
        .min((work / SLICE_WORK).max(1));
    let range = |s: usize| (blocks * s / slices, blocks * (s + 1) / slices);
    if slices == 1 {
        for j in 0..passes {
            // SAFETY: the operands hold what this function's contract says.
            unsafe { step(j).blocks(0, blocks) };
        }
        return;
    }
    let next = Line::default();
    let progress: Vec<Line> = (0..slices).map(|_| Line::default()).collect();
    // Runs pass j of slice s and publishes it.
    let run = |s: usize, j: usize| {
        let (b0, b1) = range(s);
        // SAFETY: as this function's; slices write disjoint units, and pass j starts only
        // after every slice has published pass j - 1 (what it reads).
        unsafe { step(j).blocks(b0, b1) };
        progress[s].0.store(j + 1, Ordering::Release);
    };
    crate::threads::parallel_for(slices, |_| {
        let first = next.0.fetch_add(1, Ordering::Relaxed);
        if first >= slices {
            return;
        }
        let mut mine = vec![first];
        run(first, 0);
        // Before pass j (and, at j = passes, before returning: a slice may yet be unclaimed),
        // every slice has run pass j - 1.
        for j in 1..=passes {
            for (o, p) in progress.iter().enumerate() {
                while p.0.load(Ordering::Acquire) < j {
                    // A slice nobody has claimed (the helper that would have is not coming)
                    // is taken here. Only pass 1 can find one: no slice passes it before
                    // every slice has run pass 0.
                    if next.0.load(Ordering::Relaxed) <= o {
                        let s = next.0.fetch_add(1, Ordering::Relaxed);
                        if s < slices {
                            run(s, 0);
                            mine.push(s);
                        }
                        continue;
                    }
                    std::hint::spin_loop();
                }
            }
            if j < passes {
                for &s in &mine {
                    run(s, j);
                }
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Cell, Step, BLOCK};
    use crate::routines::epilogue::avx512::{sigmoid, tanh};
    use std::arch::x86_64::*;

    /// How many k steps ahead the weights are prefetched.
    const AHEAD: usize = 8;

    /// Units `u0..u1` of every row in 16-lane registers, rows four at a time.
    ///
    /// # Safety
    /// As [`Step::units_portable`]; the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn units(s: &Step, u0: usize, u1: usize) {
        // SAFETY: as this function's.
        unsafe {
            match s.cell {
                Cell::Lstm => cells::<4>(s, u0, u1),
                Cell::Gru => cells::<3>(s, u0, u1),
                Cell::GruGates => cells::<2>(s, u0, u1),
                Cell::Rnn | Cell::GruNew => cells::<1>(s, u0, u1),
            }
        }
    }

    /// [`units`] of a cell of `G` gates.
    #[target_feature(enable = "avx512f")]
    unsafe fn cells<const G: usize>(s: &Step, u0: usize, u1: usize) {
        let mut r = 0;
        // SAFETY: as this function's.
        unsafe {
            while r + 4 <= s.batch {
                span::<4, G>(s, u0, u1, r);
                r += 4;
            }
            match s.batch - r {
                3 => span::<3, G>(s, u0, u1, r),
                2 => span::<2, G>(s, u0, u1, r),
                1 => span::<1, G>(s, u0, u1, r),
                _ => {}
            }
        }
    }

    /// Units `u0..u1` of rows `r..r + R`: whole blocks several at a time when a block's rows
    /// and gates are too few sums to keep the FMA units busy (at least 8 independent ones),
    /// then the rest a block at a time under a mask.
    #[target_feature(enable = "avx512f")]
    unsafe fn span<const R: usize, const G: usize>(s: &Step, u0: usize, u1: usize, r: usize) {
        let mut u = u0;
        // SAFETY: as this function's; whole blocks need no mask, the last one's keeps every
        // access in bounds.
        unsafe {
            match (8 / (G * R)).max(1) {
                1 => {}
                2 | 3 => u = whole::<R, G, 2>(s, u, u1, r),
                4..=7 => u = whole::<R, G, 4>(s, u, u1, r),
                _ => u = whole::<R, G, 8>(s, u, u1, r),
            }
            while u < u1 {
                let lanes = BLOCK.min(u1 - u);
                rows::<R, G, 1>(s, u, r, ((1u32 << lanes) - 1) as u16);
                u += lanes;
            }
        }
    }

    /// Groups of `NB` whole blocks from `u`; returns where they end.
    #[target_feature(enable = "avx512f")]
    unsafe fn whole<const R: usize, const G: usize, const NB: usize>(
        s: &Step,
        mut u: usize,
        u1: usize,
        r: usize,
    ) -> usize {
        while u + NB * BLOCK <= u1 {
            // SAFETY: the caller's.
            unsafe { rows::<R, G, NB>(s, u, r, u16::MAX) };
            u += NB * BLOCK;
        }
        u
    }

    /// Rows `r..r + R`, the `NB` blocks of units from `u` (each under `mask`).
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const R: usize, const G: usize, const NB: usize>(
        s: &Step,
        u: usize,
        r: usize,
        mask: __mmask16,
    ) {
        let hd = s.hidden;
        // SAFETY: every access is in bounds under the mask (the caller's contract).
        unsafe {
            let mut acc = [[[_mm512_setzero_ps(); G]; NB]; R];
            let mut w = [s.rt; NB];
            let (mut ks, mut gs) = (0, 0);
            for (b, p) in w.iter_mut().enumerate() {
                (*p, ks, gs) = s.weights(u + b * BLOCK);
            }
            let mut h = s.h.add(r * hd);
            for _ in 0..hd {
                let mut wg = [[_mm512_setzero_ps(); G]; NB];
                for (b, wb) in wg.iter_mut().enumerate() {
                    for (g, v) in wb.iter_mut().enumerate() {
                        *v = _mm512_maskz_loadu_ps(mask, w[b].add(g * gs));
                        let ahead = w[b].wrapping_add(AHEAD * ks + g * gs);
                        _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
                    }
                }
                for (i, a) in acc.iter_mut().enumerate() {
                    let hb = _mm512_set1_ps(*h.add(i * hd));
                    for b in 0..NB {
                        for g in 0..G {
                            a[b][g] = _mm512_fmadd_ps(hb, wg[b][g], a[b][g]);
                        }
                    }
                }
                for p in w.iter_mut() {
                    *p = p.wrapping_add(ks);
                }
                h = h.add(1);
            }
            for (i, ab) in acc.iter().enumerate() {
                for (b, a) in ab.iter().enumerate() {
                    store::<G>(s, r + i, u + b * BLOCK, mask, a);
                }
            }
        }
    }

    /// The cell of row `row`, units `u..` under `mask`, from its gates' sums `a`.
    #[target_feature(enable = "avx512f")]
    unsafe fn store<const G: usize>(
        s: &Step,
        row: usize,
        u: usize,
        mask: __mmask16,
        a: &[__m512; G],
    ) {
        let hd = s.hidden;
        // SAFETY: every access is in bounds under the mask (the caller's contract).
        unsafe {
            let at = row * hd + u;
            let x = s.input(row, u);
            let pre = |g: usize| _mm512_add_ps(a[g], _mm512_maskz_loadu_ps(mask, x.add(g * hd)));
            let prev = _mm512_maskz_loadu_ps(mask, s.prev.add(at));
            let blend = |z: __m512, n: __m512| {
                let keep = _mm512_sub_ps(_mm512_set1_ps(1.0), z);
                _mm512_add_ps(_mm512_mul_ps(keep, n), _mm512_mul_ps(z, prev))
            };
            let h = match s.cell {
                Cell::Lstm => {
                    let (ig, og, fg) = (sigmoid(pre(0)), sigmoid(pre(1)), sigmoid(pre(2)));
                    let cand = tanh(pre(3));
                    let cp = s.c.add(at);
                    let c = _mm512_add_ps(
                        _mm512_mul_ps(fg, _mm512_maskz_loadu_ps(mask, cp)),
                        _mm512_mul_ps(ig, cand),
                    );
                    _mm512_mask_storeu_ps(cp, mask, c);
                    _mm512_mul_ps(og, tanh(c))
                }
                Cell::Gru => {
                    let (z, rg) = (sigmoid(pre(0)), sigmoid(pre(1)));
                    let hn = _mm512_add_ps(a[2], _mm512_maskz_loadu_ps(mask, s.rbn.add(u)));
                    let xn = _mm512_maskz_loadu_ps(mask, x.add(2 * hd));
                    blend(z, tanh(_mm512_add_ps(xn, _mm512_mul_ps(rg, hn))))
                }
                Cell::Rnn => tanh(pre(0)),
                Cell::GruGates => {
                    let rg = sigmoid(pre(1));
                    _mm512_mask_storeu_ps(s.rh.add(at), mask, _mm512_mul_ps(rg, prev));
                    sigmoid(pre(0))
                }
                Cell::GruNew => {
                    let hn = _mm512_add_ps(a[0], _mm512_maskz_loadu_ps(mask, s.rbn.add(u)));
                    let n = tanh(_mm512_add_ps(_mm512_maskz_loadu_ps(mask, x), hn));
                    blend(_mm512_maskz_loadu_ps(mask, s.y.add(at)), n)
                }
            };
            _mm512_mask_storeu_ps(s.y.add(at), mask, h);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Cell, Step};
    use crate::routines::epilogue::avx2::{sigmoid, tanh};
    use std::arch::x86_64::*;

    /// Units from `u0` in whole 8-lane vectors, rows two at a time; returns where they end
    /// (the rest, fewer than 8 units, is the caller's).
    ///
    /// # Safety
    /// As [`Step::units_portable`]; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn units(s: &Step, u0: usize, u1: usize) -> usize {
        // SAFETY: as this function's.
        unsafe {
            match s.cell {
                Cell::Lstm => cells::<4>(s, u0, u1),
                Cell::Gru => cells::<3>(s, u0, u1),
                Cell::GruGates => cells::<2>(s, u0, u1),
                Cell::Rnn | Cell::GruNew => cells::<1>(s, u0, u1),
            }
        }
    }

    /// [`units`] of a cell of `G` gates.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn cells<const G: usize>(s: &Step, u0: usize, u1: usize) -> usize {
        let mut r = 0;
        let mut end = u0;
        // SAFETY: as this function's.
        unsafe {
            while r + 2 <= s.batch {
                end = span::<2, G>(s, u0, u1, r);
                r += 2;
            }
            if r < s.batch {
                end = span::<1, G>(s, u0, u1, r);
            }
        }
        end
    }

    /// Units from `u0` of rows `r..r + R` in whole vectors, several at a time when a vector's
    /// rows and gates are few sums (as many as 16 registers hold); returns where they end.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn span<const R: usize, const G: usize>(
        s: &Step,
        u0: usize,
        u1: usize,
        r: usize,
    ) -> usize {
        let mut u = u0;
        // SAFETY: as this function's.
        unsafe {
            if G * R <= 2 {
                u = whole::<R, G, 4>(s, u, u1, r);
            } else if G * R <= 4 && G < 4 {
                u = whole::<R, G, 2>(s, u, u1, r);
            }
            whole::<R, G, 1>(s, u, u1, r)
        }
    }

    /// Groups of `NB` whole vectors of units from `u`; returns where they end.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn whole<const R: usize, const G: usize, const NB: usize>(
        s: &Step,
        mut u: usize,
        u1: usize,
        r: usize,
    ) -> usize {
        while u + NB * 8 <= u1 {
            // SAFETY: the caller's.
            unsafe { rows::<R, G, NB>(s, u, r) };
            u += NB * 8;
        }
        u
    }

    /// Rows `r..r + R`, the `NB` vectors of units from `u`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows<const R: usize, const G: usize, const NB: usize>(s: &Step, u: usize, r: usize) {
        let hd = s.hidden;
        // SAFETY: every access is in bounds (the caller's contract).
        unsafe {
            let mut acc = [[[_mm256_setzero_ps(); G]; NB]; R];
            let mut w = [s.rt; NB];
            let (mut ks, mut gs) = (0, 0);
            for (b, p) in w.iter_mut().enumerate() {
                (*p, ks, gs) = s.weights(u + b * 8);
            }
            let mut h = s.h.add(r * hd);
            for _ in 0..hd {
                let mut wg = [[_mm256_setzero_ps(); G]; NB];
                for (b, wb) in wg.iter_mut().enumerate() {
                    for (g, v) in wb.iter_mut().enumerate() {
                        *v = _mm256_loadu_ps(w[b].add(g * gs));
                    }
                }
                for (i, a) in acc.iter_mut().enumerate() {
                    let hb = _mm256_set1_ps(*h.add(i * hd));
                    for b in 0..NB {
                        for g in 0..G {
                            a[b][g] = _mm256_fmadd_ps(hb, wg[b][g], a[b][g]);
                        }
                    }
                }
                for p in w.iter_mut() {
                    *p = p.wrapping_add(ks);
                }
                h = h.add(1);
            }
            for (i, ab) in acc.iter().enumerate() {
                for (b, a) in ab.iter().enumerate() {
                    store::<G>(s, r + i, u + b * 8, a);
                }
            }
        }
    }

    /// The cell of row `row`, units `u..u + 8`, from its gates' sums `a`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store<const G: usize>(s: &Step, row: usize, u: usize, a: &[__m256; G]) {
        let hd = s.hidden;
        // SAFETY: every access is in bounds (the caller's contract).
        unsafe {
            let at = row * hd + u;
            let x = s.input(row, u);
            let pre = |g: usize| _mm256_add_ps(a[g], _mm256_loadu_ps(x.add(g * hd)));
            let prev = _mm256_loadu_ps(s.prev.add(at));
            let blend = |z: __m256, n: __m256| {
                let keep = _mm256_sub_ps(_mm256_set1_ps(1.0), z);
                _mm256_add_ps(_mm256_mul_ps(keep, n), _mm256_mul_ps(z, prev))
            };
            let h = match s.cell {
                Cell::Lstm => {
                    let (ig, og, fg) = (sigmoid(pre(0)), sigmoid(pre(1)), sigmoid(pre(2)));
                    let cand = tanh(pre(3));
                    let cp = s.c.add(at);
                    let c = _mm256_add_ps(
                        _mm256_mul_ps(fg, _mm256_loadu_ps(cp)),
                        _mm256_mul_ps(ig, cand),
                    );
                    _mm256_storeu_ps(cp, c);
                    _mm256_mul_ps(og, tanh(c))
                }
                Cell::Gru => {
                    let (z, rg) = (sigmoid(pre(0)), sigmoid(pre(1)));
                    let hn = _mm256_add_ps(a[2], _mm256_loadu_ps(s.rbn.add(u)));
                    let xn = _mm256_loadu_ps(x.add(2 * hd));
                    blend(z, tanh(_mm256_add_ps(xn, _mm256_mul_ps(rg, hn))))
                }
                Cell::Rnn => tanh(pre(0)),
                Cell::GruGates => {
                    let rg = sigmoid(pre(1));
                    _mm256_storeu_ps(s.rh.add(at), _mm256_mul_ps(rg, prev));
                    sigmoid(pre(0))
                }
                Cell::GruNew => {
                    let hn = _mm256_add_ps(a[0], _mm256_loadu_ps(s.rbn.add(u)));
                    let n = tanh(_mm256_add_ps(_mm256_loadu_ps(x), hn));
                    blend(_mm256_loadu_ps(s.y.add(at)), n)
                }
            };
            _mm256_storeu_ps(s.y.add(at), h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threads::{with_helpers, Pool};
    use std::sync::Arc;

    /// Deterministic values in about [-1, 1].
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// A layer's y, h and (LSTM) c, from the weights as given and packed (which must agree).
    fn layer(cell: Cell, seq: usize, batch: usize, hidden: usize, reverse: bool) -> Vec<Vec<u32>> {
        let plain = run(cell, seq, batch, hidden, reverse, false);
        let packed = run(cell, seq, batch, hidden, reverse, true);
        assert_eq!(plain, packed, "packed weights");
        plain
    }

    fn run(
        cell: Cell,
        seq: usize,
        batch: usize,
        hidden: usize,
        reverse: bool,
        packed: bool,
    ) -> Vec<Vec<u32>> {
        let (state, gates) = (batch * hidden, cell.columns().0);
        let xw = values(seq * batch * gates * hidden, 1);
        let rt: Vec<f32> = values(gates * hidden * hidden, 2)
            .iter()
            .map(|w| w * 0.3)
            .collect();
        let (h0, c0, rbn) = (values(state, 3), values(state, 4), values(hidden, 5));
        let (mut y, mut h, mut c) = (vec![0.0; seq * state], vec![0.0; state], vec![0.0; state]);
        let rp = pack(&rt, hidden, passes(cell)).unwrap();
        let rp = if packed {
            rp.as_ptr()
        } else {
            std::ptr::null()
        };
        let (seq, b, n, rev) = (seq as i64, batch as i64, hidden as i64, reverse as i64);
        // SAFETY: every operand holds what the contract says.
        unsafe {
            match cell {
                Cell::Lstm => kiln_lstm(
                    xw.as_ptr(),
                    rt.as_ptr(),
                    rp,
                    h0.as_ptr(),
                    c0.as_ptr(),
                    y.as_mut_ptr(),
                    h.as_mut_ptr(),
                    c.as_mut_ptr(),
                    seq,
                    b,
                    n,
                    rev,
                ),
                Cell::Gru | Cell::GruGates | Cell::GruNew => kiln_gru(
                    xw.as_ptr(),
                    rt.as_ptr(),
                    rp,
                    rbn.as_ptr(),
                    h0.as_ptr(),
                    y.as_mut_ptr(),
                    h.as_mut_ptr(),
                    seq,
                    b,
                    n,
                    rev,
                    (cell == Cell::Gru) as i64,
                ),
                Cell::Rnn => kiln_rnn(
                    xw.as_ptr(),
                    rt.as_ptr(),
                    rp,
                    h0.as_ptr(),
                    y.as_mut_ptr(),
                    h.as_mut_ptr(),
                    seq,
                    b,
                    n,
                    rev,
                ),
            }
        };
        [y, h, c]
            .iter()
            .map(|v| v.iter().map(|f| f.to_bits()).collect())
            .collect()
    }

    /// The passes a layer's weights are packed by.
    fn passes(cell: Cell) -> &'static [usize] {
        match cell {
            Cell::Lstm => &[4],
            Cell::Gru => &[3],
            Cell::Rnn => &[1],
            Cell::GruGates | Cell::GruNew => &[2, 1],
        }
    }

    /// The layers (a GRU whose reset gate applies before the product by its first pass).
    const LAYERS: [Cell; 4] = [Cell::Lstm, Cell::Gru, Cell::GruGates, Cell::Rnn];

    #[test]
    fn results_do_not_depend_on_threads() {
        // 2, 3 and 4 threads split 8 to 10 blocks (and a tail) into slices: LSTMs and one-pass
        // GRUs in every case, two-pass GRUs and RNNs in the last (the others have too little
        // work a pass to split).
        for cell in LAYERS {
            for (seq, batch, hidden, reverse) in [
                (5, 4, 128, false),
                (3, 5, 136, true),
                (1, 8, 64, false),
                (2, 8, 160, true),
            ] {
                let alone = layer(cell, seq, batch, hidden, reverse);
                for helpers in [1, 2, 3] {
                    let pool = Arc::new(Pool::new(helpers).unwrap());
                    let got = with_helpers(Some(pool), || layer(cell, seq, batch, hidden, reverse));
                    assert_eq!(
                        got, alone,
                        "{cell:?}, {helpers} helpers, {seq}x{batch}x{hidden}"
                    );
                }
            }
        }
    }

    #[test]
    fn helpers_that_never_come_leave_their_slices_to_the_caller() {
        // The pool's helper is busy in another caller's region that outlasts this one's:
        // every slice must still run, on this thread.
        let pool = Arc::new(Pool::new(1).unwrap());
        let want = layer(Cell::Lstm, 4, 4, 128, false);
        let gate = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p2, g2) = (pool.clone(), gate.clone());
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let s2 = started.clone();
        let busy = std::thread::spawn(move || {
            with_helpers(Some(p2), || {
                crate::threads::parallel_for(2, |_| {
                    s2.fetch_add(1, Ordering::AcqRel);
                    while !g2.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                })
            })
        });
        // Both parts of the other region running: the helper is taken until `gate` opens.
        while started.load(Ordering::Acquire) < 2 {
            std::hint::spin_loop();
        }
        let got = with_helpers(Some(pool), || layer(Cell::Lstm, 4, 4, 128, false));
        gate.store(true, Ordering::Release);
        busy.join().unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn an_empty_sequence_leaves_the_initial_states() {
        for cell in LAYERS {
            let out = layer(cell, 0, 3, 20, false);
            let bits = |v: Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert!(out[0].is_empty());
            assert_eq!(out[1], bits(values(60, 3)));
            if cell == Cell::Lstm {
                assert_eq!(out[2], bits(values(60, 4)));
            }
        }
    }

    #[test]
    fn every_isa_gives_the_portable_bits() {
        // Several blocks a pass (few rows), with blocks left over; tails of blocks and vectors.
        let cases = [
            (1, 20),
            (4, 128),
            (5, 24),
            (2, 3),
            (3, 40),
            (1, 168),
            (2, 136),
            (3, 72),
        ];
        let cells = [
            Cell::Lstm,
            Cell::Gru,
            Cell::Rnn,
            Cell::GruGates,
            Cell::GruNew,
        ];
        for (cell, (batch, hidden)) in cells.into_iter().flat_map(|c| cases.map(|b| (c, b))) {
            let (state, gates) = (batch * hidden, cell.columns().0);
            let xw = values(batch * gates * hidden, 5);
            let rt = values(gates * hidden * hidden, 6);
            let (h0, c0, rbn) = (values(state, 7), values(state, 8), values(hidden, 9));
            // The previous h (the product's input is h0); a GRU's z in y before `GruNew`.
            let (prev, z) = (values(state, 10), values(state, 11));
            let rp = pack(&rt, hidden, passes(cell)).unwrap();
            for packed in [false, true] {
                let run = |f: &dyn Fn(&Step)| {
                    let (mut y, mut c, mut rh) = (z.clone(), c0.clone(), vec![0f32; state]);
                    let s = Step {
                        cell,
                        xw: xw.as_ptr(),
                        rt: if packed { rp.as_ptr() } else { rt.as_ptr() },
                        packed,
                        h: h0.as_ptr(),
                        prev: prev.as_ptr(),
                        rh: rh.as_mut_ptr(),
                        c: c.as_mut_ptr(),
                        rbn: rbn.as_ptr(),
                        y: y.as_mut_ptr(),
                        batch,
                        hidden,
                    };
                    f(&s);
                    [y, c, rh].map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
                };
                // SAFETY: every operand holds what the step says.
                let want = run(&|s| unsafe { s.units_portable(0, hidden) });
                assert!(want[0].iter().any(|&b| b != 0));
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        // SAFETY: as above, on a CPU with AVX-512F.
                        let got = run(&|s| unsafe { avx512::units(s, 0, hidden) });
                        assert_eq!(got, want, "AVX-512, {cell:?} {batch}x{hidden}");
                    }
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        // SAFETY: as above, on a CPU with AVX2 and FMA.
                        let got = run(&|s| unsafe {
                            let done = avx2::units(s, 0, hidden);
                            s.units_portable(done, hidden)
                        });
                        assert_eq!(got, want, "AVX2, {cell:?} {batch}x{hidden}");
                    }
                }
            }
        }
    }
}
