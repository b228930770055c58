//! The C ABI of a compiled model: what a shared library made by `kiln compile --emit so`
//! exports. The library is this crate (as a static library) linked with the model's artifact
//! and a few lines of generated C ([`shim`]) that define the model's API under its name
//! (`mlp_create`, `mlp_run`, `mlp_destroy`, `mlp_last_error`) on top of this crate's
//! `kiln_rt_*` entry points, which stay local to the library (so any number of model libraries
//! link into one program); [`header`] writes the `mlp.h` that declares it all. Every entry
//! point catches panics and reports failures through [`kiln_rt_last_error`], never by unwinding
//! into C.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::sync::Arc;

use ir::{DType, Tensor, TensorType};
use runtime::exec::{CompileOptions, Executable};

/// The most axes a [`KilnBuffer`] describes.
pub const MAX_RANK: usize = 8;

/// A named tensor crossing the C boundary (`kiln_buffer` in `model.h`).
#[repr(C)]
pub struct KilnBuffer {
    /// The input's or output's name (NUL-terminated).
    pub name: *const c_char,
    /// Position of the element type in `DType::ALL` (`KILN_F32`, ... in `model.h`).
    pub dtype: i32,
    pub rank: u32,
    pub shape: [i64; MAX_RANK],
    /// Inputs: the elements. Outputs: where the run writes them.
    pub data: *mut u8,
    /// Inputs: bytes at `data`. Outputs: the capacity at `data`; the run sets it to the bytes
    /// written (or, when the capacity is too small, to the bytes needed).
    pub bytes: usize,
}

