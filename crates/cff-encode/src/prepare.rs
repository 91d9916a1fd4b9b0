//! Dataset preparation: one compressed file per item and variant, and a `manifest.csv`.
//!
//! A dataset in one of the known [`Layout`]s is scanned into [`Item`]s (id, label, split,
//! where the input lies); every item is encoded once per [`Variant`] (`mp3:20`, `opus:24`,
//! `jpeg:75` …), in parallel over items with rayon. Outputs are written to a temporary name and
//! renamed, so a file under its final name is complete: a rerun skips it. A corrupt or
//! unsupported input is reported with its path and reason and counted, and the run goes on.
//!
//! Output paths: `<variant dir>/<split>/<label>/<name>.<ext>`, with the variant dir `mp3-20`
//! for `mp3:20`. The manifest has exactly the columns `id,label,split,variant,path,bytes,
//! duration` (duration in seconds of the input clip, empty for images; path relative to the
//! output directory), one row per written or already present output, sorted by id, then in
//! the order the variants were given.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::audio::{read_wav, wav_info, Audio};
use crate::image::{read_idx, read_png, Idx, Image};
use crate::jpeg::{encode_jpeg, JpegOptions};
use crate::{load, Error, Limits, Result};

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

/// One compressed version of an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Variant {
    /// MP3 at this many kbps: CBR where that is a legal bitrate at the sample rate, bounded
    /// ABR otherwise (`mp3::Mp3Options::for_kbps`). Needs feature `mp3`.
    Mp3(u32),
    /// Ogg Opus at this many kbps, 20 ms frames, constrained VBR. Needs feature `opus`.
    Opus(u32),
    /// Baseline JPEG at this quality (1 to 100), 4:2:0 for colour.
    Jpeg(u8),
    /// Baseline JPEG at this quality of the image first moved by `dx` pixels right and `dy`
    /// down (negative: left, up; the uncovered edge repeats the nearest edge pixel), then
    /// enlarged `scale` times (bilinear), with a restart marker after every `restart` MCUs
    /// (0: none). Spelled `jpeg:75x2r1@1/-1` (`x1`, `r0` and `@0/0` may be left out).
    /// Moving is an augmentation that changes every MCU's bytes while the label stays;
    /// enlarging makes each 8×8 MCU cover fewer source pixels, so more, simpler MCUs
    /// describe the image (a 28×28 digit has 16 MCUs, 49 at `x2`); a restart marker resets
    /// the DC prediction (T.81 F.1.1.5.1 and F.1.2.1.3), so at `r1` every MCU codes its own
    /// average brightness instead of the difference to the previous MCU's. Build it with
    /// [`Variant::jpeg`] and [`Variant::with_restart`], which give `Jpeg(quality)` for no
    /// move, scale 1 and no restarts.
    JpegAt {
        /// 1 to 100.
        quality: u8,
        /// 1 to [`MAX_SCALE`].
        scale: u8,
        /// Source pixels to the right (−[`MAX_SHIFT`] to [`MAX_SHIFT`]).
        dx: i8,
        /// Source pixels down.
        dy: i8,
        /// MCUs per restart interval (T.81 B.2.4.4, DRI); 0: no restart markers.
        restart: u16,
        /// 0: none; k ≥ 1: the image is first warped by the k-th random affine distortion
        /// ([`crate::image::Distortion::draw`]: rotation, scale, shear and move, drawn from k
        /// and the image's pixels, so each image gets its own k-th version). Spelled `~k` at
        /// the end: `jpeg:75x2r1~3`.
        distort: u16,
    },
}

/// The largest move of [`Variant::JpegAt`] in either direction, in source pixels.
pub const MAX_SHIFT: i8 = 8;

/// The largest enlargement of [`Variant::JpegAt`].
pub const MAX_SCALE: u8 = 8;

impl Variant {
    /// Whether the variant encodes audio (else images).
    pub fn is_audio(self) -> bool {
        matches!(self, Variant::Mp3(_) | Variant::Opus(_))
    }

    /// A JPEG variant: `Jpeg(quality)` when `scale` is 1 and there is no move, else
    /// [`Variant::JpegAt`]. Values out of range are an error.
    pub fn jpeg(quality: u8, scale: u8, dx: i8, dy: i8) -> Result<Variant> {
        if !(1..=100).contains(&quality) {
            return Err(Error::setting(
                "jpeg quality",
                format!("{quality} (1 to 100)"),
            ));
        }
        if !(1..=MAX_SCALE).contains(&scale) {
            return Err(Error::setting(
                "jpeg scale",
                format!("{scale} (1 to {MAX_SCALE})"),
            ));
        }
        if dx.abs() > MAX_SHIFT || dy.abs() > MAX_SHIFT {
            return Err(Error::setting(
                "jpeg shift",
                format!("{dx}/{dy} (−{MAX_SHIFT} to {MAX_SHIFT} pixels)"),
            ));
        }
        Ok(Variant::JpegAt {
            quality,
            scale,
            dx,
            dy,
            restart: 0,
            distort: 0,
        }
        .normalized())
    }

