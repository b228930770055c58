//! Resize and Upsample. Interpolation is separable, so each resized axis becomes one
//! `resample` over constant `[out, taps]` tables of input indices and weights built here from
//! the coordinate mapping and the interpolation kernel (nearest, linear, cubic, with or
//! without antialiasing): a few reads an output, where a dense `[out, in]` matrix
//! multiplied every input.
//! On symbolic dims, nearest resizing by whole-number scales whose mapping is exactly
//! repetition (what YOLO and FPN necks do) repeats each element `s` times (`n` becomes
//! `n*s`); any other resize computes its weights at run time (`resize_dyn`).

use crate::onnx::OpError;

use ir::{DType, Dim, Op, Shape, Tensor, Value};

use super::{axes as norm_axes, one, resize_dyn, s, Res};
use crate::onnx::import::{Ctx, Node};

type R<T> = Result<T, OpError>;

struct Kernel {
    mode: String,
    nearest: String,
    cubic_a: f64,
    antialias: bool,
}

impl Kernel {
    /// Interpolation coefficients for a fractional position `ratio` at `scale`.
    fn coeffs(&self, ratio: f64, scale: f64) -> Vec<f64> {
        let a = self.cubic_a;
        match (self.mode.as_str(), self.antialias) {
            ("nearest", _) => {
                if ratio.fract() == 0.0 {
                    return vec![0.0, 1.0];
                }
                let up = match self.nearest.as_str() {
                    "round_prefer_ceil" => ratio >= 0.5,
                    "floor" => false,
                    "ceil" => true,
                    _ => ratio > 0.5,
                };
                if up {
                    vec![0.0, 1.0]
                } else {
                    vec![1.0, 0.0]
                }
            }
            ("linear", false) => vec![1.0 - ratio, ratio],
            ("linear", true) => {
                let sc = scale.min(1.0);
                let start = (-1.0 / sc).floor() as i64 + 1;
                let footprint = 2 - 2 * start;
                let c: Vec<f64> = (start..start + footprint)
                    .map(|i| (1.0 - ((i as f64 - ratio) * sc).abs()).clamp(0.0, 1.0))
                    .collect();
                let sum: f64 = c.iter().sum();
                c.into_iter().map(|x| x / sum).collect()
            }
            (_, false) => {
                let r1 = ratio + 1.0;
                let q = 1.0 - ratio;
                let q1 = q + 1.0;
                vec![
                    ((a * r1 - 5.0 * a) * r1 + 8.0 * a) * r1 - 4.0 * a,
                    ((a + 2.0) * ratio - (a + 3.0)) * ratio * ratio + 1.0,
                    ((a + 2.0) * q - (a + 3.0)) * q * q + 1.0,
                    ((a * q1 - 5.0 * a) * q1 + 8.0 * a) * q1 - 4.0 * a,
                ]
            }
            (_, true) => {
                let sc = scale.min(1.0);
                let f = |x: f64| {
                    let x = x.abs();
                    let (x2, x3) = (x * x, x * x * x);
                    if x <= 1.0 {
                        (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
                    } else if x < 2.0 {
                        a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
                    } else {
                        0.0
                    }
                };
                let i_start = (-2.0 / sc).floor() as i64 + 1;
                let i_end = 2 - i_start;
                let c: Vec<f64> = (i_start..i_end)
                    .map(|i| f(sc * (i as f64 - ratio)))
                    .collect();
                let sum: f64 = c.iter().sum();
                c.into_iter().map(|x| x / sum).collect()
            }
        }
    }
}

struct Axis {
    input: usize,
    output: usize,
    scale: f64,
    roi: Option<(f64, f64)>,
}

/// Source coordinate of output position `y`, and whether it falls outside the input
/// (tf_crop_and_resize extrapolates there).
fn source(mode: &str, y: f64, ax: &Axis) -> R<(f64, bool)> {
    let (inw, outw) = (ax.input as f64, ax.scale * ax.input as f64);
    Ok(match mode {
        "align_corners" => (
            if outw == 1.0 {
                0.0
            } else {
                y * (inw - 1.0) / (outw - 1.0)
            },
            false,
        ),
        "asymmetric" => (y / ax.scale, false),
        "tf_crop_and_resize" => {
            let (r0, r1) = ax.roi.ok_or("tf_crop_and_resize needs roi")?;
            let x = if outw == 1.0 {
                (r1 - r0) * (inw - 1.0) / 2.0
            } else {
                y * (r1 - r0) * (inw - 1.0) / (outw - 1.0)
            } + r0 * (inw - 1.0);
            (x, x < 0.0 || x > inw - 1.0)
        }
        "pytorch_half_pixel" => (
            if outw == 1.0 {
                -0.5
            } else {
                (y + 0.5) / ax.scale - 0.5
            },
            false,
        ),
        "half_pixel" => ((y + 0.5) / ax.scale - 0.5, false),
        "half_pixel_symmetric" => {
            let adjustment = ax.output as f64 / outw;
            let offset = inw / 2.0 * (1.0 - adjustment);
            (offset + (y + 0.5) / ax.scale - 0.5, false)
        }
        m => return Err(format!("unknown coordinate_transformation_mode `{m}`").into()),
    })
}

/// One output's taps: (input index, coefficient) pairs.
type Taps = Vec<(usize, f64)>;

/// The taps of one axis — for each output, its pairs with the indices clamped into the axis
/// and equal ones merged — and its extrapolated rows.
fn taps(
    ax: &Axis,
    kernel: &Kernel,
    coord: &str,
    exclude_outside: bool,
) -> R<(Vec<Taps>, Vec<bool>)> {
    let (inw, outw) = (ax.input, ax.output);
    if inw == 0 {
        return Err("resizing an empty axis".into());
    }
    let mut rows = Vec::with_capacity(outw);
    let mut outside = Vec::with_capacity(outw);
    for y in 0..outw {
        let (x, ext) = source(coord, y as f64, ax)?;
        outside.push(ext);
        let xi = x.floor();
        let ratio = if x == xi { 1.0 } else { x - xi };
        let mut c = kernel.coeffs(ratio, ax.scale);
        let n = c.len() as i64;
        let pad = (n + 1) / 2;
        let xp = x + pad as f64;
        let pp = xp.floor();
        let frac = xp - pp;
        let off = if n % 2 == 0 {
            if frac == 0.0 {
                -(n / 2)
            } else {
                -(n / 2) + 1
            }
        } else {
            let base = -((n - 1) / 2);
            if frac <= 0.5 {
                base
            } else {
                base + 1
            }
        };
        let start = pp as i64 + off - pad;
        let idx: Vec<i64> = (0..n).map(|k| start + k).collect();
        if exclude_outside {
            for (k, &i) in idx.iter().enumerate() {
                if i < 0 || i >= inw as i64 {
                    c[k] = 0.0;
                }
            }
            let sum: f64 = c.iter().sum();
            let sum = if sum == 0.0 { 1.0 } else { sum };
            c.iter_mut().for_each(|v| *v /= sum);
        }
        let mut row: Taps = Vec::with_capacity(idx.len());
        for (k, &i) in idx.iter().enumerate() {
            let j = i.clamp(0, inw as i64 - 1) as usize;
            match row.iter_mut().find(|(at, _)| *at == j) {
                Some((_, w)) => *w += c[k],
                None => row.push((j, c[k])),
            }
        }
        rows.push(row);
    }
    Ok((rows, outside))
}

/// One axis's taps as `resample` operands: i64 indices and `work` weights, `[out, taps]`,
/// zero-weight taps dropped and rows padded with (0, 0) to the longest.
fn tap_tables(b: &mut ir::Builder, rows: &[Taps], work: DType) -> R<(Value, Value)> {
    let rows: Vec<Taps> = rows
        .iter()
        .map(|r| r.iter().copied().filter(|&(_, c)| c != 0.0).collect())
        .collect();
    let t = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut idx = Vec::with_capacity(rows.len() * t);
    let mut w = Vec::with_capacity(rows.len() * t);
    for r in &rows {
        for k in 0..t {
            let (j, c) = r.get(k).copied().unwrap_or((0, 0.0));
            idx.push(j as i64);
            w.push(c);
        }
    }
    let shape = vec![rows.len(), t];
    let idx = b.constant(Tensor::from_vec(shape.clone(), idx)?)?;
    let w = b.constant(Tensor::from_vec(shape, w)?)?;
    let w = b.cast(w, work)?;
    Ok((idx, w))
}

/// Resizes `x` per the plan; computes in f32 for f32 data, else in f64 and casts back
/// (integers round and saturate).
fn apply(
    ctx: &mut Ctx,
    x: Value,
    plan: &[(usize, Axis)],
    kernel: &Kernel,
    coord: &str,
    exclude: bool,
    extrap: f64,
) -> R<Value> {
    let b = &mut ctx.b;
    let dtype = b.dtype(x);
    // f32 interpolates in f32 (as onnxruntime computes in float), the rest in f64.
    let work = if dtype == DType::F32 {
        DType::F32
    } else {
        DType::F64
    };
    let mut y = b.cast(x, work)?;
    for (a, ax) in plan {
        let (rows, outside) = taps(ax, kernel, coord, exclude)?;
        let (idx, w) = tap_tables(b, &rows, work)?;
        y = b.op1(Op::Resample { axis: *a as i64 }, &[y, idx, w])?;
        if outside.iter().any(|&o| o) {
            let m = Tensor::from_vec(vec![ax.output], outside)?;
            let m = b.constant(m)?;
            let shape = b.shape(y).clone();
            let m = b.op1(
                Op::Broadcast {
                    dims: vec![*a as i64],
                    shape: shape.clone(),
                },
                &[m],
            )?;
            let e = b.scalar(extrap, work)?;
            let e = b.broadcast_to(e, &shape)?;
            y = b.op1(Op::Select, &[m, e, y])?;
        }
    }
    if dtype.is_int() {
        y = b.unary(Op::Round, y)?;
    }
    b.cast(y, dtype).map_err(s)
}

fn input_dims(ctx: &Ctx, x: Value) -> R<Vec<usize>> {
    ctx.b
        .shape(x)
        .dims()
        .iter()
        .map(|d| {
            d.as_const()
                .map(|c| c as usize)
                .ok_or_else(|| OpError::from("Resize needs static input dims"))
        })
        .collect()
}

/// Whether resizing an axis by the whole number `scale` with this kernel and mapping is
/// repetition (output `y` reads input `y / scale`), checked on sample lengths.
fn is_repetition(scale: f64, kernel: &Kernel, coord: &str) -> bool {
    if kernel.mode != "nearest" || scale < 1.0 || scale.fract() != 0.0 || scale > 64.0 {
        return false;
    }
    let s = scale as usize;
    [1usize, 2, 5, 8].into_iter().all(|len| {
        let ax = Axis {
            input: len,
            output: len * s,
            scale,
            roi: None,
        };
        // Each output's one nonzero tap reads input y / s, whole.
        taps(&ax, kernel, coord, false).is_ok_and(|(rows, _)| {
            rows.iter().enumerate().all(|(y, r)| {
                r.iter()
                    .filter(|&&(_, c)| c != 0.0)
                    .eq([(y / s, 1.0)].iter())
            })
        })
    })
}

/// Repeats every element `scales[a]` times along each axis `a` (symbolic dims allowed).
fn repeat(ctx: &mut Ctx, x: Value, scales: &[usize]) -> R<Value> {
    let b = &mut ctx.b;
    let mut y = x;
    for (a, &k) in scales.iter().enumerate() {
        if k == 1 {
            continue;
        }
        let dims = b.shape(y).dims().to_vec();
        let mut split = dims.clone();
        split.insert(a + 1, Dim::Const(1));
        let mut wide = dims.clone();
        wide.insert(a + 1, Dim::Const(k as i64));
        let mut out = dims.clone();
        out[a] = dims[a].mul(&Dim::Const(k as i64))?;
        let t = b.reshape(y, Shape::new(split))?;
        let t = b.broadcast_to(t, &Shape::new(wide))?;
        y = b.reshape(t, Shape::new(out))?;
    }
    Ok(y)
}

/// Whether every scale is 1 or a whole number whose nearest resizing is repetition.
fn repeats(scales: &[f64], kernel: &Kernel, coord: &str) -> bool {
    scales
        .iter()
        .all(|&sc| sc == 1.0 || is_repetition(sc, kernel, coord))
}

/// `name` unless it is absent or an empty tensor (ONNX's "not given").
fn nonempty<'a>(ctx: &Ctx, name: Option<&'a str>) -> R<Option<&'a str>> {
    match name {
        Some(nm) if ctx.ty(nm)?.shape.numel().ok() != Some(Dim::Const(0)) => Ok(Some(nm)),
        _ => Ok(None),
    }
}

