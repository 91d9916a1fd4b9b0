//! Datasets: items with a label, a split and one compressed file per variant, and the plan
//! of which splits train, select and test.
//!
//! Three ways in:
//! - [`Dataset::from_manifest`]: the output folder of [`prepare`](crate::prepare()) (its
//!   `manifest.csv`, [`crate::manifest`]);
//! - [`Dataset::from_compressed`]: a raw layout whose files are already compressed (MP3, Ogg
//!   Opus, JPEG), used as they are, one variant named after the codec;
//! - [`Dataset::open_layout`]: a raw layout of WAV/PNG/IDX inputs, prepared into a cache folder
//!   on first use (a rerun finds the outputs complete and skips them), or used as it is when
//!   it already holds compressed files.
//!
//! [`DataSource`](crate::DataSource) chooses between them for the command lines.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use crate::files::sorted_entries;
use crate::layout::{scan_compressed, FileRow};
use crate::manifest;
use crate::prepare::{prepare, PrepareConfig, Summary};
use crate::{Error, Layout, Result, Variant};

/// One item: its class, its split and its files, one per variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Unique within the dataset.
    pub id: String,
    /// Index into [`Dataset::classes`].
    pub label: u32,
    /// `train`, `validation`, `test`, an ESC-50 fold (`1`–`5`) or `all`.
    pub split: String,
    /// `(variant, file)`, in the order the variants were prepared (`mp3:20`, `mp3:26` …).
    pub variants: Vec<(String, PathBuf)>,
}

impl Sample {
    /// The file of variant `name`, if the item has it.
    pub fn variant(&self, name: &str) -> Option<&Path> {
        self.variants
            .iter()
            .find(|(v, _)| v == name)
            .map(|(_, p)| p.as_path())
    }
}

/// A labelled dataset of compressed files.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Class names, sorted; a sample's label indexes this list.
    pub classes: Vec<String>,
    /// The items, sorted by id.
    pub samples: Vec<Sample>,
}

/// An item's label, split and `(variant, path)` list while rows are grouped.
type ItemRows = (String, String, Vec<(String, PathBuf)>);

/// Whether a raw layout holds images (MNIST, or a folder whose first media file is a PNG),
/// which decides between the image and the audio recipe (`tempest_train::Recipe::for_layout`).
pub fn holds_images(layout: Layout, input: &Path) -> bool {
    match layout {
        Layout::Mnist => true,
        Layout::Folder => first_file_extension(input, 4).is_some_and(|e| e == "png"),
        _ => false,
    }
}

/// The lower-cased extension of the first `.wav` or `.png` file found under `dir`, looking at
/// most `depth` folders down (sorted order).
fn first_file_extension(dir: &Path, depth: usize) -> Option<String> {
    for entry in sorted_entries(dir).ok()? {
        if entry.is_dir() {
            if depth > 0 {
                if let Some(e) = first_file_extension(&entry, depth - 1) {
                    return Some(e);
                }
            }
        } else if let Some(e) = entry.extension().and_then(|e| e.to_str()) {
            let e = e.to_ascii_lowercase();
            if e == "wav" || e == "png" {
                return Some(e);
            }
        }
    }
    None
}

