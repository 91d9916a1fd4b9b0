//! The items a layout's scanners find: a raw input ([`Item`] with its [`Source`]) or a
//! compressed file ([`FileRow`]), and the file rules every layout shares.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cff_encode::image::Idx;

use crate::files::{file_name, sorted_entries, stem};
use crate::{Result, Variant};

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
pub(super) fn safe_component(s: &str) -> String {
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
pub(super) fn media_source(p: &Path) -> Option<Source> {
    let ext = p.extension()?.to_string_lossy().to_ascii_lowercase();
    match ext.as_str() {
        "wav" | "wave" => Some(Source::Wav(p.to_path_buf())),
        "png" => Some(Source::Png(p.to_path_buf())),
        _ => None,
    }
}

/// How deep [`class_files`] looks below a class folder when it recurses: deeper folders are
/// left unread (a resource limit, and an end to symbolic-link cycles that slip past the
/// link check).
pub(super) const MAX_CLASS_DEPTH: usize = 16;

/// The files of each class folder under `root` that `keep` accepts, as `(class, name, file)`
/// in sorted order, `name` being the file's stem, or with `recursive` and a file in a
/// sub-folder its path below the class folder without the extension (`sub/stem`; folders
/// below [`MAX_CLASS_DEPTH`] and symbolic links to folders are not followed). Hidden folders
/// (`.x`) are never classes or read; folders starting with `_` are not classes where
/// `skip_underscore` is set (Speech Commands' `_background_noise_`).
pub(super) fn class_files(
    root: &Path,
    skip_underscore: bool,
    recursive: bool,
    keep: impl Fn(&Path) -> bool,
) -> Result<Vec<(String, String, PathBuf)>> {
    let mut out = Vec::new();
    for class in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        let label = file_name(&class);
        if label.starts_with('.') || (skip_underscore && label.starts_with('_')) {
            continue;
        }
        let depth = if recursive { MAX_CLASS_DEPTH } else { 0 };
        collect(&class, "", depth, &keep, &mut |name, file| {
            out.push((label.clone(), name, file))
        })?;
    }
    Ok(out)
}

/// The files of `dir` that `keep` accepts, as `(prefix + stem, file)`, then those of its
/// sub-folders down to `depth` more levels.
fn collect(
    dir: &Path,
    prefix: &str,
    depth: usize,
    keep: &impl Fn(&Path) -> bool,
    found: &mut impl FnMut(String, PathBuf),
) -> Result<()> {
    let entries = sorted_entries(dir)?;
    for file in &entries {
        if file.is_file() && keep(file) {
            found(format!("{prefix}{}", stem(file)), file.clone());
        }
    }
    if depth == 0 {
        return Ok(());
    }
    for sub in &entries {
        let name = file_name(sub);
        let real_dir = std::fs::symlink_metadata(sub).is_ok_and(|m| m.is_dir());
        if real_dir && !name.starts_with('.') {
            collect(sub, &format!("{prefix}{name}/"), depth - 1, keep, found)?;
        }
    }
    Ok(())
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
