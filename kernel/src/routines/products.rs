//! The routine table's rows for products and quantized convolutions (`gemm`, `qgemm`,
//! `qconv2d`, `qgemm4`): what [`super::ROUTINES`] lists first.

use super::{gemm, qconv, qgemm, span, Role, Routine, EPILOGUE};

/// The f32 matrix product (`gemm`).
pub(super) const GEMM: Routine = Routine {
    name: "gemm",
    symbol: "kiln_sgemm_packed",
    operands: &[
        ("a", Role::Read, ir::DType::F32),
        ("b", Role::Read, ir::DType::F32),
        ("b_packed", Role::Optional, ir::DType::F32),
        ("c", Role::Write, ir::DType::F32),
        ("scale", Role::Optional, ir::DType::F32),
        ("shift", Role::Optional, ir::DType::F32),
        ("res", Role::Optional, ir::DType::F32),
        ("scale2", Role::Optional, ir::DType::F32),
    ],
    replaces: Some((2, 1)),
    in_place: true,
    ints: &[
        "a_rs", "a_cs", "b_rs", "b_cs", "c_rs", "m", "n", "k", "cols", "act",
    ],
    scalars: EPILOGUE,
    result: None,
    cost: |i| i[5] * i[6] * i[7],
    extent: |_, _| None,
    bounds: |operand, i| {
        let (m, n, k) = (i[5], i[6], i[7]);
        match operand {
            0 => span(&[(m, i[0]), (k, i[1])]),
            1 => span(&[(k, i[2]), (n, i[3])]),
            2 => (k > 0 && n > 0).then(|| {
                let len = gemm::packed_len(k as usize, n as usize);
                (0, len as i64 - 1)
            }),
            4 | 5 | 7 => {
                let len = if i[8] != 0 { n } else { m };
                (m > 0 && n > 0).then_some((0, len - 1))
            }
            _ => span(&[(m, i[4]), (n, 1)]),
        }
    },
    address: || gemm::kiln_sgemm_packed as *const u8,
    call: |p, i, s| unsafe {
        gemm::kiln_sgemm_packed(
            p[0].cast(),
            p[1].cast(),
            p[2].cast(),
            p[3].cast(),
            p[4].cast(),
            p[5].cast(),
            p[6].cast(),
            p[7].cast(),
            i[0],
            i[1],
            i[2],
            i[3],
            i[4],
            i[5],
            i[6],
            i[7],
            i[8],
            i[9],
            s[0] as f32,
            s[1] as f32,
            s[2] as f32,
            s[3] as f32,
            s[4] as f32,
            s[5] as f32,
            s[6] as f32,
            s[7] as f32,
            s[8] as f32,
            s[9] as f32,
            s[10] as f32,
            s[11] as f32,
            s[12] as f32,
        );
        0.0
    },
    doc: "c[i*c_rs + j] = E(Σ_l a[i*a_rs + l*a_cs] · b[l*b_rs + j*b_cs]) for i < m, j < n, \
          l < k (f32; c_rs >= n), E the epilogue of row i (column j when cols is 1) at offset \
          i*c_rs + j; b_packed, \
          when given, is b packed by gemm::pack_b for this k and n, and b is then not read",
};

/// The quantized product: u8 by i8 summed in i32 (`qgemm`).
pub(super) const QGEMM: Routine = Routine {
    name: "qgemm",
    symbol: "kiln_qgemm",
    operands: &[
        ("a", Role::Read, ir::DType::U8),
        ("b", Role::Read, ir::DType::I8),
        ("b_packed", Role::Optional, ir::DType::I8),
        ("za", Role::Read, ir::DType::U8),
        ("c", Role::Write, ir::DType::F32),
        ("scale", Role::Optional, ir::DType::F32),
        ("shift", Role::Optional, ir::DType::F32),
        ("res", Role::Optional, ir::DType::F32),
        ("scale2", Role::Optional, ir::DType::F32),
    ],
    replaces: Some((2, 1)),
    in_place: true,
    ints: &["a_rs", "b_rs", "b_cs", "c_rs", "m", "n", "k", "cols", "act"],
    scalars: EPILOGUE,
    result: None,
    cost: |i| i[4] * i[5] * i[6] / 4.0,
    extent: |_, _| None,
    bounds: |operand, i| {
        let (m, n, k) = (i[4], i[5], i[6]);
        match operand {
            0 => span(&[(m, i[0]), (k, 1)]),
            1 => span(&[(k, i[1]), (n, i[2])]),
            2 => (k > 0 && n > 0).then(|| {
                let len = qgemm::packed_len(k as usize, n as usize);
                (0, len as i64 - 1)
            }),
            3 => Some((0, 0)),
            5 | 6 | 8 => {
                let len = if i[7] != 0 { n } else { m };
                (m > 0 && n > 0).then_some((0, len - 1))
            }
            _ => span(&[(m, i[3]), (n, 1)]),
        }
    },
    address: || qgemm::kiln_qgemm as *const u8,
    call: |p, i, s| unsafe {
        qgemm::kiln_qgemm(
            p[0].cast(),
            p[1].cast(),
            p[2].cast(),
            p[3].cast(),
            p[4].cast(),
            p[5].cast(),
            p[6].cast(),
            p[7].cast(),
            p[8].cast(),
            i[0],
            i[1],
            i[2],
            i[3],
            i[4],
            i[5],
            i[6],
            i[7],
            i[8],
            s[0] as f32,
            s[1] as f32,
            s[2] as f32,
            s[3] as f32,
            s[4] as f32,
            s[5] as f32,
            s[6] as f32,
            s[7] as f32,
            s[8] as f32,
            s[9] as f32,
            s[10] as f32,
            s[11] as f32,
            s[12] as f32,
        );
        0.0
    },
    doc: "c[i*c_rs + j] = E(f32(Σ_l (a[i*a_rs + l] − za[0]) · b[l*b_rs + j*b_cs])) for i < m, \
          j < n, l < k: u8 A, i8 B, the sums in i32 (exact, wrapping), E the epilogue of row \
          i (column j when cols is 1); b_packed, when given, is b packed by qgemm::pack_b \
          for this k and n, and b is then not read",
};

