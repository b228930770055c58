//! Loading kernels' object code without a compiler: an object file's sections laid out in one
//! mapping, relocations patched against the library routines kernels call
//! ([`crate::routines::symbols`]), then the mapping made read-only and executable. Every
//! backend that emits objects (`kiln_kernel_{i}` for kernel `i`, the [`KernelFn`] ABI) is
//! loaded here, for the JIT and for artifacts alike.

use std::collections::HashMap;

use object::{
    Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationKind, RelocationTarget,
    SectionKind,
};

use crate::abi::{Code, KernelFn};

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
    /// Loads the `n` kernels of an object compiled for a host like this one.
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
        let symbols: HashMap<&str, *const u8> = crate::routines::symbols().into_iter().collect();
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
