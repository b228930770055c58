//! Where a run's values live: constants (owned, mapped from an artifact, or absent), the
//! place of each value during a run, the arenas runs reuse, and the raw pointers kernels get.

use super::*;

/// Constant data a run reads.
#[derive(Clone)]
pub(super) enum Const {
    Tensor(Tensor),
    /// A constant no step reads (every kernel taking it reads a packed copy instead): a saved
    /// plan leaves its bytes out, and only its type remains.
    Absent {
        dtype: DType,
        shape: Vec<usize>,
    },
    /// Elements in memory the executable keeps alive (an artifact's weights, used in place).
    Mapped {
        addr: usize,
        dtype: DType,
        shape: Vec<usize>,
    },
    /// A kernel constant's encoded elements in cache lines of their own ([`LineCache`]): a
    /// compiled kernel's constants (packed operands) start 64-byte aligned, as an
    /// artifact's weights do (the heap gives large vectors 16-byte alignment, and a blocked
    /// conv's filter vectors then each straddled two lines: 0.51 against 0.44 ms on a 64→64
    /// 3×3 conv at 32×32).
    Lines {
        lines: std::sync::Arc<[Line]>,
        dtype: DType,
        shape: Vec<usize>,
    },
}

/// 64 bytes, 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line([u8; 64]);

/// Kernel constants as [`Const::Lines`], made once per tensor.
#[derive(Default)]
pub(super) struct LineCache(HashMap<usize, (Tensor, Const)>);

impl LineCache {
    /// Kernel constant `t`: numbers whose encoding is their memory (the types a loaded plan
    /// reads in place, `saved::in_place`) filling a cache line or more, in lines of their
    /// own, whatever their address (so that the same graph saves the same bytes); others as
    /// they are. (A packed int8 weight at the heap's 16-byte alignment split each AMX tile
    /// row over two lines: 23 against 9 µs for a 32×512×784 product.)
    pub(super) fn of(&mut self, t: Tensor) -> Const {
        let bytes = t.numel() as u64 * u64::from(t.dtype().bits()) / 8;
        if !super::saved::in_place(t.dtype()) || bytes < 64 {
            return Const::Tensor(t);
        }
        let key = t.data() as *const Data as usize;
        if let Some((_, c)) = self.0.get(&key) {
            return c.clone();
        }
        let Some(bytes) = crate::aot::encode(&t) else {
            return Const::Tensor(t);
        };
        let lines: std::sync::Arc<[Line]> = bytes
            .chunks(64)
            .map(|c| {
                let mut l = [0u8; 64];
                l[..c.len()].copy_from_slice(c);
                Line(l)
            })
            .collect();
        let c = Const::Lines {
            lines,
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
        };
        self.0.insert(key, (t, c.clone()));
        c
    }
}

impl Const {
    pub(super) fn dtype(&self) -> DType {
        match self {
            Const::Tensor(t) => t.dtype(),
            Const::Mapped { dtype, .. } | Const::Absent { dtype, .. } => *dtype,
            Const::Lines { dtype, .. } => *dtype,
        }
    }

    pub(super) fn shape(&self) -> &[usize] {
        match self {
            Const::Tensor(t) => t.shape(),
            Const::Mapped { shape, .. } | Const::Absent { shape, .. } => shape,
            Const::Lines { shape, .. } => shape,
        }
    }

    /// Where a kernel reads it (a readable element even when it is empty).
    pub(super) fn ptr(&self) -> *mut u8 {
        match self {
            Const::Tensor(t) => tensor_ptr(t),
            Const::Mapped { shape, .. } if shape.contains(&0) => ZERO.as_ptr() as *mut u8,
            Const::Mapped { addr, .. } => *addr as *mut u8,
            Const::Lines { lines, .. } => lines.as_ptr() as *mut u8,
            // Never read (see `Const::Absent`).
            Const::Absent { .. } => ZERO.as_ptr() as *mut u8,
        }
    }

    /// The constant as a tensor (its elements copied when they are mapped).
    pub(super) fn tensor(&self) -> Result<Tensor, String> {
        match self {
            Const::Tensor(t) => Ok(t.clone()),
            Const::Mapped { addr, dtype, shape } => {
                let n = shape.iter().product::<usize>() as u64;
                let len = dtype.storage_bytes(n).unwrap_or(0) as usize;
                let bytes: &[u8] = match len {
                    0 => &[],
                    // SAFETY: `from_saved` checked that the constant's bytes lie in the
                    // backing the executable keeps.
                    _ => unsafe { std::slice::from_raw_parts(*addr as *const u8, len) },
                };
                crate::aot::decode(*dtype, shape.clone(), bytes)
                    .ok_or_else(|| "a constant's bytes do not fit its type".into())
            }
            Const::Lines {
                lines,
                dtype,
                shape,
            } => {
                let n = shape.iter().product::<usize>() as u64;
                let len = dtype.storage_bytes(n).unwrap_or(0) as usize;
                // SAFETY: the lines hold the constant's encoded bytes (and padding after them).
                let bytes = unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<u8>(), len) };
                crate::aot::decode(*dtype, shape.clone(), bytes)
                    .ok_or_else(|| "a constant's bytes do not fit its type".into())
            }
            Const::Absent { .. } => Err("a constant the saved plan left out was read".into()),
        }
    }
}

/// Arenas of earlier runs, reused by later ones (page faults of fresh large allocations
/// otherwise dominate big models).
#[derive(Default)]
pub(super) struct Arenas(std::sync::Mutex<Vec<Vec<u128>>>);

