//! TEMPEST in Rust: transformers that learn from the blocks of compressed files.
//!
//! This facade re-exports the workspace's crates so that one dependency brings them all:
//! - [`cff_blocks`]: exact block readers for MP3, Ogg Opus and JPEG.
#![deny(missing_docs)]

pub use cff_blocks;
