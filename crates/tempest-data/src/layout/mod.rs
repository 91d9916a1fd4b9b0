//! How a dataset's files are arranged ([`Layout`]) and the scanners that list its items: of
//! raw inputs (WAV, PNG, IDX) for [`prepare`](crate::prepare()), or of files already
//! compressed (MP3, Ogg Opus, JPEG) for [`Dataset::from_compressed`](crate::Dataset::from_compressed).
//! Each layout's rules (which folders are classes, which files a split) live in its own
//! module, so the two scans of a layout cannot drift apart.

mod esc50;
mod folder;
mod mnist;
mod speech_commands;

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cff_encode::image::Idx;
use cff_encode::Limits;

use crate::{Error, Result, Variant};

pub use folder::{is_split_layout, SPLIT_DIRS};

/// How a dataset's files are arranged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Layout {
    /// One subfolder per class holding `.wav` or `.png` files; optionally one level of split
    /// folders above them (`train/`, `val/`, `validation/`, `test/`). Without split folders
    /// every item's split is `all`.
    Folder,
    /// ESC-50: `audio/*.wav` and `meta/esc50.csv` (`filename`, `fold`, `category`); the
    /// label is the category and the split the fold (`1` to `5`).
    Esc50,
    /// Speech Commands: one folder per word, `validation_list.txt` and `testing_list.txt`
    /// naming `word/file.wav`; the rest is `train`. Folders whose name starts with `_`
    /// (`_background_noise_`) are left out.
    SpeechCommands,
    /// MNIST: the IDX files `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
    /// `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each gzipped (`.gz`) or not;
    /// splits `train` and `test`.
    Mnist,
}

impl FromStr for Layout {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "folder" => Ok(Layout::Folder),
            "esc50" | "esc-50" => Ok(Layout::Esc50),
            "speechcommands" | "speech-commands" => Ok(Layout::SpeechCommands),
            "mnist" => Ok(Layout::Mnist),
            other => Err(Error::setting(
                "layout",
                format!("{other:?} (expected folder, esc50, speechcommands or mnist)"),
            )),
        }
    }
}

/// Where an item's media lies.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Source {
    /// A WAV file.
    Wav(PathBuf),
    /// A PNG file.
    Png(PathBuf),
    /// Image `index` of an IDX array read from `path`.
    Idx {
        /// The IDX file, for messages.
        path: PathBuf,
        /// The array, shared by all its items.
        images: Arc<Idx>,
        /// The item's index in it.
        index: usize,
    },
}

impl Source {
    /// Whether the item is audio.
    pub fn is_audio(&self) -> bool {
        matches!(self, Source::Wav(_))
    }

    /// The input file, for messages (`file.idx#123` for an IDX item).
    pub fn describe(&self) -> String {
        match self {
            Source::Wav(p) | Source::Png(p) => p.display().to_string(),
            Source::Idx { path, index, .. } => format!("{}#{index}", path.display()),
        }
    }
}

/// One item of a raw dataset.
#[derive(Debug, Clone)]
pub struct Item {
    /// Unique and stable within the dataset (`dog/1-100032-A-0`, `train-00042`).
    pub id: String,
    /// The class.
    pub label: String,
    /// `train`, `validation`, `test`, an ESC-50 fold, or `all`.
    pub split: String,
    /// The output file's name without extension.
    pub name: String,
    /// Where the media lies.
    pub source: Source,
}

impl Item {
    /// The output path of this item's `variant`, relative to the output directory.
    pub fn output_path(&self, variant: Variant) -> PathBuf {
        Path::new(&variant.dir_name())
            .join(safe_component(&self.split))
            .join(safe_component(&self.label))
            .join(format!(
                "{}.{}",
                safe_component(&self.name),
                variant.extension()
            ))
    }
}

/// A path component that cannot climb out of or hide in its folder.
fn safe_component(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect();
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, '_');
    }
    out
}

/// One compressed file found in a raw layout: `(id, label, split, variant, path)`, the row
/// [`Dataset::from_rows`](crate::Dataset::from_rows) takes.
pub type FileRow = (String, String, String, String, PathBuf);

/// Scans a dataset of raw inputs into items, sorted by id. Files that belong to no item
/// (other extensions) are not reported; a missing required file (a layout's CSV or IDX
/// files) is an error.
pub fn scan(layout: Layout, input: &Path, limits: &Limits) -> Result<Vec<Item>> {
    let mut items = match layout {
        Layout::Folder => folder::scan(input)?,
        Layout::Esc50 => esc50::scan(input)?,
        Layout::SpeechCommands => speech_commands::scan(input)?,
        Layout::Mnist => mnist::scan(input, limits)?,
    };
    items.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(w) = items.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(Error::malformed(
            "dataset",
            0,
            format!("id {:?} appears twice", w[0].id),
        ));
    }
    Ok(items)
}

/// Scans a layout whose media files are already compressed (`.mp3`, `.opus`/`.ogg`,
/// `.jpg`/`.jpeg`) into rows whose single variant is named after the codec (`mp3`, `opus`,
/// `jpeg`). MNIST holds no such files.
pub fn scan_compressed(layout: Layout, input: &Path) -> Result<Vec<FileRow>> {
    match layout {
        Layout::Folder => folder::scan_compressed(input),
        Layout::SpeechCommands => speech_commands::scan_compressed(input),
        Layout::Esc50 => esc50::scan_compressed(input),
        Layout::Mnist => Err(Error::setting(
            "layout",
            "only folder, speechcommands and esc50 layouts can hold compressed files",
        )),
    }
}

/// The variant name of a file used as it is, from its extension.
pub(crate) fn compressed_variant(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_string_lossy().to_ascii_lowercase();
    match ext.as_str() {
        "mp3" => Some("mp3"),
        "opus" | "ogg" => Some("opus"),
        "jpg" | "jpeg" => Some("jpeg"),
        _ => None,
    }
}

/// The media source of a raw input file, from its extension.
fn media_source(p: &Path) -> Option<Source> {
    let ext = p.extension()?.to_string_lossy().to_ascii_lowercase();
    match ext.as_str() {
        "wav" | "wave" => Some(Source::Wav(p.to_path_buf())),
        "png" => Some(Source::Png(p.to_path_buf())),
        _ => None,
    }
}

pub(crate) fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .map(|e| e.map(|e| e.path()).map_err(Error::io(dir)))
        .collect::<Result<_>>()?;
    v.sort();
    Ok(v)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The files of each class folder under `root` that `keep` accepts, as `(class, file)` in
/// sorted order. Hidden folders (`.x`) are never classes; folders starting with `_` are not
/// either where `skip_underscore` is set (Speech Commands' `_background_noise_`).
fn class_files(
    root: &Path,
    skip_underscore: bool,
    keep: impl Fn(&Path) -> bool,
) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for class in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        let label = file_name(&class);
        if label.starts_with('.') || (skip_underscore && label.starts_with('_')) {
            continue;
        }
        for file in sorted_entries(&class)? {
            if file.is_file() && keep(&file) {
                out.push((label.clone(), file));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_stay_inside_their_folder() {
        let item = Item {
            id: "x".into(),
            label: "../up".into(),
            split: ".".into(),
            name: "a/b".into(),
            source: Source::Wav(PathBuf::from("x.wav")),
        };
        let p = item.output_path(Variant::Mp3(20));
        assert_eq!(p, Path::new("mp3-20/_./_.._up/a_b.mp3"));
    }
}
