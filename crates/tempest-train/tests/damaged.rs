//! Damaged run folders and datasets fail with an error that names the file (and the line,
//! where the file has lines), never a panic: a truncated `model.safetensors` or
//! `optimizer.safetensors`, a `config.json`, `state.json` or `tempest_tokenizer.json` that is
//! not JSON, class names in `config.json` that do not match the model, a bit flipped or a
//! few bytes cut where the checkpoint's `checksums.json` records each file's length and
//! CRC-32, a damaged `checksums.json`, a manifest with a damaged row.

use std::path::Path;

use candle_core::Device;
use tempest_model::Config;
use tempest_train::{checkpoint, train, Dataset, SplitPlan, TrainOptions};

mod common;
use common::{scratch, spoken_words, Result};

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let path = entry?.path();
        let target = to.join(path.file_name().ok_or("no name")?);
        if path.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            std::fs::copy(&path, &target)?;
        }
    }
    Ok(())
}

fn truncate_half(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path)?;
    std::fs::write(path, &bytes[..bytes.len() / 2])?;
    Ok(())
}

/// A run of 16 spoken words stopped at the end of its first epoch (a resumable `last/`) in
/// `<scratch base>/good`, and the options that resume it to its 2 epochs.
struct Stopped {
    dataset: Dataset,
    plan: SplitPlan,
    base: std::path::PathBuf,
    run: std::path::PathBuf,
    options: TrainOptions,
}

fn stopped_run(name: &str) -> Result<Stopped> {
    let (dataset, plan) = spoken_words(16)?;
    let base = scratch(name)?;
    let run = base.join("good");
    let mut o = TrainOptions::default();
    o.epochs = 2;
    o.batch_size = 8;
    o.workers = 1;
    o.progress = false;
    o.stop_after_steps = Some(2); // the end of epoch 1: a resumable `last/`
    let first = train(&dataset, &plan, &Config::tiny(), &o, &run, false)?;
    assert!(first.interrupted);
    o.stop_after_steps = None;
    Ok(Stopped {
        dataset,
        plan,
        base,
        run,
        options: o,
    })
}

#[test]
fn damaged_checkpoints_fail_naming_the_file() -> Result<()> {
    let Stopped {
        dataset,
        plan,
        base,
        run,
        options: o,
    } = stopped_run("damaged-run")?;

    // Each damage in a copy of the run. Resuming reads the weights, the optimiser state, the
    // configuration and the training state; loading for inference (eval, classify) reads the
    // weights, the configuration, the class names and the tokenizer settings. Each reader of
    // a damaged file must fail with an error naming it.
    type Damage = fn(&Path) -> Result<()>;
    let damages: [(&str, &str, bool, bool, Damage); 7] = [
        ("model.safetensors", "model.safetensors", true, true, |d| {
            truncate_half(&d.join("model.safetensors"))
        }),
        (
            "model.safetensors emptied",
            "model.safetensors",
            true,
            true,
            |d| Ok(std::fs::write(d.join("model.safetensors"), [])?),
        ),
        (
            "optimizer.safetensors",
            "optimizer.safetensors",
            true,
            false,
            |d| truncate_half(&d.join("optimizer.safetensors")),
        ),
        ("config.json", "config.json", true, true, |d| {
            Ok(std::fs::write(d.join("config.json"), "{\n  \"dim\": ,\n}")?)
        }),
        ("state.json", "state.json", true, false, |d| {
            Ok(std::fs::write(d.join("state.json"), "[1, 2")?)
        }),
        (
            "tempest_tokenizer.json",
            "tempest_tokenizer.json",
            false,
            true,
            |d| {
                Ok(std::fs::write(
                    d.join("tempest_tokenizer.json"),
                    "not json",
                )?)
            },
        ),
        ("class names", "config.json", true, true, |d| {
            // One class name left in id2label (the model has two classes).
            let path = d.join("config.json");
            let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
            config["id2label"] = serde_json::json!({ "0": "only one" });
            Ok(std::fs::write(path, serde_json::to_vec_pretty(&config)?)?)
        }),
    ];
    for (what, file, resume_reads, load_reads, damage) in damages {
        let copy = base.join(what.replace(' ', "-"));
        copy_dir(&run, &copy)?;
        // Only `last/` is damaged; a `last.old` beside it would be an intact fallback.
        let _ = std::fs::remove_dir_all(copy.join("last.old"));
        damage(&copy.join("last"))?;
        // Without the checksums (a checkpoint written before them) each format's own reader
        // must catch the damage; with them, `checksums_catch_what_the_formats_do_not` below.
        std::fs::remove_file(copy.join("last").join(checkpoint::CHECKSUMS_FILE))?;
        if resume_reads {
            let err = match train(&dataset, &plan, &Config::tiny(), &o, &copy, true) {
                Ok(r) => panic!("{what}: resumed and ran {} epochs", r.epochs),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(file), "{what}: resume error {err:?}");
            if what == "config.json" {
                assert!(err.contains("line 2"), "{what}: {err:?}");
            }
        }
        if load_reads {
            let err = match checkpoint::load(&copy.join("last"), &Device::Cpu) {
                Ok(_) => panic!("{what}: the checkpoint loaded"),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains(file) || err.contains("class names"),
                "{what}: load error {err:?}"
            );
        }
    }
    // A checkpoint in the older layout (class names in classes.json,
    // the tokenizer settings in tokenizer.json) loads with the same names and settings.
    let old = base.join("old-layout");
    copy_dir(&run.join("last"), &old)?;
    std::fs::remove_file(old.join(checkpoint::CHECKSUMS_FILE))?; // none in that layout
    let now = checkpoint::load(&run.join("last"), &Device::Cpu)?;
    let config_path = old.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path)?)?;
    let names = config["id2label"].clone();
    assert_eq!(names["0"].as_str(), Some(now.classes[0].as_str()));
    if let Some(map) = config.as_object_mut() {
        map.remove("id2label");
        map.remove("label2id");
    }
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
    std::fs::write(old.join("classes.json"), serde_json::to_vec(&now.classes)?)?;
    std::fs::rename(
        old.join(checkpoint::TOKENIZER_FILE),
        old.join(checkpoint::OLD_TOKENIZER_FILE),
    )?;
    let then = checkpoint::load(&old, &Device::Cpu)?;
    assert_eq!(then.classes, now.classes);
    assert_eq!(then.tokenizer, now.tokenizer);
    let classifier = tempest_model::Classifier::load(&old, &Device::Cpu)?;
    assert_eq!(classifier.classes(), now.classes.as_slice());

    // The undamaged run still resumes and finishes.
    let done = train(&dataset, &plan, &Config::tiny(), &o, &run, true)?;
    assert!(!done.interrupted && done.epochs == 2);
    std::fs::remove_dir_all(&base)?;
    Ok(())
}