/// Resize where input dims or sizes are symbolic: repetition when it is that, else weights
/// computed at run time (`resize_dyn`).
fn resize_symbolic(ctx: &mut Ctx, n: &Node, x: Value) -> Res {
    let r = ctx.b.rank(x);
    let dims = ctx.b.shape(x).dims().to_vec();
    let (roi_in, scales_in, sizes_in) = if n.version < 11 {
        (None, n.input(1), None)
    } else {
        (n.input(1), n.input(2), n.input(3))
    };
    let scales = match nonempty(ctx, scales_in)? {
        Some(nm) => Some(ctx.static_tensor(nm)?.to_f64_vec()),
        None => None,
    };
    let sizes = match nonempty(ctx, sizes_in)? {
        Some(nm) => Some(ctx.static_dims(nm)?),
        None => None,
    };
    let mode = n.string_or("mode", "nearest")?;
    let nearest = n.string_or("nearest_mode", "round_prefer_floor")?;
    let coord = n.string_or("coordinate_transformation_mode", "half_pixel")?;
    let kernel = Kernel {
        mode: mode.clone(),
        nearest: nearest.clone(),
        cubic_a: n.float_or("cubic_coeff_a", -0.75)? as f64,
        antialias: n.int_or("antialias", 0)? != 0,
    };
    let unsupported = |what: &str| Err(format!("Resize {what} needs static input dims").into());
    if kernel.antialias {
        return unsupported("with antialias");
    }
    if coord == "tf_crop_and_resize" || nonempty(ctx, roi_in)?.is_some() && coord != "half_pixel" {
        return unsupported("with a region of interest");
    }
    if n.string_or("keep_aspect_ratio_policy", "stretch")? != "stretch" {
        return unsupported("keeping the aspect ratio");
    }
    let axes: Vec<usize> = match n.ints("axes")? {
        Some(a) => {
            norm_axes(&a, r)?;
            a.iter().map(|&x| super::axis(x, r)).collect::<R<_>>()?
        }
        None => (0..r).collect(),
    };
    if let Some(sc) = &scales {
        if sc.len() == r && axes.len() == r && repeats(sc, &kernel, &coord) {
            let k: Vec<usize> = sc.iter().map(|&v| v as usize).collect();
            let y = repeat(ctx, x, &k)?;
            return one(ctx, y);
        }
    }
    let mut plan = Vec::new();
    for (i, &a) in axes.iter().enumerate() {
        let input = dims[a].clone();
        let (output, scale) = match (&scales, &sizes) {
            (Some(sc), _) => {
                let v = *sc.get(i).ok_or("fewer scales than axes")?;
                (resize_dyn::scaled(&input, v)?, Some(v))
            }
            (None, Some(sz)) => (sz.get(i).ok_or("fewer sizes than axes")?.clone(), None),
            (None, None) => return Err("Resize needs scales or sizes".into()),
        };
        if output == input && scale.is_none_or(|v| v == 1.0) {
            continue;
        }
        plan.push(resize_dyn::DynAxis {
            axis: a,
            input,
            output,
            scale,
        });
    }
    let how = resize_dyn::Interp {
        mode: &mode,
        nearest: &nearest,
        cubic_a: kernel.cubic_a,
        coord: &coord,
        exclude_outside: n.int_or("exclude_outside", 0)? != 0,
    };
    let y = resize_dyn::resize(ctx, x, &plan, &how)?;
    one(ctx, y)
}

