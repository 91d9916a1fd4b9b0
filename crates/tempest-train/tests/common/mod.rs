//! Helpers shared by tempest-train's integration tests.

use std::path::{Path, PathBuf};

/// A test's result.
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The repository's root (where `data/` is).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// An empty folder of the system's temporary folder for one test of this process.
pub fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tempest-train-{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
