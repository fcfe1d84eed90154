//! Content-defined chunking (FastCDC 2020, normalization level 1, gear seed 0).
//!
//! Cut points depend only on the bytes around them, so an insertion early in a file moves
//! only the chunk it lands in and every later chunk keeps its id: that is what lets a
//! backup of a shifted file upload only the changed region plus about two chunks.
//!
//! The parameters are part of the store format. Changing them (or the fastcdc version,
//! which is pinned with `=` in the workspace) silently breaks dedup against every stored
//! snapshot; the golden-value test below guards them.

use std::borrow::BorrowMut;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::sync::OnceLock;

use fastcdc::v2020::{Normalization, cut, select_masks};

use crate::{Error, Result};

/// Smallest chunk, except the last one of a stream.
pub const MIN_SIZE: usize = 256 * 1024;
/// Target average chunk size.
pub const AVG_SIZE: usize = 1024 * 1024;
/// Largest chunk; also the bound the codec enforces when decoding.
pub const MAX_SIZE: usize = 4 * 1024 * 1024;
/// Read buffer at its largest: several maximum chunks, so the unread tail is moved to the
/// front only about once per three chunks instead of after every chunk.
pub const BUFFER_LEN: usize = 4 * MAX_SIZE;
/// Read buffer at its smallest, once anything is read.
const FIRST_BUFFER_LEN: usize = 64 * 1024;

/// Zeros to lend out as the bytes of a hole's chunks (never written: the kernel maps them
/// all to its one zero page).
static ZEROS: [u8; MAX_SIZE] = [0; MAX_SIZE];

/// The length of every chunk cut inside a long run of zeros. The cut of a window of at
/// least `MAX_SIZE` bytes depends on its first `MAX_SIZE` bytes alone, so wherever
/// `MAX_SIZE` zeros follow a cut, the next chunk is this many zeros: the same chunk,
/// with the same id, whether the zeros were read or known from a hole.
pub fn zero_chunk_len() -> usize {
    static LEN: OnceLock<usize> = OnceLock::new();
    *LEN.get_or_init(|| {
        let (mask_s, mask_l) = select_masks(AVG_SIZE, Normalization::Level1);
        cut(
            &ZEROS,
            MIN_SIZE,
            AVG_SIZE,
            MAX_SIZE,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        )
        .1
    })
}

/// The bytes of the chunk cut inside a long run of zeros.
pub fn zero_chunk() -> &'static [u8] {
    &ZEROS[..zero_chunk_len()]
}

/// The holes of a sparse file that the chunker can step over: runs of zeros the file
/// system does not store (`SEEK_HOLE` / `SEEK_DATA`), at least `MAX_SIZE` long (a shorter
/// one could not hold a whole chunk of zeros). A file with as many blocks as its length
/// needs is not sparse (the walk's rule too): no search. Leaves the file's offset at its
/// start.
pub fn holes(file: &std::fs::File) -> std::io::Result<Vec<Range<u64>>> {
    use rustix::fs::{SeekFrom as At, seek};
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    let len = meta.len();
    if meta.blocks().saturating_mul(512) >= len {
        return Ok(Vec::new());
    }
    let mut holes = Vec::new();
    let mut at = 0;
    while at < len {
        let start = match seek(file, At::Hole(at)) {
            Ok(s) => s,
            // No hole search on this file system, or the file shrank meanwhile.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if start >= len {
            break;
        }
        let end = match seek(file, At::Data(start)) {
            Ok(e) => e.min(len),
            Err(rustix::io::Errno::NXIO) => len, // a hole to the end
            Err(e) => return Err(e.into()),
        };
        if end - start >= MAX_SIZE as u64 {
            holes.push(start..end);
        }
        at = end;
    }
    seek(file, At::Start(0))?;
    Ok(holes)
}

