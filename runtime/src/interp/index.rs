//! Index maps for data movement: for each element of a result, the flat position it is read
//! from. One map serves every dtype (and the widened forms used by arithmetic).

use ir::PadMode;

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Calls `f` with every multi-index of `shape` in row-major order.
pub fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
    if shape.contains(&0) {
        return;
    }
    let mut idx = vec![0; shape.len()];
    loop {
        f(&idx);
        let mut a = shape.len();
        loop {
            if a == 0 {
                return;
            }
            a -= 1;
            idx[a] += 1;
            if idx[a] < shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
}

pub fn transpose(in_shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let st = strides(in_shape);
    let out_shape: Vec<usize> = perm.iter().map(|&p| in_shape[p]).collect();
    let mut index = Vec::with_capacity(numel(&out_shape));
    for_each_index(&out_shape, |o| {
        index.push(o.iter().zip(perm).map(|(&i, &p)| i * st[p]).sum());
    });
    (out_shape, index)
}

pub fn broadcast(in_shape: &[usize], dims: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let st = strides(in_shape);
    let mut index = Vec::with_capacity(numel(out_shape));
    for_each_index(out_shape, |o| {
        index.push(
            dims.iter()
                .enumerate()
                .map(|(i, &d)| if in_shape[i] == 1 { 0 } else { o[d] * st[i] })
                .sum(),
        );
    });
    index
}

/// Elements `start + k*stride` per axis; the caller has checked the bounds.
pub fn slice(in_shape: &[usize], start: &[i64], stride: &[i64], out_shape: &[usize]) -> Vec<usize> {
    let st = strides(in_shape);
    let mut index = Vec::with_capacity(numel(out_shape));
    for_each_index(out_shape, |o| {
        let mut off = 0i64;
        for a in 0..o.len() {
            off += (start[a] + o[a] as i64 * stride[a]) * st[a] as i64;
        }
        index.push(off as usize);
    });
    index
}

/// Source position per result element; `None` where the constant pad value goes.
pub fn pad(
    in_shape: &[usize],
    low: &[i64],
    mode: PadMode,
    out_shape: &[usize],
) -> Vec<Option<usize>> {
    let st = strides(in_shape);
    let mut index = Vec::with_capacity(numel(out_shape));
    for_each_index(out_shape, |o| {
        let mut off = Some(0usize);
        for a in 0..o.len() {
            let n = in_shape[a] as i64;
            let c = o[a] as i64 - low[a];
            let c = if (0..n).contains(&c) {
                Some(c)
            } else {
                match mode {
                    PadMode::Constant => None,
                    PadMode::Edge => Some(c.clamp(0, n - 1)),
                    PadMode::Wrap => Some(c.rem_euclid(n)),
                    PadMode::Reflect => {
                        let period = 2 * (n - 1);
                        if period == 0 {
                            Some(0)
                        } else {
                            let m = c.rem_euclid(period);
                            Some(if m < n { m } else { period - m })
                        }
                    }
                }
            };
            off = match (off, c) {
                (Some(off), Some(c)) => Some(off + c as usize * st[a]),
                _ => None,
            };
        }
        index.push(off);
    });
    index
}

/// Positions into the concatenation of all inputs' flat data.
pub fn concat(shapes: &[Vec<usize>], axis: usize) -> Vec<usize> {
    let outer: usize = shapes[0][..axis].iter().product();
    let inner: usize = shapes[0][axis + 1..].iter().product();
    let mut bases = Vec::with_capacity(shapes.len());
    let mut base = 0;
    for s in shapes {
        bases.push(base);
        base += numel(s);
    }
    let mut index = Vec::with_capacity(base);
    for o in 0..outer {
        for (s, b) in shapes.iter().zip(&bases) {
            let chunk = s[axis] * inner;
            index.extend((0..chunk).map(|i| b + o * chunk + i));
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_2d() {
        let (shape, index) = transpose(&[2, 3], &[1, 0]);
        assert_eq!(shape, vec![3, 2]);
        assert_eq!(index, vec![0, 3, 1, 4, 2, 5]);
    }

    #[test]
    fn broadcast_row() {
        assert_eq!(broadcast(&[3], &[1], &[2, 3]), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(broadcast(&[2, 1], &[0, 1], &[2, 2]), vec![0, 0, 1, 1]);
    }

    #[test]
    fn pad_modes() {
        let i = |m| pad(&[3], &[2], m, &[7]);
        let c: Vec<Option<usize>> = i(PadMode::Constant);
        assert_eq!(c, vec![None, None, Some(0), Some(1), Some(2), None, None]);
        let r: Vec<usize> = i(PadMode::Reflect).into_iter().flatten().collect();
        assert_eq!(r, vec![2, 1, 0, 1, 2, 1, 0]);
        let e: Vec<usize> = i(PadMode::Edge).into_iter().flatten().collect();
        assert_eq!(e, vec![0, 0, 0, 1, 2, 2, 2]);
        let w: Vec<usize> = i(PadMode::Wrap).into_iter().flatten().collect();
        assert_eq!(w, vec![1, 2, 0, 1, 2, 0, 1]);
    }

    #[test]
    fn concat_axis1() {
        assert_eq!(concat(&[vec![2, 1], vec![2, 2]], 1), vec![0, 2, 3, 1, 4, 5]);
    }
}
