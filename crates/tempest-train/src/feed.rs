//! One epoch's batches of files, as [`crate::train()`] and [`crate::pretrain()`] read them:
//! [`EpochFeed`]. Each epoch draws one variant per item, the sampler's plan of batches of
//! `batch_size × world` items (the same plan on every rank), this rank's piece of each batch
//! ([`tempest_tokenize::rank_piece`]), that piece cut into up to `parts` consecutive parts
//! computed at once, and the loader's threads reading and tokenizing them in order.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use indicatif::ProgressBar;
use tempest_tokenize::{
    choose_variants, BucketSampler, Entry, HostBatch, ItemShape, Loader, LoaderConfig, LoaderStats,
    TokenizerConfig, VariantChoice,
};

use crate::evaluate::{bar, merge_stats};
use crate::options::TrainOptions;

/// One part of a batch: its padded items and each item's id in the dataset (the key of its
/// pretraining masks, [`tempest_model::pretrain::MaskPlan::draw_keyed`]).
#[derive(Debug, Clone)]
pub(crate) struct FedPart {
    pub batch: HostBatch,
    pub items: Vec<u64>,
}

/// The items an [`EpochFeed`] serves: each one's files (path and size) of the wanted variants,
/// its label and its id in the dataset.
pub(crate) struct FeedItems<'a> {
    pub per_item: &'a [Vec<(PathBuf, u64)>],
    pub labels: Vec<u32>,
    pub ids: Vec<u64>,
}

/// The epoch in progress.
#[derive(Default)]
struct Current {
    entries: Arc<Vec<Entry>>,
    loader: Option<Loader>,
    /// Per batch still to come: the loader's parts of this rank's piece, and the batch's items
    /// across the ranks.
    pieces: VecDeque<(usize, usize)>,
    pb: Option<ProgressBar>,
}

/// Feeds a run's epochs of files to its [`crate::driver::Driver`]: `start` plans an epoch,
/// `next` gives its batches one by one (this rank's piece, in parts), `finish` closes it.
pub(crate) struct EpochFeed<'a> {
    items: FeedItems<'a>,
    counts: Vec<usize>,
    sampler: BucketSampler,
    tok: &'a TokenizerConfig,
    parts: usize,
    rank: usize,
    world: usize,
    seed: u64,
    workers: usize,
    progress: bool,
    epochs: usize,
    /// The progress bar's words before "epoch i/n".
    what: &'static str,
    current: Current,
    /// Items of the last batch given, across the ranks.
    batch_items: usize,
    /// The last batch's place in its epoch, from 1 (as [`crate::driver::fit_loop`] counts).
    position: usize,
    /// Every file the loader skipped: path → reason.
    pub skipped: BTreeMap<String, String>,
    /// The loader's counts over the epochs finished.
    pub stats: LoaderStats,
}

impl<'a> EpochFeed<'a> {
    /// A feed of `items` with `options`' seed, batch size, ranks (`options.comm`), workers and
    /// progress, `parts` parts per batch, tokenized with `tok`.
    pub fn new(
        items: FeedItems<'a>,
        tok: &'a TokenizerConfig,
        parts: usize,
        options: &TrainOptions,
        what: &'static str,
    ) -> Self {
        let counts = items.per_item.iter().map(Vec::len).collect();
        EpochFeed {
            items,
            counts,
            sampler: BucketSampler::new(options.global_batch(), options.seed)
                .with_bucket_batches(options.bucket_batches),
            tok,
            parts: parts.max(1),
            rank: options.comm.rank(),
            world: options.comm.world_size(),
            seed: options.seed,
            workers: options.workers,
            progress: options.progress,
            epochs: options.epochs,
            what,
            current: Current::default(),
            batch_items: 0,
            position: 0,
            skipped: BTreeMap::new(),
            stats: LoaderStats::default(),
        }
    }

    /// Items with at least one file: the items of an epoch.
    pub fn items_per_epoch(&self) -> usize {
        self.counts.iter().filter(|&&c| c > 0).count()
    }

