//! Prints each model preset's parameter count, FLOPs per item and attention sizes against an
//! Audio Spectrogram Transformer's.
//!
//! ```text
//! cargo run --example cost [-- --preset tiny,small,paper] [--config FILE]...
//!     [--shape NxL]... [--seconds 1,10] [--sample-rate 16000]
//! ```
//!
//! Without flags it prints `tempest_model::cost::table()`: the three presets, the FLOPs of
//! 1 s and 10 s of 16 kHz MP3 at 32 kbps and of a 28×28 JPEG (`cost::SHAPES`), and E_c's
//! attention matrix against AST's for 1 s and 10 s of audio. `--help` lists the flags.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tempest::tempest_model::cost::{
    ast_patches, context_attention, flops_report, mp3_frames_per_second, params_report, SHAPES,
};
use tempest::tempest_model::Config;

#[path = "common/lists.rs"]
mod lists;
/// Prints model presets' parameter counts, FLOPs per item and attention sizes against an
/// Audio Spectrogram Transformer's (AST: 128 mel bins, 16×16 patches, stride 10).
#[derive(Debug, Parser)]
#[command(name = "cost", version, args_override_self = true)]
struct Cli {
    /// The presets reported, comma-separated (tiny, small, paper)
    #[arg(long, value_name = "LIST", value_parser = preset_list, default_value = "tiny,small,paper")]
    preset: ::std::vec::Vec<(String, Config)>,
    /// Also report a model configuration from a JSON file (repeatable)
    #[arg(long, value_name = "FILE", action = clap::ArgAction::Append)]
    config: Vec<PathBuf>,
    /// An item shape the FLOPs are counted for: N blocks of L bytes (repeatable; replaces the
    /// default shapes: 1 s and 10 s of 16 kHz MP3 at 32 kbps, a 28×28 JPEG)
    #[arg(long, value_name = "NxL", value_parser = shape, action = clap::ArgAction::Append)]
    shape: Vec<(usize, usize)>,
    /// Lengths of audio, in seconds, comma-separated, whose attention matrices are compared
    /// (E_c of the first model reported against AST)
    #[arg(long, value_name = "LIST", value_parser = seconds_list, default_value = "1,10")]
    seconds: ::std::vec::Vec<f64>,
    /// Sample rate of the MP3 frames counted for E_c, in Hz
    #[arg(long, value_name = "HZ", default_value_t = 16_000)]
    sample_rate: u32,
}

/// `--preset`: comma-separated preset names.
fn preset_list(s: &str) -> Result<Vec<(String, Config)>, String> {
    s.split(',')
        .map(|name| {
            let name = name.trim();
            Config::preset(name)
                .map(|c| (name.to_string(), c))
                .ok_or_else(|| format!("no preset {name} (tiny, small or paper)"))
        })
        .collect()
}

/// `--shape`: `NxL`, N blocks of L bytes.
fn shape(s: &str) -> Result<(usize, usize), String> {
    let (n, l) = s
        .split_once('x')
        .ok_or_else(|| format!("{s}: NxL, N blocks of L bytes (e.g. 28x144)"))?;
    let num = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("{s}: {e}"));
    Ok((num(n)?, num(l)?))
}

/// `--seconds`: comma-separated positive lengths.
fn seconds_list(s: &str) -> Result<Vec<f64>, String> {
    lists::comma_list(s, |v| match v.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        Ok(_) => Err("a length above 0".to_string()),
        Err(e) => Err(e.to_string()),
    })
}

fn run(cli: Cli) -> Result<String, Box<dyn std::error::Error>> {
    let mut models = cli.preset;
    for file in &cli.config {
        let cfg = Config::from_file(file).map_err(|e| format!("--config {e}"))?;
        models.push((file.display().to_string(), cfg));
    }
    let shapes: Vec<(String, usize, usize)> = if cli.shape.is_empty() {
        SHAPES
            .iter()
            .map(|&(what, n, l)| (what.to_string(), n, l))
            .collect()
    } else {
        cli.shape
            .iter()
            .map(|&(n, l)| (format!("{n} blocks of {l} B"), n, l))
            .collect()
    };
    let mut out = String::new();
    for (name, cfg) in &models {
        out.push_str(&params_report(name, cfg));
        out.push('\n');
        for (what, n, l) in &shapes {
            out.push_str(&format!("  {what}: {}\n", flops_report(cfg, *n, *l)));
        }
    }
    let Some((_, first)) = models.first() else {
        return Ok(out);
    };
    out.push_str(&format!(
        "\nAttention matrix per head and layer, E_c (L' = {}) against AST (128 mel bins, 16x16 patches, stride 10):\n",
        first.tokens_per_block
    ));
    let khz = f64::from(cli.sample_rate) / 1000.0;
    for &seconds in &cli.seconds {
        let ast = ast_patches(seconds);
        for (what, fps) in [
            (
                format!("{khz} kHz MP3 frames"),
                mp3_frames_per_second(cli.sample_rate),
            ),
            ("tokens at the paper's 32/s".to_string(), 32.0),
        ] {
            let n = (seconds * fps).ceil() as usize;
            let ec = context_attention(first, n);
            out.push_str(&format!(
                "  {seconds:>4} s: E_c over {n} {what} + [CLS]: {ec} entries; AST over {ast} patches: {} entries ({:.1}x larger)\n",
                ast * ast,
                (ast * ast) as f64 / ec as f64
            ));
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cost: {e}");
            ExitCode::FAILURE
        }
    }
}
