//! Prepares a dataset: one compressed file per item and variant, and `manifest.csv`.
//!
//! ```text
//! cargo run --release --features mp3,opus --example prepare -- \
//!     --layout LAYOUT --input DIR --output DIR --variants mp3:20,mp3:26,mp3:32,opus:24,jpeg:75 \
//!     [--sample-rate 16000] [--threads N] [--no-progress]
//! ```
//!
//! Layouts: `folder`, `esc50`, `speechcommands`, `mnist`. A rerun skips the outputs that are
//! complete. JPEG variants may enlarge and move the image first and add restart markers
//! (`jpeg:75x2r1@1/-1`: see docs/encode.md). Inputs that fail are listed at the end with their reason; the run does not stop
//! for them (the exit status is still 0). The logic lives in `tempest_data::prepare`. `--help`
//! lists every flag with its meaning and default.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tempest::tempest_data::{parse_variants, prepare, Layout, PrepareConfig, Variant};

/// Prepares a dataset: one compressed file per item and variant, and manifest.csv.
///
/// A rerun skips the outputs that are complete. JPEG variants may enlarge and move the image
/// first and add restart markers (jpeg:75x2r1@1/-1: see docs/encode.md). Inputs that fail are
/// listed at the end with their reason; the run does not stop for them. MP3 and Opus encoders
/// need a build with --features mp3,opus.
#[derive(Debug, Parser)]
#[command(name = "prepare", version, args_override_self = true)]
struct Cli {
    /// The input's layout: folder, esc50, speechcommands or mnist
    #[arg(long, value_name = "LAYOUT")]
    layout: Layout,
    /// The raw dataset's folder
    #[arg(long, value_name = "DIR")]
    input: PathBuf,
    /// Where the compressed files and manifest.csv go
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
    /// The variants, comma-separated, e.g. mp3:20,mp3:26,mp3:32,opus:24,jpeg:75
    #[arg(long, value_name = "LIST", value_parser = parse_variants)]
    variants: ::std::vec::Vec<Variant>,
    /// Sample rate audio is resampled to before encoding, in Hz
    #[arg(long, value_name = "HZ", default_value_t = 16_000)]
    sample_rate: u32,
    /// Encoding threads [default: rayon's, one per core or RAYON_NUM_THREADS]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// No progress bar on standard error
    #[arg(long)]
    no_progress: bool,
}

fn run(cli: Cli) -> Result<(), String> {
    let config = PrepareConfig::new(cli.layout, cli.input, cli.output, cli.variants)
        .with_sample_rate(cli.sample_rate)
        .with_threads(cli.threads)
        .with_progress(!cli.no_progress);
    let summary = prepare(&config).map_err(|e| e.to_string())?;
    for f in &summary.failures {
        eprintln!("failed: {f}");
    }
    println!("{summary}");
    println!("manifest: {}", config.output.join("manifest.csv").display());
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prepare: {e}");
            ExitCode::FAILURE
        }
    }
}
