//! Models with shapes left open: dims exporters write as -1, 0, nothing or a `dim_param` become
//! symbols; facts symbols cannot prove are checked at run time, sizes only the data knows
//! (NonZero, Compress, a TopK whose k is an input) bind when the model runs, loops run for any
//! length; what the import still cannot keep symbolic (an antialiased Resize, a Tile whose
//! repeats are an input) is specialized per signature of the run's inputs and cached; given
//! shapes and `--dim` values are checked against what the model declares.

mod common;

use common::onnx::{int_attr, model, node};
use kiln::frontends::onnx::proto::*;
use kiln::{Model, ModelOptions, Shape, Tensor};

/// A tensor type whose dims are numbers (`"-1"`, `"3"`), `dim_param`s (`"h"`) or open (`""`).
fn vi(name: &str, elem: i32, dims: &[&str]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: match (d.parse::<i64>(), d.is_empty()) {
                (Ok(v), _) => Some(DimValue::DimValue(v)),
                (_, true) => None,
                _ => Some(DimValue::DimParam(d.to_string())),
            },
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(TensorTypeProto {
                elem_type: elem,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

fn floats(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        float_data: v.to_vec(),
        ..Default::default()
    }
}

fn string_attr(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::STRING,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// y = Resize(x, scales 2×2, nearest) over an image whose height and width are open.
fn upsample() -> Vec<u8> {
    resize_2x(vec![string_attr("mode", "nearest")])
}

/// y = Resize(x, scales 2×2, linear, asymmetric, antialias): antialiasing needs the input
/// dims at import.
fn upsample_linear() -> Vec<u8> {
    resize_2x(vec![
        string_attr("mode", "linear"),
        string_attr("coordinate_transformation_mode", "asymmetric"),
        int_attr("antialias", 1),
    ])
}

/// Resize of `x` (height and width open) by `scales`, or to the height and width of a second
/// input `r` (sizes from its Shape, as torch exports interpolate-to-size) when `scales` is
/// `None`.
fn resize_open(attrs: Vec<AttributeProto>, scales: Option<[f32; 2]>) -> Vec<u8> {
    let x = vi("x", data_type::FLOAT, &["1", "1", "h", "w"]);
    let y = vi("y", data_type::FLOAT, &["1", "1", "", ""]);
    match scales {
        Some([a, b]) => model(
            vec![node("Resize", "rs", &["x", "", "scales"], &["y"], attrs)],
            vec![x],
            vec![y],
            vec![floats("scales", &[4], &[1.0, 1.0, a, b])],
            19,
        ),
        None => model(
            vec![
                node("Shape", "shape", &["r"], &["sizes"], vec![]),
                node("Resize", "rs", &["x", "", "", "sizes"], &["y"], attrs),
            ],
            vec![x, vi("r", data_type::FLOAT, &["1", "1", "hh", "ww"])],
            vec![y],
            vec![],
            19,
        ),
    }
}

fn resize_2x(attrs: Vec<AttributeProto>) -> Vec<u8> {
    model(
        vec![node("Resize", "up", &["x", "", "scales"], &["y"], attrs)],
        vec![vi("x", data_type::FLOAT, &["1", "1", "-1", "0"])],
        vec![vi("y", data_type::FLOAT, &["1", "1", "", ""])],
        vec![floats("scales", &[4], &[1.0, 1.0, 2.0, 2.0])],
        13,
    )
}

fn image(h: usize, w: usize) -> Tensor {
    let v: Vec<f32> = (0..h * w).map(|i| i as f32).collect();
    Tensor::from_vec(vec![1, 1, h, w], v).unwrap()
}

/// Nearest 2× upsampling by hand.
fn doubled(h: usize, w: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for y in 0..2 * h {
        for x in 0..2 * w {
            out.push(((y / 2) * w + x / 2) as f32);
        }
    }
    out
}

/// Linear 2× upsampling with the asymmetric mapping, by hand: odd positions average their
/// neighbours (the last one repeats the edge).
fn doubled_linear(h: usize, w: usize) -> Vec<f32> {
    let line = |n: usize, at: &dyn Fn(usize) -> f32| -> Vec<f32> {
        (0..2 * n)
            .map(|y| match y % 2 {
                0 => at(y / 2),
                _ => (at(y / 2) + at((y / 2 + 1).min(n - 1))) / 2.0,
            })
            .collect()
    };
    let rows: Vec<Vec<f32>> = (0..h).map(|r| line(w, &|c| (r * w + c) as f32)).collect();
    let mut out = vec![0.0; 4 * h * w];
    for c in 0..2 * w {
        let col = line(h, &|r| rows[r][c]);
        for (r, v) in col.into_iter().enumerate() {
            out[r * 2 * w + c] = v;
        }
    }
    out
}

#[test]
fn nearest_upsampling_by_whole_scales_stays_symbolic() {
    let m = Model::from_onnx(&upsample(), Default::default(), Default::default()).unwrap();
    let g = m.symbolic().expect("repetition needs no static dims");
    assert!(kiln::params(g)[0].1.shape.dims()[2].as_sym().is_some());
    for (h, w) in [(2, 3), (3, 2), (1, 1)] {
        let out = m.run(&[("x".into(), image(h, w))]).unwrap();
        assert_eq!(out[0].1.shape(), &[1, 1, 2 * h, 2 * w]);
        assert_eq!(out[0].1.as_slice::<f32>().unwrap(), &doubled(h, w)[..]);
    }
    assert_eq!(m.specializations(), 0);
}

/// Every interpolation mode and coordinate mapping, by scales and to sizes, on open dims: the
/// symbolic import (weights computed at run time, compiled) computes what the import for the
/// run's shapes (weights computed at import, interpreted) does.
#[test]
fn resize_on_open_dims_matches_the_import_for_given_shapes() {
    let modes: Vec<Vec<AttributeProto>> =
        ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
            .iter()
            .map(|nm| {
                vec![
                    string_attr("mode", "nearest"),
                    string_attr("nearest_mode", nm),
                ]
            })
            .chain([
                vec![string_attr("mode", "linear")],
                vec![string_attr("mode", "cubic")],
                vec![string_attr("mode", "cubic"), int_attr("exclude_outside", 1)],
            ])
            .collect();
    let coords = [
        "half_pixel",
        "asymmetric",
        "pytorch_half_pixel",
        "align_corners",
        "half_pixel_symmetric",
    ];
    let mut cases = 0;
    for mode in &modes {
        for coord in coords {
            let mut attrs = mode.clone();
            attrs.push(string_attr("coordinate_transformation_mode", coord));
            for scales in [Some([1.5, 0.5]), Some([2.0, 3.0]), Some([0.75, 1.25]), None] {
                let bytes = resize_open(attrs.clone(), scales);
                let m = Model::from_onnx(&bytes, Default::default(), Default::default()).unwrap();
                let names: Vec<String> = (mode.iter())
                    .map(|a| format!("{}={}{}", a.name, String::from_utf8_lossy(&a.s), a.i))
                    .collect();
                let what = format!("{names:?} {coord} {scales:?}");
                m.symbolic().unwrap_or_else(|e| panic!("{what}: {e}"));
                for ((h, w), (hh, ww)) in [((4, 6), (7, 2)), ((5, 3), (4, 9)), ((1, 8), (5, 1))] {
                    let mut inputs = vec![("x".to_string(), image(h, w))];
                    if scales.is_none() {
                        inputs.push(("r".to_string(), image(hh, ww)));
                    }
                    let got = m.run(&inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
                    let shapes = inputs
                        .iter()
                        .map(|(n, t)| (n.clone(), Shape::from_usizes(t.shape())))
                        .collect();
                    let opts = ModelOptions {
                        shapes,
                        ..Default::default()
                    };
                    let fixed = Model::from_onnx(&bytes, Default::default(), opts).unwrap();
                    let want = fixed
                        .interpret(&inputs)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    let (gt, wt) = (&got[0].1, &want[0].1);
                    assert_eq!(gt.shape(), wt.shape(), "{what} on {h}x{w}");
                    let gv = gt.as_slice::<f32>().unwrap();
                    let wv = wt.as_slice::<f32>().unwrap();
                    for (i, (a, b)) in gv.iter().zip(wv).enumerate() {
                        assert!((a - b).abs() <= 1e-4, "{what} on {h}x{w}: [{i}] {a} vs {b}");
                    }
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 7 * 5 * 4 * 3);
}

#[test]
fn open_dims_become_symbols_and_runs_specialize_per_shape() {
    let m = Model::from_onnx(&upsample_linear(), Default::default(), Default::default()).unwrap();
    // The -1 and 0 dims are symbols, not errors; the linear Resize needs them known.
    assert!(m.params()[0].1.shape.dims()[2].as_sym().is_some());
    assert!(m.params()[0].1.shape.dims()[3].as_sym().is_some());
    let e = m
        .symbolic()
        .expect_err("Resize needs static dims")
        .to_string();
    assert!(e.contains("Resize"), "{e}");
    for (h, w) in [(2, 3), (3, 2), (2, 3)] {
        for interp in [false, true] {
            let inputs = [("x".to_string(), image(h, w))];
            let out = match interp {
                false => m.run(&inputs),
                true => m.interpret(&inputs),
            }
            .unwrap();
            assert_eq!(out[0].1.shape(), &[1, 1, 2 * h, 2 * w]);
            assert_eq!(
                out[0].1.as_slice::<f32>().unwrap(),
                &doubled_linear(h, w)[..]
            );
        }
    }
    // Two signatures, the third run reused the first.
    assert_eq!(m.specializations(), 2);
    // A wrong rank names the input.
    let bad = Tensor::from_vec(vec![4], vec![0.0f32; 4]).unwrap();
    let e = m.run(&[("x".into(), bad)]).unwrap_err().to_string();
    assert!(e.contains("`x`") && e.contains("rank"), "{e}");
}

#[test]
fn the_cache_is_bounded_and_says_when_it_specializes() {
    let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = said.clone();
    let opts = ModelOptions {
        cache_size: 1,
        log: Some(std::sync::Arc::new(move |m: &str| {
            log.lock().unwrap().push(m.to_string())
        })),
        ..Default::default()
    };
    let m = Model::from_onnx(&upsample_linear(), Default::default(), opts).unwrap();
    for (h, w) in [(1, 1), (2, 2), (1, 1)] {
        m.run(&[("x".into(), image(h, w))]).unwrap();
    }
    // With room for one, (1, 1) was dropped for (2, 2) and made again.
    assert_eq!(m.specializations(), 3);
    let said = said.lock().unwrap();
    assert_eq!(said.len(), 3);
    assert!(said[1].contains("[1, 1, 2, 2]"), "{}", said[1]);
}

/// values = Tile(x, k) with k an input (the repeats set the size: specialized per value).
fn tile() -> Vec<u8> {
    model(
        vec![node("Tile", "tile", &["x", "k"], &["values"], vec![])],
        vec![
            vi("x", data_type::FLOAT, &["n"]),
            vi("k", data_type::INT64, &["1"]),
        ],
        vec![vi("values", data_type::FLOAT, &[""])],
        vec![],
        11,
    )
}

#[test]
fn an_input_that_sets_a_size_specializes_on_its_value_only() {
    let m = Model::from_onnx(&tile(), Default::default(), Default::default()).unwrap();
    let run = |x: &[f32], k: i64| {
        let x = Tensor::from_vec(vec![x.len()], x.to_vec()).unwrap();
        let k = Tensor::from_vec(vec![1], vec![k]).unwrap();
        let out = m.run(&[("x".into(), x), ("k".into(), k)]).unwrap();
        out[0].1.as_slice::<f32>().unwrap().to_vec()
    };
    assert_eq!(run(&[1.0, 5.0], 2), vec![1.0, 5.0, 1.0, 5.0]);
    assert_eq!(run(&[1.0, 5.0], 3), vec![1.0, 5.0, 1.0, 5.0, 1.0, 5.0]);
    assert_eq!(m.specializations(), 2);
    // Other values and another length of x, same k: the specialization for k = 2 serves.
    assert_eq!(run(&[9.0, 1.0, 7.0], 2), vec![9.0, 1.0, 7.0, 9.0, 1.0, 7.0]);
    assert_eq!(m.specializations(), 2);
}

#[test]
fn given_shapes_and_dims_must_agree_with_the_model() {
    let opts = |dims: &[(&str, i64)], shapes: &[(&str, &[i64])]| ModelOptions {
        dims: dims.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        shapes: shapes
            .iter()
            .map(|(k, v)| (k.to_string(), Shape::from_consts(v)))
            .collect(),
        ..Default::default()
    };
    let err = |bytes: &[u8], o: ModelOptions| {
        Model::from_onnx(bytes, Default::default(), o)
            .err()
            .expect("refused")
            .to_string()
    };
    let e = err(&tile(), opts(&[("m", 3)], &[]));
    assert!(
        e.contains("no symbol `m`") && e.contains("its symbols: n"),
        "{e}"
    );
    let e = err(&upsample(), opts(&[], &[("x", &[1, 2, 4, 4])]));
    assert!(e.contains("`x`") && e.contains("axis 1 is 1, not 2"), "{e}");
    let e = err(&upsample(), opts(&[], &[("y", &[1, 1, 4, 4])]));
    assert!(e.contains("not an input"), "{e}");
    // A given shape makes the model symbolic-import cleanly, fixed to that shape.
    let m = Model::from_onnx(
        &upsample(),
        Default::default(),
        opts(&[], &[("x", &[1, 1, 2, 2])]),
    )
    .unwrap();
    let g = m.symbolic().expect("imports with the shape given");
    assert_eq!(
        kiln::params(g)[0].1.shape,
        Shape::from_consts(&[1, 1, 2, 2])
    );
    // --dim fixes the symbol everywhere it appears.
    let m = Model::from_onnx(&tile(), Default::default(), opts(&[("n", 4)], &[])).unwrap();
    assert_eq!(m.params()[0].1.shape, Shape::from_consts(&[4]));
}

/// A Scan body over a state `s` and an entry `e` (both f32[2]) returning the next state `s2`
/// and a collected `o`, computed by `nodes`.
fn scan_body(nodes: Vec<NodeProto>) -> GraphProto {
    GraphProto {
        node: nodes,
        name: "body".into(),
        input: vec![
            vi("s", data_type::FLOAT, &["2"]),
            vi("e", data_type::FLOAT, &["2"]),
        ],
        output: vec![
            vi("s2", data_type::FLOAT, &["2"]),
            vi("o", data_type::FLOAT, &["2"]),
        ],
        ..Default::default()
    }
}

/// Scan-8 (batch axis first) over an empty batch: the body still types the outputs. (A fuzz
/// run found the import indexing the first batch element of none.)
#[test]
fn scan_8_over_an_empty_batch_gives_empty_outputs() {
    let body = scan_body(vec![
        node("Add", "add", &["s", "e"], &["s2"], vec![]),
        node("Identity", "id", &["s2"], &["o"], vec![]),
    ]);
    let scan = node(
        "Scan",
        "scan",
        &["", "init", "xs"],
        &["final", "ys"],
        vec![
            AttributeProto {
                name: "num_scan_inputs".into(),
                r#type: attr_type::INT,
                i: 1,
                ..Default::default()
            },
            AttributeProto {
                name: "body".into(),
                r#type: attr_type::GRAPH,
                g: Some(Box::new(body)),
                ..Default::default()
            },
        ],
    );
    let bytes = model(
        vec![scan],
        vec![
            vi("init", data_type::FLOAT, &["0", "2"]),
            vi("xs", data_type::FLOAT, &["0", "3", "2"]),
        ],
        vec![
            vi("final", data_type::FLOAT, &["0", "2"]),
            vi("ys", data_type::FLOAT, &["0", "3", "2"]),
        ],
        vec![],
        8,
    );
    let m = Model::from_onnx(&bytes, Default::default(), Default::default()).unwrap();
    let inputs = [
        (
            "init".to_string(),
            Tensor::from_vec(vec![0, 2], Vec::<f32>::new()).unwrap(),
        ),
        (
            "xs".to_string(),
            Tensor::from_vec(vec![0, 3, 2], Vec::<f32>::new()).unwrap(),
        ),
    ];
    let out = m.run(&inputs).unwrap();
    assert_eq!(out[0].1.shape(), &[0, 2]);
    assert_eq!(out[1].1.shape(), &[0, 3, 2]);
    // One batch element still scans (the same body, a batch the runtime decides).
    let inputs = [
        (
            "init".to_string(),
            Tensor::from_vec(vec![1, 2], vec![1.0f32, 2.0]).unwrap(),
        ),
        (
            "xs".to_string(),
            Tensor::from_vec(vec![1, 3, 2], vec![1.0f32; 6]).unwrap(),
        ),
    ];
    let out = m.run(&inputs).unwrap();
    assert_eq!(out[0].1.as_slice::<f32>().unwrap(), &[4.0, 5.0]);
}

/// Runs the kiln binary; returns success, stdout and stderr (never a panic).
fn kiln(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(!se.contains("panicked"), "kiln {args:?} panicked:\n{se}");
    (out.status.success(), so, se)
}

#[test]
fn the_cli_runs_open_shapes_and_compiles_given_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    std::fs::write(path("up.onnx"), upsample_linear()).unwrap();
    let npz = kiln::npz::write_npz(&[("x".to_string(), image(2, 3))]).unwrap();
    std::fs::write(path("x.npz"), npz).unwrap();
    // Run with no --dim: the inputs' shapes specialize the model, and -v says so.
    let (ok, so, se) = kiln(&["run", &path("up.onnx"), "--inputs", &path("x.npz"), "-v"]);
    assert!(ok, "{se}");
    assert!(
        so.starts_with("y: f32[1, 1, 4, 6] = [0, 0.5, 1, 1.5, 2, 2, 1.5, 2"),
        "{so}"
    );
    assert!(
        se.contains("specialized the model for x: [1, 1, 2, 3]"),
        "{se}"
    );
    // bench says it too.
    let (ok, so, _) = kiln(&[
        "bench",
        &path("up.onnx"),
        "--inputs",
        &path("x.npz"),
        "--runs",
        "2",
        "--json",
    ]);
    assert!(ok && so.contains("\"specialized\": true"), "{so}");
    // A --dim the model does not have is an error listing what it has.
    let (ok, _, se) = kiln(&[
        "run",
        &path("up.onnx"),
        "--inputs",
        &path("x.npz"),
        "--dim",
        "hh=3",
    ]);
    assert!(
        !ok && se.contains("no symbol `hh`") && se.contains("its symbols: x_2_1, x_3_2"),
        "{se}"
    );
    // Ahead of time the shapes must be given; the error says how.
    let (ok, _, se) = kiln(&["compile", &path("up.onnx"), "-o", &path("up.kiln")]);
    assert!(!ok && se.contains("--input-shape"), "{se}");
    let (ok, _, se) = kiln(&[
        "compile",
        &path("up.onnx"),
        "-o",
        &path("up.kiln"),
        "--input-shape",
        "x=1,1,2,3",
    ]);
    assert!(ok, "{se}");
    let (ok, so, se) = kiln(&["run", &path("up.kiln"), "--inputs", &path("x.npz")]);
    assert!(ok && so.starts_with("y: f32[1, 1, 4, 6]"), "{se}");
    // So can the inputs themselves; the artifact refuses other shapes, naming the input.
    let (ok, _, se) = kiln(&[
        "compile",
        &path("up.onnx"),
        "-o",
        &path("up2.kiln"),
        "--inputs",
        &path("x.npz"),
    ]);
    assert!(ok, "{se}");
    let other = kiln::npz::write_npz(&[("x".to_string(), image(3, 3))]).unwrap();
    std::fs::write(path("x33.npz"), other).unwrap();
    let (ok, _, se) = kiln(&["run", &path("up2.kiln"), "--inputs", &path("x33.npz")]);
    assert!(!ok && se.contains("\"x\""), "{se}");
    // A file is what its content says, whatever its name.
    std::fs::copy(path("up.kiln"), path("model.onnx")).unwrap();
    let (ok, _, se) = kiln(&["opt", &path("model.onnx")]);
    assert!(!ok && se.contains("is a compiled .kiln artifact"), "{se}");
    std::fs::write(
        path("m.onnx"),
        "func @main {\n  %x = param {name=\"x\"} : f32[2]\n  return %x\n}\n",
    )
    .unwrap();
    let (ok, so, se) = kiln(&["run", &path("m.onnx"), "--random-inputs"]);
    assert!(ok && so.contains(": f32[2] = "), "{so}{se}");
    let (ok, _, se) = kiln(&["inspect", &path("m.onnx")]);
    assert!(!ok && se.contains("is .kir text"), "{se}");
    // inspect fails when the import does.
    let (ok, so, se) = kiln(&["inspect", &path("up.onnx")]);
    assert!(
        !ok && so.contains("kiln cannot import it") && se.contains("specialize"),
        "{so}{se}"
    );
}

/// An artifact specialized for the value of an input that sets a size keeps that value and
/// refuses others (the JIT would specialize again; an artifact cannot).
#[test]
fn artifacts_refuse_other_values_of_the_inputs_they_were_specialized_for() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    std::fs::write(path("tile.onnx"), tile()).unwrap();
    let inputs = |k: i64| {
        let x = Tensor::from_vec(vec![4], vec![1.0f32, 5.0, 3.0, 4.0]).unwrap();
        let k = Tensor::from_vec(vec![1], vec![k]).unwrap();
        kiln::npz::write_npz(&[("x".to_string(), x), ("k".to_string(), k)]).unwrap()
    };
    std::fs::write(path("k2.npz"), inputs(2)).unwrap();
    std::fs::write(path("k3.npz"), inputs(3)).unwrap();
    let (ok, _, se) = kiln(&[
        "compile",
        &path("tile.onnx"),
        "-o",
        &path("t.kiln"),
        "--inputs",
        &path("k2.npz"),
    ]);
    assert!(ok && se.contains("specialized for the values of k"), "{se}");
    let (ok, so, se) = kiln(&["run", &path("t.kiln"), "--inputs", &path("k2.npz")]);
    assert!(
        ok && so.starts_with("values: f32[8] = [1, 5, 3, 4, 1, 5, 3, 4]"),
        "{so}{se}"
    );
    let (ok, _, se) = kiln(&["run", &path("t.kiln"), "--inputs", &path("k3.npz")]);
    assert!(
        !ok && se.contains("\"k\"") && se.contains("compiled for the value [2.0]"),
        "{se}"
    );
    // The same through the library: the executable reports its guard.
    let exe =
        kiln::artifact::load(&std::fs::read(path("t.kiln")).unwrap(), &Default::default()).unwrap();
    assert_eq!(exe.guards().len(), 1);
    assert_eq!(exe.guards()[0].0, "k");
}

/// y = Squeeze(x, axis 1) + z with x: [n, k] and z: [m]: the import cannot prove k = 1 nor
/// n = m, so both are checked when the model runs (JIT, interpreter and artifact alike).
fn unprovable_facts() -> Vec<u8> {
    model(
        vec![
            node("Squeeze", "squeeze", &["x", "axes"], &["s"], vec![]),
            node("Add", "add", &["s", "z"], &["y"], vec![]),
        ],
        vec![
            vi("x", data_type::FLOAT, &["n", "k"]),
            vi("z", data_type::FLOAT, &["m"]),
        ],
        vec![vi("y", data_type::FLOAT, &[""])],
        vec![TensorProto {
            name: "axes".into(),
            dims: vec![1],
            data_type: data_type::INT64,
            int64_data: vec![1],
            ..Default::default()
        }],
        13,
    )
}

#[test]
fn facts_the_import_cannot_prove_are_checked_at_run_time() {
    let m = Model::from_onnx(&unprovable_facts(), Default::default(), Default::default()).unwrap();
    let text = kiln::print_graph(m.symbolic().expect("stays symbolic"));
    assert!(text.contains("refine"), "{text}");
    let t = |shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::from_vec(shape.to_vec(), (0..n).map(|i| i as f32).collect()).unwrap()
    };
    let inputs = |x: &[usize], z: &[usize]| [("x".to_string(), t(x)), ("z".to_string(), t(z))];
    for interp in [false, true] {
        let run = |i: &[(String, Tensor)]| match interp {
            false => m.run(i),
            true => m.interpret(i),
        };
        let out = run(&inputs(&[3, 1], &[3])).unwrap();
        assert_eq!(out[0].1.as_slice::<f32>().unwrap(), &[0.0, 2.0, 4.0]);
        let e = run(&inputs(&[3, 2], &[3])).unwrap_err().to_string();
        assert!(
            e.contains("\"squeeze\"")
                && e.contains("axis 1 has size k = 2")
                && e.contains("needs 1"),
            "{e}"
        );
        let e = run(&inputs(&[3, 1], &[4])).unwrap_err().to_string();
        assert!(
            e.contains("\"add\"") && e.contains("m = 4") && e.contains("n = 3"),
            "{e}"
        );
    }
    assert_eq!(m.specializations(), 0);
    // An artifact keeps the checks.
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    std::fs::write(path("m.onnx"), unprovable_facts()).unwrap();
    let (ok, _, se) = kiln(&["compile", &path("m.onnx"), "-o", &path("m.kiln")]);
    assert!(ok, "{se}");
    for (x, z, good) in [(&[2, 1][..], &[2][..], true), (&[2, 1], &[5], false)] {
        let npz = kiln::npz::write_npz(&inputs(x, z)).unwrap();
        std::fs::write(path("in.npz"), npz).unwrap();
        let (ok, so, se) = kiln(&["run", &path("m.kiln"), "--inputs", &path("in.npz")]);
        assert_eq!(ok, good, "{so}{se}");
        if !good {
            assert!(se.contains("m = 5") && se.contains("n = 2"), "{se}");
        }
    }
}

/// Scan-9 over a sequence of open length `n`: a running sum (carried), the entries scaled by
/// an outer input `w` (read inside the body) and an outer constant; the second output runs
/// backwards and stacks along axis 1. The body becomes a `loop`, imported once.
fn scan_open(reverse_in: bool) -> Vec<u8> {
    let body = scan_body(vec![
        node("Add", "add", &["s", "e"], &["s2"], vec![]),
        node("Mul", "mul", &["e", "w"], &["ew"], vec![]),
        node("Add", "add2", &["ew", "k"], &["o"], vec![]),
    ]);
    let ints = |name: &str, v: &[i64]| AttributeProto {
        name: name.into(),
        r#type: attr_type::INTS,
        ints: v.to_vec(),
        ..Default::default()
    };
    let attrs = vec![
        int_attr("num_scan_inputs", 1),
        AttributeProto {
            name: "body".into(),
            r#type: attr_type::GRAPH,
            g: Some(Box::new(body)),
            ..Default::default()
        },
        ints("scan_input_directions", &[reverse_in as i64]),
        ints("scan_output_directions", &[1]),
        ints("scan_output_axes", &[1]),
    ];
    model(
        vec![node(
            "Scan",
            "scan",
            &["init", "xs"],
            &["last", "ys"],
            attrs,
        )],
        vec![
            vi("init", data_type::FLOAT, &["2"]),
            vi("xs", data_type::FLOAT, &["n", "2"]),
            vi("w", data_type::FLOAT, &["2"]),
        ],
        vec![
            vi("last", data_type::FLOAT, &["2"]),
            vi("ys", data_type::FLOAT, &["", ""]),
        ],
        vec![floats("k", &[2], &[0.5, -1.0])],
        11,
    )
}

#[test]
fn scan_over_an_open_length_is_a_loop_imported_once() {
    for reverse_in in [false, true] {
        let bytes = scan_open(reverse_in);
        let m = Model::from_onnx(&bytes, Default::default(), Default::default()).unwrap();
        let g = m.symbolic().expect("a loop over any length");
        assert!(kiln::print_graph(g).contains("loop"));
        for n in [0usize, 1, 5, 200] {
            let t = |shape: Vec<usize>| {
                let k: usize = shape.iter().product();
                Tensor::from_vec(shape, (0..k).map(|i| (i as f32 * 0.37).sin()).collect()).unwrap()
            };
            let inputs = vec![
                ("init".to_string(), t(vec![2])),
                ("xs".to_string(), t(vec![n, 2])),
                ("w".to_string(), t(vec![2])),
            ];
            let shapes = inputs
                .iter()
                .map(|(k, v)| (k.clone(), Shape::from_usizes(v.shape())))
                .collect();
            // The import for given shapes unrolls (up to 256 steps): the reference.
            let fixed = Model::from_onnx(
                &bytes,
                Default::default(),
                ModelOptions {
                    shapes,
                    ..Default::default()
                },
            )
            .unwrap();
            let symbolic = ModelOptions {
                shape_kernels: false,
                ..Default::default()
            };
            let one = Model::from_onnx(&bytes, Default::default(), symbolic).unwrap();
            let want = fixed.interpret(&inputs).unwrap();
            for got in [m.run(&inputs), m.interpret(&inputs), one.run(&inputs)] {
                let got = got.unwrap_or_else(|e| panic!("n={n} reverse={reverse_in}: {e}"));
                for ((name, g), (_, w)) in got.iter().zip(&want) {
                    assert_eq!(g.shape(), w.shape(), "{name} n={n}");
                    let (a, b) = (g.as_slice::<f32>().unwrap(), w.as_slice::<f32>().unwrap());
                    for (x, y) in a.iter().zip(b) {
                        assert!((x - y).abs() <= 1e-4, "{name} n={n}: {x} vs {y}");
                    }
                }
            }
        }
        assert_eq!(m.specializations(), 0);
    }
}

/// y = Compress(x, x > 0) and i = NonZero(x > 0) over x of open length: sizes only the data
/// knows, bound when the model runs, through the JIT, the interpreter and an artifact.
fn positives() -> Vec<u8> {
    model(
        vec![
            node("Greater", "gt", &["x", "zero"], &["c"], vec![]),
            node(
                "Compress",
                "compress",
                &["x", "c"],
                &["y"],
                vec![int_attr("axis", 0)],
            ),
            node("NonZero", "nonzero", &["c"], &["i"], vec![]),
            node(
                "ReduceSum",
                "sum",
                &["y"],
                &["s"],
                vec![int_attr("keepdims", 0)],
            ),
        ],
        vec![vi("x", data_type::FLOAT, &["n"])],
        vec![
            vi("y", data_type::FLOAT, &[""]),
            vi("i", data_type::INT64, &["1", ""]),
            vi("s", data_type::FLOAT, &[]),
        ],
        vec![floats("zero", &[], &[0.0])],
        13,
    )
}

#[test]
fn data_dependent_sizes_bind_when_the_model_runs() {
    let bytes = positives();
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    std::fs::write(path("m.onnx"), &bytes).unwrap();
    let (ok, _, se) = kiln(&["compile", &path("m.onnx"), "-o", &path("m.kiln")]);
    assert!(ok, "{se}");
    let symbolic = ModelOptions {
        shape_kernels: false,
        ..Default::default()
    };
    let m = Model::from_onnx(&bytes, Default::default(), Default::default()).unwrap();
    let one = Model::from_onnx(&bytes, Default::default(), symbolic).unwrap();
    assert!(m.symbolic().is_ok());
    for xs in [
        vec![1.0f32, -2.0, 3.0, 0.0, 5.0],
        vec![-1.0, -2.0],
        vec![4.0],
        vec![],
    ] {
        let want_y: Vec<f32> = xs.iter().copied().filter(|&v| v > 0.0).collect();
        let want_i: Vec<i64> = (0..xs.len() as i64)
            .filter(|&i| xs[i as usize] > 0.0)
            .collect();
        let x = Tensor::from_vec(vec![xs.len()], xs.clone()).unwrap();
        let inputs = vec![("x".to_string(), x)];
        for got in [m.run(&inputs), m.interpret(&inputs), one.run(&inputs)] {
            let got = got.unwrap_or_else(|e| panic!("{xs:?}: {e}"));
            assert_eq!(got[0].1.as_slice::<f32>().unwrap(), &want_y[..], "{xs:?}");
            assert_eq!(got[1].1.shape(), &[1, want_i.len()]);
            assert_eq!(got[1].1.as_slice::<i64>().unwrap(), &want_i[..], "{xs:?}");
            let s: f32 = want_y.iter().sum();
            assert_eq!(got[2].1.as_slice::<f32>().unwrap(), &[s]);
        }
        let npz = kiln::npz::write_npz(&inputs).unwrap();
        std::fs::write(path("in.npz"), npz).unwrap();
        let (ok, so, se) = kiln(&["run", &path("m.kiln"), "--inputs", &path("in.npz")]);
        assert!(ok, "{se}");
        assert!(so.contains(&format!("i: i64[1, {}]", want_i.len())), "{so}");
    }
    assert_eq!(m.specializations(), 0);
}

/// A Loop whose trip count is the open length of `x` (Shape, Gather): a running sum of the
/// rows of x (read by the iteration number) carried, and i*i collected: a `loop` op.
fn loop_open() -> Vec<u8> {
    let body = GraphProto {
        node: vec![
            node("Identity", "keep", &["cond"], &["cond_out"], vec![]),
            node(
                "Gather",
                "row",
                &["x", "i"],
                &["r"],
                vec![int_attr("axis", 0)],
            ),
            node("Add", "acc", &["s", "r"], &["s2"], vec![]),
            node("Mul", "sq", &["i", "i"], &["ii"], vec![]),
        ],
        name: "body".into(),
        input: vec![
            vi("i", data_type::INT64, &[]),
            vi("cond", data_type::BOOL, &[]),
            vi("s", data_type::FLOAT, &["2"]),
        ],
        output: vec![
            vi("cond_out", data_type::BOOL, &[]),
            vi("s2", data_type::FLOAT, &["2"]),
            vi("ii", data_type::INT64, &[]),
        ],
        ..Default::default()
    };
    let graph_attr = AttributeProto {
        name: "body".into(),
        r#type: attr_type::GRAPH,
        g: Some(Box::new(body)),
        ..Default::default()
    };
    let ints = |name: &str, v: &[i64]| TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: data_type::INT64,
        int64_data: v.to_vec(),
        ..Default::default()
    };
    model(
        vec![
            node("Shape", "shape", &["x"], &["sh"], vec![]),
            node("Slice", "first", &["sh", "zero", "one"], &["m"], vec![]),
            node(
                "Loop",
                "loop",
                &["m", "", "s0"],
                &["s", "squares"],
                vec![graph_attr],
            ),
        ],
        vec![
            vi("x", data_type::FLOAT, &["n", "2"]),
            vi("s0", data_type::FLOAT, &["2"]),
        ],
        vec![
            vi("s", data_type::FLOAT, &["2"]),
            vi("squares", data_type::INT64, &[""]),
        ],
        vec![ints("zero", &[0]), ints("one", &[1])],
        13,
    )
}

#[test]
fn loop_over_an_open_trip_count_is_a_loop_imported_once() {
    let m = Model::from_onnx(&loop_open(), Default::default(), Default::default()).unwrap();
    let g = m.symbolic().expect("a loop over any trip count");
    assert!(
        kiln::print_graph(g).contains(" loop "),
        "{}",
        kiln::print_graph(g)
    );
    for n in [0usize, 1, 4, 300] {
        let xs: Vec<f32> = (0..2 * n).map(|i| i as f32).collect();
        let inputs = vec![
            (
                "x".to_string(),
                Tensor::from_vec(vec![n, 2], xs.clone()).unwrap(),
            ),
            (
                "s0".to_string(),
                Tensor::from_vec(vec![2], vec![0.5f32, -1.0]).unwrap(),
            ),
        ];
        let want_s = [
            0.5 + (0..n).map(|i| xs[2 * i]).sum::<f32>(),
            -1.0 + (0..n).map(|i| xs[2 * i + 1]).sum::<f32>(),
        ];
        let want_sq: Vec<i64> = (0..n as i64).map(|i| i * i).collect();
        for got in [m.run(&inputs), m.interpret(&inputs)] {
            let got = got.unwrap_or_else(|e| panic!("n={n}: {e}"));
            assert_eq!(got[0].1.as_slice::<f32>().unwrap(), &want_s, "n={n}");
            assert_eq!(got[1].1.as_slice::<i64>().unwrap(), &want_sq[..], "n={n}");
        }
    }
    assert_eq!(m.specializations(), 0);
}

/// Range(start, limit, delta) over input values, and a Loop whose trip count is an input:
/// lengths only the data gives, bound when the model runs (imported once, no specialization).
#[test]
fn ranges_and_trip_counts_read_from_data_bind_at_run_time() {
    let scalar = |name: &str, elem: i32| vi(name, elem, &[]);
    let bytes = model(
        vec![node("Range", "range", &["a", "b", "d"], &["r"], vec![])],
        vec![
            scalar("a", data_type::FLOAT),
            scalar("b", data_type::FLOAT),
            scalar("d", data_type::FLOAT),
        ],
        vec![vi("r", data_type::FLOAT, &[""])],
        vec![],
        11,
    );
    let m = Model::from_onnx(&bytes, Default::default(), Default::default()).unwrap();
    assert!(m.symbolic().is_ok());
    for (a, b, d) in [(0.0f32, 5.0, 2.0), (1.0, -2.0, -0.5), (3.0, 1.0, 1.0)] {
        let inputs: Vec<(String, Tensor)> = [("a", a), ("b", b), ("d", d)]
            .into_iter()
            .map(|(n, v)| (n.to_string(), Tensor::scalar(v)))
            .collect();
        let len = ((b - a) / d).ceil().max(0.0) as usize;
        let want: Vec<f32> = (0..len).map(|i| a + i as f32 * d).collect();
        for got in [m.run(&inputs), m.interpret(&inputs)] {
            let got = got.unwrap();
            assert_eq!(
                got[0].1.as_slice::<f32>().unwrap(),
                &want[..],
                "{a} {b} {d}"
            );
        }
    }
    assert_eq!(m.specializations(), 0);
    // The Loop of `loop_open` with its trip count an input instead of Shape(x)[0].
    let mut proto = kiln::frontends::onnx::decode_model(&loop_open()).unwrap();
    let g = proto.graph.as_mut().unwrap();
    g.node.retain(|n| n.op_type == "Loop");
    g.input.push(vi("m", data_type::INT64, &["1"]));
    let bytes = prost::Message::encode_to_vec(&proto);
    let m = Model::from_onnx(&bytes, Default::default(), Default::default()).unwrap();
    assert!(kiln::print_graph(m.symbolic().unwrap()).contains("dyn_iota"));
    for trips in [0i64, 3] {
        let xs: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let inputs = vec![
            (
                "x".to_string(),
                Tensor::from_vec(vec![4, 2], xs.clone()).unwrap(),
            ),
            (
                "s0".to_string(),
                Tensor::from_vec(vec![2], vec![0.0f32, 0.0]).unwrap(),
            ),
            (
                "m".to_string(),
                Tensor::from_vec(vec![1], vec![trips]).unwrap(),
            ),
        ];
        let t = trips as usize;
        let want = [
            (0..t).map(|i| xs[2 * i]).sum::<f32>(),
            (0..t).map(|i| xs[2 * i + 1]).sum(),
        ];
        let got = m.run(&inputs).unwrap();
        assert_eq!(got[0].1.as_slice::<f32>().unwrap(), &want, "{trips} trips");
        assert_eq!(got[1].1.shape(), &[t]);
    }
    assert_eq!(m.specializations(), 0);
}

/// `ConvTranspose` with non-overlapping windows (kernel = stride 2, the upsampling of UNets
/// and detection heads, imported as one product and a rearrangement) on open and fixed
/// dims, two images, with a bias and, where the dims are fixed, pads cut from both ends:
/// what the definition sums, by hand.
#[test]
fn upsampling_transposed_convs_compute_the_definition() {
    let (c, m) = (3usize, 2usize);
    let n = |i: usize, s: usize| ((i * 7919 + s * 104_729) % 1000) as f32 / 500.0 - 1.0;
    let w: Vec<f32> = (0..c * m * 4).map(|i| n(i, 1)).collect();
    let bias = [0.5f32, -0.25];
    for (dims, pads) in [
        (["2", "3", "h", "w"], [0i64, 0, 0, 0]),
        (["2", "3", "4", "5"], [1, 0, 0, 1]),
    ] {
        let mut attrs = vec![
            common::onnx::ints_attr("kernel_shape", &[2, 2]),
            common::onnx::ints_attr("strides", &[2, 2]),
        ];
        if pads != [0; 4] {
            attrs.push(common::onnx::ints_attr("pads", &pads));
        }
        let bytes = model(
            vec![node("ConvTranspose", "up", &["x", "w", "b"], &["y"], attrs)],
            vec![vi("x", data_type::FLOAT, &dims)],
            vec![vi("y", data_type::FLOAT, &["", "", "", ""])],
            vec![floats("w", &[3, 2, 2, 2], &w), floats("b", &[2], &bias)],
            13,
        );
        let model = Model::from_onnx(&bytes, Default::default(), Default::default()).unwrap();
        let (h, wd) = (4usize, 5usize);
        let x: Vec<f32> = (0..2 * c * h * wd).map(|i| n(i, 2)).collect();
        let input = Tensor::from_vec(vec![2, c, h, wd], x.clone()).unwrap();
        let out = model.run(&[("x".into(), input)]).unwrap();
        let (top, left) = (pads[0] as usize, pads[1] as usize);
        let (oh, ow) = (
            2 * h - top - pads[2] as usize,
            2 * wd - left - pads[3] as usize,
        );
        assert_eq!(out[0].1.shape(), &[2, m, oh, ow], "pads {pads:?}");
        let got = out[0].1.as_slice::<f32>().unwrap();
        for (img, o, y, xo) in (0..2).flat_map(|i| {
            (0..m).flat_map(move |o| (0..oh).flat_map(move |y| (0..ow).map(move |x| (i, o, y, x))))
        }) {
            let (fy, fx) = (y + top, xo + left);
            let mut want = bias[o];
            for ch in 0..c {
                let xv = x[((img * c + ch) * h + fy / 2) * wd + fx / 2];
                want += xv * w[((ch * m + o) * 2 + fy % 2) * 2 + fx % 2];
            }
            let at = ((img * m + o) * oh + y) * ow + xo;
            assert!(
                (got[at] - want).abs() <= 1e-5,
                "pads {pads:?} image {img} filter {o} at ({y}, {xo}): {} vs {want}",
                got[at]
            );
        }
    }
}
