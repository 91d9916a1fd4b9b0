//! TEMPEST in Rust: transformers that learn from the blocks of compressed files.
//!
//! This facade re-exports the workspace's crates so that one dependency brings them all:
//! - [`cff_blocks`]: exact block readers for MP3, Ogg Opus and JPEG.
//! - [`cff_encode`]: encoders (JPEG; MP3 and Ogg Opus behind features `mp3` and `opus`).
//! - [`tempest_data`]: dataset layouts, preparation into compressed files, manifests,
//!   datasets and splits.
//! - [`tempest_tokenize`]: blocks to batched id tensors with masks and positions.
//! - [`tempest_model`]: the TEMPEST model in candle, its losses, checkpoints and costs.
//! - [`tempest_train`]: the training loop, evaluation, metrics and resumable checkpoints.
//! - [`tempest_baseline`]: the AST/ViT baseline (decoding, log-mel features, patches, a ViT)
//!   and the side-by-side comparison with TEMPEST.
#![deny(missing_docs)]

pub use cff_blocks;
pub use cff_encode;
pub use tempest_baseline;
pub use tempest_data;
pub use tempest_model;
pub use tempest_tokenize;
pub use tempest_train;
