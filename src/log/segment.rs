//! One segment file: a 32-byte header, then frames. Named by the global log
//! position of its first byte (`00000000000000000000.log`), so a position maps
//! to a file by a range lookup and to a file offset by subtraction.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::StoreError;

pub const MAGIC: &[u8; 8] = b"PMQLOG\r\n";
/// Bumped on any incompatible change of the segment or record layout. Old
/// versions stay readable, or are refused by name; never misread.
pub const FORMAT_VERSION: u8 = 1;
pub const HEADER_BYTES: u64 = 32;

pub fn file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// Parses `00000000000000001234.log` back to its base position.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub fn encode_header(base: u64) -> [u8; HEADER_BYTES as usize] {
    let mut h = [0u8; HEADER_BYTES as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8] = FORMAT_VERSION;
    h[16..24].copy_from_slice(&base.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a header read from `path`; returns the format version.
pub fn check_header(path: &Path, h: &[u8], expect_base: u64) -> Result<u8, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt { path: path.to_owned(), offset: 0, reason: reason.to_owned() };
    if h.len() < HEADER_BYTES as usize {
        return Err(corrupt("segment header is truncated"));
    }
    if &h[..8] != MAGIC {
        return Err(corrupt("not a polymq segment (bad magic)"));
    }
    let stored_crc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    if crc32c::crc32c(&h[..24]) != stored_crc {
        return Err(corrupt("segment header checksum mismatch"));
    }
    let version = h[8];
    if version != FORMAT_VERSION {
        return Err(StoreError::UnsupportedVersion { path: path.to_owned(), version });
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[16..24]);
    if u64::from_le_bytes(b) != expect_base {
        return Err(corrupt("segment header base does not match its file name"));
    }
    Ok(version)
}

/// An open segment: readers share it through an `Arc`, the writer appends to
/// the active one. Deleting the file while a reader holds it is safe on unix.
#[derive(Debug)]
pub struct Segment {
    pub base: u64,
    pub path: PathBuf,
    pub file: File,
}

impl Segment {
    /// Creates a new segment with its header written and fsynced, and fsyncs
    /// the directory so the new name survives a crash.
    pub fn create(dir: &Path, base: u64) -> Result<Segment, StoreError> {
        let path = dir.join(file_name(base));
        let file = OpenOptions::new().read(true).append(true).create_new(true).open(&path).map_err(|e| StoreError::io(&path, e))?;
        use std::io::Write;
        let made = (&file).write_all(&encode_header(base)).and_then(|()| file.sync_all());
        if let Err(e) = made {
            // A file without its header would stop the next start (and a
            // retry of this roll): take it away again.
            drop(file);
            let _ = std::fs::remove_file(&path);
            let err = StoreError::io(&path, e);
            return Err(if err.is_write_refused() { StoreError::NoSpace } else { err });
        }
        sync_dir(dir)?;
        Ok(Segment { base, path, file })
    }

    pub fn open(path: PathBuf, base: u64) -> Result<Segment, StoreError> {
        let file = OpenOptions::new().read(true).append(true).open(&path).map_err(|e| StoreError::io(&path, e))?;
        Ok(Segment { base, path, file })
    }

    /// Reads exactly `len` bytes at global position `pos`.
    pub fn read_exact_at(&self, pos: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let off = pos
            .checked_sub(self.base)
            .ok_or_else(|| StoreError::InvalidArgument(format!("position {pos} before segment {}", self.base)))?;
        self.file.read_exact_at(buf, off).map_err(|e| StoreError::io(&self.path, e))
    }
}

pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(dir, e))
}
