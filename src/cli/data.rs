//! Tensors in files: `.npz` archives, `.npy` arrays, ONNX `TensorProto` files (`.pb`, as ONNX
//! test data stores them) and folders of those; the kind of a file comes from its content.
//! Also where outputs go (checked before any work) and how they compare with expected ones.

use std::path::{Path, PathBuf};

use kiln::frontends::onnx::proto::TensorProto;
use kiln::frontends::onnx::{decode_value, Kind};
use kiln::onnx::Tolerance;
use kiln::{npz, Tensor};

use crate::load::read;
use crate::Failure;

/// The files a path stands for, each with its N when it is a `{prefix}N.pb`: the path itself,
/// or for a folder its `{prefix}N.pb` files in order (ONNX test data: `test_data_set_0/
/// input_0.pb`, ...), else its `.npy`, `.npz` and `.pb` files by name (but another prefix's
/// numbered files: a folder's `output_0.pb` is no input).
fn files(path: &Path, prefix: &str) -> Result<Vec<(PathBuf, Option<usize>)>, Failure> {
    if !path.is_dir() {
        let n = number(path, prefix);
        return Ok(vec![(path.to_path_buf(), n)]);
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Failure(format!("cannot read {}: {e}", path.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let numbered = numbered_files(path, prefix)?;
    if !numbered.is_empty() {
        return Ok(numbered
            .into_iter()
            .map(|p| {
                let n = number(&p, prefix);
                (p, n)
            })
            .collect());
    }
    let mut all: Vec<PathBuf> = entries
        .into_iter()
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["npy", "npz", "pb"].contains(&e))
                && ["input_", "output_"]
                    .iter()
                    .all(|other| number(p, other).is_none())
        })
        .collect();
    all.sort();
    if all.is_empty() {
        return Err(Failure(format!(
            "{} holds no {prefix}N.pb, .npy, .npz or .pb files",
            path.display()
        )));
    }
    Ok(all.into_iter().map(|p| (p, None)).collect())
}

/// N when `path` is named `{prefix}N.pb`.
fn number(path: &Path, prefix: &str) -> Option<usize> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix(prefix)?.strip_suffix(".pb")?.parse().ok()
}

/// The `{prefix}N.pb` files of a folder (ONNX test data), in order; none is no error.
pub fn numbered_files(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>, Failure> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| Failure(format!("cannot read {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| Some((number(&p, prefix)?, p)))
        .collect();
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Reads named tensors from `paths` (files or folders; see [`files`]). An `.npy` file is named
/// by its file stem; a `.pb` file (a TensorProto, or a SequenceProto or OptionalProto for a
/// sequence or optional) is the `{prefix}N.pb` file of the N-th of `positional` (the model's
/// inputs or outputs, in order, with their kinds), else named as it records, else by its
/// position among the unnamed ones. Sequences and optionals come out as their tensors (`s[0]`,
/// ...).
pub fn read_tensors(
    paths: &[PathBuf],
    prefix: &str,
    positional: &[(String, Kind)],
) -> Result<Vec<(String, Tensor)>, Failure> {
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let mut from: Vec<PathBuf> = Vec::new();
    let mut unnamed = 0;
    for p in paths {
        for (file, n) in files(p, prefix)? {
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
                let proto = TensorProto::decode(bytes.as_slice()).ok();
                let recorded = proto.as_ref().map(|t| t.name.clone()).unwrap_or_default();
                let slot = match n {
                    Some(n) => Some(n),
                    None if !recorded.is_empty() => {
                        positional.iter().position(|(name, _)| *name == recorded)
                    }
                    None => {
                        unnamed += 1;
                        Some(unnamed - 1)
                    }
                };
                let (name, kind) = match slot.and_then(|i| positional.get(i)) {
                    Some((name, kind)) => (name.clone(), kind.clone()),
                    None if !recorded.is_empty() => (recorded, Kind::Tensor),
                    None => {
                        return Err(fail(&format!(
                            "which of the model's {} values it is is unknown (it records no name)",
                            positional.len()
                        )))
                    }
                };
                decode_value(&bytes, &kind, &name).map_err(|e| fail(&e))?
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