/// One image's quantized 2-D conv (`qconv2d`).
pub(super) const QCONV2D: Routine = Routine {
    name: "qconv2d",
    symbol: "kiln_qconv2d",
    operands: &[
        ("x", Role::Read, ir::DType::U8),
        ("w", Role::Read, ir::DType::I8),
        ("w_packed", Role::Optional, ir::DType::I8),
        ("za", Role::Read, ir::DType::U8),
        ("c", Role::Write, ir::DType::F32),
        ("scale", Role::Optional, ir::DType::F32),
        ("shift", Role::Optional, ir::DType::F32),
        ("res", Role::Optional, ir::DType::F32),
        ("scale2", Role::Optional, ir::DType::F32),
    ],
    replaces: Some((2, 1)),
    in_place: true,
    ints: &[
        "c", "o", "h", "w", "oh", "ow", "kh", "kw", "sh", "sw", "dh", "dw", "ph", "pw", "xb", "yb",
        "act",
    ],
    scalars: EPILOGUE,
    result: None,
    cost: |i| i[0] * i[1] * i[4] * i[5] * i[6] * i[7] / 4.0,
    extent: |_, _| None,
    bounds: |operand, i| {
        let [c, o, h, w, oh, ow, kh, kw] = [i[0], i[1], i[2], i[3], i[4], i[5], i[6], i[7]];
        let k = c.saturating_mul(kh).saturating_mul(kw);
        let last = |len: i64| (len > 0).then(|| (0, len - 1));
        match operand {
            // A blocked image holds whole blocks of 16 channels.
            0 if i[14] != 0 => {
                let lanes = (c.max(0).saturating_add(15) / 16).saturating_mul(16);
                last(lanes.saturating_mul(h).saturating_mul(w))
            }
            0 => last(c.saturating_mul(h).saturating_mul(w)),
            1 => last(o.saturating_mul(k)),
            2 => {
                (k > 0 && o > 0).then(|| (0, qgemm::packed_len(k as usize, o as usize) as i64 - 1))
            }
            3 => Some((0, 0)),
            5 | 6 | 8 => last(o),
            // A blocked result holds whole blocks of 16 channels.
            _ if i[15] != 0 => {
                let lanes = (o.max(0).saturating_add(15) / 16).saturating_mul(16);
                last(lanes.saturating_mul(oh).saturating_mul(ow))
            }
            _ => last(o.saturating_mul(oh).saturating_mul(ow)),
        }
    },
    address: || qconv::kiln_qconv2d as *const u8,
    // SAFETY: the caller's (the operands, integers and scalars the table lists).
    call: |p, i, s| unsafe { qconv::call(p, i, s, false) },
    doc: "c[f*oh*ow + oy*ow + ox] = E(f32(Σ (x[ci*h*w + iy*w + ix] − za[0]) · \
          w[((f*c + ci)*kh + ky)*kw + kx])) over ci < c, ky < kh, kx < kw with iy = oy*sh − \
          ph + ky*dh, ix = ox*sw − pw + kx*dw (terms outside the image 0): one image's \
          quantized 2-D conv, u8 by i8 summed exactly in i32, E the epilogue of channel f; \
          with xb 16 the image is blocked, x[((ci/16)*h*w + iy*w + ix)*16 + ci%16]; with yb \
          16 the result too, c[((f/16)*oh*ow + oy*ow + ox)*16 + f%16] (padding lanes 0; no \
          res); \
          w_packed, when given, is w packed by qconv::pack_filters, and w is then not read",
};

/// [`EPILOGUE`] and the zero point a byte result adds (`qconv2d_u8`'s `z`).
const EPILOGUE_Z: [(&str, ir::DType); 14] = {
    let mut all = [("z", ir::DType::F32); 14];
    let mut i = 0;
    while i < EPILOGUE.len() {
        all[i] = EPILOGUE[i];
        i += 1;
    }
    all
};

