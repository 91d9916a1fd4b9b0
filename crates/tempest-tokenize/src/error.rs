//! The crate's error type.

use std::path::PathBuf;

/// What went wrong while tokenizing or batching.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The block reader failed on a file.
    #[error("{path}: {source}")]
    Blocks {
        /// The file (empty for in-memory input).
        path: PathBuf,
        /// The reader's error, with its byte offset.
        source: cff_blocks::Error,
    },
    /// A file held no block of the kinds the tokenizer keeps.
    #[error("{path}: no blocks of the kinds kept")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Building a tensor failed.
    #[cfg(feature = "tensors")]
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    /// A configuration or argument is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// A short, stable reason for counting skipped files: `malformed`, `unsupported`, `limit`,
    /// `io`, `empty`, `other`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Blocks { source, .. } => match source.class() {
                cff_blocks::ErrorClass::Malformed => "malformed",
                cff_blocks::ErrorClass::Unsupported => "unsupported",
                cff_blocks::ErrorClass::Limit => "limit",
                cff_blocks::ErrorClass::Io => "io",
                _ => "other",
            },
            Error::Empty { .. } => "empty",
            #[cfg(feature = "tensors")]
            Error::Tensor(_) => "other",
            Error::Config(_) => "other",
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
