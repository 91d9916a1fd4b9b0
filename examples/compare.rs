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
use tempest::tempest_train::SplitPlan;

#[path = "common/data_args.rs"]
mod data_args;
use data_args::DataArgs;
#[path = "common/train_args.rs"]
mod train_args;

/// TEMPEST against an AST/ViT baseline on the same files, split and budget: one table.
///
/// Both models are trained on the training split with the same batches, optimiser, schedule
/// and epochs, and tested on the test split; the table has one row per model and the ratios
/// TEMPEST/baseline. The training flags apply to both models; the tokenizer's (--tokens,
/// --block-bytes, --crop...) and the model's (--lambda, --label-smoothing) to TEMPEST.
#[derive(Debug, Parser)]
#[command(name = "compare", version, args_override_self = true)]
#[command(group(ArgGroup::new("source").required(true).args(["data", "layout"])))]
struct Cli {
    #[command(flatten)]
    source: DataArgs,
    /// Variants to prepare raw inputs in and train on, e.g. jpeg:75 or mp3:32 [default:
    /// jpeg:75 for mnist, mp3:32 otherwise]
    #[arg(long, value_name = "LIST", value_parser = parse_variants)]
    variants: Option<::std::vec::Vec<Variant>>,
    /// The variant evaluated and tested [default: the first of --variants, else the
    /// dataset's first]
    #[arg(long, value_name = "NAME")]
    eval_variant: Option<String>,
    /// TEMPEST's model preset: tiny, small or paper [default: the comparison's, tiny]
    #[arg(long, value_name = "NAME", value_parser = Config::named)]
    preset: Option<Config>,
    /// Side of the baseline's square image patches, e.g. 7 or 4 [default: 7]
    #[arg(long, value_name = "P")]
    patch: Option<usize>,
    /// Keep at most N training items [default: all]
    #[arg(long, value_name = "N")]
    max_train_items: Option<usize>,
    /// Where the metrics (and prepared data) go
    #[arg(long, value_name = "DIR", default_value = "runs/compare")]
    out: PathBuf,
    #[command(flatten)]
    train: train_args::TrainArgs,
}

/// The comparison's options where the command line leaves them open.
fn defaults() -> CompareOptions {
    let mut o = CompareOptions::default();
    o.train.epochs = 2;
    o.train.batch_size = 32;
    o.train.lr = 2e-3;
    o
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let mut o = defaults();
    // The training flags shared with `train` (--epochs, --tokens, --block-bytes, --lambda…).
    cli.train.apply(&mut o.train);
    if let Some(p) = cli.preset {
        o.tempest = p;
    }
    if let Some(p) = cli.patch {
        o.features = o.features.with_image_patch(p);
    }
    o.eval_variant = cli.eval_variant;
    let variants = cli.variants;
    let (out, max_train) = (cli.out, cli.max_train_items);
    let start = Instant::now();
    let source = cli
        .source
        .source()
        .ok_or("give --data DIR, or --layout L with --input DIR")?;
    let v = variants.clone().unwrap_or(match source {
        DataSource::Raw {
            layout: Layout::Mnist,
            ..
        } => vec![Variant::jpeg_quality(75)],
        _ => vec![Variant::Mp3(32)],
    });
    let mut dataset = source.open(&out.join("data"), &v, o.train.progress)?.0;
    if let Some(vs) = &variants {
        o.train_variants = vs.iter().map(ToString::to_string).collect();
        if o.eval_variant.is_none() {
            o.eval_variant = o.train_variants.first().cloned();
        }
    }
    let plan = SplitPlan::standard(&dataset)?;
    if let Some(n) = max_train {
        dataset.truncate_splits(&plan.train, n);
    }
    o.out = Some(out.clone());
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
        train_args::TrainArgs::show_defaults(cmd, &defaults().train, &[])
    });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}
