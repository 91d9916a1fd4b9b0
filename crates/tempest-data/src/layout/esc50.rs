//! ESC-50: `meta/esc50.csv` gives each clip's file, fold (the split, `1` to `5`) and
//! category (the label); the clips lie in `audio/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::item::{compressed_variant, FileRow, Item, Source};
use crate::files::{sorted_entries, stem};
use crate::{Error, Result};

/// One row of `meta/esc50.csv`.
struct Clip {
    file: String,
    fold: String,
    category: String,
}

/// The clips of `meta/esc50.csv`, found by the header's column names (the file has more
/// columns than these three).
fn read_meta(input: &Path) -> Result<Vec<Clip>> {
    let path = input.join("meta").join("esc50.csv");
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_path(&path)
        .map_err(Error::csv(&path))?;
    let header = reader.headers().map_err(Error::csv(&path))?.clone();
    let col = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            Error::malformed("esc50.csv", 0, format!("no column {name:?} in the header"))
        })
    };
    let (c_file, c_fold, c_cat) = (col("filename")?, col("fold")?, col("category")?);
    let mut clips = Vec::new();
    for record in reader.records() {
        let record = record.map_err(Error::csv(&path))?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |c: usize| {
            record.get(c).map(str::to_string).ok_or_else(|| {
                Error::malformed(
                    "esc50.csv",
                    0,
                    format!("line {line} has {} fields", record.len()),
                )
            })
        };
        let clip = Clip {
            file: field(c_file)?,
            fold: field(c_fold)?,
            category: field(c_cat)?,
        };
        if !matches!(clip.fold.as_str(), "1" | "2" | "3" | "4" | "5") {
            return Err(Error::dataset(
                &path,
                format!("line {line}: fold {:?} is not 1 to 5", clip.fold),
            ));
        }
        clips.push(clip);
    }
    Ok(clips)
}

/// The WAV clips: id the file's stem.
pub(super) fn scan(input: &Path) -> Result<Vec<Item>> {
    Ok(read_meta(input)?
        .into_iter()
        .map(|c| {
            let name = stem(Path::new(&c.file));
            Item {
                id: name.clone(),
                label: c.category,
                split: c.fold,
                name,
                source: Source::Wav(input.join("audio").join(&c.file)),
            }
        })
        .collect())
}

/// The compressed clips in `audio/`, matched to the CSV's `.wav` names by stem; id
/// `category/stem`. Clips of the CSV without a compressed file are left out.
pub(super) fn scan_compressed(input: &Path) -> Result<Vec<FileRow>> {
    let clips = read_meta(input)?;
    let audio = input.join("audio");
    let mut by_stem: BTreeMap<String, PathBuf> = BTreeMap::new();
    if audio.is_dir() {
        for f in sorted_entries(&audio)? {
            if compressed_variant(&f).is_some() {
                by_stem.entry(stem(&f)).or_insert(f);
            }
        }
    }
    let mut rows = Vec::new();
    for c in clips {
        let stem = stem(Path::new(&c.file));
        if let Some(path) = by_stem.get(&stem) {
            let variant = compressed_variant(path).unwrap_or_default().to_string();
            rows.push((
                format!("{}/{stem}", c.category),
                c.category,
                c.fold,
                variant,
                path.clone(),
            ));
        }
    }
    Ok(rows)
}
