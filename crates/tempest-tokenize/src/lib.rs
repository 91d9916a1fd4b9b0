//! From the blocks of compressed files to the tensors TEMPEST eats.
//!
//! A [`TokenizerConfig`] says how a file's blocks become a [`TokenizedItem`] (L bytes per
//! block at most, N blocks per item at most, which kinds are kept); [`collate`] pads items to
//! the largest of their batch as a [`HostBatch`], which [`HostBatch::to_tensors`] turns into
//! candle tensors (ids `[B, N, L]`, byte mask `[B, N, L]`, block mask `[B, N]`, labels `[B]`,
//! block positions `[B, N]`). A [`BucketSampler`] groups items of similar shape; a [`Loader`]
//! reads and tokenizes files on worker threads ahead of the model.
//!
//! ```
//! use std::path::Path;
//! use cff_blocks::Format;
//! use tempest_tokenize::{collate, tokenize, CropContext, TokenizerConfig};
//!
//! // Three MPEG-2 Layer III frames (16 kHz, 32 kbps, mono): 144 bytes each.
//! let mut frame = vec![0u8; 144];
//! frame[..4].copy_from_slice(&[0xFF, 0xF3, 0x48, 0xC4]);
//! let file = frame.repeat(3);
//!
//! let config = TokenizerConfig::for_format(Format::Mp3).with_max_block_bytes(100);
//! let item = tokenize(&file, Path::new("clip.mp3"), &config, CropContext::default())?;
//! assert_eq!(item.num_blocks(), 3);
//! assert_eq!(item.truncated_blocks, 3);
//!
//! let host = collate(&[&item], &[7], config.pad_id);
//! assert_eq!((host.batch, host.blocks, host.block_bytes), (1, 3, 100));
//! // With the default feature `tensors`: the same batch as candle tensors.
//! #[cfg(feature = "tensors")]
//! {
//!     let batch = host.to_tensors(&candle_core::Device::Cpu)?;
//!     assert_eq!(batch.ids.dims(), &[1, 3, 100]);
//! }
//! # Ok::<(), tempest_tokenize::Error>(())
//! ```
#![deny(missing_docs)]

mod batch;
mod config;
mod error;
pub mod fields;
mod item;
mod loader;
pub mod rng;
mod sampler;

#[cfg(feature = "tensors")]
pub use batch::Batch;
pub use batch::{collate, part_sizes, HostBatch};
pub use config::{BlockTokens, Crop, KindFilter, TokenizerConfig, PAD_ID, VOCAB_SIZE};
pub use error::{Error, Result};
pub use fields::{
    ENERGY_VOCAB_SIZE, FIELDS_VOCAB_SIZE, HALVES_VOCAB_SIZE, LINES_VOCAB_SIZE, PEAK_VOCAB_SIZE,
};
pub use item::{
    bit_windows, crop_indices, tokenize, tokenize_file, BlockPosition, CropContext, TokenizedItem,
};
pub use loader::{Entry, LoadedBatch, Loader, LoaderConfig, LoaderStats, Skipped};
pub use sampler::{
    choose_variants, padding_ratio, rank_piece, shard, BucketSampler, ItemShape, VariantChoice,
};
