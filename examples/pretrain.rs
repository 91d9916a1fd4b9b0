//! Pretrains TEMPEST without labels: masked block modelling on a folder of compressed (or raw)
//! files (docs/pretraining.md).
//!
//! ```text
//! cargo run --release --features mp3 --example pretrain -- (--input DIR | --data PREPARED_DIR)
//!     --out RUN_DIR [--variants mp3:20,mp3:32] [--splits train] [--preset tiny]
//!     [--mask-fraction 0.3] [--mask-span 3] [--mask-positions 32] [--resume]
//!     [--dist none|mpi] [TRAINING FLAGS]
//! ```
//!
//! `--data` may be given several times (e.g. an MP3 corpus and a JPEG corpus): one run, one
//! model and one vocabulary over all their items; each format's blocks are read as its own
//! recipe reads them (docs/pretraining.md, "Several formats in one run").
//!
//! `--dist mpi` (a build with `--features mpi`) pretrains data-parallel on the processes that
//! `mpirun -np N` starts, `--batch` items per process and step, as `train --dist mpi` does
//! (docs/distributed.md).
//!
//! `--input DIR` reads the files in DIR's subfolders, at any depth below them (or below
//! `train/…`-style split folders; the folder names are not used as labels): MP3, Ogg Opus and JPEG files
//! as they are, WAV and PNG files prepared into `--variants` under `RUN_DIR/data` first, as
//! `train` does. `--data` reads a prepared folder (its labels are not read). Without
//! `--splits`, a dataset with a `train` split pretrains on it alone (validation and test files
//! stay unseen), else on every item.
//!
//! Then fine-tune: `train --data … --init RUN_DIR [--freeze-block-encoder EPOCHS]` with the
//! same preset and tokens.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser};
use tempest::tempest_data::{parse_variants, DataSource, Dataset, Layout, Variant};
use tempest::tempest_model::pretrain::{Masking, Target as PretrainTarget};
use tempest::tempest_model::{Config, MixerKind};
use tempest::tempest_train::dist::Comm;
use tempest::tempest_train::{self, Recipe, TrainOptions};

#[path = "common/lists.rs"]
mod lists;
#[path = "common/ranks.rs"]
mod ranks;
#[path = "common/train_args.rs"]
mod train_args;

/// Pretrains TEMPEST without labels (masked block modelling): a fraction of each file's
/// blocks is replaced by a learned mask token before the context encoder, and the block
/// decoder learns to give back their ids. What the command line leaves open comes from the
/// data's recipe, as for `train`.
#[derive(Debug, Parser)]
#[command(name = "pretrain", version, args_override_self = true)]
#[command(group(ArgGroup::new("source").required(true).args(["data", "input"])))]
struct Cli {
    /// A folder of media files in subfolders (compressed files used as they are, WAV/PNG
    /// prepared into --variants); the subfolders are not labels
    #[arg(long, value_name = "DIR")]
    input: Option<PathBuf>,
    /// A prepared dataset (a folder with manifest.csv); its labels are not read. Give it
    /// again for more folders (e.g. an audio corpus and an image corpus): one run over all
    /// their items, each format read as its recipe reads it
    #[arg(long, value_name = "PREPARED_DIR", conflicts_with = "input")]
    data: Vec<PathBuf>,
    /// Splits to pretrain on, comma-separated [default: train where the dataset has it, else
    /// all items]
    #[arg(long, value_name = "LIST", value_parser = split_list)]
    splits: Option<::std::vec::Vec<String>>,
    /// Variants to prepare raw inputs in and pretrain on, e.g. mp3:20,mp3:32 [default: the
    /// data's recipe: MP3 at six bitrates for audio, JPEG for images]
    #[arg(long, value_name = "LIST", value_parser = parse_variants)]
    variants: Option<::std::vec::Vec<Variant>>,
    /// Model preset: tiny, small or paper (fine-tune with the same) [default: the recipe's]
    #[arg(long, value_name = "NAME", value_parser = Config::named, conflicts_with = "config")]
    preset: Option<Config>,
    /// Model configuration as a JSON file (instead of --preset)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Fraction of each item's blocks replaced by the mask token, in (0, 1)
    #[arg(long, value_name = "X")]
    mask_fraction: Option<f64>,
    /// Masked blocks come in runs of up to this many consecutive blocks [default: 3 for
    /// audio (with or without images), 1 for images alone]
    #[arg(long, value_name = "K")]
    mask_span: Option<usize>,
    /// Positions of each masked block whose ids are predicted (0: all of them)
    #[arg(long, value_name = "P")]
    mask_positions: Option<usize>,
    /// What a masked block is asked for: ids (its ids through the block decoder D_t),
    /// embedding (a moving-average teacher's output at its place, the item unmasked) or both
    /// (docs/pretraining.md)
    #[arg(long, value_name = "T", default_value = "ids", value_parser = PretrainTarget::parse)]
    target: PretrainTarget,
    /// With --target embedding or both: the teacher's weights move towards the model's by
    /// 1 − min(D, (1 + t)/(10 + t)) after step t
    #[arg(long, value_name = "D", default_value_t = Masking::default().teacher_decay)]
    teacher_decay: f64,
    /// The run folder (metrics, the checkpoint in last/, prepared data)
    #[arg(long, value_name = "RUN_DIR", default_value = "runs/pretrain")]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint
    #[arg(long)]
    resume: bool,
    /// Data-parallel pretraining: none (one process) or mpi (every process that `mpirun -np
    /// N` starts pretrains on its share of each batch, --batch items each; a build with
    /// --features mpi; docs/distributed.md)
    #[arg(long, value_name = "none|mpi", default_value = "none")]
    dist: tempest_train::dist::Backend,
    #[command(flatten)]
    train: train_args::TrainArgs,
}

