//! Where an example reads its dataset: `--data PREPARED_DIR`, or `--layout L --input DIR`
//! (shared by `train`, `compare` and `eval`; the command names the group "source").

use std::path::PathBuf;

use clap::Args;
use tempest::tempest_data::{DataSource, Layout};

/// `--data`, or `--layout` with `--input`.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// A prepared dataset (a folder with manifest.csv)
    #[arg(long, value_name = "PREPARED_DIR", conflicts_with_all = ["layout", "input"])]
    pub data: Option<PathBuf>,
    /// Read a raw layout: folder, esc50, speechcommands or mnist (with --input)
    #[arg(long, value_name = "L", requires = "input")]
    pub layout: Option<Layout>,
    /// The folder of the raw layout (with --layout)
    #[arg(long, value_name = "DIR", requires = "layout")]
    pub input: Option<PathBuf>,
}

impl DataArgs {
    /// The source these flags name; `None` when they name none (clap refuses the other
    /// combinations).
    pub fn source(self) -> Option<DataSource> {
        DataSource::from_parts(self.data, self.layout, self.input)
    }
}
