//! Synthetic items and batches (the block readers are not needed to test the model).
#![allow(dead_code)]

use candle_core::{Device, Result};
use cff_blocks::Format;
use tempest_tokenize::rng::SplitMix64;
use tempest_tokenize::{collate, Batch, BlockPosition, HostBatch, TokenizedItem, PAD_ID};

/// A small deterministic generator: the workspace's SplitMix64, drawn by remainder.
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::new(seed))
    }

    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An item of `blocks` blocks of random bytes, each 1..=`max_len` long, audio-like times.
pub fn item(rng: &mut Rng, blocks: usize, max_len: usize) -> TokenizedItem {
    let mut it = TokenizedItem::new(Format::Mp3, 0);
    for k in 0..blocks {
        let len = 1 + rng.below(max_len as u64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
        let pos = BlockPosition {
            index: k as u32,
            time: k as f32 * 0.036,
            duration: 0.036,
            row: 0,
            col: 0,
        };
        it.push_block(&bytes, pos, max_len);
    }
    it
}

/// `count` items with 1..=`max_blocks` blocks each.
pub fn items(seed: u64, count: usize, max_blocks: usize, max_len: usize) -> Vec<TokenizedItem> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            let n = 1 + rng.below(max_blocks as u64) as usize;
            item(&mut rng, n, max_len)
        })
        .collect()
}

pub fn host(items: &[TokenizedItem], labels: &[u32]) -> HostBatch {
    let refs: Vec<&TokenizedItem> = items.iter().collect();
    collate(&refs, labels, PAD_ID)
}

pub fn batch(items: &[TokenizedItem], labels: &[u32]) -> Result<Batch> {
    host(items, labels)
        .to_tensors(&Device::Cpu)
        .map_err(candle_core::Error::wrap)
}

/// Writes random bytes (never the padding id) at every padded byte and random positions,
/// lengths and times into every padded block: nothing the model may look at.
pub fn scramble_padding(h: &mut HostBatch, seed: u64) {
    let mut rng = Rng::new(seed);
    for (id, &m) in h.ids.iter_mut().zip(&h.byte_mask) {
        if m == 0 {
            *id = rng.below(256) as u32;
        }
    }
    for k in 0..h.block_mask.len() {
        if h.block_mask[k] == 0 {
            h.block_len[k] = rng.below(h.block_bytes as u64 + 1) as u32;
            h.block_index[k] = rng.below(1000) as u32;
            h.block_time[k] = rng.below(1000) as f32 * 0.1;
            h.block_duration[k] = 1.0;
        }
    }
}