/// Iterates over the chunks of a byte stream. Its read buffer grows as the stream needs
/// it, doubling up to [`BUFFER_LEN`]: a small file costs a small buffer (a thousand
/// agents' worth of tiny backups in one process zeroed 16 MiB each before this). A caller
/// chunking many files can pass one buffer in and reuse it ([`Chunker::with_buffer`]).
pub struct Chunker<R: Read, B: BorrowMut<Vec<u8>> = Vec<u8>> {
    source: R,
    buf: B,
    start: usize,
    end: usize,
    eof: bool,
    mask_s: u64,
    mask_l: u64,
    /// The stream offset of `buf[start]`.
    offset: u64,
    /// Runs of zeros ahead that need not be read ([`Chunker::with_holes`]), in order.
    holes: std::collections::VecDeque<Range<u64>>,
    /// How to move the source past a hole (set with the holes: only a source that seeks
    /// has them), and whether it must move before the next read.
    seek: Option<fn(&mut R, SeekFrom) -> std::io::Result<u64>>,
    moved: bool,
}

impl<R: Read> Chunker<R> {
    pub fn new(source: R) -> Self {
        Self::with_buffer(source, Vec::new())
    }
}

impl<R: Read, B: BorrowMut<Vec<u8>>> Chunker<R, B> {
    /// Chunks `source` using `buf` as the read buffer (of any length: it grows as needed,
    /// and keeps its length for the next stream).
    pub fn with_buffer(source: R, buf: B) -> Self {
        let (mask_s, mask_l) = select_masks(AVG_SIZE, Normalization::Level1);
        Chunker {
            source,
            buf,
            start: 0,
            end: 0,
            eof: false,
            mask_s,
            mask_l,
            offset: 0,
            holes: Default::default(),
            seek: None,
            moved: false,
        }
    }

    /// A chunk of zeros if `offset` starts one whole inside a known hole (the source is
    /// then moved past it rather than read), as reading the zeros would have cut it.
    fn hole_chunk(&mut self) -> Option<Chunk> {
        while self.holes.front().is_some_and(|h| h.end <= self.offset) {
            self.holes.pop_front();
        }
        let hole = self.holes.front()?;
        if hole.start > self.offset || hole.end - self.offset < MAX_SIZE as u64 {
            return None;
        }
        let len = zero_chunk_len();
        let buffered = self.end - self.start;
        if buffered >= len {
            self.start += len;
        } else {
            (self.start, self.end) = (0, 0);
            self.moved = true;
            self.eof = false;
        }
        self.offset += len as u64;
        Some(Chunk {
            body: Body::Zeros(len),
        })
    }

