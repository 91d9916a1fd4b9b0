//! The `folder` layout: one folder per class, optionally under split folders; a class
//! folder's files are read at any depth below it (up to `MAX_CLASS_DEPTH` folders).

use std::path::{Path, PathBuf};

use super::item::{class_files, compressed_variant, media_source, safe_component, FileRow, Item};
use crate::files::{file_name, sorted_entries};
use crate::Error;
use crate::Result;

/// Folder names that make a `folder` layout a split layout (`train/<class>/…`), compared
/// case-insensitively.
pub const SPLIT_DIRS: [&str; 7] = [
    "train",
    "training",
    "val",
    "valid",
    "validation",
    "test",
    "testing",
];

/// Whether `dirs`, the sub-folders of a `folder` layout, are split folders (all of them named
/// as in [`SPLIT_DIRS`]) rather than class folders.
pub fn is_split_layout(dirs: &[PathBuf]) -> bool {
    !dirs.is_empty()
        && dirs.iter().all(|d| {
            let name = d
                .file_name()
                .map(|n| n.to_string_lossy().to_ascii_lowercase());
            name.is_some_and(|n| SPLIT_DIRS.contains(&n.as_str()))
        })
}

/// One file of the layout with its split, class and id (`split/class/stem` under split
/// folders, `class/stem` without).
struct Found {
    id: String,
    /// The file's stem, or its path below the class folder without the extension.
    name: String,
    split: String,
    label: String,
    file: PathBuf,
}

/// The files `keep` accepts, split by split. Raw inputs take every non-hidden class folder;
/// compressed files also skip `_`-folders (`skip_underscore`), as a Speech Commands tree read
/// as a plain folder holds `_background_noise_`.
fn files(input: &Path, skip_underscore: bool, keep: impl Fn(&Path) -> bool) -> Result<Vec<Found>> {
    let dirs: Vec<PathBuf> = sorted_entries(input)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    let split_layout = is_split_layout(&dirs);
    let roots: Vec<(String, PathBuf)> = if split_layout {
        dirs.into_iter().map(|d| (file_name(&d), d)).collect()
    } else {
        vec![("all".to_string(), input.to_path_buf())]
    };
    let mut out = Vec::new();
    for (split, root) in roots {
        for (label, name, file) in class_files(&root, skip_underscore, true, &keep)? {
            let id = if split_layout {
                format!("{split}/{label}/{name}")
            } else {
                format!("{label}/{name}")
            };
            out.push(Found {
                id,
                name,
                split: split.clone(),
                label,
                file,
            });
        }
    }
    Ok(out)
}

pub(super) fn scan(input: &Path) -> Result<Vec<Item>> {
    let found = files(input, false, |f| media_source(f).is_some())?;
    // Files in sub-folders of a class are named by their path (`sub/x` → `sub_x`); two that
    // would write the same output file are refused rather than one lost.
    let mut outputs = std::collections::HashMap::new();
    for f in &found {
        let key = (f.split.clone(), f.label.clone(), safe_component(&f.name));
        if let Some(other) = outputs.insert(key, &f.file) {
            return Err(Error::setting(
                "input",
                format!(
                    "{} and {} would be prepared into the same file (rename one)",
                    other.display(),
                    f.file.display()
                ),
            ));
        }
    }
    Ok(found
        .into_iter()
        .filter_map(|f| {
            Some(Item {
                name: f.name,
                source: media_source(&f.file)?,
                id: f.id,
                label: f.label,
                split: f.split,
            })
        })
        .collect())
}

pub(super) fn scan_compressed(input: &Path) -> Result<Vec<FileRow>> {
    Ok(files(input, true, |f| compressed_variant(f).is_some())?
        .into_iter()
        .map(|f| {
            let variant = compressed_variant(&f.file).unwrap_or_default().to_string();
            (f.id, f.label, f.split, variant, f.file)
        })
        .collect())
}
