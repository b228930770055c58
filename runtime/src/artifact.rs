//! The container of a compiled model (`.kiln`): a versioned header — magic, format version,
//! kiln version, target triple, the CPU features the code needs — a table of named sections
//! (each aligned, so weights can be used in place from a memory map) and a checksum of the
//! whole file. Reading checks everything before anything is used: a truncated, bit-flipped,
//! foreign or newer file is an [`ArtifactError`] naming what is wrong, never a panic.
//!
//! Layout (little-endian): `KILNART\0`, format version (u32), checksum (u64 holding the CRC-32
//! of the file with these 8 bytes zero — several GB/s, so large weights load fast), header
//! length (u32), header (length-prefixed strings:
//! kiln version, target, features; section count; per section name, offset, length), then
//! the sections at their offsets.

/// The first bytes of every artifact.
pub const MAGIC: &[u8; 8] = b"KILNART\0";
/// The layout version this build writes and reads (2: kernels call library routines through
/// one `call` statement; 3: CPU features by neutral names, `avx2` rather than `has_avx2`; 4:
/// calls carry scalar arguments and a result; 5: products and convolutions take a fused
/// epilogue, three more operands and two scalars; 6: the epilogue's activation 4, SiLU; 7:
/// concats in place; 8: dense blocked filters packed with a Winograd flag, and transforms; 9:
/// the epilogue's activation 5, HardSwish; 10: the recurrent routines, `lstm`, `gru` and
/// `rnn`, and their packed weights; 11: the `resample` routine, the epilogue's activations 6 to 8,
/// HardSigmoid and HardSwish's ReLU6 forms; 12: `pool2d_nchwc`'s block count; 13: a dense
/// `conv2d_nchwc` over a blocked input sums `c` channels, which may leave padding lanes of
/// its last block unread); 14: `qgemm4`, and kernel constants derived on loading, not
/// stored; 15: the epilogue's QDQ pairs, eight more scalars; 16: `qgemm4`'s `xq` (int8
/// rows), the byte pools `pool2d_u8` and `pool2d_i8`; 17: the epilogue's `scale2` operand,
/// `row_quantize_s8`).
pub const FORMAT_VERSION: u32 = 17;
/// Sections start at multiples of this (a cache line; enough for any element type).
pub const SECTION_ALIGN: usize = 64;

const CHECKSUM_AT: usize = 12;
const HEADER_AT: usize = 24;

/// Why bytes are not a usable artifact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    #[error("not a kiln artifact (the file does not start with KILNART)")]
    NotAnArtifact,
    #[error("artifact format {found}, this kiln reads format {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("the artifact is damaged: checksum {found:016x}, contents hash to {computed:016x}")]
    Checksum { found: u64, computed: u64 },
    #[error("the artifact is truncated or malformed: {0}")]
    Malformed(String),
}

/// A parsed artifact: header fields and sections borrowed from the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact<'a> {
    pub kiln_version: String,
    pub target: String,
    pub features: Vec<String>,
    pub sections: Vec<(String, &'a [u8])>,
}

impl<'a> Artifact<'a> {
    /// The section called `name`.
    pub fn section(&self, name: &str) -> Option<&'a [u8]> {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, s)| s)
    }
}

/// The checksum of an artifact's bytes (its checksum field counted as zero): CRC-32, which
/// catches every error burst up to 32 bits.
fn checksum(bytes: &[u8]) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..CHECKSUM_AT]);
    h.update(&[0; 8]);
    h.update(&bytes[CHECKSUM_AT + 8..]);
    u64::from(h.finalize())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
}

/// Writes an artifact: the header fields and sections `(name, bytes)` in order. The output
/// depends only on the arguments (compiling twice gives the same bytes).
pub fn write(
    kiln_version: &str,
    target: &str,
    features: &[String],
    sections: &[(&str, &[u8])],
) -> Vec<u8> {
    let mut header = Vec::new();
    put_str(&mut header, kiln_version);
    put_str(&mut header, target);
    header.extend((features.len() as u32).to_le_bytes());
    for f in features {
        put_str(&mut header, f);
    }
    header.extend((sections.len() as u32).to_le_bytes());
    // Offsets follow from the header's final size: names and two u64 per section.
    let table: usize = sections.iter().map(|(n, _)| 4 + n.len() + 16).sum();
    let mut at = (HEADER_AT + header.len() + table).div_ceil(SECTION_ALIGN) * SECTION_ALIGN;
    let mut offsets = Vec::with_capacity(sections.len());
    for (name, data) in sections {
        put_str(&mut header, name);
        header.extend((at as u64).to_le_bytes());
        header.extend((data.len() as u64).to_le_bytes());
        offsets.push(at);
        at = (at + data.len()).div_ceil(SECTION_ALIGN) * SECTION_ALIGN;
    }
    let mut out = Vec::with_capacity(at);
    out.extend(MAGIC);
    out.extend(FORMAT_VERSION.to_le_bytes());
    out.extend([0u8; 8]);
    out.extend((header.len() as u32).to_le_bytes());
    out.extend(&header);
    for ((_, data), off) in sections.iter().zip(offsets) {
        out.resize(off, 0);
        out.extend(*data);
    }
    out.resize(out.len().div_ceil(SECTION_ALIGN) * SECTION_ALIGN, 0);
    seal(&mut out);
    out
}

