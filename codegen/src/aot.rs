//! Ahead-of-time code: kernels compiled once into a relocatable object file
//! (cranelift-object; function `kiln_kernel_{i}` for kernel `i`), and an [`Image`] that loads
//! such an object into executable memory without Cranelift — its sections laid out in one
//! mapping, relocations patched against the library functions kernels call
//! ([`crate::jit`]'s runtime symbols), then the mapping made read-only and executable.
//!
//! The object is for a [target](isa): the host the compiler runs on (its CPU's features), an
//! x86-64 level (`x86-64-v3`) or a CPU Cranelift knows (`skylake`, `znver3`); checking that a
//! loading CPU has the features it needs is the caller's (the artifact's header records them).

use std::collections::HashMap;

use cranelift_codegen::isa::{OwnedTargetIsa, TargetIsa};
use cranelift_codegen::settings::Configurable;
use cranelift_module::{default_libcall_names, Linkage};
use cranelift_object::{ObjectBuilder, ObjectModule};
use object::{
    Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationKind, RelocationTarget,
    SectionKind,
};

use crate::jit::{Code, JitError, KernelFn};
use crate::kernel::Kernel;

/// Compiles kernels into an object file for the host (see the module docs).
pub fn compile_object(kernels: &[Kernel]) -> Result<Vec<u8>, JitError> {
    compile_object_for(crate::jit::host_isa()?, kernels)
}

/// Compiles kernels into an object file for `isa` (from [`isa`]).
pub fn compile_object_for(isa: OwnedTargetIsa, kernels: &[Kernel]) -> Result<Vec<u8>, JitError> {
    crate::jit::count_compilation();
    let backend = |message: String| JitError::Backend {
        kernel: "<object>".into(),
        message,
    };
    let builder = ObjectBuilder::new(isa, "kiln", default_libcall_names())
        .map_err(|e| backend(e.to_string()))?;
    let mut module = ObjectModule::new(builder);
    crate::jit::define_all(&mut module, kernels, Linkage::Export)?;
    module.finish().emit().map_err(|e| backend(e.to_string()))
}

/// The code generator for a target: `host` (this machine's CPU and its features), or a
/// Cranelift CPU preset for this machine's architecture — an x86-64 level (`x86-64`,
/// `x86-64-v2`, `x86-64-v3`, `x86-64-v4`) or a CPU (`haswell`, `skylake`, `znver3`, ...).
pub fn isa(target: &str) -> Result<OwnedTargetIsa, JitError> {
    if target == "host" {
        return crate::jit::host_isa();
    }
    let fail = |m: String| JitError::Host(m);
    let triple = target_lexicon::Triple::host();
    let mut builder = cranelift_codegen::isa::lookup(triple.clone())
        .map_err(|e| fail(format!("{triple}: {e}")))?;
    let presets: Vec<String> = builder
        .iter()
        .filter(|s| matches!(s.kind, cranelift_codegen::settings::SettingKind::Preset))
        .map(|s| s.name.to_string())
        .collect();
    if !presets.iter().any(|p| p == target) {
        return Err(fail(format!(
            "unknown target `{target}` for {triple}: use host or one of {}",
            presets.join(", ")
        )));
    }
    builder
        .enable(target)
        .map_err(|e| fail(format!("target `{target}`: {e}")))?;
    builder
        .finish(crate::jit::shared_flags()?)
        .map_err(|e| fail(format!("target `{target}`: {e}")))
}

/// The target triple and the CPU features (Cranelift's names, `has_avx2`, ...) that code from
/// [`compile_object`] assumes: what this machine's code generator enables.
pub fn target() -> Result<(String, Vec<String>), JitError> {
    Ok(describe(&*crate::jit::host_isa()?))
}

/// An ISA's target triple and the CPU features (`has_avx2`, ...) its code assumes.
pub fn describe(isa: &dyn TargetIsa) -> (String, Vec<String>) {
    let features = isa
        .isa_flags()
        .iter()
        .filter(|f| f.name.starts_with("has_") && f.as_bool() == Some(true))
        .map(|f| f.name.to_string())
        .collect();
    (isa.triple().to_string(), features)
}