impl Dataset {
    /// Builds a dataset from `(id, label name, split, variant, path)` rows; rows of one id are
    /// one item. Class names are sorted and numbered from 0.
    pub fn from_rows<I>(rows: I) -> Self
    where
        I: IntoIterator<Item = FileRow>,
    {
        let mut by_id: BTreeMap<String, ItemRows> = BTreeMap::new();
        for (id, label, split, variant, path) in rows {
            by_id
                .entry(id)
                .or_insert_with(|| (label, split, Vec::new()))
                .2
                .push((variant, path));
        }
        let classes: Vec<String> = by_id
            .values()
            .map(|(l, _, _)| l.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let samples = by_id
            .into_iter()
            .map(|(id, (label, split, variants))| Sample {
                id,
                label: classes.binary_search(&label).unwrap_or(0) as u32,
                split,
                variants,
            })
            .collect();
        Dataset { classes, samples }
    }

    /// Reads the `manifest.csv` of a prepared folder ([`manifest::read`]); paths are
    /// relative to `dir`.
    pub fn from_manifest(dir: &Path) -> Result<Self> {
        let rows = manifest::read(dir)?;
        Ok(Dataset::from_rows(rows.into_iter().map(|r| {
            let path = dir.join(&r.path);
            (r.id, r.label, r.split, r.variant, path)
        })))
    }

    /// One dataset of the items of several (`parts`, e.g. prepared folders of different
    /// formats, [`Dataset::from_manifest`] each): with more than one part each id becomes
    /// `k:id` (k the part's place, from 0), so that items of two parts never merge; classes
    /// are the union of the parts', renumbered. One part comes back as it is.
    pub fn merge(mut parts: Vec<Dataset>) -> Dataset {
        if parts.len() == 1 {
            return parts.remove(0);
        }
        let rows = parts.into_iter().enumerate().flat_map(|(k, d)| {
            let Dataset { classes, samples } = d;
            samples.into_iter().flat_map(move |s| {
                let label = classes.get(s.label as usize).cloned().unwrap_or_default();
                let id = format!("{k}:{}", s.id);
                let split = s.split;
                s.variants
                    .into_iter()
                    .map(move |(v, p)| (id.clone(), label.clone(), split.clone(), v, p))
            })
        });
        Dataset::from_rows(rows.collect::<Vec<FileRow>>())
    }

    /// Scans a raw layout whose media files are already compressed (`.mp3`, `.opus`/`.ogg`,
    /// `.jpg`/`.jpeg`), with the layout's split rules: split folders for `folder`,
    /// `validation_list.txt`/`testing_list.txt` for `speechcommands`, the `fold` column of
    /// `meta/esc50.csv` for `esc50` (its `.wav` names matched by stem). Each file is one
    /// item whose single variant is named after its codec (`mp3`, `opus`, `jpeg`).
    pub fn from_compressed(layout: Layout, dir: &Path) -> Result<Self> {
        Ok(Dataset::from_rows(scan_compressed(layout, dir)?))
    }

    /// A raw layout: used as it is if it holds compressed files, else prepared into `cache`
    /// in `variants` (skipping outputs already there) and read from its manifest. The
    /// preparation's summary (failures included) is returned when one ran.
    pub fn open_layout(
        layout: Layout,
        input: &Path,
        cache: &Path,
        variants: &[Variant],
        progress: bool,
    ) -> Result<(Self, Option<Summary>)> {
        if layout != Layout::Mnist {
            let direct = Dataset::from_compressed(layout, input)?;
            if !direct.samples.is_empty() {
                return Ok((direct, None));
            }
        }
        let config =
            PrepareConfig::new(layout, input, cache, variants.to_vec()).with_progress(progress);
        let summary = prepare(&config)?;
        Ok((Dataset::from_manifest(cache)?, Some(summary)))
    }

    /// The split names present, sorted.
    pub fn splits(&self) -> Vec<String> {
        self.samples
            .iter()
            .map(|s| s.split.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Every variant name present, in first-seen order.
    pub fn variants(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for s in &self.samples {
            for (v, _) in &s.variants {
                if seen.insert(v.as_str()) {
                    out.push(v.clone());
                }
            }
        }
        out
    }

    /// Indices of the samples whose split is one of `splits`.
    pub fn select(&self, splits: &[String]) -> Vec<usize> {
        (0..self.samples.len())
            .filter(|&i| splits.contains(&self.samples[i].split))
            .collect()
    }

    /// Keeps `n` samples of each split named in `splits` (for quick runs, or few labels),
    /// spread evenly over the split in the dataset's order (sorted by id), so the subset is
    /// the same on every run and, where ids start with the class (`word/clip`), covers the
    /// classes instead of the first few. Before session 12 it kept the first `n`, which on
    /// such sets held one or two classes.
    pub fn truncate_splits(&mut self, splits: &[String], n: usize) {
        self.keep_spread(splits, |s| s.split.clone(), |len| n.min(len));
    }

    /// Keeps, of each group of the samples in the splits named in `splits` (`group` names a
    /// sample's group; samples of other splits are kept), `count(group size)` samples spread
    /// evenly over the group in the dataset's order: positions `k·len/n` for `k < n`, n
    /// distinct ones. Returns the samples kept in those splits.
    fn keep_spread<K: Ord>(
        &mut self,
        splits: &[String],
        group: impl Fn(&Sample) -> K,
        count: impl Fn(usize) -> usize,
    ) -> usize {
        let mut groups: BTreeMap<K, Vec<usize>> = BTreeMap::new();
        for (i, s) in self.samples.iter().enumerate() {
            if splits.contains(&s.split) {
                groups.entry(group(s)).or_default().push(i);
            }
        }
        let mut keep = vec![true; self.samples.len()];
        let mut kept = 0;
        for idx in groups.values() {
            let n = count(idx.len()).min(idx.len());
            for &i in idx {
                keep[i] = false;
            }
            for k in 0..n {
                keep[idx[k * idx.len() / n]] = true;
            }
            kept += n;
        }
        let mut flags = keep.into_iter();
        self.samples.retain(|_| flags.next().unwrap_or(true));
        kept
    }

    /// Keeps `fraction` (in `(0, 1]`) of each class's samples in each split named in
    /// `splits`: ⌈fraction · n⌉ of a class's `n` (so every class with samples keeps at least
    /// one), spread evenly over them in the dataset's order, so the subset is the same on
    /// every run whatever the ids look like. The few-labels setting (10 % of the labels) of
    /// docs/pretraining.md. Returns the samples kept in those splits; a fraction outside
    /// `(0, 1]` is an error that names it.
    pub fn keep_fraction_per_class(&mut self, splits: &[String], fraction: f64) -> Result<usize> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(Error::Setting {
                setting: "--train-fraction",
                reason: format!("{fraction} is not in (0, 1]"),
            });
        }
        // Each (split, class) its own group. The small epsilon keeps 0.1 · 30 at 3, not 4
        // (0.1 is not exact in binary).
        Ok(self.keep_spread(
            splits,
            |s| (s.split.clone(), s.label),
            |len| ((fraction * len as f64) - 1e-9).ceil().max(0.0) as usize,
        ))
    }

    /// Moves `n` samples of split `from` into split `to`, spread evenly over `from` in the
    /// dataset's order (so the same ones on every run), e.g. a validation split carved from
    /// the training digits to tune on without touching the test. Returns how many moved
    /// (fewer when `from` has fewer than `n`).
    pub fn hold_out(&mut self, from: &str, to: &str, n: usize) -> usize {
        let idx: Vec<usize> = (0..self.samples.len())
            .filter(|&i| self.samples[i].split == from)
            .collect();
        let n = n.min(idx.len());
        for k in 0..n {
            // k·len/n for k < n picks n distinct, evenly spaced positions.
            let i = idx[k * idx.len() / n];
            self.samples[i].split = to.to_string();
        }
        n
    }

    /// Re-labels the samples for a model trained with `classes` (a checkpoint's names);
    /// samples whose class the model does not know are dropped and counted.
    pub fn relabel(&mut self, classes: &[String]) -> usize {
        let before = self.samples.len();
        let names = std::mem::take(&mut self.classes);
        self.samples.retain_mut(|s| {
            let name = names.get(s.label as usize);
            match name.and_then(|n| classes.iter().position(|c| c == n)) {
                Some(i) => {
                    s.label = i as u32;
                    true
                }
                None => false,
            }
        });
        self.classes = classes.to_vec();
        before - self.samples.len()
    }
}

/// Which splits train, select the best checkpoint, and test.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SplitPlan {
    /// Splits trained on.
    pub train: Vec<String>,
    /// Splits evaluated every epoch to keep the best checkpoint (may be empty).
    pub validation: Vec<String>,
    /// Splits of the final test.
    pub test: Vec<String>,
}

