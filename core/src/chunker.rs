//! Content-defined chunking (FastCDC 2020, normalization level 1, gear seed 0).
//!
//! Cut points depend only on the bytes around them, so an insertion early in a file moves
//! only the chunk it lands in and every later chunk keeps its id: that is what lets a
//! backup of a shifted file upload only the changed region plus about two chunks.
//!
//! The parameters are part of the store format. Changing them (or the fastcdc version,
//! which is pinned with `=` in the workspace) silently breaks dedup against every stored
//! snapshot; the golden-value test below guards them.

use std::io::Read;

use fastcdc::v2020::{Normalization, StreamCDC};

use crate::{Error, Result};

/// Smallest chunk, except the last one of a stream.
pub const MIN_SIZE: usize = 256 * 1024;
/// Target average chunk size.
pub const AVG_SIZE: usize = 1024 * 1024;
/// Largest chunk; also the bound the codec enforces when decoding.
pub const MAX_SIZE: usize = 4 * 1024 * 1024;

/// Iterates over the chunks of a byte stream. Holds at most `MAX_SIZE` bytes of buffer.
pub struct Chunker<R: Read> {
    inner: StreamCDC<R>,
}

impl<R: Read> Chunker<R> {
    pub fn new(source: R) -> Self {
        Chunker {
            inner: StreamCDC::with_level(
                source,
                MIN_SIZE,
                AVG_SIZE,
                MAX_SIZE,
                Normalization::Level1,
            ),
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|r| {
            r.map(|c| c.data).map_err(|e| match e {
                fastcdc::v2020::Error::IoError(io) => Error::io("reading for chunking", io),
                other => Error::io("chunking", std::io::Error::other(other.to_string())),
            })
        })
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
