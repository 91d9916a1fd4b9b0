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
//! for them. The logic lives in `cff_encode::prepare`.

use std::process::ExitCode;

use tempest::cff_encode::prepare::{parse_variants, prepare, Layout, PrepareConfig};

const USAGE: &str = "usage: prepare --layout folder|esc50|speechcommands|mnist --input DIR \
--output DIR --variants mp3:20,opus:24,jpeg:75 [--sample-rate HZ] [--threads N] [--no-progress]";

fn run() -> Result<ExitCode, String> {
    let mut layout = None;
    let mut input = None;
    let mut output = None;
    let mut variants = None;
    let mut rate = 16_000u32;
    let mut threads = None;
    let mut progress = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--layout" => {
                layout = Some(
                    value("--layout")?
                        .parse::<Layout>()
                        .map_err(|e| e.to_string())?,
                )
            }
            "--input" => input = Some(value("--input")?),
            "--output" => output = Some(value("--output")?),
            "--variants" => {
                variants = Some(parse_variants(&value("--variants")?).map_err(|e| e.to_string())?)
            }
            "--sample-rate" => {
                rate = value("--sample-rate")?
                    .parse()
                    .map_err(|e| format!("--sample-rate: {e}"))?
            }
            "--threads" => {
                threads = Some(
                    value("--threads")?
                        .parse()
                        .map_err(|e| format!("--threads: {e}"))?,
                )
            }
            "--no-progress" => progress = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let missing = |what: &str| format!("{what} is required\n{USAGE}");
    let config = PrepareConfig::new(
        layout.ok_or_else(|| missing("--layout"))?,
        input.ok_or_else(|| missing("--input"))?,
        output.ok_or_else(|| missing("--output"))?,
        variants.ok_or_else(|| missing("--variants"))?,
    )
    .with_sample_rate(rate)
    .with_threads(threads)
    .with_progress(progress);
    let summary = prepare(&config).map_err(|e| e.to_string())?;
    for f in &summary.failures {
        eprintln!("failed: {f}");
    }
    println!("{summary}");
    println!("manifest: {}", config.output.join("manifest.csv").display());
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("prepare: {e}");
            ExitCode::from(2)
        }
    }
}
