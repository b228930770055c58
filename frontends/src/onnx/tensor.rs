//! Decoding `TensorProto` into kiln tensors: every numeric ONNX data type kiln has, from raw
//! little-endian bytes, the typed repeated fields, or external data the caller supplies.

use crate::onnx::OpError;

use std::collections::HashMap;

use ir::{bf16, f16, DType, Data, Tensor};

use super::proto::{data_type as dt, TensorProto};

/// The kiln dtype of an ONNX data type, or `None` when kiln has no such type.
pub fn dtype_of(t: i32) -> Option<DType> {
    Some(match t {
        dt::FLOAT => DType::F32,
        dt::UINT8 => DType::U8,
        dt::INT8 => DType::I8,
        dt::UINT16 => DType::U16,
        dt::INT16 => DType::I16,
        dt::INT32 => DType::I32,
        dt::INT64 => DType::I64,
        dt::BOOL => DType::Bool,
        dt::FLOAT16 => DType::F16,
        dt::DOUBLE => DType::F64,
        dt::UINT32 => DType::U32,
        dt::UINT64 => DType::U64,
        dt::BFLOAT16 => DType::BF16,
        dt::INT4 => DType::I4,
        dt::UINT4 => DType::U4,
        dt::INT2 => DType::I2,
        dt::UINT2 => DType::U2,
        dt::FLOAT8E4M3FN => DType::F8E4M3FN,
        dt::FLOAT8E4M3FNUZ => DType::F8E4M3FNUZ,
        dt::FLOAT8E5M2 => DType::F8E5M2,
        dt::FLOAT8E5M2FNUZ => DType::F8E5M2FNUZ,
        dt::FLOAT8E8M0 => DType::F8E8M0,
        dt::FLOAT4E2M1 => DType::F4E2M1,
        _ => return None,
    })
}

/// The dtype of an ONNX data type, or an error naming it.
pub fn require_dtype(t: i32) -> Result<DType, OpError> {
    Ok(dtype_of(t).ok_or_else(|| format!("data type {} is not supported", dt::name(t)))?)
}

/// Raw bytes of external tensors, by the `location` recorded in the model.
pub type ExternalData = HashMap<String, std::sync::Arc<[u8]>>;

fn external_bytes<'a>(t: &TensorProto, ext: &'a ExternalData) -> Result<&'a [u8], OpError> {
    let mut location = None;
    let (mut offset, mut length) = (0u64, None);
    for e in &t.external_data {
        match e.key.as_str() {
            "location" => location = Some(e.value.as_str()),
            "offset" => {
                offset = e
                    .value
                    .parse()
                    .map_err(|_| format!("bad external offset `{}`", e.value))?
            }
            "length" => {
                length = Some(
                    e.value
                        .parse::<u64>()
                        .map_err(|_| format!("bad external length `{}`", e.value))?,
                )
            }
            _ => {}
        }
    }
    let location = location.ok_or("external tensor without a location")?;
    let bytes = ext
        .get(location)
        .ok_or_else(|| format!("external data file `{location}` was not provided"))?;
    let start = usize::try_from(offset).map_err(|_| "external offset too large")?;
    let end = match length {
        Some(l) => start.checked_add(usize::try_from(l).map_err(|_| "external length too large")?),
        None => Some(bytes.len()),
    }
    .ok_or("external range overflows")?;
    Ok(bytes.get(start..end).ok_or_else(|| {
        format!(
            "external range {start}..{end} is outside `{location}` ({} bytes)",
            bytes.len()
        )
    })?)
}

fn from_le<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
        .collect()
}

fn check_count(have: usize, want: usize, what: &str) -> Result<(), OpError> {
    if have == want {
        Ok(())
    } else {
        Err(format!("{what} holds {have} elements, expected {want}").into())
    }
}