pub fn resize(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let sizes_known = match (n.version >= 11).then(|| n.input(3)).flatten() {
        Some(nm) => ctx.try_static(nm).is_some(),
        None => true,
    };
    let dims = match input_dims(ctx, x) {
        Ok(d) if sizes_known => d,
        _ => return resize_symbolic(ctx, n, x),
    };
    let r = dims.len();
    let (roi_in, scales_in, sizes_in) = if n.version < 11 {
        (None, n.input(1), None)
    } else {
        (n.input(1), n.input(2), n.input(3))
    };
    let read = |ctx: &Ctx, name: Option<&str>| -> R<Option<Vec<f64>>> {
        match name {
            Some(nm) => {
                let t = ctx.static_tensor(nm)?;
                Ok(if t.numel() == 0 {
                    None
                } else {
                    Some(t.to_f64_vec())
                })
            }
            None => Ok(None),
        }
    };
    let roi = read(ctx, roi_in)?;
    let scales = read(ctx, scales_in)?;
    let sizes = read(ctx, sizes_in)?;
    // Axes in the given order: scales, sizes and roi follow it.
    let axes: Vec<usize> = match n.ints("axes")? {
        Some(a) => {
            norm_axes(&a, r)?;
            a.iter().map(|&x| super::axis(x, r)).collect::<R<_>>()?
        }
        None => (0..r).collect(),
    };
    let k = axes.len();
    let policy = n.string_or("keep_aspect_ratio_policy", "stretch")?;
    let mut scale = vec![1.0; r];
    let mut out: Vec<usize> = dims.clone();
    match (scales, sizes) {
        (Some(sc), _) => {
            if sc.len() != k {
                return Err(format!("{} scales for {k} axes", sc.len()).into());
            }
            for (i, &a) in axes.iter().enumerate() {
                scale[a] = sc[i];
                out[a] = (sc[i] * dims[a] as f64) as usize;
            }
        }
        (None, Some(sz)) => {
            if sz.len() != k {
                return Err(format!("{} sizes for {k} axes", sz.len()).into());
            }
            for (i, &a) in axes.iter().enumerate() {
                out[a] = sz[i] as usize;
                scale[a] = sz[i] / dims[a] as f64;
            }
            if policy != "stretch" {
                let pick = axes.iter().map(|&a| scale[a]);
                let sc = if policy == "not_larger" {
                    pick.fold(f64::INFINITY, f64::min)
                } else {
                    pick.fold(f64::NEG_INFINITY, f64::max)
                };
                for &a in &axes {
                    scale[a] = sc;
                    out[a] = (sc * dims[a] as f64 + 0.5) as usize;
                }
            }
        }
        (None, None) => return Err("Resize needs scales or sizes".into()),
    }
    let roi_of = |a: usize| -> Option<(f64, f64)> {
        let roi = roi.as_ref()?;
        if roi.len() == 2 * k {
            let i = axes.iter().position(|&x| x == a)?;
            Some((roi[i], roi[k + i]))
        } else if roi.len() == 2 * r {
            Some((roi[a], roi[r + a]))
        } else {
            None
        }
    };
    let coord = n.string_or("coordinate_transformation_mode", "half_pixel")?;
    let kernel = Kernel {
        mode: n.string_or("mode", "nearest")?,
        nearest: n.string_or("nearest_mode", "round_prefer_floor")?,
        cubic_a: n.float_or("cubic_coeff_a", -0.75)? as f64,
        antialias: n.int_or("antialias", 0)? != 0,
    };
    let plan: Vec<(usize, Axis)> = axes
        .iter()
        .filter(|&&a| {
            let trivial_roi =
                roi_of(a).is_none_or(|(lo, hi)| (lo - 0.0).abs() < 1e-9 && (hi - 1.0).abs() < 1e-9);
            !((scale[a] - 1.0).abs() < 1e-9 && out[a] == dims[a] && trivial_roi)
        })
        .map(|&a| {
            (
                a,
                Axis {
                    input: dims[a],
                    output: out[a],
                    scale: scale[a],
                    roi: roi_of(a),
                },
            )
        })
        .collect();
    let y = apply(
        ctx,
        x,
        &plan,
        &kernel,
        &coord,
        n.int_or("exclude_outside", 0)? != 0,
        n.float_or("extrapolation_value", 0.0)? as f64,
    )?;
    one(ctx, y)
}

