//! The extents and bounds of the routine table's convolution rows, and the offset span
//! every row's bounds build on.

use super::Range;

/// `conv2d_wino`'s operands as `conv2d_rows` numbers them (`u`, its own, has none).
pub(super) const WINO_AS_ROWS: [usize; 8] = [0, 1, usize::MAX, 2, 3, 4, 5, 6];

/// `conv2d_rows`'s operand extents: the image, the filters, the per-filter scale, shift and
/// second scale.
pub(super) fn conv_rows_extent(operand: usize, i: &[crate::Expr]) -> Option<crate::Expr> {
    let n = |k: usize| i.get(k).cloned();
    match operand {
        0 => Some(n(0)? * n(2)? * n(3)?),
        1 => Some(n(1)? * n(0)? * n(6)? * n(7)?),
        3 | 4 | 6 => n(1),
        _ => None,
    }
}

/// `conv2d_rows`'s operand bounds: the image, the filters, the per-filter scale, shift and
/// second scale,
/// the block's outputs (and residual) of every filter.
pub(super) fn conv_rows_bounds(operand: usize, i: &[i64]) -> Option<Range> {
    let (c, o, h, w, oh, ow, kh, kw) = (i[0], i[1], i[2], i[3], i[4], i[5], i[6], i[7]);
    let (y0, rows) = (i[14], i[15]);
    match operand {
        0 => {
            let len = c.checked_mul(h)?.checked_mul(w)?;
            (len > 0).then_some((0, len - 1))
        }
        1 => {
            let len = o.checked_mul(c)?.checked_mul(kh)?.checked_mul(kw)?;
            (len > 0).then_some((0, len - 1))
        }
        3 | 4 | 6 => (o > 0 && rows > 0 && ow > 0).then_some((0, o - 1)),
        _ => span(&[(o, oh.checked_mul(ow)?), (rows.checked_mul(ow)?, 1)])
            .map(|(lo, hi)| (lo + y0 * ow, hi + y0 * ow)),
    }
}

/// `conv2d_nchwc`'s operand bounds: the image, the filters (either form), the per-channel
/// scale, shift and second scale, the call's blocks and rows of the output (and residual).
pub(super) fn nchwc_bounds(operand: usize, i: &[i64]) -> Option<Range> {
    let (c, o, h, w, oh, ow, kh, kw) = (i[0], i[1], i[2], i[3], i[4], i[5], i[6], i[7]);
    let (groups, ob0, obn, y0, rows) = (i[15], i[16], i[17], i[18], i[19]);
    // A blocked image's lanes: whole blocks of 16 (see `extent`).
    let lanes = if i[14] == 0 {
        c
    } else {
        c.checked_add(15)? / 16 * 16
    };
    match operand {
        0 => {
            let len = lanes.checked_mul(h)?.checked_mul(w)?;
            (len > 0).then_some((0, len - 1))
        }
        1 => {
            let per = if groups == 1 { c } else { 1 };
            let len = o.checked_mul(per)?.checked_mul(kh)?.checked_mul(kw)?;
            (len > 0).then_some((0, len - 1))
        }
        2 => {
            // The packed filters (of every lane when dense) end with their flags.
            let (per, flags) = if groups == 1 { (lanes, 2) } else { (1, 1) };
            let len = o.checked_mul(per)?.checked_mul(kh)?.checked_mul(kw)?;
            let len = len.checked_add(flags)?;
            (len > 0).then_some((0, len - 1))
        }
        4 | 5 | 7 => (o > 0 && rows > 0 && ow > 0).then_some((0, o - 1)),
        _ => {
            let plane = oh.checked_mul(ow)?.checked_mul(16)?;
            let (lo, hi) = span(&[(obn, plane), (rows.checked_mul(ow)?.checked_mul(16)?, 1)])?;
            let start = ob0
                .checked_mul(plane)?
                .checked_add(y0.checked_mul(ow)?.checked_mul(16)?)?;
            Some((lo.checked_add(start)?, hi.checked_add(start)?))
        }
    }
}

/// The lowest and highest offset of `Σ idx_d · stride_d` over `idx_d < size_d` (`None` when a
/// size is 0 or the offsets overflow).
pub(super) fn span(dims: &[(i64, i64)]) -> Option<(i64, i64)> {
    let (mut lo, mut hi) = (0i64, 0i64);
    for &(size, stride) in dims {
        if size <= 0 {
            return None;
        }
        let far = (size - 1).checked_mul(stride)?;
        if far < 0 {
            lo = lo.checked_add(far)?;
        } else {
            hi = hi.checked_add(far)?;
        }
    }
    Some((lo, hi))
}