    /// This JPEG variant with a restart marker after every `mcus` MCUs (0: none; T.81
    /// B.2.4.4). An audio variant is an error.
    ///
    /// ```
    /// use cff_encode::prepare::Variant;
    /// let v = Variant::jpeg(75, 2, 1, -1)?.with_restart(1)?;
    /// assert_eq!(v.to_string(), "jpeg:75x2r1@1/-1");
    /// assert_eq!(v.with_restart(0)?, Variant::jpeg(75, 2, 1, -1)?);
    /// # Ok::<(), cff_encode::Error>(())
    /// ```
    pub fn with_restart(self, mcus: u16) -> Result<Variant> {
        self.with_jpeg("a restart interval", |v| {
            if let Variant::JpegAt { restart, .. } = v {
                *restart = mcus;
            }
        })
    }

    /// This JPEG variant with the `k`-th random distortion (0: none; see
    /// [`Variant::JpegAt`]). An audio variant is an error.
    ///
    /// ```
    /// use cff_encode::prepare::Variant;
    /// let v = Variant::jpeg(75, 2, 0, 0)?.with_restart(1)?.with_distortion(3)?;
    /// assert_eq!(v.to_string(), "jpeg:75x2r1~3");
    /// assert_eq!(v.to_string().parse::<Variant>()?, v);
    /// # Ok::<(), cff_encode::Error>(())
    /// ```
    pub fn with_distortion(self, k: u16) -> Result<Variant> {
        self.with_jpeg("a distortion", |v| {
            if let Variant::JpegAt { distort, .. } = v {
                *distort = k;
            }
        })
    }

    /// This JPEG variant as a [`Variant::JpegAt`] changed by `set`, normalized; an audio
    /// variant is an error saying it takes no `what`.
    fn with_jpeg(self, what: &str, set: impl FnOnce(&mut Variant)) -> Result<Variant> {
        let mut v = match self {
            Variant::Jpeg(quality) => Variant::JpegAt {
                quality,
                scale: 1,
                dx: 0,
                dy: 0,
                restart: 0,
                distort: 0,
            },
            Variant::JpegAt { .. } => self,
            Variant::Mp3(_) | Variant::Opus(_) => {
                return Err(Error::setting(
                    "variant",
                    format!("{self}: only jpeg variants take {what}"),
                ))
            }
        };
        set(&mut v);
        Ok(v.normalized())
    }

    /// A [`Variant::JpegAt`]'s distortion (0 for every other variant).
    pub fn distortion(self) -> u16 {
        match self {
            Variant::JpegAt { distort, .. } => distort,
            _ => 0,
        }
    }

    /// A [`Variant::JpegAt`] that changes nothing is spelled `Jpeg(quality)`, so that one
    /// version has one name.
    fn normalized(self) -> Variant {
        match self {
            Variant::JpegAt {
                quality,
                scale: 1,
                dx: 0,
                dy: 0,
                restart: 0,
                distort: 0,
            } => Variant::Jpeg(quality),
            v => v,
        }
    }

    /// A [`Variant::JpegAt`]'s restart interval (0 for every other variant).
    pub fn restart_interval(self) -> u16 {
        match self {
            Variant::JpegAt { restart, .. } => restart,
            _ => 0,
        }
    }

    /// The JPEG variants at `quality` and `scale` moved by every (dx, dy) with |dx|, |dy| ≤
    /// `max` other than (0, 0), row by row: the 8 neighbours for `max` = 1, 24 for 2; `max`
    /// above [`MAX_SHIFT`] counts as [`MAX_SHIFT`]. The unmoved image is
    /// `Variant::jpeg(quality, scale, 0, 0)`, which also checks `quality` and `scale` (this
    /// does not: an out-of-range one fails when the variant is encoded).
    pub fn jpeg_shifts(quality: u8, scale: u8, max: u8) -> Vec<Variant> {
        let m = max.min(MAX_SHIFT as u8) as i8;
        let mut out = Vec::new();
        for dy in -m..=m {
            for dx in -m..=m {
                if (dx, dy) != (0, 0) {
                    out.push(Variant::JpegAt {
                        quality,
                        scale,
                        dx,
                        dy,
                        restart: 0,
                        distort: 0,
                    });
                }
            }
        }
        out
    }

