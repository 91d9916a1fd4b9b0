//! A data loader: reads and tokenizes files on worker threads ahead of the model.
//!
//! Batches come out in the order of the plan whatever the threads' timing, at most
//! `queue_depth` batches are in flight (memory stays flat however large the dataset), and a
//! file that fails is skipped and counted with its reason.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::{collate, tokenize_file, CropContext, HostBatch, TokenizerConfig};

/// One file of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The file.
    pub path: PathBuf,
    /// Its class.
    pub label: u32,
    /// A stable id of the item it is a variant of (seeds its random crop).
    pub item: u64,
}

/// How the loader runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoaderConfig {
    /// Worker threads; 0 tokenizes on the calling thread when a batch is asked for.
    pub workers: usize,
    /// Batches read ahead (in flight or waiting); bounds memory.
    pub queue_depth: usize,
    /// The run's seed (random crops).
    pub seed: u64,
    /// The epoch (random crops).
    pub epoch: u64,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            workers: 2,
            queue_depth: 4,
            seed: 0,
            epoch: 0,
        }
    }
}

impl LoaderConfig {
    /// Sets the worker threads.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Sets the batches read ahead.
    pub fn with_queue_depth(mut self, depth: usize) -> Self {
        self.queue_depth = depth.max(1);
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the epoch.
    pub fn with_epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }
}

/// A file the loader skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Index of the entry.
    pub entry: usize,
    /// The short reason (`malformed`, `unsupported`, `limit`, `io`, `empty`, `other`).
    pub reason: &'static str,
    /// The full message, with the file and byte offset.
    pub message: String,
}

/// One batch as the loader hands it over.
#[derive(Debug, Clone)]
pub struct LoadedBatch {
    /// Position of the batch in the plan.
    pub seq: usize,
    /// The padded batch of the files that were read (`None` if none was).
    pub batch: Option<HostBatch>,
    /// Entries in the batch, in its order.
    pub entries: Vec<usize>,
    /// Files of the planned batch that were skipped.
    pub skipped: Vec<Skipped>,
    /// Compressed bytes read for the batch.
    pub input_bytes: u64,
    /// Blocks truncated to L in the batch.
    pub truncated_blocks: u64,
}

/// Counts over everything the loader has handed over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoaderStats {
    /// Files tokenized and batched.
    pub files_used: u64,
    /// Files skipped, by reason.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Compressed bytes read.
    pub input_bytes: u64,
    /// Blocks truncated to L.
    pub truncated_blocks: u64,
}

impl LoaderStats {
    /// Files skipped for any reason.
    pub fn files_skipped(&self) -> u64 {
        self.skipped.values().sum()
    }
}

struct Job {
    seq: usize,
    indices: Vec<usize>,
    reply: SyncSender<LoadedBatch>,
}

struct Shared {
    entries: Arc<Vec<Entry>>,
    tokenizer: TokenizerConfig,
    seed: u64,
    epoch: u64,
}

impl Shared {
    fn load(&self, seq: usize, indices: &[usize]) -> LoadedBatch {
        let mut items = Vec::with_capacity(indices.len());
        let mut out = LoadedBatch {
            seq,
            batch: None,
            entries: Vec::with_capacity(indices.len()),
            skipped: Vec::new(),
            input_bytes: 0,
            truncated_blocks: 0,
        };
        for &i in indices {
            let Some(entry) = self.entries.get(i) else {
                out.skipped.push(Skipped {
                    entry: i,
                    reason: "other",
                    message: format!("entry {i} is not in the dataset"),
                });
                continue;
            };
            let ctx = CropContext {
                seed: self.seed,
                epoch: self.epoch,
                item: entry.item,
            };
            match tokenize_file(&entry.path, &self.tokenizer, ctx) {
                Ok(item) => {
                    out.input_bytes += item.input_bytes;
                    out.truncated_blocks += u64::from(item.truncated_blocks);
                    out.entries.push(i);
                    items.push((item, entry.label));
                }
                Err(e) => out.skipped.push(Skipped {
                    entry: i,
                    reason: e.reason(),
                    message: e.to_string(),
                }),
            }
        }
        if !items.is_empty() {
            let refs: Vec<_> = items.iter().map(|(item, _)| item).collect();
            let labels: Vec<u32> = items.iter().map(|(_, label)| *label).collect();
            out.batch = Some(collate(&refs, &labels, self.tokenizer.pad_id));
        }
        out
    }
}

