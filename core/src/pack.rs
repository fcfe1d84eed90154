//! Pack files: many chunk blobs in one file, with a trailer index.
//!
//! ```text
//! offset        size        field
//! 0             8           magic "LBPACK" 0x00 0x01 (version 1)
//! 8             ..          blobs, back to back (see `codec`)
//! index_offset  44 × count  index entries: chunk id (32) | blob offset u64 LE | blob length u32 LE
//! end - 56      8           index_offset u64 LE
//! end - 48      4           count u32 LE
//! end - 44      4           reserved, 0
//! end - 40      32          BLAKE3 of the index entries
//! end - 8       8           magic "LBPKEND1"
//! ```
//!
//! A pack is named by the BLAKE3 hash of its trailer (index entries and footer, which
//! itself holds the index hash), so naming costs nothing per stored byte; every blob is
//! verified on its own against its chunk id. A pack becomes visible under
//! `packs/` only once complete and synced, so the catalog's chunk index can always be
//! rebuilt by reading every pack's trailer.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::{ChunkId, Error, Result};

const HEADER: &[u8; 8] = b"LBPACK\x00\x01";
const END_MAGIC: &[u8; 8] = b"LBPKEND1";
const ENTRY_LEN: usize = 44;
const FOOTER_LEN: usize = 56;
/// Packs are sealed once they reach this size.
pub const TARGET_SIZE: u64 = 32 * 1024 * 1024;

/// Where one chunk blob lives inside a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub length: u32,
}

/// A sealed pack.
#[derive(Debug, Clone)]
pub struct SealedPack {
    /// 64 hex: BLAKE3 of the pack's trailer (index entries and footer).
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub entries: Vec<IndexEntry>,
}

/// The path of pack `name` (64 hex, already validated) under `packs_dir`.
pub fn pack_path(packs_dir: &Path, name: &str) -> PathBuf {
    packs_dir.join(&name[..2]).join(format!("{name}.pack"))
}

/// Appends blobs to a temp file; `seal` makes it a pack.
///
/// Invariant: `size` is the number of bytes written, so every entry's offset names its
/// blob. A write that fails may have written part of its bytes (a full disk takes what
/// fits), after which no offset can be trusted: the writer is then broken, refuses every
/// further write, and can only be discarded.
pub struct PackWriter {
    tmp: PathBuf,
    out: BufWriter<File>,
    size: u64,
    entries: Vec<IndexEntry>,
    broken: bool,
}