    /// Plans epoch `epoch` (from 0) from its batch `skip` on: the number of batches the whole
    /// epoch has.
    pub fn start(&mut self, epoch: usize, skip: usize) -> usize {
        let chosen = choose_variants(
            &self.counts,
            VariantChoice::OnePerEpoch,
            self.seed,
            epoch as u64,
        );
        let mut entries = Vec::with_capacity(chosen.len());
        let mut shapes = Vec::with_capacity(chosen.len());
        for (item, v) in chosen {
            let (path, bytes) = &self.items.per_item[item][v];
            entries.push(Entry {
                path: path.clone(),
                label: self.items.labels.get(item).copied().unwrap_or(0),
                item: self.items.ids.get(item).copied().unwrap_or(item as u64),
            });
            // The file size stands in for the shape: bucketing needs no tokenizing pass.
            shapes.push(ItemShape {
                blocks: (*bytes).min(u32::MAX as u64) as u32,
                max_block_len: 0,
                bytes: *bytes,
            });
        }
        let entries = Arc::new(entries);
        let batches = self.sampler.batches(&shapes, epoch as u64);
        let skip = skip.min(batches.len());
        // Each batch's piece goes to the loader as up to `parts` consecutive parts, taken back
        // together by `next`.
        let mut pieces = VecDeque::with_capacity(batches.len() - skip);
        let mut loads: Vec<Vec<usize>> = Vec::with_capacity((batches.len() - skip) * self.parts);
        for b in &batches[skip..] {
            let global = b.len();
            // This rank's piece of the batch (all of it with one rank).
            let piece = tempest_tokenize::rank_piece(b, self.rank, self.world);
            if piece.is_empty() {
                pieces.push_back((0, global));
                continue;
            }
            let sizes = tempest_tokenize::part_sizes(piece.len(), self.parts);
            pieces.push_back((sizes.len(), global));
            let mut rest = piece;
            for len in sizes {
                let (part, tail) = rest.split_at(len);
                loads.push(part.to_vec());
                rest = tail;
            }
        }
        let pb = bar(
            self.progress,
            batches.len() as u64,
            format!("{} {}/{}", self.what, epoch + 1, self.epochs),
        );
        pb.set_position(skip as u64);
        let loader = Loader::new(
            Arc::clone(&entries),
            loads,
            self.tok.clone(),
            &LoaderConfig::default()
                .with_workers(self.workers)
                .with_seed(self.seed)
                .with_epoch(epoch as u64),
        );
        self.current = Current {
            entries,
            loader: Some(loader),
            pieces,
            pb: Some(pb),
        };
        self.position = skip;
        batches.len()
    }

    /// The epoch's next batch, this rank's piece of it in parts: `Some(None)` when the piece
    /// has nothing to train on (no item for this rank, or all its files failed; it still
    /// counts as a batch), `None` when the epoch has no more batches.
    pub fn next(&mut self) -> Option<Option<Vec<FedPart>>> {
        let (k, global) = self.current.pieces.pop_front()?;
        self.batch_items = global;
        self.position += 1;
        if k == 0 {
            // This rank's piece of a batch shorter than the world: nothing to train on here.
            if let Some(pb) = &self.current.pb {
                pb.inc(1);
            }
            return Some(None);
        }
        let loader = self.current.loader.as_mut()?;
        let group: Vec<_> = loader.by_ref().take(k).collect();
        if group.is_empty() {
            return None;
        }
        for s in group.iter().flat_map(|lb| &lb.skipped) {
            if let Some(e) = self.current.entries.get(s.entry) {
                self.skipped
                    .insert(e.path.display().to_string(), s.message.clone());
            }
        }
        if let Some(pb) = &self.current.pb {
            pb.inc(1);
        }
        let entries = &self.current.entries;
        let parts: Vec<FedPart> = group
            .into_iter()
            .filter_map(|lb| {
                let items = lb
                    .entries
                    .iter()
                    .map(|&e| entries.get(e).map_or(e as u64, |x| x.item))
                    .collect();
                lb.batch.map(|batch| FedPart { batch, items })
            })
            .filter(|p| p.batch.batch > 0)
            .collect();
        Some((!parts.is_empty()).then_some(parts))
    }

    /// Items of the last batch [`EpochFeed::next`] gave, across the ranks.
    pub fn batch_items(&self) -> usize {
        self.batch_items
    }

    /// The last batch's place in its epoch, from 1.
    pub fn position(&self) -> usize {
        self.position
    }

    /// The epoch's progress bar (a hidden one without progress).
    pub fn progress_bar(&self) -> Option<&ProgressBar> {
        self.current.pb.as_ref()
    }

    /// Shows the epoch's running loss, its second figure (`metric`: `acc` for training, `ids`
    /// for pretraining's masked ids right), the step's learning rate and gradient norm on the
    /// progress bar, where there is one.
    pub fn show_step(
        &self,
        metric: &str,
        sums: &crate::metrics::EpochSums,
        step: &crate::driver::StepLog,
    ) {
        if let Some(pb) = self.progress_bar() {
            pb.set_prefix(format!(
                "loss {:.3} {metric} {:.3} lr {:.2e} |g| {:.2}",
                sums.mean_loss(),
                sums.accuracy(),
                step.lr,
                step.norm
            ));
        }
    }

    /// Closes the epoch: clears its bar and adds its loader's counts to [`EpochFeed::stats`].
    pub fn finish(&mut self) {
        if let Some(pb) = self.current.pb.take() {
            pb.finish_and_clear();
        }
        if let Some(loader) = self.current.loader.take() {
            merge_stats(&mut self.stats, loader.stats());
        }
    }
}
