//! Evaluation: a model on the files of some samples, one variant at a time or with their
//! probabilities averaged ([`evaluate`], [`EvalReport`]), and the format of a dataset.

use std::collections::BTreeMap;
use std::fs;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tempest_model::Tempest;
use tempest_tokenize::{Entry, HostBatch, Loader, LoaderConfig, LoaderStats, TokenizerConfig};

use crate::metrics::{Metrics, Tally};
use crate::options::EvalVariants;
use crate::{Dataset, Error, Result};

/// One evaluation.
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// Metrics per variant evaluated.
    pub variants: Vec<(String, Metrics)>,
    /// Mean accuracy over the variants.
    pub accuracy: f64,
    /// Files read and skipped.
    pub stats: LoaderStats,
    /// Skipped files: path → reason.
    pub skipped: BTreeMap<String, String>,
    /// Items per second.
    pub items_per_s: f64,
}

impl EvalReport {
    pub(crate) fn to_json(&self) -> serde_json::Value {
        json!({
            "accuracy": self.accuracy,
            "items_per_s": self.items_per_s,
            "skipped": self.stats.files_skipped(),
            "variants": self.variants.iter().map(|(v, m)| json!({"variant": v, "metrics": m})).collect::<Vec<_>>(),
        })
    }
}

pub(crate) fn bar(progress: bool, len: u64, what: String) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>14} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {prefix}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what);
    pb
}

/// The format a run reads: that of the first readable file among the `samples` whose variant
/// is one of `variants` (any variant when `variants` is empty), by `cff_blocks::detect` on its
/// first bytes (the signatures are at most 4 bytes long). A prepared folder may hold MP3 and
/// Opus variants side by side: the format is the trained variants', not the folder's first.
pub fn detect_format(dataset: &Dataset, variants: &[String]) -> Result<cff_blocks::Format> {
    variant_formats(dataset, variants)?
        .first()
        .map(|(_, f)| *f)
        .ok_or_else(|| Error::setting("dataset", "no file of a known format"))
}

/// The format of each variant among `variants` (every variant when empty), in the order
/// their first readable file comes in the samples: [`detect_format`]'s probe on the first
/// readable file of each variant (a variant names one encoding, so one file says its
/// format). A run over several formats ([`crate::pretrain()`]) reads them all; an error
/// where not one file is readable.
pub fn variant_formats(
    dataset: &Dataset,
    variants: &[String],
) -> Result<Vec<(String, cff_blocks::Format)>> {
    use std::io::Read;
    let mut found: Vec<(String, cff_blocks::Format)> = Vec::new();
    for (v, p) in chosen_files(dataset, variants) {
        if found.iter().any(|(name, _)| name == v) {
            continue;
        }
        let mut head = Vec::with_capacity(16);
        let read = fs::File::open(p).and_then(|f| f.take(16).read_to_end(&mut head));
        if let (Ok(_), Ok(format)) = (read, cff_blocks::detect(&head)) {
            found.push((v.clone(), format));
        }
    }
    if found.is_empty() {
        return Err(Error::setting("dataset", "no file of a known format"));
    }
    Ok(found)
}

/// The distinct formats of [`variant_formats`], in first-seen order.
pub fn detect_formats(dataset: &Dataset, variants: &[String]) -> Result<Vec<cff_blocks::Format>> {
    Ok(distinct_formats(&variant_formats(dataset, variants)?))
}

/// The formats of [`variant_formats`]' pairs, each once, in their order.
pub(crate) fn distinct_formats(pairs: &[(String, cff_blocks::Format)]) -> Vec<cff_blocks::Format> {
    let mut formats = Vec::new();
    for (_, f) in pairs {
        if !formats.contains(f) {
            formats.push(*f);
        }
    }
    formats
}

/// The files of `dataset`'s samples, in order, with their variant, whose variant is one of
/// `variants` (any variant when `variants` is empty).
fn chosen_files<'a>(
    dataset: &'a Dataset,
    variants: &'a [String],
) -> impl Iterator<Item = (&'a String, &'a std::path::Path)> + 'a {
    dataset.samples.iter().flat_map(move |s| {
        s.variants
            .iter()
            .filter(move |(v, _)| variants.is_empty() || variants.contains(v))
            .map(|(v, p)| (v, p.as_path()))
    })
}

