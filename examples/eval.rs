//! Evaluates a checkpoint on a split of a dataset.
//!
//! ```text
//! cargo run --release --example eval -- --checkpoint RUN_DIR|CKPT_DIR
//!     (--data PREPARED_DIR | --layout L --input DIR) [--split test] [--fold K]
//!     [--eval-variant mp3:32|all|first|mp3:20+mp3:32|ensemble] [--batch B] [--workers W]
//!     [--confusion FILE.png] [--device cpu|cuda|cuda:N] [--dtype f32|bf16]
//! ```
//!
//! Prints per-variant accuracy (top-5 with more than 5 classes) and per-class accuracy; the
//! last line is `<split> accuracy: 0.XXXX` (`test accuracy: 0.XXXX` by default). `--confusion` draws the (first variant's) confusion
//! matrix as a PNG.

use std::path::PathBuf;
use std::process::ExitCode;

use tempest::cff_encode::prepare::Layout;
use tempest::tempest_model::{DeviceChoice, Precision};
use tempest::tempest_train::{self, checkpoint, Dataset, EvalVariants};

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (mut ckpt, mut data, mut layout, mut input) = (
        None::<PathBuf>,
        None::<PathBuf>,
        None::<Layout>,
        None::<PathBuf>,
    );
    let mut split = "test".to_string();
    let mut variants = EvalVariants::First;
    let (mut batch, mut workers) = (64usize, 2usize);
    let mut confusion = None::<PathBuf>;
    let (mut device, mut dtype) = (DeviceChoice::Cpu, Precision::F32);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--checkpoint" => ckpt = Some(v()?.into()),
            "--data" => data = Some(v()?.into()),
            "--layout" => layout = Some(v()?.parse()?),
            "--input" => input = Some(v()?.into()),
            "--split" | "--fold" => split = v()?,
            "--eval-variant" => variants = EvalVariants::parse(&v()?),
            "--batch" => batch = v()?.parse()?,
            "--workers" => workers = v()?.parse()?,
            "--confusion" => confusion = Some(v()?.into()),
            "--device" => device = v()?.parse()?,
            "--dtype" => dtype = v()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let ckpt = ckpt.ok_or("give --checkpoint DIR")?;
    let mut dataset = match (data, layout, input) {
        (Some(dir), None, None) => Dataset::from_manifest(&dir)?,
        (None, Some(layout), Some(input)) => Dataset::from_compressed(layout, &input)?,
        _ => {
            return Err("give --data DIR, or --layout L and --input DIR (compressed files)".into())
        }
    };
    let device = device.open()?;
    let loaded = checkpoint::load_as(&ckpt, &device, dtype.dtype(&device)?)?;
    let dropped = dataset.relabel(&loaded.classes);
    if dropped > 0 {
        println!("{dropped} items of classes the model does not know were left out");
    }
    let indices = dataset.select(&[split.clone()]);
    let report = tempest_train::evaluate(
        &loaded.model,
        &dataset,
        &indices,
        &variants,
        &loaded.tokenizer.eval_config()?,
        batch,
        workers,
        true,
    )?;
    for (v, m) in &report.variants {
        println!(
            "{v}: {} items, accuracy {:.4}{}, loss {:.4}",
            m.items,
            m.accuracy,
            m.top5
                .map(|t| format!(", top-5 {t:.4}"))
                .unwrap_or_default(),
            m.loss
        );
        for (c, acc) in m.per_class.iter().enumerate() {
            if let (Some(acc), Some(name)) = (acc, loaded.classes.get(c)) {
                println!("  {name}: {acc:.4}");
            }
        }
    }
    println!(
        "{} files used, {} skipped",
        report.stats.files_used,
        report.stats.files_skipped()
    );
    for (p, why) in report.skipped.iter().take(20) {
        println!("  skipped {p}: {why}");
    }
    if let (Some(path), Some((_, m))) = (&confusion, report.variants.first()) {
        tempest_train::plots::plot_confusion(&m.confusion, &loaded.classes, path)?;
        println!("confusion matrix drawn in {}", path.display());
    }
    println!("{split} accuracy: {:.4}", report.accuracy);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eval: {e}");
            ExitCode::FAILURE
        }
    }
}
