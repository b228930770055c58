//! The library routines kernels call: f32 matrix products ([`gemm`], with 4-bit weights
//! [`gemm::nbits`]), quantized ones ([`qgemm`], [`qconv`]), convolutions ([`conv`]), max/min pooling ([`pool`]), softmax's row passes ([`rows`]), the dynamic quantizer ([`dynamic`]), tree ensembles ([`trees`]), recurrent layers ([`rnn`]) and scalar math
//! ([`mod@math`]), each under the symbol compiled code refers to it by. Host code, with AVX2 and FMA paths chosen at run time.
//!
//! [`ROUTINES`] is the table of the routines a kernel calls as a statement (`Stmt::Call`):
//! walkers, analyses and backends read operands, roles, integer arguments, cost and extents
//! from it, so a new routine is a row there and its host function here (the products' rows
//! are defined in `products.rs`, the row routines' and the dynamic quantizer's in
//! `rows_table.rs`).

pub mod conv;
pub mod dynamic;
pub mod epilogue;
mod extents;
pub mod gemm;
pub mod lookup;
pub mod math;
pub mod pool;
mod products;
pub mod qconv;
pub mod qgemm;
pub mod resample;
pub mod rnn;
pub mod rows;
mod rows_table;
pub mod trees;

use extents::{conv_rows_bounds, conv_rows_extent, nchwc_bounds, span, WINO_AS_ROWS};

/// Signatures of the scalar math routines.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sig {
    /// `fn(f64) -> f64`
    F1,
    /// `fn(f64, f64) -> f64`
    F2,
    /// `fn(i64, i64) -> i64`
    I2,
}