/// Decodes a tensor. `ext` supplies the bytes of external data files.
pub fn decode(t: &TensorProto, ext: &ExternalData) -> Result<Tensor, OpError> {
    let dtype = require_dtype(t.data_type)?;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        shape.push(usize::try_from(d).map_err(|_| format!("negative dimension {d}"))?);
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("element count overflows")?;
    if dtype.is_narrow() {
        return decode_narrow(t, dtype, shape, numel, ext);
    }
    let size = dtype.bits() as usize / 8;
    let raw: Option<&[u8]> = if t.data_location == 1 {
        Some(external_bytes(t, ext)?)
    } else if !t.raw_data.is_empty() {
        Some(&t.raw_data)
    } else {
        None
    };
    let data = if let Some(raw) = raw {
        let want = numel.checked_mul(size).ok_or("byte size overflows")?;
        if raw.len() != want {
            return Err(format!("raw data has {} bytes, expected {want}", raw.len()).into());
        }
        match dtype {
            DType::F32 => Data::F32(from_le(raw, f32::from_le_bytes)),
            DType::F64 => Data::F64(from_le(raw, f64::from_le_bytes)),
            DType::F16 => Data::F16(from_le(raw, |b| f16::from_bits(u16::from_le_bytes(b)))),
            DType::BF16 => Data::BF16(from_le(raw, |b| bf16::from_bits(u16::from_le_bytes(b)))),
            DType::I8 => Data::I8(from_le(raw, i8::from_le_bytes)),
            DType::I16 => Data::I16(from_le(raw, i16::from_le_bytes)),
            DType::I32 => Data::I32(from_le(raw, i32::from_le_bytes)),
            DType::I64 => Data::I64(from_le(raw, i64::from_le_bytes)),
            DType::U8 => Data::U8(raw.to_vec()),
            DType::U16 => Data::U16(from_le(raw, u16::from_le_bytes)),
            DType::U32 => Data::U32(from_le(raw, u32::from_le_bytes)),
            DType::U64 => Data::U64(from_le(raw, u64::from_le_bytes)),
            DType::Bool => Data::Bool(raw.iter().map(|&b| b != 0).collect()),
            _ => unreachable!("narrow types are decoded above"),
        }
    } else {
        // Typed fields; an empty tensor has none.
        let i32s = || -> Result<&[i32], OpError> {
            check_count(t.int32_data.len(), numel, "int32_data")?;
            Ok(&t.int32_data)
        };
        match dtype {
            DType::F32 => {
                check_count(t.float_data.len(), numel, "float_data")?;
                Data::F32(t.float_data.clone())
            }
            DType::F64 => {
                check_count(t.double_data.len(), numel, "double_data")?;
                Data::F64(t.double_data.clone())
            }
            DType::I64 => {
                check_count(t.int64_data.len(), numel, "int64_data")?;
                Data::I64(t.int64_data.clone())
            }
            DType::U32 | DType::U64 => {
                check_count(t.uint64_data.len(), numel, "uint64_data")?;
                if dtype == DType::U32 {
                    Data::U32(t.uint64_data.iter().map(|&x| x as u32).collect())
                } else {
                    Data::U64(t.uint64_data.clone())
                }
            }
            DType::I32 => Data::I32(i32s()?.to_vec()),
            DType::I16 => Data::I16(i32s()?.iter().map(|&x| x as i16).collect()),
            DType::I8 => Data::I8(i32s()?.iter().map(|&x| x as i8).collect()),
            DType::U16 => Data::U16(i32s()?.iter().map(|&x| x as u16).collect()),
            DType::U8 => Data::U8(i32s()?.iter().map(|&x| x as u8).collect()),
            DType::Bool => Data::Bool(i32s()?.iter().map(|&x| x != 0).collect()),
            DType::F16 => Data::F16(i32s()?.iter().map(|&x| f16::from_bits(x as u16)).collect()),
            DType::BF16 => Data::BF16(i32s()?.iter().map(|&x| bf16::from_bits(x as u16)).collect()),
            _ => unreachable!("narrow types are decoded above"),
        }
    };
    Tensor::new(shape, data).map_err(OpError::from)
}

/// Unpacks elements of `bits` bits, low bits first, from bytes.
fn unpack(bytes: &[u8], bits: u32, numel: usize) -> Vec<u8> {
    let per = (8 / bits) as usize;
    let mask = ((1u16 << bits) - 1) as u8;
    (0..numel)
        .map(|i| (bytes[i / per] >> ((i % per) as u32 * bits)) & mask)
        .collect()
}

/// Narrow types: raw data packs sub-byte elements (low bits first); the typed field holds one
/// packed byte per int32.
fn decode_narrow(
    t: &TensorProto,
    dtype: DType,
    shape: Vec<usize>,
    numel: usize,
    ext: &ExternalData,
) -> Result<Tensor, OpError> {
    let bits = dtype.bits();
    let need = numel
        .checked_mul(bits as usize)
        .ok_or("byte size overflows")?
        .div_ceil(8);
    let bytes: Vec<u8> = if t.data_location == 1 {
        external_bytes(t, ext)?.to_vec()
    } else if !t.raw_data.is_empty() {
        t.raw_data.clone()
    } else {
        t.int32_data.iter().map(|&x| x as u8).collect()
    };
    if bytes.len() != need {
        return Err(format!("{} holds {} bytes, expected {need}", dtype, bytes.len()).into());
    }
    let patterns = if bits == 8 {
        bytes
    } else {
        unpack(&bytes, bits, numel)
    };
    let data = Data::from_patterns(dtype, patterns).ok_or("not a narrow type")?;
    Tensor::new(shape, data).map_err(OpError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(data_type: i32, dims: &[i64]) -> TensorProto {
        TensorProto {
            data_type,
            dims: dims.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn raw_and_typed_fields() {
        let mut t = proto(dt::FLOAT, &[2]);
        t.raw_data = [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat();
        let x = decode(&t, &ExternalData::new()).unwrap();
        assert_eq!(x.as_slice::<f32>(), Some(&[1.5f32, -2.0][..]));
        let mut t = proto(dt::INT8, &[3]);
        t.int32_data = vec![-1, 2, 127];
        let x = decode(&t, &ExternalData::new()).unwrap();
        assert_eq!(x.as_slice::<i8>(), Some(&[-1i8, 2, 127][..]));
        let mut t = proto(dt::FLOAT16, &[]);
        t.int32_data = vec![0x3c00];
        let x = decode(&t, &ExternalData::new()).unwrap();
        assert_eq!(x.as_slice::<f16>(), Some(&[f16::ONE][..]));
    }

    #[test]
    fn bad_tensors_are_errors() {
        let mut t = proto(dt::FLOAT, &[3]);
        t.raw_data = vec![0; 8];
        assert_eq!(
            decode(&t, &ExternalData::new()).unwrap_err(),
            OpError::from("raw data has 8 bytes, expected 12")
        );
        let t = proto(dt::STRING, &[1]);
        assert_eq!(
            decode(&t, &ExternalData::new()).unwrap_err(),
            OpError::from("data type STRING is not supported")
        );
        let t = proto(dt::FLOAT, &[-1]);
        assert_eq!(
            decode(&t, &ExternalData::new()).unwrap_err(),
            OpError::from("negative dimension -1")
        );
        let mut t = proto(dt::FLOAT, &[2]);
        t.data_location = 1;
        t.external_data = vec![super::super::proto::StringStringEntryProto {
            key: "location".into(),
            value: "w.bin".into(),
        }];
        assert!(decode(&t, &ExternalData::new())
            .unwrap_err()
            .to_string()
            .contains("`w.bin` was not provided"));
    }
}
