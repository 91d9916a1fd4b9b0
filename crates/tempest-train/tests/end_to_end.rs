//! End to end, in seconds: prepare (or read) compressed files, train a few steps, checkpoint,
//! resume, evaluate; for JPEG (real MNIST digits, prepared by cff-encode) and MP3 (the
//! embedded spoken words); and a dataset with corrupt files.

use std::path::Path;

use cff_encode::image::read_idx;
use tempest_data::{Layout, Variant};
use tempest_model::Config;
use tempest_train::{checkpoint, evaluate, train, Dataset, EvalVariants, SplitPlan, TrainOptions};

mod common;
use common::{repo, scratch, spoken_words, Result};

/// Writes an uncompressed IDX file (magic 0x0000_08_<rank>, big-endian dims, then bytes).
fn write_idx(path: &Path, dims: &[u32], data: &[u8]) -> Result<()> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    std::fs::write(path, out)?;
    Ok(())
}

/// A small MNIST layout: the first `n` digits of each of the embedded IDX sets.
fn small_mnist(dir: &Path, n: usize) -> Result<()> {
    for (set, count) in [("train", n), ("t10k", n / 2)] {
        let images = read_idx(
            &std::fs::read(repo().join(format!("data/mnist/{set}-images-idx3-ubyte.gz")))?,
            1 << 30,
        )?;
        let labels = read_idx(
            &std::fs::read(repo().join(format!("data/mnist/{set}-labels-idx1-ubyte.gz")))?,
            1 << 30,
        )?;
        write_idx(
            &dir.join(format!("{set}-images-idx3-ubyte")),
            &[count as u32, 28, 28],
            &images.data[..count * 784],
        )?;
        write_idx(
            &dir.join(format!("{set}-labels-idx1-ubyte")),
            &[count as u32],
            &labels.data[..count],
        )?;
    }
    Ok(())
}

fn quick_options(seed: u64) -> TrainOptions {
    let mut o = TrainOptions::default();
    o.epochs = 2;
    o.batch_size = 8;
    o.seed = seed;
    o.workers = 1;
    o.progress = false;
    o.lr = 3e-3;
    o
}

/// A loaded checkpoint evaluated on the test split as it reads files (batches of 16, no
/// workers).
fn evaluate_test(
    loaded: &checkpoint::Loaded,
    dataset: &Dataset,
    plan: &SplitPlan,
    o: &TrainOptions,
) -> Result<tempest_train::EvalReport> {
    Ok(evaluate(
        &loaded.model,
        dataset,
        &dataset.select(&plan.test),
        &o.eval_variants,
        &loaded.tokenizer.eval_config()?,
        16,
        0,
        false,
    )?)
}

fn weights(dir: &Path) -> Result<Vec<u8>> {
    Ok(std::fs::read(
        dir.join("last").join(tempest_model::WEIGHTS_FILE),
    )?)
}

