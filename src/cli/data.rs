//! Tensors in files: `.npz` archives, `.npy` arrays, ONNX `TensorProto` files (`.pb`, as ONNX
//! test data stores them) and folders of those; the kind of a file comes from its content.
//! Also where outputs go (checked before any work) and how they compare with expected ones.

use std::path::{Path, PathBuf};

use kiln::onnx::Tolerance;
use kiln::{npz, Tensor};

use crate::load::read;
use crate::Failure;

/// The files a path stands for: itself, or for a folder its `{prefix}N.pb` files in order (ONNX
/// test data: `test_data_set_0/input_0.pb`, ...), else its `.npy`, `.npz` and `.pb` files by
/// name.
fn files(path: &Path, prefix: &str) -> Result<Vec<PathBuf>, Failure> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Failure(format!("cannot read {}: {e}", path.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let numbered = numbered(&entries, prefix);
    if !numbered.is_empty() {
        return Ok(numbered);
    }
    let mut all: Vec<PathBuf> = entries
        .into_iter()
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["npy", "npz", "pb"].contains(&e))
        })
        .collect();
    all.sort();
    if all.is_empty() {
        return Err(Failure(format!(
            "{} holds no {prefix}N.pb, .npy, .npz or .pb files",
            path.display()
        )));
    }
    Ok(all)
}

/// The `{prefix}N.pb` files among `entries`, in the order of N.
fn numbered(entries: &[PathBuf], prefix: &str) -> Vec<PathBuf> {
    let mut found: Vec<(usize, PathBuf)> = entries
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let n = name
                .strip_prefix(prefix)?
                .strip_suffix(".pb")?
                .parse()
                .ok()?;
            Some((n, p.clone()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// The `{prefix}N.pb` files of a folder (ONNX test data), in order.
pub fn numbered_files(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>, Failure> {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Failure(format!("cannot read {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    Ok(numbered(&entries, prefix))
}

/// Reads named tensors from `paths` (files or folders; see [`files`]). An `.npy` file is named
/// by its file stem, a `.pb` by the name it records, else by its position among the unnamed
/// ones in `positional` (the model's inputs or outputs, in order).
pub fn read_tensors(
    paths: &[PathBuf],
    prefix: &str,
    positional: &[String],
) -> Result<Vec<(String, Tensor)>, Failure> {
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let mut from: Vec<PathBuf> = Vec::new();
    let mut unnamed = 0;
    for p in paths {
        for file in files(p, prefix)? {
            let shown = file.display().to_string();
            let bytes = read(&file)?;
            let fail = |e: &dyn std::fmt::Display| Failure(format!("{shown}: {e}"));
            let found: Vec<(String, Tensor)> = if bytes.starts_with(b"PK") {
                npz::read_npz(&bytes).map_err(|e| fail(&e))?
            } else if bytes.starts_with(b"\x93NUMPY") {
                let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned());
                let t = npz::read_npy(&bytes).map_err(|e| fail(&e))?;
                vec![(stem.unwrap_or_default(), t)]
            } else {
                use prost::Message;
                let proto = kiln::frontends::onnx::proto::TensorProto::decode(bytes.as_slice())
                    .map_err(|e| fail(&format!("not an .npz, .npy or ONNX TensorProto: {e}")))?;
                let t = kiln::frontends::onnx::decode_tensor(&proto, &Default::default())
                    .map_err(|e| fail(&e))?;
                let name = if proto.name.is_empty() {
                    let n = positional.get(unnamed).cloned().ok_or_else(|| {
                        fail(&format!(
                            "the tensor has no name and the model has only {} of these",
                            positional.len()
                        ))
                    })?;
                    unnamed += 1;
                    n
                } else {
                    proto.name.clone()
                };
                vec![(name, t)]
            };
            for (name, t) in found {
                if let Some(i) = out.iter().position(|(n, _)| *n == name) {
                    return Err(Failure(format!(
                        "\"{name}\" is given twice ({} and {shown})",
                        from[i].display()
                    )));
                }
                out.push((name, t));
                from.push(file.clone());
            }
        }
    }
    Ok(out)
}

/// Fails unless a file can be written at `path`: its folder exists and it is not a folder
/// itself. Commands check their outputs before doing any work.
pub fn check_output(path: &Path) -> Result<(), Failure> {
    if path.is_dir() {
        return Err(Failure(format!(
            "cannot write {}: it is a directory",
            path.display()
        )));
    }
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) if !parent.is_dir() => Err(Failure(format!(
            "cannot write {}: {} is not a directory",
            path.display(),
            parent.display()
        ))),
        _ => Ok(()),
    }
}

/// The largest absolute difference between two float tensors of one shape (0 for others).
fn max_abs_diff(got: &Tensor, want: &Tensor) -> f64 {
    if !got.dtype().is_float() || got.shape() != want.shape() {
        return 0.0;
    }
    got.to_f64_vec()
        .iter()
        .zip(want.to_f64_vec())
        .map(|(a, b)| (a - b).abs())
        .filter(|d| !d.is_nan())
        .fold(0.0, f64::max)
}

/// Compares outputs with expected tensors by name: prints one line per expected tensor and
/// fails when any differs (beyond `tol` for floats) or is not an output.
pub fn check_expected(
    outputs: &[(String, Tensor)],
    expected: &[(String, Tensor)],
    tol: Tolerance,
) -> Result<(), Failure> {
    let mut bad = 0;
    for (name, want) in expected {
        match outputs.iter().find(|(n, _)| n == name) {
            None => {
                bad += 1;
                println!("FAIL {name}: not an output of the model");
            }
            Some((_, got)) => match kiln::onnx::mismatch(got, want, tol) {
                Some(why) => {
                    bad += 1;
                    println!("FAIL {name}: {why}");
                }
                None => println!(
                    "ok   {name}: {} (max abs diff {:.3e})",
                    got.ty(),
                    max_abs_diff(got, want)
                ),
            },
        }
    }
    for (name, _) in outputs {
        if !expected.iter().any(|(n, _)| n == name) {
            println!("     {name}: not checked (no expected value)");
        }
    }
    match bad {
        0 => Ok(()),
        n => Err(Failure(format!(
            "{n} of {} expected outputs differ (rtol {}, atol {})",
            expected.len(),
            tol.rtol,
            tol.atol
        ))),
    }
}
