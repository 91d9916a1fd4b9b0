//! Properties of collation and sampling over random items.

#![allow(clippy::needless_range_loop)] // one index addresses the batch and the raw bytes alike

use cff_blocks::{Format, Place};
use proptest::prelude::*;
use tempest_tokenize::{
    collate, crop_indices, BlockPosition, BucketSampler, Crop, CropContext, HostBatch, ItemShape,
    TokenizedItem, PAD_ID,
};

/// An item whose every byte says which item and block it came from: byte = (item·31 +
/// block·7 + position) mod 256, so that a mixed-up batch is caught.
fn item(id: usize, block_lens: &[usize], l: usize) -> (TokenizedItem, Vec<Vec<u8>>) {
    let mut it = TokenizedItem::new(Format::Mp3, 0);
    let mut raw = Vec::new();
    for (k, &len) in block_lens.iter().enumerate() {
        let bytes: Vec<u8> = (0..len)
            .map(|p| ((id * 31 + k * 7 + p) % 256) as u8)
            .collect();
        let place = Place::Time {
            start: (k * 576) as i64,
            duration: 576,
            rate: 16_000,
        };
        it.push_block(&bytes, BlockPosition::of(k as u32, &place), l);
        raw.push(bytes);
    }
    (it, raw)
}

fn at(b: &HostBatch, i: usize, k: usize, p: usize) -> usize {
    (i * b.blocks + k) * b.block_bytes + p
}

proptest! {
    #[test]
    fn collated_ids_and_masks_agree_with_blocks(
        lens in prop::collection::vec(prop::collection::vec(0usize..40, 1..12), 1..6),
        l in 1usize..48,
    ) {
        let made: Vec<_> = lens.iter().enumerate().map(|(i, b)| item(i, b, l)).collect();
        let items: Vec<&TokenizedItem> = made.iter().map(|(it, _)| it).collect();
        let labels: Vec<u32> = (0..items.len() as u32).collect();
        let b = collate(&items, &labels, PAD_ID);
        // Padded to the largest item of the batch.
        prop_assert_eq!(b.blocks, lens.iter().map(Vec::len).max().unwrap());
        prop_assert_eq!(b.block_bytes, lens.iter().flatten().map(|&n| n.min(l)).max().unwrap());
        prop_assert_eq!(b.ids.len(), b.batch * b.blocks * b.block_bytes);
        for (i, (it, raw)) in made.iter().enumerate() {
            for k in 0..b.blocks {
                let present = k < raw.len();
                prop_assert_eq!(b.block_mask[i * b.blocks + k] == 1, present);
                let kept = if present { raw[k].len().min(l) } else { 0 };
                // The length is the block's own, truncated or not.
                let len = if present { raw[k].len() } else { 0 };
                prop_assert_eq!(b.block_len[i * b.blocks + k] as usize, len);
                for p in 0..b.block_bytes {
                    let idx = at(&b, i, k, p);
                    if p < kept {
                        // The non-padding ids of every block are its bytes up to L.
                        prop_assert_eq!(b.ids[idx], u32::from(raw[k][p]));
                        prop_assert_eq!(b.byte_mask[idx], 1);
                    } else {
                        prop_assert_eq!(b.ids[idx], PAD_ID);
                        prop_assert_eq!(b.byte_mask[idx], 0);
                    }
                }
            }
            prop_assert_eq!(it.truncated_blocks as usize, raw.iter().filter(|r| r.len() > l).count());
        }
        let real: usize = made.iter().map(|(it, _)| it.total_bytes()).sum();
        prop_assert_eq!(b.real_ids(), real);
    }

    #[test]
    fn crops_never_mix_items_or_reorder_blocks(
        total in 1usize..300, keep in 1usize..64, seed in any::<u64>(), epoch in 0u64..5,
    ) {
        for crop in [Crop::First, Crop::Centre, Crop::Random, Crop::Even] {
            let ctx = CropContext { seed, epoch, item: 3 };
            let idx = crop_indices(total, keep, crop, ctx);
            prop_assert_eq!(idx.len(), keep.min(total));
            prop_assert!(idx.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(idx.iter().all(|&i| i < total));
            if matches!(crop, Crop::First | Crop::Centre | Crop::Random) {
                // A contiguous run of the file's blocks.
                prop_assert!(idx.windows(2).all(|w| w[1] == w[0] + 1));
            }
        }
    }

    #[test]
    fn same_seed_same_batches(
        shapes in prop::collection::vec((1u32..100, 1u32..300), 1..200),
        batch in 1usize..20, seed in any::<u64>(), epoch in 0u64..10,
    ) {
        let shapes: Vec<ItemShape> = shapes.into_iter()
            .map(|(n, l)| ItemShape { blocks: n, max_block_len: l, bytes: (n * l) as u64 })
            .collect();
        let s = BucketSampler::new(batch, seed);
        let a = s.batches(&shapes, epoch);
        prop_assert_eq!(&a, &s.batches(&shapes, epoch));
        let mut seen: Vec<usize> = a.iter().flatten().copied().collect();
        seen.sort_unstable();
        prop_assert_eq!(seen, (0..shapes.len()).collect::<Vec<_>>());
        prop_assert!(a.iter().all(|b| !b.is_empty() && b.len() <= batch));
    }
}

#[cfg(feature = "tensors")]
#[test]
fn tensors_have_the_documented_shapes_and_dtypes() {
    let (a, _) = item(0, &[5, 9, 2], 8);
    let (b, _) = item(1, &[3], 8);
    let host = collate(&[&a, &b], &[4, 2], PAD_ID);
    let t = host.to_tensors(&candle_core::Device::Cpu).unwrap();
    assert_eq!(t.ids.dims(), &[2, 3, 8]);
    assert_eq!(t.ids.dtype(), candle_core::DType::U32);
    assert_eq!(t.byte_mask.dtype(), candle_core::DType::U8);
    assert_eq!(t.block_mask.dims(), &[2, 3]);
    assert_eq!(t.labels.to_vec1::<u32>().unwrap(), vec![4, 2]);
    let times = t.block_time.to_vec2::<f32>().unwrap();
    assert_eq!(times[0], vec![0.0, 0.036, 0.072]);
    assert_eq!(times[1], vec![0.0, 0.0, 0.0]);
    let mask = t.block_mask.to_vec2::<u8>().unwrap();
    assert_eq!(mask, vec![vec![1, 1, 1], vec![1, 0, 0]]);
    // 5+8+2 and 3 real ids of 2·3·8.
    assert!((host.padding_ratio() - (1.0 - 18.0 / 48.0)).abs() < 1e-12);
}