/// Sets the checksum field of artifact bytes to their checksum (what [`write()`] does last; tests
/// use it to reach the checks behind the checksum). Bytes too short for the field are left.
pub fn seal(bytes: &mut [u8]) {
    if bytes.len() >= CHECKSUM_AT + 8 {
        let sum = checksum(bytes);
        bytes[CHECKSUM_AT..CHECKSUM_AT + 8].copy_from_slice(&sum.to_le_bytes());
    }
}

/// Reads the header fields one after another, every length checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ArtifactError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                ArtifactError::Malformed(format!("{what} at byte {} runs past the header", self.at))
            })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32, ArtifactError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64, ArtifactError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self, what: &str) -> Result<String, ArtifactError> {
        let n = self.u32(what)? as usize;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec())
            .map_err(|_| ArtifactError::Malformed(format!("{what} is not UTF-8")))
    }
}

/// Parses and checks an artifact.
pub fn read(bytes: &[u8]) -> Result<Artifact<'_>, ArtifactError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(ArtifactError::NotAnArtifact);
    }
    if bytes.len() < HEADER_AT {
        return Err(ArtifactError::Malformed(format!(
            "{} bytes, shorter than a header",
            bytes.len()
        )));
    }
    let found = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if found != FORMAT_VERSION {
        return Err(ArtifactError::Version { found });
    }
    let header_len = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes")) as usize;
    let end = HEADER_AT
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            ArtifactError::Malformed("the header runs past the file (a truncated file?)".into())
        })?;
    let mut r = Reader {
        bytes: &bytes[..end],
        at: HEADER_AT,
    };
    let kiln_version = r.string("the kiln version")?;
    let target = r.string("the target")?;
    let n = r.u32("the feature count")?;
    let features = (0..n)
        .map(|_| r.string("a CPU feature"))
        .collect::<Result<Vec<_>, _>>()?;
    let n = r.u32("the section count")?;
    let mut sections = Vec::new();
    for _ in 0..n {
        let name = r.string("a section name")?;
        let (off, len) = (r.u64("a section offset")?, r.u64("a section length")?);
        let data = usize::try_from(off)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, l)| Some((o, o.checked_add(l)?)))
            .filter(|&(o, e)| o >= end && e <= bytes.len())
            .map(|(o, e)| &bytes[o..e])
            .ok_or_else(|| {
                ArtifactError::Malformed(format!(
                    "section `{name}` ({len} bytes at {off}) is outside the file's {} bytes (a truncated file?)",
                    bytes.len()
                ))
            })?;
        sections.push((name, data));
    }
    // Bounds first (a cut file says so), then the contents.
    let stored = u64::from_le_bytes(
        bytes[CHECKSUM_AT..CHECKSUM_AT + 8]
            .try_into()
            .expect("8 bytes"),
    );
    let computed = checksum(bytes);
    if stored != computed {
        return Err(ArtifactError::Checksum {
            found: stored,
            computed,
        });
    }
    Ok(Artifact {
        kiln_version,
        target,
        features,
        sections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let weights: Vec<u8> = (0..1000u32)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        write(
            "0.1.0",
            "x86_64-unknown-linux-gnu",
            &["avx2".to_string(), "fma".to_string()],
            &[
                ("code", b"\x90\x90\xc3"),
                ("weights", &weights),
                ("empty", b""),
            ],
        )
    }

    #[test]
    fn round_trips_with_aligned_sections() {
        let bytes = sample();
        assert_eq!(bytes, sample(), "writing is deterministic");
        let a = read(&bytes).unwrap();
        assert_eq!(a.kiln_version, "0.1.0");
        assert_eq!(a.target, "x86_64-unknown-linux-gnu");
        assert_eq!(a.features, ["avx2", "fma"]);
        assert_eq!(a.section("code"), Some(&b"\x90\x90\xc3"[..]));
        assert_eq!(a.section("empty"), Some(&b""[..]));
        let w = a.section("weights").unwrap();
        assert_eq!(w.len(), 4000);
        assert_eq!(
            (w.as_ptr() as usize - bytes.as_ptr() as usize) % SECTION_ALIGN,
            0
        );
        assert_eq!(a.section("nope"), None);
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_an_error() {
        let bytes = sample();
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x20;
            assert!(read(&bad).is_err(), "a flip at byte {at} went unnoticed");
        }
        for len in 0..bytes.len() {
            assert!(read(&bytes[..len]).is_err(), "truncated to {len} bytes");
        }
        assert_eq!(read(b"PK\x03\x04 a zip"), Err(ArtifactError::NotAnArtifact));
        let mut newer = bytes.clone();
        newer[8] = FORMAT_VERSION as u8 + 1;
        assert_eq!(
            read(&newer),
            Err(ArtifactError::Version {
                found: FORMAT_VERSION + 1
            })
        );
    }

    #[test]
    fn a_header_that_lies_is_an_error_even_with_a_valid_checksum() {
        // Section offsets past the end, re-checksummed: caught by the bounds checks.
        let mut bytes = sample();
        let at = bytes.windows(4).position(|w| w == b"code").unwrap() + 4;
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        seal(&mut bytes);
        assert!(matches!(read(&bytes), Err(ArtifactError::Malformed(_))));
    }
}
