//! The checks of data-parallel training over MPI (feature `mpi`), run on two ranks by
//! `scripts/mpi-check.sh` (which `scripts/test.sh` runs where Open MPI is installed):
//!
//! ```text
//! mpirun -np 2 --allow-run-as-root --oversubscribe \
//!     target/debug/examples/mpi_check train|pretrain|fail|wait SCRATCH_DIR
//! ```
//!
//! - `train`: on the first digits of the shipped MNIST set (data/mnist) as JPEGs, the `tiny`
//!   model: (a) two ranks with batches of 4 reach the weights of one rank with batches of 8
//!   after several steps; (b) one epoch on two ranks trains on every item once (batches of 1
//!   per rank, so the last batch leaves rank 1 without an item); (c) two ranks stopped mid-epoch
//!   and resumed reach the weights and optimiser state of an uninterrupted two-rank run; a
//!   two-rank run does not resume on one rank.
//! - `pretrain`: masked block modelling (`tempest_train::pretrain`) on 16 of the shipped
//!   spoken words (MP3): (a) two ranks with batches of 4 reach the weights of one rank with
//!   batches of 8 after 3 steps, within the drift of one rank computing its batches in two
//!   parts; (b) stopped after one step and resumed, the weights and optimiser state of an
//!   uninterrupted two-rank run, byte for byte.
//! - `fail`: rank 1 fails while rank 0 waits for it: the job must end with rank 1's error.
//! - `allreduce` (by hand, for docs/distributed.md): times the all-reduce of each preset's
//!   gradient.
//! - `wait`: each rank writes its process id to `SCRATCH_DIR/pid.<rank>` and exchanges
//!   gradients-sized buffers for up to a minute; the script kills one rank and checks that
//!   `mpirun` ends at once.
//!
//! A failed check ends the job with exit status 1 and its message.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use cff_encode::image::read_idx;
use tempest_data::{Layout, Variant};
use tempest_model::pretrain::Masking;
use tempest_model::Config;
use tempest_train::dist::{abort_on_error, Backend, Comm, Single};
use tempest_train::{
    checkpoint, pretrain, train, Dataset, Error, SplitPlan, TrainOptions, TrainState,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(what().into())
    }
}

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

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

/// An MNIST layout of the first `n` training and `n / 2` held-out digits of data/mnist.
fn small_mnist(dir: &Path, n: usize) -> Result<()> {
    for (set, count) in [("train", n), ("t10k", n / 2)] {
        let read = |what: &str| -> Result<_> {
            let path = repo().join(format!("data/mnist/{set}-{what}.gz"));
            Ok(read_idx(&std::fs::read(path)?, 1 << 30)?)
        };
        let (images, labels) = (read("images-idx3-ubyte")?, read("labels-idx1-ubyte")?);
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

/// The digits as JPEGs: prepared by rank 0, then opened by the others. Rank 0 keeps what it
/// prepared: opening the folder again would rewrite its manifest while another rank reads it
/// (a run once failed so, "manifest.csv: No such file or directory" on rank 0).
fn dataset(comm: &Comm, dir: &Path, n: usize) -> Result<Dataset> {
    let (raw, cache) = (dir.join("raw"), dir.join("jpeg"));
    let variants = [Variant::jpeg_quality(75)];
    let prepared = if comm.is_root() {
        std::fs::create_dir_all(&raw)?;
        small_mnist(&raw, n)?;
        Some(Dataset::open_layout(Layout::Mnist, &raw, &cache, &variants, false)?.0)
    } else {
        None
    };
    comm.barrier()?;
    match prepared {
        Some(dataset) => Ok(dataset),
        None => Ok(Dataset::open_layout(Layout::Mnist, &raw, &cache, &variants, false)?.0),
    }
}

fn options(comm: &Comm, batch: usize) -> TrainOptions {
    let mut o = TrainOptions::default();
    o.epochs = 2;
    o.batch_size = batch;
    o.seed = 3;
    o.workers = 1;
    o.parallel_parts = 1;
    o.progress = false;
    o.lr = 3e-3;
    o.comm = comm.clone();
    o
}

fn tensors(dir: &Path, file: &str) -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(
        dir.join("last").join(file),
        &Device::Cpu,
    )?)
}

