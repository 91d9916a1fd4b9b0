//! Lists the blocks of compressed files (MP3 frames, Ogg Opus packets, JPEG MCUs).
//!
//! ```text
//! cargo run --release --example blocks -- [--json] FILE...
//! ```
//!
//! Prints one line per block and a summary per file; with `--json`, one JSON object per block
//! on stdout and the summaries on stderr. A file that fails prints its error on stderr, the run
//! goes on with the next file, and the exit status is 1 (2 for a usage error: no file, an
//! unknown flag). `--help` lists the flags.

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use cff_blocks::{Block, Options, Summary};
use clap::Parser;
use serde::Serialize;

/// Lists the blocks of compressed files (MP3 frames, Ogg Opus packets, JPEG MCUs): one line per
/// block and a summary per file.
#[derive(Debug, Parser)]
#[command(name = "blocks", version, args_override_self = true)]
struct Cli {
    /// One JSON object per block on stdout, the summaries on stderr
    #[arg(long)]
    json: bool,
    /// The compressed files (MP3, Ogg Opus, JPEG)
    #[arg(value_name = "FILE", required = true)]
    files: Vec<String>,
}

/// One block as `--json` prints it.
#[derive(Serialize)]
struct JsonBlock<'a> {
    file: &'a str,
    index: u64,
    offset: u64,
    bit: u8,
    len: usize,
    bits: Option<u64>,
    kind: &'static str,
    time: Option<f64>,
    duration: Option<f64>,
    row: Option<u32>,
    col: Option<u32>,
}

fn main() -> ExitCode {
    let Cli { json, files } = Cli::parse();
    let options = Options::default();
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut failed = false;
    for file in &files {
        match run(file, &options, json, &mut out) {
            Ok(true) => {}
            Ok(false) => failed = true,
            // Writing to stdout failed (a closed pipe): stop quietly.
            Err(_) => return ExitCode::FAILURE,
        }
    }
    if out.flush().is_err() || failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Prints one file's blocks and summary; `Ok(false)` when the file had an error.
fn run(file: &str, options: &Options, json: bool, out: &mut impl Write) -> io::Result<bool> {
    let data = match cff_blocks::load(file, &options.limits) {
        Ok(data) => data,
        Err(e) => {
            eprintln!("{file}: {e}");
            return Ok(false);
        }
    };
    let (blocks, summary, error) = match cff_blocks::read_all(&data, options) {
        Ok(result) => result,
        Err(e) => {
            eprintln!("{file}: {e}");
            return Ok(false);
        }
    };
    for block in &blocks {
        if json {
            let line = serde_json::to_string(&json_block(file, block)).map_err(io::Error::other)?;
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", text_line(block))?;
        }
    }
    let summary_line = summary_line(file, &summary);
    if json {
        out.flush()?;
        eprintln!("{summary_line}");
    } else {
        writeln!(out, "{summary_line}")?;
    }
    if let Some(e) = error {
        out.flush()?;
        eprintln!("{file}: {e} (after {} blocks)", blocks.len());
        return Ok(false);
    }
    Ok(true)
}

fn json_block<'a>(file: &'a str, b: &Block<'_>) -> JsonBlock<'a> {
    let grid = b.place.grid();
    JsonBlock {
        file,
        index: b.index,
        offset: b.offset,
        bit: b.bit,
        len: b.len(),
        bits: b.bits,
        kind: b.kind.name(),
        time: b.place.time_seconds(),
        duration: b.place.duration_seconds(),
        row: grid.map(|g| g.0),
        col: grid.map(|g| g.1),
    }
}

fn text_line(b: &Block<'_>) -> String {
    let mut s = format!("{:>6} {:<8} offset {:>9}", b.index, b.kind.name(), b.offset);
    // JPEG blocks start at a bit: offset.bit, and the MCU's entropy-coded bits.
    if let Some(bits) = b.bits {
        s += &format!(".{} len {:>5} bits {bits:>6}", b.bit, b.len());
    } else {
        s += &format!(" len {:>5}", b.len());
    }
    if let (Some(t), Some(d)) = (b.place.time_seconds(), b.place.duration_seconds()) {
        s += &format!(" time {t:>9.4} s dur {:>6.2} ms", d * 1e3);
    }
    if let Some((row, col)) = b.place.grid() {
        s += &format!(" row {row:>4} col {col:>4}");
    }
    s
}

fn summary_line(file: &str, s: &Summary) -> String {
    let rate = match s.blocks_per_second() {
        Some(bps) => format!("{bps:.2} blocks/s of audio ({:.3} s)", s.duration_seconds),
        None if s.mcu_blocks > 0 => format!("{} blocks/image", s.mcu_blocks),
        None => "no audio".to_string(),
    };
    format!(
        "{file}: {} {} blocks ({} metadata), bytes/block mean {:.1} max {}, {rate}, \
         {} bytes skipped, {} bytes in tags or other streams",
        s.format.name(),
        s.blocks,
        s.metadata_blocks,
        s.mean_block_bytes(),
        s.max_block_bytes,
        s.skipped_bytes,
        s.other_bytes
    )
}
