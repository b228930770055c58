//! Concats in place: where a `concat`'s result is one run of its operands one after another
//! (every dim before the axis is 1: a batch-1 image's channels), the kernels making the
//! operands write them straight into their parts of the result and the concat step does
//! nothing — no copy of either side (SqueezeNet's fire modules, Inception's branches,
//! DenseNet's growing feature maps, whose concats of concats nest).

use std::collections::HashMap;

use kernel::loops::BufKind;

use super::run::Resolved;
use super::*;

/// Where a segment's in-place concats put their operands.
#[derive(Default)]
pub(super) struct InPlace {
    /// Per operand slot placed in a concat's result: that result's slot and the operand's
    /// byte offset in it.
    pub(super) parent: HashMap<usize, (usize, u64)>,
    /// Per position: a concat whose operands are in its result (nothing to run).
    pub(super) skip: Vec<bool>,
}

impl InPlace {
    /// The in-place concats of the steps in `seg` under their resolved sizes (`is_output`:
    /// the graph's outputs, which are tensors of their own and never placed).
    pub(super) fn of(
        lay: &Layout,
        steps: &[Step],
        seg: &std::ops::Range<usize>,
        resolved: &[Option<Resolved>],
        is_output: &[bool],
    ) -> InPlace {
        // Each planned result of a kernel in the segment: its position, dtype and bytes.
        let mut made: HashMap<usize, (usize, ir::DType, u64)> = HashMap::new();
        for pos in seg.clone() {
            let (Step::Native { lowered, .. }, Some(r)) = (&steps[pos], &resolved[pos]) else {
                continue;
            };
            let outputs = lowered.kernel.bufs.iter().enumerate();
            let outputs = outputs.filter(|(_, b)| b.kind == BufKind::Output);
            for (i, (b, buf)) in outputs.enumerate() {
                let slot = lay.first_slot[pos] + i;
                let bytes = buf.dtype.storage_bytes(r.lens[b] as u64);
                if let (false, Some(bytes)) = (is_output[slot], bytes) {
                    made.insert(slot, (pos, buf.dtype, bytes));
                }
            }
        }
        let mut places = InPlace {
            parent: HashMap::new(),
            skip: vec![false; steps.len()],
        };
        for pos in seg.clone() {
            let (Some(axis), Some(r)) = (lay.concat_axes[pos], &resolved[pos]) else {
                continue;
            };
            let slot = lay.first_slot[pos];
            let (Some(&(_, dtype, bytes)), Some(shape)) = (made.get(&slot), r.out_shapes.first())
            else {
                continue;
            };
            if shape.iter().take(axis).product::<usize>() != 1 || bytes == 0 {
                continue;
            }
            // Each operand a distinct planned result no other concat holds, starting at an
            // aligned offset (kernels may assume their buffers' alignment).
            let ops = &lay.operand_slots[pos];
            let mut parts = Vec::with_capacity(ops.len());
            let mut at = 0u64;
            for (i, s) in ops.iter().enumerate() {
                let fits = made.get(s).filter(|&&(p, d, n)| {
                    p < pos && d == dtype && n > 0 && at.is_multiple_of(crate::plan::ALIGN)
                });
                let free = !places.parent.contains_key(s) && !ops[..i].contains(s);
                match (fits, free) {
                    (Some(&(_, _, n)), true) => {
                        parts.push((*s, at));
                        at += n;
                    }
                    _ => break,
                }
            }
            if parts.len() != ops.len() || at != bytes {
                continue;
            }
            for (s, off) in parts {
                places.parent.insert(s, (slot, off));
            }
            places.skip[pos] = true;
        }
        places
    }

    /// The slot whose buffer holds `slot`'s value and the value's byte offset in it.
    pub(super) fn root(&self, mut slot: usize) -> (usize, u64) {
        let mut off = 0;
        while let Some(&(p, o)) = self.parent.get(&slot) {
            slot = p;
            off += o;
        }
        (slot, off)
    }
}