/// Flips one bit two thirds into the file at `path` (past a safetensors header, inside the
/// tensors' data).
fn flip_a_bit(path: &Path) -> Result<()> {
    let mut bytes = std::fs::read(path)?;
    let i = bytes.len() - bytes.len() / 3;
    bytes[i] ^= 0x10;
    std::fs::write(path, bytes)?;
    Ok(())
}

/// One bit flipped inside a tensor's data still parses as safetensors (a silently different
/// model without a checksum); the checkpoint's `checksums.json` makes resume and load fail,
/// naming the file and the CRC. A damaged `checksums.json` names itself.
#[test]
fn checksums_catch_what_the_formats_do_not() -> Result<()> {
    let Stopped {
        dataset,
        plan,
        base,
        run,
        options: o,
    } = stopped_run("checksums-run")?;
    let last = run.join("last");
    let listed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(last.join(checkpoint::CHECKSUMS_FILE))?)?;
    for f in [
        "model.safetensors",
        "optimizer.safetensors",
        "config.json",
        "state.json",
    ] {
        assert!(listed[f]["crc32"].is_u64(), "{f} not listed: {listed}");
    }
    checkpoint::verify(&last)?;

    type Damage = fn(&Path) -> Result<()>;
    let cases: [(&str, &str, &str, bool, Damage); 4] = [
        // Past the header, inside the tensors' data: safetensors reads it without complaint.
        ("weights bit", "model.safetensors", "CRC-32", true, |d| {
            flip_a_bit(&d.join("model.safetensors"))
        }),
        (
            "optimiser bit",
            "optimizer.safetensors",
            "CRC-32",
            false,
            |d| flip_a_bit(&d.join("optimizer.safetensors")),
        ),
        (
            "weights cut",
            "model.safetensors",
            "bytes where",
            true,
            |d| {
                let path = d.join("model.safetensors");
                let bytes = std::fs::read(&path)?;
                Ok(std::fs::write(&path, &bytes[..bytes.len() - 4])?)
            },
        ),
        ("checksums", "checksums.json", "checksums.json", true, |d| {
            Ok(std::fs::write(d.join("checksums.json"), "{\"model")?)
        }),
    ];
    for (what, file, says, load_reads, damage) in cases {
        let copy = base.join(what.replace(' ', "-"));
        copy_dir(&run, &copy)?;
        let _ = std::fs::remove_dir_all(copy.join("last.old"));
        damage(&copy.join("last"))?;
        let err = match train(&dataset, &plan, &Config::tiny(), &o, &copy, true) {
            Ok(r) => panic!("{what}: resumed and ran {} epochs", r.epochs),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(file) && err.contains(says), "{what}: {err:?}");
        if load_reads {
            let err = checkpoint::load(&copy.join("last"), &Device::Cpu)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(err.contains(file) && err.contains(says), "{what}: {err:?}");
            // `classify` loads through the model crate, which checks them too.
            let err = tempest_model::Classifier::load(&copy.join("last"), &Device::Cpu)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(err.contains(file) && err.contains(says), "{what}: {err:?}");
        }
    }
    // The flipped weights do load when the checksums are gone: the check is what tells.
    let copy = base.join("weights-bit");
    std::fs::remove_file(copy.join("last").join(checkpoint::CHECKSUMS_FILE))?;
    checkpoint::load(&copy.join("last"), &Device::Cpu)?;
    std::fs::remove_dir_all(&base)?;
    Ok(())
}

#[test]
fn a_damaged_manifest_row_names_the_file_and_line() -> Result<()> {
    let dir = scratch("damaged-manifest")?;
    let header = "id,label,split,variant,path,bytes,duration\n";
    let good = "a,yes,train,mp3:32,a.mp3,100,1.000000\n";
    for (what, row) in [
        ("too few fields", "b,no,train,mp3:32\n"),
        ("bytes not a number", "b,no,train,mp3:32,b.mp3,lots,1.0\n"),
        ("unknown variant", "b,no,train,mp3:x,b.mp3,100,1.0\n"),
        ("unclosed quote", "\"b,no,train,mp3:32,b.mp3,100,1.0\n"),
    ] {
        std::fs::write(dir.join("manifest.csv"), format!("{header}{good}{row}"))?;
        let err = match Dataset::from_manifest(&dir) {
            Ok(_) => panic!("{what}: the manifest was read"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("manifest.csv") && err.contains("line "),
            "{what}: {err:?}"
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