/// The scalar math routines kernels call: name, signature, address.
pub fn math() -> [(&'static str, Sig, *const u8); 23] {
    type F1 = extern "C" fn(f64) -> f64;
    type F2 = extern "C" fn(f64, f64) -> f64;
    type I2 = extern "C" fn(i64, i64) -> i64;
    let f1 = |f: F1| f as *const u8;
    let f2 = |f: F2| f as *const u8;
    let i2 = |f: I2| f as *const u8;
    [
        ("kiln_sign", Sig::F1, f1(math::sign)),
        ("kiln_exp", Sig::F1, f1(math::exp)),
        ("kiln_log", Sig::F1, f1(math::log)),
        ("kiln_sin", Sig::F1, f1(math::sin)),
        ("kiln_cos", Sig::F1, f1(math::cos)),
        ("kiln_tan", Sig::F1, f1(math::tan)),
        ("kiln_asin", Sig::F1, f1(math::asin)),
        ("kiln_acos", Sig::F1, f1(math::acos)),
        ("kiln_atan", Sig::F1, f1(math::atan)),
        ("kiln_sinh", Sig::F1, f1(math::sinh)),
        ("kiln_cosh", Sig::F1, f1(math::cosh)),
        ("kiln_asinh", Sig::F1, f1(math::asinh)),
        ("kiln_acosh", Sig::F1, f1(math::acosh)),
        ("kiln_atanh", Sig::F1, f1(math::atanh)),
        ("kiln_tanh", Sig::F1, f1(math::tanh)),
        ("kiln_sigmoid", Sig::F1, f1(math::sigmoid)),
        ("kiln_erf", Sig::F1, f1(math::erf)),
        ("kiln_rem", Sig::F2, f2(math::rem)),
        ("kiln_mod", Sig::F2, f2(math::modulo)),
        ("kiln_pow", Sig::F2, f2(math::pow)),
        ("kiln_atan2", Sig::F2, f2(math::atan2)),
        ("kiln_ipow_s", Sig::I2, i2(math::ipow_s)),
        ("kiln_ipow_u", Sig::I2, i2(math::ipow_u)),
    ]
}

/// Every routine kernels may call, by the name their code refers to it (what a loader links
/// objects against).
pub fn symbols() -> Vec<(&'static str, *const u8)> {
    let mut v: Vec<(&'static str, *const u8)> = math().iter().map(|&(n, _, a)| (n, a)).collect();
    v.extend(ROUTINES.iter().map(|r| (r.symbol, (r.address)())));
    v
}

/// How a routine uses one of its operand buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Read.
    Read,
    /// Written.
    Write,
    /// Read when given; absent is a null pointer.
    Optional,
}

/// The lowest and highest element offset a call touches of an operand.
pub type Range = (i64, i64);

/// One library routine kernels call as a statement ([`crate::Stmt::Call`]): everything a walker,
/// an analysis or a backend needs to know of it, so that a new routine is one row of
/// [`ROUTINES`] plus its host function. Its host function takes every operand's address (in
/// order; null for an absent optional one), then every integer argument as i64, then every
/// scalar argument in its dtype, and returns its result (if it has one) in its dtype.
pub struct Routine {
    /// The name kernels print and saved plans record.
    pub name: &'static str,
    /// The host function's symbol (what a loader resolves, see [`symbols`]).
    pub symbol: &'static str,
    /// Operands: name, role, element type.
    pub operands: &'static [(&'static str, Role, ir::DType)],
    /// When the optional operand `.0` is given, operand `.1` is not read (a product whose B
    /// was packed ahead of time reads only the packed copy).
    pub replaces: Option<(usize, usize)>,
    /// Whether a written operand may be exactly the range of another operand (in place); any
    /// other overlap of a written operand is never allowed.
    pub in_place: bool,
    /// Integer arguments, by name.
    pub ints: &'static [&'static str],
    /// Scalar arguments (f32 or f64), by name and dtype.
    pub scalars: &'static [(&'static str, ir::DType)],
    /// The dtype of the scalar it returns (a call assigns it to a variable), if any.
    pub result: Option<ir::DType>,
    /// Scalar operations for integer arguments (unknown ones as 16), for deciding whether
    /// threads pay off.
    pub cost: fn(&[f64]) -> f64,
    /// The elements of operand `i` a call touches from its offset, as an expression of the
    /// integer arguments; `None` when they are not one range (strided operands).
    pub extent: fn(usize, &[crate::Expr]) -> Option<crate::Expr>,
    /// The lowest and highest element (from its offset) a call touches of operand `i`,
    /// under evaluated integer arguments; `None` when it touches none (an empty size).
    /// What a checker of calls (the kernel interpreter) bounds-checks against.
    pub bounds: fn(usize, &[i64]) -> Option<Range>,
    /// The host function's address.
    pub address: fn() -> *const u8,
    /// Calls the host function with operand addresses, integer and scalar arguments in table
    /// order (scalars as f64), giving its result as f64 (0 without one): what an interpreter of
    /// kernels does. Safety: the addresses must be valid for what the routine touches under
    /// these integers (null only for absent optional operands).
    pub call: unsafe fn(&[*mut u8], &[i64], &[f64]) -> f64,
    pub doc: &'static str,
}