/// Reads the batches of a plan (lists of entry indices, e.g. from
/// [`BucketSampler::batches`](crate::BucketSampler::batches)) on worker threads, in order.
pub struct Loader {
    shared: Arc<Shared>,
    plan: VecDeque<(usize, Vec<usize>)>,
    in_flight: VecDeque<Receiver<LoadedBatch>>,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    depth: usize,
    stats: LoaderStats,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("pending", &self.plan.len())
            .field("in_flight", &self.in_flight.len())
            .field("workers", &self.workers.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Loader {
    /// Starts the workers on `plan`.
    pub fn new(
        entries: Arc<Vec<Entry>>,
        plan: Vec<Vec<usize>>,
        tokenizer: TokenizerConfig,
        config: &LoaderConfig,
    ) -> Self {
        let shared = Arc::new(Shared {
            entries,
            tokenizer,
            seed: config.seed,
            epoch: config.epoch,
        });
        let mut workers = Vec::new();
        let mut jobs = None;
        if config.workers > 0 {
            let (tx, rx) = mpsc::sync_channel::<Job>(config.queue_depth.max(1));
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..config.workers {
                let rx = Arc::clone(&rx);
                let shared = Arc::clone(&shared);
                workers.push(std::thread::spawn(move || loop {
                    // The lock is held only to take a job, not while working on it.
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    // The receiver is gone when the loader was dropped early: nothing to do.
                    let _ = job.reply.send(shared.load(job.seq, &job.indices));
                }));
            }
            jobs = Some(tx);
        }
        let mut loader = Loader {
            shared,
            plan: plan.into_iter().enumerate().collect(),
            in_flight: VecDeque::new(),
            jobs,
            workers,
            depth: config.queue_depth.max(1),
            stats: LoaderStats::default(),
        };
        loader.fill();
        loader
    }

    /// Counts over the batches handed over so far.
    pub fn stats(&self) -> &LoaderStats {
        &self.stats
    }

    /// Batches not yet handed over.
    pub fn remaining(&self) -> usize {
        self.plan.len() + self.in_flight.len()
    }

    fn fill(&mut self) {
        let Some(jobs) = &self.jobs else { return };
        while self.in_flight.len() < self.depth {
            let Some((seq, indices)) = self.plan.pop_front() else {
                return;
            };
            let (reply, rx) = mpsc::sync_channel(1);
            if jobs
                .send(Job {
                    seq,
                    indices,
                    reply,
                })
                .is_err()
            {
                return;
            }
            self.in_flight.push_back(rx);
        }
    }

    fn count(&mut self, batch: &LoadedBatch) {
        self.stats.files_used += batch.entries.len() as u64;
        self.stats.input_bytes += batch.input_bytes;
        self.stats.truncated_blocks += batch.truncated_blocks;
        for s in &batch.skipped {
            *self.stats.skipped.entry(s.reason).or_default() += 1;
        }
    }
}

impl Iterator for Loader {
    type Item = LoadedBatch;

    fn next(&mut self) -> Option<LoadedBatch> {
        let batch = if self.jobs.is_some() {
            let rx = self.in_flight.pop_front()?;
            self.fill();
            // A worker that panicked drops its reply sender: the batch is lost, say so.
            rx.recv().ok()?
        } else {
            let (seq, indices) = self.plan.pop_front()?;
            self.shared.load(seq, &indices)
        };
        self.count(&batch);
        Some(batch)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.plan.clear();
        self.in_flight.clear();
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
