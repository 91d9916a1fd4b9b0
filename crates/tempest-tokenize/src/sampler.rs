//! Which items go into which batch, in which order: length bucketing, variants, shards.

use crate::rng::SplitMix64;

/// What a sampler needs to know of an item: its size once tokenized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ItemShape {
    /// Blocks kept.
    pub blocks: u32,
    /// Bytes of the longest kept block.
    pub max_block_len: u32,
    /// Kept bytes of all blocks.
    pub bytes: u64,
}

/// Groups items of similar block count and block length into batches, so that padding to the
/// largest item of a batch wastes little.
///
/// Each epoch the items are shuffled (seeded by `seed` and the epoch), cut into buckets of
/// `batch_size × bucket_batches` items, each bucket sorted by shape and cut into batches, and
/// the batches shuffled. `bucket_batches = 1` is plain shuffled batching.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BucketSampler {
    /// Items per batch.
    pub batch_size: usize,
    /// Batches per bucket (sorting window). Default 32.
    pub bucket_batches: usize,
    /// The run's seed.
    pub seed: u64,
    /// Shuffle items and batches each epoch (off: dataset order, still bucketed).
    pub shuffle: bool,
    /// Drop a last, smaller batch.
    pub drop_last: bool,
}

impl BucketSampler {
    /// A sampler with `batch_size` items per batch and the defaults.
    pub fn new(batch_size: usize, seed: u64) -> Self {
        BucketSampler {
            batch_size: batch_size.max(1),
            bucket_batches: 32,
            seed,
            shuffle: true,
            drop_last: false,
        }
    }

    /// Sets the batches per bucket (1 turns bucketing off).
    pub fn with_bucket_batches(mut self, k: usize) -> Self {
        self.bucket_batches = k.max(1);
        self
    }

    /// Turns shuffling on or off.
    pub fn with_shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// Drops (or keeps) a last, smaller batch.
    pub fn with_drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// The batches of one epoch: indices into `shapes`. Every index appears exactly once
    /// (unless `drop_last` drops a short last batch).
    pub fn batches(&self, shapes: &[ItemShape], epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = SplitMix64::derive(self.seed, &[epoch, SAMPLER_STREAM]);
        let mut order: Vec<usize> = (0..shapes.len()).collect();
        if self.shuffle {
            rng.shuffle(&mut order);
        }
        let bucket = self.batch_size * self.bucket_batches;
        let mut batches = Vec::with_capacity(shapes.len().div_ceil(self.batch_size));
        for chunk in order.chunks_mut(bucket) {
            if self.bucket_batches > 1 {
                // Stable sort: ties keep the shuffled order.
                chunk.sort_by_key(|&i| (shapes[i].blocks, shapes[i].max_block_len));
            }
            batches.extend(chunk.chunks(self.batch_size).map(<[usize]>::to_vec));
        }
        if self.drop_last {
            batches.retain(|b| b.len() == self.batch_size);
        }
        if self.shuffle {
            rng.shuffle(&mut batches);
        }
        batches
    }
}

/// A constant that separates the sampler's random stream from the crops'.
const SAMPLER_STREAM: u64 = 0x5A3_91E5;

/// Padded ids / all ids if `batches` of items with these shapes are collated: the cost of
/// padding to the largest item of each batch.
pub fn padding_ratio(shapes: &[ItemShape], batches: &[Vec<usize>]) -> f64 {
    let mut all = 0u128;
    let mut real = 0u128;
    for batch in batches {
        let n = batch.iter().map(|&i| shapes[i].blocks).max().unwrap_or(0) as u128;
        let l = batch
            .iter()
            .map(|&i| shapes[i].max_block_len)
            .max()
            .unwrap_or(0) as u128;
        all += batch.len() as u128 * n * l;
        real += batch.iter().map(|&i| shapes[i].bytes as u128).sum::<u128>();
    }
    if all == 0 {
        0.0
    } else {
        1.0 - real as f64 / all as f64
    }
}

/// The batches of one process among `world` data-parallel processes: every `world`-th batch
/// from `rank`, after dropping the tail that would leave processes with unequal counts.
pub fn shard(batches: Vec<Vec<usize>>, rank: usize, world: usize) -> Vec<Vec<usize>> {
    let world = world.max(1);
    let even = batches.len() / world * world;
    batches
        .into_iter()
        .take(even)
        .skip(rank)
        .step_by(world)
        .collect()
}

/// The piece of one batch that rank `rank` of `world` data-parallel processes trains on:
/// the batch cut into `world` consecutive pieces whose sizes differ by at most one (the first
/// `len % world` one larger; ranks past the batch's length get an empty piece). Every item of
/// the batch is in exactly one rank's piece, and the pieces in rank order are the batch.
pub fn rank_piece(batch: &[usize], rank: usize, world: usize) -> &[usize] {
    let world = world.max(1);
    if rank >= world {
        return &[];
    }
    let (base, extra) = (batch.len() / world, batch.len() % world);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    &batch[start..start + len]
}

/// How an item with several variants (the same clip at several bitrates) is seen each epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VariantChoice {
    /// One variant per item and epoch, drawn from the seed, the epoch and the item.
    OnePerEpoch,
    /// Every variant, each as its own sample.
    All,
    /// Always the variant at this position of the item's list (evaluation on one bitrate).
    Fixed(usize),
}