/// Files [`size_mixer`] tokenizes to find the longest block.
pub const MIX_SIZE_FILES: usize = 32;

/// The longest block, in ids, of up to `files` readable files of `dataset` (spread evenly
/// over its samples; variants among `variants`, any when empty) tokenized by `tokenizer`'s
/// evaluation configuration; 0 when none could be read.
pub fn longest_block(
    dataset: &Dataset,
    variants: &[String],
    tokenizer: &TokenizerConfig,
    files: usize,
) -> Result<usize> {
    let tok = tokenizer
        .eval_config()
        .map_err(|e| Error::setting("tokenizer", e.to_string()))?;
    let paths: Vec<&std::path::Path> = chosen_files(dataset, variants).map(|(_, p)| p).collect();
    let step = paths.len().div_ceil(files.max(1)).max(1);
    let mut longest = 0;
    for p in paths.iter().step_by(step) {
        let Ok(data) = fs::read(p) else { continue };
        if let Ok(item) = tempest_tokenize::tokenize(&data, p, &tok, Default::default()) {
            longest = longest.max(item.max_block_len());
        }
    }
    Ok(longest)
}

/// Gives a flatten mixer ([`tempest_model::MixerKind::Flatten`]) maps for the positions the
/// data's blocks have rather than for all `max_block_bytes`: unless `config.mix_positions`
/// is set, it becomes the longest block of [`MIX_SIZE_FILES`] files ([`longest_block`])
/// rounded up to a multiple of 8 (MP3 frames of 16 kHz mono audio as `fields+energy`: 39 or
/// 56 ids, so 56 positions instead of 512). Blocks longer than that in other files still
/// work: their later positions reach the tokens through the mean alone. Other mixers are
/// left as they are.
pub fn size_mixer(
    config: &mut tempest_model::Config,
    dataset: &Dataset,
    variants: &[String],
    tokenizer: &TokenizerConfig,
) -> Result<()> {
    if config.mixer != tempest_model::MixerKind::Flatten || config.mix_positions != 0 {
        return Ok(());
    }
    let longest = longest_block(dataset, variants, tokenizer, MIX_SIZE_FILES)?;
    if longest > 0 {
        config.mix_positions = longest.next_multiple_of(8).min(config.max_block_bytes);
    }
    Ok(())
}

/// Evaluates `model` on the samples `indices` of `dataset`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &Tempest,
    dataset: &Dataset,
    indices: &[usize],
    variants: &EvalVariants,
    tokenizer: &TokenizerConfig,
    batch_size: usize,
    workers: usize,
    progress: bool,
) -> Result<EvalReport> {
    let device = model.device().clone();
    let names = variants.names(dataset);
    let classes = model.config().num_classes;
    let start = Instant::now();
    let mut out = EvalReport {
        variants: Vec::new(),
        accuracy: 0.0,
        stats: LoaderStats::default(),
        skipped: BTreeMap::new(),
        items_per_s: 0.0,
    };
    let mut total_items = 0u64;
    // Ensemble: per item, the sum of its class probabilities over the variants read and
    // how many there were.
    let ensemble = matches!(variants, EvalVariants::Ensemble(_));
    let mut sums: BTreeMap<u64, (u32, Vec<f64>, u32)> = BTreeMap::new();
    for name in &names {
        let entries: Vec<Entry> = indices
            .iter()
            .filter_map(|&i| {
                let s = dataset.samples.get(i)?;
                Some(Entry {
                    path: s.variant(name)?.to_path_buf(),
                    label: s.label,
                    item: i as u64,
                })
            })
            .collect();
        if entries.is_empty() {
            return Err(Error::setting(
                "eval variants",
                format!("no item of the split has variant {name:?}"),
            ));
        }
        let mut tally = Tally::new(classes);
        variant_logits(
            model,
            &device,
            entries,
            name,
            tokenizer,
            batch_size,
            workers,
            progress,
            &mut out,
            |item, label, row| {
                if ensemble {
                    let slot = sums
                        .entry(item)
                        .or_insert_with(|| (label, vec![0.0; row.len()], 0));
                    add_probabilities(&mut slot.1, row);
                    slot.2 += 1;
                } else {
                    tally.add(label as usize, row);
                }
            },
        )?;
        if !ensemble {
            total_items += tally.items();
            out.variants.push((name.clone(), tally.metrics()));
        }
    }
    if ensemble {
        let mut tally = Tally::new(classes);
        for (label, sum, n) in sums.values() {
            // log of the mean probability: its softmax is the mean itself, so the tally's
            // argmax, top-5 and cross-entropy read the ensemble's prediction.
            let row: Vec<f32> = sum
                .iter()
                .map(|p| (p / f64::from(*n)).max(1e-30).ln() as f32)
                .collect();
            tally.add(*label as usize, &row);
        }
        total_items += tally.items();
        out.variants
            .push((format!("ensemble({})", names.join("+")), tally.metrics()));
    }
    out.accuracy = out.variants.iter().map(|(_, m)| m.accuracy).sum::<f64>()
        / out.variants.len().max(1) as f64;
    out.items_per_s = total_items as f64 / start.elapsed().as_secs_f64().max(1e-9);
    if total_items == 0 {
        return Err(Error::Empty {
            split: "evaluation".into(),
            skipped: out.stats.files_skipped(),
        });
    }
    Ok(out)
}

