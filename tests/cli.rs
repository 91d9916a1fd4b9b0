//! The examples' command lines: each answers `--help` (exit status 0, its flags listed) and
//! refuses one bad input with a usage error naming the flag (exit status 2).
//!
//! `cargo test` builds the examples into `target/<profile>/examples/` beside this test's
//! `deps/` folder; these tests run those binaries (`gpu_check` needs feature `cuda` and is
//! left out).

use std::process::{Command, Output};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

mod common;
use common::example;

/// Runs example `name` with `args`.
fn run(name: &str, args: &[&str]) -> Result<Output> {
    Ok(Command::new(example(name)?).args(args).output()?)
}

/// `name --help` succeeds and lists `flag`; `name bad...` is a usage error naming `named`.
fn check(name: &str, flag: &str, bad: &[&str], named: &str) -> Result<()> {
    let help = run(name, &["--help"])?;
    let text = String::from_utf8_lossy(&help.stdout);
    assert_eq!(help.status.code(), Some(0), "{name} --help: {text}");
    assert!(text.contains(flag), "{name} --help lacks {flag}: {text}");
    assert!(text.contains("Usage: "), "{name} --help: {text}");
    let version = run(name, &["--version"])?;
    assert_eq!(version.status.code(), Some(0), "{name} --version");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with(name));
    let out = run(name, bad)?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{name} {bad:?}: {err}");
    assert!(
        err.contains(named),
        "{name} {bad:?} does not name {named}: {err}"
    );
    Ok(())
}

#[test]
fn train_cli() -> Result<()> {
    check("train", "--band-shift", &["--epochs", "many"], "--epochs")?;
    // Shows the audio recipe's defaults beside the general ones.
    let help = String::from_utf8_lossy(&run("train", &["--help"])?.stdout).into_owned();
    assert!(help.contains("[default: images: 30; audio: 80]"), "{help}");
    // A misspelt flag gets a suggestion.
    let out = run("train", &["--data", "x", "--epoch", "3"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--epochs"), "{err}");
    // The library's parsers name what is wrong.
    let out = run("train", &["--data", "x", "--tokens", "feelds"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--tokens") && err.contains("fields+lines"),
        "{err}"
    );
    // Neither --data nor --layout: a usage error.
    assert_eq!(run("train", &[])?.status.code(), Some(2));
    // --dist: none, mpi or nccl; each needs a build with its feature.
    let out = run("train", &["--data", "x", "--dist", "gloo"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--dist") && err.contains("none, mpi or nccl"),
        "{err}"
    );
    // --gpus starts NCCL ranks: refused without --dist nccl, and without the feature.
    let out = run("train", &["--data", "x", "--gpus", "0,1"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--gpus") && err.contains("--dist nccl"),
        "{err}"
    );
    if !cfg!(feature = "nccl") {
        for args in [
            &["--dist", "nccl"][..],
            &["--dist", "nccl", "--gpus", "0,1"],
        ] {
            let out = run("train", &[&["--data", "/nonexistent/x"][..], args].concat())?;
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(err.contains("feature `nccl`"), "{err}");
        }
    }
    let out = run("train", &["--data", "/nonexistent/x", "--dist", "mpi"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    if !cfg!(feature = "mpi") {
        assert!(err.contains("feature `mpi`"), "{err}");
    }
    // A misspelt key in a --config file: refused, naming the file, the key and its line.
    let dir = std::env::temp_dir().join(format!("tempest-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("misspelt.json");
    std::fs::write(&file, "{\n  \"num_classes\": 2,\n  \"dropuot\": 0.1\n}\n")?;
    let path = file.to_str().ok_or("temporary path is not UTF-8")?;
    let out = run("train", &["--data", "/nonexistent/x", "--config", path])?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    std::fs::remove_dir_all(&dir)?;
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("misspelt.json") && err.contains("dropuot") && err.contains("line 3"),
        "{err}"
    );
    // A failure of the work itself: exit status 1, the example's name first.
    let out = run("train", &["--data", "/nonexistent/tempest-cli-test"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("train: "), "{err}");
    Ok(())
}

#[test]
fn quickstart_cli() -> Result<()> {
    check(
        "quickstart",
        "--qualities",
        &["--device", "tpu"],
        "--device",
    )?;
    let help = String::from_utf8_lossy(&run("quickstart", &["--help"])?.stdout).into_owned();
    // The quickstart's own defaults, not TrainOptions'.
    assert!(help.contains("[default: 30]"), "{help}");
    Ok(())
}

#[test]
fn compare_cli() -> Result<()> {
    check(
        "compare",
        "--patch",
        &["--data", "x", "--patch", "x"],
        "--patch",
    )?;
    // Its defaults are the data's recipe (train's), not TrainOptions'.
    let help = String::from_utf8_lossy(&run("compare", &["--help"])?.stdout).into_owned();
    assert!(help.contains("audio 80, images 30"), "{help}");
    assert!(help.contains("--test-split"), "{help}");
    // A test split the data lacks (or the one trained on) is refused, naming the flag and the
    // data's splits, before anything trains.
    let words = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/spoken-words");
    let words = words.to_str().ok_or("path")?;
    for split in ["nope", "train"] {
        let args = [
            "--layout",
            "speechcommands",
            "--input",
            words,
            "--test-split",
            split,
        ];
        let out = run("compare", &args)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("--test-split {split}")) && err.contains("validation"),
            "{err}"
        );
    }
    Ok(())
}

#[test]
fn eval_cli() -> Result<()> {
    check(
        "eval",
        "--confusion",
        &["--checkpoint", "x", "--data", "y", "--dtype", "f64"],
        "--dtype",
    )
}

#[test]
fn classify_cli() -> Result<()> {
    check(
        "classify",
        "--top",
        &["--checkpoint", "x", "--top", "x"],
        "--top",
    )?;
    // No file: a usage error.
    let out = run("classify", &["--checkpoint", "x"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("FILE"), "{err}");
    Ok(())
}

#[test]
fn prepare_cli() -> Result<()> {
    check(
        "prepare",
        "--sample-rate",
        &[
            "--layout",
            "mnist",
            "--input",
            "x",
            "--output",
            "y",
            "--variants",
            "wav:1",
        ],
        "--variants",
    )
}

#[test]
fn blocks_cli() -> Result<()> {
    check("blocks", "--json", &["--jsn", "x.mp3"], "--json")?;
    // No file: a usage error.
    assert_eq!(run("blocks", &[])?.status.code(), Some(2));
    Ok(())
}

#[test]
fn cost_cli() -> Result<()> {
    check("cost", "--shape", &["--shape", "28"], "--shape")?;
    // Without flags: the library's table.
    let out = run("cost", &[])?;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout)?,
        tempest::tempest_model::cost::table()
    );
    // The flags change what is computed.
    let out = run(
        "cost",
        &["--preset", "tiny", "--shape", "10x20", "--seconds", "2"],
    )?;
    let text = String::from_utf8(out.stdout)?;
    assert!(
        text.starts_with("tiny: ") && !text.contains("small: "),
        "{text}"
    );
    assert!(
        text.contains("10 blocks of 20 B") && text.contains("   2 s: "),
        "{text}"
    );
    Ok(())
}
