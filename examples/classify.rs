//! Classifies files with a checkpoint: each file's top labels with their probabilities.
//!
//! ```text
//! cargo run --release --example classify -- --checkpoint RUN_DIR|CKPT_DIR [--top 3]
//!     [--device cpu|cuda|cuda:N] [--dtype f32|bf16] FILE...
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use tempest::tempest_model::{Classifier, DeviceChoice, Precision};
use tempest::tempest_train::checkpoint;

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let mut ckpt = None::<PathBuf>;
    let mut top = 3usize;
    let mut files = Vec::new();
    let (mut device, mut dtype) = (DeviceChoice::Cpu, Precision::F32);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--checkpoint" => ckpt = args.next().map(PathBuf::from),
            "--top" => top = args.next().ok_or("--top needs a value")?.parse()?,
            "--device" => device = args.next().ok_or("--device needs a value")?.parse()?,
            "--dtype" => dtype = args.next().ok_or("--dtype needs a value")?.parse()?,
            _ => files.push(PathBuf::from(a)),
        }
    }
    let ckpt = ckpt.ok_or("give --checkpoint DIR")?;
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
                println!("{}: error: {e}", f.display());
            }
        }
    }
    Ok(all_ok)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("classify: {e}");
            ExitCode::FAILURE
        }
    }
}
