//! Running an executable: memory plans per segment and binding of the symbols, the run loop
//! over steps, loop steps, and calling compiled kernels.

use std::collections::HashMap;

use ir::{DType, Data, Graph, Tensor, TensorType};
use kernel::loops::{codes, BufId, BufKind};
use kernel::Lowered;
use kernel::{Code, KernelFn};
use smallvec::SmallVec;

/// A step's results (most steps have one).
type Outs = SmallVec<[Loc; 2]>;

use super::*;

/// A memory plan for one binding of the symbols.
pub(super) struct MemPlan {
    /// Bytes of the arena.
    size: u64,
    /// Bytes of all planned buffers together.
    total: u64,
    /// What each native step needs under this binding, by position.
    resolved: Vec<Option<Resolved>>,
    /// Per position: a concat whose operands its producers wrote in place (nothing to run).
    skip: Vec<bool>,
}

/// A native step's sizes under one binding of the symbols.
pub(super) struct Resolved {
    /// The kernel's dim table.
    dims: Vec<i64>,
    /// Elements of each of the kernel's buffers.
    pub(super) lens: Vec<usize>,
    /// Shapes of its results.
    pub(super) out_shapes: Vec<std::sync::Arc<[usize]>>,
    /// Some result has no elements (then nothing runs).
    empty: bool,
    /// For each stage: how many parts threads split it into and the parallel extent.
    parts: Vec<(i64, i64)>,
    /// For each of the kernel's buffers, its arena offset: planned results (not outputs of
    /// the graph) and scratch.
    offsets: Vec<Option<u64>>,
}