    /// The folder the variant's files go to: `mp3-20`, `opus-24`, `jpeg-75`,
    /// `jpeg-75-x2-shift1_-1`, `jpeg-75-x2-r1`.
    pub fn dir_name(self) -> String {
        match self {
            Variant::Mp3(k) => format!("mp3-{k}"),
            Variant::Opus(k) => format!("opus-{k}"),
            Variant::Jpeg(q) => format!("jpeg-{q}"),
            Variant::JpegAt { quality, .. } => {
                let (scale, shift) = self.jpeg_at_parts();
                let mut name = format!("jpeg-{quality}");
                if let Some(k) = scale {
                    name += &format!("-x{k}");
                }
                if self.restart_interval() > 0 {
                    name += &format!("-r{}", self.restart_interval());
                }
                if let Some((dx, dy)) = shift {
                    name += &format!("-shift{dx}_{dy}");
                }
                if self.distortion() > 0 {
                    name += &format!("-distort{}", self.distortion());
                }
                name
            }
        }
    }

    /// A [`Variant::JpegAt`]'s scale unless 1 and its shift unless (0, 0), for its names.
    fn jpeg_at_parts(self) -> (Option<u8>, Option<(i8, i8)>) {
        match self {
            Variant::JpegAt { scale, dx, dy, .. } => (
                Some(scale).filter(|&k| k != 1),
                Some((dx, dy)).filter(|&d| d != (0, 0)),
            ),
            _ => (None, None),
        }
    }

    /// File extension of the variant's outputs.
    pub fn extension(self) -> &'static str {
        match self {
            Variant::Mp3(_) => "mp3",
            Variant::Opus(_) => "opus",
            Variant::Jpeg(_) | Variant::JpegAt { .. } => "jpg",
        }
    }

    /// Whether this build can encode the variant (MP3 and Opus need their features).
    pub fn available(self) -> bool {
        match self {
            Variant::Mp3(_) => cfg!(feature = "mp3"),
            Variant::Opus(_) => cfg!(feature = "opus"),
            Variant::Jpeg(_) | Variant::JpegAt { .. } => true,
        }
    }
}

impl fmt::Display for Variant {
    /// The spelling [`FromStr`] reads: `mp3:20`, `opus:24`, `jpeg:75`, `jpeg:75x2r1@1/-1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Variant::Mp3(k) => write!(f, "mp3:{k}"),
            Variant::Opus(k) => write!(f, "opus:{k}"),
            Variant::Jpeg(q) => write!(f, "jpeg:{q}"),
            Variant::JpegAt { quality, .. } => {
                let (scale, shift) = self.jpeg_at_parts();
                write!(f, "jpeg:{quality}")?;
                if let Some(k) = scale {
                    write!(f, "x{k}")?;
                }
                if self.restart_interval() > 0 {
                    write!(f, "r{}", self.restart_interval())?;
                }
                if let Some((dx, dy)) = shift {
                    write!(f, "@{dx}/{dy}")?;
                }
                if self.distortion() > 0 {
                    write!(f, "~{}", self.distortion())?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for Variant {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::setting("variant", format!("{s:?}: {why}"));
        let (codec, value) = s
            .split_once(':')
            .ok_or_else(|| bad("expected CODEC:VALUE, e.g. mp3:20"))?;
        let (value, distort) = match value.split_once('~') {
            Some((v, k)) => (v, Some(k)),
            None => (value, None),
        };
        let (value, shift) = match value.split_once('@') {
            Some((v, shift)) => (v, Some(shift)),
            None => (value, None),
        };
        let (value, restart) = match value.split_once('r') {
            Some((v, restart)) => (v, Some(restart)),
            None => (value, None),
        };
        let (value, scale) = match value.split_once('x') {
            Some((v, scale)) => (v, Some(scale)),
            None => (value, None),
        };
        let n: u32 = value
            .trim()
            .parse()
            .map_err(|_| bad("the value is not a number"))?;
        if shift.is_some() || scale.is_some() || restart.is_some() || distort.is_some() {
            let is_jpeg = matches!(codec.trim(), "jpeg" | "jpg");
            if !is_jpeg {
                return Err(bad(
                    "only jpeg variants take a scale, a restart interval, a shift or a distortion",
                ));
            }
            let restart = match restart {
                Some(t) => t
                    .trim()
                    .parse::<u16>()
                    .map_err(|_| bad("the restart interval after r is not a number"))?,
                None => 0,
            };
            let scale = match scale {
                Some(t) => t
                    .trim()
                    .parse::<u8>()
                    .map_err(|_| bad("the scale after x is not a number"))?,
                None => 1,
            };
            let (dx, dy) = match shift {
                Some(t) => t
                    .split_once('/')
                    .and_then(|(x, y)| Some((x.trim().parse().ok()?, y.trim().parse().ok()?)))
                    .ok_or_else(|| bad("expected a shift DX/DY in pixels, e.g. jpeg:75@1/-1"))?,
                None => (0, 0),
            };
            let distort = match distort {
                Some(t) => t
                    .trim()
                    .parse::<u16>()
                    .map_err(|_| bad("the distortion after ~ is not a number"))?,
                None => 0,
            };
            let quality = u8::try_from(n).map_err(|_| bad("the value is out of range"))?;
            return Variant::jpeg(quality, scale, dx, dy)
                .and_then(|v| v.with_restart(restart))
                .and_then(|v| v.with_distortion(distort))
                .map_err(|e| bad(&e.to_string()));
        }
        match codec.trim() {
            "mp3" if (8..=320).contains(&n) => Ok(Variant::Mp3(n)),
            "opus" if (1..=512).contains(&n) => Ok(Variant::Opus(n)),
            "jpeg" | "jpg" if (1..=100).contains(&n) => Ok(Variant::Jpeg(n as u8)),
            "mp3" | "opus" | "jpeg" | "jpg" => Err(bad("the value is out of range")),
            _ => Err(bad("the codec is not mp3, opus or jpeg")),
        }
    }
}

/// Parses a comma-separated list of variants (`mp3:20,mp3:26,opus:24`), refusing duplicates.
pub fn parse_variants(list: &str) -> Result<Vec<Variant>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let v: Variant = part.parse()?;
        if !seen.insert(v) {
            return Err(Error::setting("variant", format!("{v} is given twice")));
        }
        out.push(v);
    }
    if out.is_empty() {
        return Err(Error::setting("variants", "none given"));
    }
    Ok(out)
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

/// One item of a dataset.
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

/// An input that could not be prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The input (a path, or `file#index` for an IDX item).
    pub input: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.input, self.reason)
    }
}

