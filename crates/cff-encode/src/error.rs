//! The crate's error type.

use std::path::PathBuf;

/// What went wrong while reading an input or encoding an output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An input is not what its format says it should be.
    #[error("malformed {format} at byte {offset}: {reason}")]
    Malformed {
        /// The input format (`wav`, `idx`, `png`, `esc50.csv`, …).
        format: &'static str,
        /// Byte offset of the problem in the input, where known (0 otherwise).
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An input uses a feature this crate does not handle (64-bit float WAV, 16-bit JPEG …).
    #[error("unsupported {format}: {what}")]
    Unsupported {
        /// The input or output format.
        format: &'static str,
        /// What is not supported.
        what: String,
    },
    /// An input exceeds a resource limit.
    #[error("{what}: {found} exceeds the limit of {limit}")]
    Limit {
        /// Which limit.
        what: &'static str,
        /// The limit.
        limit: u64,
        /// What the input asked for.
        found: u64,
    },
    /// A setting is out of range (a bitrate the codec does not have, a quality of 0 …).
    #[error("invalid setting {setting}: {reason}")]
    Setting {
        /// The setting's name.
        setting: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// The encoder library reported an error.
    #[error("{codec} encoder: {message}")]
    Encoder {
        /// `mp3`, `opus`, `jpeg` or `resampler`.
        codec: &'static str,
        /// The library's message.
        message: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn malformed(format: &'static str, offset: u64, reason: impl Into<String>) -> Error {
        Error::Malformed {
            format,
            offset,
            reason: reason.into(),
        }
    }

    pub(crate) fn setting(setting: &'static str, reason: impl Into<String>) -> Error {
        Error::Setting {
            setting,
            reason: reason.into(),
        }
    }

    pub(crate) fn encoder(codec: &'static str, message: impl ToString) -> Error {
        Error::Encoder {
            codec,
            message: message.to_string(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
