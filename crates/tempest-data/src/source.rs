//! Where a command reads its dataset: [`DataSource`], the one choice `train`, `eval` and
//! `compare` share between a prepared folder and a raw layout.

use std::path::{Path, PathBuf};

use crate::prepare::Summary;
use crate::{Dataset, Layout, Result, Variant};

/// A prepared folder, or a raw layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// A folder written by [`prepare`](crate::prepare()): its `manifest.csv` lists the files.
    Prepared(PathBuf),
    /// A dataset in one of the [`Layout`]s: its files used as they are where they are already
    /// compressed, else prepared (see [`DataSource::open`]).
    Raw {
        /// How its files are arranged.
        layout: Layout,
        /// Its folder.
        input: PathBuf,
    },
}

impl DataSource {
    /// The source a command line names: a prepared folder, or a layout with its folder; `None`
    /// for any other combination (both, or neither).
    pub fn from_parts(
        prepared: Option<PathBuf>,
        layout: Option<Layout>,
        input: Option<PathBuf>,
    ) -> Option<Self> {
        match (prepared, layout, input) {
            (Some(dir), None, None) => Some(DataSource::Prepared(dir)),
            (None, Some(layout), Some(input)) => Some(DataSource::Raw { layout, input }),
            _ => None,
        }
    }

    /// The dataset, with the raw inputs of a layout prepared in `variants` into `cache` first
    /// (see [`Dataset::open_layout`]); the preparation's summary where one ran.
    pub fn open(
        &self,
        cache: &Path,
        variants: &[Variant],
        progress: bool,
    ) -> Result<(Dataset, Option<Summary>)> {
        match self {
            DataSource::Prepared(dir) => Ok((Dataset::from_manifest(dir)?, None)),
            DataSource::Raw { layout, input } => {
                Dataset::open_layout(*layout, input, cache, variants, progress)
            }
        }
    }

    /// The dataset without preparing anything: a layout must hold compressed files
    /// ([`Dataset::from_compressed`]).
    pub fn open_compressed(&self) -> Result<Dataset> {
        match self {
            DataSource::Prepared(dir) => Dataset::from_manifest(dir),
            DataSource::Raw { layout, input } => Dataset::from_compressed(*layout, input),
        }
    }
}