/// Runs the same training uninterrupted and stopped mid-epoch then resumed: the weights must
/// be bit-identical; then evaluates the checkpoint.
fn train_interrupt_resume(
    dataset: &Dataset,
    plan: &SplitPlan,
    options: TrainOptions,
    name: &str,
) -> Result<()> {
    let cfg = Config::tiny();
    let whole = scratch(&format!("{name}-whole"))?;
    let report = train(dataset, plan, &cfg, &options, &whole, false)?;
    assert!(!report.interrupted);
    assert_eq!(report.epochs, 2);
    let test = report.test.as_ref().ok_or("no test")?;
    assert!(test.variants[0].1.items > 0);
    assert!(whole.join("best").join("model.safetensors").exists());
    let lines = std::fs::read_to_string(whole.join("metrics.jsonl"))?;
    assert_eq!(lines.lines().count(), 3, "two epochs and the test: {lines}");
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().ok_or("empty")?)?;
    assert!(first["train"]["loss"].as_f64().is_some_and(f64::is_finite));
    assert!(first["eval"]["variants"][0]["metrics"]["confusion"].is_array());

    let steps = report.steps;
    assert!(steps >= 4, "{steps} steps");
    let parted = scratch(&format!("{name}-parted"))?;
    let mut stop = options.clone();
    stop.stop_after_steps = Some(steps / 2 - 1); // inside the first epoch
    let r1 = train(dataset, plan, &cfg, &stop, &parted, false)?;
    assert!(r1.interrupted && r1.test.is_none());
    assert_eq!(r1.steps, steps / 2 - 1);
    // Items and seconds of this process's training, and the device, for `--max-steps` timing;
    // the resumed run below counts only what it trained itself.
    let per_epoch = report.train_items / 2;
    assert!(
        r1.train_items > 0 && r1.train_items < per_epoch,
        "{}",
        r1.train_items
    );
    assert!(r1.train_seconds > 0.0);
    assert_eq!(r1.device, tempest_model::DeviceChoice::Cpu);
    assert!(r1.speed_summary().starts_with(&format!(
        "trained {} steps on cpu: {} items",
        r1.steps, r1.train_items
    )));
    let state: tempest_train::TrainState =
        checkpoint::read_json(&parted.join("last").join(checkpoint::STATE_FILE))?;
    assert_eq!((state.epoch, state.step), (0, steps / 2 - 1));
    let r2 = train(dataset, plan, &cfg, &options, &parted, true)?;
    assert!(!r2.interrupted);
    assert_eq!(r2.steps, steps);
    assert_eq!(r1.train_items + r2.train_items, report.train_items);
    assert_eq!(
        weights(&whole)?,
        weights(&parted)?,
        "resumed weights differ"
    );
    let (a, b) = (
        report.test.as_ref().ok_or("no test")?.accuracy,
        r2.test.as_ref().ok_or("no test")?.accuracy,
    );
    assert_eq!(a, b);

    // The saved checkpoint evaluates to the same accuracy as the run's own test.
    let loaded = checkpoint::load(&whole.join("last"), &candle_core::Device::Cpu)?;
    assert_eq!(loaded.classes, dataset.classes);
    let eval = evaluate_test(&loaded, dataset, plan, &options)?;
    if plan.validation.is_empty() {
        assert_eq!(eval.accuracy, a);
    }
    let _ = std::fs::remove_dir_all(&whole);
    let _ = std::fs::remove_dir_all(&parted);
    Ok(())
}

#[test]
fn jpeg_mnist_prepare_train_interrupt_resume_evaluate() -> Result<()> {
    let raw = scratch("mnist-raw")?;
    small_mnist(&raw, 32)?;
    let cache = scratch("mnist-cache")?;
    let variants = [Variant::jpeg_quality(75), Variant::jpeg_quality(90)];
    let (dataset, summary) = Dataset::open_layout(Layout::Mnist, &raw, &cache, &variants, false)?;
    let summary = summary.ok_or("nothing prepared")?;
    assert_eq!(summary.written, 48 * 2);
    assert_eq!(dataset.samples.len(), 48);
    assert_eq!(dataset.classes.len(), 10);
    assert_eq!(dataset.variants(), vec!["jpeg:75", "jpeg:90"]);
    // A second open finds the cache complete.
    let (again, s2) = Dataset::open_layout(Layout::Mnist, &raw, &cache, &variants, false)?;
    assert_eq!(s2.ok_or("no summary")?.written, 0);
    assert_eq!(again, dataset);
    let plan = SplitPlan::standard(&dataset)?;
    assert_eq!(plan.train, vec!["train"]);
    let mut o = quick_options(11);
    o.eval_variants = EvalVariants::All;
    // Batches of 8 in parts of 3, 3 and 2 computed at once: resuming must still give the
    // same weights (the MP3 test keeps the default).
    o.parallel_parts = 3;
    train_interrupt_resume(&dataset, &plan, o, "jpeg")?;
    let _ = std::fs::remove_dir_all(&raw);
    let _ = std::fs::remove_dir_all(&cache);
    Ok(())
}

