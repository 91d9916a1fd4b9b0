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

/// The shipped spoken words (`data/spoken-words`, Speech Commands layout) with their standard
/// split, the training split cut to its first `train_items` items.
#[allow(dead_code)] // not every test file reads the words
pub fn spoken_words(
    train_items: usize,
) -> Result<(tempest_train::Dataset, tempest_train::SplitPlan)> {
    let mut dataset = tempest_train::Dataset::from_compressed(
        tempest_data::Layout::SpeechCommands,
        &repo().join("data/spoken-words"),
    )?;
    let plan = tempest_train::SplitPlan::standard(&dataset)?;
    dataset.truncate_splits(&plan.train, train_items);
    Ok((dataset, plan))
}
