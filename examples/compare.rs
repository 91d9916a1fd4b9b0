//! TEMPEST against an AST/ViT baseline on the same files, split and budget: one table.
//!
//! ```text
//! cargo run --release --example compare -- (--data PREPARED_DIR | --layout L --input DIR)
//!     [--variants jpeg:75 | mp3:32,...] [--eval-variant NAME] [--preset tiny|small|paper]
//!     [--epochs N] [--batch B] [--lr LR] [--seed S] [--patch 7|4] [--max-train-items N]
//!     [--out DIR] [--no-progress] [TEMPEST's tokenizer and training flags of `train`:
//!     --tokens T, --block-bytes L, --crop N, --lambda X, --label-smoothing X,
//!     --device cpu|cuda|cuda:N, --dtype f32|bf16, ...]
//! ```
//!
//! `--layout` (`folder`, `speechcommands`, `esc50`, `mnist`) reads a raw layout as the
//! `train` example does (WAV/PNG/IDX inputs are prepared in `--variants` into `OUT/data`).
//! Both models are trained on the training split with the same batches, optimiser, schedule
//! and epochs, and tested on the test split; the table has one row per model and the ratios
//! TEMPEST/baseline. See docs/results.md. `--help` lists every flag with its meaning and
//! default.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{ArgGroup, Parser};
use tempest::tempest_baseline::{compare, CompareOptions};
use tempest::tempest_data::{parse_variants, DataSource, Layout, Variant};
use tempest::tempest_model::Config;
use tempest::tempest_train::{self, Recipe, SplitPlan};

#[path = "common/data_args.rs"]
mod data_args;
use data_args::DataArgs;
#[path = "common/train_args.rs"]
mod train_args;

/// TEMPEST against an AST/ViT baseline on the same files, split and budget: one table.
///
/// Both models are trained on the training split with the same batches, optimiser, schedule
/// and epochs, and tested on the test split; the table has one row per model and the ratios
/// TEMPEST/baseline. What the command line leaves open comes from the recipe `train` uses for
/// the data. The training flags apply to both models, as do --label-smoothing and --mixup;
/// the tokenizer's (--tokens, --block-bytes, --crop...) and --lambda to TEMPEST.
#[derive(Debug, Parser)]
#[command(name = "compare", version, args_override_self = true)]
#[command(group(ArgGroup::new("source").required(true).args(["data", "layout"])))]
struct Cli {
    #[command(flatten)]
    source: DataArgs,
    /// Variants to prepare raw inputs in and train on, e.g. jpeg:75 or mp3:32 [default:
    /// jpeg:75 for mnist; for audio train's ten MP3 bitrates (16 to 40 kbps)]
    #[arg(long, value_name = "LIST", value_parser = parse_variants)]
    variants: Option<::std::vec::Vec<Variant>>,
    /// The variant tested [default: mp3:32 where trained on, else the first variant trained
    /// on]
    #[arg(long, value_name = "NAME")]
    eval_variant: Option<String>,
    /// TEMPEST's model preset: tiny, small or paper [default: the data's recipe, as train's:
    /// audio tiny with label smoothing 0.1, the flatten mixer and a convolution over five
    /// frames, images tiny with 3 E_c layers]
    #[arg(long, value_name = "NAME", value_parser = Config::named)]
    preset: Option<Config>,
    /// Side of the baseline's square image patches, e.g. 7 or 4 [default: 7]
    #[arg(long, value_name = "P")]
    patch: Option<usize>,
    /// Keep at most N training items [default: all]
    #[arg(long, value_name = "N")]
    max_train_items: Option<usize>,
    /// Keep this fraction of each class's training items, in (0, 1] (the few-labels setting,
    /// e.g. 0.1: ⌈0.1·n⌉ of a class's n, spread evenly over them); before --max-train-items
    /// [default: all]
    #[arg(long, value_name = "F")]
    train_fraction: Option<f64>,
    /// Test both models on this split instead of the test split (e.g. val: choose settings
    /// for both models on validation, then test once) [default: the test split]
    #[arg(long, value_name = "SPLIT")]
    test_split: Option<String>,
    /// Also test both models after every N epochs (the current weights), to see where each
    /// peaks over the schedule; the accuracies go to the metrics' epoch lines and the best
    /// epoch of each under the table. Not counted in the training time [default: 0, at the
    /// end only]
    #[arg(long, value_name = "N", default_value_t = 0)]
    curve_every: usize,
    /// Where the metrics (and prepared data) go
    #[arg(long, value_name = "DIR", default_value = "runs/compare")]
    out: PathBuf,
    #[command(flatten)]
    train: train_args::TrainArgs,
}

/// The comparison's options before the data is known: one pass per batch for both models.
fn defaults() -> CompareOptions {
    CompareOptions::default()
}