/// Why an object could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("kernel code: {0}")]
pub struct LoadError(String);

fn err(m: impl Into<String>) -> LoadError {
    LoadError(m.into())
}

/// Kernels loaded from an object file. The code lives as long as this value.
pub struct Image {
    _code: memmap2::Mmap,
    fns: Vec<KernelFn>,
}

// SAFETY: the mapping is read-only and executable after loading; kernels only touch the
// buffers their callers pass.
unsafe impl Send for Image {}
unsafe impl Sync for Image {}

impl Image {
    /// Loads the `n` kernels of an object made by [`compile_object`] on a host like this one.
    pub fn load(obj: &[u8], n: usize) -> Result<Image, LoadError> {
        let file = object::File::parse(obj).map_err(|e| err(format!("not an object: {e}")))?;
        if file.architecture() != host_architecture() {
            return Err(err(format!(
                "built for {:?}, this machine is {:?}",
                file.architecture(),
                host_architecture()
            )));
        }
        // Where each loaded section starts in the mapping.
        let mut at: HashMap<object::SectionIndex, usize> = HashMap::new();
        let mut size = 0usize;
        for s in file.sections() {
            let loaded = matches!(
                s.kind(),
                SectionKind::Text
                    | SectionKind::ReadOnlyData
                    | SectionKind::ReadOnlyString
                    | SectionKind::Data
                    | SectionKind::UninitializedData
            );
            if !loaded || s.size() == 0 {
                continue;
            }
            let align = usize::try_from(s.align()).unwrap_or(1).clamp(1, 4096);
            if !align.is_power_of_two() {
                return Err(err(format!("section {:?} has alignment {align}", s.name())));
            }
            size = size.div_ceil(align) * align;
            at.insert(s.index(), size);
            let len = usize::try_from(s.size()).map_err(|_| err("a section too large"))?;
            size = size
                .checked_add(len)
                .filter(|&n| n <= 1 << 30)
                .ok_or_else(|| err("sections larger than 1 GiB"))?;
        }
        let mut map =
            memmap2::MmapMut::map_anon(size.max(1)).map_err(|e| err(format!("mapping: {e}")))?;
        for s in file.sections() {
            let Some(&off) = at.get(&s.index()) else {
                continue;
            };
            if s.kind() == SectionKind::UninitializedData {
                continue;
            }
            let data = s.data().map_err(|e| err(format!("section data: {e}")))?;
            let end = off + data.len();
            if data.len() as u64 > s.size() || end > map.len() {
                return Err(err("section data larger than the section"));
            }
            map[off..end].copy_from_slice(data);
        }
        let symbols: HashMap<&str, *const u8> = crate::jit::runtime_symbols().into_iter().collect();
        let base = map.as_mut_ptr() as usize;
        for s in file.sections() {
            let Some(&sec_off) = at.get(&s.index()) else {
                continue;
            };
            for (off, r) in s.relocations() {
                let place = usize::try_from(off)
                    .ok()
                    .and_then(|o| o.checked_add(sec_off))
                    .ok_or_else(|| err("a relocation outside its section"))?;
                let target = match r.target() {
                    RelocationTarget::Symbol(i) => {
                        let sym = file
                            .symbol_by_index(i)
                            .map_err(|e| err(format!("relocation symbol: {e}")))?;
                        if sym.is_undefined() {
                            let name = sym.name().map_err(|e| err(e.to_string()))?;
                            *symbols
                                .get(name)
                                .ok_or_else(|| err(format!("unknown function `{name}`")))?
                                as usize
                        } else {
                            let sec = sym
                                .section_index()
                                .and_then(|i| at.get(&i))
                                .ok_or_else(|| err("a symbol in a section not loaded"))?;
                            base + sec
                                + usize::try_from(sym.address()).map_err(|_| err("address"))?
                        }
                    }
                    RelocationTarget::Section(i) => {
                        base + at.get(&i).ok_or_else(|| err("a section not loaded"))?
                    }
                    _ => return Err(err("an unsupported relocation target")),
                };
                let value = (target as i64).wrapping_add(r.addend());
                let p = base + place;
                match (r.kind(), r.size(), r.flags()) {
                    (RelocationKind::Absolute, 64, _) => {
                        put(&mut map, place, &value.to_le_bytes())?;
                    }
                    (RelocationKind::Relative | RelocationKind::PltRelative, 32, _) => {
                        let d = i32::try_from(value.wrapping_sub(p as i64))
                            .map_err(|_| err("a relative relocation out of range"))?;
                        put(&mut map, place, &d.to_le_bytes())?;
                    }
                    (kind, bits, flags) => {
                        let f = match flags {
                            RelocationFlags::Elf { r_type } => format!(" (ELF type {r_type})"),
                            _ => String::new(),
                        };
                        return Err(err(format!("unsupported relocation {kind:?}/{bits}{f}")));
                    }
                }
            }
        }
        // Each kernel is a symbol: more kernels than symbols cannot all be there.
        if n > file.symbols().count() {
            return Err(err(format!(
                "{n} kernels, but the object has fewer symbols"
            )));
        }
        let mut fns = vec![None; n];
        for sym in file.symbols() {
            let Ok(name) = sym.name() else { continue };
            let Some(i) = name
                .strip_prefix("kiln_kernel_")
                .and_then(|i| i.parse::<usize>().ok())
            else {
                continue;
            };
            let (Some(slot), Some(sec)) = (fns.get_mut(i), sym.section_index()) else {
                continue;
            };
            let off = at
                .get(&sec)
                .ok_or_else(|| err("a kernel outside the code"))?;
            let addr = usize::try_from(sym.address()).map_err(|_| err("address"))?;
            *slot = Some(off + addr);
        }
        let code = map
            .make_exec()
            .map_err(|e| err(format!("making code executable: {e}")))?;
        let fns = fns
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                let off = f.ok_or_else(|| err(format!("kernel {i} is missing")))?;
                if off >= code.len() {
                    return Err(err(format!("kernel {i} is outside the code")));
                }
                // SAFETY: the symbol is a function compiled with the `KernelFn` signature
                // (two pointers in, i32 out, the host's C calling convention), relocated.
                Ok(unsafe { std::mem::transmute::<*const u8, KernelFn>(code.as_ptr().add(off)) })
            })
            .collect::<Result<_, _>>()?;
        Ok(Image { _code: code, fns })
    }
}

