//! Speech Commands: one folder per word; `validation_list.txt` and `testing_list.txt` name the
//! validation and test files (`word/speaker_nohash_n.wav`); every other file trains.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use super::item::{class_files, compressed_variant, media_source, FileRow, Item, Source};
use crate::files::stem;
use crate::{Error, Result};

/// The entries of a list (`word/file.wav`, one per line), by stem (`word/file`), so that the
/// lists, which name `.wav` files, match the compressed files too. A missing list is empty.
fn read_list(path: &Path) -> Result<HashSet<String>> {
    if !path.exists() {
        return Ok(HashSet::new());
    }
    let text = fs::read_to_string(path).map_err(Error::io(path))?;
    Ok(text
        .lines()
        .map(|l| l.trim().replace('\\', "/"))
        .filter(|l| !l.is_empty())
        .map(|l| {
            let p = Path::new(&l);
            let parent = p.parent().map(|d| d.to_string_lossy().into_owned());
            match parent.filter(|d| !d.is_empty()) {
                Some(d) => format!("{d}/{}", stem(p)),
                None => stem(p),
            }
        })
        .collect())
}

/// Every file `keep` accepts with its id (`word/stem`), word and split. The official lists
/// are disjoint; a file on both counts as validation.
fn files(
    input: &Path,
    keep: impl Fn(&Path) -> bool,
) -> Result<Vec<(String, String, &'static str, std::path::PathBuf)>> {
    let validation = read_list(&input.join("validation_list.txt"))?;
    let testing = read_list(&input.join("testing_list.txt"))?;
    // `_background_noise_` holds long noise recordings, not examples of a word.
    let mut out = Vec::new();
    for (word, name, file) in class_files(input, true, false, keep)? {
        let id = format!("{word}/{name}");
        let split = if validation.contains(&id) {
            "validation"
        } else if testing.contains(&id) {
            "test"
        } else {
            "train"
        };
        out.push((id, word, split, file));
    }
    Ok(out)
}

pub(super) fn scan(input: &Path) -> Result<Vec<Item>> {
    let wav = |f: &Path| matches!(media_source(f), Some(Source::Wav(_)));
    Ok(files(input, wav)?
        .into_iter()
        .map(|(id, label, split, file)| Item {
            id,
            label,
            split: split.to_string(),
            name: stem(&file),
            source: Source::Wav(file),
        })
        .collect())
}

pub(super) fn scan_compressed(input: &Path) -> Result<Vec<FileRow>> {
    Ok(files(input, |f| compressed_variant(f).is_some())?
        .into_iter()
        .map(|(id, label, split, file)| {
            let variant = compressed_variant(&file).unwrap_or_default().to_string();
            (id, label, split.to_string(), variant, file)
        })
        .collect())
}