/// `run`'s choices where the command line leaves them open: the recipe `train` would use for
/// the data (`tempest_train::Recipe`: for audio ten MP3 bitrates, 80 epochs, batches of 16,
/// 5e-4, `tiny` with label smoothing 0.1, the flatten mixer and a convolution over five
/// frames; for images 30 epochs, batches of 32, 2e-3, 8 bytes per MCU, `tiny` with 3 E_c
/// layers), so that `compare` and `train` train TEMPEST alike. The
/// baseline gets the same budget and optimiser, and E_c's width and depth.
/// (`Recipe::apply` also sets the evaluation variants, which `compare` does not read: it
/// tests one variant, `CompareOptions::eval_variant`.)
fn apply_recipe(o: &mut CompareOptions, recipe: &Recipe, preset: Option<Config>) {
    recipe.apply(&mut o.train);
    o.tempest = preset.unwrap_or_else(|| recipe.config.clone());
}

/// The variant tested where --eval-variant is not given: MP3 at 32 kbps where it was trained
/// on (docs/results.md's comparisons), else the first variant trained on.
fn tested_variant(trained: &[String]) -> Option<String> {
    trained
        .iter()
        .find(|v| v.as_str() == "mp3:32")
        .or(trained.first())
        .cloned()
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    if cli.train.eval_every.is_some() {
        return Err("--eval-every: compare tests each model once, after its last epoch".into());
    }
    let mut o = defaults();
    if let Some(p) = cli.patch {
        o.features = o.features.with_image_patch(p);
    }
    let variants = cli.variants;
    let (out, max_train) = (cli.out, cli.max_train_items);
    let start = Instant::now();
    let source = cli
        .source
        .source()
        .ok_or("give --data DIR, or --layout L with --input DIR")?;
    // Raw audio is prepared in the audio recipe's bitrates, MNIST in JPEG at quality 75.
    let v = match (&variants, &source) {
        (Some(v), _) => v.clone(),
        (
            None,
            DataSource::Raw {
                layout: Layout::Mnist,
                ..
            },
        ) => vec![Variant::jpeg_quality(75)],
        (None, DataSource::Raw { layout, input }) => Recipe::for_layout(*layout, input)?.variants,
        (None, DataSource::Prepared(_)) => Vec::new(),
    };
    let mut dataset = source
        .open(&out.join("data"), &v, !cli.train.no_progress)?
        .0;
    if let Some(vs) = &variants {
        o.train_variants = vs.iter().map(ToString::to_string).collect();
    }
    let trained = if o.train_variants.is_empty() {
        dataset.variants()
    } else {
        o.train_variants.clone()
    };
    let format = tempest_train::detect_format(&dataset, &trained)?;
    apply_recipe(&mut o, &Recipe::for_format(format, &trained)?, cli.preset);
    // The training flags shared with `train` (--epochs, --tokens, --block-bytes, --lambda…)
    // override the recipe.
    cli.train.apply(&mut o.train);
    o.eval_variant = cli.eval_variant.or_else(|| tested_variant(&trained));
    let mut plan = SplitPlan::standard(&dataset)?;
    if let Some(split) = cli.test_split {
        let splits = dataset.splits();
        if !splits.contains(&split) || plan.train.contains(&split) {
            return Err(format!(
                "--test-split {split}: not a split of the data apart from training (splits \
                 {splits:?}, training on {:?})",
                plan.train
            )
            .into());
        }
        println!("testing on split {split} (--test-split)");
        plan.test = vec![split];
    }
    if let Some(f) = cli.train_fraction {
        let kept = dataset.keep_fraction_per_class(&plan.train, f)?;
        println!("--train-fraction {f}: {kept} training items kept");
    }
    if let Some(n) = max_train {
        dataset.truncate_splits(&plan.train, n);
    }
    o.out = Some(out.clone());
    o.curve_every = cli.curve_every;
    let cmp = compare(&dataset, &plan, &o)?;
    println!("{}", cmp.table());
    print!("{}", cmp.notes());
    println!(
        "{:.0} s in all; metrics in {}",
        start.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli: Cli = train_args::parse_with(|cmd| {
        train_args::TrainArgs::show_defaults(
            cmd,
            &defaults().train,
            &[
                (
                    "epochs",
                    "the data's recipe, as train's: audio 80, images 30",
                ),
                ("batch", "audio 16, images 32"),
                ("lr", "audio 0.0005, images 0.002"),
                ("band_mask", "audio 5, else 0"),
                ("time_mask", "audio 5, else 0"),
                ("ordinal", "audio all, else none"),
                ("context_conv", "audio 5, else 0"),
                (
                    "block_bytes",
                    "images 8; audio the model's, at most its max_block_bytes",
                ),
            ],
        )
    });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}
