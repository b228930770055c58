//! Reading and writing NumPy `.npy`/`.npz` data as kiln tensors (through the npyz crate). Takes
//! and returns bytes; callers own the files.
//!
//! Every numpy dtype kiln has maps to itself; bf16 and the float8/float4 types, which numpy
//! lacks, are written as f32, and 4- and 2-bit integers as 8-bit ones.

use std::io::{Cursor, Read};

use ir::{bf16, f16, DType, Data, Tensor};
use npyz::{npz::NpzArchive, npz::NpzWriter, NpyFile, TypeChar, WriterBuilder};

/// A malformed or unsupported `.npz`/`.npy`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct NpzError {
    pub message: String,
}

fn fail<T>(message: impl Into<String>) -> Result<T, NpzError> {
    Err(NpzError {
        message: message.into(),
    })
}

fn dtype_of<R: Read>(f: &NpyFile<R>) -> Result<DType, NpzError> {
    let ts = match f.dtype() {
        npyz::DType::Plain(ts) => ts,
        other => return fail(format!("unsupported structured dtype {}", other.descr())),
    };
    let d = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Bool, 1) => DType::Bool,
        (TypeChar::Int, 1) => DType::I8,
        (TypeChar::Int, 2) => DType::I16,
        (TypeChar::Int, 4) => DType::I32,
        (TypeChar::Int, 8) => DType::I64,
        (TypeChar::Uint, 1) => DType::U8,
        (TypeChar::Uint, 2) => DType::U16,
        (TypeChar::Uint, 4) => DType::U32,
        (TypeChar::Uint, 8) => DType::U64,
        (TypeChar::Float, 2) => DType::F16,
        (TypeChar::Float, 4) => DType::F32,
        (TypeChar::Float, 8) => DType::F64,
        _ => return fail(format!("unsupported numpy dtype `{ts}`")),
    };
    Ok(d)
}

/// Decodes one `.npy` stream of at most `max_bytes` payload bytes.
fn read_array<R: Read>(f: NpyFile<R>, max_bytes: u64) -> Result<Tensor, NpzError> {
    let dtype = dtype_of(&f)?;
    let shape: Vec<usize> = f
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).or_else(|_| fail("dimension too large")))
        .collect::<Result<_, _>>()?;
    let numel = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .ok_or_else(|| NpzError {
            message: "element count overflows".into(),
        })?;
    match dtype.storage_bytes(numel) {
        Some(b) if b <= max_bytes => {}
        _ => {
            return fail(format!(
                "header claims shape {shape:?}, larger than the data"
            ))
        }
    }
    let fortran = matches!(f.order(), npyz::Order::Fortran);
    let io = |e: std::io::Error| NpzError {
        message: e.to_string(),
    };
    let data = match dtype {
        DType::F16 => Data::F16(f.into_vec::<f16>().map_err(io)?),
        DType::F32 => Data::F32(f.into_vec::<f32>().map_err(io)?),
        DType::F64 => Data::F64(f.into_vec::<f64>().map_err(io)?),
        DType::I8 => Data::I8(f.into_vec::<i8>().map_err(io)?),
        DType::I16 => Data::I16(f.into_vec::<i16>().map_err(io)?),
        DType::I32 => Data::I32(f.into_vec::<i32>().map_err(io)?),
        DType::I64 => Data::I64(f.into_vec::<i64>().map_err(io)?),
        DType::U8 => Data::U8(f.into_vec::<u8>().map_err(io)?),
        DType::U16 => Data::U16(f.into_vec::<u16>().map_err(io)?),
        DType::U32 => Data::U32(f.into_vec::<u32>().map_err(io)?),
        DType::U64 => Data::U64(f.into_vec::<u64>().map_err(io)?),
        DType::Bool => Data::Bool(f.into_vec::<bool>().map_err(io)?),
        _ => unreachable!("dtype_of yields only numpy's types"),
    };
    if fortran && shape.len() > 1 {
        // Column-major data is the row-major data of the reversed shape, transposed.
        let rev: Vec<usize> = shape.iter().rev().copied().collect();
        let n = shape.len();
        let t = Tensor::new(rev.clone(), data).or_else(|e| fail(e.to_string()))?;
        let mut index = Vec::with_capacity(t.numel());
        let rs = row_major_strides(&rev);
        for_each(&shape, |i| {
            index.push((0..n).map(|a| i[a] * rs[n - 1 - a]).sum());
        });
        return Tensor::new(shape, t.data().take_all(&index)).or_else(|e| fail(e.to_string()));
    }
    Tensor::new(shape, data).or_else(|e| fail(e.to_string()))
}

fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

fn for_each(shape: &[usize], mut f: impl FnMut(&[usize])) {
    if shape.contains(&0) {
        return;
    }
    let mut idx = vec![0; shape.len()];
    'outer: loop {
        f(&idx);
        for a in (0..shape.len()).rev() {
            idx[a] += 1;
            if idx[a] < shape[a] {
                continue 'outer;
            }
            idx[a] = 0;
        }
        return;
    }
}

