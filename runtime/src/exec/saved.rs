//! Saved plans: what `Executable::save` writes and `Executable::from_saved` reads back (the
//! serde types of a plan, weights written once and aligned, the checks a loaded plan passes).

use super::*;
use kernel::plan::{Plan, Step as SavedStep, WeightRef};

/// Weights being saved: each tensor's little-endian bytes once (tensors sharing data are
/// stored once), 64-byte aligned.
#[derive(Default)]
struct WeightWriter {
    bytes: Vec<u8>,
    seen: HashMap<(usize, usize, DType), WeightRef>,
}

impl WeightWriter {
    fn add(&mut self, t: &Tensor) -> Result<WeightRef, ExecError> {
        // Tensors sharing data share their `Data` (behind an `Arc`).
        let key = (t.data() as *const Data as usize, t.numel(), t.dtype());
        self.add_keyed(t, key)
    }

    /// A constant by its kind: a tensor, or lines (keyed by their address, which the
    /// executable keeps alive: the tensor made of them is a temporary).
    fn constant(&mut self, c: &Const) -> Result<WeightRef, ExecError> {
        match c {
            Const::Tensor(t) => self.add(t),
            Const::Lines { lines, .. } => {
                let t = c.tensor().map_err(ExecError::Plan)?;
                self.add_keyed(&t, (lines.as_ptr() as usize, t.numel(), t.dtype()))
            }
            Const::Mapped { .. } | Const::Absent { .. } => Err(ExecError::Plan(
                "a loaded executable is saved by copying its artifact".into(),
            )),
        }
    }

    fn add_keyed(
        &mut self,
        t: &Tensor,
        key: (usize, usize, DType),
    ) -> Result<WeightRef, ExecError> {
        if let Some(w) = self.seen.get(&key).filter(|_| t.numel() > 0) {
            return Ok(WeightRef {
                shape: saved_shape(t.shape()),
                ..w.clone()
            });
        }
        let data = crate::aot::encode(t).ok_or_else(|| {
            ExecError::Plan(format!("a constant of {} cannot be saved", t.dtype()))
        })?;
        self.bytes.resize(self.bytes.len().div_ceil(64) * 64, 0);
        let w = WeightRef {
            dtype: t.dtype(),
            shape: saved_shape(t.shape()),
            offset: self.bytes.len() as u64,
            bytes: data.len() as u64,
        };
        self.bytes.extend(data);
        self.seen.insert(key, w.clone());
        Ok(w)
    }
}

/// A shape as saved (fixed-width dims).
fn saved_shape(shape: &[usize]) -> Vec<u64> {
    shape.iter().map(|&d| d as u64).collect()
}

/// A saved shape back (`None` when a dim does not fit this machine).
fn loaded_shape(shape: &[u64]) -> Option<Vec<usize>> {
    shape.iter().map(|&d| usize::try_from(d).ok()).collect()
}

/// Dtypes kernels read in place as the saved bytes are laid out (others are decoded; so is
/// `bool`, whose bytes must be 0 or 1 before a `Vec<bool>` may hold them).
pub(super) fn in_place(d: DType) -> bool {
    use DType::*;
    matches!(d, F32 | F64 | I8 | I16 | I32 | I64 | U8 | U16 | U32 | U64)
        && cfg!(target_endian = "little")
}

impl Executable {
    /// The plan (see the module docs) as bytes, and the weights it refers to: every constant
    /// a run reads, little-endian, 64-byte aligned. The same executable gives the same bytes.
    pub fn save(&self) -> Result<(Vec<u8>, Vec<u8>), ExecError> {
        let mut w = WeightWriter::default();
        let constant = |w: &mut WeightWriter, c: &Const| w.constant(c);
        let mut steps = Vec::with_capacity(self.steps.len());
        for (pos, s) in self.steps.iter().enumerate() {
            steps.push(match s {
                Step::Param => SavedStep::Param,
                Step::Constant(c) if !self.is_read(pos) => SavedStep::Absent {
                    dtype: c.dtype(),
                    shape: saved_shape(c.shape()),
                },
                Step::Constant(c) => SavedStep::Constant(constant(&mut w, c)?),
                Step::Native {
                    lowered, consts, ..
                } => {
                    let derived = kernel::derived(&lowered.kernel);
                    SavedStep::Native {
                        kernel: lowered.kernel.clone(),
                        outputs: lowered.outputs.clone(),
                        consts: consts
                            .iter()
                            .filter(|(b, _)| !derived.contains(b))
                            .map(|(b, c)| Ok((*b, constant(&mut w, c)?)))
                            .collect::<Result<_, ExecError>>()?,
                        derived,
                    }
                }
                Step::Interp { graph, why } => SavedStep::Interp {
                    graph: ir::print_graph(graph),
                    why: why.clone(),
                },
                // Artifacts keep a loop's node and step it on the interpreter.
                Step::Loop { graph, .. } => SavedStep::Interp {
                    graph: ir::print_graph(graph),
                    why: "a loop (artifacts interpret loops)".into(),
                },
            });
        }
        let saved = Plan {
            layout: &self.layout,
            steps,
            kernels: self.compiled.as_ref().map_or(0, |c| c.len()),
        };
        let plan = postcard::to_stdvec(&saved).map_err(|e| ExecError::Plan(e.to_string()))?;
        Ok((plan, w.bytes))
    }

