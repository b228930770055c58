//! Resampling along one axis by interpolation taps (Resize's separable interpolation): each
//! output row a weighted sum of a few input rows, vectorized along the contiguous rest.

/// `y[o, p, i] = w[p, 0]·x[o, idx[p, 0], i] + w[p, 1]·x[o, idx[p, 1], i] + …` for every `o <
/// outer`, output positions `p` in `p0..p0 + pn` and `i < inner`: `x` is `[outer, n,
/// inner]`, `y` `[outer, out, inner]`, `idx` and `w` `[out, taps]`. Each product rounded to
/// f32 and summed left to right, as the interpreter's `resample`.
///
/// # Safety
/// `x`, `y`, `idx` and `w` hold what those shapes say; every index of the rows
/// `p0..p0 + pn` is in `0..n`; `y` does not overlap the others.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kiln_resample(
    x: *const f32,
    idx: *const i64,
    w: *const f32,
    y: *mut f32,
    outer: i64,
    n: i64,
    out: i64,
    inner: i64,
    taps: i64,
    p0: i64,
    pn: i64,
) {
    let [outer, n, out, inner, taps, p0, pn] =
        [outer, n, out, inner, taps, p0, pn].map(|v| v.max(0) as usize);
    if taps == 0 || inner == 0 {
        return;
    }
    if inner == 1 {
        // The last axis: each output a few scalar loads (no rows to vectorize along).
        for o in 0..outer {
            // SAFETY: the caller's shapes bound every offset; indices are in range.
            unsafe {
                let (xo, yo) = (x.add(o * n), y.add(o * out));
                for p in p0..p0 + pn {
                    let ids = std::slice::from_raw_parts(idx.add(p * taps), taps);
                    let ws = std::slice::from_raw_parts(w.add(p * taps), taps);
                    let mut acc = ws[0] * *xo.add(ids[0] as usize);
                    for (&wt, &i) in ws.iter().zip(ids).skip(1) {
                        acc += wt * *xo.add(i as usize);
                    }
                    *yo.add(p) = acc;
                }
            }
        }
        return;
    }
    for o in 0..outer {
        for p in p0..p0 + pn {
            // SAFETY: the caller's shapes bound every offset; indices are in range.
            unsafe {
                let row = std::slice::from_raw_parts_mut(y.add((o * out + p) * inner), inner);
                let ids = std::slice::from_raw_parts(idx.add(p * taps), taps);
                let ws = std::slice::from_raw_parts(w.add(p * taps), taps);
                let src = |t: usize| {
                    std::slice::from_raw_parts(x.add((o * n + ids[t] as usize) * inner), inner)
                };
                let (w0, x0) = (ws[0], src(0));
                for (r, &v) in row.iter_mut().zip(x0) {
                    *r = w0 * v;
                }
                for (t, &wt) in ws.iter().enumerate().skip(1) {
                    for (r, &v) in row.iter_mut().zip(src(t)) {
                        *r += wt * v;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_taps_in_order_for_a_range_of_outputs() {
        // x [2, 3, 2]; out 2 positions of 2 taps; only position 1 computed.
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let idx = [0i64, 1, 2, 0];
        let w = [0.5f32, 0.5, 0.25, 0.75];
        let mut y = [-1.0f32; 8];
        // SAFETY: the buffers hold the shapes given.
        unsafe {
            kiln_resample(
                x.as_ptr(),
                idx.as_ptr(),
                w.as_ptr(),
                y.as_mut_ptr(),
                2,
                3,
                2,
                2,
                2,
                1,
                1,
            )
        };
        // y[o, 1, i] = 0.25·x[o, 2, i] + 0.75·x[o, 0, i]
        let want = |o: usize, i: usize| 0.25 * x[(o * 3 + 2) * 2 + i] + 0.75 * x[o * 6 + i];
        assert_eq!(
            y,
            [
                -1.0,
                -1.0,
                want(0, 0),
                want(0, 1),
                -1.0,
                -1.0,
                want(1, 0),
                want(1, 1)
            ]
        );
    }
}