/// Reads a single `.npy` file.
pub fn read_npy(bytes: &[u8]) -> Result<Tensor, NpzError> {
    let f = NpyFile::new(Cursor::new(bytes)).or_else(|e| fail(format!("not a valid .npy: {e}")))?;
    read_array(f, bytes.len() as u64)
}

/// Reads every array of an `.npz` archive, in archive order.
pub fn read_npz(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, NpzError> {
    let mut ar =
        NpzArchive::new(Cursor::new(bytes)).or_else(|e| fail(format!("not a valid .npz: {e}")))?;
    // In archive order (the zip crate's name list is unordered).
    let zip = ar.zip_archive();
    let mut names = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let f = zip
            .by_index(i)
            .or_else(|e| fail(format!("entry {i} of the archive: {e}")))?;
        if let Some(name) = f.name().strip_suffix(".npy") {
            names.push(name.to_string());
        }
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let size = ar
            .zip_archive()
            .by_name(&format!("{name}.npy"))
            .map(|f| f.size())
            .or_else(|e| fail(format!("array \"{name}\": {e}")))?;
        let f = match ar.by_name(&name) {
            Ok(Some(f)) => f,
            Ok(None) => return fail(format!("array \"{name}\" is listed but missing")),
            Err(e) => return fail(format!("array \"{name}\": {e}")),
        };
        let t = read_array(f, size).or_else(|e| fail(format!("array \"{name}\": {e}")))?;
        out.push((name, t));
    }
    Ok(out)
}

/// Writes tensors as an uncompressed `.npz` archive (what `numpy.savez` writes).
pub fn write_npz(arrays: &[(String, Tensor)]) -> Result<Vec<u8>, NpzError> {
    let mut buf = Cursor::new(Vec::new());
    {
        let mut npz = NpzWriter::new(&mut buf);
        for (name, t) in arrays {
            write_array(&mut npz, name, t).or_else(|e| fail(format!("array \"{name}\": {e}")))?;
        }
        npz.zip_writer().finish().or_else(|e| fail(e.to_string()))?;
    }
    Ok(buf.into_inner())
}

fn write_array<W: std::io::Write + std::io::Seek>(
    npz: &mut NpzWriter<W>,
    name: &str,
    t: &Tensor,
) -> std::io::Result<()> {
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    macro_rules! put {
        ($ty:ty, $v:expr) => {{
            let mut w = npz
                .array::<$ty>(name, Default::default())?
                .default_dtype()
                .shape(&shape)
                .begin_nd()?;
            w.extend($v)?;
            w.finish()
        }};
    }
    match t.data() {
        Data::F16(v) => put!(f16, v.iter().copied()),
        Data::BF16(v) => put!(f32, v.iter().map(|x: &bf16| x.to_f32())),
        Data::F32(v) => put!(f32, v.iter().copied()),
        Data::F64(v) => put!(f64, v.iter().copied()),
        Data::I8(v) => put!(i8, v.iter().copied()),
        Data::I16(v) => put!(i16, v.iter().copied()),
        Data::I32(v) => put!(i32, v.iter().copied()),
        Data::I64(v) => put!(i64, v.iter().copied()),
        Data::U8(v) => put!(u8, v.iter().copied()),
        Data::U16(v) => put!(u16, v.iter().copied()),
        Data::U32(v) => put!(u32, v.iter().copied()),
        Data::U64(v) => put!(u64, v.iter().copied()),
        Data::Bool(v) => put!(bool, v.iter().copied()),
        // Narrow types have no numpy dtype: integers widen to 8 bits, floats to f32.
        d if d.dtype().is_float() => put!(f32, (0..d.len()).map(|i| d.get_f64(i) as f32)),
        d if d.dtype().is_signed_int() => put!(i8, (0..d.len()).map(|i| d.get_i128(i) as i8)),
        d => put!(u8, (0..d.len()).map(|i| d.get_i128(i) as u8)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_dtype() {
        let arrays: Vec<(String, Tensor)> = vec![
            (
                "a".into(),
                Tensor::from_vec(vec![2, 2], vec![1.5f32, -2.0, 0.0, 4.0]).unwrap(),
            ),
            (
                "b".into(),
                Tensor::from_vec(vec![3], vec![1i64, -2, 3]).unwrap(),
            ),
            (
                "c".into(),
                Tensor::from_vec(vec![2], vec![true, false]).unwrap(),
            ),
            (
                "d".into(),
                Tensor::from_vec(vec![1], vec![f16::from_f32(0.5)]).unwrap(),
            ),
            ("e".into(), Tensor::scalar(7u8)),
        ];
        let bytes = write_npz(&arrays).unwrap();
        let back = read_npz(&bytes).unwrap();
        assert_eq!(back, arrays);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(read_npz(b"not a zip").is_err());
        let bytes = write_npz(&[("x".into(), Tensor::scalar(1.0f32))]).unwrap();
        for cut in [10, bytes.len() / 2, bytes.len() - 1] {
            assert!(read_npz(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
    }
}