/// The (item, variant) samples of one epoch, given how many variants each item has. Items
/// without the requested variant are left out.
pub fn choose_variants(
    variants_per_item: &[usize],
    choice: VariantChoice,
    seed: u64,
    epoch: u64,
) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(variants_per_item.len());
    for (item, &count) in variants_per_item.iter().enumerate() {
        match choice {
            VariantChoice::OnePerEpoch if count > 0 => {
                let mut rng = SplitMix64::derive(seed, &[epoch, item as u64, 0x7A41]);
                out.push((item, rng.below(count as u64) as usize));
            }
            VariantChoice::All => out.extend((0..count).map(|v| (item, v))),
            VariantChoice::Fixed(v) if v < count => out.push((item, v)),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(n: usize) -> Vec<ItemShape> {
        let mut g = SplitMix64::new(9);
        (0..n)
            .map(|_| {
                let blocks = 1 + g.below(200) as u32;
                let max_block_len = 1 + g.below(300) as u32;
                ItemShape {
                    blocks,
                    max_block_len,
                    bytes: blocks as u64 * max_block_len as u64 * 3 / 4,
                }
            })
            .collect()
    }

    #[test]
    fn every_item_once_and_bucketing_cuts_padding() {
        let s = shapes(1000);
        let bucketed = BucketSampler::new(16, 1).batches(&s, 0);
        let mut all: Vec<usize> = bucketed.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        let plain = BucketSampler::new(16, 1)
            .with_bucket_batches(1)
            .batches(&s, 0);
        let (pb, pp) = (padding_ratio(&s, &bucketed), padding_ratio(&s, &plain));
        assert!(pb < pp * 0.85, "bucketed {pb:.3} against plain {pp:.3}");
    }

    #[test]
    fn same_seed_same_batches_and_epochs_differ() {
        let s = shapes(100);
        let a = BucketSampler::new(8, 5);
        assert_eq!(a.batches(&s, 3), a.batches(&s, 3));
        assert_ne!(a.batches(&s, 3), a.batches(&s, 4));
        let short = a.clone().with_drop_last(true).batches(&s, 0);
        assert!(short.iter().all(|b| b.len() == 8));
        assert_eq!(short.len(), 12);
    }

    #[test]
    fn shards_are_disjoint_and_equal() {
        let batches: Vec<Vec<usize>> = (0..11).map(|i| vec![i]).collect();
        let s0 = shard(batches.clone(), 0, 3);
        let s1 = shard(batches.clone(), 1, 3);
        let s2 = shard(batches, 2, 3);
        assert_eq!((s0.len(), s1.len(), s2.len()), (3, 3, 3));
        let mut all: Vec<usize> = [s0, s1, s2].concat().into_iter().flatten().collect();
        all.sort_unstable();
        assert_eq!(all, (0..9).collect::<Vec<_>>());
    }

    #[test]
    fn rank_pieces_hold_every_item_of_an_epoch_once() {
        let s = shapes(103);
        let sampler = BucketSampler::new(10, 9).with_bucket_batches(4);
        for world in 1..=5 {
            for epoch in 0..3 {
                // The same plan on every rank (batches of 10 across the ranks).
                let plan = sampler.batches(&s, epoch);
                assert_eq!(plan, sampler.batches(&s, epoch));
                let mut seen = vec![0u32; s.len()];
                for batch in &plan {
                    let mut joined = Vec::new();
                    for rank in 0..world {
                        let piece = rank_piece(batch, rank, world);
                        assert!(piece.len().abs_diff(batch.len() / world) <= 1);
                        joined.extend_from_slice(piece);
                    }
                    assert_eq!(&joined, batch, "pieces in rank order, world {world}");
                }
                for i in plan.iter().flatten() {
                    seen[*i] += 1;
                }
                assert!(seen.iter().all(|&c| c == 1), "world {world} epoch {epoch}");
            }
        }
        // A batch shorter than the world: the last ranks get nothing; no rank past the world.
        assert_eq!(rank_piece(&[4, 5], 0, 3), &[4]);
        assert_eq!(rank_piece(&[4, 5], 1, 3), &[5]);
        assert!(rank_piece(&[4, 5], 2, 3).is_empty());
        assert!(rank_piece(&[4, 5], 3, 3).is_empty());
        assert_eq!(rank_piece(&[1, 2, 3, 4, 5], 0, 2), &[1, 2, 3]);
        assert_eq!(rank_piece(&[1, 2, 3, 4, 5], 1, 2), &[4, 5]);
    }

    #[test]
    fn variants_one_per_epoch_all_and_fixed() {
        let counts = [3, 3, 1, 0, 2];
        let one = choose_variants(&counts, VariantChoice::OnePerEpoch, 1, 0);
        assert_eq!(one.len(), 4);
        assert!(one.iter().all(|&(i, v)| v < counts[i]));
        let per_epoch: Vec<usize> = (0..30)
            .map(|e| choose_variants(&counts, VariantChoice::OnePerEpoch, 1, e)[0].1)
            .collect();
        assert!((0..3).all(|v| per_epoch.contains(&v)), "{per_epoch:?}");
        assert_eq!(choose_variants(&counts, VariantChoice::All, 1, 0).len(), 9);
        assert_eq!(
            choose_variants(&counts, VariantChoice::Fixed(1), 1, 0),
            vec![(0, 1), (1, 1), (4, 1)]
        );
    }
}
