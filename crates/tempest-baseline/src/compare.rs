//! TEMPEST against the baseline on one dataset, split and budget: the table of the `compare`
//! example and `docs/results.md`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use tempest_model::{cost, Config};
use tempest_tokenize::{tokenize, CropContext, TokenizedItem};
use tempest_train::fit::{fit, prepare_items, FitReport, Prepared, TempestLearner};
use tempest_train::{
    detect_format, init_seeded, seeded_var_builder, Dataset, SplitPlan, TrainOptions,
};

use crate::features::{FeatureConfig, Features, Featurizer, Source};
use crate::vit::{SpecMasks, Vit, VitConfig, VitLearner};
use crate::{Error, Result};

/// What to compare and with which budget.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CompareOptions {
    /// TEMPEST's configuration; the baseline gets its E_c's width and depth.
    pub tempest: Config,
    /// The budget and optimiser, the same for both models.
    pub train: TrainOptions,
    /// The baseline's features.
    pub features: FeatureConfig,
    /// Variants trained on (empty: all of the dataset's).
    pub train_variants: Vec<String>,
    /// The variant tested (`None`: the dataset's first).
    pub eval_variant: Option<String>,
    /// Folder for each model's `metrics.jsonl` (`tempest.jsonl`, `baseline.jsonl`).
    pub out: Option<PathBuf>,
    /// Test both models after every so many epochs as well as at the end (0: at the end
    /// only): each report's [`FitReport::curve`], `test_accuracy` in the metrics' epoch
    /// lines, and the best epoch of each under the table ([`Comparison::notes`]).
    pub curve_every: usize,
}

impl Default for CompareOptions {
    /// The `tiny` preset, tempest-train's default options but one pass per batch
    /// (`parallel_parts` 1: `fit` would compute TEMPEST's batches as parts at once, which
    /// the baseline's learner does not, and the two are timed side by side), AST features,
    /// 7×7 image patches.
    fn default() -> Self {
        let mut train = TrainOptions::default();
        train.parallel_parts = 1;
        CompareOptions {
            tempest: Config::tiny(),
            train,
            features: FeatureConfig::default(),
            train_variants: Vec::new(),
            eval_variant: None,
            out: None,
            curve_every: 0,
        }
    }
}

/// SpecAugment masks for the baseline that take what TEMPEST's masks take: the band mask's
/// share of the 22 long scalefactor bands as a share of the mel bins, the time mask's frames
/// (at the mean block duration of TEMPEST's test items) as spectrogram frames, and the band
/// shift's share of the long bands as a shift of mel bins. None for images or without
/// masks.
fn spec_masks(
    o: &TrainOptions,
    t_test: &Prepared<TokenizedItem>,
    features: Option<&Features>,
    config: &FeatureConfig,
) -> SpecMasks {
    let Some(f) = features.filter(|f| matches!(f.source, Source::Audio { .. })) else {
        return SpecMasks::default();
    };
    // A number of the 22 long bands as the same share of the mel bins (rounded up).
    let bins = |bands: u8| {
        (usize::from(bands) * f.rows)
            .div_ceil(tempest_tokenize::fields::LONG_BANDS)
            .min(f.rows)
    };
    let (mut seconds, mut blocks) = (0.0f64, 0usize);
    for item in t_test
        .items
        .iter()
        .flat_map(|i| i.variants.iter().map(|(_, t)| t))
    {
        seconds += item
            .positions
            .iter()
            .map(|p| f64::from(p.duration))
            .sum::<f64>();
        blocks += item.num_blocks();
    }
    let block_ms = 1000.0 * seconds / blocks.max(1) as f64;
    let cols = (f64::from(o.time_mask) * block_ms / config.fbank.frame_shift_ms).round() as usize;
    SpecMasks {
        rows: bins(o.band_mask),
        cols,
        shift: bins(o.band_shift),
    }
}

/// Whether the items are audio clips or images (the unit of "tokens per …").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// Tokens per second of audio.
    Audio,
    /// Tokens per image.
    Image,
}

/// One model's row of the table. Sizes are means over the test items.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `TEMPEST` or the baseline's name.
    pub model: String,
    /// What its tokens are.
    pub tokens: String,
    /// Tokens per second of audio, or per image.
    pub tokens_per_unit: f64,
    /// Attention entries per item, per head and layer, of the transformer over the tokens
    /// ((T + 1)² with \[CLS\]).
    pub attention: f64,
    /// Trainable parameters.
    pub params: usize,
    /// Forward FLOPs per item (matrix products).
    pub flops: f64,
    /// What preparing an item means for this model.
    pub preparation: String,
    /// Microseconds to prepare one file (reading excluded).
    pub prep_us: f64,
    /// Training items per second.
    pub train_items_per_s: f64,
    /// Inference items per second (batched).
    pub infer_items_per_s: f64,
    /// Test accuracy after the budget.
    pub accuracy: f64,
}

