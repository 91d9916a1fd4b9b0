//! Times the plain block loop of `cff_blocks::Reader` on whole files held in memory, and prints
//! one table row per file, setting and loop: nanoseconds per block and MB/s of input, from the
//! fastest of 60 batches of 20 reads (less sensitive to other load on the machine than a mean).
//!
//! ```text
//! cargo run --release -p cff-blocks --example block_loop -- benches/data/*.mp3 benches/data/*.opus
//! cargo run --release -p cff-blocks --example block_loop -- --reps 100 FILE
//! ```
//!
//! Two loops: `expect`, the one `benches/benchmarks/parsing.rs` times (`for block in reader`, an
//! `expect` on each item, lengths and kinds summed), and `stop at error`, the same with a `break`
//! on the first error, the shape of a caller that hands errors on. How fast such a loop runs
//! depends on how the compiler lays it out around the inlined hot paths (whether a block's
//! unused fields are ever written to memory): the same loop has measured 2–3× apart between
//! binaries. `--reps N` reads each file N times with the default options and prints only the
//! totals: a fixed amount of work for an instruction count, e.g.
//! `valgrind --tool=cachegrind --cache-sim=no target/release/examples/block_loop --reps 100 FILE`.
//! For Ogg files a first row times the Ogg CRC-32 alone over the whole file: the floor under
//! the default (CRC-verifying) reader. For every file a row times the bench's memory ceiling
//! (`memchr::memmem::find` of a needle that occurs nowhere, as in `benches/benchmarks/parsing.rs`)
//! the same way, and a last line gives each default-settings loop's time as a multiple of it:
//! issue #2's "within 4× of memchr", judged by fastest batches.

use std::hint::black_box;
use std::time::Instant;

use cff_blocks::opus::OpusReader;
use cff_blocks::{BlockKind, Format, Options, Reader};

/// What the bench's loop counts: blocks and their bytes, and those of the media kinds.
#[derive(Debug, Default, Clone, Copy)]
struct Count {
    media: usize,
    media_bytes: usize,
    blocks: usize,
    bytes: usize,
}

impl Count {
    /// Counts one block, as the bench's loop does (inlined: the instruction count of the two
    /// `Reader` loops is what it was with the counting written out in each).
    #[inline(always)]
    fn add(&mut self, kind: BlockKind, len: usize) {
        self.blocks += 1;
        self.bytes += len;
        if matches!(kind, BlockKind::Audio | BlockKind::Mcu) {
            self.media += 1;
            self.media_bytes += len;
        }
    }
}

/// The loop of `benches/benchmarks/parsing.rs`, as it is there (its own function there too).
#[inline(never)]
fn read(data: &[u8], options: &Options) -> Count {
    let mut count = Count::default();
    let reader = Reader::new(data, options).expect("cff-blocks: open");
    for block in reader {
        let block = block.expect("cff-blocks: read");
        count.add(block.kind, block.data.len());
    }
    count
}

/// The same counts from a loop that stops at the first error instead of panicking, the shape
/// of a caller that hands errors on (`?`).
#[inline(never)]
fn read_until_error(data: &[u8], options: &Options) -> Count {
    let mut count = Count::default();
    let Ok(reader) = Reader::new(data, options) else {
        return count;
    };
    for block in reader {
        let Ok(block) = block else { break };
        count.add(block.kind, block.data.len());
    }
    count
}

/// The same counts through `OpusReader::for_each_block`, the API for scanning whole Ogg Opus
/// files (no `Block` built per packet).
#[inline(never)]
fn for_each_opus(data: &[u8], options: &Options) -> Count {
    let mut count = Count::default();
    let mut reader = OpusReader::new(data, options).expect("cff-blocks: open");
    reader
        .for_each_block(|block| {
            // Written out, not `Count::add`: through the method this closure compiled to 5 %
            // more instructions (cachegrind, 29.2 M → 30.7 M for 100 reads of the 24 kbps
            // file), and docs/benchmarks.md quotes this loop's count.
            count.blocks += 1;
            count.bytes += block.data.len();
            if matches!(block.kind, BlockKind::Audio | BlockKind::Mcu) {
                count.media += 1;
                count.media_bytes += block.data.len();
            }
        })
        .expect("cff-blocks: read");
    count
}

