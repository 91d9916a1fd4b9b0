//! Trains TEMPEST on a dataset of compressed files.
//!
//! ```text
//! cargo run --release --example train -- (--data PREPARED_DIR | --layout L --input DIR)
//!     [--variants mp3:20,mp3:26,mp3:32] [--eval-variant mp3:32|all|first]
//!     [--test-variant mp3:20+mp3:26+mp3:32|ensemble] (the final test; `a+b`: one
//!     prediction per item, its class probabilities averaged over the variants)
//!     [--preset tiny|small|paper | --config FILE] [--max-train-items N] [--folds 1,2,3,4,5]
//!     [--out RUN_DIR] [--resume] [--init PRETRAINED_DIR [--freeze-block-encoder EPOCHS]]
//!     [--dist none|mpi|nccl [--gpus 0,1]] [TRAINING FLAGS]
//! ```
//!
//! `--dist mpi` (a build with `--features mpi`) trains data-parallel on the processes that
//! `mpirun -np N` starts, `--batch` items per process and step (docs/distributed.md).
//! `--dist nccl --gpus 0,1` (a build with `--features cuda,nccl`) starts one process per listed
//! GPU, each training on its GPU, and ends them all when one fails.
//!
//! The training flags (examples/common/train_args.rs, shared with `quickstart` and `compare`;
//! `--help` lists them all with their meanings and defaults):
//!
//! ```text
//! [--epochs N] [--batch B] [--accumulate K] [--lr LR] [--label-smoothing X] [--lambda X]
//! [--seed S] [--workers W] [--parallel P] [--header-block] [--bit-stride 8|4|2|1] [--block-bytes L]
//! [--tokens bytes|fields|fields+bytes|fields+data|fields+lines|fields+energy|energy] [--gain-jitter K]
//! [--band-mask K] [--band-shift K] [--crop N] [--bucket K] [--device cpu|cuda|cuda:N] [--dtype f32|bf16]
//! [--max-steps N] [--overwrite] [--no-progress]
//! ```
//!
//! `--device cuda` trains on the GPU (a build with `--features cuda`); the default is the CPU.
//! The checkpoints are the same files either way: one trained on a GPU classifies on the CPU.
//!
//! `--layout` (`folder`, `esc50`, `speechcommands`, `mnist`) reads a raw layout: compressed
//! files are used as they are; WAV/PNG/IDX inputs are prepared in `--variants` into
//! `RUN_DIR/data` on first use (by default MP3 at ten bitrates from 16 to 40 kbps for audio, JPEG at
//! quality 75 for images).
//!
//! Audio (MP3 or Ogg Opus files) gets the recipe measured in docs/audio.md for whatever the
//! command line leaves open: field and band-energy tokens for MP3 with band and time masks of
//! up to 5, field tokens for Opus (`--tokens`), the codec's amounts embedded as ordered values
//! (`--ordinal all`), the `tiny` preset with the flatten mixer and a convolution over five
//! neighbouring frames (`--context-conv 5`), 80
//! epochs, batches of 16, learning rate 5e-4, an evaluation after every second epoch, and with
//! several bitrates each evaluation and the test as the ensemble of the bitrates. ESC-50 runs
//! five-fold cross-validation (`--folds` to choose); the last line is `test accuracy: 0.XXXX`
//! (ESC-50: the mean over the folds).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser};
use tempest::tempest_data::{parse_variants, DataSource, Layout, Variant};
use tempest::tempest_model::{Config, DeviceChoice};
use tempest::tempest_train::dist::Comm;
use tempest::tempest_train::{self, EvalVariants, Recipe, SplitPlan, TrainOptions};

#[path = "common/data_args.rs"]
mod data_args;
use data_args::DataArgs;
#[path = "common/lists.rs"]
mod lists;
#[path = "common/ranks.rs"]
mod ranks;
#[path = "common/train_args.rs"]
mod train_args;