/// The largest absolute difference between same-named tensors, and the largest absolute value
/// of `b - base` (how far training moved the weights).
fn max_diff(
    a: &HashMap<String, Tensor>,
    b: &HashMap<String, Tensor>,
    base: &HashMap<String, Tensor>,
) -> Result<(f32, f32)> {
    ensure(a.len() == b.len() && !a.is_empty(), || {
        format!("{} against {} tensors", a.len(), b.len())
    })?;
    let (mut diff, mut moved) = (0f32, 0f32);
    for (name, ta) in a {
        let tb = b.get(name).ok_or_else(|| format!("no {name}"))?;
        let t0 = base.get(name).ok_or_else(|| format!("no initial {name}"))?;
        let d = (ta - tb)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        let m = (tb - t0)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        diff = diff.max(d);
        moved = moved.max(m);
    }
    Ok((diff, moved))
}

fn train_checks(comm: &Comm, dir: &Path) -> Result<()> {
    let root = comm.is_root();
    let cfg = Config::tiny();
    let data = dataset(comm, dir, 45)?;
    let plan = SplitPlan::standard(&data)?;
    let items = data.select(&plan.train).len();
    ensure(items == 45, || format!("{items} training items"))?;

    // (a) Two ranks with batches of 4 against one rank with batches of 8, over 5 steps.
    let steps = 5;
    let mut two = options(comm, 4);
    two.stop_after_steps = Some(steps);
    let r = train(&data, &plan, &cfg, &two, &dir.join("a-two"), false)?;
    ensure(r.interrupted && r.steps == steps, || {
        format!("two ranks: {} steps", r.steps)
    })?;
    if root {
        let mut one = options(&Comm::new(Single), 8);
        one.stop_after_steps = Some(steps);
        let r = train(&data, &plan, &cfg, &one, &dir.join("a-one"), false)?;
        ensure(r.steps == steps, || format!("one rank: {} steps", r.steps))?;
        // The initial weights: the run's seed's.
        let format = tempest_train::detect_format(&data, &[])?;
        let config = one.model_config(&cfg, data.classes.len(), format)?;
        let (_, varmap) =
            tempest_train::init_seeded(&config, &Device::Cpu, candle_core::DType::F32, 3)?;
        let w0: HashMap<String, Tensor> = varmap
            .data()
            .lock()
            .map_err(|_| "a poisoned lock")?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        // The same batches of 8 computed in two parts of 4 at once (`parallel_parts`): the
        // halves the two ranks compute, summed in one process.
        let mut halves = one.clone();
        halves.parallel_parts = 2;
        let r = train(&data, &plan, &cfg, &halves, &dir.join("a-halves"), false)?;
        ensure(r.steps == steps, || format!("halves: {} steps", r.steps))?;
        let (w1, w2, wh) = (
            tensors(&dir.join("a-one"), tempest_model::WEIGHTS_FILE)?,
            tensors(&dir.join("a-two"), tempest_model::WEIGHTS_FILE)?,
            tensors(&dir.join("a-halves"), tempest_model::WEIGHTS_FILE)?,
        );
        let (diff, moved) = max_diff(&w2, &w1, &w0)?;
        let (floor, _) = max_diff(&wh, &w1, &w0)?;
        let (halves_diff, _) = max_diff(&w2, &wh, &w0)?;
        println!(
            "(a) {steps} steps, 2 ranks × 4 against 1 rank × 8: weights differ by at most \
             {diff:.3e}, moved by up to {moved:.3e}; 1 rank × 8 in 2 parts against 1 part: \
             {floor:.3e}; 2 ranks against 1 rank in 2 parts: {halves_diff:.3e}"
        );
        // Summation order only: one process computing the same batches in two parts instead
        // of one differs by `floor` (f32 sums in another order, grown by Adam's division by
        // √v where a gradient is near zero); the ranks may differ from one process by twice
        // that, and by far less than training moved the weights. Leaving out a rank's
        // gradient, or stepping on each rank's own, differs by about as much as the weights
        // moved (docs/distributed.md, "Same weights as one process").
        ensure(
            moved > 1e-3 && floor > 0.0 && diff <= 2.0 * floor && diff <= 0.05 * moved,
            || {
                format!("two ranks' weights differ from one rank's by {diff:e} (one rank in parts: {floor:e}; moved {moved:e})")
            },
        )?;
    }
    comm.barrier()?;

    // (b) One epoch, batches of 1 per rank: 45 items in 23 batches of 2 and 1; the last one
    // leaves rank 1 with nothing.
    let mut each = options(comm, 1);
    each.epochs = 1;
    let r = train(&data, &plan, &cfg, &each, &dir.join("b"), false)?;
    ensure(!r.interrupted && r.steps == 23, || {
        format!("one epoch of 23 steps, not {}", r.steps)
    })?;
    let mine = r.train_items as f64;
    let expected = if root { 23.0 } else { 22.0 };
    ensure(mine == expected, || {
        format!(
            "rank {} trained on {mine} items, not {expected}",
            comm.rank()
        )
    })?;
    let mut total = [mine];
    comm.all_reduce_sum_f64(&mut total)?;
    ensure(total[0] == 45.0, || {
        format!("{} items across the ranks", total[0])
    })?;
    ensure(r.test.is_some() == root, || "rank 0 alone tests".into())?;
    if root {
        let lines = std::fs::read_to_string(dir.join("b").join("metrics.jsonl"))?;
        let first: serde_json::Value =
            serde_json::from_str(lines.lines().next().ok_or("no metrics")?)?;
        let counted = first["train"]["items"].as_f64();
        ensure(counted == Some(45.0), || {
            format!("the epoch's metrics count {counted:?} items, not 45")
        })?;
        println!("(b) one epoch on 2 ranks: 23 + 22 items, 45 in the metrics");
    }

    // (c) Stopped after 4 steps (inside the first epoch of 6) and resumed, against the
    // uninterrupted run: the same weights and optimiser state, to the bit.
    let whole = options(comm, 4);
    let r = train(&data, &plan, &cfg, &whole, &dir.join("c-whole"), false)?;
    ensure(r.steps == 12, || {
        format!("two epochs of 6 steps, not {}", r.steps)
    })?;
    let mut stop = options(comm, 4);
    stop.stop_after_steps = Some(4);
    let r = train(&data, &plan, &cfg, &stop, &dir.join("c-parted"), false)?;
    ensure(r.interrupted && r.steps == 4, || {
        format!("stopped at {}", r.steps)
    })?;
    if root {
        let state: TrainState =
            checkpoint::read_json(&dir.join("c-parted/last").join(checkpoint::STATE_FILE))?;
        ensure(state.world_size == 2 && state.step == 4, || {
            format!("{state:?}")
        })?;
        // One rank does not resume a two-rank run.
        let err = train(
            &data,
            &plan,
            &cfg,
            &options(&Comm::new(Single), 4),
            &dir.join("c-parted"),
            true,
        )
        .err()
        .map(|e: Error| e.to_string())
        .unwrap_or_default();
        ensure(err.contains("trained on 2 rank(s)"), || {
            format!("resuming on one rank: {err:?}")
        })?;
    }
    comm.barrier()?;
    let r = train(&data, &plan, &cfg, &whole, &dir.join("c-parted"), true)?;
    ensure(!r.interrupted && r.steps == 12, || {
        format!("resumed to {}", r.steps)
    })?;
    if root {
        for file in [tempest_model::WEIGHTS_FILE, checkpoint::OPTIMIZER_FILE] {
            let a = std::fs::read(dir.join("c-whole/last").join(file))?;
            let b = std::fs::read(dir.join("c-parted/last").join(file))?;
            ensure(a == b, || format!("{file} of the resumed run differs"))?;
        }
        println!("(c) 2 ranks stopped at step 4 and resumed: the weights and moments of 12 steps uninterrupted");
    }
    comm.barrier()?;
    Ok(())
}

