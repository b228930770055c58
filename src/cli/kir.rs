//! `kiln check` and `kiln fmt`: .kir files parsed, verified (every error with its location)
//! and printed in canonical form.

use std::path::{Path, PathBuf};

use kiln::Graph;

use crate::load::{parse_kir, read};

use crate::Failure;

pub fn read_text(path: &Path) -> Result<String, Failure> {
    String::from_utf8(read(path)?)
        .map_err(|_| Failure(format!("{} is not UTF-8 text", path.display())))
}

pub fn verify_diagnostics(path: &Path, g: &Graph) -> Vec<String> {
    match kiln::verify(g) {
        Ok(_) => vec![],
        Err(errs) => errs
            .errors
            .iter()
            .map(|e| {
                let at = e.origin.loc.map_or(String::new(), |l| format!("{l}:"));
                let node = e.node.as_ref().map_or(String::new(), |n| format!("{n}: "));
                format!("{}:{at} error: {node}{}", path.display(), e.message)
            })
            .collect(),
    }
}

pub fn check(files: &[PathBuf]) -> Result<(), Failure> {
    let mut failed = 0;
    for path in files {
        let m = match parse_kir(path) {
            Ok(m) => m,
            Err(Failure(msg)) => {
                eprintln!("{msg}");
                failed += 1;
                continue;
            }
        };
        let diags: Vec<String> = m
            .graphs()
            .flat_map(|g| verify_diagnostics(path, g))
            .collect();
        for d in &diags {
            eprintln!("{d}");
        }
        if diags.is_empty() {
            println!("{}: ok ({} functions)", path.display(), m.funcs.len());
        } else {
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(Failure(format!(
            "{failed} of {} files have errors",
            files.len()
        )));
    }
    Ok(())
}

pub fn fmt(file: &Path, check: bool, write: bool) -> Result<(), Failure> {
    let text = read_text(file)?;
    let m = parse_kir(file)?;
    let graphs: Vec<Graph> = m.graphs().cloned().collect();
    let pretty = kiln::print_module(&graphs);
    if check {
        if pretty != text {
            return Err(Failure(format!("{} is not formatted", file.display())));
        }
    } else if write {
        if pretty != text {
            std::fs::write(file, &pretty)
                .map_err(|e| Failure(format!("cannot write {}: {e}", file.display())))?;
        }
    } else {
        print!("{pretty}");
    }
    Ok(())
}
