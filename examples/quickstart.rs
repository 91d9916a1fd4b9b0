//! The quickstart: trains the `tiny` preset with a third E_c layer on the embedded real MNIST
//! digits encoded as JPEG and reports its accuracy on the 2,004 held-out digits it never saw.
//! Nothing is downloaded.
//!
//! ```text
//! cargo run --release --example quickstart [-- --scale 2 --shifts 1 --tta 1 --qualities 75,50,90
//!     --validation N --config FILE --out DIR --resume TRAINING FLAGS]
//! ```
//!
//! `--scale S` enlarges each 28×28 digit S times (bilinear) before JPEG encoding (default 2:
//! 56×56, 49 MCUs); `--shifts D` adds training variants moved by up to D pixels in each
//! direction (default 1: 8 moved copies; 0 turns it off). Each epoch evaluates the unmoved
//! digits.
//! `--restart N` puts a restart marker after every N MCUs (default 1; 0: none), which resets
//! the DC prediction, so that each MCU codes its own brightness. The final test predicts
//! each held-out digit from its unmoved version and its moved copies, their class
//! probabilities averaged (`--tta 0`: the unmoved digit alone); both accuracies are printed.
//! The model reads each MCU's first 8 bytes (`--block-bytes`; the length embedding sees the
//! whole length). `--distort K` adds K randomly rotated, scaled, sheared and moved versions of
//! each digit to training (default 0).
//!
//! The training flags are those of the `train` example (examples/common/train_args.rs):
//! `--epochs N --batch B --lr LR --seed S --block-bytes L --header-block --bit-stride 8|4|2|1
//! --bucket K --device cpu|cuda|cuda:N --dtype f32|bf16 ...`; `--help` lists every flag with
//! its meaning and the quickstart's default.
//!
//! The digits (`data/mnist`) are encoded once into `target/quickstart/data` (JPEG at each
//! quality and shift; the first quality unmoved is the one tested, the others augment
//! training); the run goes to
//! `target/quickstart/run` (metrics.jsonl, best/ and last/ checkpoints).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use tempest::tempest_data::Layout;
use tempest::tempest_model::Config;
use tempest::tempest_train::{
    self, Dataset, EvalVariants, ImageRecipe, Recipe, SplitPlan, TrainOptions,
};

#[path = "common/lists.rs"]
mod lists;
#[path = "common/train_args.rs"]
mod train_args;

/// The quickstart: trains the `tiny` preset with a third E_c layer on the embedded MNIST
/// digits encoded as JPEG and reports its accuracy on the 2,004 held-out digits.
///
/// The digits are encoded once into target/quickstart/data; the run goes to
/// target/quickstart/run (metrics.jsonl, best/ and last/ checkpoints). Nothing is downloaded.
#[derive(Debug, Parser)]
#[command(name = "quickstart", version, args_override_self = true)]
struct Cli {
    /// JPEG qualities, comma-separated: the first (unmoved) is tested, the others augment
    /// training
    #[arg(long, value_name = "LIST", value_parser = quality_list, default_value = "75")]
    qualities: ::std::vec::Vec<u8>,
    /// Enlarge each 28×28 digit S times (bilinear) before JPEG encoding
    #[arg(long, value_name = "S", default_value_t = ImageRecipe::default().scale)]
    scale: u8,
    /// Also train on copies moved by up to D pixels in each direction (0: none)
    #[arg(long, value_name = "D", default_value_t = ImageRecipe::default().shifts)]
    shifts: u8,
    /// A restart marker after every N MCUs, resetting the DC prediction (0: none)
    #[arg(long, value_name = "N", default_value_t = ImageRecipe::default().restart)]
    restart: u16,
    /// Test each held-out digit as the ensemble of its unmoved version and its moved copies
    /// (0: the unmoved digit alone)
    #[arg(long, value_name = "0|1", default_value_t = u8::from(ImageRecipe::default().tta))]
    tta: u8,
    /// Add K randomly rotated, scaled, sheared and moved versions of each digit to training
    #[arg(long, value_name = "K", default_value_t = ImageRecipe::default().distort)]
    distort: u16,
    /// Hold N training digits out as a validation split that picks the best epoch
    #[arg(long, value_name = "N", default_value_t = 0)]
    validation: usize,
    /// Model configuration as a JSON file [default: tiny with 3 E_c layers]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the data and the run go [default: $CARGO_TARGET_DIR/quickstart, or
    /// target/quickstart]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue the run from its last checkpoint
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    train: train_args::TrainArgs,
}

/// `--qualities`: comma-separated JPEG qualities.
fn quality_list(s: &str) -> Result<Vec<u8>, String> {
    lists::comma_list(s, str::parse::<u8>)
}