/// A loaded model (`kiln_model` in `model.h`).
pub struct Model {
    exe: Executable,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f`, turning an error or a panic into the last error and `fail`.
fn guarded<T>(fail: T, f: impl FnOnce() -> Result<T, String>) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(message)) => {
            set_error(&message);
            fail
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            set_error(&format!("kiln runtime panicked: {what}"));
            fail
        }
    }
}

/// Loads the artifact at `bytes` (`len` bytes, read in place: a library's embedded
/// artifact); null on failure (see [`kiln_rt_last_error`]).
///
/// # Safety
/// `bytes` must point to `len` readable bytes that stay valid and unchanged for as long as
/// the program runs (static data).
#[no_mangle]
pub unsafe extern "C" fn kiln_rt_create(bytes: *const u8, len: usize) -> *mut Model {
    guarded(std::ptr::null_mut(), || {
        if bytes.is_null() {
            return Err("no artifact bytes".into());
        }
        // SAFETY: the caller's contract: static bytes.
        let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(bytes, len) };
        let exe = runtime::aot::load_shared(Arc::new(bytes), &CompileOptions::default())
            .map_err(|e| format!("loading the model: {e}"))?;
        Ok(Box::into_raw(Box::new(Model { exe })))
    })
}

/// Frees a model made by [`kiln_rt_create`] (null is ignored).
///
/// # Safety
/// `model` is null or a model not yet destroyed, not in use by another thread.
#[no_mangle]
pub unsafe extern "C" fn kiln_rt_destroy(model: *mut Model) {
    if !model.is_null() {
        // SAFETY: the caller's contract: it came from Box::into_raw in kiln_rt_create.
        guarded((), || {
            drop(unsafe { Box::from_raw(model) });
            Ok(())
        })
    }
}

/// Why the last failing call on this thread failed (empty if none has); valid until the next
/// call into the library on this thread.
#[no_mangle]
pub extern "C" fn kiln_rt_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Runs the model: `inputs` holds every input by name; `outputs` names the outputs wanted
/// (any subset, in any order), each with room for its elements. Returns 0, or -1 with
/// [`kiln_rt_last_error`] set; when only room was short, every output buffer has its dtype,
/// shape and needed `bytes` set, so one retry with that room succeeds. Many threads may run
/// one model at once.
///
/// # Safety
/// `model` is a live model; `inputs`/`outputs` point to `n_inputs`/`n_outputs` buffers whose
/// names are NUL-terminated strings and whose `data` has `bytes` readable (inputs) or
/// writable (outputs) bytes.
#[no_mangle]
pub unsafe extern "C" fn kiln_rt_run(
    model: *const Model,
    inputs: *const KilnBuffer,
    n_inputs: usize,
    outputs: *mut KilnBuffer,
    n_outputs: usize,
) -> i32 {
    guarded(-1, || {
        // SAFETY: the caller's contract, for all three.
        let model = unsafe { model.as_ref() }.ok_or("no model")?;
        let inputs = unsafe { slice(inputs, n_inputs) }?;
        let outputs = unsafe { slice_mut(outputs, n_outputs) }?;
        run(model, inputs, outputs).map(|()| 0)
    })
}

unsafe fn slice<'a, T>(p: *const T, n: usize) -> Result<&'a [T], String> {
    match (p.is_null(), n) {
        (_, 0) => Ok(&[]),
        (true, _) => Err("a null buffer array".into()),
        // SAFETY: the caller's contract.
        (false, n) => Ok(unsafe { std::slice::from_raw_parts(p, n) }),
    }
}

unsafe fn slice_mut<'a, T>(p: *mut T, n: usize) -> Result<&'a mut [T], String> {
    match (p.is_null(), n) {
        (_, 0) => Ok(&mut []),
        (true, _) => Err("a null buffer array".into()),
        // SAFETY: the caller's contract.
        (false, n) => Ok(unsafe { std::slice::from_raw_parts_mut(p, n) }),
    }
}

/// A buffer's name.
fn name(b: &KilnBuffer) -> Result<String, String> {
    if b.name.is_null() {
        return Err("a buffer without a name".into());
    }
    // SAFETY: the caller's contract: a NUL-terminated string.
    Ok(unsafe { CStr::from_ptr(b.name) }
        .to_string_lossy()
        .into_owned())
}

fn dtype(code: i32) -> Option<DType> {
    usize::try_from(code)
        .ok()
        .and_then(|i| DType::ALL.get(i).copied())
}

fn run(model: &Model, inputs: &[KilnBuffer], outputs: &mut [KilnBuffer]) -> Result<(), String> {
    let params = model.exe.params();
    let names = |list: &[(String, TensorType)]| {
        let v: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
        v.join(", ")
    };
    let mut given: Vec<(String, &KilnBuffer)> = Vec::new();
    for b in inputs {
        let n = name(b)?;
        if !params.iter().any(|(p, _)| *p == n) {
            return Err(format!(
                "the model has no input \"{n}\" (it takes {})",
                names(params)
            ));
        }
        if given.iter().any(|(g, _)| *g == n) {
            return Err(format!("input \"{n}\" is given twice"));
        }
        given.push((n, b));
    }
    let mut ordered = Vec::with_capacity(params.len());
    for (p, ty) in params {
        let b = given
            .iter()
            .find(|(g, _)| g == p)
            .map(|(_, b)| *b)
            .ok_or_else(|| format!("missing input \"{p}\" (the model takes {})", names(params)))?;
        ordered.push(input(p, ty, b)?);
    }
    let mut wanted = Vec::with_capacity(outputs.len());
    for b in outputs.iter() {
        let n = name(b)?;
        let outs = model.exe.outputs();
        let i = outs
            .iter()
            .position(|(o, _)| *o == n)
            .ok_or_else(|| format!("the model has no output \"{n}\" (it has {})", names(outs)))?;
        wanted.push((n, i));
    }
    let results = model.exe.run(&ordered).map_err(|e| e.to_string())?;
    // Every buffer learns its output's size, so that one retry can make room for all.
    let mut first_error = None;
    for (b, (n, i)) in outputs.iter_mut().zip(wanted) {
        if let Err(e) = output(&n, &results[i], b) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The tensor an input buffer holds, checked against the parameter's type.
fn input(name: &str, ty: &TensorType, b: &KilnBuffer) -> Result<Tensor, String> {
    let fail = |m: String| format!("input \"{name}\": {m}");
    let d = dtype(b.dtype).ok_or_else(|| fail(format!("unknown dtype code {}", b.dtype)))?;
    if d != ty.dtype {
        return Err(fail(format!("it is {d}, the model takes {ty}")));
    }
    let rank = b.rank as usize;
    if rank > MAX_RANK {
        return Err(fail(format!("rank {rank} is more than {MAX_RANK}")));
    }
    let shape = b.shape[..rank]
        .iter()
        .map(|&n| usize::try_from(n).map_err(|_| fail(format!("a dimension is {n}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &n| a.checked_mul(n))
        .ok_or_else(|| fail("its size overflows".into()))?;
    let need = runtime::aot::encoded_len(d, numel as u64)
        .ok_or_else(|| fail("its size overflows".into()))?;
    if need != b.bytes as u64 {
        return Err(fail(format!(
            "shape {shape:?} of {d} is {need} bytes, the buffer has {}",
            b.bytes
        )));
    }
    if b.data.is_null() && need > 0 {
        return Err(fail("its data is null".into()));
    }
    let bytes: &[u8] = if need == 0 {
        &[]
    } else {
        // SAFETY: the caller's contract: `bytes` readable bytes at `data`.
        unsafe { std::slice::from_raw_parts(b.data, b.bytes) }
    };
    runtime::aot::decode(d, shape, bytes).ok_or_else(|| fail("its bytes do not fit".into()))
}

/// Writes a result into an output buffer (its dtype, shape and byte count too).
fn output(name: &str, t: &Tensor, b: &mut KilnBuffer) -> Result<(), String> {
    let fail = |m: String| format!("output \"{name}\": {m}");
    if t.shape().len() > MAX_RANK {
        return Err(fail(format!(
            "rank {} is more than {MAX_RANK}",
            t.shape().len()
        )));
    }
    let bytes =
        runtime::aot::encode(t).ok_or_else(|| fail(format!("{} has no C layout", t.dtype())))?;
    b.dtype = DType::ALL.iter().position(|&d| d == t.dtype()).unwrap_or(0) as i32;
    b.rank = t.shape().len() as u32;
    b.shape = [0; MAX_RANK];
    for (s, &n) in b.shape.iter_mut().zip(t.shape()) {
        *s = n as i64;
    }
    let room = b.bytes;
    b.bytes = bytes.len();
    if bytes.len() > room {
        return Err(fail(format!(
            "it needs {} bytes, the buffer has {room}",
            bytes.len()
        )));
    }
    if !bytes.is_empty() {
        if b.data.is_null() {
            return Err(fail("its data is null".into()));
        }
        // SAFETY: the caller's contract: `room` writable bytes at `data`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), b.data, bytes.len()) };
    }
    Ok(())
}

/// The functions a model library named `name` exports: its API, and nothing else.
pub fn exports(name: &str) -> [String; 4] {
    ["create", "run", "destroy", "last_error"].map(|f| format!("{name}_{f}"))
}

/// Whether `name` can name a model library: a C identifier (it prefixes every symbol and,
/// upper-cased, every macro of the library) starting with a letter, and not `kiln...` (the
/// runtime's own names and the shared header guard).
pub fn is_valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.to_ascii_lowercase().starts_with("kiln")
}

/// The C identifier a library's name is made from when none is given: `libmlp.so` → `mlp`,
/// `my-model.so` → `my_model`.
pub fn default_name(file_stem: &str) -> String {
    let stem = file_stem
        .strip_prefix("lib")
        .filter(|s| !s.is_empty())
        .unwrap_or(file_stem);
    let mut out: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

/// The C declarations of a model library named `name` (see [`is_valid_name`]): `name.h`.
/// `about` says what was compiled (the first comment line); `inputs` and `outputs` are the
/// model's, in order, with their types. The element types and `kiln_buffer` are shared by
/// every model's header (guarded once); the rest is prefixed: `name_create`, `NAME_INPUTS`,
/// the include guard `NAME_H`.
pub fn header(
    name: &str,
    about: &str,
    inputs: &[(String, TensorType)],
    outputs: &[(String, TensorType)],
) -> String {
    let upper = name.to_uppercase();
    let mut h = String::new();
    let about = about.replace("*/", "* /");
    h.push_str(&format!(
        "/* {about}\n * Generated by kiln {}. The library holds the model's code and weights; link it\n * (cc app.c -L<dir> -l<library>) and nothing else is needed. */\n",
        env!("CARGO_PKG_VERSION")
    ));
    h.push_str(&format!(
        "#ifndef {upper}_H\n#define {upper}_H\n\n#include <stddef.h>\n#include <stdint.h>\n\n#ifdef __cplusplus\nextern \"C\" {{\n#endif\n\n"
    ));
    h.push_str("/* What every kiln model library shares. */\n#ifndef KILN_TYPES_H\n#define KILN_TYPES_H\n\n");
    h.push_str("/* Element types (kiln_buffer.dtype), little-endian; types narrower than a byte and\n * the f8 types take one byte per element. */\nenum kiln_dtype {\n");
    for (i, d) in DType::ALL.iter().enumerate() {
        h.push_str(&format!("    KILN_{} = {i},\n", d.name().to_uppercase()));
    }
    h.push_str("};\n\n");
    h.push_str(&format!("#define KILN_MAX_RANK {MAX_RANK}\n\n"));
    h.push_str(
        "/* A named tensor. Inputs: set every field; `bytes` is the size of `data`. Outputs: set\n * `name`, `data` and `bytes` (the room at `data`); a run fills in `dtype`, `rank`, `shape`\n * and `bytes` (the bytes written, or needed when the room is too small). */\ntypedef struct kiln_buffer {\n    const char *name;\n    int32_t dtype;\n    uint32_t rank;\n    int64_t shape[KILN_MAX_RANK];\n    void *data;\n    size_t bytes;\n} kiln_buffer;\n\n#endif\n\n",
    );
    h.push_str(&format!(
        "/* The model {name}. */\ntypedef struct {name}_model {name}_model;\n\n"
    ));
    let list = |h: &mut String, what: &str, items: &[(String, TensorType)]| {
        h.push_str(&format!(
            "/* {what} ({}); named dimensions take their values from the input shapes:\n",
            items.len()
        ));
        for (n, t) in items {
            h.push_str(&format!(" *   \"{}\": {t}\n", n.replace("*/", "* /")));
        }
        h.push_str(" */\n");
    };
    list(&mut h, "Inputs", inputs);
    h.push_str(&format!("#define {upper}_INPUTS {}\n", inputs.len()));
    list(&mut h, "Outputs", outputs);
    h.push_str(&format!("#define {upper}_OUTPUTS {}\n\n", outputs.len()));
    h.push_str("/* The same, for programs: names, dtypes, ranks and shapes (-1: a named dimension), each\n * list ending in a NULL name. */\n");
    tables(&mut h, &format!("{upper}_INPUT"), inputs);
    tables(&mut h, &format!("{upper}_OUTPUT"), outputs);
    h.push_str(&format!(
        "/* Loads the model; NULL on failure (see {name}_last_error). */\n{name}_model *{name}_create(void);\n\n/* Runs the model on every input (by name) and writes the outputs named in `outputs` (any\n * subset). Returns 0, or -1 with {name}_last_error set. When only room was short, every\n * output has its dtype, shape and needed bytes set: allocate that and run again. Threads\n * may run one model at once. */\nint {name}_run(const {name}_model *model, const kiln_buffer *inputs, size_t n_inputs,\n          kiln_buffer *outputs, size_t n_outputs);\n\n/* Frees the model (NULL is ignored). */\nvoid {name}_destroy({name}_model *model);\n\n/* Why the last failing call on this thread failed; valid until the next call. */\nconst char *{name}_last_error(void);\n\n#ifdef __cplusplus\n}}\n#endif\n\n#endif\n"
    ));
    h
}

/// `static const` tables describing `items` (`{what}_NAMES`, `_DTYPES`, `_RANKS`,
/// `_SHAPES`), with a terminating entry.
fn tables(h: &mut String, what: &str, items: &[(String, TensorType)]) {
    let c_string = |s: &str| {
        let mut out = String::from("\"");
        for ch in s.chars() {
            match ch {
                '"' | '\\' => {
                    out.push('\\');
                    out.push(ch);
                }
                ' '..='~' => out.push(ch),
                _ => {
                    let mut buf = [0u8; 4];
                    for b in ch.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\{b:03o}"));
                    }
                }
            }
        }
        out.push('"');
        out
    };
    let mut names: Vec<String> = items.iter().map(|(n, _)| c_string(n)).collect();
    names.push("NULL".into());
    let mut dtypes: Vec<String> = items
        .iter()
        .map(|(_, t)| format!("KILN_{}", t.dtype.name().to_uppercase()))
        .collect();
    dtypes.push("-1".into());
    let mut ranks: Vec<String> = items.iter().map(|(_, t)| t.rank().to_string()).collect();
    ranks.push("0".into());
    let mut shapes: Vec<String> = items
        .iter()
        .map(|(_, t)| {
            let dims: Vec<String> = t
                .shape
                .dims()
                .iter()
                .map(|d| d.as_const().unwrap_or(-1).to_string())
                .collect();
            match dims.is_empty() {
                // A scalar: C wants at least one initializer.
                true => "{0}".to_string(),
                false => format!("{{{}}}", dims.join(", ")),
            }
        })
        .collect();
    shapes.push("{0}".into());
    for (ty, table, items) in [
        ("const char *const", "NAMES[]", names),
        ("const int32_t", "DTYPES[]", dtypes),
        ("const uint32_t", "RANKS[]", ranks),
        ("const int64_t", "SHAPES[][KILN_MAX_RANK]", shapes),
    ] {
        h.push_str(&format!(
            "static {ty} {what}_{table} = {{{}}};\n",
            items.join(", ")
        ));
    }
    h.push('\n');
}

/// The generated C of a library named `name`: its API (declared by `header`, which it
/// includes as `header_file`) over the runtime's `kiln_rt_*` entry points, the model loaded
/// from the artifact embedded in the library (`kiln_artifact`, up to `kiln_artifact_end`; see
/// [`artifact_asm`]).
pub fn shim(name: &str, header_file: &str) -> String {
    format!(
        "/* Generated by kiln: the API of the model library {name}. */\n#include \"{header_file}\"\n\nextern void *kiln_rt_create(const unsigned char *bytes, size_t len);\nextern int kiln_rt_run(const void *model, const kiln_buffer *inputs, size_t n_inputs,\n                       kiln_buffer *outputs, size_t n_outputs);\nextern void kiln_rt_destroy(void *model);\nextern const char *kiln_rt_last_error(void);\nextern const unsigned char kiln_artifact[];\nextern const unsigned char kiln_artifact_end[];\n\n{name}_model *{name}_create(void) {{\n    return ({name}_model *)kiln_rt_create(kiln_artifact, (size_t)(kiln_artifact_end - kiln_artifact));\n}}\n\nint {name}_run(const {name}_model *model, const kiln_buffer *inputs, size_t n_inputs,\n          kiln_buffer *outputs, size_t n_outputs) {{\n    return kiln_rt_run(model, inputs, n_inputs, outputs, n_outputs);\n}}\n\nvoid {name}_destroy({name}_model *model) {{ kiln_rt_destroy(model); }}\n\nconst char *{name}_last_error(void) {{ return kiln_rt_last_error(); }}\n"
    )
}

/// Assembly embedding the artifact file `file` (a plain file name, in the directory the
/// assembler runs in) page-aligned between `kiln_artifact` and `kiln_artifact_end`.
pub fn artifact_asm(file: &str) -> String {
    format!(
        "    .section .rodata.kiln_artifact,\"a\"\n    .balign 4096\n    .globl kiln_artifact\n    .hidden kiln_artifact\nkiln_artifact:\n    .incbin \"{file}\"\n    .globl kiln_artifact_end\n    .hidden kiln_artifact_end\nkiln_artifact_end:\n    .section .note.GNU-stack,\"\",@progbits\n"
    )
}

/// The linker version script of a library named `name`: [`exports`] and nothing else.
pub fn version_script(name: &str) -> String {
    format!(
        "{{\n  global: {};\n  local: *;\n}};\n",
        exports(name).join("; ")
    )
}