    /// Makes sure at least `MAX_SIZE` bytes are buffered, or all that is left.
    fn fill(&mut self) -> std::io::Result<()> {
        if std::mem::take(&mut self.moved)
            && let Some(seek) = self.seek
        {
            seek(&mut self.source, SeekFrom::Start(self.offset))?;
        }
        let buf = BorrowMut::<Vec<u8>>::borrow_mut(&mut self.buf);
        while !self.eof && self.end - self.start < MAX_SIZE {
            // No room left to read into (a read into nothing would look like the end of
            // the stream): the buffer doubles, and at its largest the unread tail (less
            // than MAX_SIZE) moves to the front instead.
            if self.end == buf.len() {
                if buf.len() < BUFFER_LEN {
                    let grown = (buf.len() * 2).clamp(FIRST_BUFFER_LEN, BUFFER_LEN);
                    buf.resize(grown, 0);
                } else {
                    buf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                }
            }
            match self.source.read(&mut buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read + Seek, B: BorrowMut<Vec<u8>>> Chunker<R, B> {
    /// Steps over `holes` (from [`holes`], sorted) instead of reading them: the chunks are
    /// the ones reading their zeros would give, without the reads, the copies or the
    /// hashing ([`Chunk::is_zeros`]). A sparse file of a terabyte costs what its data does.
    pub fn with_holes(mut self, holes: Vec<Range<u64>>) -> Self {
        self.holes = holes.into();
        self.seek = Some(<R as Seek>::seek);
        self
    }
}

/// One chunk's bytes, stored after [`HEADROOM`] spare bytes so that the codec can turn an
/// incompressible chunk into a blob in place, without copying it; or a chunk of zeros
/// from a hole, which holds no buffer of its own.
pub struct Chunk {
    body: Body,
}

enum Body {
    Framed(Vec<u8>),
    Zeros(usize),
}

/// Spare bytes in front of every [`Chunk`]: room for the codec's header.
pub const HEADROOM: usize = crate::codec::HEADER_LEN;

impl Chunk {
    /// The buffer with the headroom in front (for the codec).
    pub(crate) fn into_framed(self) -> Vec<u8> {
        match self.body {
            Body::Framed(buf) => buf,
            Body::Zeros(len) => vec![0; HEADROOM + len],
        }
    }

    /// A chunk of [`zero_chunk_len`] zeros stepped over in a hole: its id is the same for
    /// every such chunk (see `ChunkKey::zero_chunk_id`), so there is nothing to hash.
    pub fn is_zeros(&self) -> bool {
        matches!(self.body, Body::Zeros(_))
    }
}

impl std::ops::Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.body {
            Body::Framed(buf) => &buf[HEADROOM..],
            Body::Zeros(len) => &ZEROS[..*len],
        }
    }
}

impl<R: Read, B: BorrowMut<Vec<u8>>> Iterator for Chunker<R, B> {
    type Item = Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(zeros) = self.hole_chunk() {
            return Some(Ok(zeros));
        }
        if !self.eof
            && self.end - self.start < MAX_SIZE
            && let Err(e) = self.fill()
        {
            return Some(Err(Error::io("reading for chunking", e)));
        }
        if self.start == self.end {
            return None;
        }
        let window = &BorrowMut::<Vec<u8>>::borrow_mut(&mut self.buf)[self.start..self.end];
        let (_, len) = cut(
            window,
            MIN_SIZE,
            AVG_SIZE,
            MAX_SIZE,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        let mut buf = Vec::with_capacity(HEADROOM + len);
        buf.extend_from_slice(&[0; HEADROOM]);
        buf.extend_from_slice(&window[..len]);
        self.start += len;
        self.offset += len as u64;
        Some(Ok(Chunk {
            body: Body::Framed(buf),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic pseudo-random bytes (xorshift64*), independent of any crate version.
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545F4914F6CDD1D) >> 56) as u8
            })
            .collect()
    }

    fn lengths(data: &[u8]) -> Vec<usize> {
        Chunker::new(data)
            .map(|c| c.expect("chunk").len())
            .collect()
    }

    #[test]
    fn golden_boundaries() {
        // Pinned: if this changes, every existing store loses dedup. Do not "fix" the
        // expected values; fix the chunker.
        let data = noise(8 << 20, 42);
        let got = lengths(&data);
        assert_eq!(got.iter().sum::<usize>(), 8 << 20);
        assert_eq!(got, GOLDEN);
    }

    const GOLDEN: &[usize] = &[2127980, 1064198, 1217294, 753417, 674300, 2413352, 138067];

    #[test]
    fn sizes_stay_within_bounds() {
        let data = noise(20 << 20, 7);
        let got = lengths(&data);
        let (last, rest) = got.split_last().expect("chunks");
        assert!(
            rest.iter().all(|&l| (MIN_SIZE..=MAX_SIZE).contains(&l)),
            "{got:?}"
        );
        assert!(*last <= MAX_SIZE);
        let avg = got.iter().sum::<usize>() / got.len();
        assert!((AVG_SIZE / 2..AVG_SIZE * 2).contains(&avg), "average {avg}");
    }

    #[test]
    fn an_insertion_changes_only_nearby_chunks() {
        let base = noise(16 << 20, 9);
        let mut shifted = base[..5_000_000].to_vec();
        shifted.extend_from_slice(b"inserted bytes that shift everything after them");
        shifted.extend_from_slice(&base[5_000_000..]);
        let key = crate::ChunkKey::from_bytes([0; 32]);
        let ids = |d: &[u8]| -> std::collections::HashSet<_> {
            Chunker::new(d)
                .map(|c| key.id_of(&c.expect("chunk")))
                .collect()
        };
        let (a, b) = (ids(&base), ids(&shifted));
        let new = b.difference(&a).count();
        assert!(new <= 2, "{new} new chunks after one insertion");
    }

    /// A reader that returns at most a few bytes per call, to exercise refills.
    struct Trickle<'a>(&'a [u8], usize);

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(self.1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn short_reads_and_a_reused_buffer_give_the_same_boundaries() {
        let data = noise(8 << 20, 42);
        // Starts empty: the reads grow it.
        let mut buf = Vec::new();
        let got: Vec<usize> = Chunker::with_buffer(Trickle(&data, 100_003), &mut buf)
            .map(|c| c.expect("chunk").len())
            .collect();
        assert_eq!(got, GOLDEN);
        let again: Vec<usize> = Chunker::with_buffer(&data[..], &mut buf)
            .map(|c| c.expect("chunk").len())
            .collect();
        assert_eq!(again, GOLDEN);
        assert_eq!(buf.len(), BUFFER_LEN);
    }

    #[test]
    fn a_small_stream_costs_a_small_buffer() {
        let data = noise(10_000, 7);
        let mut buf = Vec::new();
        let chunks: Vec<Chunk> = Chunker::with_buffer(&data[..], &mut buf)
            .map(|c| c.expect("chunk"))
            .collect();
        assert_eq!(chunks.len(), 1);
        assert_eq!(&chunks[0][..], &data[..]);
        assert_eq!(buf.len(), FIRST_BUFFER_LEN);
    }

    #[test]
    fn a_run_of_zeros_cuts_at_the_zero_chunk_len() {
        let len = zero_chunk_len();
        assert!((MIN_SIZE..=MAX_SIZE).contains(&len), "{len}");
        let zeros = vec![0u8; 5 * MAX_SIZE];
        let got = lengths(&zeros);
        assert!(got[..got.len() - 1].iter().all(|&l| l == len), "{got:?}");
    }

    /// A reader that counts the bytes it read, over a file.
    struct Counted(std::fs::File, u64);

    impl std::io::Read for Counted {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1 += n as u64;
            Ok(n)
        }
    }

