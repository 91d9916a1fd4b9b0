//! TEMPEST in Rust: transformers that learn from the blocks of compressed files.
//!
//! This facade re-exports the workspace's crates so that one dependency brings them all:
//! - [`cff_blocks`]: exact block readers for MP3, Ogg Opus and JPEG.
//! - [`cff_encode`]: encoders (JPEG; MP3 and Ogg Opus behind features `mp3` and `opus`) and
//!   dataset preparation.
#![deny(missing_docs)]

pub use cff_blocks;
pub use cff_encode;
