//! Evaluates a checkpoint on a split of a dataset.
//!
//! ```text
//! cargo run --release --example eval -- --checkpoint RUN_DIR|CKPT_DIR
//!     (--data PREPARED_DIR | --layout L --input DIR) [--split test] [--fold K]
//!     [--eval-variant mp3:32|all|first|mp3:20+mp3:32|ensemble] [--batch B] [--workers W]
//!     [--confusion FILE.png] [--device cpu|cuda|cuda:N] [--dtype f32|bf16]
//! ```
//!
//! Prints per-variant accuracy (top-5 with more than 5 classes) and per-class accuracy; the
//! last line is `<split> accuracy: 0.XXXX` (`test accuracy: 0.XXXX` by default). `--confusion` draws the (first variant's) confusion
//! matrix as a PNG. `--help` lists every flag with its meaning and default.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser};
use tempest::tempest_model::{DeviceChoice, Precision};
use tempest::tempest_train::{self, checkpoint, EvalVariants};

#[path = "common/data_args.rs"]
mod data_args;
use data_args::DataArgs;

/// Evaluates a checkpoint on a split of a dataset.
///
/// Prints per-variant accuracy (top-5 with more than 5 classes) and per-class accuracy; the
/// last line is `<split> accuracy: 0.XXXX`.
#[derive(Debug, Parser)]
#[command(name = "eval", version, args_override_self = true)]
#[command(group(ArgGroup::new("source").required(true).args(["data", "layout"])))]
struct Cli {
    /// The checkpoint: a run folder (its best checkpoint, else its last) or a checkpoint folder
    #[arg(long, value_name = "RUN_DIR|CKPT_DIR")]
    checkpoint: PathBuf,
    #[command(flatten)]
    source: DataArgs,
    /// The split evaluated (--fold K: ESC-50's fold K)
    #[arg(
        long,
        visible_alias = "fold",
        value_name = "SPLIT",
        default_value = "test"
    )]
    split: String,
    /// Variants evaluated: a name (mp3:32), all, first, a+b or ensemble (one prediction per
    /// item, its class probabilities averaged over the variants)
    #[arg(long, value_name = "V", default_value = "first")]
    eval_variant: EvalVariants,
    /// Items per batch
    #[arg(long, value_name = "B", default_value_t = 64)]
    batch: usize,
    /// Loader worker threads (0: tokenize on the evaluating thread)
    #[arg(long, value_name = "W", default_value_t = 2)]
    workers: usize,
    /// Draw the (first variant's) confusion matrix as a PNG
    #[arg(long, value_name = "FILE.png")]
    confusion: Option<PathBuf>,
    /// Where the model runs (cuda needs a build with --features cuda)
    #[arg(long, value_name = "cpu|cuda|cuda:N", default_value_t = DeviceChoice::Cpu)]
    device: DeviceChoice,
    /// The weights' precision (bf16 on a GPU only)
    #[arg(long, value_name = "f32|bf16", default_value_t = Precision::F32)]
    dtype: Precision,
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let ckpt = cli.checkpoint;
    let (split, variants, batch, workers) = (cli.split, cli.eval_variant, cli.batch, cli.workers);
    let (confusion, device, dtype) = (cli.confusion, cli.device, cli.dtype);
    let mut dataset = cli
        .source
        .source()
        .ok_or("give --data DIR, or --layout L and --input DIR (compressed files)")?
        .open_compressed()?;
    let device = device.open()?;
    let loaded = checkpoint::load_as(&ckpt, &device, dtype.dtype(&device)?)?;
    let dropped = dataset.relabel(&loaded.classes);
    if dropped > 0 {
        println!("{dropped} items of classes the model does not know were left out");
    }
    let indices = dataset.select(std::slice::from_ref(&split));
    let report = tempest_train::evaluate(
        &loaded.model,
        &dataset,
        &indices,
        &variants,
        &loaded.tokenizer.eval_config()?,
        batch,
        workers,
        true,
    )?;
    for (v, m) in &report.variants {
        println!(
            "{v}: {} items, accuracy {:.4}{}, loss {:.4}",
            m.items,
            m.accuracy,
            m.top5
                .map(|t| format!(", top-5 {t:.4}"))
                .unwrap_or_default(),
            m.loss
        );
        for (c, acc) in m.per_class.iter().enumerate() {
            if let (Some(acc), Some(name)) = (acc, loaded.classes.get(c)) {
                println!("  {name}: {acc:.4}");
            }
        }
    }
    println!(
        "{} files used, {} skipped",
        report.stats.files_used,
        report.stats.files_skipped()
    );
    for (p, why) in report.skipped.iter().take(20) {
        println!("  skipped {p}: {why}");
    }
    if let (Some(path), Some((_, m))) = (&confusion, report.variants.first()) {
        tempest_train::plots::plot_confusion(&m.confusion, &loaded.classes, path)?;
        println!("confusion matrix drawn in {}", path.display());
    }
    println!("{split} accuracy: {:.4}", report.accuracy);
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eval: {e}");
            ExitCode::FAILURE
        }
    }
}
