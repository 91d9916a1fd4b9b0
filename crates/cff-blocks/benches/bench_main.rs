//! The benchmarks of cff-blocks: `cargo bench -p cff-blocks` (no candle to compile).
//!
//! ```text
//! scripts/bench.sh                                  # every group, then the table
//! RAYON_NUM_THREADS=2 cargo bench -p cff-blocks -- mp3-low   # benchmarks whose id matches
//! ```
//!
//! Each module of `benchmarks/` is a criterion group: `parsing` times the block readers
//! against decoders, demuxers and a memory scan on the inputs of the workspace's
//! `benches/data/`. `block_loop.rs` beside this file is an example, not a bench: it times the
//! same loop by fastest batches and gives fixed work for instruction counts.

mod benchmarks;

criterion::criterion_main!(benchmarks::parsing::parsing);
