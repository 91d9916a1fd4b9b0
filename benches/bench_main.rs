//! The facade's benchmarks: the ones that need the model or the encoders. Block parsing is
//! cff-blocks' own (`cargo bench -p cff-blocks`, no candle).
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo bench --bench bench_main                          # every group
//! RAYON_NUM_THREADS=2 cargo bench --features mp3,opus --bench bench_main -- 'encode|prepare'
//! RAYON_NUM_THREADS=2 cargo bench --bench bench_main -- 'matmul|tiny|small'   # model_step
//! RAYON_NUM_THREADS=2 cargo bench --bench bench_main -- tokenize
//! RAYON_NUM_THREADS=2 cargo bench --bench bench_main -- summary [WORD]        # model_step's table
//! ```
//!
//! One criterion group per module of `benchmarks/`: `encode` (cff-encode's encoders and
//! `prepare`), `model_step` (training steps and inference of the presets on the CPU) and
//! `tokenize` (files to batches). Each group builds its inputs before criterion sees its
//! filter, in seconds to minutes, so a filter that only some groups' benchmark ids can match
//! runs those groups alone; any other filter runs every group and leaves the choice to
//! criterion. `model_step`'s summary table follows the criterion run whenever that group ran.

use criterion::Criterion;

mod benchmarks;

use benchmarks::{encode, model_step, tokenize};

/// Criterion's options that take a value: the word after them is not the filter.
const VALUE_OPTIONS: &[&str] = &[
    "--color",
    "-c",
    "--save-baseline",
    "-s",
    "--baseline",
    "-b",
    "--baseline-lenient",
    "--load-baseline",
    "--format",
    "--profile-time",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--plotting-backend",
    "--output-format",
];

/// Criterion's filter: the first argument that is neither an option nor an option's value.
fn filter() -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if VALUE_OPTIONS.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

/// Which of the groups, given by the starts of their benchmark ids, to run: all without a
/// filter; else those that an alternative of the filter (`a|b`) names, read literally (a part
/// of an id start, or text that begins with one); all when an alternative names none.
fn chosen(groups: &[&[&str]]) -> Vec<bool> {
    let Some(filter) = filter() else {
        return vec![true; groups.len()];
    };
    let mut run = vec![false; groups.len()];
    for alternative in filter.split('|').map(|a| a.trim_start_matches('^')) {
        let names: Vec<bool> = groups
            .iter()
            .map(|ids| {
                ids.iter()
                    .any(|id| id.contains(alternative) || alternative.starts_with(id))
            })
            .collect();
        if !names.contains(&true) {
            return vec![true; groups.len()];
        }
        for (r, n) in run.iter_mut().zip(names) {
            *r |= n;
        }
    }
    run
}

fn main() {
    if model_step::run_mode() {
        return;
    }
    let run = chosen(&[encode::IDS, model_step::IDS, tokenize::IDS]);
    if run[0] {
        encode::encode();
    }
    if run[1] {
        model_step::model_step();
    }
    if run[2] {
        tokenize::tokenize();
    }
    Criterion::default().configure_from_args().final_summary();
    if run[1] {
        model_step::summary();
    }
}
