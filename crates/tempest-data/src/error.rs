//! The crate's error type.

use std::path::{Path, PathBuf};

/// What went wrong while scanning, preparing or reading a dataset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A setting out of range or unknown (a variant, a layout, the splits).
    #[error("invalid setting {setting}: {reason}")]
    Setting {
        /// Which setting.
        setting: &'static str,
        /// Why.
        reason: String,
    },
    /// A prepared folder or a layout file that cannot be read as a dataset (a manifest's
    /// header or rows, an ESC-50 fold).
    #[error("{}: {what}", path.display())]
    Dataset {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// An input that could not be read or encoded, a layout file that is not what the layout
    /// says (`Malformed`), a variant this build cannot make (`Unsupported`), a size over a
    /// limit (`Limit`): cff-encode's error kinds, which this crate reuses.
    #[error(transparent)]
    Encode(#[from] cff_encode::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn malformed(format: &'static str, offset: u64, reason: impl Into<String>) -> Error {
        Error::Encode(cff_encode::Error::Malformed {
            format,
            offset,
            reason: reason.into(),
        })
    }

    pub(crate) fn unsupported(format: &'static str, what: impl Into<String>) -> Error {
        Error::Encode(cff_encode::Error::Unsupported {
            format,
            what: what.into(),
        })
    }

    pub(crate) fn setting(setting: &'static str, reason: impl Into<String>) -> Error {
        Error::Setting {
            setting,
            reason: reason.into(),
        }
    }

    /// A CSV error as the crate's: an I/O error keeps its kind, any other names the file and
    /// the line.
    pub(crate) fn csv(path: &Path) -> impl FnOnce(csv::Error) -> Error + '_ {
        move |e| {
            let what = e.to_string();
            match e.into_kind() {
                csv::ErrorKind::Io(source) => Error::Io {
                    path: path.to_path_buf(),
                    source,
                },
                _ => Error::dataset(path, what),
            }
        }
    }

    pub(crate) fn dataset(path: &Path, what: impl Into<String>) -> Error {
        Error::Dataset {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
