//! Training and evaluating TEMPEST from compressed files: datasets, the training loop,
//! metrics, resumable checkpoints.
//!
//! - [`Dataset`], [`SplitPlan`], [`DataSource`]: the items and splits, from tempest-data
//!   (re-exported here, as the examples use them beside training).
//! - [`fit_loop`]: the one training loop; [`train()`] and [`fit()`] drive it ([`Driver`]).
//! - [`train()`]: AdamW ([`optim::AdamW`], state saved with the weights), warm-up + cosine,
//!   gradient-norm clipping, gradient accumulation, label smoothing and λ overrides, seeded
//!   initialisation ([`init_seeded`]), one variant per item and epoch, evaluation every epoch,
//!   best and resumable checkpoints written atomically, Ctrl-C saves, JSON-lines metrics.
//! - [`evaluate`]: accuracy, top-5, per-class accuracy, confusion matrix and loss
//!   ([`Metrics`]) on one named variant or averaged over several.
//! - `plots` (default feature `plots`): `curves.png` and `confusion.png` in the run folder,
//!   after every epoch.
//! - [`cross_validate_esc50`]: ESC-50's five folds, mean and standard deviation.
//! - [`fit()`]: the same loop, optimiser, schedule and metrics for any [`Learner`] on items
//!   prepared once ([`prepare_items`]): two models on one split and budget (the `compare`
//!   example).
//! - [`pretrain()`]: self-supervised masked block modelling on unlabelled files, on the same
//!   loop; [`init_from_pretrained`] takes its weights over for fine-tuning (`train --init`).
//! - [`train_step`]: one step of that loop on one batch, for benchmarks and the GPU check.
//! - `--device`/`--dtype` ([`TrainOptions::device`], [`TrainOptions::dtype`]): where and in
//!   which precision; checkpoints do not depend on either.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod dist;
mod driver;
mod error;
mod evaluate;
mod feed;
pub mod fit;
mod fused_adamw;
mod init;
pub mod metrics;
pub mod optim;
mod options;
#[cfg(feature = "plots")]
pub mod plots;
pub mod pretrain;
pub mod recipe;
mod report;
mod train;

pub use checkpoint::{Loaded, TrainState};
pub use error::{Error, Result};
pub use evaluate::{
    detect_format, detect_formats, evaluate, longest_block, size_mixer, variant_formats,
    EvalReport, MIX_SIZE_FILES,
};
pub use fit::{
    fit, fit_loop, prepare_items, Driver, FitReport, Gradients, Learner, Outcome, Prepared,
    TempestLearner,
};
pub use init::{init_seeded, seeded_var_builder};
pub use metrics::{mean_std, EpochSums, Metrics, Tally};
pub use optim::{train_step, AdamW, AdamWConfig, CosineSchedule};
pub use options::{default_tokens, default_tokens_for, EvalVariants, TrainOptions};
pub use pretrain::{init_from_pretrained, pretrain, InitReport, PretrainReport};
pub use recipe::{
    ImageRecipe, Recipe, AUDIO_BITRATES, AUDIO_CONTEXT_CONV, AUDIO_ENSEMBLE, AUDIO_ORDINAL,
};
pub use report::RunReport;
pub use tempest_data::{holds_images, DataSource, Dataset, Sample, SplitPlan};
pub use train::{install_ctrl_c_handler, train};

/// The result of ESC-50 cross-validation.
#[derive(Debug, Clone)]
pub struct CrossValidation {
    /// Test accuracy of each fold, in fold order.
    pub folds: Vec<(u32, f64)>,
    /// Mean over the folds.
    pub mean: f64,
    /// Standard deviation over the folds.
    pub std: f64,
    /// Each fold's run.
    pub runs: Vec<RunReport>,
}

/// ESC-50 five-fold cross-validation: for each fold `k` in `folds` (1–5), a run in
/// `run_dir/fold-k` that trains on the four other folds and tests on fold `k`; then the mean
/// and standard deviation of the test accuracies. An interrupted fold stops the whole
/// cross-validation (rerun with `resume`: completed folds are resumed at their end, which
/// only re-runs their final test).
pub fn cross_validate_esc50(
    dataset: &Dataset,
    folds: &[u32],
    config: &tempest_model::Config,
    options: &TrainOptions,
    run_dir: &std::path::Path,
    resume: bool,
) -> Result<CrossValidation> {
    let mut out = CrossValidation {
        folds: Vec::new(),
        mean: 0.0,
        std: 0.0,
        runs: Vec::new(),
    };
    for &k in folds {
        let plan = SplitPlan::esc50_fold(k);
        let dir = run_dir.join(format!("fold-{k}"));
        let resume_fold = resume && checkpoint::resolve(&dir.join("last")).is_some();
        let run = train(dataset, &plan, config, options, &dir, resume_fold)?;
        let interrupted = run.interrupted;
        if let Some(t) = &run.test {
            out.folds.push((k, t.accuracy));
        }
        out.runs.push(run);
        if interrupted {
            break;
        }
    }
    let acc: Vec<f64> = out.folds.iter().map(|f| f.1).collect();
    (out.mean, out.std) = mean_std(&acc);
    Ok(out)
}
