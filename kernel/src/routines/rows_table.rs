//! The routine table's rows for the row routines (`rows.rs`: a row's extremes, sums,
//! `exp`, activations and QDQ models' quantizers, dequantizers and pairs) and the
//! dynamic quantizer (`dynamic.rs`).

use super::{dynamic, rows, Role, Routine};

pub const ROW_MAX: Routine = Routine {
    name: "row_max",
    symbol: "kiln_row_max",
    operands: &[("row", Role::Read, ir::DType::F32)],
    replaces: None,
    in_place: true,
    ints: &["n"],
    scalars: &[("init", ir::DType::F32)],
    result: Some(ir::DType::F32),
    cost: |i| 4.0 * i[0],
    extent: |_, i| i.first().cloned(),
    bounds: |_, i| (i[0] > 0).then(|| (0, i[0] - 1)),
    address: || rows::kiln_row_max as *const u8,
    call: |p, i, s| unsafe { f64::from(rows::kiln_row_max(p[0].cast(), i[0], s[0] as f32)) },
    doc: "max(init, row[0], ..., row[n-1]) in f32: IEEE maximum (NaN if any is NaN, -0 < \
          +0), the loop `acc = max(acc, row[i])` over a contiguous row",
};

pub const ROW_MIN: Routine = Routine {
    name: "row_min",
    symbol: "kiln_row_min",
    operands: &[("row", Role::Read, ir::DType::F32)],
    replaces: None,
    in_place: true,
    ints: &["n"],
    scalars: &[("init", ir::DType::F32)],
    result: Some(ir::DType::F32),
    cost: |i| 4.0 * i[0],
    extent: |_, i| i.first().cloned(),
    bounds: |_, i| (i[0] > 0).then(|| (0, i[0] - 1)),
    address: || rows::kiln_row_min as *const u8,
    call: |p, i, s| unsafe { f64::from(rows::kiln_row_min(p[0].cast(), i[0], s[0] as f32)) },
    doc: "min(init, row[0], ..., row[n-1]) in f32: IEEE minimum (NaN if any is NaN, -0 < \
          +0), the loop `acc = min(acc, row[i])` over a contiguous row",
};

pub const DYNAMIC_QUANTIZE: Routine = Routine {
    name: "dynamic_quantize",
    symbol: "kiln_dynamic_quantize",
    operands: &[
        ("x", Role::Read, ir::DType::F32),
        ("q", Role::Write, ir::DType::U8),
        ("s", Role::Write, ir::DType::F32),
        ("z", Role::Write, ir::DType::U8),
    ],
    replaces: None,
    in_place: false,
    ints: &["n"],
    scalars: &[],
    result: None,
    cost: |i| 5.0 * i[0],
    extent: |operand, i| match operand {
        0 | 1 => i.first().cloned(),
        _ => Some(crate::Expr::i64(1)),
    },
    bounds: |operand, i| match operand {
        0 | 1 => (i[0] > 0).then(|| (0, i[0] - 1)),
        _ => Some((0, 0)),
    },
    address: || dynamic::kiln_dynamic_quantize as *const u8,
    call: |p, i, _| unsafe {
        dynamic::kiln_dynamic_quantize(p[0].cast(), p[1].cast(), p[2].cast(), p[3].cast(), i[0]);
        0.0
    },
    doc: "the dynamic_quantize op on x's n f32s: lo and hi its IEEE minimum and maximum \
          widened to 0, s = (hi == lo ? 1 : hi - lo) / 255, z = round(min(max(0 - lo / s, \
          0), 255)); q[i] = u8(round(x[i] / s) + z) as row_quantize, then s and u8(z)",
};

pub const ROW_QUANTIZE: Routine = Routine {
    name: "row_quantize",
    symbol: "kiln_row_quantize",
    operands: &[
        ("src", Role::Read, ir::DType::F32),
        ("dst", Role::Write, ir::DType::U8),
    ],
    replaces: None,
    in_place: false,
    ints: &["n"],
    scalars: &[("s", ir::DType::F32), ("z", ir::DType::F32)],
    result: None,
    cost: |i| 3.0 * i[0],
    extent: |_, i| i.first().cloned(),
    bounds: |_, i| (i[0] > 0).then(|| (0, i[0] - 1)),
    address: || rows::kiln_row_quantize as *const u8,
    call: |p, i, s| unsafe {
        rows::kiln_row_quantize(p[0].cast(), p[1].cast(), i[0], s[0] as f32, s[1] as f32);
        0.0
    },
    doc: "dst[i] = u8(round(src[i] / s) + z) for i < n: the division and the sum rounded to \
          f32, the rounding to nearest even, the conversion truncating and saturating to \
          0..=255 (NaN 0) — a quantizer's loop `dst = cast<u8>(add(round(div(src, s)), z))`",
};