impl Code for Image {
    fn function(&self, i: usize) -> KernelFn {
        self.fns[i]
    }

    fn len(&self) -> usize {
        self.fns.len()
    }
}

/// Writes `bytes` at `at` in the mapping, if they fit.
fn put(map: &mut [u8], at: usize, bytes: &[u8]) -> Result<(), LoadError> {
    let end = at
        .checked_add(bytes.len())
        .filter(|&e| e <= map.len())
        .ok_or_else(|| err("a relocation past its section"))?;
    map[at..end].copy_from_slice(bytes);
    Ok(())
}

fn host_architecture() -> object::Architecture {
    if cfg!(target_arch = "x86_64") {
        object::Architecture::X86_64
    } else if cfg!(target_arch = "aarch64") {
        object::Architecture::Aarch64
    } else {
        object::Architecture::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{Buf, BufKind, Expr, Mark, Stmt};
    use ir::{DType, Dim, Op};

    /// `y[i] = exp(x[i]) + 1` (a vector loop calling nothing) and a softmax-ish row max that
    /// calls a library routine.
    fn kernels() -> Vec<Kernel> {
        let buf = |name: &str, kind| Buf {
            name: name.into(),
            dtype: DType::F32,
            len: Dim::sym("n"),
            kind,
        };
        let load = |b: usize, i: Expr| Expr::Load {
            buf: b,
            index: Box::new(i),
        };
        let exp1 = Kernel {
            name: "exp1".into(),
            bufs: vec![buf("x", BufKind::Input), buf("y", BufKind::Output)],
            dims: vec![Dim::sym("n")],
            vars: vec![DType::I64],
            body: vec![Stmt::Loop {
                var: 0,
                extent: Expr::Dim(0),
                mark: Mark::Vector(4),
                body: vec![Stmt::Store {
                    buf: 1,
                    index: Expr::Var(0),
                    value: Expr::Op {
                        op: Op::Add,
                        args: vec![
                            Expr::Op {
                                op: Op::Exp,
                                args: vec![load(0, Expr::Var(0))],
                                dtype: DType::F32,
                            },
                            Expr::Float(1.0, DType::F32),
                        ],
                        dtype: DType::F32,
                    },
                }],
            }],
        };
        let max = Kernel {
            name: "max".into(),
            bufs: vec![buf("x", BufKind::Input), buf("y", BufKind::Output)],
            dims: vec![Dim::sym("n")],
            vars: vec![DType::I64, DType::F32],
            body: vec![
                Stmt::Set {
                    var: 1,
                    value: Expr::Float(f64::NEG_INFINITY, DType::F32),
                },
                Stmt::Loop {
                    var: 0,
                    extent: Expr::Dim(0),
                    mark: Mark::Serial,
                    body: vec![Stmt::Set {
                        var: 1,
                        value: Expr::Op {
                            op: Op::Max,
                            args: vec![Expr::Var(1), load(0, Expr::Var(0))],
                            dtype: DType::F32,
                        },
                    }],
                },
                Stmt::Store {
                    buf: 1,
                    index: Expr::i64(0),
                    value: Expr::Var(1),
                },
            ],
        };
        vec![exp1, max]
    }

    fn run(f: KernelFn, x: &mut [f32]) -> Vec<f32> {
        let mut y = vec![0f32; x.len()];
        let bufs = [x.as_mut_ptr().cast::<u8>(), y.as_mut_ptr().cast::<u8>()];
        let dims = [x.len() as i64];
        // SAFETY: both buffers hold `n` elements.
        assert_eq!(unsafe { f(bufs.as_ptr(), dims.as_ptr()) }, 0);
        y
    }

    #[test]
    fn loaded_objects_compute_what_the_jit_does_and_are_deterministic() {
        let ks = kernels();
        let obj = compile_object(&ks).unwrap();
        assert_eq!(obj, compile_object(&ks).unwrap(), "two compilations differ");
        let image = Image::load(&obj, ks.len()).unwrap();
        let jit = crate::jit::compile(&ks).unwrap();
        let x: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.05).collect();
        for i in 0..ks.len() {
            let (a, b) = (
                run(image.function(i), &mut x.clone()),
                run(jit.function(i), &mut x.clone()),
            );
            assert!(
                a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
                "kernel {i}"
            );
        }
        assert_eq!(run(image.function(1), &mut x.clone())[0], 25.0);
    }

    #[test]
    fn the_target_names_features_this_machine_has() {
        let (triple, features) = target().unwrap();
        assert!(!triple.is_empty());
        assert!(
            features.iter().all(|f| f.starts_with("has_")),
            "{features:?}"
        );
    }

    #[test]
    fn damaged_objects_are_errors() {
        let obj = compile_object(&kernels()).unwrap();
        assert!(Image::load(&obj[..obj.len() / 2], 2).is_err());
        assert!(Image::load(b"not an object", 1).is_err());
        assert!(Image::load(&obj, 3).is_err(), "a missing kernel");
        // Flipped bytes across the header and the tables: an error or a load, never a crash
        // (code bytes themselves are the artifact checksum's to protect).
        for at in (0..obj.len().min(4096)).step_by(7) {
            let mut bad = obj.clone();
            bad[at] ^= 0x5a;
            let _ = Image::load(&bad, 2);
        }
    }
}
