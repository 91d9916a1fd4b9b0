//! How a dataset's files are arranged ([`Layout`]) and the scanners that list its items: of
//! raw inputs (WAV, PNG, IDX) for [`prepare`](crate::prepare()), or of files already
//! compressed (MP3, Ogg Opus, JPEG) for [`Dataset::from_compressed`](crate::Dataset::from_compressed).
//! Each layout's rules (which folders are classes, which files a split) live in its own
//! module, so the two scans of a layout cannot drift apart.

mod esc50;
mod folder;
mod item;
mod mnist;
mod speech_commands;

use std::path::Path;
use std::str::FromStr;

use cff_encode::Limits;

use crate::{Error, Result};

pub use folder::{is_split_layout, SPLIT_DIRS};
pub use item::{FileRow, Item, Source};

/// How a dataset's files are arranged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Layout {
    /// One subfolder per class holding `.wav` or `.png` files (or, read as they are, `.mp3`,
    /// `.opus`/`.ogg`, `.jpg`), directly or in sub-folders of it at any depth (ids
    /// `class/sub/stem`); optionally one level of split folders above them (`train/`, `val/`,
    /// `validation/`, `test/`). Without split folders every item's split is `all`.
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
