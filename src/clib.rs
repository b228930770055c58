//! Shared libraries with a C ABI (`kiln compile --emit so`): a model's artifact embedded in
//! kiln's C runtime (the `kiln-capi` static library) by the system C compiler, with a
//! generated header. The library holds the code and the weights; programs using it need no
//! Rust toolchain and no kiln.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Graph};

pub use kiln_capi::is_valid_name;

/// The static library every model library links, as cargo names it.
const RUNTIME_LIB: &str = "libkiln_capi.a";

/// What the static library needs from the system (`rustc --print native-static-libs`).
const NATIVE_LIBS: [&str; 7] = [
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

fn fail(m: impl Into<String>) -> Error {
    Error::SharedLibrary(m.into())
}

/// Where kiln's C runtime library is: `$KILN_CAPI_LIB`, else [`runtime_library_near`] the
/// running kiln.
pub fn runtime_library() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("KILN_CAPI_LIB") {
        let p = PathBuf::from(p);
        return match p.is_file() {
            true => Ok(p),
            false => Err(fail(format!("KILN_CAPI_LIB={} is not a file", p.display()))),
        };
    }
    let exe = std::env::current_exe().map_err(|e| fail(format!("where is kiln: {e}")))?;
    runtime_library_near(exe.parent().unwrap_or(Path::new(".")))
}

/// The C runtime library for a kiln in `dir`: in an installed layout (`./install.sh PREFIX`)
/// `PREFIX/lib/libkiln_capi.a` for `PREFIX/bin/kiln`; in a cargo target directory the copy
/// `cargo build` puts beside kiln, or the newest under `deps/` (where builds of kiln alone
/// and of tests leave it).
pub fn runtime_library_near(dir: &Path) -> Result<PathBuf, Error> {
    let installed = dir.join("..").join("lib").join(RUNTIME_LIB);
    if installed.is_file() {
        return Ok(installed);
    }
    let mut found: Vec<PathBuf> = vec![dir.join(RUNTIME_LIB)];
    if let Ok(entries) = std::fs::read_dir(dir.join("deps")) {
        found.extend(
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libkiln_capi-") && n.ends_with(".a"))
                }),
        );
    }
    found
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p.clone())
        .ok_or_else(|| {
            fail(format!(
                "kiln's C runtime ({RUNTIME_LIB}) is neither in {} nor beside kiln in {}: \
                 install kiln with `./install.sh PREFIX` from its source tree (`cargo install` \
                 copies only the binary), build it with `cargo build --release`, or point \
                 KILN_CAPI_LIB at it",
                installed.display(),
                dir.display()
            ))
        })
}

/// The name a library at `library` gets when none is given: `libmlp.so` → `mlp` (see
/// [`kiln_capi::default_name`]).
pub fn default_name(library: &Path) -> String {
    let stem = library
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    kiln_capi::default_name(&stem)
}

/// Fails unless `name` can name a library: a C identifier starting with a letter, not `kiln...`,
/// whose exported functions (`name_create`, ...) are no function a program already has (the C
/// library's `pthread_create` for a library named `pthread`, ...), which they would replace.
pub fn check_name(name: &str) -> Result<(), Error> {
    if !kiln_capi::is_valid_name(name) {
        return Err(fail(format!(
            "`{name}` cannot name a library's C API (--name): it prefixes C symbols and macros, \
             so it must be a C identifier starting with a letter (letters, digits, `_`), and not \
             start with `kiln`"
        )));
    }
    for symbol in kiln_capi::exports(name) {
        let c = std::ffi::CString::new(symbol.clone()).map_err(|e| fail(e.to_string()))?;
        // SAFETY: a NUL-terminated name; RTLD_DEFAULT searches what this process has loaded.
        let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c.as_ptr()) };
        if !found.is_null() {
            return Err(fail(format!(
                "a library named `{name}` would export `{symbol}`, which programs already have \
                 (from the C library): choose another --name"
            )));
        }
    }
    Ok(())
}

/// Builds the shared library `out` named `name` (a C identifier: its symbols are `name_create`,
/// `name_run`, ...) from artifact bytes compiled from `g`, and its header `name.h` beside it;
/// `about` names the model in the header. Returns the header's path. The C compiler is
/// `$CC`, else `cc`.
pub fn build(
    artifact: &[u8],
    g: &Graph,
    name: &str,
    about: &str,
    out: &Path,
) -> Result<PathBuf, Error> {
    check_name(name)?;
    let inputs = crate::params(g);
    let outputs: Vec<_> = g
        .outputs()
        .iter()
        .map(|(n, v)| (n.clone(), g.value_type(*v).clone()))
        .collect();
    for (name, ty) in inputs.iter().chain(&outputs) {
        if ty.rank() > kiln_capi::MAX_RANK {
            return Err(fail(format!(
                "\"{name}\" is {ty}: the C interface takes at most {} axes",
                kiln_capi::MAX_RANK
            )));
        }
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(fail(format!(
                "cannot write {}: {} is not a directory",
                out.display(),
                parent.display()
            )));
        }
    }
    let header_text = kiln_capi::header(name, about, &inputs, &outputs);
    let lib = runtime_library()?;
    let dir = scratch_dir()?;
    let result = build_in(&dir, &lib, name, &header_text, artifact, out);
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    let header = out.with_file_name(format!("{name}.h"));
    std::fs::write(&header, header_text)
        .map_err(|e| fail(format!("cannot write {}: {e}", header.display())))?;
    Ok(header)
}

/// Links the library `out` in the scratch directory `dir`.
fn build_in(
    dir: &Path,
    lib: &Path,
    name: &str,
    header: &str,
    artifact: &[u8],
    out: &Path,
) -> Result<(), Error> {
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes)
            .map_err(|e| fail(format!("cannot write {}: {e}", dir.join(name).display())))
    };
    write("model.kiln", artifact)?;
    write("model.h", header.as_bytes())?;
    write("shim.c", kiln_capi::shim(name, "model.h").as_bytes())?;
    write(
        "artifact.S",
        kiln_capi::artifact_asm("model.kiln").as_bytes(),
    )?;
    write("exports.map", kiln_capi::version_script(name).as_bytes())?;
    let out_abs = absolute(out)?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let output = Command::new(&cc)
        .current_dir(dir)
        .args(["-shared", "-fPIC", "-o"])
        .arg(&out_abs)
        .args(["shim.c", "artifact.S"])
        .arg(lib)
        .args([
            "-Wl,--version-script=exports.map",
            // A runtime library from another kiln fails here, not when the program loads.
            "-Wl,-z,defs",
            "-Wl,--gc-sections",
            "-Wl,-z,noexecstack",
            "-Wl,--strip-debug",
        ])
        .args(NATIVE_LIBS)
        .output()
        .map_err(|e| fail(format!("cannot run the C compiler `{cc}` (set CC): {e}")))?;
    if !output.status.success() {
        return Err(fail(format!(
            "`{cc}` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        )));
    }
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(p).map_err(|e| fail(format!("{}: {e}", p.display())))
}

/// A fresh directory for the compiler's inputs (made here, never one that existed).
fn scratch_dir() -> Result<PathBuf, Error> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut last = None;
    for attempt in 0..100u32 {
        let dir =
            std::env::temp_dir().join(format!("kiln-so-{}-{nanos}-{attempt}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => last = Some((dir, e)),
        }
    }
    let (dir, e) = last.expect("at least one attempt");
    Err(fail(format!("cannot create {}: {e}", dir.display())))
}
