//! `prepare` killed with SIGKILL mid-run and rerun ends with the outputs and the manifest of an
//! uninterrupted run, byte for byte, every output readable, no temporary file left behind.
//!
//! The input is a small MNIST-format set written here (IDX files, 160 + 40 digits), prepared
//! into two JPEG variants by the built `prepare` example (`cargo test` builds the examples).
//! The kills land at random moments (drawn from the clock); whatever moment they hit, the
//! end state must be the same, so the assertions do not depend on timing.

#![cfg(unix)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

mod common;

/// Writes an IDX image file and its label file of `n` 28×28 digits-like images.
fn write_idx(dir: &Path, prefix: &str, n: u32, seed: u32) -> Result<()> {
    let mut images = Vec::with_capacity(16 + 784 * n as usize);
    for v in [0x0803u32, n, 28, 28] {
        images.extend_from_slice(&v.to_be_bytes());
    }
    let mut labels = Vec::with_capacity(8 + n as usize);
    for v in [0x0801u32, n] {
        labels.extend_from_slice(&v.to_be_bytes());
    }
    let mut s = seed;
    for k in 0..n {
        // A bright disc whose centre and radius move with k, over faint noise.
        let (cx, cy, r) = (8 + (k * 7) % 12, 8 + (k * 5) % 12, 4 + k % 6);
        for y in 0..28u32 {
            for x in 0..28u32 {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let d2 = (x as i32 - cx as i32).pow(2) + (y as i32 - cy as i32).pow(2);
                let v = if d2 <= (r * r) as i32 {
                    230
                } else {
                    (s >> 28) as u8
                };
                images.push(v);
            }
        }
        labels.push((k % 10) as u8);
    }
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images)?;
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels)?;
    Ok(())
}

/// Every file under `dir`, by path relative to it, with its bytes.
fn files(dir: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir)?.to_path_buf();
                out.insert(rel, std::fs::read(&path)?);
            }
        }
    }
    Ok(out)
}

#[test]
fn prepare_killed_and_rerun_matches_an_uninterrupted_run() -> Result<()> {
    let bin = common::example("prepare")?;
    let work = std::env::temp_dir().join(format!("tempest-kill-prepare-{}", std::process::id()));
    let input = work.join("input");
    std::fs::create_dir_all(&input)?;
    write_idx(&input, "train", 160, 1)?;
    write_idx(&input, "t10k", 40, 2)?;
    let command = |out: &Path| {
        let mut c = Command::new(&bin);
        c.args(["--layout", "mnist", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(out)
            .args(["--variants", "jpeg:75,jpeg:50x2r1", "--threads", "1"])
            .args(["--no-progress"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let whole = work.join("whole");
    assert!(command(&whole).status()?.success());

    // Kills at delays drawn from the clock, 5–200 ms after each start.
    let killed = work.join("killed");
    let mut s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let mut kills = 0;
    for _ in 0..8 {
        let mut child = command(&killed).spawn()?;
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        std::thread::sleep(Duration::from_millis(5 + u64::from(s >> 16) % 196));
        if child.try_wait()?.is_none() {
            child.kill()?; // SIGKILL on Unix
            kills += 1;
        }
        child.wait()?;
    }
    let before = if killed.exists() {
        files(&killed)?.len()
    } else {
        0
    };
    assert!(command(&killed).status()?.success());
    eprintln!("prepare killed {kills} times, {before} files present before the last run");

    let a = files(&whole)?;
    let b = files(&killed)?;
    assert!(a.len() > 400, "{} files", a.len());
    let names = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&a),
        names(&b),
        "after {kills} kills the outputs differ in name"
    );
    for (path, bytes) in &a {
        assert!(
            b.get(path) == Some(bytes),
            "{}: differs after {kills} kills",
            path.display()
        );
        if path.extension().is_some_and(|e| e == "jpg") {
            let (blocks, _, error) =
                tempest::cff_blocks::read_all(bytes, &tempest::cff_blocks::Options::default())?;
            assert!(
                error.is_none() && !blocks.is_empty(),
                "{}: {error:?}",
                path.display()
            );
        }
    }
    let manifest = String::from_utf8(a[Path::new("manifest.csv")].clone())?;
    assert_eq!(manifest.lines().count(), 1 + 2 * 200, "{manifest}");
    std::fs::remove_dir_all(&work)?;
    Ok(())
}