pub const ROW_QUANTIZE_S8: Routine = Routine {
    name: "row_quantize_s8",
    symbol: "kiln_row_quantize_s8",
    operands: &[
        ("src", Role::Read, ir::DType::F32),
        ("dst", Role::Write, ir::DType::U8),
    ],
    replaces: None,
    in_place: false,
    ints: &["n"],
    scalars: &[("s", ir::DType::F32), ("lo", ir::DType::F32)],
    result: None,
    cost: |i| 3.0 * i[0],
    extent: |_, i| i.first().cloned(),
    bounds: |_, i| (i[0] > 0).then(|| (0, i[0] - 1)),
    address: || rows::kiln_row_quantize_s8 as *const u8,
    call: |p, i, s| unsafe {
        rows::kiln_row_quantize_s8(p[0].cast(), p[1].cast(), i[0], s[0] as f32, s[1] as f32);
        0.0
    },
    doc: "dst[i] = u8(i32(i8(round(maximum(src[i], lo) / s))) + 128) for i < n: a symmetric \
          int8 quantizer shifted to u8 (what `unsigned-activations` makes for 8-bit products) \
          of the row clamped below by lo (IEEE maximum, NaN kept; -inf for none: a ReLU \
          before the quantizer), the conversion to i8 truncating and saturating (NaN 0, so \
          128 here) — the loop `dst = cast<u8>(add(cast<i32>(cast<i8>(round(div(max(src, \
          lo), s)))), 128))`",
};

pub const ROW_QUANTIZE_RES: Routine = Routine {
    name: "row_quantize_res",
    symbol: "kiln_row_quantize_res",
    operands: &[
        ("src", Role::Read, ir::DType::F32),
        ("res", Role::Read, ir::DType::U8),
        ("dst", Role::Write, ir::DType::U8),
    ],
    replaces: None,
    in_place: false,
    ints: &["n"],
    scalars: &[
        ("s", ir::DType::F32),
        ("z", ir::DType::F32),
        ("rz", ir::DType::F32),
        ("rs", ir::DType::F32),
    ],
    result: None,
    cost: |i| 4.0 * i[0],
    extent: |_, i| i.first().cloned(),
    bounds: |_, i| (i[0] > 0).then(|| (0, i[0] - 1)),
    address: || rows::kiln_row_quantize_res as *const u8,
    call: |p, i, s| unsafe {
        let [s, z, rz, rs] = [s[0], s[1], s[2], s[3]].map(|v| v as f32);
        rows::kiln_row_quantize_res(p[0].cast(), p[1].cast(), p[2].cast(), i[0], s, z, rz, rs);
        0.0
    },
    doc: "dst[i] = u8(round((src[i] + (f32(res[i]) - rz) * rs) / s) + z) for i < n, every \
          step rounded to f32 as `row_quantize`'s: a quantizer of a sum with a dequantized \
          u8 residual (QDQ models' residual adds), rz 0 without its subtraction",
};

pub const ROW_QDQ: Routine = Routine {
    name: "row_qdq",
    symbol: "kiln_row_qdq",
    operands: &[
        ("src", Role::Read, ir::DType::F32),
        ("r", Role::Optional, ir::DType::F32),
        ("dst", Role::Write, ir::DType::F32),
    ],
    replaces: None,
    in_place: true,
    ints: &["n"],
    scalars: &[
        ("m", ir::DType::F32),
        ("s", ir::DType::F32),
        ("z", ir::DType::F32),
        ("zo", ir::DType::F32),
        ("lo", ir::DType::F32),
        ("hi", ir::DType::F32),
        ("d", ir::DType::F32),
    ],
    result: None,
    cost: |i| 3.0 * i[0],
    extent: |_, i| i.first().cloned(),
    bounds: |_, i| (i[0] > 0).then(|| (0, i[0] - 1)),
    address: || rows::kiln_row_qdq as *const u8,
    call: |p, i, s| unsafe {
        let [m, s, z, zo, lo, hi, d] =
            [s[0], s[1], s[2], s[3], s[4], s[5], s[6]].map(|v| v as f32);
        rows::kiln_row_qdq(p[0].cast(), p[1].cast(), p[2].cast(), i[0], m, s, z, zo, lo, hi, d);
        0.0
    },
    doc: "dst[i] = (q(round((src[i] * m [+ r[i]]) / s) + z) - zo) * d for i < n, q the conversion to \
          the integers lo..=hi and back as the JIT converts (NaN 0, saturating, \
          truncating), every step rounded to f32 (dst may be src): a quantize-dequantize \
          pair's loop of any scale and zero points, of a row scaled by m (softmax's last \
          pass)",
};

