//! The preparation run: one compressed file per item and variant, and a `manifest.csv`.
//!
//! A dataset in one of the known [`Layout`]s is scanned into [`Item`]s (id, label, split,
//! where the input lies); every item is encoded once per [`Variant`] (`mp3:20`, `opus:24`,
//! `jpeg:75` …), in parallel over items with rayon. Outputs are written to a temporary name and
//! renamed, so a file under its final name is complete: a rerun skips it. A corrupt or
//! unsupported input is reported with its path and reason and counted, and the run goes on.
//!
//! Output paths: `<variant dir>/<split>/<label>/<name>.<ext>`, with the variant dir `mp3-20`
//! for `mp3:20`. The manifest ([`crate::manifest`]) has one row per written or already present
//! output, sorted by id, then in the order the variants were given.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cff_encode::audio::wav_info;
use cff_encode::Limits;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::encode::{encode, load_media, Media};
use crate::files::write_atomically;
use crate::layout::{scan, Item, Layout, Source};
use crate::manifest::{self, Row};
use crate::{Error, Result, Variant};

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
        return Err(Error::unsupported(
            "variant",
            format!(
                "{v}: this build lacks the `{}` feature of tempest-data",
                v.extension().replace("jpg", "jpeg")
            ),
        ));
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
    manifest::write(&config.output, &rows)?;
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
                    media = Some(load_media(item, &config.limits, config.sample_rate)?);
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

/// The rows of an existing `manifest.csv` in `output` for variants other than `variants` whose
/// files are still there: a run that prepares other variants into the same folder keeps them
/// in the manifest it rewrites. A manifest that cannot be read keeps nothing (its files stay
/// on disk; rerunning with every variant lists them again).
fn earlier_rows(output: &Path, variants: &[Variant]) -> Vec<Row> {
    let Ok(rows) = manifest::read(output) else {
        return Vec::new();
    };
    let now: Vec<String> = variants.iter().map(Variant::to_string).collect();
    rows.into_iter()
        .filter(|r| !now.contains(&r.variant) && output.join(&r.path).is_file())
        .collect()
}
