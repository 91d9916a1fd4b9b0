//! The crate's one error type.

use std::path::{Path, PathBuf};

use crate::Format;

/// What went wrong while finding blocks.
///
/// Malformed data, unsupported features and resource limits are different variants, so that a
/// dataset tool can count them apart. Every variant that comes from the data carries the byte
/// offset in the file where the problem was seen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes break the format's rules.
    #[error("malformed {format} at byte {offset}: expected {expected}, found {found}")]
    Malformed {
        /// The format being read.
        format: Format,
        /// Byte offset in the file where the problem was seen.
        offset: u64,
        /// What the format requires there.
        expected: &'static str,
        /// What was there instead.
        found: String,
    },
    /// The data ends before a structure that it started is complete.
    #[error(
        "truncated {format} at byte {offset}: {what} needs {needed} bytes, {available} remain"
    )]
    Truncated {
        /// The format being read.
        format: Format,
        /// Byte offset where the incomplete structure starts.
        offset: u64,
        /// The structure that is cut short.
        what: &'static str,
        /// Bytes the structure needs.
        needed: u64,
        /// Bytes left in the input from `offset`.
        available: u64,
    },
    /// Valid data that uses a feature this crate does not read (progressive JPEG, Layer II…).
    #[error("unsupported {format} at byte {offset}: {what}")]
    Unsupported {
        /// The format being read.
        format: Format,
        /// Byte offset of the structure that declares the feature.
        offset: u64,
        /// The feature, named as the standard names it.
        what: String,
    },
    /// The input asks for more than the configured [`Limits`](crate::Limits) allow.
    #[error("limit exceeded at byte {offset}: {what} is {found}, the limit is {limit}")]
    Limit {
        /// Byte offset of the structure that asked for too much.
        offset: u64,
        /// Which limit (the name of the [`Limits`](crate::Limits) field).
        what: &'static str,
        /// The limit in force.
        limit: u64,
        /// What the input asked for.
        found: u64,
    },
    /// The first bytes match none of the supported formats.
    #[error(
        "unknown format{}: the first bytes {found} are not MP3, Ogg Opus or JPEG",
        of_file(path.as_deref())
    )]
    UnknownFormat {
        /// The first bytes, in hex.
        found: String,
        /// The file, when the bytes were read from one ([`detect_file`](crate::detect_file)).
        path: Option<PathBuf>,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl Error {
    /// The byte offset in the file where the problem was seen, where there is one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Error::Malformed { offset, .. }
            | Error::Truncated { offset, .. }
            | Error::Unsupported { offset, .. }
            | Error::Limit { offset, .. } => Some(*offset),
            Error::UnknownFormat { .. } | Error::Io { .. } => None,
        }
    }

    /// The coarse class of the error, for counting skips in a dataset.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Malformed { .. } | Error::Truncated { .. } | Error::UnknownFormat { .. } => {
                ErrorClass::Malformed
            }
            Error::Unsupported { .. } => ErrorClass::Unsupported,
            Error::Limit { .. } => ErrorClass::Limit,
            Error::Io { .. } => ErrorClass::Io,
        }
    }
}

/// " of PATH" for a message about a file's bytes, nothing when they came from memory.
fn of_file(path: Option<&Path>) -> String {
    path.map(|p| format!(" of {}", p.display()))
        .unwrap_or_default()
}

/// The coarse classes of [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Broken, truncated or unrecognised data.
    Malformed,
    /// A feature this crate does not read.
    Unsupported,
    /// A resource limit.
    Limit,
    /// The operating system could not read the file.
    Io,
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