    impl std::io::Seek for Counted {
        fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
            self.0.seek(to)
        }
    }

    #[test]
    fn holes_are_stepped_over_into_the_chunks_reading_them_gives() {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sparse");
        let mut f = std::fs::File::create(&path).expect("create");
        // Data at the start, islands with holes of every kind of length between them
        // (shorter than a chunk, just a chunk, many chunks), and a hole at the end.
        let mut at = 0u64;
        for (i, (data, hole)) in [
            (3 << 20, 1 << 20),
            (100_000, MAX_SIZE as u64),
            (5_000, 9 * MAX_SIZE as u64 + 12_345),
            (2 << 20, 40 << 20),
            (1, 64 << 20),
        ]
        .into_iter()
        .enumerate()
        {
            f.write_all_at(&noise(data, i as u64 + 1), at)
                .expect("write");
            at += data as u64 + hole;
        }
        f.set_len(at).expect("set_len");
        f.flush().expect("flush");
        let file = std::fs::File::open(&path).expect("open");
        let found = holes(&file).expect("holes");
        if found.is_empty() {
            // A file system without hole search (or that filled the holes): nothing to
            // step over, which the plain reads below cover.
            eprintln!("no holes found on this file system: nothing to compare");
            return;
        }
        assert!(
            found.iter().all(|h| h.end - h.start >= MAX_SIZE as u64),
            "{found:?}"
        );
        let plain: Vec<(usize, [u8; 32])> = Chunker::new(std::fs::File::open(&path).expect("open"))
            .map(|c| {
                let c = c.expect("chunk");
                (c.len(), *blake3::hash(&c).as_bytes())
            })
            .collect();
        let mut counted = Counted(file, 0);
        let mut zeros = 0;
        let stepped: Vec<(usize, [u8; 32])> = Chunker::new(&mut counted)
            .with_holes(found)
            .map(|c| {
                let c = c.expect("chunk");
                zeros += c.is_zeros() as usize;
                (c.len(), *blake3::hash(&c).as_bytes())
            })
            .collect();
        assert_eq!(stepped, plain, "the same chunks, stepped over or read");
        assert!(zeros >= 20, "{zeros} chunks of zeros stepped over");
        assert!(
            counted.1 < at / 2,
            "read {} of the file's {at} bytes",
            counted.1
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn chunks_reassemble_to_the_input(len in 0usize..6_000_000, seed in any::<u64>()) {
            let data = noise(len, seed);
            let mut joined = Vec::with_capacity(len);
            for c in Chunker::new(&data[..]) {
                joined.extend_from_slice(&c.expect("chunk"));
            }
            prop_assert_eq!(joined, data);
        }
    }
}