impl SplitPlan {
    /// The usual names: `train`/`training`; `validation`/`val`/`valid`; `test`/`testing`.
    /// A dataset with only `all` (a folder without split folders) is an error: say the splits.
    pub fn standard(dataset: &Dataset) -> Result<Self> {
        let have = dataset.splits();
        let pick = |names: &[&str]| -> Vec<String> {
            have.iter()
                .filter(|s| names.contains(&s.to_ascii_lowercase().as_str()))
                .cloned()
                .collect()
        };
        let plan = SplitPlan {
            train: pick(&["train", "training"]),
            validation: pick(&["validation", "val", "valid"]),
            test: pick(&["test", "testing"]),
        };
        if plan.train.is_empty() || plan.test.is_empty() {
            return Err(Error::setting(
                "splits",
                format!("the dataset has splits {have:?}: need train and test"),
            ));
        }
        Ok(plan)
    }

    /// ESC-50 cross-validation: test on fold `fold` (1–5), train on the four others, no
    /// validation split (the paper's protocol reports the held-out fold).
    pub fn esc50_fold(fold: u32) -> Self {
        SplitPlan {
            train: (1..=5)
                .filter(|&f| f != fold)
                .map(|f| f.to_string())
                .collect(),
            validation: Vec::new(),
            test: vec![fold.to_string()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn images_are_told_from_audio_by_the_layout_and_the_files() {
        let dir = std::env::temp_dir().join(format!("tempest-images-{}", std::process::id()));
        for (ext, images) in [("png", true), ("wav", false)] {
            let class = dir.join(ext).join("train").join("a");
            fs::create_dir_all(&class).unwrap_or_default();
            fs::write(class.join(format!("x.{ext}")), b"").unwrap_or_default();
            assert_eq!(
                holds_images(Layout::Folder, &dir.join(ext)),
                images,
                "{ext}"
            );
        }
        assert!(holds_images(Layout::Mnist, &dir));
        assert!(!holds_images(Layout::SpeechCommands, &dir));
        assert!(!holds_images(Layout::Esc50, &dir.join("missing")));
        let _ = fs::remove_dir_all(&dir);
    }

    /// A file row of item `id` (class `label`, split `split`) whose file is `id-variant`.
    fn file_row(id: &str, label: &str, split: &str, variant: &str) -> FileRow {
        (
            id.to_string(),
            label.to_string(),
            split.to_string(),
            variant.to_string(),
            PathBuf::from(format!("{id}-{variant}")),
        )
    }

    #[test]
    fn rows_group_variants_and_number_sorted_classes() {
        let row = |id: &str, l: &str, v: &str| file_row(id, l, "train", v);
        let d = Dataset::from_rows([
            row("b1", "zebra", "mp3:20"),
            row("a1", "ant", "mp3:20"),
            row("b1", "zebra", "mp3:32"),
        ]);
        assert_eq!(d.classes, vec!["ant", "zebra"]);
        assert_eq!(d.samples.len(), 2);
        assert_eq!(d.samples[1].label, 1);
        assert_eq!(d.samples[1].variants.len(), 2);
        assert_eq!(d.samples[1].variant("mp3:32"), Some(Path::new("b1-mp3:32")));
        assert_eq!(d.variants(), vec!["mp3:20", "mp3:32"]);
    }

    #[test]
    fn merged_parts_keep_every_item_apart_and_share_classes() {
        let row = |id: &str, l: &str, v: &str| file_row(id, l, "all", v);
        let audio = Dataset::from_rows([row("x", "game", "mp3:32"), row("y", "bird", "mp3:32")]);
        let images = Dataset::from_rows([row("x", "icon", "jpeg:75"), row("z", "game", "jpeg:75")]);
        let merged = Dataset::merge(vec![audio.clone(), images]);
        // The same id in two parts stays two items.
        let ids: Vec<&str> = merged.samples.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["0:x", "0:y", "1:x", "1:z"]);
        assert_eq!(merged.classes, ["bird", "game", "icon"]);
        let label = |id: &str| {
            let s = merged.samples.iter().find(|s| s.id == id).unwrap();
            merged.classes[s.label as usize].clone()
        };
        assert_eq!(
            (label("0:x"), label("1:x"), label("1:z")),
            ("game".into(), "icon".into(), "game".into())
        );
        assert_eq!(merged.variants(), ["mp3:32", "jpeg:75"]);
        assert_eq!(
            merged.samples[2].variant("jpeg:75"),
            Some(Path::new("x-jpeg:75"))
        );
        // One part comes back unchanged.
        assert_eq!(Dataset::merge(vec![audio.clone()]), audio);
    }

    #[test]
    fn hold_out_moves_an_even_spread_of_one_split() {
        let rows = (0..10).map(|i| {
            let split = if i < 8 { "train" } else { "test" };
            (
                format!("{i:02}"),
                "x".to_string(),
                split.to_string(),
                "v".to_string(),
                PathBuf::new(),
            )
        });
        let mut d = Dataset::from_rows(rows);
        assert_eq!(d.hold_out("train", "validation", 3), 3);
        let moved: Vec<&str> = d
            .samples
            .iter()
            .filter(|s| s.split == "validation")
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(moved, vec!["00", "02", "05"]);
        assert_eq!(d.select(&["test".to_string()]).len(), 2);
        assert_eq!(d.hold_out("train", "validation", 100), 5);
        assert_eq!(d.select(&["train".to_string()]).len(), 0);
        let plan = SplitPlan::standard(&{
            let mut e = d.clone();
            e.hold_out("validation", "train", 4);
            e
        })
        .unwrap_or_default();
        assert_eq!(plan.validation, vec!["validation".to_string()]);
    }

    /// `truncate_splits` keeps an even spread of each named split (ids `class/clip` sorted:
    /// every class, not the first), leaves other splits alone, and keeps a small split whole.
    #[test]
    fn truncate_keeps_an_even_spread_of_each_named_split() {
        let rows = (0..40).map(|i| {
            let split = if i % 10 == 9 { "test" } else { "train" };
            (
                format!("w{}/{:02}", i / 10, i % 10),
                format!("w{}", i / 10),
                split.to_string(),
                "v".to_string(),
                PathBuf::new(),
            )
        });
        let d = Dataset::from_rows(rows);
        let mut t = d.clone();
        t.truncate_splits(&["train".to_string()], 8);
        let kept: Vec<u32> = t
            .samples
            .iter()
            .filter(|s| s.split == "train")
            .map(|s| s.label)
            .collect();
        assert_eq!(kept.len(), 8);
        // Two of each of the four classes, where the first 8 would be one and a bit.
        for class in 0..4 {
            assert_eq!(kept.iter().filter(|&&l| l == class).count(), 2, "{kept:?}");
        }
        assert_eq!(t.select(&["test".to_string()]).len(), 4);
        let mut whole = d.clone();
        whole.truncate_splits(&["test".to_string()], 10);
        assert_eq!(whole.samples.len(), d.samples.len());
    }

    /// `keep_fraction_per_class` keeps ⌈f · n⌉ of every class of each named split, spread
    /// over the class, whatever order the ids put the classes in.
    #[test]
    fn a_fraction_per_class_keeps_every_class_in_proportion() {
        // Classes interleaved in id order and of unequal sizes: 30, 20 and 5 training samples.
        let sizes = [30usize, 20, 5];
        let mut rows = Vec::new();
        for (c, &n) in sizes.iter().enumerate() {
            for k in 0..n {
                rows.push((
                    format!("{k:03}-{c}"),
                    format!("c{c}"),
                    "train".to_string(),
                    "v".to_string(),
                    PathBuf::new(),
                ));
            }
            rows.push((
                format!("t-{c}"),
                format!("c{c}"),
                "test".to_string(),
                "v".to_string(),
                PathBuf::new(),
            ));
        }
        let d = Dataset::from_rows(rows);
        let train = ["train".to_string()];
        let mut t = d.clone();
        assert_eq!(t.keep_fraction_per_class(&train, 0.1).ok(), Some(3 + 2 + 1));
        let count = |t: &Dataset, c: u32| {
            t.samples
                .iter()
                .filter(|s| s.split == "train" && s.label == c)
                .count()
        };
        assert_eq!((count(&t, 0), count(&t, 1), count(&t, 2)), (3, 2, 1));
        // Spread over the class: class 0's kept ids are its 0th, 10th and 20th.
        let ids: Vec<&str> = t
            .samples
            .iter()
            .filter(|s| s.split == "train" && s.label == 0)
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(ids, vec!["000-0", "010-0", "020-0"]);
        // Other splits untouched; the whole fraction keeps everything.
        assert_eq!(t.select(&["test".to_string()]).len(), 3);
        let mut all = d.clone();
        assert_eq!(all.keep_fraction_per_class(&train, 1.0).ok(), Some(55));
        assert_eq!(all.samples.len(), d.samples.len());
        let mut half = d.clone();
        assert_eq!(
            half.keep_fraction_per_class(&train, 0.5).ok(),
            Some(15 + 10 + 3)
        );
        for bad in [0.0, -0.5, 1.5, f64::NAN] {
            let mut b = d.clone();
            let err = b
                .keep_fraction_per_class(&train, bad)
                .err()
                .map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains("--train-fraction")), "{bad}");
            assert_eq!(b.samples.len(), d.samples.len(), "{bad}: nothing dropped");
        }
    }