/// The outcome of [`compare`].
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Audio or images.
    pub media: Media,
    /// TEMPEST, then the baseline.
    pub rows: [Row; 2],
    /// Items trained on and tested (the same for both).
    pub train_items: usize,
    /// Test items.
    pub test_items: usize,
    /// The variant tested.
    pub eval_variant: String,
    /// Epochs run.
    pub epochs: usize,
    /// Files only one of the two models could read (left out for both), with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// E_t's attention entries per item (per head and layer): N blocks × L².
    pub block_attention: f64,
    /// Each model's run.
    pub reports: [FitReport; 2],
}

/// Keeps the items both models prepared (same samples, same variants).
fn keep_common(a: &mut Prepared<TokenizedItem>, b: &mut Prepared<Features>) {
    let key = |s: usize, v: &str| (s, v.to_string());
    let in_a: BTreeSet<(usize, String)> = a
        .items
        .iter()
        .flat_map(|i| i.variants.iter().map(move |(v, _)| key(i.sample, v)))
        .collect();
    let in_b: BTreeSet<(usize, String)> = b
        .items
        .iter()
        .flat_map(|i| i.variants.iter().map(move |(v, _)| key(i.sample, v)))
        .collect();
    for i in &mut a.items {
        let s = i.sample;
        i.variants.retain(|(v, _)| in_b.contains(&key(s, v)));
    }
    for i in &mut b.items {
        let s = i.sample;
        i.variants.retain(|(v, _)| in_a.contains(&key(s, v)));
    }
    a.items.retain(|i| !i.variants.is_empty());
    b.items.retain(|i| !i.variants.is_empty());
}

