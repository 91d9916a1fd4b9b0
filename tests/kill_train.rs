//! `train` killed with SIGKILL at random moments and resumed with `--resume` each time ends with
//! the weights and the optimiser state of an uninterrupted run, byte for byte (CPU, dropout 0),
//! and its `metrics.jsonl` holds each epoch once and one test line.
//!
//! The run is the built `train` example (`cargo test` builds the examples) on 48 of the
//! shipped spoken words, `tiny`, 3 epochs of 6 steps, the resumable checkpoint after every
//! step, one thread. The kills land at delays drawn from the clock within the uninterrupted
//! run's own duration, so they hit steps, evaluations, checkpoint writes and metrics writes
//! on a fast machine and a slow one alike; whatever moment they hit, the end state must be the
//! same, so the assertions do not depend on timing. `scripts/kill-resume.sh` is the longer
//! release-build version (ten kills, 12 epochs).

#![cfg(unix)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

mod common;

/// The epochs of `metrics.jsonl`'s epoch lines, in order, and its count of test lines.
fn epochs_and_tests(run: &Path) -> Result<(Vec<u64>, usize)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl"))?;
    let mut epochs = Vec::new();
    let mut tests = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if let Some(e) = v.get("epoch").and_then(serde_json::Value::as_u64) {
            epochs.push(e);
        }
        if v.get("test").is_some() {
            tests += 1;
        }
    }
    Ok((epochs, tests))
}

#[test]
fn train_killed_and_resumed_matches_an_uninterrupted_run() -> Result<()> {
    let bin = common::example("train")?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = std::env::temp_dir().join(format!("tempest-kill-train-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let command = |out: &Path, how: &str| {
        let mut c = Command::new(&bin);
        c.args(["--layout", "speechcommands", "--input"])
            .arg(repo.join("data/spoken-words"))
            .arg("--out")
            .arg(out)
            .args(["--preset", "tiny", "--epochs", "3", "--batch", "8"])
            .args(["--max-train-items", "48", "--checkpoint-every", "1"])
            .args(["--workers", "1", "--no-progress"])
            .env("RAYON_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !how.is_empty() {
            c.arg(how);
        }
        c
    };
    let whole = work.join("whole");
    let start = Instant::now();
    assert!(command(&whole, "").status()?.success());
    let took = start.elapsed().as_millis().max(50) as u64;

    // Up to six kills, each at a delay drawn from the clock in [10 ms, 0.8 × the whole run]
    // after the (re)start; a run that ends first is not killed.
    let killed = work.join("killed");
    let mut s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let mut kills = 0;
    for _ in 0..6 {
        // Resume where a checkpoint exists; a kill before the first one leaves nothing to
        // resume, so that run starts again.
        let resumable = killed.join("last").exists() || killed.join("last.old").exists();
        let how = if resumable { "--resume" } else { "--overwrite" };
        let mut child = command(&killed, how).spawn()?;
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let delay = 10 + u64::from(s >> 8) % (took * 4 / 5).max(1);
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait()?.is_none() {
            child.kill()?; // SIGKILL on Unix
            kills += 1;
        }
        child.wait()?;
    }
    let resumable = killed.join("last").exists() || killed.join("last.old").exists();
    let how = if resumable { "--resume" } else { "--overwrite" };
    // (`--resume` on a run that had already finished trains nothing and tests again.)
    assert!(command(&killed, how).status()?.success());
    eprintln!("train killed {kills} times (the whole run: {took} ms)");

    for file in ["model.safetensors", "optimizer.safetensors"] {
        let a = std::fs::read(whole.join("last").join(file))?;
        let b = std::fs::read(killed.join("last").join(file))?;
        assert!(
            a == b,
            "last/{file} differs from the uninterrupted run's after {kills} kills"
        );
    }
    assert_eq!(epochs_and_tests(&whole)?, (vec![1, 2, 3], 1));
    assert_eq!(
        epochs_and_tests(&killed)?,
        (vec![1, 2, 3], 1),
        "after {kills} kills"
    );
    std::fs::remove_dir_all(&work)?;
    Ok(())
}