/// Trains TEMPEST on a dataset of compressed files.
///
/// What the command line leaves open comes from a recipe chosen by the data
/// (`tempest_train::Recipe`): images (MNIST, folders of PNG files, JPEG files) get the
/// quickstart's (JPEG at quality 75, 2× size, a restart marker after every MCU, ±1 pixel
/// shifts, the shifted copies' ensemble at test time, 8 bytes per MCU, `tiny` with 3 E_c
/// layers, 30 epochs, batches of 32, learning rate 2e-3); audio gets docs/audio.md's (MP3 at
/// ten bitrates, field and band-energy tokens with band and time masks of 5, ordinal ids, `tiny` with label
/// smoothing 0.1, the flatten mixer and a convolution over five frames, 80 epochs, batches of 16, learning rate 5e-4, an evaluation after every
/// second epoch, each the ensemble of 20, 26 and 32 kbps). ESC-50 runs five-fold
/// cross-validation. The last line is `test accuracy: 0.XXXX`.
#[derive(Debug, Parser)]
#[command(name = "train", version, args_override_self = true)]
#[command(group(ArgGroup::new("source").required(true).args(["data", "layout"])))]
struct Cli {
    #[command(flatten)]
    source: DataArgs,
    /// Variants to prepare raw inputs in and train on, e.g. mp3:20,mp3:26,mp3:32 [default: MP3
    /// at 16, 18, 20, 22, 24, 26, 28, 32, 36 and 40 kbps for audio; for images jpeg:75x2r1 and its 8 copies
    /// moved by one pixel]
    #[arg(long, value_name = "LIST", value_parser = parse_variants)]
    variants: Option<::std::vec::Vec<Variant>>,
    /// Variants evaluated after each epoch: a name (mp3:32), all, first, a+b (an ensemble) or
    /// ensemble [default: images: the unmoved jpeg:75x2r1 (first for prepared data); audio at
    /// several bitrates: the ensemble of them, of 20, 26 and 32 kbps where those are among
    /// them]
    #[arg(long, value_name = "V")]
    eval_variant: Option<EvalVariants>,
    /// Variants of the final test, as --eval-variant (a+b: one prediction per item, its class
    /// probabilities averaged over the variants) [default: raw images: the ensemble of the
    /// unmoved and moved copies; otherwise those of --eval-variant]
    #[arg(long, value_name = "V")]
    test_variant: Option<EvalVariants>,
    /// Model preset: tiny, small or paper [default: images: tiny with 3 E_c layers; audio:
    /// tiny]
    #[arg(long, value_name = "NAME", value_parser = Config::named, conflicts_with = "config")]
    preset: Option<Config>,
    /// Model configuration as a JSON file (instead of --preset)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Keep at most N training items (per fold for ESC-50) [default: all]
    #[arg(long, value_name = "N")]
    max_train_items: Option<usize>,
    /// Keep this fraction of each class's training items, in (0, 1] (the few-labels setting,
    /// e.g. 0.1: ⌈0.1·n⌉ of a class's n, spread evenly over them); before --max-train-items
    /// [default: all]
    #[arg(long, value_name = "F")]
    train_fraction: Option<f64>,
    /// ESC-50: the folds tested in turn, comma-separated
    #[arg(long, value_name = "LIST", value_parser = fold_list, default_value = "1,2,3,4,5")]
    folds: ::std::vec::Vec<u32>,
    /// The run folder (metrics, checkpoints, prepared data)
    #[arg(long, value_name = "RUN_DIR", default_value = "runs/train")]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint
    #[arg(long)]
    resume: bool,
    /// Start from a pretrained checkpoint (a `pretrain` run folder or a checkpoint folder):
    /// E_t, M, D_t and E_c taken over, a new head for this task's classes; give the preset and
    /// tokens it was pretrained with (shapes are checked)
    #[arg(long, value_name = "PRETRAINED_DIR")]
    init: Option<PathBuf>,
    /// Hold E_t and M (with the byte and length embeddings) still for the first EPOCHS
    /// epochs [default: 0]
    #[arg(long, value_name = "EPOCHS")]
    freeze_block_encoder: Option<usize>,
    /// Data-parallel training: none (one process), mpi (every process that `mpirun -np N`
    /// starts trains on its share of each batch, --batch items each; a build with --features
    /// mpi) or nccl (one process per GPU, with --gpus or under mpirun; a build with --features
    /// cuda,nccl); docs/distributed.md
    #[arg(long, value_name = "none|mpi|nccl", default_value = "none")]
    dist: tempest_train::dist::Backend,
    /// With --dist nccl: start one process per listed GPU (rank i trains on cuda:LIST[i]) and
    /// wait for them; one that fails ends the others
    #[arg(long, value_name = "LIST", value_parser = gpu_list)]
    gpus: Option<::std::vec::Vec<usize>>,
    #[command(flatten)]
    train: train_args::TrainArgs,
}