/// The quantized 2-D conv storing bytes (`qconv2d_u8`).
pub(super) const QCONV2D_U8: Routine = Routine {
    name: "qconv2d_u8",
    symbol: "kiln_qconv2d_u8",
    operands: &[
        ("x", Role::Read, ir::DType::U8),
        ("w", Role::Read, ir::DType::I8),
        ("w_packed", Role::Optional, ir::DType::I8),
        ("za", Role::Read, ir::DType::U8),
        ("c", Role::Write, ir::DType::U8),
        ("scale", Role::Optional, ir::DType::F32),
        ("shift", Role::Optional, ir::DType::F32),
        ("res", Role::Optional, ir::DType::F32),
        ("scale2", Role::Optional, ir::DType::F32),
    ],
    scalars: &EPILOGUE_Z,
    address: || qconv::kiln_qconv2d_u8 as *const u8,
    // SAFETY: as `qconv2d`'s.
    call: |p, i, s| unsafe { qconv::call(p, i, s, true) },
    doc: "qconv2d's result as bytes: c[…] = u8(round(E(…)) + z) (rounded to even, z added \
          in f32, truncated and saturated to 0..=255, NaN 0) for the same sums, epilogue and \
          layouts (a blocked result's padding lanes u8(z)) — a quantized conv stored as its \
          quantizer stores it",
    ..QCONV2D
};

/// f32 rows by a blocked 4-bit weight (`qgemm4`).
pub(super) const QGEMM4: Routine = Routine {
    name: "qgemm4",
    symbol: "kiln_qgemm4",
    operands: &[
        ("a", Role::Read, ir::DType::F32),
        ("w", Role::Read, ir::DType::U8),
        ("w_scale", Role::Read, ir::DType::F32),
        ("w_zero", Role::Read, ir::DType::F32),
        ("b_packed", Role::Optional, ir::DType::F32),
        ("c", Role::Write, ir::DType::F32),
        ("scale", Role::Optional, ir::DType::F32),
        ("shift", Role::Optional, ir::DType::F32),
        ("res", Role::Optional, ir::DType::F32),
        ("scale2", Role::Optional, ir::DType::F32),
    ],
    // Not `Some((4, 1))`: a weight dequantized ahead of time is remade from it when a saved
    // plan is loaded (`crate::derive`), so it stays with the weights.
    replaces: None,
    in_place: true,
    ints: &["a_rs", "c_rs", "m", "n", "k", "block", "cols", "act", "xq"],
    scalars: EPILOGUE,
    result: None,
    cost: |i| i[2] * i[3] * i[4],
    extent: |_, _| None,
    bounds: |operand, i| {
        let (m, n, k, block) = (i[2], i[3], i[4], i[5]);
        let blocks = if block > 0 {
            (k + block - 1) / block
        } else {
            0
        };
        let last = |len: i64| (len > 0).then(|| (0, len - 1));
        match operand {
            0 => span(&[(m, i[0]), (k, 1)]),
            1 => last(n.saturating_mul(blocks).saturating_mul(block / 2)),
            2 | 3 => last(n.saturating_mul(blocks)),
            4 => (k > 0 && n > 0).then(|| {
                let len = gemm::packed_len(k as usize, n as usize);
                (0, len as i64 - 1)
            }),
            6 | 7 | 9 => {
                let len = if i[6] != 0 { n } else { m };
                (m > 0 && n > 0).then_some((0, len - 1))
            }
            _ => span(&[(m, i[1]), (n, 1)]),
        }
    },
    address: || gemm::nbits::kiln_qgemm4 as *const u8,
    call: |p, i, s| unsafe {
        gemm::nbits::kiln_qgemm4(
            p[0].cast(),
            p[1].cast(),
            p[2].cast(),
            p[3].cast(),
            p[4].cast(),
            p[5].cast(),
            p[6].cast(),
            p[7].cast(),
            p[8].cast(),
            p[9].cast(),
            i[0],
            i[1],
            i[2],
            i[3],
            i[4],
            i[5],
            i[6],
            i[7],
            i[8],
            s[0] as f32,
            s[1] as f32,
            s[2] as f32,
            s[3] as f32,
            s[4] as f32,
            s[5] as f32,
            s[6] as f32,
            s[7] as f32,
            s[8] as f32,
            s[9] as f32,
            s[10] as f32,
            s[11] as f32,
            s[12] as f32,
        );
        0.0
    },
    doc: "c[i*c_rs + j] = E(Σ_l a[i*a_rs + l] · ((q(j, l) − w_zero[j*nb + l/block]) · \
          w_scale[j*nb + l/block])) for i < m, j < n, l < k (nb = ceil(k/block)), q(j, l) \
          the 4 bits of byte w[j*nb*block/2 + l/2] (low for even l), E the gemm's epilogue; \
          with xq = 1 each block of a row of a first quantized to int8 \
          (gemm::nbits::quantize_block: s = max|a|/127) and a[l] read as q[l]·s; \
          b_packed, when given, is the dequantized weight as B (k×n) packed by gemm::pack_b, \
          and the weight is then not read",
};