/// One row of `manifest.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Item id.
    pub id: String,
    /// Class.
    pub label: String,
    /// Split.
    pub split: String,
    /// The variant, as `mp3:20`.
    pub variant: String,
    /// Output path relative to the output directory, `/`-separated.
    pub path: String,
    /// Output size in bytes.
    pub bytes: u64,
    /// Duration of the input clip in seconds (audio only).
    pub duration: Option<f64>,
}

/// The columns of `manifest.csv`, in order.
pub const MANIFEST_HEADER: &str = "id,label,split,variant,path,bytes,duration";

/// Scans a dataset into items, sorted by id. Files that belong to no item (other extensions)
/// are not reported; a missing required file (a layout's CSV or IDX files) is an error.
pub fn scan(layout: Layout, input: &Path, limits: &Limits) -> Result<Vec<Item>> {
    let mut items = match layout {
        Layout::Folder => scan_folder(input)?,
        Layout::Esc50 => scan_esc50(input)?,
        Layout::SpeechCommands => scan_speech_commands(input)?,
        Layout::Mnist => scan_mnist(input, limits)?,
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

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
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

fn media_source(p: &Path) -> Option<Source> {
    let ext = p.extension()?.to_string_lossy().to_ascii_lowercase();
    match ext.as_str() {
        "wav" | "wave" => Some(Source::Wav(p.to_path_buf())),
        "png" => Some(Source::Png(p.to_path_buf())),
        _ => None,
    }
}

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

fn scan_folder(input: &Path) -> Result<Vec<Item>> {
    let dirs: Vec<PathBuf> = sorted_entries(input)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    let split_layout = is_split_layout(&dirs);
    let mut items = Vec::new();
    let roots: Vec<(String, PathBuf)> = if split_layout {
        dirs.into_iter().map(|d| (file_name(&d), d)).collect()
    } else {
        vec![("all".to_string(), input.to_path_buf())]
    };
    for (split, root) in roots {
        for class in sorted_entries(&root)?.into_iter().filter(|p| p.is_dir()) {
            let label = file_name(&class);
            if label.starts_with('.') {
                continue;
            }
            for file in sorted_entries(&class)? {
                let Some(source) = media_source(&file).filter(|_| file.is_file()) else {
                    continue;
                };
                let name = stem(&file);
                let id = if split_layout {
                    format!("{split}/{label}/{name}")
                } else {
                    format!("{label}/{name}")
                };
                items.push(Item {
                    id,
                    label: label.clone(),
                    split: split.clone(),
                    name,
                    source,
                });
            }
        }
    }
    Ok(items)
}

fn scan_esc50(input: &Path) -> Result<Vec<Item>> {
    let csv_path = input.join("meta").join("esc50.csv");
    let text = fs::read_to_string(&csv_path).map_err(Error::io(&csv_path))?;
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = lines
        .next()
        .map(|(_, h)| h.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let col = |name: &str| {
        header.iter().position(|h| *h == name).ok_or_else(|| {
            Error::malformed("esc50.csv", 0, format!("no column {name:?} in the header"))
        })
    };
    let (fc, foldc, catc) = (col("filename")?, col("fold")?, col("category")?);
    let mut items = Vec::new();
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        // ESC-50's CSV has no quoted fields.
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let get = |c: usize| {
            fields.get(c).copied().ok_or_else(|| {
                Error::malformed(
                    "esc50.csv",
                    0,
                    format!("line {} has {} fields", n + 1, fields.len()),
                )
            })
        };
        let file = get(fc)?;
        let path = input.join("audio").join(file);
        let name = stem(Path::new(file));
        items.push(Item {
            id: name.clone(),
            label: get(catc)?.to_string(),
            split: get(foldc)?.to_string(),
            name,
            source: Source::Wav(path),
        });
    }
    Ok(items)
}

fn read_list(path: &Path) -> Result<HashSet<String>> {
    if !path.exists() {
        return Ok(HashSet::new());
    }
    Ok(fs::read_to_string(path)
        .map_err(Error::io(path))?
        .lines()
        .map(|l| l.trim().replace('\\', "/"))
        .filter(|l| !l.is_empty())
        .collect())
}

fn scan_speech_commands(input: &Path) -> Result<Vec<Item>> {
    let validation = read_list(&input.join("validation_list.txt"))?;
    let testing = read_list(&input.join("testing_list.txt"))?;
    let mut items = Vec::new();
    for word_dir in sorted_entries(input)?.into_iter().filter(|p| p.is_dir()) {
        let word = file_name(&word_dir);
        // `_background_noise_` holds long noise recordings, not examples of a word.
        if word.starts_with('_') || word.starts_with('.') {
            continue;
        }
        for file in sorted_entries(&word_dir)? {
            let Some(source @ Source::Wav(_)) = media_source(&file) else {
                continue;
            };
            let rel = format!("{word}/{}", file_name(&file));
            let split = if validation.contains(&rel) {
                "validation"
            } else if testing.contains(&rel) {
                "test"
            } else {
                "train"
            };
            let name = stem(&file);
            items.push(Item {
                id: format!("{word}/{name}"),
                label: word.clone(),
                split: split.to_string(),
                name,
                source,
            });
        }
    }
    Ok(items)
}

/// Finds `<prefix>-idx?-ubyte`, `<prefix>.idx?-ubyte`, with or without `.gz`.
fn find_idx(input: &Path, prefix: &str) -> Result<Option<PathBuf>> {
    Ok(sorted_entries(input)?.into_iter().find(|p| {
        let n = file_name(p);
        p.is_file()
            && (n.starts_with(&format!("{prefix}-idx")) || n.starts_with(&format!("{prefix}.idx")))
    }))
}

fn scan_mnist(input: &Path, limits: &Limits) -> Result<Vec<Item>> {
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

/// What to prepare, and how.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PrepareConfig {
    /// The dataset's layout.
    pub layout: Layout,
    /// The dataset's folder.
    pub input: PathBuf,
    /// Where outputs and `manifest.csv` go.
    pub output: PathBuf,
    /// The variants to make of every item they apply to (audio variants of audio items,
    /// image variants of images).
    pub variants: Vec<Variant>,
    /// Audio is resampled to this rate before encoding (default 16,000 Hz).
    pub sample_rate: u32,
    /// Input limits.
    pub limits: Limits,
    /// Draw a progress bar on standard error (default true; hidden anyway when standard
    /// error is not a terminal).
    pub progress: bool,
    /// Worker threads (default: rayon's, i.e. `RAYON_NUM_THREADS` or one per core).
    pub threads: Option<usize>,
}

impl PrepareConfig {
    /// A configuration with the defaults.
    pub fn new(
        layout: Layout,
        input: impl Into<PathBuf>,
        output: impl Into<PathBuf>,
        variants: Vec<Variant>,
    ) -> Self {
        PrepareConfig {
            layout,
            input: input.into(),
            output: output.into(),
            variants,
            sample_rate: 16_000,
            limits: Limits::default(),
            progress: true,
            threads: None,
        }
    }

    /// Sets the audio sample rate.
    pub fn with_sample_rate(mut self, rate: u32) -> Self {
        self.sample_rate = rate;
        self
    }

    /// Turns the progress bar on or off.
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    /// Sets the number of worker threads.
    pub fn with_threads(mut self, threads: Option<usize>) -> Self {
        self.threads = threads;
        self
    }

    /// Sets the input limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// The outcome of [`prepare`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Summary {
    /// Items found.
    pub items: usize,
    /// Outputs encoded and written by this run.
    pub written: usize,
    /// Outputs already present (complete) and skipped.
    pub skipped: usize,
    /// Inputs that could not be prepared, with the reason.
    pub failures: Vec<Failure>,
    /// This run's rows of the manifest (which also keeps the rows of other variants that an
    /// earlier run wrote into the same folder, where their files are still there).
    pub rows: Vec<Row>,
    /// Wall time.
    pub elapsed: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} items: {} outputs written, {} already present, {} inputs failed, in {:.1} s",
            self.items,
            self.written,
            self.skipped,
            self.failures.len(),
            self.elapsed.as_secs_f64()
        )
    }
}