    #[test]
    fn esc50_folds_train_on_four_and_test_on_one() {
        for fold in 1..=5 {
            let p = SplitPlan::esc50_fold(fold);
            assert_eq!(p.train.len(), 4);
            assert!(!p.train.contains(&fold.to_string()));
            assert_eq!(p.test, vec![fold.to_string()]);
        }
    }

    #[test]
    fn esc50_and_speech_commands_layouts_of_compressed_files() -> Result<()> {
        let dir =
            std::env::temp_dir().join(format!("tempest-train-layouts-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let w = |p: &Path, text: &[u8]| -> Result<()> {
            if let Some(d) = p.parent() {
                fs::create_dir_all(d).map_err(Error::io(d))?;
            }
            fs::write(p, text).map_err(Error::io(p))
        };
        // ESC-50: the CSV names .wav files; the audio folder holds their MP3s, one missing.
        let esc = dir.join("esc");
        w(
            &esc.join("meta/esc50.csv"),
            b"filename,fold,target,category,esc10,src_file,take\n1-1-A-0.wav,1,0,dog,True,1,A\n\
2-2-A-1.wav,2,1,rooster,False,2,A\n5-3-A-0.wav,5,0,dog,True,3,A\n3-4-A-1.wav,3,1,rooster,False,4,A\n",
        )?;
        for f in ["1-1-A-0", "2-2-A-1", "5-3-A-0"] {
            w(&esc.join(format!("audio/{f}.mp3")), b"x")?;
        }
        let d = Dataset::from_compressed(Layout::Esc50, &esc)?;
        assert_eq!(d.classes, vec!["dog", "rooster"]);
        assert_eq!(d.samples.len(), 3);
        assert_eq!(d.splits(), vec!["1", "2", "5"]);
        let plan = SplitPlan::esc50_fold(5);
        assert_eq!(d.select(&plan.test).len(), 1);
        assert_eq!(d.select(&plan.train).len(), 2);
        w(
            &esc.join("meta/esc50.csv"),
            b"filename,fold,category\na.wav,6,dog\n",
        )?;
        assert!(Dataset::from_compressed(Layout::Esc50, &esc).is_err());
        // Speech Commands: the lists name .wav files; _background_noise_ holds no items.
        let sc = dir.join("sc");
        for f in [
            "yes/a_nohash_0.mp3",
            "yes/b_nohash_0.mp3",
            "no/c_nohash_0.mp3",
            "no/d_nohash_0.mp3",
            "_background_noise_/n.mp3",
        ] {
            w(&sc.join(f), b"x")?;
        }
        w(&sc.join("validation_list.txt"), b"yes/b_nohash_0.wav\n")?;
        w(&sc.join("testing_list.txt"), b"no/d_nohash_0.wav\n")?;
        let d = Dataset::from_compressed(Layout::SpeechCommands, &sc)?;
        assert_eq!(d.classes, vec!["no", "yes"]);
        let split = |id: &str| {
            d.samples
                .iter()
                .find(|s| s.id == id)
                .map(|s| s.split.clone())
        };
        assert_eq!(split("yes/a_nohash_0").as_deref(), Some("train"));
        assert_eq!(split("yes/b_nohash_0").as_deref(), Some("validation"));
        assert_eq!(split("no/d_nohash_0").as_deref(), Some("test"));
        assert_eq!(d.samples.len(), 4);
        let plan = SplitPlan::standard(&d)?;
        assert_eq!(
            (plan.train.len(), plan.validation.len(), plan.test.len()),
            (1, 1, 1)
        );
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}