/// The needle of the bench's `memchr-scan`: in none of the inputs.
const NEEDLE: &[u8] = b"tempest-rs: not in any input";

/// One of the loops above.
type Loop = fn(&[u8], &Options) -> Count;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let reps = match args.iter().position(|a| a == "--reps") {
        Some(i) if i + 1 < args.len() => {
            let n = args[i + 1].parse::<u32>().unwrap_or(1);
            args.drain(i..i + 2);
            Some(n)
        }
        _ => None,
    };
    let for_each = match args.iter().position(|a| a == "--for-each") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    if args.is_empty() {
        eprintln!("usage: block_loop [--reps N [--for-each]] FILE...");
        std::process::exit(2);
    }
    if reps.is_none() {
        println!("| file | setting | loop | blocks | ns per block | MB/s |");
        println!("|---|---|---|---:|---:|---:|");
    }
    for path in &args {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{path}: {e}");
                continue;
            }
        };
        let ogg = cff_blocks::detect(&data).ok() == Some(Format::OggOpus);
        if let Some(n) = reps {
            let (name, run): (&str, Loop) = if for_each && ogg {
                ("for_each_block", for_each_opus)
            } else {
                ("expect", read)
            };
            let mut total = (0, 0);
            for _ in 0..n {
                let c = run(black_box(&data), &Options::default());
                total = (total.0 + c.blocks, total.1 + c.bytes);
            }
            println!(
                "{path}: {} blocks, {} bytes in {n} reads ({name} loop)",
                total.0, total.1
            );
            continue;
        }
        // The bench's ceiling, timed like the loops: one read of every byte.
        let mut memchr_best = f64::MAX;
        for _ in 0..60 {
            let start = Instant::now();
            for _ in 0..20 {
                black_box(memchr::memmem::find(black_box(&data), NEEDLE));
            }
            memchr_best = memchr_best.min(start.elapsed().as_secs_f64() / 20.0);
        }
        println!(
            "| {path} | memchr-scan (the bench's ceiling) | – | – | {:.1} µs in all | {:.0} |",
            memchr_best * 1e6,
            data.len() as f64 / memchr_best / 1e6
        );
        let mut ratios = Vec::new();
        let mut settings = vec![("default", Options::default())];
        let mut loops: Vec<(&str, Loop)> =
            vec![("expect", read), ("stop at error", read_until_error)];
        if ogg {
            settings.push(("no CRC", Options::default().with_verify_crc(false)));
            loops.push(("for_each_block", for_each_opus));
            // What the CRC alone costs: the Ogg CRC-32 over the whole file (page headers and
            // bodies, about what the reader checks), timed the same way.
            let mut best = f64::MAX;
            for _ in 0..60 {
                let start = Instant::now();
                for _ in 0..20 {
                    black_box(cff_blocks::ogg::crc32(black_box(&data)));
                }
                best = best.min(start.elapsed().as_secs_f64() / 20.0);
            }
            println!(
                "| {path} | CRC-32 of the whole file only | – | – | {:.1} µs in all | {:.0} |",
                best * 1e6,
                data.len() as f64 / best / 1e6
            );
        }
        for (name, options) in settings {
            let blocks = read(&data, &options).blocks;
            for (_, run) in &loops {
                assert_eq!(
                    run(&data, &options).blocks,
                    blocks,
                    "{path}: loops disagree"
                );
            }
            // The fastest of 60 batches of 20 reads, for each loop, the loops taking turns.
            let mut best = vec![f64::MAX; loops.len()];
            for _ in 0..60 {
                for ((_, run), best) in loops.iter().zip(&mut best) {
                    let start = Instant::now();
                    for _ in 0..20 {
                        black_box(run(black_box(&data), &options));
                    }
                    *best = best.min(start.elapsed().as_secs_f64() / 20.0);
                }
            }
            for ((shape, _), best) in loops.iter().zip(best) {
                if name == "default" {
                    ratios.push(format!("{shape} {:.2}×", best / memchr_best));
                }
                println!(
                    "| {path} | {name} | {shape} | {blocks} | {:.1} | {:.0} |",
                    best * 1e9 / blocks.max(1) as f64,
                    data.len() as f64 / best / 1e6
                );
            }
        }
        println!(
            "\n{path}: default settings ÷ memchr-scan (fastest batches): {}\n",
            ratios.join(", ")
        );
    }
}