impl Arenas {
    /// An arena of at least `bytes` bytes plus alignment slack; its contents are arbitrary.
    pub(super) fn take(&self, bytes: u64) -> Result<Vec<u128>, String> {
        let words = usize::try_from(bytes.div_ceil(16) + crate::plan::ALIGN / 16)
            .map_err(|_| format!("the run needs {bytes} bytes"))?;
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match p.iter().position(|a| a.len() >= words) {
            Some(i) => Ok(p.swap_remove(i)),
            None => Ok(vec![0u128; words]),
        }
    }

    pub(super) fn give(&self, a: Vec<u128>) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < 4 {
            p.push(a);
        }
    }
}

/// Where a value lives during a run.
pub(super) enum Loc {
    /// A tensor of its own: inputs, outputs of the graph, interpreter results.
    Tensor(Tensor),
    /// A slot of one of the run's arenas, at this address.
    Arena {
        addr: usize,
        dtype: DType,
        shape: std::sync::Arc<[usize]>,
    },
    /// A constant of the executable.
    Const(Const),
}

/// A readable zero element: where kernels read empty tensors.
pub(super) static ZERO: [u64; 2] = [0; 2];

impl Loc {
    pub(super) fn dtype(&self) -> DType {
        match self {
            Loc::Tensor(t) => t.dtype(),
            Loc::Arena { dtype, .. } => *dtype,
            Loc::Const(c) => c.dtype(),
        }
    }

    pub(super) fn shape(&self) -> &[usize] {
        match self {
            Loc::Tensor(t) => t.shape(),
            Loc::Arena { shape, .. } => shape,
            Loc::Const(c) => c.shape(),
        }
    }

    /// Where a kernel reads it (a readable element even when it is empty).
    pub(super) fn ptr(&self) -> *mut u8 {
        // Guarded loads (padding) clamp their index to 0 and read it: an empty tensor gets a
        // readable zero element instead of a dangling pointer.
        match self {
            Loc::Tensor(t) => tensor_ptr(t),
            // Planned slots lie inside an arena the run holds.
            Loc::Arena { addr, .. } => *addr as *mut u8,
            Loc::Const(c) => c.ptr(),
        }
    }

    /// The value as a tensor of its own (copied out of the arena or the mapped bytes).
    pub(super) fn tensor(&self) -> Result<Tensor, String> {
        match self {
            Loc::Tensor(t) => Ok(t.clone()),
            Loc::Arena { dtype, shape, .. } => {
                let n = shape.iter().product::<usize>();
                let mut d = Data::zeros(*dtype, n);
                let bytes = dtype.storage_bytes(n as u64).unwrap_or(0) as usize;
                // SAFETY: the slot holds `n` elements of the dtype; `d` as many.
                unsafe { std::ptr::copy_nonoverlapping(self.ptr(), mut_ptr(&mut d), bytes) };
                Tensor::new(shape.to_vec(), d).map_err(|e| e.to_string())
            }
            Loc::Const(c) => c.tensor(),
        }
    }
}

/// The value in slot `i` of a run.
pub(super) fn loc(values: &[Option<Loc>], i: usize) -> Result<&Loc, ExecError> {
    values[i].as_ref().ok_or_else(|| ExecError::Node {
        node: "a run".into(),
        message: "a value was read before it was computed".into(),
    })
}

pub(super) fn bytes(t: &Tensor) -> u64 {
    t.dtype().storage_bytes(t.numel() as u64).unwrap_or(0)
}

/// Where a kernel reads a tensor: its data, or a readable zero element when it is empty.
pub(super) fn tensor_ptr(t: &Tensor) -> *mut u8 {
    if t.numel() == 0 {
        ZERO.as_ptr() as *mut u8
    } else {
        const_ptr(t.data())
    }
}

pub(super) fn const_ptr(d: &Data) -> *mut u8 {
    match d {
        Data::F32(v) => v.as_ptr() as *mut u8,
        Data::F64(v) => v.as_ptr() as *mut u8,
        Data::I8(v) => v.as_ptr() as *mut u8,
        Data::I16(v) => v.as_ptr() as *mut u8,
        Data::I32(v) => v.as_ptr() as *mut u8,
        Data::I64(v) => v.as_ptr() as *mut u8,
        Data::U8(v) => v.as_ptr() as *mut u8,
        Data::U16(v) => v.as_ptr() as *mut u8,
        Data::U32(v) => v.as_ptr() as *mut u8,
        Data::U64(v) => v.as_ptr() as *mut u8,
        Data::Bool(v) => v.as_ptr() as *mut u8,
        _ => std::ptr::null_mut(),
    }
}

pub(super) fn mut_ptr(d: &mut Data) -> *mut u8 {
    match d {
        Data::F32(v) => v.as_mut_ptr() as *mut u8,
        Data::F64(v) => v.as_mut_ptr() as *mut u8,
        Data::I8(v) => v.as_mut_ptr() as *mut u8,
        Data::I16(v) => v.as_mut_ptr() as *mut u8,
        Data::I32(v) => v.as_mut_ptr() as *mut u8,
        Data::I64(v) => v.as_mut_ptr() as *mut u8,
        Data::U8(v) => v.as_mut_ptr(),
        Data::U16(v) => v.as_mut_ptr() as *mut u8,
        Data::U32(v) => v.as_mut_ptr() as *mut u8,
        Data::U64(v) => v.as_mut_ptr() as *mut u8,
        Data::Bool(v) => v.as_mut_ptr() as *mut u8,
        _ => std::ptr::null_mut(),
    }
}