/// `--splits`: a comma-separated list of split names.
fn split_list(s: &str) -> Result<Vec<String>, String> {
    lists::comma_list(s, |x| Ok::<String, String>(x.to_string()))
}

fn run(cli: Cli, comm: &Comm) -> Result<(), Box<dyn std::error::Error>> {
    if cli.train.eval_every.is_some() {
        return Err("--eval-every: pretraining has no evaluation between epochs".into());
    }
    let chosen = match (&cli.preset, &cli.config) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(file)) => Some(Config::from_file(file).map_err(|e| format!("--config {e}"))?),
        (None, None) => None,
    };
    let source = match (cli.data.first(), cli.input.clone()) {
        (Some(dir), None) => DataSource::Prepared(dir.clone()),
        (None, Some(input)) => DataSource::Raw {
            layout: Layout::Folder,
            input,
        },
        _ => return Err("give --input DIR or --data PREPARED_DIR".into()),
    };
    let (_, prepare_in) = ranks::preparation(&source, cli.variants.as_ref())?;
    let progress = !cli.train.no_progress && comm.is_root();
    let (first, summary) =
        ranks::open_on_ranks(&source, &cli.out.join("data"), &prepare_in, progress, comm)?;
    let mut parts = vec![first];
    for dir in cli.data.iter().skip(1) {
        parts.push(
            Dataset::from_manifest(dir).map_err(|e| format!("--data {}: {e}", dir.display()))?,
        );
    }
    let dataset = Dataset::merge(parts);
    if let Some(s) = summary {
        println!("prepared: {s}");
    }
    let train_variants = ranks::train_variants(cli.variants.as_ref(), &dataset);
    let trained = if train_variants.is_empty() {
        dataset.variants()
    } else {
        train_variants.clone()
    };
    let formats = tempest_train::detect_formats(&dataset, &trained)?;
    let recipe = Recipe::for_formats(&formats, &trained)?;
    let mut o = TrainOptions::default();
    recipe.apply(&mut o);
    // Pretraining hides blocks and rebuilds them itself: the recipe's band and time masks
    // would silence parts of what it must rebuild (`--band-mask`, `--time-mask` still set
    // them).
    o.band_mask = 0;
    o.time_mask = 0;
    // Pretraining was measured without ordinal ids (docs/pretraining.md); `--ordinal` sets
    // them. `train --init` adds the recipe's to a pretrained model without them (its steps
    // start at 0, so the fine-tuning starts from the pretrained model unchanged).
    o.ordinal = None;
    o.handle_ctrl_c = true;
    o.train_variants = train_variants;
    cli.train.apply(&mut o);
    o.comm = comm.clone();
    // Pretraining was measured with the linear mixer and without the convolution over
    // blocks (docs/pretraining.md); `train --init` takes over the pretrained model's mixer
    // and adds the recipe's convolution, whose output layer starts at zero. `--mixer
    // flatten` and `--context-conv K` pretrain with them.
    let cfg = chosen.unwrap_or_else(|| Config {
        mixer: MixerKind::Linear,
        context_conv: 0,
        ..recipe.config.clone()
    });
    let audio = formats
        .iter()
        .any(|f| !matches!(f, tempest::cff_blocks::Format::Jpeg));
    let defaults = Masking::default();
    let masking = Masking {
        fraction: cli.mask_fraction.unwrap_or(defaults.fraction),
        span: cli
            .mask_span
            .unwrap_or(if audio { defaults.span } else { 1 }),
        positions: cli.mask_positions.unwrap_or(defaults.positions),
        target: cli.target,
        teacher_decay: cli.teacher_decay,
    };
    let splits = match cli.splits {
        Some(s) => s,
        None if dataset.splits().iter().any(|s| s == "train") => vec!["train".to_string()],
        None => Vec::new(),
    };
    let items = if splits.is_empty() {
        dataset.samples.len()
    } else {
        dataset.select(&splits).len()
    };
    if comm.is_root() {
        println!(
            "pretraining on {items} items ({}), variants {:?} ({}), masking {masking:?}",
            if splits.is_empty() {
                "all splits".to_string()
            } else {
                format!("splits {}", splits.join("+"))
            },
            trained,
            formats
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let report =
        tempest_train::pretrain(&dataset, &splits, &cfg, &o, &masking, &cli.out, cli.resume)?;
    if !comm.is_root() {
        return Ok(());
    }
    let formats: Vec<String> = report
        .formats
        .iter()
        .map(|(f, n)| format!("{f} ({n} items)"))
        .collect();
    println!(
        "formats: {}; files: {} used, {} skipped",
        formats.join(", "),
        report.stats.files_used,
        report.stats.files_skipped()
    );
    for (path, why) in report.skipped.iter().take(20) {
        println!("  skipped {path}: {why}");
    }
    println!(
        "pretrained {} steps on {}: {} items in {:.1} s, {:.1} items/s",
        report.steps,
        report.device,
        report.train_items,
        report.train_seconds,
        report.train_items as f64 / report.train_seconds.max(1e-9)
    );
    if comm.is_distributed() {
        // The ranks step together on pieces of equal size (± 1 item).
        println!(
            "{} ranks ({}): the speed above is rank 0's; all ranks: about {:.1} items/s",
            comm.world_size(),
            comm.backend(),
            report.train_items as f64 / report.train_seconds.max(1e-9) * comm.world_size() as f64
        );
    }
    if report.interrupted {
        println!("interrupted: rerun with --resume to continue");
        return Ok(());
    }
    if let Some(l) = report.last_loss {
        println!("final pretraining loss: {l:.4}");
    }
    println!(
        "checkpoint: {} (fine-tune with train --init {})",
        cli.out.join("last").display(),
        cli.out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli: Cli = train_args::parse_with(|cmd| {
        train_args::TrainArgs::show_defaults(
            cmd,
            &TrainOptions::default(),
            &[
                ("epochs", "images: 30; audio: 80"),
                ("batch", "images: 32; audio: 16"),
                ("lr", "images: 0.002; audio: 0.0005"),
                ("block_bytes", "images: 8; audio: the model's"),
                ("lambda", "1 (only D_t's presence counts here)"),
            ],
        )
        .mut_arg("mask_fraction", |a| {
            let help = a.get_help().map(ToString::to_string).unwrap_or_default();
            a.help(format!("{help} [default: {}]", Masking::default().fraction))
        })
        .mut_arg("mask_positions", |a| {
            let help = a.get_help().map(ToString::to_string).unwrap_or_default();
            a.help(format!(
                "{help} [default: {}]",
                Masking::default().positions
            ))
        })
    });
    let comm = match cli.dist.open() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pretrain: --dist: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli, &comm) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if comm.is_distributed() => {
            // The other ranks would wait for this one forever: end them all.
            eprintln!("pretrain: rank {}: {e}", comm.rank());
            comm.abort(1)
        }
        Err(e) => {
            eprintln!("pretrain: {e}");
            ExitCode::FAILURE
        }
    }
}
