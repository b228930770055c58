//! How a `loop` node runs, for the interpreter and compiled execution alike: the body (a
//! closure from step inputs to step outputs) runs `count` times over the carried values, one
//! entry of each scanned sequence and the unchanged operands; collected outputs are stacked.

use ir::{DType, Data, Dim, Op, Tensor};

/// A `loop` node's attributes, with its count evaluated.
pub struct LoopShape {
    pub count: usize,
    pub carry: usize,
    pub scan: usize,
    pub reverse: bool,
}

impl LoopShape {
    /// The shape of a `loop` node, its count evaluated by `eval`.
    pub fn of(op: &Op, eval: &dyn Fn(&Dim) -> Result<i64, String>) -> Result<LoopShape, String> {
        let Op::Loop {
            count,
            carry,
            scan,
            reverse,
            ..
        } = op
        else {
            return Err(format!("`{}` is not a loop", op.mnemonic()));
        };
        let n = eval(count)?;
        Ok(LoopShape {
            count: usize::try_from(n).map_err(|_| format!("count {count} is {n}"))?,
            carry: *carry as usize,
            scan: *scan as usize,
            reverse: *reverse,
        })
    }
}

/// One step of a loop's body: its inputs to its outputs.
pub type Body<'a> = dyn FnMut(&[Tensor]) -> Result<Vec<Tensor>, String> + 'a;

/// Entry `i` of `t` along axis 0.
fn entry(t: &Tensor, i: usize) -> Result<Tensor, String> {
    let shape = t.shape()[1..].to_vec();
    let inner: usize = shape.iter().product();
    let idx: Vec<usize> = (i * inner..(i + 1) * inner).collect();
    Tensor::new(shape, t.data().take_all(&idx)).map_err(|e| e.to_string())
}

/// Runs the loop on `args` (carried, scanned, unchanged); `stacked` are the dtypes and
/// shapes of the collected results (axis 0 included). Returns the final carried values, then
/// the stacked ones.
pub fn run(
    l: &LoopShape,
    args: &[Tensor],
    stacked: &[(DType, Vec<usize>)],
    body: &mut Body,
) -> Result<Vec<Tensor>, String> {
    let (nc, ns) = (l.carry, l.scan);
    if args.len() < nc + ns {
        return Err("fewer operands than carried and scanned values".into());
    }
    for t in &args[nc..nc + ns] {
        if t.shape().first() != Some(&l.count) {
            return Err(format!(
                "a scanned operand of shape {:?} does not have {} entries",
                t.shape(),
                l.count
            ));
        }
    }
    let mut carried: Vec<Tensor> = args[..nc].to_vec();
    // Collected outputs as the steps make them (nothing set aside per step up front: a
    // count read from data may be large).
    let mut collected: Vec<Vec<Tensor>> = vec![Vec::new(); stacked.len()];
    for step in 0..l.count {
        let t = if l.reverse { l.count - 1 - step } else { step };
        let mut inputs = carried.clone();
        for s in &args[nc..nc + ns] {
            inputs.push(entry(s, t)?);
        }
        inputs.extend_from_slice(&args[nc + ns..]);
        let mut outs = body(&inputs).map_err(|e| format!("step {t}: {e}"))?;
        if outs.len() != nc + stacked.len() {
            return Err(format!("step {t}: the body returned {} values", outs.len()));
        }
        for (k, o) in outs.drain(nc..).enumerate() {
            collected[k].push(o);
        }
        carried = outs;
    }
    let mut results = carried;
    for ((dtype, shape), mut parts) in stacked.iter().zip(collected) {
        // Entry t comes from step t: reversed loops made them last first.
        if l.reverse {
            parts.reverse();
        }
        let data = if parts.is_empty() {
            Data::zeros(*dtype, 0)
        } else {
            if parts.iter().any(|p| p.shape() != &shape[1..]) {
                return Err(format!(
                    "a step's output does not have the entry shape {:?}",
                    &shape[1..]
                ));
            }
            let datas: Vec<&Data> = parts.iter().map(|p| p.data()).collect();
            Data::concat(&datas).ok_or("the steps' outputs differ in dtype")?
        };
        results.push(Tensor::new(shape.clone(), data).map_err(|e| e.to_string())?);
    }
    Ok(results)
}