/// Adds the softmax of `logits` to `sum`.
pub(crate) fn add_probabilities(sum: &mut [f64], logits: &[f32]) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    for (s, &x) in sum.iter_mut().zip(logits) {
        *s += (x as f64 - max).exp() / z;
    }
}

/// Forwards every entry of one variant (batches `parts` at a time on rayon's threads, as
/// training splits its batches) and hands each item's logits to `each` in order: (dataset
/// index, label, logits). Skipped files and loader counts go into `out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn variant_logits(
    model: &Tempest,
    device: &Device,
    entries: Vec<Entry>,
    name: &str,
    tokenizer: &TokenizerConfig,
    batch_size: usize,
    workers: usize,
    progress: bool,
    out: &mut EvalReport,
    mut each: impl FnMut(u64, u32, &[f32]),
) -> Result<()> {
    let plan: Vec<Vec<usize>> = (0..entries.len())
        .collect::<Vec<_>>()
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let entries = Arc::new(entries);
    let pb = bar(progress, entries.len() as u64, format!("eval {name}"));
    let mut loader = Loader::new(
        Arc::clone(&entries),
        plan,
        tokenizer.clone(),
        &LoaderConfig::default().with_workers(workers),
    );
    let parts = tempest_model::auto_parts(device);
    loop {
        let group: Vec<_> = loader.by_ref().take(parts).collect();
        if group.is_empty() {
            break;
        }
        for lb in &group {
            for s in &lb.skipped {
                if let Some(e) = entries.get(s.entry) {
                    out.skipped
                        .insert(e.path.display().to_string(), s.message.clone());
                }
            }
            pb.inc((lb.entries.len() + lb.skipped.len()) as u64);
        }
        let host: Vec<(Vec<usize>, HostBatch)> = group
            .into_iter()
            .filter_map(|lb| Some((lb.entries, lb.batch?)))
            .collect();
        let forward = |hb: &HostBatch| -> Result<Vec<Vec<f32>>> {
            let batch = hb.to_tensors(device)?;
            Ok(model
                .forward(&batch, false)?
                .logits
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?)
        };
        let logits: Vec<Result<Vec<Vec<f32>>>> = if host.len() > 1 {
            use rayon::prelude::*;
            host.par_iter().map(|(_, hb)| forward(hb)).collect()
        } else {
            host.iter().map(|(_, hb)| forward(hb)).collect()
        };
        for ((ids, hb), logits) in host.iter().zip(logits) {
            for ((row, label), id) in logits?.iter().zip(&hb.labels).zip(ids) {
                let item = entries.get(*id).map_or(*id as u64, |e| e.item);
                each(item, *label, row);
            }
        }
    }
    pb.finish_and_clear();
    merge_stats(&mut out.stats, loader.stats());
    Ok(())
}

pub(crate) fn merge_stats(into: &mut LoaderStats, from: &LoaderStats) {
    into.files_used += from.files_used;
    into.input_bytes += from.input_bytes;
    into.truncated_blocks += from.truncated_blocks;
    for (r, n) in &from.skipped {
        *into.skipped.entry(r).or_default() += n;
    }
}