/// The media of one item, decoded once for all its variants.
enum Media {
    // Read only by the MP3 and Opus encoders.
    #[cfg_attr(not(any(feature = "mp3", feature = "opus")), allow(dead_code))]
    Audio(Audio),
    Image(Image),
}

struct ItemResult {
    rows: Vec<Row>,
    written: usize,
    skipped: usize,
    failure: Option<Failure>,
}

/// Prepares a dataset: scans it, encodes every item in every variant that applies to it
/// (skipping outputs already present), and writes `manifest.csv`. Errors that concern one
/// input are collected in [`Summary::failures`]; an error is returned only for problems with
/// the whole run (a layout file missing, an unwritable output folder, a variant this build
/// lacks).
pub fn prepare(config: &PrepareConfig) -> Result<Summary> {
    let start = Instant::now();
    if let Some(v) = config.variants.iter().find(|v| !v.available()) {
        return Err(Error::Unsupported {
            format: "variant",
            what: format!(
                "{v}: this build lacks the `{}` feature of cff-encode",
                v.extension().replace("jpg", "jpeg")
            ),
        });
    }
    let items = scan(config.layout, &config.input, &config.limits)?;
    let run = || run_items(config, &items);
    let results = match config.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| Error::setting("threads", e.to_string()))?
            .install(run)?,
        None => run()?,
    };
    let mut summary = Summary {
        items: items.len(),
        ..Summary::default()
    };
    let mut rows = earlier_rows(&config.output, &config.variants);
    for r in results {
        summary.written += r.written;
        summary.skipped += r.skipped;
        summary.rows.extend(r.rows);
        summary.failures.extend(r.failure);
    }
    rows.extend(summary.rows.iter().cloned());
    // By id (stable: an item's earlier variants, then this run's in their order).
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    write_manifest(&config.output, &rows)?;
    summary.elapsed = start.elapsed();
    Ok(summary)
}