impl Cli {
    /// The image recipe with the encoding this command line asks for.
    fn recipe(&self) -> Result<Recipe, tempest_train::Error> {
        Recipe::images(&ImageRecipe {
            qualities: self.qualities.clone(),
            scale: self.scale,
            shifts: self.shifts,
            restart: self.restart,
            tta: self.tta != 0,
            distort: self.distort,
        })
    }
}

/// The quickstart's training options where the command line leaves them open: the image
/// recipe's (`tempest_train::Recipe::images`, measured in docs/quickstart.md).
fn defaults() -> TrainOptions {
    let mut o = TrainOptions::default();
    if let Ok(r) = Recipe::images(&ImageRecipe::default()) {
        r.apply(&mut o);
    }
    o
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let recipe = cli.recipe()?;
    let mut o = TrainOptions::default();
    recipe.apply(&mut o);
    o.handle_ctrl_c = true;
    cli.train.apply(&mut o);
    let out = cli.out.clone().unwrap_or_else(|| {
        PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or("target".into()))
            .join("quickstart")
    });
    let cfg = match &cli.config {
        Some(file) => Config::from_file(file).map_err(|e| format!("--config {e}"))?,
        None => recipe.config.clone(),
    };
    let start = Instant::now();
    let variants = &recipe.variants;
    let (mut dataset, _) = Dataset::open_layout(
        Layout::Mnist,
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/mnist"),
        &out.join("data"),
        variants,
        o.progress,
    )?;
    // Tuning without touching the test: N training digits become a validation split that
    // picks the best epoch (the held-out digits are then tested once, with that checkpoint).
    dataset.hold_out("train", "validation", cli.validation);
    let tested = variants[0].to_string();
    // The unmoved digit and its moved copies, one prediction each, their class probabilities
    // averaged (test-time augmentation; `--tta 0` tests the unmoved digit only).
    let moved = match &recipe.test_variants {
        Some(EvalVariants::Ensemble(moved)) => Some(moved.clone()),
        _ => None,
    };
    let plan = SplitPlan::standard(&dataset)?;
    let (qualities, scale, shifts, restart) = (&cli.qualities, cli.scale, cli.shifts, cli.restart);
    println!(
        "MNIST as JPEG (q {qualities:?}, {scale}× size, shifts ±{shifts}, restart every {restart} MCUs): {} training digits, {} validation, {} held out; {} epochs",
        dataset.select(&plan.train).len(),
        dataset.select(&plan.validation).len(),
        dataset.select(&plan.test).len(),
        o.epochs
    );
    let report = tempest_train::train(&dataset, &plan, &cfg, &o, &out.join("run"), cli.resume)?;
    print!("{}", report.files_summary());
    if report.interrupted {
        println!("interrupted: rerun with --resume to continue");
        return Ok(());
    }
    let test = report.test.ok_or("no test")?;
    if let (false, Some((acc, epoch))) = (plan.validation.is_empty(), report.best) {
        println!("best validation accuracy: {acc:.4} (epoch {epoch}, the checkpoint tested)");
    }
    if let Some(moved) = moved {
        // The same checkpoint on the unmoved digits alone, and (when tuning) the ensemble's
        // accuracy on the validation split, which chose nothing.
        let run = out.join("run");
        let ckpt = if plan.validation.is_empty() {
            run.join("last")
        } else {
            run.join("best")
        };
        let device = o.device.open()?;
        let loaded = tempest_train::checkpoint::load_as(&ckpt, &device, o.dtype.dtype(&device)?)?;
        let tok = loaded.tokenizer.eval_config()?;
        let eval = |split: &[String], v: &EvalVariants| {
            tempest_train::evaluate(
                &loaded.model,
                &dataset,
                &dataset.select(split),
                v,
                &tok,
                64,
                o.workers,
                o.progress,
            )
        };
        if !plan.validation.is_empty() {
            let one = eval(&plan.validation, &EvalVariants::Named(tested.clone()))?;
            let all = eval(&plan.validation, &EvalVariants::Ensemble(moved.clone()))?;
            println!(
                "validation accuracy: {:.4} unmoved, {:.4} as an ensemble of {} versions",
                one.accuracy,
                all.accuracy,
                moved.len()
            );
        }
        let one = eval(&plan.test, &EvalVariants::Named(tested.clone()))?;
        println!(
            "test accuracy of the unmoved digits alone: {:.4}; as an ensemble of the unmoved digit and its {} moved copies (below): {:.4}",
            one.accuracy,
            moved.len() - 1,
            test.accuracy
        );
    }
    println!(
        "{} s in all ({:.0} s training); run in {}",
        start.elapsed().as_secs(),
        report.elapsed_s,
        out.join("run").display()
    );
    println!("test accuracy: {:.4}", test.accuracy);
    Ok(())
}

fn main() -> ExitCode {
    let cli: Cli =
        train_args::parse_with(|cmd| train_args::TrainArgs::show_defaults(cmd, &defaults(), &[]));
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart: {e}");
            ExitCode::FAILURE
        }
    }
}
