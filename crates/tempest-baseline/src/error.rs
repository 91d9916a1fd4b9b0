//! The errors of tempest-baseline.

use std::path::PathBuf;

/// What can go wrong while decoding, computing features or running the baseline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file is not what its format says: the decoder's complaint, with the file and,
    /// where the decoder reports one, the byte offset.
    #[error("{path}: malformed {format}{}: {what}", offset.map(|o| format!(" at byte {o}")).unwrap_or_default())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// `mp3`, `ogg-opus` or `jpeg`.
        format: &'static str,
        /// Byte offset of the problem, where known.
        offset: Option<u64>,
        /// What is wrong.
        what: String,
    },
    /// A format or feature this build does not decode (Ogg Opus without the `opus` feature).
    #[error("{path}: unsupported: {what}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported.
        what: String,
    },
    /// A limit was exceeded (samples, pixels).
    #[error("{path}: limit: {what}")]
    Limit {
        /// The file.
        path: PathBuf,
        /// Which limit.
        what: String,
    },
    /// A setting is out of range.
    #[error("setting {name}: {what}")]
    Setting {
        /// The setting.
        name: &'static str,
        /// What is wrong.
        what: String,
    },
    /// Block reading (format detection, Ogg pages) failed.
    #[error(transparent)]
    Blocks(#[from] cff_blocks::Error),
    /// Resampling failed.
    #[error(transparent)]
    Encode(#[from] cff_encode::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// Training or evaluation failed.
    #[error(transparent)]
    Train(#[from] tempest_train::Error),
    /// Tokenization failed.
    #[error(transparent)]
    Tokenize(#[from] tempest_tokenize::Error),
}

impl Error {
    pub(crate) fn malformed(
        path: &std::path::Path,
        format: &'static str,
        offset: Option<u64>,
        what: impl Into<String>,
    ) -> Error {
        Error::Malformed {
            path: path.to_path_buf(),
            format,
            offset,
            what: what.into(),
        }
    }

    pub(crate) fn setting(name: &'static str, what: impl Into<String>) -> Error {
        Error::Setting {
            name,
            what: what.into(),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