pub const ROW_DEQUANTIZE: Routine = Routine {
    name: "row_dequantize",
    symbol: "kiln_row_dequantize",
    operands: &[
        ("src", Role::Read, ir::DType::U8),
        ("dst", Role::Write, ir::DType::F32),
    ],
    replaces: None,
    in_place: false,
    ints: &["n"],
    scalars: &[("z", ir::DType::F32), ("s", ir::DType::F32)],
    result: None,
    cost: |i| i[0],
    extent: |_, i| i.first().cloned(),
    bounds: |_, i| (i[0] > 0).then(|| (0, i[0] - 1)),
    address: || rows::kiln_row_dequantize as *const u8,
    call: |p, i, s| unsafe {
        rows::kiln_row_dequantize(p[0].cast(), p[1].cast(), i[0], s[0] as f32, s[1] as f32);
        0.0
    },
    doc: "dst[i] = (f32(src[i]) - z) * s for i < n, each step rounded to f32 — a \
          dequantizer's loop `dst = mul(sub(cast<f32>(src), z), s)` (z 0 without the \
          subtraction)",
};

pub const ROW_SUM_F64: Routine = Routine {
    name: "row_sum_f64",
    symbol: "kiln_row_sum_f64",
    operands: &[("row", Role::Read, ir::DType::F32)],
    replaces: None,
    in_place: true,
    ints: &["n"],
    scalars: &[("init", ir::DType::F64)],
    result: Some(ir::DType::F64),
    cost: |i| 5.0 * i[0],
    extent: |_, i| i.first().cloned(),
    bounds: |_, i| (i[0] > 0).then(|| (0, i[0] - 1)),
    address: || rows::kiln_row_sum_f64 as *const u8,
    call: |p, i, s| unsafe { rows::kiln_row_sum_f64(p[0].cast(), i[0], s[0]) },
    doc: "init + Σ row[i] for i < n in f64 (reassociated: within rounding of the \
          sequential sum), the loop `acc = add(acc, cast<f64>(row[i]))`",
};

pub const ROW_SUMSQ_F64: Routine = Routine {
    name: "row_sumsq_f64",
    symbol: "kiln_row_sumsq_f64",
    operands: &[("row", Role::Read, ir::DType::F32)],
    replaces: None,
    in_place: true,
    ints: &["n"],
    scalars: &[("init", ir::DType::F64)],
    result: Some(ir::DType::F64),
    cost: |i| 6.0 * i[0],
    extent: |_, i| i.first().cloned(),
    bounds: |_, i| (i[0] > 0).then(|| (0, i[0] - 1)),
    address: || rows::kiln_row_sumsq_f64 as *const u8,
    call: |p, i, s| unsafe { rows::kiln_row_sumsq_f64(p[0].cast(), i[0], s[0]) },
    doc: "init + Σ f64(row[i]·row[i]) for i < n, each square rounded to f32 (reassociated \
          as row_sum_f64's), the loop `acc = add(acc, cast<f64>(mul(row[i], row[i])))`: a \
          variance's or RMS norm's sum",
};

pub const ROW_EXP_SUB: Routine = Routine {
    name: "row_exp_sub",
    symbol: "kiln_row_exp_sub",
    operands: &[
        ("src", Role::Read, ir::DType::F32),
        ("dst", Role::Write, ir::DType::F32),
    ],
    replaces: None,
    in_place: true,
    ints: &["n"],
    scalars: &[("s", ir::DType::F32)],
    result: None,
    cost: |i| 21.0 * i[0],
    extent: |_, i| i.first().cloned(),
    bounds: |_, i| (i[0] > 0).then(|| (0, i[0] - 1)),
    address: || rows::kiln_row_exp_sub as *const u8,
    call: |p, i, s| unsafe {
        rows::kiln_row_exp_sub(p[0].cast(), p[1].cast(), i[0], s[0] as f32);
        0.0
    },
    doc: "dst[i] = exp(src[i] - s) for i < n in f32 (dst may be src; exp within 2 ulp, \
          as in vector loops): softmax's middle pass",
};

pub const ROW_ACT: Routine = Routine {
    name: "row_act",
    symbol: "kiln_row_act",
    operands: &[
        ("src", Role::Read, ir::DType::F32),
        ("dst", Role::Write, ir::DType::F32),
    ],
    replaces: None,
    in_place: true,
    ints: &["n", "act"],
    scalars: &[],
    result: None,
    cost: |i| 12.0 * i[0],
    extent: |_, i| i.first().cloned(),
    bounds: |_, i| (i[0] > 0).then(|| (0, i[0] - 1)),
    address: || rows::kiln_row_act as *const u8,
    call: |p, i, _| unsafe {
        rows::kiln_row_act(p[0].cast(), p[1].cast(), i[0], i[1]);
        0.0
    },
    doc: "dst[i] = act(src[i]) for i < n in f32, act 1 a sigmoid and 2 tanh (dst may be \
          src; the vector loops' algorithm, 16 lanes at a time): a row's transcendental \
          taken out of a 4-lane loop",
};