fn pretrain_checks(comm: &Comm, dir: &Path) -> Result<()> {
    let root = comm.is_root();
    let mut data =
        Dataset::from_compressed(Layout::SpeechCommands, &repo().join("data/spoken-words"))?;
    let plan = SplitPlan::standard(&data)?;
    data.truncate_splits(&plan.train, 16);
    let splits = plan.train.clone();
    let (cfg, masking) = (Config::tiny(), Masking::default());
    let opts = |comm: &Comm, batch: usize, parts: usize, stop: Option<usize>| {
        let mut o = options(comm, batch);
        o.parallel_parts = parts;
        o.stop_after_steps = stop;
        o
    };

    // (a) 3 steps: two ranks × 4 against one rank × 8 (and × 8 in two parts).
    let r = pretrain(
        &data,
        &splits,
        &cfg,
        &opts(comm, 4, 1, Some(3)),
        &masking,
        &dir.join("p-two"),
        false,
    )?;
    ensure(r.steps == 3 && r.train_items == 12, || {
        format!(
            "rank {}: {} steps, {} items",
            comm.rank(),
            r.steps,
            r.train_items
        )
    })?;
    if root {
        let single = Comm::new(Single);
        for (name, batch, parts) in [("p-one", 8, 1), ("p-halves", 8, 2)] {
            let o = opts(&single, batch, parts, Some(3));
            let r = pretrain(&data, &splits, &cfg, &o, &masking, &dir.join(name), false)?;
            ensure(r.steps == 3, || format!("{name}: {} steps", r.steps))?;
        }
        let format = tempest_train::detect_format(&data, &[])?;
        let config =
            tempest_train::pretrain::pretrain_config(&cfg, &opts(&single, 8, 1, None), &[format])?;
        let (_, varmap) = tempest_train::pretrain::init_pretrainer(
            &config,
            masking,
            &Device::Cpu,
            candle_core::DType::F32,
            3,
        )?;
        let w0: HashMap<String, Tensor> = varmap
            .data()
            .lock()
            .map_err(|_| "a poisoned lock")?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let (w1, w2, wh) = (
            tensors(&dir.join("p-one"), tempest_model::WEIGHTS_FILE)?,
            tensors(&dir.join("p-two"), tempest_model::WEIGHTS_FILE)?,
            tensors(&dir.join("p-halves"), tempest_model::WEIGHTS_FILE)?,
        );
        let (diff, moved) = max_diff(&w2, &w1, &w0)?;
        let (floor, _) = max_diff(&wh, &w1, &w0)?;
        println!(
            "(pretrain a) 3 steps, 2 ranks × 4 against 1 rank × 8: weights differ by at most \
             {diff:.3e}, moved by up to {moved:.3e}; 1 rank × 8 in 2 parts against 1 part: \
             {floor:.3e}"
        );
        // As for training: rounding from the summation order only (each item's masks follow
        // from the item, not from its rank), bounded by the in-process drift, far below how
        // far the weights moved.
        ensure(
            moved > 1e-3 && diff <= 2.0 * floor.max(1e-6) && diff <= 0.05 * moved,
            || {
                format!("two ranks' pretrained weights differ from one rank's by {diff:e} (one rank in parts: {floor:e}; moved {moved:e})")
            },
        )?;
    }
    comm.barrier()?;

    // (b) Stopped after one step and resumed, against uninterrupted (4 steps).
    let whole = opts(comm, 4, 1, None);
    let r = pretrain(
        &data,
        &splits,
        &cfg,
        &whole,
        &masking,
        &dir.join("p-whole"),
        false,
    )?;
    ensure(r.steps == 4, || {
        format!("two epochs of 2 steps, not {}", r.steps)
    })?;
    let r = pretrain(
        &data,
        &splits,
        &cfg,
        &opts(comm, 4, 1, Some(1)),
        &masking,
        &dir.join("p-parted"),
        false,
    )?;
    ensure(r.interrupted && r.steps == 1, || {
        format!("stopped at {}", r.steps)
    })?;
    let r = pretrain(
        &data,
        &splits,
        &cfg,
        &whole,
        &masking,
        &dir.join("p-parted"),
        true,
    )?;
    ensure(!r.interrupted && r.steps == 4, || {
        format!("resumed to {}", r.steps)
    })?;
    if root {
        for file in [tempest_model::WEIGHTS_FILE, checkpoint::OPTIMIZER_FILE] {
            let a = std::fs::read(dir.join("p-whole/last").join(file))?;
            let b = std::fs::read(dir.join("p-parted/last").join(file))?;
            ensure(a == b, || {
                format!("{file} of the resumed pretraining differs")
            })?;
        }
        println!("(pretrain b) 2 ranks stopped at step 1 and resumed: the weights and moments of 4 steps uninterrupted");
    }
    comm.barrier()?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(dir)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: mpirun -np 2 mpi_check train|pretrain|fail|wait|allreduce SCRATCH_DIR");
        return ExitCode::FAILURE;
    };
    let comm = match Backend::Mpi.open() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mpi_check: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = Path::new(dir);
    let result = abort_on_error(&comm, || -> Result<()> {
        ensure(comm.world_size() == 2, || {
            format!("{} ranks (run with mpirun -np 2)", comm.world_size())
        })?;
        match mode.as_str() {
            "train" => train_checks(&comm, dir),
            "pretrain" => pretrain_checks(&comm, dir),
            "fail" => {
                if comm.rank() == 1 {
                    return Err("rank 1 fails on purpose".into());
                }
                // Rank 0 would wait here forever for rank 1.
                comm.barrier()?;
                Err("rank 1 did not end the job".into())
            }
            "wait" => {
                std::fs::create_dir_all(dir)?;
                let pid = dir.join(format!("pid.{}", comm.rank()));
                std::fs::write(&pid, std::process::id().to_string())?;
                let start = Instant::now();
                let mut buf = vec![1f32; 100_000];
                while start.elapsed() < Duration::from_secs(60) {
                    comm.all_reduce_sum_f32(&mut buf)?;
                    buf.fill(1.0);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err("no rank was killed within a minute".into())
            }
            "allreduce" => {
                // Seconds per all-reduce of each preset's gradient (f32 values; the counts
                // `train --dist mpi --preset P` prints with 10 classes, JPEG), median of 21.
                for (name, n) in [
                    ("tiny", 194_250),
                    ("small", 1_224_266),
                    ("paper", 14_738_058),
                ] {
                    let mut buf = vec![1f32; n];
                    let mut times = Vec::new();
                    for _ in 0..21 {
                        comm.barrier()?;
                        let t = Instant::now();
                        comm.all_reduce_sum_f32(&mut buf)?;
                        times.push(t.elapsed().as_secs_f64());
                        buf.fill(1.0);
                    }
                    times.sort_by(f64::total_cmp);
                    comm.all_reduce_sum_f32(&mut buf)?;
                    ensure(buf.iter().all(|&x| x == 2.0), || "a wrong sum".into())?;
                    if comm.is_root() {
                        println!(
                            "{name}: {n} values, {:.2} MB: {:.2} ms per all-reduce",
                            n as f64 * 4e-6,
                            times[10] * 1e3
                        );
                    }
                }
                Ok(())
            }
            other => Err(format!("unknown mode {other:?}").into()),
        }
    });
    match result {
        Ok(()) => {
            if comm.is_root() {
                println!("mpi_check {mode}: ok");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mpi_check: {e}");
            ExitCode::FAILURE
        }
    }
}