impl PackWriter {
    pub fn create(tmp_dir: &Path) -> Result<Self> {
        let tmp = crate::durable::temp_path(tmp_dir, "pack");
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx(|| format!("creating pack {}", tmp.display()))?;
        let mut w = PackWriter {
            tmp,
            out: BufWriter::with_capacity(256 << 10, file),
            size: 0,
            entries: Vec::new(),
            broken: false,
        };
        if let Err(e) = w.write(HEADER) {
            w.discard();
            return Err(e);
        }
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if self.broken {
            return Err(Error::io(
                format!("writing pack {}", self.tmp.display()),
                std::io::Error::other("an earlier write to this pack failed"),
            ));
        }
        if let Err(e) = self.out.write_all(bytes) {
            self.broken = true;
            return Err(Error::io(format!("writing pack {}", self.tmp.display()), e));
        }
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Whether a write failed: the pack must be discarded (see the type's invariant).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Appends one blob. The caller has verified that `blob` decodes to a chunk with `id`.
    pub fn add(&mut self, id: ChunkId, blob: &[u8]) -> Result<IndexEntry> {
        let entry = IndexEntry {
            id,
            offset: self.size,
            length: blob.len() as u32,
        };
        self.write(blob)?;
        self.entries.push(entry);
        Ok(entry)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the trailer, syncs, checks what reached the file, and renames the pack into
    /// `packs_dir/<2 hex>/<name>.pack`. On any failure the temp file is removed: nothing
    /// that was not synced and checked becomes a pack.
    pub fn seal(self, packs_dir: &Path) -> Result<SealedPack> {
        let tmp = self.tmp.clone();
        let sealed = self.seal_inner(packs_dir);
        if sealed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        sealed
    }

    fn seal_inner(mut self, packs_dir: &Path) -> Result<SealedPack> {
        let index_offset = self.size;
        let mut index = Vec::with_capacity(self.entries.len() * ENTRY_LEN);
        for e in &self.entries {
            index.extend_from_slice(e.id.as_bytes());
            index.extend_from_slice(&e.offset.to_le_bytes());
            index.extend_from_slice(&e.length.to_le_bytes());
        }
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        footer.extend_from_slice(&index_offset.to_le_bytes());
        footer.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        footer.extend_from_slice(&[0; 4]);
        footer.extend_from_slice(blake3::hash(&index).as_bytes());
        footer.extend_from_slice(END_MAGIC);
        self.write(&index)?;
        self.write(&footer)?;
        let mut trailer = blake3::Hasher::new();
        trailer.update(&index);
        trailer.update(&footer);
        let name = trailer.finalize().to_hex().to_string();
        let tmp = self.tmp.clone();
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(format!("flushing pack {}", tmp.display()), e.into_error()))?;
        file.sync_all()
            .ctx(|| format!("syncing pack {}", tmp.display()))?;
        drop(file);
        // What is on disk must be exactly what the index describes: its length, and a
        // trailer that reads back to the same entries.
        let on_disk = fs::metadata(&tmp)
            .ctx(|| format!("stat {}", tmp.display()))?
            .len();
        if on_disk != self.size {
            return Err(Error::CorruptPack {
                path: tmp,
                reason: format!("{on_disk} bytes on disk, {} written", self.size),
            });
        }
        if read_index(&tmp)? != self.entries {
            return Err(Error::CorruptPack {
                path: tmp,
                reason: "the index read back differs from the one written".into(),
            });
        }
        let path = pack_path(packs_dir, &name);
        let dir = path.parent().unwrap_or(packs_dir);
        let created = !dir.exists();
        fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        crate::durable::rename_durable(&tmp, &path)?;
        if created {
            crate::durable::sync_dir(packs_dir)?;
        }
        Ok(SealedPack {
            name,
            path,
            size: self.size,
            entries: self.entries,
        })
    }

    /// Abandons the pack and removes its temp file.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Reads and validates a pack's trailer index.
pub fn read_index(path: &Path) -> Result<Vec<IndexEntry>> {
    let corrupt = |reason: String| Error::CorruptPack {
        path: path.to_owned(),
        reason,
    };
    let mut f = File::open(path).ctx(|| format!("opening pack {}", path.display()))?;
    let size = f
        .metadata()
        .ctx(|| format!("stat {}", path.display()))?
        .len();
    if size < (HEADER.len() + FOOTER_LEN) as u64 {
        return Err(corrupt(format!("{size} bytes is too short for a pack")));
    }
    let mut head = [0u8; 8];
    f.read_exact(&mut head)
        .ctx(|| format!("reading {}", path.display()))?;
    if &head != HEADER {
        return Err(corrupt("bad header magic".into()));
    }
    let mut footer = [0u8; FOOTER_LEN];
    f.seek(SeekFrom::Start(size - FOOTER_LEN as u64))
        .ctx(|| format!("seeking {}", path.display()))?;
    f.read_exact(&mut footer)
        .ctx(|| format!("reading {}", path.display()))?;
    if &footer[48..] != END_MAGIC {
        return Err(corrupt("bad trailer magic".into()));
    }
    let le64 = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or([0; 4]));
    let index_offset = le64(&footer[0..8]);
    let count = le32(&footer[8..12]) as u64;
    // Checked: a hostile trailer's offset near 2^64 must not wrap around to the file's
    // size (and have a huge index allocated, or entries accepted outside the data).
    let end = (count * ENTRY_LEN as u64)
        .checked_add(index_offset)
        .and_then(|e| e.checked_add(FOOTER_LEN as u64));
    if index_offset < HEADER.len() as u64 || end != Some(size) {
        return Err(corrupt(
            "index offset and count do not match the file size".into(),
        ));
    }
    let mut index = vec![0u8; (count as usize) * ENTRY_LEN];
    f.seek(SeekFrom::Start(index_offset))
        .ctx(|| format!("seeking {}", path.display()))?;
    f.read_exact(&mut index)
        .ctx(|| format!("reading {}", path.display()))?;
    if blake3::hash(&index).as_bytes() != &footer[16..48] {
        return Err(corrupt("index checksum mismatch".into()));
    }
    index
        .chunks_exact(ENTRY_LEN)
        .map(|e| {
            let entry = IndexEntry {
                id: ChunkId::from_slice(&e[..32])?,
                offset: le64(&e[32..40]),
                length: le32(&e[40..44]),
            };
            if entry.offset < HEADER.len() as u64
                || entry
                    .offset
                    .checked_add(entry.length as u64)
                    .is_none_or(|end| end > index_offset)
            {
                return Err(corrupt(format!(
                    "entry for {} points outside the data area",
                    entry.id
                )));
            }
            Ok(entry)
        })
        .collect()
}

/// The chunks still readable in a pack whose trailer is damaged or missing (a pack cut
/// short, a flipped bit in its index): walks the blobs from the header on, each framed by
/// its own header (raw: its length; zstd: its frame), decodes each and names it by its
/// keyed id. A blob that does not decode is passed over when its extent is known; the walk
/// stops where the framing is lost (the cut, or the index). Never trusts the data: lengths
/// are bounded like any decode. In an encrypted store (`data_key`) each blob is a sealed
/// frame that names its chunk and length: it is kept when it opens, decodes and hashes to
/// the chunk it names.
pub fn salvage(
    path: &Path,
    key: &crate::ChunkKey,
    data_key: Option<&crate::seal::DataKey>,
) -> Result<Vec<IndexEntry>> {
    let data = fs::read(path).ctx(|| format!("reading pack {}", path.display()))?;
    if data.len() < HEADER.len() || &data[..HEADER.len()] != HEADER {
        return Ok(Vec::new());
    }
    if let Some(data_key) = data_key {
        return Ok(salvage_sealed(&data, key, data_key));
    }
    let mut found = Vec::new();
    let mut at = HEADER.len();
    while data.len() - at >= crate::codec::HEADER_LEN {
        let rest = &data[at..];
        let Ok(raw_len) = crate::codec::declared_len(rest) else {
            break; // not a blob header: the cut, or the index
        };
        let payload = &rest[crate::codec::HEADER_LEN..];
        let payload_len = if crate::codec::is_zstd(rest) {
            match zstd::zstd_safe::find_frame_compressed_size(payload) {
                Ok(n) => n,
                Err(_) => break,
            }
        } else {
            raw_len
        };
        let len = crate::codec::HEADER_LEN + payload_len;
        if len > rest.len() || len > u32::MAX as usize {
            break; // cut short inside this blob
        }
        if let Ok(plain) = crate::codec::decode(&rest[..len]) {
            found.push(IndexEntry {
                id: key.id_of(&plain),
                offset: at as u64,
                length: len as u32,
            });
        }
        at += len;
    }
    Ok(found)
}

fn salvage_sealed(
    data: &[u8],
    key: &crate::ChunkKey,
    data_key: &crate::seal::DataKey,
) -> Vec<IndexEntry> {
    let mut found = Vec::new();
    let mut at = HEADER.len();
    while let Some((id, len)) = crate::seal::frame_extent(&data[at..]) {
        let Some(frame) = data.get(at..at + len) else {
            break; // cut short inside this frame
        };
        let intact = data_key
            .open_chunk(&id, frame)
            .and_then(|blob| crate::codec::decode_verified(key, &id, &blob));
        if intact.is_ok() {
            found.push(IndexEntry {
                id,
                offset: at as u64,
                length: len as u32,
            });
        }
        at += len;
    }
    found
}

/// Reads one blob from an open pack file.
pub fn read_blob(file: &File, offset: u64, length: u32) -> Result<Vec<u8>> {
    let what = || format!("reading {length} bytes at {offset} from a pack");
    // Read into spare capacity: zero-filling a buffer about to be overwritten cost a
    // restore's controller as much as a tenth of its reads.
    let length = length as usize;
    let mut buf = Vec::with_capacity(length);
    while buf.len() < length {
        let at = offset + buf.len() as u64;
        let n = rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at)
            .map_err(|e| Error::io(what(), e.into()))?;
        if n == 0 {
            let early =
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the pack ends early");
            return Err(Error::io(what(), early));
        }
    }
    // The allocator may have given more capacity than asked, and the read filled it.
    buf.truncate(length);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn seal_then_rebuild_index_from_the_pack_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let packs = dir.path().join("packs");
        let key = crate::ChunkKey::from_bytes([5; 32]);
        let mut w = PackWriter::create(dir.path()).expect("create");
        let mut expect = Vec::new();
        for i in 0..10u32 {
            let data = format!("chunk number {i}")
                .repeat(1000 * (i as usize + 1))
                .into_bytes();
            let id = key.id_of(&data);
            let blob = codec::Encoder::new(3)
                .expect("enc")
                .encode(&data)
                .expect("encode");
            expect.push((w.add(id, &blob).expect("add"), data));
        }
        let sealed = w.seal(&packs).expect("seal");
        assert_eq!(sealed.path, pack_path(&packs, &sealed.name));
        let bytes = fs::read(&sealed.path).expect("read");
        let trailer = &bytes[bytes.len() - (expect.len() * ENTRY_LEN + FOOTER_LEN)..];
        assert_eq!(blake3::hash(trailer).to_hex().as_str(), sealed.name);
        let index = read_index(&sealed.path).expect("index");
        let file = File::open(&sealed.path).expect("open");
        assert_eq!(index.len(), expect.len());
        for (entry, (written, data)) in index.iter().zip(&expect) {
            assert_eq!(entry, written);
            let blob = read_blob(&file, entry.offset, entry.length).expect("blob");
            assert_eq!(
                &codec::decode_verified(&key, &entry.id, &blob).expect("decode"),
                data
            );
        }
        // Nothing left behind in the temp dir but the packs folder.
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn salvage_recovers_the_chunks_before_a_cut_and_behind_a_bad_trailer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = crate::ChunkKey::from_bytes([9; 32]);
        let mut w = PackWriter::create(dir.path()).expect("create");
        let mut enc = codec::Encoder::new(3).expect("enc");
        let mut written = Vec::new();
        for i in 0..8u32 {
            // Alternately compressible (zstd) and random (stored raw).
            let data: Vec<u8> = if i % 2 == 0 {
                format!("line {i}\n").repeat(5000).into_bytes()
            } else {
                (0..40_000u32)
                    .map(|j| (j.wrapping_mul(2654435761).wrapping_add(i) >> 13) as u8)
                    .collect()
            };
            let id = key.id_of(&data);
            written.push(w.add(id, &enc.encode(&data).expect("encode")).expect("add"));
        }
        let sealed = w.seal(&dir.path().join("packs")).expect("seal");
        let whole = fs::read(&sealed.path).expect("read");

        // A flipped bit in the index: every chunk comes back.
        let mut bytes = whole.clone();
        let n = bytes.len();
        bytes[n - 60] ^= 1;
        fs::write(&sealed.path, &bytes).expect("write");
        assert!(read_index(&sealed.path).is_err());
        assert_eq!(salvage(&sealed.path, &key, None).expect("salvage"), written);

        // Cut in the middle of the fifth blob: the four before it come back.
        let cut = (written[4].offset + 10) as usize;
        fs::write(&sealed.path, &whole[..cut]).expect("write");
        assert_eq!(
            salvage(&sealed.path, &key, None).expect("salvage"),
            written[..4]
        );

        // A corrupt blob in the middle is passed over, the ones after it still found.
        let mut bytes = whole.clone();
        let mid = written[3];
        bytes[(mid.offset + mid.length as u64 / 2) as usize] ^= 0x55;
        bytes[n - 60] ^= 1;
        fs::write(&sealed.path, &bytes).expect("write");
        let got = salvage(&sealed.path, &key, None).expect("salvage");
        let want: Vec<_> = written
            .iter()
            .filter(|e| e.offset != mid.offset)
            .copied()
            .collect();
        assert_eq!(
            got.iter()
                .filter(|e| e.offset != mid.offset)
                .copied()
                .collect::<Vec<_>>(),
            want
        );
        // (A raw blob with a flipped bit decodes, under another id that nothing uses.)
        assert!(got.iter().all(|e| e.offset != mid.offset || e.id != mid.id));
    }

