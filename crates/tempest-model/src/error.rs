//! The crate's error type.

use std::path::PathBuf;

/// Errors of checkpoints and end-to-end classification. Tensor code returns
/// [`candle_core::Error`], wrapped here as [`Error::Candle`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor operation failed (shapes, dtypes, a missing or misshapen weight).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Tokenizing a file failed (unreadable, malformed, unsupported, over a limit).
    #[error(transparent)]
    Tokenize(#[from] tempest_tokenize::Error),
    /// Detecting a buffer's format failed.
    #[error(transparent)]
    Blocks(#[from] cff_blocks::Error),
    /// Reading or writing a checkpoint file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A weights file (safetensors) could not be read or written.
    #[error("{path}: {source}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: candle_core::Error,
    },
    /// A `config.json` or `classes.json` did not parse.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A device or precision that was asked for cannot be had (`--device`, `--dtype`).
    #[error("{0}")]
    Device(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
