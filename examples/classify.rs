//! Classifies files with a checkpoint: each file's top labels with their probabilities.
//!
//! ```text
//! cargo run --release --example classify -- --checkpoint RUN_DIR|CKPT_DIR [--top 3]
//!     [--device cpu|cuda|cuda:N] [--dtype f32|bf16] FILE...
//! ```
//!
//! Prints `FILE: label p, label p, ...` per file on stdout; a file that fails prints its error
//! on stderr, the others go on, and the exit status is then 1. `--help` lists the flags.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tempest::tempest_model::{Classifier, DeviceChoice, Precision};
use tempest::tempest_train::checkpoint;

/// Classifies files with a checkpoint: each file's top labels with their probabilities.
#[derive(Debug, Parser)]
#[command(name = "classify", version, args_override_self = true)]
struct Cli {
    /// The checkpoint: a run folder (its best checkpoint, else its last) or a checkpoint folder
    #[arg(long, value_name = "RUN_DIR|CKPT_DIR")]
    checkpoint: PathBuf,
    /// Labels printed per file, the most probable first
    #[arg(long, value_name = "K", default_value_t = 3)]
    top: usize,
    /// Where the model runs (cuda needs a build with --features cuda)
    #[arg(long, value_name = "cpu|cuda|cuda:N", default_value_t = DeviceChoice::Cpu)]
    device: DeviceChoice,
    /// The weights' precision (bf16 on a GPU only)
    #[arg(long, value_name = "f32|bf16", default_value_t = Precision::F32)]
    dtype: Precision,
    /// The compressed files to classify (MP3, Ogg Opus, JPEG)
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
}

fn run(cli: Cli) -> Result<bool, Box<dyn std::error::Error>> {
    let (ckpt, top, files, device, dtype) =
        (cli.checkpoint, cli.top, cli.files, cli.device, cli.dtype);
    let device = device.open()?;
    let loaded = checkpoint::load_as(&ckpt, &device, dtype.dtype(&device)?)?;
    let classifier = Classifier::new(loaded.model, device)
        .with_class_names(loaded.classes)?
        .with_tokenizer(loaded.tokenizer.eval_config()?);
    let mut all_ok = true;
    for f in &files {
        match classifier.classify_file(f) {
            Ok(preds) => {
                let best: Vec<String> = preds
                    .iter()
                    .take(top)
                    .map(|p| format!("{} {:.3}", p.label, p.probability))
                    .collect();
                println!("{}: {}", f.display(), best.join(", "));
            }
            Err(e) => {
                all_ok = false;
                eprintln!("classify: {}: {e}", f.display());
            }
        }
    }
    Ok(all_ok)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        // Some files failed (their errors are on stderr).
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("classify: {e}");
            ExitCode::FAILURE
        }
    }
}