pub fn upsample(ctx: &mut Ctx, n: &Node) -> Res {
    let x = ctx.ir(n.req(0)?)?;
    let scales: Vec<f64> = match n.floats("scales")? {
        Some(v) => v.into_iter().map(f64::from).collect(),
        None => ctx.static_tensor(n.req(1)?)?.to_f64_vec(),
    };
    let dims = match input_dims(ctx, x) {
        Ok(d) => d,
        Err(_) => {
            let mode = n.string_or("mode", "nearest")?;
            let mode = if mode == "bilinear" {
                "linear".into()
            } else {
                mode
            };
            let kernel = Kernel {
                mode: mode.clone(),
                nearest: "floor".into(),
                cubic_a: -0.75,
                antialias: false,
            };
            let r = ctx.b.rank(x);
            if scales.len() == r && repeats(&scales, &kernel, "asymmetric") {
                let k: Vec<usize> = scales.iter().map(|&v| v as usize).collect();
                let y = repeat(ctx, x, &k)?;
                return one(ctx, y);
            }
            if scales.len() != r {
                return Err(format!("{} scales for rank {r}", scales.len()).into());
            }
            let shape = ctx.b.shape(x).dims().to_vec();
            let mut plan = Vec::new();
            for (a, &sc) in scales.iter().enumerate() {
                if sc != 1.0 {
                    plan.push(resize_dyn::DynAxis {
                        axis: a,
                        input: shape[a].clone(),
                        output: resize_dyn::scaled(&shape[a], sc)?,
                        scale: Some(sc),
                    });
                }
            }
            let how = resize_dyn::Interp {
                mode: &mode,
                nearest: "floor",
                cubic_a: -0.75,
                coord: "asymmetric",
                exclude_outside: false,
            };
            let y = resize_dyn::resize(ctx, x, &plan, &how)?;
            return one(ctx, y);
        }
    };
    if scales.len() != dims.len() {
        return Err(format!("{} scales for rank {}", scales.len(), dims.len()).into());
    }
    let plan: Vec<(usize, Axis)> = (0..dims.len())
        .filter(|&a| scales[a] != 1.0)
        .map(|a| {
            (
                a,
                Axis {
                    input: dims[a],
                    output: (scales[a] * dims[a] as f64) as usize,
                    scale: scales[a],
                    roi: None,
                },
            )
        })
        .collect();
    let mode = n.string_or("mode", "nearest")?;
    let kernel = Kernel {
        mode: if mode == "bilinear" {
            "linear".into()
        } else {
            mode
        },
        nearest: "floor".into(),
        cubic_a: -0.75,
        antialias: false,
    };
    let y = apply(ctx, x, &plan, &kernel, "asymmetric", false, 0.0)?;
    one(ctx, y)
}