#[test]
fn mp3_spoken_words_train_interrupt_resume_evaluate() -> Result<()> {
    let mut dataset =
        Dataset::from_compressed(Layout::SpeechCommands, &repo().join("data/spoken-words"))?;
    assert_eq!(dataset.samples.len(), 160);
    assert_eq!(dataset.classes.len(), 10);
    let plan = SplitPlan::standard(&dataset)?;
    assert_eq!(plan.validation, vec!["validation"]);
    assert_eq!(dataset.select(&plan.test).len(), 20);
    assert_eq!(dataset.select(&plan.validation).len(), 20);
    dataset.truncate_splits(&plan.train, 24);
    assert_eq!(dataset.select(&plan.train).len(), 24);
    train_interrupt_resume(&dataset, &plan, quick_options(5), "mp3")?;
    Ok(())
}

#[test]
fn corrupt_files_are_skipped_and_counted() -> Result<()> {
    let dir = scratch("corrupt")?;
    let images = read_idx(
        &std::fs::read(repo().join("data/mnist/train-images-idx3-ubyte.gz"))?,
        1 << 30,
    )?;
    let labels = read_idx(
        &std::fs::read(repo().join("data/mnist/train-labels-idx1-ubyte.gz"))?,
        1 << 30,
    )?;
    for i in 0..24 {
        let split = if i < 16 { "train" } else { "test" };
        let class = dir.join(split).join(labels.data[i].to_string());
        std::fs::create_dir_all(&class)?;
        let jpeg = cff_encode::jpeg::encode_jpeg(
            &images.image(i)?,
            &cff_encode::jpeg::JpegOptions::with_quality(75),
        )?;
        std::fs::write(class.join(format!("{i}.jpg")), &jpeg)?;
        if i % 8 == 0 {
            // A truncated copy (cut inside the scan) and a file of garbage with a JPEG name.
            std::fs::write(class.join(format!("{i}-cut.jpg")), &jpeg[..jpeg.len() / 2])?;
            std::fs::write(class.join(format!("{i}-junk.jpg")), b"not a jpeg at all")?;
        }
    }
    let dataset = Dataset::from_compressed(Layout::Folder, &dir)?;
    let plan = SplitPlan::standard(&dataset)?;
    let mut o = quick_options(1);
    o.epochs = 1;
    let run_dir = dir.join("run");
    let report = train(&dataset, &plan, &Config::tiny(), &o, &run_dir, false)?;
    assert!(report.test.is_some());
    let junk = report
        .skipped
        .keys()
        .filter(|k| k.ends_with("-junk.jpg"))
        .count();
    assert_eq!(junk, 3, "{:?}", report.skipped);
    assert!(
        report.train_stats.files_skipped() >= 2,
        "{:?}",
        report.train_stats
    );
    assert!(
        report.eval_stats.files_skipped() >= 1,
        "{:?}",
        report.eval_stats
    );
    let summary = report.files_summary();
    assert!(summary.contains("skipped"), "{summary}");
    // The folder now holds a run: a fresh start there is refused (nothing silently lost) and
    // names the folder and the two ways on; --overwrite starts again.
    let before = std::fs::read_to_string(run_dir.join("metrics.jsonl"))?;
    let err = train(&dataset, &plan, &Config::tiny(), &o, &run_dir, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--overwrite") && err.contains("--resume") && err.contains("run"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(run_dir.join("metrics.jsonl"))?,
        before
    );
    o.overwrite = true;
    let again = train(&dataset, &plan, &Config::tiny(), &o, &run_dir, false)?;
    assert!(again.test.is_some());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// An ensemble evaluation gives each item one prediction, the mean of its class probabilities
/// over the variants; checked against the `Classifier` run on each file by hand.
#[test]
fn ensemble_evaluation_averages_each_items_probabilities() -> Result<()> {
    let raw = scratch("ensemble-raw")?;
    small_mnist(&raw, 24)?;
    let cache = scratch("ensemble-cache")?;
    let variants = [
        Variant::jpeg_quality(75),
        Variant::jpeg_quality(30),
        Variant::jpeg(75, 1, 1, 0)?,
    ];
    let (dataset, _) = Dataset::open_layout(Layout::Mnist, &raw, &cache, &variants, false)?;
    let plan = SplitPlan::standard(&dataset)?;
    let mut o = quick_options(3);
    o.epochs = 1;
    let names: Vec<String> = variants.iter().map(|v| v.to_string()).collect();
    o.test_variants = Some(EvalVariants::parse(&names.join("+")));
    assert_eq!(o.test_variants, Some(EvalVariants::Ensemble(names.clone())));
    let run = raw.join("run");
    let report = train(&dataset, &plan, &Config::tiny(), &o, &run, false)?;
    let test = report.test.ok_or("no test")?;
    let items = dataset.select(&plan.test);
    assert_eq!(test.variants.len(), 1, "one entry for the ensemble");
    assert_eq!(test.variants[0].0, format!("ensemble({})", names.join("+")));
    assert_eq!(test.variants[0].1.items as usize, items.len());

    // By hand: the classifier's probabilities for each file, averaged per item.
    let loaded = checkpoint::load(&run.join("last"), &candle_core::Device::Cpu)?;
    let tok = loaded.tokenizer.eval_config()?;
    let classifier = tempest_model::Classifier::new(loaded.model.clone(), candle_core::Device::Cpu)
        .with_tokenizer(tok.clone());
    let (mut right, mut loss) = (0usize, 0f64);
    for &i in &items {
        let sample = &dataset.samples[i];
        let mut mean = vec![0f64; dataset.classes.len()];
        for name in &names {
            let path = sample.variant(name).ok_or("variant missing")?;
            for p in classifier.classify_file(path)? {
                mean[p.class] += f64::from(p.probability) / names.len() as f64;
            }
        }
        let best = (0..mean.len())
            .max_by(|&a, &b| mean[a].total_cmp(&mean[b]))
            .ok_or("no classes")?;
        right += usize::from(best == sample.label as usize);
        loss -= mean[sample.label as usize].ln();
    }
    let m = &test.variants[0].1;
    assert_eq!(m.accuracy, right as f64 / items.len() as f64);
    let by_hand = loss / items.len() as f64;
    assert!((m.loss - by_hand).abs() < 1e-4, "{} vs {by_hand}", m.loss);

    // `ensemble` alone takes every variant of the dataset: the same result.
    let all = evaluate(
        &loaded.model,
        &dataset,
        &items,
        &EvalVariants::parse("ensemble"),
        &tok,
        16,
        0,
        false,
    )?;
    assert_eq!(all.accuracy, m.accuracy);
    assert_eq!(all.variants[0].0, test.variants[0].0);
    let _ = std::fs::remove_dir_all(&raw);
    let _ = std::fs::remove_dir_all(&cache);
    Ok(())
}

/// `--block-bytes L`: each block's first L ids are kept, the cuts are counted and reported,
/// and the checkpoint keeps L so that evaluation reads files the same way.
#[test]
fn blocks_cut_to_l_are_counted_and_l_is_saved() -> Result<()> {
    let raw = scratch("block-bytes-raw")?;
    small_mnist(&raw, 16)?;
    let cache = scratch("block-bytes-cache")?;
    let (dataset, _) = Dataset::open_layout(
        Layout::Mnist,
        &raw,
        &cache,
        &[Variant::jpeg_quality(75)],
        false,
    )?;
    let plan = SplitPlan::standard(&dataset)?;
    let mut o = quick_options(2);
    o.epochs = 1;
    o.block_bytes = Some(4);
    let run = raw.join("run");
    let report = train(&dataset, &plan, &Config::tiny(), &o, &run, false)?;
    assert!(
        report.train_stats.truncated_blocks > 0,
        "{:?}",
        report.train_stats
    );
    assert!(
        report.eval_stats.truncated_blocks > 0,
        "{:?}",
        report.eval_stats
    );
    let summary = report.files_summary();
    assert!(summary.contains("blocks cut to L"), "{summary}");
    let saved: tempest_tokenize::TokenizerConfig =
        checkpoint::read_json(&run.join("last").join(checkpoint::TOKENIZER_FILE))?;
    assert_eq!(saved.max_block_bytes, 4);
    o.block_bytes = Some(0);
    let err = train(
        &dataset,
        &plan,
        &Config::tiny(),
        &o,
        &raw.join("run0"),
        false,
    )
    .unwrap_err();
    assert!(err.to_string().contains("block bytes"), "{err}");
    let _ = std::fs::remove_dir_all(&raw);
    let _ = std::fs::remove_dir_all(&cache);
    Ok(())
}

#[test]
fn mp3_field_tokens_train_save_their_setting_and_classify_alike() -> Result<()> {
    use tempest_tokenize::BlockTokens;
    let (dataset, plan) = spoken_words(24)?;
    let mut o = quick_options(3);
    o.epochs = 1;
    o.tokens = Some(BlockTokens::FieldsAndLines);
    o.train_blocks = Some(20);
    let run = scratch("fields-run")?;
    let report = train(&dataset, &plan, &Config::tiny(), &o, &run, false)?;
    assert!(report.test.is_some());
    let saved: tempest_tokenize::TokenizerConfig =
        checkpoint::read_json(&run.join("last").join(checkpoint::TOKENIZER_FILE))?;
    assert_eq!(saved.tokens, BlockTokens::FieldsAndLines);
    assert_eq!(saved.train_blocks, Some(20));
    assert_eq!(saved.train_config()?.max_blocks, 20);
    assert_eq!(saved.eval_config()?.max_blocks, 1024);
    // The model's vocabulary holds the field ids; the checkpoint reads files the same way.
    let loaded = checkpoint::load(&run.join("last"), &candle_core::Device::Cpu)?;
    assert_eq!(
        loaded.model.config().vocab_size,
        tempest_tokenize::LINES_VOCAB_SIZE
    );
    assert_eq!(loaded.tokenizer.tokens, BlockTokens::FieldsAndLines);
    let eval = evaluate_test(&loaded, &dataset, &plan, &o)?;
    assert_eq!(eval.stats.files_used, 20);
    // Without --tokens and --gain-jitter: fields and band energies for MP3, fields for Opus,
    // bytes for JPEG, no jitter; a jitter applies to training only.
    let mut defaults = quick_options(3);
    let tiny = Config::tiny();
    let mp3 = defaults.tokenizer(cff_blocks::Format::Mp3, &tiny)?;
    assert_eq!((mp3.tokens.name(), mp3.gain_jitter), ("fields+energy", 0));
    let opus = defaults.tokenizer(cff_blocks::Format::OggOpus, &tiny)?;
    assert_eq!(opus.tokens.name(), "fields");
    defaults.gain_jitter = 4;
    let mp3 = defaults.tokenizer(cff_blocks::Format::Mp3, &tiny)?;
    assert_eq!(mp3.train_config()?.gain_jitter, 4);
    assert_eq!(
        mp3.eval_config()?.gain_jitter,
        0,
        "evaluation reads clips as they are"
    );
    defaults.gain_jitter = 0;
    let jpeg = defaults.tokenizer(cff_blocks::Format::Jpeg, &tiny)?;
    assert_eq!((jpeg.tokens.name(), jpeg.gain_jitter), ("bytes", 0));
    // An unknown name is refused with the names that exist.
    assert!(tempest_tokenize::BlockTokens::parse("feelds").is_none());
    let mut bad = o.clone();
    bad.train_blocks = Some(0);
    let err = train(
        &dataset,
        &plan,
        &Config::tiny(),
        &bad,
        &run.join("zero"),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("crop"), "{err}");
    let _ = std::fs::remove_dir_all(&run);
    Ok(())
}

/// `--device` and `--dtype` reach `train()`: a GPU that this build or machine cannot give, or
/// bf16 on the CPU, is an error naming the flag before anything is written.
#[test]
fn unavailable_devices_and_dtypes_are_refused_by_name() -> Result<()> {
    let dataset =
        Dataset::from_compressed(Layout::SpeechCommands, &repo().join("data/spoken-words"))?;
    let plan = SplitPlan::standard(&dataset)?;
    let run = scratch("device-refused")?;
    let mut o = quick_options(1);
    o.device = "cuda:7".parse()?;
    let err = tempest_train::train(&dataset, &plan, &Config::tiny(), &o, &run, false)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--device cuda:7"), "{err}");
    assert!(
        err.contains("--features cuda") || err.contains("no usable CUDA GPU"),
        "{err}"
    );
    let mut o = quick_options(1);
    o.dtype = "bf16".parse()?;
    let err = tempest_train::train(&dataset, &plan, &Config::tiny(), &o, &run, false)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--dtype bf16"), "{err}");
    assert!("tpu".parse::<tempest_model::DeviceChoice>().is_err());
    assert!(!run.join("metrics.jsonl").exists(), "nothing written");
    Ok(())
}

/// A run killed after writing an epoch's metrics line but before saving its resumable
/// checkpoint redoes that epoch when resumed: its line must then appear once, not twice, and
/// a test line of the killed process must not stay either.
#[test]
fn a_resumed_run_writes_each_epochs_metrics_once() -> Result<()> {
    let (dataset, plan) = spoken_words(24)?;
    let run = scratch("metrics-once")?;
    let mut o = quick_options(3);
    o.stop_after_steps = Some(3); // 24 items in batches of 8: the end of epoch 1
    let first = train(&dataset, &plan, &Config::tiny(), &o, &run, false)?;
    assert!(first.interrupted && first.epochs == 1);
    // What a kill after epoch 2's metrics line (and a test line) but before `last/` leaves.
    let metrics = run.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics)?;
    assert_eq!(text.lines().count(), 1);
    text.push_str("{\"epoch\":2,\"step\":6,\"killed\":true}\n{\"test\":{},\"elapsed_s\":1.0}\n");
    std::fs::write(&metrics, text)?;
    o.stop_after_steps = None;
    let done = train(&dataset, &plan, &Config::tiny(), &o, &run, true)?;
    assert!(!done.interrupted && done.epochs == 2);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)?
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    let epochs: Vec<u64> = lines.iter().filter_map(|l| l["epoch"].as_u64()).collect();
    assert_eq!(epochs, vec![1, 2], "{lines:?}");
    assert!(lines.iter().all(|l| l.get("killed").is_none()));
    assert_eq!(lines.iter().filter(|l| l.get("test").is_some()).count(), 1);
    // A line that is not JSON is an error naming the file and the line.
    std::fs::write(&metrics, "{\"epoch\":1}\nnot json\n")?;
    let err = train(&dataset, &plan, &Config::tiny(), &o, &run, true)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("metrics.jsonl") && err.contains("line 2"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&run);
    Ok(())
}