/// Trains TEMPEST and the baseline on `plan.train` of `dataset` with the same budget and
/// tests both on `plan.test`; measures each model's costs on the test items.
pub fn compare(
    dataset: &Dataset,
    plan: &SplitPlan,
    options: &CompareOptions,
) -> Result<Comparison> {
    let o = &options.train;
    let device = o.device.open().map_err(tempest_train::Error::from)?;
    let dtype = o.dtype.dtype(&device).map_err(tempest_train::Error::from)?;
    let format = detect_format(dataset, &options.train_variants)?;
    let mut config = o.model_config(&options.tempest, dataset.classes.len(), format)?;
    let tok = o.tokenizer(format, &config)?.eval_config()?;
    tempest_train::size_mixer(&mut config, dataset, &options.train_variants, &tok)?;
    let featurizer = Featurizer::new(&options.features)?;
    let eval_variant = match &options.eval_variant {
        Some(v) => v.clone(),
        None => dataset
            .variants()
            .into_iter()
            .next()
            .ok_or_else(|| Error::setting("dataset", "no variant"))?,
    };
    let train_idx = dataset.select(&plan.train);
    let test_idx = dataset.select(&plan.test);
    let eval_only = [eval_variant.clone()];
    let tokenize_one =
        |data: &[u8], path: &std::path::Path| tokenize(data, path, &tok, CropContext::default());
    let features_one = |data: &[u8], path: &std::path::Path| featurizer.features(data, path);
    let mut t_train = prepare_items(dataset, &train_idx, &options.train_variants, tokenize_one);
    let mut t_test = prepare_items(dataset, &test_idx, &eval_only, tokenize_one);
    let mut b_train = prepare_items(dataset, &train_idx, &options.train_variants, features_one);
    let mut b_test = prepare_items(dataset, &test_idx, &eval_only, features_one);
    let t_prep = (t_train.seconds + t_test.seconds) / (t_train.files + t_test.files).max(1) as f64;
    let b_prep = (b_train.seconds + b_test.seconds) / (b_train.files + b_test.files).max(1) as f64;
    let mut failed = Vec::new();
    for p in [
        &t_train.failed,
        &t_test.failed,
        &b_train.failed,
        &b_test.failed,
    ] {
        failed.extend(p.iter().cloned());
    }
    keep_common(&mut t_train, &mut b_train);
    keep_common(&mut t_test, &mut b_test);
    if t_test.items.is_empty() {
        return Err(Error::setting(
            "dataset",
            format!("no test item has variant {eval_variant:?} readable by both models"),
        ));
    }

    // TEMPEST.
    let classes = dataset.classes.len();
    let (model, varmap) = init_seeded(&config, &device, dtype, o.seed)?;
    // The tokenizer's band and time masks, drawn per training batch on the items tokenized
    // once above (none unless the options ask for them).
    let tempest =
        TempestLearner::new(model, device.clone()).with_masks(o.tokenizer(format, &config)?);
    let out = |name: &str| options.out.as_ref().map(|d| d.join(name));
    let t_report = fit(
        &tempest,
        &varmap,
        &t_train,
        &t_test,
        &eval_variant,
        classes,
        o,
        out("tempest.jsonl").as_deref(),
        options.curve_every,
    )?;

    // The baseline, with E_c's shape.
    let all_features = || {
        b_train
            .items
            .iter()
            .chain(&b_test.items)
            .flat_map(|i| i.variants.iter().map(|(_, f)| f))
    };
    let max_patches = all_features().map(Features::num_patches).max().unwrap_or(1);
    let patch_dim = all_features().map(Features::patch_dim).next().unwrap_or(1);
    let vit_config = VitConfig::matching(&config, patch_dim, max_patches);
    let (vb, vit_vars) = seeded_var_builder(o.seed, dtype, &device);
    let vit = VitLearner::new(Vit::new(&vit_config, vb)?, device.clone()).with_masks(spec_masks(
        o,
        &t_test,
        all_features().next(),
        &options.features,
    ));
    let b_report = fit(
        &vit,
        &vit_vars,
        &b_train,
        &b_test,
        &eval_variant,
        classes,
        o,
        out("baseline.jsonl").as_deref(),
        options.curve_every,
    )?;

    // Sizes, on the test items.
    let tokens: Vec<&TokenizedItem> = t_test.of_variant(&eval_variant).collect();
    let feats: Vec<&Features> = b_test.of_variant(&eval_variant).collect();
    let n = tokens.len().max(1) as f64;
    let m = feats.len().max(1) as f64;
    let media = match feats.first().map(|f| f.source) {
        Some(Source::Audio { .. }) => Media::Audio,
        _ => Media::Image,
    };
    let lt = config.tokens_per_block;
    let t_tokens: f64 = tokens.iter().map(|t| (t.num_blocks() * lt) as f64).sum();
    let b_tokens: f64 = feats.iter().map(|f| f.num_patches() as f64).sum();
    let (t_unit, b_unit) = match media {
        Media::Audio => (
            tokens
                .iter()
                .map(|t| {
                    t.positions
                        .iter()
                        .map(|p| f64::from(p.duration))
                        .sum::<f64>()
                })
                .sum::<f64>(),
            feats
                .iter()
                .map(|f| match f.source {
                    Source::Audio { seconds } => seconds,
                    Source::Image => 0.0,
                })
                .sum::<f64>(),
        ),
        Media::Image => (n, m),
    };
    let square = |t: usize| ((t + 1) * (t + 1)) as f64;
    let t_attention = tokens
        .iter()
        .map(|t| square(t.num_blocks() * lt))
        .sum::<f64>()
        / n;
    let b_attention = feats.iter().map(|f| square(f.num_patches())).sum::<f64>() / m;
    let t_flops = tokens
        .iter()
        .map(|t| cost::flops(&config, t.num_blocks(), t.max_block_len()).inference())
        .sum::<f64>()
        / n;
    let b_flops = feats
        .iter()
        .map(|f| vit_config.flops(f.num_patches()))
        .sum::<f64>()
        / m;
    let block_attention = tokens
        .iter()
        .map(|t| (t.num_blocks() * t.max_block_len() * t.max_block_len()) as f64)
        .sum::<f64>()
        / n;
    let what = match format {
        cff_blocks::Format::Mp3 => "MP3 frames",
        cff_blocks::Format::OggOpus => "Opus packets",
        cff_blocks::Format::Jpeg => "JPEG MCUs",
        _ => "blocks",
    };
    let (baseline, prep) = match media {
        Media::Audio => ("AST (log-mel patches)", "decode + log-mel"),
        Media::Image => ("ViT (pixel patches)", "decode + pixels"),
    };
    let patch = match media {
        Media::Audio => options.features.audio_patch,
        Media::Image => options.features.image_patch,
    };
    let rows = [
        Row {
            model: "TEMPEST".into(),
            tokens: what.into(),
            tokens_per_unit: t_tokens / t_unit.max(1e-9),
            attention: t_attention,
            params: cost::params(&config).total(),
            flops: t_flops,
            preparation: "parse blocks + tokenize".into(),
            prep_us: 1e6 * t_prep,
            train_items_per_s: t_report.train_items_per_s(),
            infer_items_per_s: t_report.test_items_per_s(),
            accuracy: t_report.test.accuracy,
        },
        Row {
            model: baseline.into(),
            tokens: format!("{0}x{0} patches, stride {1}", patch.size, patch.stride),
            tokens_per_unit: b_tokens / b_unit.max(1e-9),
            attention: b_attention,
            params: vit_config.params(),
            flops: b_flops,
            preparation: prep.into(),
            prep_us: 1e6 * b_prep,
            train_items_per_s: b_report.train_items_per_s(),
            infer_items_per_s: b_report.test_items_per_s(),
            accuracy: b_report.test.accuracy,
        },
    ];
    Ok(Comparison {
        media,
        rows,
        train_items: t_train.items.len(),
        test_items: tokens.len(),
        eval_variant,
        epochs: t_report.epochs.len(),
        failed,
        block_attention,
        reports: [t_report, b_report],
    })
}