    /// An executable from a plan made by [`Executable::save`], the code of its kernels
    /// (`code(n)` gives the `n` functions the plan has, when it has any), and the saved
    /// weights: `backing[weights]`, read in place for as long as the executable lives.
    /// Everything the runtime indexes by is checked, so damaged plans are errors; the plan
    /// and the code must come from one save (an artifact's checksum covers both).
    pub fn from_saved(
        plan: &[u8],
        code: &mut dyn FnMut(usize) -> Result<Box<dyn Code>, ExecError>,
        backing: SharedBytes,
        weights: std::ops::Range<usize>,
        opts: &CompileOptions,
    ) -> Result<Executable, ExecError> {
        let bad = |m: String| ExecError::Plan(m);
        let saved: Plan =
            postcard::from_bytes(plan).map_err(|e| bad(format!("it does not decode ({e})")))?;
        let code = match saved.kernels {
            0 => None,
            n => Some(code(n)?),
        };
        let n_code = code.as_ref().map_or(0, |c| c.len());
        if saved.kernels != n_code {
            return Err(bad(format!(
                "it has {} kernels, the code {n_code}",
                saved.kernels
            )));
        }
        saved.layout.check(&saved.steps).map_err(ExecError::Plan)?;
        let all: &[u8] = (*backing).as_ref();
        let w = all
            .get(weights.clone())
            .ok_or_else(|| bad("the weights lie outside the bytes".into()))?;
        let constant = |r: &WeightRef| -> Result<Const, ExecError> {
            let shape = loaded_shape(&r.shape)
                .ok_or_else(|| bad("a constant's shape does not fit".into()))?;
            let expected = shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
                .and_then(|n| crate::aot::encoded_len(r.dtype, n));
            if expected != Some(r.bytes) {
                return Err(bad("a constant's size does not fit its shape".into()));
            }
            let at = usize::try_from(r.offset).ok();
            let len = usize::try_from(r.bytes).ok();
            let bytes = at
                .zip(len)
                .and_then(|(at, len)| w.get(at..at.checked_add(len)?))
                .ok_or_else(|| bad("a constant lies outside the weights".into()))?;
            let align = (r.dtype.bits() as usize / 8).max(1);
            if in_place(r.dtype) && (bytes.as_ptr() as usize).is_multiple_of(align) {
                return Ok(Const::Mapped {
                    addr: bytes.as_ptr() as usize,
                    dtype: r.dtype,
                    shape,
                });
            }
            crate::aot::decode(r.dtype, shape, bytes)
                .map(Const::Tensor)
                .ok_or_else(|| bad("a constant's bytes do not fit its type".into()))
        };
        let mut steps: Vec<Step> = Vec::with_capacity(saved.steps.len());
        // The step whose first result each slot is (constants come before their readers).
        let by_slot: HashMap<usize, usize> = saved
            .layout
            .first_slot
            .iter()
            .enumerate()
            .map(|(p, &s)| (s, p))
            .collect();
        // Stage functions are numbered as compiling numbered them.
        let mut n_funcs = 0;
        for (pos, s) in saved.steps.into_iter().enumerate() {
            let fail = |m: String| bad(format!("{}: {m}", saved.layout.labels[pos]));
            steps.push(match s {
                SavedStep::Param => Step::Param,
                SavedStep::Constant(r) => Step::Constant(constant(&r)?),
                SavedStep::Absent { dtype, shape } => Step::Constant(Const::Absent {
                    dtype,
                    shape: loaded_shape(&shape)
                        .ok_or_else(|| fail("a constant's shape does not fit".into()))?,
                }),
                SavedStep::Native {
                    kernel,
                    outputs,
                    consts,
                    derived,
                } => {
                    kernel.check_ids().map_err(|e| fail(e.to_string()))?;
                    let n_bufs = kernel.bufs.len();
                    let n_args = saved.layout.operand_slots[pos].len();
                    let results = kernel
                        .bufs
                        .iter()
                        .filter(|b| b.kind == BufKind::Output)
                        .count();
                    // Operands are read-only inputs; results as many as the node has.
                    if n_args > n_bufs
                        || kernel.bufs[..n_args]
                            .iter()
                            .any(|b| b.kind != BufKind::Input)
                        || results != saved.layout.types[pos].len()
                        || outputs.len() != results
                        || kernel
                            .bufs
                            .iter()
                            .any(|b| !kernel::loops::is_native(b.dtype))
                    {
                        return Err(fail("its kernel does not match the node".into()));
                    }
                    let (stages, ks) = NativeStage::split(&kernel, n_funcs);
                    n_funcs += ks.len();
                    if stages.is_empty() || stages.iter().any(|s| s.func >= n_code) {
                        return Err(fail("a stage has no code".into()));
                    }
                    // Constants fill input buffers past the operands, each once, of its dtype.
                    let mut filled = vec![false; n_bufs];
                    let mut list = Vec::with_capacity(consts.len());
                    for (b, r) in &consts {
                        let ok = kernel.bufs.get(*b).is_some_and(|buf| {
                            *b >= n_args && buf.kind == BufKind::Input && buf.dtype == r.dtype
                        });
                        if !ok || std::mem::replace(&mut filled[*b], true) {
                            return Err(fail("a constant does not fit its buffer".into()));
                        }
                        list.push((*b, constant(r)?));
                    }
                    // Derived constants, from the kernel's constants and constant operands
                    // (copied out of the weights only for kernels that have some).
                    if !derived.is_empty() {
                        let operands: Vec<Option<Tensor>> = saved.layout.operand_slots[pos]
                            .iter()
                            .map(|&slot| {
                                match by_slot
                                    .get(&slot)
                                    .filter(|&&p| p < pos)
                                    .and_then(|&p| steps.get(p))
                                {
                                    Some(Step::Constant(c)) => c.tensor().ok(),
                                    _ => None,
                                }
                            })
                            .collect();
                        let own: Vec<(BufId, Tensor)> = list
                            .iter()
                            .filter_map(|(b, c)| Some((*b, c.tensor().ok()?)))
                            .collect();
                        let known = |x: BufId| {
                            operands
                                .get(x)
                                .and_then(Option::as_ref)
                                .or_else(|| own.iter().find(|(y, _)| *y == x).map(|(_, t)| t))
                        };
                        for &b in &derived {
                            let ok = kernel.bufs.get(b).is_some_and(|buf| {
                                b >= n_args && buf.kind == BufKind::Input && buf.dtype == DType::F32
                            });
                            if !ok || std::mem::replace(&mut filled[b], true) {
                                return Err(fail(
                                    "a derived constant does not fit its buffer".into(),
                                ));
                            }
                            let t = kernel::derive(&kernel, b, &known)
                                .ok_or_else(|| fail("a derived constant cannot be made".into()))?;
                            list.push((b, Const::Tensor(t)));
                        }
                    }
                    let consts = list;
                    Step::Native {
                        lowered: Lowered {
                            kernel,
                            consts: Vec::new(),
                            outputs,
                        },
                        consts,
                        stages,
                        explain: None,
                    }
                }
                SavedStep::Interp { graph, why } => {
                    let graph = ir::parse_graph(&graph).map_err(|e| fail(e.to_string()))?;
                    if graph.outputs().len() != saved.layout.types[pos].len()
                        || graph.params().len() != saved.layout.operand_slots[pos].len()
                    {
                        return Err(fail("its graph does not match the node".into()));
                    }
                    Step::Interp { graph, why }
                }
            });
        }
        let (segments, defines) = saved.layout.segments();
        let alone = saved.layout.many_readers(MANY_READERS);
        Ok(Executable {
            graph: None,
            layout: saved.layout,
            steps,
            compiled: code,
            arenas: Arenas::default(),
            plans: Default::default(),
            segments,
            defines,
            alone,
            threads: threads_for(opts)?,
            _backing: Some(backing),
        })
    }

    /// Whether a run reads the value of the constant at `pos`: it is an output, or some step
    /// reads it other than as a kernel operand used only through a packed copy.
    fn is_read(&self, pos: usize) -> bool {
        let slot = self.layout.first_slot[pos];
        if self.layout.output_slots.contains(&slot) {
            return true;
        }
        self.steps.iter().enumerate().any(|(q, step)| {
            let operands = &self.layout.operand_slots[q];
            let mut reading = operands.iter().enumerate().filter(|&(_, &s)| s == slot);
            match step {
                Step::Native { lowered, .. } => {
                    reading.any(|(i, _)| kernel::stages::uses(&lowered.kernel.body, i))
                }
                _ => reading.next().is_some(),
            }
        })
    }
}