impl Executable {
    /// The memory plan of the steps in `seg` for a binding of the symbols (made once per
    /// segment and binding): its kernels' sizes and its own arena.
    fn plan(
        &self,
        seg: std::ops::Range<usize>,
        env: &HashMap<String, i64>,
    ) -> Result<std::sync::Arc<MemPlan>, ExecError> {
        let mut key: Vec<(String, i64)> = env.iter().map(|(k, v)| (k.clone(), *v)).collect();
        key.sort();
        let key = (seg.start, key);
        if let Some(p) = self
            .plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(p.clone());
        }
        let lay = &self.layout;
        // Checks whose symbols are all bound (later segments bind the rest).
        let bound = |s: &ir::Shape| {
            s.dims()
                .iter()
                .all(|d| d.symbols().iter().all(|x| env.contains_key(&**x)))
        };
        for c in lay
            .checks
            .iter()
            .filter(|c| bound(&c.have) && bound(&c.want))
        {
            let eval = |s: &ir::Shape| {
                s.eval(&|name| env.get(name).copied())
                    .map(|d| d.iter().map(|&x| x.max(0) as usize).collect::<Vec<usize>>())
                    .map_err(|e| ExecError::Node {
                        node: c.label.clone(),
                        message: e.to_string(),
                    })
            };
            let (got, need) = (eval(&c.have)?, eval(&c.want)?);
            interp::refine_check(&c.have, &c.want, &got, &need).map_err(|message| {
                ExecError::Node {
                    node: c.label.clone(),
                    message,
                }
            })?;
        }
        let mut is_output = vec![false; lay.n_slots];
        for &s in &lay.output_slots {
            is_output[s] = true;
        }
        // Bytes of `n` elements of `dtype`, at most 8 GiB.
        let size = |what: &dyn Fn() -> String, dtype: DType, n: i64| {
            let bytes = u64::try_from(n)
                .ok()
                .and_then(|n| dtype.storage_bytes(n))
                .ok_or_else(|| format!("{} has {n} elements", what()))?;
            if bytes > 8 << 30 {
                return Err(format!("{} would take {bytes} bytes", what()));
            }
            Ok(bytes)
        };
        let threads = 1 + self.threads.as_ref().map_or(0, |p| p.len());
        let mut resolved = Vec::with_capacity(self.steps.len());
        for (pos, step) in self.steps.iter().enumerate() {
            resolved.push(match step {
                _ if !seg.contains(&pos) => None,
                Step::Native {
                    lowered, stages, ..
                } => Some(resolve(lowered, stages, env, threads).map_err(|message| {
                    ExecError::Node {
                        node: lay.labels[pos].clone(),
                        message,
                    }
                })?),
                _ => None,
            });
        }
        let places = InPlace::of(lay, &self.steps, &seg, &resolved, &is_output);
        // Planned buffers as (position, kernel buffer); a value placed in an in-place concat's
        // result (`placed`: its buffer, its slot, the slot holding it and its offset there) has no
        // buffer of its own, and the holding slot's lives from the first of its parts'
        // makers to the last of their readers.
        let (mut items, mut keys, mut placed) = (Vec::new(), Vec::new(), Vec::new());
        let mut holder: HashMap<usize, usize> = HashMap::new();
        for (pos, step) in self.steps.iter().enumerate() {
            let Step::Native { lowered, .. } = step else {
                continue;
            };
            if !seg.contains(&pos) {
                continue;
            }
            let fail = |message: String| ExecError::Node {
                node: lay.labels[pos].clone(),
                message,
            };
            let n_args = lay.operand_slots[pos].len();
            let mut result = 0;
            for (b, buf) in lowered.kernel.bufs.iter().enumerate().skip(n_args) {
                let (bytes, end) = match buf.kind {
                    BufKind::Output => {
                        let i = result;
                        result += 1;
                        let slot = lay.first_slot[pos] + i;
                        if is_output[slot] {
                            continue;
                        }
                        let (root, off) = places.root(slot);
                        if root != slot {
                            placed.push(((pos, b), slot, root, off));
                            continue;
                        }
                        holder.insert(slot, items.len());
                        // Its length under this binding, as the step's resolution has it
                        // (which checked it against the result's shape).
                        let lens = &resolved[pos].as_ref().expect("native steps resolve").lens;
                        let what = || format!("result {i}");
                        let bytes = size(&what, buf.dtype, lens[b] as i64).map_err(fail)?;
                        (bytes, lay.last_use[slot])
                    }
                    // A skipped concat uses no scratch.
                    BufKind::Scratch if places.skip[pos] => continue,
                    BufKind::Scratch => {
                        // Its length under this binding, as the step's resolution has it.
                        let lens = &resolved[pos].as_ref().expect("native steps resolve").lens;
                        let what = || format!("buffer {}", buf.name);
                        (size(&what, buf.dtype, lens[b] as i64).map_err(fail)?, pos)
                    }
                    _ => continue,
                };
                // Values read past the segment stay in its arena, which lives to the end.
                items.push(crate::plan::Interval {
                    start: pos,
                    end: end.min(seg.end - 1),
                    bytes,
                });
                keys.push((pos, b));
            }
        }
        for &((pos, _), slot, root, _) in &placed {
            let it = &mut items[holder[&root]];
            it.start = it.start.min(pos);
            it.end = it.end.max(lay.last_use[slot].min(seg.end - 1));
        }
        let p = crate::plan::plan(&items);
        for ((pos, b), &off) in keys.iter().zip(&p.offsets) {
            if let Some(r) = &mut resolved[*pos] {
                r.offsets[*b] = Some(off);
            }
        }
        for ((pos, b), _, root, off) in placed {
            let at = p.offsets[holder[&root]] + off;
            if let Some(r) = &mut resolved[pos] {
                r.offsets[b] = Some(at);
            }
        }
        let mp = std::sync::Arc::new(MemPlan {
            size: p.size,
            total: p.total,
            resolved,
            skip: places.skip,
        });
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: data-dependent sizes can make a new binding every run.
        if plans.len() >= MAX_PLANS {
            plans.clear();
        }
        plans.insert(key, mp.clone());
        Ok(mp)
    }

    pub(super) fn run_here(
        &self,
        inputs: &[Tensor],
        bindings: &HashMap<String, i64>,
        timed: bool,
    ) -> Result<(Vec<Tensor>, RunStats), ExecError> {
        let params: Vec<(&str, &TensorType)> = self
            .layout
            .params
            .iter()
            .map(|(n, t)| (n.as_str(), t))
            .collect();
        let mut env = interp::bind_params(&params, inputs, bindings)?;
        self.check_guards(inputs)?;
        let mut arenas = Vec::new();
        let result = self.run_in(inputs, &mut env, &mut arenas, timed);
        for a in arenas {
            self.arenas.give(a);
        }
        result
    }

    /// Runs the steps segment by segment: each gets its memory plan under the symbols bound
    /// so far and an arena of its own (held in `arenas` to the end of the run); a segment's
    /// last step may define symbols (a data-dependent result), bound before the next.
    fn run_in(
        &self,
        inputs: &[Tensor],
        env: &mut HashMap<String, i64>,
        arenas: &mut Vec<Vec<u128>>,
        timed: bool,
    ) -> Result<(Vec<Tensor>, RunStats), ExecError> {
        let lay = &self.layout;
        let mut values: Vec<Option<Loc>> = (0..lay.n_slots).map(|_| None).collect();
        let mut stats = RunStats::default();
        let in_bytes: u64 = inputs.iter().map(bytes).sum();
        // Bytes of tensors held outside the arenas: outputs and interpreter results.
        let mut live: u64 = 0;
        for (slot, t) in lay.param_slots.iter().zip(inputs) {
            if let Some(i) = *slot {
                values[i] = Some(Loc::Tensor(t.clone()));
            }
        }
        for seg in &self.segments {
            let plan = self.plan(seg.clone(), env)?;
            let mut arena = self.arenas.take(plan.size).map_err(|e| ExecError::Node {
                node: "the memory plan".into(),
                message: e,
            })?;
            let base = {
                let p = arena.as_mut_ptr() as *mut u8;
                // SAFETY: the arena has ALIGN bytes of slack for this.
                unsafe { p.add(p.align_offset(crate::plan::ALIGN as usize)) }
            };
            // The arena's elements stay where they are when the vector moves.
            arenas.push(arena);
            stats.planned_bytes += plan.size;
            stats.total_bytes += plan.total;
            stats.peak_bytes = stats.peak_bytes.max(in_bytes + stats.planned_bytes + live);
            let counts = (&mut stats, &mut live, in_bytes);
            self.run_segment(seg.clone(), env, (&plan, base), &mut values, counts, timed)?;
            // Symbols the segment's last step defined.
            let Some(last) = seg.end.checked_sub(1).filter(|_| !seg.is_empty()) else {
                continue;
            };
            if self.defines[last] {
                let outs = (0..lay.types[last].len())
                    .map(|i| {
                        let l =
                            loc(&values, lay.first_slot[last] + i).map_err(|e| e.to_string())?;
                        l.tensor()
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .and_then(|t| interp::bind_results(env, &lay.types[last], &t));
                outs.map_err(|message| ExecError::Node {
                    node: lay.labels[last].clone(),
                    message,
                })?;
            }
        }
        let outs = lay
            .output_slots
            .iter()
            .map(|&i| {
                loc(&values, i)?
                    .tensor()
                    .map_err(|message| ExecError::Node {
                        node: "the outputs".into(),
                        message,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok((outs, stats))
    }

    /// Runs the steps of one segment under its plan; `live` counts the bytes of tensors held
    /// outside the arenas, `in_bytes` those of the inputs.
    fn run_segment(
        &self,
        seg: std::ops::Range<usize>,
        env: &HashMap<String, i64>,
        (plan, base): (&MemPlan, *mut u8),
        values: &mut [Option<Loc>],
        (stats, live, in_bytes): (&mut RunStats, &mut u64, u64),
        timed: bool,
    ) -> Result<(), ExecError> {
        let lay = &self.layout;
        for pos in seg {
            let step = &self.steps[pos];
            let types = &lay.types[pos];
            let fail = |message: String| ExecError::Node {
                node: lay.labels[pos].clone(),
                message,
            };
            // Like the interpreter, empty results need no computation.
            let empty = match &plan.resolved[pos] {
                Some(r) => r.empty,
                // Steps that define symbols compute their sizes.
                None if self.defines[pos] => false,
                None => {
                    !types.is_empty()
                        && types.iter().all(|t| {
                            t.shape
                                .dims()
                                .iter()
                                .any(|d| d.eval(&|s| env.get(s).copied()) == Ok(0))
                        })
                }
            };
            let started = timed.then(std::time::Instant::now);
            let outs: Outs = match step {
                Step::Param => continue,
                Step::Constant(c) => smallvec::smallvec![Loc::Const(c.clone())],
                _ if empty => types
                    .iter()
                    .map(|t| {
                        let dims = t
                            .shape
                            .eval(&|s| env.get(s).copied())
                            .map_err(|e| fail(e.to_string()))?;
                        let dims = dims.iter().map(|&d| d.max(0) as usize).collect();
                        Ok(Loc::Tensor(Tensor::zeros(t.dtype, dims)))
                    })
                    .collect::<Result<_, ExecError>>()?,
                // An in-place concat: its operands are its result already.
                Step::Native { lowered, .. } if plan.skip[pos] => {
                    let r = plan.resolved[pos]
                        .as_ref()
                        .ok_or_else(|| fail("no plan".into()))?;
                    let b = (lowered.kernel.bufs.iter())
                        .position(|b| b.kind == BufKind::Output)
                        .ok_or_else(|| fail("a concat without a result".into()))?;
                    let (Some(off), Some(shape)) = (r.offsets[b], r.out_shapes.first()) else {
                        return Err(fail("an in-place concat without its place".into()));
                    };
                    smallvec::smallvec![Loc::Arena {
                        addr: base.wrapping_add(off as usize) as usize,
                        dtype: lowered.kernel.bufs[b].dtype,
                        shape: shape.clone(),
                    }]
                }
                Step::Native {
                    lowered,
                    consts,
                    stages,
                    explain,
                } => {
                    let module = self
                        .compiled
                        .as_deref()
                        .ok_or_else(|| fail("no code for the kernel".into()))?;
                    let run = Kernel {
                        module,
                        lowered,
                        consts,
                        stages,
                    };
                    let args: SmallVec<[&Loc; 8]> = lay.operand_slots[pos]
                        .iter()
                        .map(|&i| loc(values, i))
                        .collect::<Result<_, _>>()?;
                    let r = plan.resolved[pos]
                        .as_ref()
                        .ok_or_else(|| fail("no plan".into()))?;
                    let call = || run.call(&args, r, base);
                    let done = match self.alone[pos] {
                        true => kernel::threads::with_helpers(None, call),
                        false => call(),
                    };
                    match done {
                        Ok(outs) => outs,
                        Err(m) => {
                            return Err(fail(explain_failure(explain.as_ref(), &args, env, m)))
                        }
                    }
                }
                Step::Interp { graph, .. } => {
                    let args: Vec<Tensor> = lay.operand_slots[pos]
                        .iter()
                        .map(|&i| loc(values, i)?.tensor().map_err(fail))
                        .collect::<Result<_, _>>()?;
                    let outs = interpret_node(graph, &args, env).map_err(fail)?;
                    stats.total_bytes += outs.iter().map(bytes).sum::<u64>();
                    outs.into_iter().map(Loc::Tensor).collect()
                }
                Step::Loop { body, op, .. } => {
                    let args: Vec<Tensor> = lay.operand_slots[pos]
                        .iter()
                        .map(|&i| loc(values, i)?.tensor().map_err(fail))
                        .collect::<Result<_, _>>()?;
                    let outs = run_loop(body, op, &lay.types[pos], &args, env).map_err(fail)?;
                    stats.total_bytes += outs.iter().map(bytes).sum::<u64>();
                    outs.into_iter().map(Loc::Tensor).collect()
                }
            };
            let own = !matches!(step, Step::Constant(_));
            if let Some(t) = started {
                if own {
                    let secs = t.elapsed().as_secs_f64();
                    stats.steps.push((lay.labels[pos].clone(), secs));
                }
            }
            for (i, l) in outs.into_iter().enumerate() {
                if let (Loc::Tensor(t), true) = (&l, own) {
                    *live += bytes(t);
                }
                values[lay.first_slot[pos] + i] = Some(l);
            }
            stats.peak_bytes = stats.peak_bytes.max(in_bytes + stats.planned_bytes + *live);
            // Drop what no later node reads (counting only what this run created).
            for &(i, counted) in &lay.dead_slots[pos] {
                if let Some(Loc::Tensor(t)) = values[i].take() {
                    if counted {
                        *live = live.saturating_sub(bytes(&t));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Runs a `loop` step: its body executable once per step, under the outer binding.
fn run_loop(
    body: &Executable,
    op: &Op,
    types: &[TensorType],
    args: &[Tensor],
    env: &HashMap<String, i64>,
) -> Result<Vec<Tensor>, String> {
    let lookup = |s: &str| env.get(s).copied();
    let shape = crate::looping::LoopShape::of(op, &|d| d.eval(&lookup).map_err(|e| e.to_string()))?;
    let stacked = types
        .iter()
        .skip(shape.carry)
        .map(|t| {
            let dims = t.shape.eval(&lookup).map_err(|e| e.to_string())?;
            Ok((t.dtype, dims.iter().map(|&d| d.max(0) as usize).collect()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    crate::looping::run(&shape, args, &stacked, &mut |step| {
        body.run_with(step, env)
            .map_err(|e| format!("in its body: {e}"))
    })
}

/// Why a kernel stopped at a check, as precisely as can be said: the reference interpreter
/// runs the node on the same operands and names the inner node and the value (the kernel's
/// own code message when there is no graph, or the interpreter finds nothing wrong).
fn explain_failure(
    graph: Option<&Graph>,
    args: &[&Loc],
    env: &HashMap<String, i64>,
    code_message: String,
) -> String {
    let Some(g) = graph else {
        return code_message;
    };
    let Ok(args) = args
        .iter()
        .map(|l| l.tensor())
        .collect::<Result<Vec<Tensor>, _>>()
    else {
        return code_message;
    };
    match interpret_node(g, &args, env) {
        Err(e) => e,
        Ok(_) => code_message,
    }
}

/// A compiled kernel ready to call.
struct Kernel<'a> {
    module: &'a dyn Code,
    lowered: &'a Lowered,
    consts: &'a [(BufId, Const)],
    stages: &'a [NativeStage],
}

/// The kernel's buffer pointers, shared by the threads of a parallel stage.
struct Ptrs<'a>(&'a [*mut u8]);

// SAFETY: the pointers are only passed to kernel stages; the iterations of a parallel stage
// that different threads run write disjoint elements (the lowering marks a loop parallel only
// then), and stages are joined before the next starts.
unsafe impl Send for Ptrs<'_> {}
unsafe impl Sync for Ptrs<'_> {}

impl Ptrs<'_> {
    fn get(&self) -> *const *mut u8 {
        self.0.as_ptr()
    }
}

/// Scalar operations (as `kernel::stages::cost` counts them, transcendental functions
/// weighing 16) below which a parallel stage runs on one thread: around a microsecond of
/// work, a few times what handing half of it to a helper costs.
const PARALLEL_MIN_COST: f64 = 32768.0;

/// Bytes a kernel's buffers must hold together before its stages split over threads: below,
/// the data sits in the calling core's cache, and a helper's half crosses to the other core
/// (its inputs there, its results back) for longer than the half of the work takes — a small
/// Whisper encoder's layer norms and attention products (16 to 48 KiB a kernel, costs above
/// [`PARALLEL_MIN_COST`]) ran 1.3 to 1.9 times slower split, the model 0.083 -> 0.099 ms.
const PARALLEL_MIN_BYTES: u64 = 64 << 10;

/// How many times more a stage that only copies (every store's value a plain load) must cost
/// to be split: its work is moving lines, and a helper's half moves them through the other
/// core's cache (an LSTM's 64 KB output copy, cost 49K, took 16 µs split and 4 µs on one
/// thread).
const COPY_FACTOR: f64 = 8.0;

/// Whether every statement of `body` is a loop, index arithmetic (a variable set to what
/// loads nothing: a stage's row from its range) or a store of a loaded value.
fn only_copies(body: &[kernel::Stmt]) -> bool {
    let mut copies = true;
    for s in body {
        s.walk(&mut |s| {
            copies &= match s {
                kernel::Stmt::Loop { .. } => true,
                kernel::Stmt::Set { value, .. } => {
                    let mut loads = false;
                    value.walk(&mut |e| loads |= matches!(e, kernel::Expr::Load { .. }));
                    !loads
                }
                kernel::Stmt::Store { value, .. } => matches!(value, kernel::Expr::Load { .. }),
                _ => false,
            }
        });
    }
    copies
}

/// A native step's sizes and thread split under the symbol values `env`.
fn resolve(
    l: &Lowered,
    stages: &[NativeStage],
    env: &HashMap<String, i64>,
    threads: usize,
) -> Result<Resolved, String> {
    let k = &l.kernel;
    let dims: Vec<i64> = k
        .dims
        .iter()
        .map(|d| d.eval(&|s| env.get(s).copied()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let lens = k
        .bufs
        .iter()
        .map(|b| {
            let n = b
                .len
                .eval(&|s| env.get(s).copied())
                .map_err(|e| e.to_string())?;
            usize::try_from(n).map_err(|_| format!("buffer {} has {n} elements", b.name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out_shapes: Vec<std::sync::Arc<[usize]>> =
        l.out_shapes(env)?.into_iter().map(Into::into).collect();
    // Each result's shape has its buffer's length: results are read back by their shapes.
    let out_lens = k
        .bufs
        .iter()
        .zip(&lens)
        .filter(|(b, _)| b.kind == BufKind::Output);
    for (i, ((_, &n), shape)) in out_lens.zip(&out_shapes).enumerate() {
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(n) {
            return Err(format!("result {i} has shape {shape:?} but {n} elements"));
        }
    }
    let empty =
        !out_shapes.is_empty() && out_shapes.iter().all(|s| s.iter().product::<usize>() == 0);
    // Bytes of every buffer the kernel touches (operands, results, scratch, packed copies).
    let data: u64 = k
        .bufs
        .iter()
        .zip(&lens)
        .map(|(b, &n)| b.dtype.storage_bytes(n as u64).unwrap_or(u64::MAX))
        .fold(0, u64::saturating_add);
    let mut parts = Vec::new();
    for s in stages {
        parts.push(match &s.parallel {
            None => (1, 0),
            Some(extent) => {
                let n = kernel::stages::eval(extent, &dims)
                    .ok_or("a parallel loop's extent cannot be evaluated")?
                    .max(0);
                let mut full = dims.clone();
                full.extend([0, n]);
                let cost = kernel::stages::cost(&s.body, &full);
                let least = match only_copies(&s.body) {
                    true => PARALLEL_MIN_COST * COPY_FACTOR,
                    false => PARALLEL_MIN_COST,
                };
                // One contiguous range of iterations a thread: lowering orders iterations
                // so that consecutive stages' ranges touch the same data (a blocked conv's
                // runs of rows, say), and the thread that wrote a range finds it in its own
                // cache. (Four parts a thread, claimed in turn, scattered the ranges over the
                // cores: a MobileNetV3's two-thread run took 1.21 ms, with these 1.14.)
                let p = if threads > 1 && n > 1 && cost >= least && data >= PARALLEL_MIN_BYTES {
                    n.min(threads as i64)
                } else {
                    1
                };
                (p, n)
            }
        });
    }
    Ok(Resolved {
        dims,
        offsets: vec![None; lens.len()],
        lens,
        out_shapes,
        empty,
        parts,
    })
}

impl Kernel<'_> {
    /// Runs the stages in order, parallel ones split over the pool's threads.
    fn stages(&self, ptrs: &[*mut u8], r: &Resolved) -> Result<(), String> {
        let p = Ptrs(ptrs);
        let n = r.dims.len();
        let call = |f: KernelFn, lo: i64, hi: i64| -> u32 {
            // The dim table and the loop range (on the stack unless the table is long).
            let mut small = [0i64; 32];
            let mut large = Vec::new();
            let d: &mut [i64] = if n + 2 <= small.len() {
                &mut small[..n + 2]
            } else {
                large.resize(n + 2, 0);
                &mut large
            };
            d[..n].copy_from_slice(&r.dims);
            d[n] = lo;
            d[n + 1] = hi;
            // SAFETY: see `call`; `0 <= lo <= hi <= extent` of the parallel loop.
            unsafe { f(p.get(), d.as_ptr()) }
        };
        for (s, &(parts, n)) in self.stages.iter().zip(&r.parts) {
            let f = self.module.function(s.func);
            let code = if parts <= 1 {
                call(f, 0, n)
            } else {
                use std::sync::atomic::{AtomicU32, Ordering};
                let first = AtomicU32::new(0);
                kernel::threads::parallel_for(parts as usize, |w| {
                    let w = w as i64;
                    let c = call(f, n * w / parts, n * (w + 1) / parts);
                    if c != 0 {
                        let _ = first.compare_exchange(0, c, Ordering::Relaxed, Ordering::Relaxed);
                    }
                });
                first.into_inner()
            };
            if code != 0 {
                return Err(codes::message(code).to_string());
            }
        }
        Ok(())
    }

    /// Runs the kernel of node `id` on its operands: returns where its results are (the
    /// arena, or tensors of their own for the graph's outputs).
    fn call(&self, args: &[&Loc], r: &Resolved, base: *mut u8) -> Result<Outs, String> {
        let l = self.lowered;
        let k = &l.kernel;
        // Operands must be exactly as large as the kernel assumes: it does not check loads.
        for (i, a) in args.iter().enumerate() {
            let n: usize = a.shape().iter().product();
            if n != r.lens[i] || a.dtype() != k.bufs[i].dtype {
                return Err(format!(
                    "operand {i} is {}{:?}, the kernel expects {} elements of {}",
                    a.dtype(),
                    a.shape(),
                    r.lens[i],
                    k.bufs[i].dtype
                ));
            }
        }
        let shapes = &r.out_shapes;
        let mut ptrs: SmallVec<[*mut u8; 16]> =
            smallvec::smallvec![std::ptr::null_mut(); k.bufs.len()];
        for (i, a) in args.iter().enumerate() {
            ptrs[i] = a.ptr();
        }
        let mut outs: SmallVec<[Option<Loc>; 2]> = SmallVec::new();
        let mut owned = Vec::new();
        for (i, b) in k.bufs.iter().enumerate().skip(args.len()) {
            if let Some((_, c)) = self.consts.iter().find(|(c, _)| *c == i) {
                let n: usize = c.shape().iter().product();
                if n != r.lens[i] || c.dtype() != b.dtype {
                    return Err(format!(
                        "constant buffer {} is {}{:?}, the kernel expects {} elements of {}",
                        b.name,
                        c.dtype(),
                        c.shape(),
                        r.lens[i],
                        b.dtype
                    ));
                }
                ptrs[i] = c.ptr();
                continue;
            }
            match b.kind {
                BufKind::Output => {
                    let res = outs.len();
                    let shape = shapes.get(res).ok_or("a result without a shape")?;
                    match r.offsets[i] {
                        Some(off) => {
                            ptrs[i] = base.wrapping_add(off as usize);
                            outs.push(Some(Loc::Arena {
                                addr: base.wrapping_add(off as usize) as usize,
                                dtype: b.dtype,
                                shape: shape.clone(),
                            }));
                        }
                        None => {
                            // An output of the graph: a tensor of its own, built after the
                            // call (at least one element: guarded loads read index 0).
                            let mut d = Data::zeros(b.dtype, r.lens[i].max(1));
                            ptrs[i] = mut_ptr(&mut d);
                            owned.push((res, d, shape.to_vec()));
                            outs.push(None);
                        }
                    }
                }
                _ => {
                    let off =
                        r.offsets[i].ok_or_else(|| format!("buffer {} has no memory", b.name))?;
                    ptrs[i] = base.wrapping_add(off as usize);
                }
            }
        }
        // Every pointer addresses a live buffer of the length and dtype the kernel was lowered
        // for (checked above for operands; planned or allocated here for the rest); the kernel
        // writes only output and scratch buffers, which nothing else references during the call.
        self.stages(&ptrs, r)?;
        for (r, d, shape) in owned {
            let t = if shape.iter().product::<usize>() == 0 {
                Tensor::zeros(d.dtype(), shape)
            } else {
                Tensor::new(shape, d).map_err(|e| format!("kernel result: {e}"))?
            };
            outs[r] = Some(Loc::Tensor(t));
        }
        Ok(outs.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread split of kernel `text`'s stages at 2 threads (its one output of `n`).
    fn parts(text: &str, n: i64) -> Vec<i64> {
        let k = kernel::parse::parse_kernel(text).unwrap();
        let (stages, _) = NativeStage::split(&k, 0);
        let l = Lowered {
            kernel: k,
            consts: Vec::new(),
            outputs: vec![ir::Shape::new(vec![ir::Dim::constant(n)])],
        };
        let r = resolve(&l, &stages, &HashMap::new(), 2).unwrap();
        r.parts.iter().map(|&(p, _)| p).collect()
    }

    #[test]
    fn copies_split_only_when_much_larger_than_arithmetic() {
        // As large a stage by the cost model: the arithmetic one splits, the copy stays.
        let copy = "kernel @k(in x: f32[16384], out y: f32[16384]) {
  for v0 in 0..32 parallel {
    for v1 in 0..512 vector(4) {
      y[((v0 * 512) + v1)] = x[((v0 * 512) + v1)]
    }
  }
}";
        let arith = copy.replace(
            "= x[((v0 * 512) + v1)]",
            "= mul(x[((v0 * 512) + v1)], 2.0:f32)",
        );
        assert_eq!(parts(copy, 16384), vec![1]);
        assert!(parts(&arith, 16384)[0] > 1);
        // A copy eight times larger splits.
        let big = copy.replace("16384", "131072").replace("0..32 ", "0..256 ");
        assert!(parts(&big, 131072)[0] > 1);
    }

    /// A kernel whose buffers hold less than PARALLEL_MIN_BYTES stays on one thread however
    /// many operations its stages count (its data is the calling core's); four times the data
    /// splits.
    #[test]
    fn little_data_stays_on_one_thread() {
        let small = "kernel @k(in x: f32[4096], out y: f32[4096]) {
  for v0 in 0..8 parallel {
    for v1 in 0..512 vector(4) {
      y[((v0 * 512) + v1)] = exp(x[((v0 * 512) + v1)])
    }
  }
}";
        assert_eq!(parts(small, 4096), vec![1]);
        let large = small.replace("4096", "16384").replace("0..8 ", "0..32 ");
        assert_eq!(parts(&large, 16384), vec![2]);
    }

    /// A stage worth splitting splits into one contiguous range of iterations a thread (two
    /// here), however many iterations it has: what a thread's range of one stage wrote, its
    /// range of the next reads.
    #[test]
    fn stages_split_into_one_range_a_thread() {
        let stage = "kernel @k(in x: f32[16384], out y: f32[16384]) {
  for v0 in 0..32 parallel {
    for v1 in 0..512 vector(4) {
      y[((v0 * 512) + v1)] = mul(x[((v0 * 512) + v1)], 2.0:f32)
    }
  }
}";
        assert_eq!(parts(stage, 16384), vec![2]);
        let three = stage
            .replace("0..32 ", "0..3 ")
            .replace("0..512 ", "0..5461 ");
        assert_eq!(parts(&three, 16384), vec![2]);
    }
}