/// A prepared folder holding MP3 and Opus variants of each item: the format is the one of the
/// variants a run trains on, whichever the folder lists first.
#[test]
fn the_format_is_the_trained_variants() -> Result<()> {
    let dir = scratch("mixed-formats")?;
    let fixtures = repo().join("crates/cff-blocks/tests/fixtures");
    std::fs::copy(
        fixtures.join("opus/speech_mono_24k_20ms.opus"),
        dir.join("a.opus"),
    )?;
    std::fs::copy(fixtures.join("mp3/cbr32_16k_mono.mp3"), dir.join("a.mp3"))?;
    std::fs::write(
        dir.join("manifest.csv"),
        "id,label,split,variant,path,bytes,duration\n\
         a,x,train,opus:24,a.opus,1,1.0\n\
         a,x,train,mp3:32,a.mp3,1,1.0\n",
    )?;
    let dataset = Dataset::from_manifest(&dir)?;
    use cff_blocks::Format;
    let mp3 = tempest_train::detect_format(&dataset, &["mp3:32".to_string()])?;
    let opus = tempest_train::detect_format(&dataset, &["opus:24".to_string()])?;
    assert_eq!((mp3, opus), (Format::Mp3, Format::OggOpus));
    // Without a choice: the first readable file's.
    let any = tempest_train::detect_format(&dataset, &[])?;
    assert!(any == Format::Mp3 || any == Format::OggOpus);
    // Every variant's format, for a run over several (pretraining).
    let mut each = tempest_train::variant_formats(&dataset, &[])?;
    each.sort();
    assert_eq!(
        each,
        [
            ("mp3:32".to_string(), Format::Mp3),
            ("opus:24".to_string(), Format::OggOpus)
        ]
    );
    let both = tempest_train::detect_formats(&dataset, &[])?;
    assert_eq!(both.len(), 2);
    assert_eq!(both[0], any);
    assert_eq!(
        tempest_train::detect_formats(&dataset, &["opus:24".to_string()])?,
        [Format::OggOpus]
    );
    // A variant no file of which is readable is not a format.
    std::fs::write(dir.join("a.opus"), b"not opus")?;
    assert_eq!(tempest_train::detect_formats(&dataset, &[])?, [Format::Mp3]);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// One vocabulary for several formats: under the mixed default tokens each format's blocks
/// read exactly as under its own default (an Opus packet as its fields, a JPEG MCU as its
/// bytes), and the tokenizer takes the largest limits with the JPEG cap of its options.
#[test]
fn mixed_formats_read_each_format_as_its_own_default_does() -> Result<()> {
    use cff_blocks::Format;
    use tempest_tokenize::{tokenize_file, CropContext};
    let fixtures = repo().join("crates/cff-blocks/tests/fixtures");
    let all = [Format::Mp3, Format::OggOpus, Format::Jpeg];
    let mixed = tempest_train::default_tokens_for(&all);
    assert_eq!(mixed, tempest_train::default_tokens(Format::Mp3));
    assert_eq!(
        tempest_train::default_tokens_for(&[Format::Jpeg, Format::OggOpus]),
        tempest_train::default_tokens(Format::OggOpus)
    );
    let mut o = TrainOptions::default();
    o.format_block_bytes = vec![(Format::Jpeg, 8)];
    let config = o.model_config_for(&Config::tiny(), 2, &all)?;
    assert_eq!(config.vocab_size, mixed.vocab_size());
    let tok = o.tokenizer_for(&all, &config)?.eval_config()?;
    assert_eq!(tok.max_blocks, 1536, "Opus's N, the largest");
    assert_eq!(tok.block_bytes_for(Format::Jpeg), 8);
    for (rel, format) in [
        ("mp3/cbr32_16k_mono.mp3", Format::Mp3),
        ("opus/speech_mono_24k_20ms.opus", Format::OggOpus),
        ("jpeg/gray28_q75.jpg", Format::Jpeg),
    ] {
        // Its own default, without the JPEG cap.
        let own = TrainOptions::default()
            .tokenizer(format, &config)?
            .eval_config()?;
        let path = fixtures.join(rel);
        let a = tokenize_file(&path, &own, CropContext::default())?;
        let b = tokenize_file(&path, &tok, CropContext::default())?;
        assert_eq!(a.num_blocks(), b.num_blocks(), "{rel}");
        if format == Format::Jpeg {
            assert!(
                (0..a.num_blocks()).any(|k| a.block(k).len() > 8),
                "an MCU past 8 bytes"
            );
        }
        for k in 0..a.num_blocks() {
            let n = if format == Format::Jpeg {
                8
            } else {
                usize::MAX
            };
            let want = &a.block(k)[..a.block(k).len().min(n)];
            assert_eq!(b.block(k), want, "{rel} block {k}");
        }
    }
    Ok(())
}

/// `train` with the flatten mixer gives `mixer.flat` rows for the positions the data's blocks
/// have (MPEG-2 mono frames as `fields+energy`: at most 56 ids, so 40 or 56 positions, not
/// 512), writes that into the checkpoint, and the checkpoint loads and evaluates; other
/// mixers and a size already set are left alone.
#[test]
fn the_flatten_mixer_is_sized_by_the_datas_longest_block() -> Result<()> {
    use tempest_model::MixerKind;
    let (dataset, plan) = spoken_words(16)?;
    let o = quick_options(5);
    let tiny = Config::tiny();
    let tok = o.tokenizer(cff_blocks::Format::Mp3, &tiny)?;
    let longest = tempest_train::longest_block(&dataset, &[], &tok, 1000)?;
    assert!((39..=56).contains(&longest), "{longest}");
    let flat = tiny.clone().with_mixer(MixerKind::Flatten);
    let mut sized = flat.clone();
    tempest_train::size_mixer(&mut sized, &dataset, &[], &tok)?;
    assert_eq!(sized.mix_positions % 8, 0);
    assert!(sized.mix_positions >= longest && sized.mix_positions < longest + 8);
    let mut linear = tiny.clone();
    tempest_train::size_mixer(&mut linear, &dataset, &[], &tok)?;
    assert_eq!(linear.mix_positions, 0);
    let mut set = flat.clone();
    set.mix_positions = 24;
    tempest_train::size_mixer(&mut set, &dataset, &[], &tok)?;
    assert_eq!(set.mix_positions, 24);
    // Through train(): saved, loaded, evaluated.
    let mut o = o;
    o.epochs = 1;
    o.mixer = Some(MixerKind::Flatten);
    let run = scratch("flatten-sized")?;
    train(&dataset, &plan, &tiny, &o, &run, false)?;
    let loaded = checkpoint::load(&run.join("last"), &candle_core::Device::Cpu)?;
    let config = loaded.model.config();
    assert_eq!(config.mixer, MixerKind::Flatten);
    assert_eq!(config.mix_positions, sized.mix_positions);
    let eval = evaluate_test(&loaded, &dataset, &plan, &o)?;
    assert_eq!(eval.stats.files_used, 20);
    let _ = std::fs::remove_dir_all(&run);
    Ok(())
}

/// With `eval_every` 2 over 3 epochs only epochs 2 and 3 are evaluated: epoch 1's metrics line
/// holds its training figures alone, the best checkpoint comes from an evaluated epoch, and
/// the weights are those of a run that evaluates every epoch (evaluation changes nothing).
#[test]
fn eval_every_skips_evaluations_but_not_training() -> Result<()> {
    let (dataset, plan) = spoken_words(16)?;
    let mut o = quick_options(5);
    o.epochs = 3;
    let every = scratch("eval-every-1")?;
    train(&dataset, &plan, &Config::tiny(), &o, &every, false)?;
    o.eval_every = 2;
    let run = scratch("eval-every-2")?;
    let report = train(&dataset, &plan, &Config::tiny(), &o, &run, false)?;
    assert_eq!(report.epochs, 3);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))?
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    let evaluated: Vec<(u64, bool)> = lines
        .iter()
        .filter_map(|l| Some((l["epoch"].as_u64()?, l.get("eval").is_some())))
        .collect();
    assert_eq!(evaluated, [(1, false), (2, true), (3, true)]);
    assert!(lines[0]["train"]["loss"]
        .as_f64()
        .is_some_and(f64::is_finite));
    let (_, best_epoch) = report.best.ok_or("no best epoch")?;
    assert!(best_epoch >= 2, "best epoch {best_epoch}");
    assert!(run.join("best").join("model.safetensors").exists());
    assert!(report.test.is_some());
    assert_eq!(weights(&every)?, weights(&run)?);
    let _ = std::fs::remove_dir_all(&every);
    let _ = std::fs::remove_dir_all(&run);
    Ok(())
}
