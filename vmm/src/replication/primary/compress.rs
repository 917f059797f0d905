//! The form a batch of pages leaves in: one LZ4 block (`PagesLz4`) when that saves at least
//! an eighth, else plain `Pages`. Dirty pages of a running guest (new page tables, stacks,
//! half-filled buffers) shrink to about a fifth; random data does not shrink, so after a batch
//! that did not pay, the next `SKIP_AFTER_MISS` go plain without trying (the throughput of a
//! copy of incompressible memory is not spent on compressing it).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::replication::wire::{Frame, Pages, PagesLz4};

/// Batches sent plain without trying after one that did not compress.
const SKIP_AFTER_MISS: u32 = 8;

/// Page data bytes given to the stream, and what they took on the wire: read by the status
/// while the stream thread may be blocked in a send.
#[derive(Default)]
pub struct PageTally {
    pub raw: AtomicU64,
    pub wire: AtomicU64,
}

/// Compresses the stream thread's page batches (one per stream; its buffer is reused).
#[derive(Default)]
pub struct PageCompressor {
    block: Vec<u8>,
    skip: u32,
}

impl PageCompressor {
    /// The frame for pages `numbers` with `data` (`numbers.len()` pages), counted in `tally`.
    pub fn frame<'a>(
        &'a mut self,
        numbers: &'a [u64],
        data: &'a [u8],
        tally: &PageTally,
    ) -> Frame<'a> {
        tally.raw.fetch_add(data.len() as u64, Ordering::Relaxed);
        if !data.is_empty() && self.skip == 0 {
            let max = lz4_flex::block::get_maximum_output_size(data.len());
            self.block.resize(max, 0);
            if let Ok(n) = lz4_flex::block::compress_into(data, &mut self.block) {
                if n > 0 && n <= data.len() - data.len() / 8 {
                    tally.wire.fetch_add(n as u64, Ordering::Relaxed);
                    return Frame::PagesLz4(PagesLz4 {
                        pages: numbers.into(),
                        block: self.block[..n].into(),
                    });
                }
            }
            self.skip = SKIP_AFTER_MISS;
        } else {
            self.skip = self.skip.saturating_sub(1);
        }
        tally.wire.fetch_add(data.len() as u64, Ordering::Relaxed);
        Frame::Pages(Pages {
            pages: numbers.into(),
            data: data.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::PAGE_SIZE;

    fn random(n: usize, seed: &mut u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed as u8
            })
            .collect()
    }

    #[test]
    fn compressible_pages_go_compressed_and_come_back_the_same() {
        let mut c = PageCompressor::default();
        let t = PageTally::default();
        let numbers = [3u64, 9, 10];
        let mut data = vec![0u8; 3 * PAGE_SIZE];
        data[100..108].copy_from_slice(b"pagetabl");
        data[PAGE_SIZE + 7] = 1;
        match c.frame(&numbers, &data, &t) {
            Frame::PagesLz4(p) => {
                assert_eq!(&*p.pages, &numbers);
                assert!(p.block.len() < data.len() / 8);
                assert_eq!(p.decompress().unwrap(), data);
            }
            other => panic!("not compressed: {:?}", other.kind()),
        }
        let (raw, wire) = (t.raw.into_inner(), t.wire.into_inner());
        assert_eq!(raw, data.len() as u64);
        assert!(wire < raw / 8);
    }

    #[test]
    fn random_pages_go_plain_and_the_next_batches_are_not_tried() {
        let mut c = PageCompressor::default();
        let t = PageTally::default();
        let mut seed = 0x1234_5678_9abc_def1;
        let noise = random(2 * PAGE_SIZE, &mut seed);
        assert!(matches!(c.frame(&[1, 2], &noise, &t), Frame::Pages(_)));
        // Compressible, but within the skip window: plain.
        let zeros = vec![0u8; 2 * PAGE_SIZE];
        for _ in 0..SKIP_AFTER_MISS {
            assert!(matches!(c.frame(&[1, 2], &zeros, &t), Frame::Pages(_)));
        }
        let block = match c.frame(&[1, 2], &zeros, &t) {
            Frame::PagesLz4(p) => p.block.len() as u64,
            other => panic!("not compressed: {:?}", other.kind()),
        };
        let batch = 2 * PAGE_SIZE as u64;
        assert_eq!(t.raw.into_inner(), (SKIP_AFTER_MISS as u64 + 2) * batch);
        assert_eq!(
            t.wire.into_inner(),
            (SKIP_AFTER_MISS as u64 + 1) * batch + block
        );
    }

    #[test]
    fn a_damaged_block_is_refused_not_padded() {
        let mut c = PageCompressor::default();
        let data = vec![7u8; 2 * PAGE_SIZE];
        let Frame::PagesLz4(mut p) = c.frame(&[1, 2], &data, &PageTally::default()) else {
            panic!("not compressed");
        };
        // The same block claimed for three pages: it decompresses to two pages' worth.
        p.pages = vec![1u64, 2, 3].into();
        assert!(p.decompress().is_err());
        let mut cut = p.block.to_vec();
        cut.truncate(cut.len() / 2);
        p.block = cut.into();
        p.pages = vec![1u64, 2].into();
        assert!(p.decompress().is_err());
    }
}