fn run_items(config: &PrepareConfig, items: &[Item]) -> Result<Vec<ItemResult>> {
    // Folders are made once, up front, rather than probed per file.
    let mut dirs = BTreeSet::new();
    for item in items {
        for &v in config
            .variants
            .iter()
            .filter(|v| v.is_audio() == item.source.is_audio())
        {
            if let Some(parent) = config.output.join(item.output_path(v)).parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
    }
    fs::create_dir_all(&config.output).map_err(Error::io(&config.output))?;
    for d in &dirs {
        fs::create_dir_all(d).map_err(Error::io(d))?;
    }
    let bar = if config.progress {
        let bar = ProgressBar::new(items.len() as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} items, {per_sec}, ETA {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let results = items
        .par_iter()
        .map(|item| {
            let r = prepare_item(config, item);
            if let Some(f) = &r.failure {
                bar.println(format!("failed: {f}"));
            }
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();
    Ok(results)
}

fn prepare_item(config: &PrepareConfig, item: &Item) -> ItemResult {
    let mut result = ItemResult {
        rows: Vec::new(),
        written: 0,
        skipped: 0,
        failure: None,
    };
    let variants: Vec<Variant> = config
        .variants
        .iter()
        .copied()
        .filter(|v| v.is_audio() == item.source.is_audio())
        .collect();
    if variants.is_empty() {
        return result;
    }
    if let Err(e) = encode_item(config, item, &variants, &mut result) {
        result.failure = Some(Failure {
            input: item.source.describe(),
            reason: e.to_string(),
        });
    }
    result
}

fn encode_item(
    config: &PrepareConfig,
    item: &Item,
    variants: &[Variant],
    result: &mut ItemResult,
) -> Result<()> {
    // Inputs are read only if some output is missing; the duration of an audio item comes
    // from its WAV header either way, so a rerun's manifest matches the first run's.
    let mut media: Option<Media> = None;
    let mut duration = None;
    if let Source::Wav(path) = &item.source {
        let header = read_header(path)?;
        duration = Some(wav_info(&header)?.duration_seconds());
    }
    for &variant in variants {
        let rel = item.output_path(variant);
        let path = config.output.join(&rel);
        let bytes = match fs::metadata(&path) {
            Ok(m) if m.is_file() => {
                result.skipped += 1;
                m.len()
            }
            _ => {
                if media.is_none() {
                    media = Some(load_media(config, item)?);
                }
                let Some(m) = &media else { continue };
                let encoded = encode(m, variant, &config.limits)?;
                write_atomically(&path, &encoded)?;
                result.written += 1;
                encoded.len() as u64
            }
        };
        result.rows.push(Row {
            id: item.id.clone(),
            label: item.label.clone(),
            split: item.split.clone(),
            variant: variant.to_string(),
            path: rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/"),
            bytes,
            duration,
        });
    }
    Ok(())
}

/// The first 64 KiB of a file: enough for any WAV header hound needs (the `fmt ` chunk and
/// the `data` chunk's header, after whatever chunks precede them in common files).
fn read_header(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(1 << 16);
    fs::File::open(path)
        .map_err(Error::io(path))?
        .take(1 << 16)
        .read_to_end(&mut buf)
        .map_err(Error::io(path))?;
    Ok(buf)
}

fn load_media(config: &PrepareConfig, item: &Item) -> Result<Media> {
    Ok(match &item.source {
        Source::Wav(path) => {
            let audio = read_wav(&load(path, &config.limits)?)?;
            Media::Audio(audio.resampled(config.sample_rate)?)
        }
        Source::Png(path) => Media::Image(read_png(
            &load(path, &config.limits)?,
            config.limits.max_pixels,
        )?),
        Source::Idx { images, index, .. } => Media::Image(images.image(*index)?),
    })
}

fn encode(media: &Media, variant: Variant, limits: &Limits) -> Result<Vec<u8>> {
    match (media, variant) {
        #[cfg(feature = "mp3")]
        (Media::Audio(a), Variant::Mp3(k)) => {
            crate::mp3::encode_mp3(a, &crate::mp3::Mp3Options::for_kbps(k, a.rate)?)
        }
        #[cfg(feature = "opus")]
        (Media::Audio(a), Variant::Opus(k)) => {
            crate::opus::encode_opus(a, &crate::opus::OpusOptions::kbps(k))
        }
        (Media::Image(i), Variant::Jpeg(q)) => encode_jpeg(i, &JpegOptions::with_quality(q)),
        (
            Media::Image(i),
            Variant::JpegAt {
                quality,
                scale,
                dx,
                dy,
                restart,
                distort,
            },
        ) => {
            let (w, h) = (u64::from(i.width), u64::from(i.height));
            let pixels = w * h * u64::from(scale) * u64::from(scale);
            if pixels > limits.max_pixels {
                return Err(Error::Limit {
                    what: "pixels per image",
                    limit: limits.max_pixels,
                    found: pixels,
                });
            }
            let distorted;
            let i = if distort > 0 {
                distorted = i.warped(&crate::image::Distortion::draw(i, distort));
                &distorted
            } else {
                i
            };
            encode_jpeg(
                &i.shifted(i32::from(dx), i32::from(dy))
                    .scaled(u32::from(scale)),
                &JpegOptions::with_quality(quality).with_restart_interval(Some(restart)),
            )
        }
        (_, v) => Err(Error::Unsupported {
            format: "variant",
            what: format!("{v} for this item"),
        }),
    }
}

/// Writes `bytes` to a temporary name beside `path`, then renames it: a file under its final
/// name is always complete, which is what lets a rerun skip it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.partial"));
    let mut f = fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    f.write_all(bytes).map_err(Error::io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(Error::io(path))
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180 §2).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Parses CSV (RFC 4180: quoted fields may hold commas, quotes doubled, line breaks).
pub fn parse_csv(text: &str) -> std::result::Result<Vec<Vec<String>>, String> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut line = 1;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => quoted = true,
            ',' => record.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                line += 1;
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            _ => field.push(c),
        }
    }
    if quoted {
        return Err(format!("line {line}: a quoted field is not closed"));
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

/// The rows of an existing `manifest.csv` in `output` for variants other than `variants` whose
/// files are still there: a run that prepares other variants into the same folder keeps them
/// in the manifest it rewrites. A manifest that cannot be read or parsed keeps nothing (its
/// files stay on disk; rerunning with every variant lists them again).
fn earlier_rows(output: &Path, variants: &[Variant]) -> Vec<Row> {
    let Ok(text) = fs::read_to_string(output.join("manifest.csv")) else {
        return Vec::new();
    };
    let Ok(records) = parse_csv(&text) else {
        return Vec::new();
    };
    let now: Vec<String> = variants.iter().map(Variant::to_string).collect();
    let mut rows = Vec::new();
    for r in records.iter().skip(1) {
        let [id, label, split, variant, path, bytes, duration] = &r[..] else {
            continue;
        };
        if now.contains(variant) || !output.join(path).is_file() {
            continue;
        }
        rows.push(Row {
            id: id.clone(),
            label: label.clone(),
            split: split.clone(),
            variant: variant.clone(),
            path: path.clone(),
            bytes: bytes.parse().unwrap_or(0),
            duration: duration.parse().ok(),
        });
    }
    rows
}

fn write_manifest(output: &Path, rows: &[Row]) -> Result<()> {
    let mut text = String::with_capacity(64 * (rows.len() + 1));
    text.push_str(MANIFEST_HEADER);
    text.push('\n');
    for r in rows {
        let duration = r.duration.map(|d| format!("{d:.6}")).unwrap_or_default();
        let fields = [
            csv_field(&r.id),
            csv_field(&r.label),
            csv_field(&r.split),
            csv_field(&r.variant),
            csv_field(&r.path),
            r.bytes.to_string(),
            duration,
        ];
        text.push_str(&fields.join(","));
        text.push('\n');
    }
    write_atomically(&output.join("manifest.csv"), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse_and_print() {
        let v = parse_variants("mp3:20, mp3:26,opus:24,jpeg:75").unwrap();
        assert_eq!(
            v,
            vec![
                Variant::Mp3(20),
                Variant::Mp3(26),
                Variant::Opus(24),
                Variant::Jpeg(75)
            ]
        );
        assert_eq!(v[0].to_string(), "mp3:20");
        assert_eq!(v[3].dir_name(), "jpeg-75");
        for bad in [
            "",
            "mp3",
            "mp3:x",
            "mp3:2",
            "jpeg:0",
            "jpeg:101",
            "flac:5",
            "mp3:20,mp3:20",
            "jpeg:75@1",
            "jpeg:75@9/0",
            "jpeg:75@0/-9",
            "jpeg:101@1/1",
            "jpeg:300x2",
            "jpeg:75x0",
            "jpeg:75x9",
            "jpeg:75xx",
            "mp3:20@1/1",
            "mp3:20x2",
            "jpeg:75@1/1,jpeg:75@1/1",
            "jpeg:75,jpeg:75x1",
        ] {
            assert!(parse_variants(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scaled_and_shifted_variants_parse_print_and_list() {
        let v =
            parse_variants("jpeg:75,jpeg:75@1/-1,jpg:50x2@-8/8,jpeg:90x3,jpeg:60x1@0/0").unwrap();
        let at = |quality, scale, dx, dy| Variant::JpegAt {
            distort: 0,
            quality,
            scale,
            dx,
            dy,
            restart: 0,
        };
        assert_eq!(
            v,
            [
                Variant::Jpeg(75),
                at(75, 1, 1, -1),
                at(50, 2, -8, 8),
                at(90, 3, 0, 0),
                Variant::Jpeg(60)
            ]
        );
        let names: Vec<String> = v.iter().map(|v| v.to_string()).collect();
        assert_eq!(
            names,
            [
                "jpeg:75",
                "jpeg:75@1/-1",
                "jpeg:50x2@-8/8",
                "jpeg:90x3",
                "jpeg:60"
            ]
        );
        for v in &v {
            assert_eq!(v.to_string().parse::<Variant>().unwrap(), *v);
            assert_eq!(v.extension(), "jpg");
            assert!(!v.is_audio());
        }
        assert_eq!(v[1].dir_name(), "jpeg-75-shift1_-1");
        assert_eq!(v[2].dir_name(), "jpeg-50-x2-shift-8_8");
        assert_eq!(v[3].dir_name(), "jpeg-90-x3");
        let shifts = Variant::jpeg_shifts(75, 2, 1);
        assert_eq!(shifts.len(), 8);
        assert!(!shifts.contains(&Variant::jpeg(75, 2, 0, 0).unwrap()));
        let names: HashSet<String> = shifts.iter().map(|v| v.dir_name()).collect();
        assert_eq!(names.len(), 8);
        assert_eq!(Variant::jpeg_shifts(75, 1, 2).len(), 24);
        assert!(Variant::jpeg_shifts(75, 1, 0).is_empty());
        assert_eq!(Variant::jpeg_shifts(75, 1, 200).len(), 17 * 17 - 1);
        assert!(Variant::jpeg(0, 1, 0, 0).is_err());
        assert!(Variant::jpeg(75, 9, 0, 0).is_err());
        assert!(Variant::jpeg(75, 1, -9, 0).is_err());
    }

    #[test]
    fn restart_intervals_parse_print_and_name_their_folder() {
        let v = parse_variants("jpeg:75r1,jpeg:75x2r4@1/-1,jpeg:60r0,jpg:50x2r2").unwrap();
        let names: Vec<String> = v.iter().map(|v| v.to_string()).collect();
        assert_eq!(
            names,
            ["jpeg:75r1", "jpeg:75x2r4@1/-1", "jpeg:60", "jpeg:50x2r2"]
        );
        assert_eq!(v[2], Variant::Jpeg(60));
        let restarts: Vec<u16> = v.iter().map(|v| v.restart_interval()).collect();
        assert_eq!(restarts, [1, 4, 0, 2]);
        let dirs: Vec<String> = v.iter().map(|v| v.dir_name()).collect();
        assert_eq!(
            dirs,
            [
                "jpeg-75-r1",
                "jpeg-75-x2-r4-shift1_-1",
                "jpeg-60",
                "jpeg-50-x2-r2"
            ]
        );
        for v in &v {
            assert_eq!(v.to_string().parse::<Variant>().unwrap(), *v);
        }
        assert_eq!(
            Variant::jpeg(75, 2, 1, -1)
                .unwrap()
                .with_restart(4)
                .unwrap(),
            v[1]
        );
        assert_eq!(v[0].with_restart(0).unwrap(), Variant::Jpeg(75));
        assert!(Variant::Mp3(20).with_restart(1).is_err());
        for bad in [
            "mp3:20r1",
            "jpeg:75r",
            "jpeg:75r-1",
            "jpeg:75r70000",
            "jpeg:75rx2",
        ] {
            assert!(bad.parse::<Variant>().is_err(), "{bad}");
        }
    }

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

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("dog"), "dog");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