/// The library routines kernels call as statements.
pub static ROUTINES: [Routine; 32] = [
    products::GEMM,
    products::QGEMM,
    products::QCONV2D,
    products::QCONV2D_U8,
    products::QGEMM4,
    lookup::LOOKUP_U8,
    lookup::LOOKUP_F32,
    pool::POOL2D_U8,
    pool::POOL2D_I8,
    Routine {
        name: "conv2d",
        symbol: "kiln_conv2d_plane",
        operands: &[
            ("x", Role::Read, ir::DType::F32),
            ("k", Role::Read, ir::DType::F32),
            ("out", Role::Write, ir::DType::F32),
            ("scale", Role::Optional, ir::DType::F32),
            ("shift", Role::Optional, ir::DType::F32),
            ("res", Role::Optional, ir::DType::F32),
            ("scale2", Role::Optional, ir::DType::F32),
        ],
        replaces: None,
        in_place: true,
        ints: &[
            "h", "w", "oh", "ow", "kh", "kw", "sh", "sw", "dh", "dw", "ph", "pw", "act",
        ],
        scalars: EPILOGUE,
        result: None,
        cost: |i| i[2] * i[3] * i[4] * i[5],
        extent: |operand, i| {
            if matches!(operand, 3 | 4 | 6) {
                return Some(crate::Expr::i64(1));
            }
            let (a, b) = [(0, 1), (4, 5), (2, 3), (2, 3), (2, 3), (2, 3), (2, 3)]
                .get(operand)
                .copied()?;
            Some(i.get(a)?.clone() * i.get(b)?.clone())
        },
        bounds: |operand, i| {
            let (a, b) = [(0, 1), (4, 5), (2, 3), (2, 3), (2, 3), (2, 3), (2, 3)]
                .get(operand)
                .copied()?;
            let len = i[a].checked_mul(i[b])?;
            let len = if matches!(operand, 3 | 4 | 6) {
                len.min(1)
            } else {
                len
            };
            (len > 0).then_some((0, len - 1))
        },
        address: || conv::kiln_conv2d_plane as *const u8,
        call: |p, i, s| unsafe {
            conv::kiln_conv2d_plane(
                p[0].cast(),
                p[1].cast(),
                p[2].cast(),
                p[3].cast(),
                p[4].cast(),
                p[5].cast(),
                p[6].cast(),
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
                i[10],
                i[11],
                i[12],
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
        doc: "out[oy·ow + ox] = E(Σ x[iy·w + ix] · k[ky·kw + kx]) over the taps inside the \
              input (iy = oy·sh + ky·dh - ph, ix = ox·sw + kx·dw - pw), E the epilogue of row 0 \
              at offset oy·ow + ox: one channel of a depthwise conv (f32)",
    },
    Routine {
        name: "conv2d_rows",
        symbol: "kiln_conv2d_rows",
        operands: &[
            ("x", Role::Read, ir::DType::F32),
            ("w", Role::Read, ir::DType::F32),
            ("out", Role::Write, ir::DType::F32),
            ("scale", Role::Optional, ir::DType::F32),
            ("shift", Role::Optional, ir::DType::F32),
            ("res", Role::Optional, ir::DType::F32),
            ("scale2", Role::Optional, ir::DType::F32),
        ],
        replaces: None,
        in_place: true,
        ints: &[
            "c", "o", "h", "w", "oh", "ow", "kh", "kw", "sh", "sw", "dh", "dw", "ph", "pw", "y0",
            "rows", "act",
        ],
        scalars: EPILOGUE,
        result: None,
        cost: |i| i[1] * i[15] * i[5] * i[0] * i[6] * i[7],
        extent: conv_rows_extent,
        bounds: conv_rows_bounds,
        address: || conv::kiln_conv2d_rows as *const u8,
        call: |p, i, s| unsafe {
            conv::kiln_conv2d_rows(
                p[0].cast(),
                p[1].cast(),
                p[2].cast(),
                p[3].cast(),
                p[4].cast(),
                p[5].cast(),
                p[6].cast(),
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
                i[10],
                i[11],
                i[12],
                i[13],
                i[14],
                i[15],
                i[16],
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
        doc: "out[oc·oh·ow + oy·ow + ox] = E(Σ w[oc·c·kh·kw + (ch·kh + ky)·kw + kx] · x[(ch·h + \
              iy)·w + ix]) for output rows y0 <= oy < y0 + rows over the taps inside the image \
              (iy = oy·sh + ky·dh - ph, ix = ox·sw + kx·dw - pw), E the epilogue of row oc at \
              that output's offset: a block of a dense conv's output rows, every output \
              channel, as one product (f32)",
    },
    Routine {
        name: "conv2d_wino",
        symbol: "kiln_conv2d_wino",
        operands: &[
            ("x", Role::Read, ir::DType::F32),
            ("w", Role::Read, ir::DType::F32),
            ("u", Role::Optional, ir::DType::F32),
            ("out", Role::Write, ir::DType::F32),
            ("scale", Role::Optional, ir::DType::F32),
            ("shift", Role::Optional, ir::DType::F32),
            ("res", Role::Optional, ir::DType::F32),
            ("scale2", Role::Optional, ir::DType::F32),
        ],
        replaces: Some((2, 1)),
        in_place: true,
        ints: &[
            "c", "o", "h", "w", "oh", "ow", "kh", "kw", "sh", "sw", "dh", "dw", "ph", "pw", "y0",
            "rows", "act",
        ],
        scalars: EPILOGUE,
        result: None,
        // The 16 products of F(2×2, 3×3) (each output 4 multiply-adds per channel, where
        // the direct sum takes 9), the transforms about as many again.
        cost: |i| i[1] * i[15] * i[5] * i[0] * 8.0,
        extent: |operand, i| match operand {
            2 => Some(i.get(1)?.clone() * i.first()?.clone() * crate::Expr::i64(16)),
            _ => conv_rows_extent(WINO_AS_ROWS.get(operand).copied()?, i),
        },
        bounds: |operand, i| match operand {
            2 => {
                let len = i[1].checked_mul(i[0])?.checked_mul(16)?;
                (len > 0).then_some((0, len - 1))
            }
            _ => conv_rows_bounds(*WINO_AS_ROWS.get(operand)?, i),
        },
        address: || conv::kiln_conv2d_wino as *const u8,
        call: |p, i, s| unsafe {
            conv::kiln_conv2d_wino(
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
                i[10],
                i[11],
                i[12],
                i[13],
                i[14],
                i[15],
                i[16],
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
        doc: "conv2d_rows for a 3×3 conv of unit strides and dilations, by Winograd's F(2×2, \
              3×3) from u, the filters' transforms (16·o·c: U_ξ[f, ch] at (ξ·o + f)·c + ch, \
              made from a constant w at compile time), where that applies (32 or more \
              channels, 64 or more filters, products large enough: winograd::applies); else, or without u, as \
              conv2d_rows from w. Sums differ from the direct ones by the transforms' \
              rounding (f32)",
    },
    Routine {
        name: "conv2d_nchwc",
        symbol: "kiln_conv2d_nchwc",
        operands: &[
            ("x", Role::Read, ir::DType::F32),
            ("w", Role::Read, ir::DType::F32),
            ("wp", Role::Optional, ir::DType::F32),
            ("out", Role::Write, ir::DType::F32),
            ("scale", Role::Optional, ir::DType::F32),
            ("shift", Role::Optional, ir::DType::F32),
            ("res", Role::Optional, ir::DType::F32),
            ("scale2", Role::Optional, ir::DType::F32),
        ],
        replaces: Some((2, 1)),
        in_place: true,
        ints: &[
            "c", "o", "h", "w", "oh", "ow", "kh", "kw", "sh", "sw", "dh", "dw", "ph", "pw", "xb",
            "groups", "ob0", "obn", "y0", "rows", "act",
        ],
        scalars: EPILOGUE,
        result: None,
        cost: |i| i[17] * 16.0 * i[19] * i[5] * i[0] / i[15].max(1.0) * i[6] * i[7],
        extent: |operand, i| {
            let n = |k: usize| i.get(k).cloned();
            let div = |a, b| crate::Expr::index_op(ir::Op::Div, a, b);
            // A blocked image's lanes: whole blocks of 16 (a dense conv's channels may leave
            // the last one partly padding).
            let lanes = || match n(14)? {
                crate::Expr::Int(0, _) => n(0),
                _ => Some(div(n(0)? + crate::Expr::i64(15), crate::Expr::i64(16)) * crate::Expr::i64(16)),
            };
            match operand {
                0 => Some(lanes()? * n(2)? * n(3)?),
                1 => Some(n(1)? * div(n(0)?, n(15)?) * n(6)? * n(7)?),
                2 => {
                    // Dense packed filters cover the lanes, then their flag and the
                    // transforms' (a depthwise set, one flag).
                    let (per, flags) = match n(15)? {
                        crate::Expr::Int(1, _) => (lanes()?, 2),
                        _ => (crate::Expr::i64(1), 1),
                    };
                    Some(n(1)? * per * n(6)? * n(7)? + crate::Expr::i64(flags))
                }
                4 | 5 | 7 => n(1),
                _ => None,
            }
        },
        bounds: nchwc_bounds,
        address: || conv::kiln_conv2d_nchwc as *const u8,
        call: |p, i, s| unsafe {
            conv::kiln_conv2d_nchwc(
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
                i[10],
                i[11],
                i[12],
                i[13],
                i[14],
                i[15],
                i[16],
                i[17],
                i[18],
                i[19],
                i[20],
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
        doc: "out[((ob·oh + oy)·ow + ox)·16 + j] = E(Σ w[oc, ch, ky, kx] · x[ch, iy, ix]) (oc = \
              16·ob + j) for output blocks ob0 <= ob < ob0 + obn and rows y0 <= oy < y0 + rows, \
              over the taps inside the image (iy = oy·sh + ky·dh - ph, ix = ox·sw + kx·dw - pw) \
              and the input channels of the group (groups 1: every one, summed by input block, \
              tap, then channel; groups = c = o: channel oc, summed by tap); x blocked (xb 16: \
              x[ch, iy, ix] at ((ch/16·h + iy)·w + ix)·16 + ch%16) or plain (xb 0: [c, h, w]); \
              E the epilogue with per-channel operands by oc, the residual laid out as out: a \
              conv into a channel-blocked image (NCHWc), from wp, the filters packed for it \
              and a flag of infinite or NaN filters (made from a constant w at compile time; \
              with the flag, taps outside the image multiply zeros), or packed from w per \
              call (f32)",
    },
    Routine {
        name: "pool2d",
        symbol: "kiln_pool2d_plane",
        operands: &[
            ("x", Role::Read, ir::DType::F32),
            ("out", Role::Write, ir::DType::F32),
        ],
        replaces: None,
        in_place: true,
        ints: pool::PLANE_INTS,
        scalars: &[],
        result: None,
        cost: |i| i[2] * i[3] * i[4] * i[5],
        extent: pool::plane_extent,
        bounds: pool::plane_bounds,
        address: || pool::kiln_pool2d_plane as *const u8,
        call: |p, i, _| unsafe {
            pool::kiln_pool2d_plane(
                p[0].cast(),
                p[1].cast(),
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
                i[10],
                i[11],
                i[12],
            );
            0.0
        },
        doc: "out[oy·ow + ox] = the maximum (kind = 0), minimum (1) or sum (2) of x[iy·w + ix] \
              over the taps inside the plane (iy = oy·sh + ky·dh - ph, ix = ox·sw + kx·dw - pw), \
              -inf (+inf, 0) where none is; IEEE maximum/minimum (NaN if any tap is, -0 < +0), \
              sums in f64 window row by row: one plane of a max, min or sum pool (f32)",
    },
    Routine {
        name: "pool2d_nchwc",
        symbol: "kiln_pool2d_nchwc",
        operands: &[
            ("x", Role::Read, ir::DType::F32),
            ("out", Role::Write, ir::DType::F32),
        ],
        replaces: None,
        in_place: true,
        ints: &[
            "h", "w", "oh", "ow", "kh", "kw", "sh", "sw", "dh", "dw", "ph", "pw", "kind", "nb",
        ],
        scalars: &[],
        result: None,
        cost: |i| i[2] * i[3] * i[4] * i[5] * i[13],
        extent: |operand, i| {
            let (a, b) = [(0, 1), (2, 3)].get(operand).copied()?;
            Some(i.get(a)?.clone() * i.get(b)?.clone() * crate::Expr::i64(16) * i.get(13)?.clone())
        },
        bounds: |operand, i| {
            let (a, b) = [(0, 1), (2, 3)].get(operand).copied()?;
            let len = i[a].checked_mul(i[b])?.checked_mul(16)?.checked_mul(*i.get(13)?)?;
            (len > 0).then_some((0, len - 1))
        },
        address: || pool::kiln_pool2d_nchwc as *const u8,
        call: |p, i, _| unsafe {
            pool::kiln_pool2d_nchwc(
                p[0].cast(),
                p[1].cast(),
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
                i[10],
                i[11],
                i[12],
                i[13],
            );
            0.0
        },
        doc: "pool2d on nb consecutive channel blocks of a blocked image (NCHWc): x [nb, h, w, \
              16] into out [nb, oh, ow, 16], each lane its own channel's plane (f32)",
    },
    Routine {
        name: "resample",
        symbol: "kiln_resample",
        operands: &[
            ("x", Role::Read, ir::DType::F32),
            ("idx", Role::Read, ir::DType::I64),
            ("w", Role::Read, ir::DType::F32),
            ("y", Role::Write, ir::DType::F32),
        ],
        replaces: None,
        in_place: false,
        ints: &["outer", "n", "out", "inner", "taps", "p0", "pn"],
        scalars: &[],
        result: None,
        cost: |i| i[0] * i[6] * i[3] * i[4],
        extent: |operand, i| {
            let n = |k: usize| i.get(k).cloned();
            match operand {
                0 => Some(n(0)? * n(1)? * n(3)?),
                1 | 2 => Some(n(2)? * n(4)?),
                _ => None,
            }
        },
        bounds: |operand, i| {
            let (outer, n, out, inner, taps, p0, pn) = (i[0], i[1], i[2], i[3], i[4], i[5], i[6]);
            let whole = |len: i64| (len > 0).then_some((0, len - 1));
            match operand {
                0 => whole(outer.checked_mul(n)?.checked_mul(inner)?),
                1 | 2 => whole(out.checked_mul(taps)?),
                _ => {
                    let (lo, hi) = span(&[(outer, out.checked_mul(inner)?), (pn.checked_mul(inner)?, 1)])?;
                    let start = p0.checked_mul(inner)?;
                    Some((lo.checked_add(start)?, hi.checked_add(start)?))
                }
            }
        },
        address: || resample::kiln_resample as *const u8,
        call: |p, i, _| unsafe {
            resample::kiln_resample(
                p[0].cast(),
                p[1].cast(),
                p[2].cast(),
                p[3].cast(),
                i[0],
                i[1],
                i[2],
                i[3],
                i[4],
                i[5],
                i[6],
            );
            0.0
        },
        doc: "y[o, p, i] = Σ_t w[p, t]·x[o, idx[p, t], i] for output positions p0..p0+pn of \
              [outer, out, inner] (f32, products rounded and summed in tap order)",
    },
    rows_table::ROW_MAX,
    rows_table::ROW_MIN,
    rows_table::DYNAMIC_QUANTIZE,
    rows_table::ROW_QUANTIZE,
    rows_table::ROW_QUANTIZE_S8,
    rows_table::ROW_QUANTIZE_RES,
    rows_table::ROW_QDQ,
    rows_table::ROW_DEQUANTIZE,
    rows_table::ROW_SUM_F64,
    rows_table::ROW_SUMSQ_F64,
    rows_table::ROW_EXP_SUB,
    rows_table::ROW_ACT,
    Routine {
        name: "tree_walk",
        symbol: "kiln_tree_walk",
        operands: &[
            ("x", Role::Read, ir::DType::F32),
            ("feature", Role::Read, ir::DType::I64),
            ("threshold", Role::Read, ir::DType::F32),
            ("rule", Role::Read, ir::DType::I64),
            ("yes", Role::Read, ir::DType::I64),
            ("no", Role::Read, ir::DType::I64),
            ("nan_yes", Role::Read, ir::DType::Bool),
            ("roots", Role::Read, ir::DType::I64),
            ("out", Role::Write, ir::DType::I64),
        ],
        replaces: None,
        in_place: true,
        ints: &["rows", "features", "trees", "nodes"],
        scalars: &[],
        result: Some(ir::DType::I64),
        cost: |i| 16.0 * i[0] * i[2],
        extent: |operand, i| {
            let n = |k: usize| i.get(k).cloned();
            match operand {
                0 => Some(n(0)? * n(1)?),
                1..=6 => n(3),
                7 => n(2),
                _ => Some(n(0)? * n(2)?),
            }
        },
        bounds: |operand, i| {
            let len = match operand {
                0 => i[0].checked_mul(i[1])?,
                1..=6 => i[3],
                7 => i[2],
                _ => i[0].checked_mul(i[2])?,
            };
            (len > 0).then_some((0, len - 1))
        },
        address: || trees::kiln_tree_walk as *const u8,
        call: |p, i, _| unsafe {
            trees::kiln_tree_walk(
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
            ) as f64
        },
        doc: "out[r·trees + t] = the leaf row r of x [rows, features] reaches in tree t of a \
              forest given as node tables (the tree_walk op): each row walks each tree once; \
              the result is 0, or 1 for malformed tables (an index out of range, a bad rule \
              code, a cycle)",
    },
    Routine {
        name: "lstm",
        symbol: "kiln_lstm",
        operands: &[
            ("xw", Role::Read, ir::DType::F32),
            ("rt", Role::Read, ir::DType::F32),
            ("rt_packed", Role::Optional, ir::DType::F32),
            ("h0", Role::Read, ir::DType::F32),
            ("c0", Role::Read, ir::DType::F32),
            ("y", Role::Write, ir::DType::F32),
            ("h", Role::Write, ir::DType::F32),
            ("c", Role::Write, ir::DType::F32),
        ],
        replaces: Some((2, 1)),
        in_place: false,
        ints: &["seq", "batch", "hidden", "reverse"],
        scalars: &[],
        result: None,
        cost: |i| 8.0 * i[0] * i[1] * i[2] * i[2],
        extent: |operand, i| rnn::extent(*rnn::LSTM.get(operand)?, 4, i),
        bounds: |operand, i| rnn::bounds(*rnn::LSTM.get(operand)?, 4, i),
        address: || rnn::kiln_lstm as *const u8,
        call: |p, i, _| unsafe {
            rnn::kiln_lstm(
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
            );
            0.0
        },
        doc: "one direction of an LSTM layer over seq steps (the lstm op): y [seq, batch, \
              hidden] gets every step's h, h and c [batch, hidden] the last states (h0 and c0 \
              when seq is 0), \
              from the input projection xw [seq, batch, 4·hidden] (gates i, o, f, c), the \
              transposed recurrent weights rt [hidden, 4·hidden] (or rt_packed, them packed \
              by block of 16 units: rnn::pack) and h0; steps run backwards \
              when reverse is nonzero. Threads split the hidden units and meet once a step",
    },
    Routine {
        name: "gru",
        symbol: "kiln_gru",
        operands: &[
            ("xw", Role::Read, ir::DType::F32),
            ("rt", Role::Read, ir::DType::F32),
            ("rt_packed", Role::Optional, ir::DType::F32),
            ("rbn", Role::Read, ir::DType::F32),
            ("h0", Role::Read, ir::DType::F32),
            ("y", Role::Write, ir::DType::F32),
            ("h", Role::Write, ir::DType::F32),
        ],
        replaces: Some((2, 1)),
        in_place: false,
        ints: &["seq", "batch", "hidden", "reverse", "linear_before_reset"],
        scalars: &[],
        result: None,
        cost: |i| 6.0 * i[0] * i[1] * i[2] * i[2],
        extent: |operand, i| rnn::extent(*rnn::GRU.get(operand)?, 3, i),
        bounds: |operand, i| rnn::bounds(*rnn::GRU.get(operand)?, 3, i),
        address: || rnn::kiln_gru as *const u8,
        call: |p, i, _| unsafe {
            rnn::kiln_gru(
                p[0].cast(),
                p[1].cast(),
                p[2].cast(),
                p[3].cast(),
                p[4].cast(),
                p[5].cast(),
                p[6].cast(),
                i[0],
                i[1],
                i[2],
                i[3],
                i[4],
            );
            0.0
        },
        doc: "one direction of a GRU layer (the gru op) over seq steps: y [seq, batch, hidden] gets \
              every step's h, h [batch, hidden] the last (h0 when seq is 0), from the input \
              projection xw [seq, batch, 3·hidden] (gates z, r, n; every bias but the n \
              gate's recurrent one, rbn [hidden]), the transposed recurrent weights rt \
              [hidden, 3·hidden] (or rt_packed: rnn::pack) and h0; steps run backwards when \
              reverse is nonzero; the reset gate applies after the product when \
              linear_before_reset is nonzero, else before it. Threads split the hidden units \
              and meet once a step (twice with the reset gate before the product)",
    },
    Routine {
        name: "rnn",
        symbol: "kiln_rnn",
        operands: &[
            ("xw", Role::Read, ir::DType::F32),
            ("rt", Role::Read, ir::DType::F32),
            ("rt_packed", Role::Optional, ir::DType::F32),
            ("h0", Role::Read, ir::DType::F32),
            ("y", Role::Write, ir::DType::F32),
            ("h", Role::Write, ir::DType::F32),
        ],
        replaces: Some((2, 1)),
        in_place: false,
        ints: &["seq", "batch", "hidden", "reverse"],
        scalars: &[],
        result: None,
        cost: |i| 2.0 * i[0] * i[1] * i[2] * i[2],
        extent: |operand, i| rnn::extent(*rnn::RNN.get(operand)?, 1, i),
        bounds: |operand, i| rnn::bounds(*rnn::RNN.get(operand)?, 1, i),
        address: || rnn::kiln_rnn as *const u8,
        call: |p, i, _| unsafe {
            rnn::kiln_rnn(
                p[0].cast(),
                p[1].cast(),
                p[2].cast(),
                p[3].cast(),
                p[4].cast(),
                p[5].cast(),
                i[0],
                i[1],
                i[2],
                i[3],
            );
            0.0
        },
        doc: "one direction of a simple recurrent layer with tanh (the rnn op) over seq \
              steps: y [seq, batch, hidden] gets every step's h = tanh(xw[t] + h·rt), h \
              [batch, hidden] the last (h0 when seq is 0), from the input projection with \
              both biases xw [seq, batch, hidden], the transposed recurrent weights rt \
              [hidden, hidden] (or rt_packed: rnn::pack) and h0; steps run backwards when \
              reverse is nonzero. Threads split the hidden units and meet once a step",
    },
];

/// The scalar arguments of a fused [`epilogue`] (after the optional operands `scale`, `shift`
/// and `res`, and the integer `act`): `E(x) = post(act(min(max((pre(x)·scale[row] +
/// shift[row]) + res[at], lo), hi)))`, each part absent when its operand is (lo = -inf and hi =
/// +inf for no clamp; `act` as [`epilogue::Act::of`]; `pre` and `post` quantize-dequantize
/// pairs `(sat(round(y / s) + z) − z)·d` of scale `*_s`, zero point `*_z`, range `*_lo` to
/// `*_hi` and dequantizer's scale `*_d`, absent where the scale is 0: [`epilogue::Quant`];
/// `pre_at` places them: 0 as written, 1 `pre` after the scale, 2 the shift first —
/// `pre(x + shift[row])·scale[row]` —, 3 both — `pre((x + shift[row])·scale[row])`), each
/// step rounded as the elementwise operations it stands for.
const EPILOGUE: &[(&str, ir::DType)] = &[
    ("lo", ir::DType::F32),
    ("hi", ir::DType::F32),
    ("pre_s", ir::DType::F32),
    ("pre_z", ir::DType::F32),
    ("pre_lo", ir::DType::F32),
    ("pre_hi", ir::DType::F32),
    ("pre_d", ir::DType::F32),
    ("pre_at", ir::DType::F32),
    ("post_s", ir::DType::F32),
    ("post_z", ir::DType::F32),
    ("post_lo", ir::DType::F32),
    ("post_hi", ir::DType::F32),
    ("post_d", ir::DType::F32),
];

/// The routine named `name`.
pub fn routine(name: &str) -> Option<&'static Routine> {
    ROUTINES.iter().find(|r| r.name == name)
}

/// A test's pseudo-random stream: the states of a 64-bit linear congruential generator from
/// `seed` (callers take their high bits).
#[cfg(test)]
pub(crate) fn lcg(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed
    }
}