impl Comparison {
    /// The table: one row per model, then the ratios TEMPEST/baseline, as Markdown.
    pub fn table(&self) -> String {
        let unit = match self.media {
            Media::Audio => "tokens/s of audio",
            Media::Image => "tokens/image",
        };
        let mut s = format!(
            "| model | tokens | {unit} | attention entries/item | parameters | GFLOPs/item | data prep µs/item | training items/s | inference items/s | accuracy |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n"
        );
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {:.1} | {:.0} | {} | {:.4} | {:.0} ({}) | {:.1} | {:.1} | {:.2} % |\n",
                r.model,
                r.tokens,
                r.tokens_per_unit,
                r.attention,
                r.params,
                r.flops / 1e9,
                r.prep_us,
                r.preparation,
                r.train_items_per_s,
                r.infer_items_per_s,
                100.0 * r.accuracy
            ));
        }
        let [a, b] = &self.rows;
        let ratio = |x: f64, y: f64| {
            if y > 0.0 {
                format!("{:.2}x", x / y)
            } else {
                "-".into()
            }
        };
        s.push_str(&format!(
            "| TEMPEST/baseline | | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            ratio(a.tokens_per_unit, b.tokens_per_unit),
            ratio(a.attention, b.attention),
            ratio(a.params as f64, b.params as f64),
            ratio(a.flops, b.flops),
            ratio(a.prep_us, b.prep_us),
            ratio(a.train_items_per_s, b.train_items_per_s),
            ratio(a.infer_items_per_s, b.infer_items_per_s),
            ratio(a.accuracy, b.accuracy),
        ));
        s
    }

    /// Lines under the table: what was trained and tested, E_t's in-block attention, files
    /// left out.
    pub fn notes(&self) -> String {
        let mut s = format!(
            "{} training items, {} test items (variant {}), {} epochs each, the same batches, optimiser and schedule.\n",
            self.train_items, self.test_items, self.eval_variant, self.epochs
        );
        s.push_str(&format!(
            "Attention is per head and layer over the tokens + [CLS]; TEMPEST's E_t also attends inside each block: N x L^2 = {:.0} entries per item.\n",
            self.block_attention
        ));
        let [t, b] = &self.reports;
        s.push_str(&format!(
            "Wall time: TEMPEST trained in {:.0} s and tested in {:.1} s, {} trained in {:.0} s and tested in {:.1} s.\n",
            t.train_seconds(),
            t.test_seconds,
            self.rows[1].model,
            b.train_seconds(),
            b.test_seconds
        ));
        for (row, report) in self.rows.iter().zip(&self.reports) {
            if let Some(s2) = curve_summary(&report.curve) {
                s.push_str(&format!(
                    "{}'s accuracy on the tested split by epoch: {s2}\n",
                    row.model
                ));
            }
        }
        if !self.failed.is_empty() {
            s.push_str(&format!(
                "{} files left out (unreadable by one model or both):\n",
                self.failed.len()
            ));
            for (p, why) in self.failed.iter().take(10) {
                s.push_str(&format!("  {}: {why}\n", p.display()));
            }
        }
        s
    }
}

/// `best 46.2 % at epoch 24; 40.1 (8), 46.2 (24), ... ` of a curve, or `None` when empty.
fn curve_summary(curve: &[(usize, f64)]) -> Option<String> {
    let best = curve
        .iter()
        .copied()
        .fold(None, |b: Option<(usize, f64)>, p| match b {
            Some(q) if q.1 >= p.1 => Some(q),
            _ => Some(p),
        })?;
    let points: Vec<String> = curve
        .iter()
        .map(|(e, a)| format!("{:.1} ({e})", 100.0 * a))
        .collect();
    Some(format!(
        "best {:.2} % at epoch {}; {}",
        100.0 * best.1,
        best.0,
        points.join(", ")
    ))
}

#[cfg(test)]
mod curve_tests {
    #[test]
    fn a_curve_names_its_first_best_epoch() {
        let s = super::curve_summary(&[(2, 0.25), (4, 0.5), (6, 0.5), (8, 0.375)]);
        assert_eq!(
            s.as_deref(),
            Some("best 50.00 % at epoch 4; 25.0 (2), 50.0 (4), 50.0 (6), 37.5 (8)")
        );
        assert_eq!(super::curve_summary(&[]), None);
    }
}
