//! TEMPEST against an AST/ViT baseline on the same files, split and budget: one table.
//!
//! ```text
//! cargo run --release --example compare -- (--data PREPARED_DIR | --layout L --input DIR)
//!     [--variants jpeg:75 | mp3:32,...] [--eval-variant NAME] [--preset tiny|small|paper]
//!     [--epochs N] [--batch B] [--lr LR] [--seed S] [--patch 7|4] [--max-train-items N]
//!     [--out DIR] [--no-progress] [TEMPEST's tokenizer and training flags of `train`:
//!     --tokens T, --block-bytes L, --crop N, --lambda X, --label-smoothing X,
//!     --device cpu|cuda|cuda:N, --dtype f32|bf16, ...]
//! ```
//!
//! `--layout` (`folder`, `speechcommands`, `esc50`, `mnist`) reads a raw layout as the
//! `train` example does (WAV/PNG/IDX inputs are prepared in `--variants` into `OUT/data`).
//! Both models are trained on the training split with the same batches, optimiser, schedule
//! and epochs, and tested on the test split; the table has one row per model and the ratios
//! TEMPEST/baseline. See docs/results.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use tempest::cff_encode::prepare::{parse_variants, Layout, Variant};
use tempest::tempest_baseline::{compare, CompareOptions};
use tempest::tempest_model::Config;
use tempest::tempest_train::{Dataset, SplitPlan};

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut o = CompareOptions::default();
    o.train.epochs = 2;
    o.train.batch_size = 32;
    o.train.lr = 2e-3;
    let (mut data, mut layout, mut input) = (None::<PathBuf>, None::<Layout>, None::<PathBuf>);
    let mut variants: Option<Vec<Variant>> = None;
    let mut out = PathBuf::from("runs/compare");
    let mut max_train = None::<usize>;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        // The training flags shared with `train` (--epochs, --tokens, --block-bytes, --lambda…).
        if o.train.apply_flag(&a, || args.next())? {
            continue;
        }
        let mut v = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--data" => data = Some(v()?.into()),
            "--layout" => layout = Some(v()?.parse()?),
            "--input" => input = Some(v()?.into()),
            "--variants" => variants = Some(parse_variants(&v()?)?),
            "--eval-variant" => o.eval_variant = Some(v()?),
            "--preset" => {
                let name = v()?;
                o.tempest = Config::preset(&name).ok_or(format!("no preset {name}"))?
            }
            "--patch" => o.features = o.features.with_image_patch(v()?.parse()?),
            "--max-train-items" => max_train = Some(v()?.parse()?),
            "--out" => out = v()?.into(),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let start = Instant::now();
    let mut dataset = match (data, layout, input) {
        (Some(dir), None, None) => Dataset::from_manifest(&dir)?,
        (None, Some(layout), Some(input)) => {
            let v = variants.clone().unwrap_or(match layout {
                Layout::Mnist => vec![Variant::Jpeg(75)],
                _ => vec![Variant::Mp3(32)],
            });
            Dataset::open_layout(layout, &input, &out.join("data"), &v, o.train.progress)?.0
        }
        _ => return Err("give --data DIR, or --layout L with --input DIR".into()),
    };
    if let Some(vs) = &variants {
        o.train_variants = vs.iter().map(ToString::to_string).collect();
        if o.eval_variant.is_none() {
            o.eval_variant = o.train_variants.first().cloned();
        }
    }
    let plan = SplitPlan::standard(&dataset)?;
    if let Some(n) = max_train {
        dataset.truncate_splits(&plan.train, n);
    }
    o.out = Some(out.clone());
    let cmp = compare(&dataset, &plan, &o)?;
    println!("{}", cmp.table());
    print!("{}", cmp.notes());
    println!(
        "{:.0} s in all; metrics in {}",
        start.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}
