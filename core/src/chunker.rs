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
use std::io::Read;

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
        }
    }

    /// Makes sure at least `MAX_SIZE` bytes are buffered, or all that is left.
    fn fill(&mut self) -> std::io::Result<()> {
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

/// One chunk's bytes, stored after [`HEADROOM`] spare bytes so that the codec can turn an
/// incompressible chunk into a blob in place, without copying it.
pub struct Chunk {
    buf: Vec<u8>,
}

/// Spare bytes in front of every [`Chunk`]: room for the codec's header.
pub const HEADROOM: usize = crate::codec::HEADER_LEN;

impl Chunk {
    /// The buffer with the headroom in front (for the codec).
    pub(crate) fn into_framed(self) -> Vec<u8> {
        self.buf
    }
}

impl std::ops::Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[HEADROOM..]
    }
}

impl<R: Read, B: BorrowMut<Vec<u8>>> Iterator for Chunker<R, B> {
    type Item = Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
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
        Some(Ok(Chunk { buf }))
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
