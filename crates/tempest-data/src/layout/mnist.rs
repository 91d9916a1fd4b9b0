//! MNIST: the IDX files of the training and test digits, gzipped or not.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cff_encode::image::{read_idx, Idx};
use cff_encode::{load, Limits};

use super::item::{Item, Source};
use crate::files::{file_name, sorted_entries};
use crate::{Error, Result};

/// Finds `<prefix>-idx?-ubyte`, `<prefix>.idx?-ubyte`, with or without `.gz`.
fn find_idx(input: &Path, prefix: &str) -> Result<Option<PathBuf>> {
    Ok(sorted_entries(input)?.into_iter().find(|p| {
        let n = file_name(p);
        p.is_file()
            && (n.starts_with(&format!("{prefix}-idx")) || n.starts_with(&format!("{prefix}.idx")))
    }))
}

pub(super) fn scan(input: &Path, limits: &Limits) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for (split, prefix) in [("train", "train"), ("test", "t10k")] {
        let images = find_idx(input, &format!("{prefix}-images"))?;
        let labels = find_idx(input, &format!("{prefix}-labels"))?;
        let (images_path, labels_path) = match (images, labels) {
            (Some(i), Some(l)) => (i, l),
            (None, None) => continue,
            (i, _) => {
                return Err(Error::malformed(
                    "mnist",
                    0,
                    format!(
                        "{prefix}: the {} file is missing",
                        if i.is_some() { "labels" } else { "images" }
                    ),
                ))
            }
        };
        let read = |p: &Path| -> Result<Idx> {
            read_idx(&load(p, limits)?, limits.max_file_bytes.saturating_mul(8))
                .map_err(|e| Error::malformed("idx", 0, format!("{}: {e}", p.display())))
        };
        let images = Arc::new(read(&images_path)?);
        let labels = read(&labels_path)?;
        if labels.dims.len() != 1 || labels.len() != images.len() {
            return Err(Error::malformed(
                "mnist",
                0,
                format!(
                    "{} labels {:?} do not match {} images",
                    labels_path.display(),
                    labels.dims,
                    images.len()
                ),
            ));
        }
        let width = images.len().saturating_sub(1).to_string().len().max(5);
        for (index, label) in labels.data.iter().enumerate() {
            let name = format!("{split}-{index:0width$}");
            items.push(Item {
                id: name.clone(),
                label: label.to_string(),
                split: split.to_string(),
                name,
                source: Source::Idx {
                    path: images_path.clone(),
                    images: Arc::clone(&images),
                    index,
                },
            });
        }
    }
    if items.is_empty() {
        return Err(Error::malformed(
            "mnist",
            0,
            format!(
                "no train-images/t10k-images IDX files in {}",
                input.display()
            ),
        ));
    }
    Ok(items)
}