/// `--gpus`: a comma-separated list of GPU ordinals.
fn gpu_list(s: &str) -> Result<Vec<usize>, String> {
    lists::comma_list(s, str::parse::<usize>)
}

/// `--folds`: a comma-separated list of fold numbers.
fn fold_list(s: &str) -> Result<Vec<u32>, String> {
    lists::comma_list(s, str::parse::<u32>)
}

fn run(cli: Cli, comm: &Comm) -> Result<(), Box<dyn std::error::Error>> {
    let source = cli
        .source
        .source()
        .ok_or("give --data DIR, or --layout L and --input DIR")?;
    let (out, resume, max_train, folds) = (cli.out, cli.resume, cli.max_train_items, cli.folds);
    let cli_fraction = cli.train_fraction;
    // The model the command line chose, read before any data (a bad file fails at once).
    let chosen = match (&cli.preset, &cli.config) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(file)) => Some(Config::from_file(file).map_err(|e| format!("--config {e}"))?),
        (None, None) => None,
    };
    // Raw data is prepared in the recipe of its kind (or in --variants).
    let (layout_recipe, prepare_in) = ranks::preparation(&source, cli.variants.as_ref())?;
    let progress = !cli.train.no_progress && comm.is_root();
    let (mut dataset, summary) =
        ranks::open_on_ranks(&source, &out.join("data"), &prepare_in, progress, comm)?;
    if let Some(s) = summary {
        println!("prepared: {s}");
        for f in s.failures.iter().take(20) {
            println!("  failed {f}");
        }
    }
    let train_variants = ranks::train_variants(cli.variants.as_ref(), &dataset);
    let trained = if train_variants.is_empty() {
        dataset.variants()
    } else {
        train_variants.clone()
    };
    // The layout's recipe where the data was prepared in its variants; else the recipe of
    // the files' format, with the data's own variants.
    let formats = tempest_train::detect_formats(&dataset, &trained)?;
    let recipe = match layout_recipe {
        Some(r)
            if cli.variants.is_none()
                && r.variants.iter().all(|v| trained.contains(&v.to_string())) =>
        {
            r
        }
        _ => Recipe::for_formats(&formats, &trained)?,
    };
    let mut o = TrainOptions::default();
    recipe.apply(&mut o);
    o.handle_ctrl_c = true;
    o.train_variants = train_variants;
    cli.train.apply(&mut o);
    // An NCCL rank trains on the GPU its communicator is bound to.
    if let Some(gpu) = comm.gpu() {
        match cli.train.device {
            None => o.device = DeviceChoice::Cuda(gpu),
            Some(DeviceChoice::Cuda(n)) if n == gpu => {}
            Some(d) => {
                return Err(format!(
                    "--device {d}: rank {} of --dist nccl runs on cuda:{gpu}",
                    comm.rank()
                )
                .into())
            }
        }
    }
    o.init = cli.init.clone();
    // Fine-tuning reads blocks as the pretrained model did unless --tokens says otherwise
    // (a checkpoint pretrained on band lines has their vocabulary, not the energies').
    if let (Some(dir), None) = (&o.init, o.tokens) {
        let at = tempest_train::pretrain::resolve_checkpoint(dir)?;
        let tok: tempest::tempest_tokenize::TokenizerConfig = tempest_train::checkpoint::read_json(
            &at.join(tempest_train::checkpoint::TOKENIZER_FILE),
        )?;
        o.tokens = Some(tok.tokens);
    }
    o.freeze_block_encoder = cli.freeze_block_encoder.unwrap_or(0);
    o.comm = comm.clone();
    if let Some(v) = &cli.eval_variant {
        o.eval_variants = v.clone();
        o.test_variants = None;
    }
    if cli.test_variant.is_some() {
        o.test_variants = cli.test_variant.clone();
    }
    let cfg = chosen.unwrap_or_else(|| recipe.config.clone());
    let esc50 = matches!(
        source,
        DataSource::Raw {
            layout: Layout::Esc50,
            ..
        }
    ) || dataset.splits() == ["1", "2", "3", "4", "5"];
    if comm.is_root() {
        let names: Vec<String> = formats.iter().map(ToString::to_string).collect();
        println!("recipe: {} ({})", recipe.name, names.join(", "));
        println!(
            "{} items, {} classes, splits {:?}, variants {:?}",
            dataset.samples.len(),
            dataset.classes.len(),
            dataset.splits(),
            dataset.variants()
        );
    }
    if esc50 {
        if cli_fraction.is_some() {
            return Err(
                "--train-fraction: not for ESC-50, whose folds take turns as the test".into(),
            );
        }
        if let Some(n) = max_train {
            dataset.truncate_splits(&dataset.splits(), n);
        }
        let cv = tempest_train::cross_validate_esc50(&dataset, &folds, &cfg, &o, &out, resume)?;
        if !comm.is_root() {
            return Ok(());
        }
        for r in &cv.runs {
            print!("{}", r.files_summary());
        }
        if cv.runs.iter().any(|r| r.interrupted) {
            println!("interrupted: rerun with --resume to continue");
            return Ok(());
        }
        for (k, acc) in &cv.folds {
            println!("fold {k}: {acc:.4}");
        }
        println!(
            "mean {:.4} ± {:.4} over {} folds",
            cv.mean,
            cv.std,
            cv.folds.len()
        );
        println!("test accuracy: {:.4}", cv.mean);
        return Ok(());
    }
    let plan = SplitPlan::standard(&dataset)?;
    if let Some(f) = cli_fraction {
        let kept = dataset.keep_fraction_per_class(&plan.train, f)?;
        if comm.is_root() {
            println!("--train-fraction {f}: {kept} training items kept");
        }
    }
    if let Some(n) = max_train {
        dataset.truncate_splits(&plan.train, n);
    }
    let report = tempest_train::train(&dataset, &plan, &cfg, &o, &out, resume)?;
    if !comm.is_root() {
        return Ok(());
    }
    print!("{}", report.files_summary());
    print!("{}", report.speed_summary());
    if comm.is_distributed() {
        // The ranks step together on pieces of equal size (± 1 item).
        println!(
            "{} ranks ({}): the speed above is rank 0's; all ranks: about {:.1} items/s",
            comm.world_size(),
            comm.backend(),
            report.train_items_per_s() * comm.world_size() as f64
        );
    }
    if report.interrupted {
        if o.stop_after_steps.is_some_and(|n| report.steps >= n) {
            println!("stopped at the step budget (--max-steps): rerun with --resume and a larger --max-steps to continue");
        } else {
            println!("interrupted: rerun with --resume to continue");
        }
        return Ok(());
    }
    if let Some((acc, epoch)) = report.best {
        println!("best selection accuracy {acc:.4} at epoch {epoch}");
    }
    let test = report.test.ok_or("no test")?;
    for (v, m) in &test.variants {
        println!(
            "{v}: accuracy {:.4}{}",
            m.accuracy,
            m.top5
                .map(|t| format!(", top-5 {t:.4}"))
                .unwrap_or_default()
        );
    }
    println!("test accuracy: {:.4}", test.accuracy);
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
                ("eval_every", "images: 1; audio: 2"),
                ("band_mask", "audio 5, else 0"),
                ("time_mask", "audio 5, else 0"),
                ("ordinal", "audio all, else none"),
                ("context_conv", "audio 5, else 0"),
            ],
        )
    });
    use tempest_train::dist::{Backend, RankEnv};
    if let Some(gpus) = &cli.gpus {
        if cli.dist != Backend::Nccl {
            eprintln!("train: --gpus: starts NCCL ranks; give it with --dist nccl");
            return ExitCode::FAILURE;
        }
        match RankEnv::from_env() {
            // The launcher: one child per GPU, with the same command line.
            Ok(None) => {
                let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
                let launched = std::env::current_exe()
                    .map_err(|e| e.to_string())
                    .and_then(|exe| {
                        tempest_train::dist::launch(gpus, &exe, &args).map_err(|e| e.to_string())
                    });
                return match launched {
                    Ok(0) => ExitCode::SUCCESS,
                    Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                    Err(e) => {
                        eprintln!("train: --gpus: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            // A rank the launcher started: on with training.
            Ok(Some(_)) => {}
            Err(e) => {
                eprintln!("train: --gpus: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let comm = match cli.dist.open() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("train: --dist: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli, &comm) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if comm.is_distributed() => {
            // The other ranks would wait for this one forever: end them all.
            eprintln!("train: rank {}: {e}", comm.rank());
            comm.abort(1)
        }
        Err(e) => {
            eprintln!("train: {e}");
            ExitCode::FAILURE
        }
    }
}