    #[test]
    fn a_damaged_trailer_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = PackWriter::create(dir.path()).expect("create");
        w.add(ChunkId([1; 32]), &codec::encode_raw(b"x"))
            .expect("add");
        let sealed = w.seal(&dir.path().join("packs")).expect("seal");
        let mut bytes = fs::read(&sealed.path).expect("read");
        let n = bytes.len();
        bytes[n - 60] ^= 0xff; // inside the index entries
        fs::write(&sealed.path, &bytes).expect("write");
        assert!(matches!(
            read_index(&sealed.path),
            Err(Error::CorruptPack { .. })
        ));
    }

    /// B2's find: a trailer whose index offset lies near 2^64, so that offset, index and
    /// footer add up to the file's size only by wrapping around, is refused (it panicked
    /// on the overflow, or with overflow unchecked passed, with a 189 GB index to read).
    #[test]
    fn an_index_offset_that_wraps_around_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hostile.pack");
        let count = u32::MAX;
        let size = (HEADER.len() + 100 + FOOTER_LEN) as u64;
        let offset = size.wrapping_sub(count as u64 * ENTRY_LEN as u64 + FOOTER_LEN as u64);
        let mut bytes = HEADER.to_vec();
        bytes.extend_from_slice(&[0x50; 100]);
        bytes.extend_from_slice(&offset.to_le_bytes());
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(&[0xff; 36]);
        bytes.extend_from_slice(END_MAGIC);
        assert_eq!(bytes.len() as u64, size);
        fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            read_index(&path),
            Err(Error::CorruptPack { reason, .. }) if reason.contains("do not match the file size")
        ));
    }
}
