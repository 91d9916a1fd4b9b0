//! The errors of tempest-train.

use std::path::PathBuf;

/// What can go wrong while preparing, training or evaluating.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A dataset description (manifest, split list, layout) is wrong.
    #[error("{path}: {what}")]
    Dataset {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong, with the line where there is one.
        what: String,
    },
    /// A setting is out of range or inconsistent.
    #[error("setting {name}: {what}")]
    Setting {
        /// The setting.
        name: &'static str,
        /// What is wrong.
        what: String,
    },
    /// A JSON file could not be read or written.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A dataset that could not be scanned, prepared or read.
    #[error(transparent)]
    Data(#[from] tempest_data::Error),
    /// Tokenization failed.
    #[error(transparent)]
    Tokenize(#[from] tempest_tokenize::Error),
    /// The model or a checkpoint failed.
    #[error(transparent)]
    Model(#[from] tempest_model::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// A plot could not be drawn or written (the file and the cause).
    #[error("plot {0}")]
    Plot(String),
    /// A split has no item that could be read.
    #[error("split {split}: no item could be read ({skipped} skipped)")]
    Empty {
        /// The split.
        split: String,
        /// Files skipped.
        skipped: u64,
    },
}

impl Error {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn dataset(path: &std::path::Path, what: impl Into<String>) -> Error {
        Error::Dataset {
            path: path.to_path_buf(),
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
