//! Collating tokenized items into padded batches.

#[cfg(feature = "tensors")]
use candle_core::{Device, Tensor};

#[cfg(feature = "tensors")]
use crate::Result;
use crate::TokenizedItem;

/// A padded batch in host memory: flat, row-major buffers with the shapes given below. Built
/// by [`collate`] on loader threads; [`HostBatch::to_tensors`] moves it to a device.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// B: items in the batch.
    pub batch: usize,
    /// N: blocks per item, the largest item's block count.
    pub blocks: usize,
    /// L: bytes per block, the largest block's kept length.
    pub block_bytes: usize,
    /// `[B, N, L]` ids: bytes 0–255 (or field ids, see [`crate::fields`]), the padding id
    /// elsewhere.
    pub ids: Vec<u32>,
    /// `[B, N, L]` 1 where `ids` holds a byte, 0 at padding.
    pub byte_mask: Vec<u8>,
    /// `[B, N]` 1 where the item has a block, 0 at padding.
    pub block_mask: Vec<u8>,
    /// `[B, N]` each block's length in its file, before truncation to L (0 at padding): a
    /// block cut to L keeps its true length here.
    pub block_len: Vec<u32>,
    /// `[B, N]` index of each block among its file's kept blocks.
    pub block_index: Vec<u32>,
    /// `[B, N]` start time in seconds (audio).
    pub block_time: Vec<f32>,
    /// `[B, N]` duration in seconds (audio).
    pub block_duration: Vec<f32>,
    /// `[B, N]` MCU row (images).
    pub block_row: Vec<u32>,
    /// `[B, N]` MCU column (images).
    pub block_col: Vec<u32>,
    /// `[B, N]` the format id of each block ([`cff_blocks::Format::id`]; 0 at padding).
    pub block_format: Vec<u32>,
    /// `[B]` class labels.
    pub labels: Vec<u32>,
}

/// A padded batch on a device. Shapes as in [`HostBatch`]; masks are `u8`, ids and indices
/// `u32`, times `f32`.
#[cfg(feature = "tensors")]
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, N, L]` u32.
    pub ids: Tensor,
    /// `[B, N, L]` u8.
    pub byte_mask: Tensor,
    /// `[B, N]` u8.
    pub block_mask: Tensor,
    /// `[B, N]` u32.
    pub block_len: Tensor,
    /// `[B, N]` u32.
    pub block_index: Tensor,
    /// `[B, N]` f32.
    pub block_time: Tensor,
    /// `[B, N]` f32.
    pub block_duration: Tensor,
    /// `[B, N]` u32.
    pub block_row: Tensor,
    /// `[B, N]` u32.
    pub block_col: Tensor,
    /// `[B, N]` u32.
    pub block_format: Tensor,
    /// `[B]` u32.
    pub labels: Tensor,
}

#[cfg(feature = "tensors")]
impl Batch {
    /// Items in the batch (B).
    pub fn len(&self) -> usize {
        self.labels.elem_count()
    }

    /// Whether the batch holds no item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch cut into `k` consecutive parts along B (views, no copy), whose sizes differ
    /// by at most one, the larger first; fewer than `k` when B < k, one when `k` ≤ 1. Each
    /// part keeps the batch's N and L.
    pub fn parts(&self, k: usize) -> candle_core::Result<Vec<Batch>> {
        let mut out = Vec::with_capacity(k);
        let mut start = 0;
        for len in part_sizes(self.len(), k) {
            let cut = |t: &Tensor| t.narrow(0, start, len);
            out.push(Batch {
                ids: cut(&self.ids)?,
                byte_mask: cut(&self.byte_mask)?,
                block_mask: cut(&self.block_mask)?,
                block_len: cut(&self.block_len)?,
                block_index: cut(&self.block_index)?,
                block_time: cut(&self.block_time)?,
                block_duration: cut(&self.block_duration)?,
                block_row: cut(&self.block_row)?,
                block_col: cut(&self.block_col)?,
                block_format: cut(&self.block_format)?,
                labels: cut(&self.labels)?,
            });
            start += len;
        }
        Ok(out)
    }
}

/// The sizes of `k` consecutive parts of `n` items that differ by at most one, the larger
/// first: fewer parts when `n` < `k` (none empty, but one part for `n` = 0), one when `k` ≤ 1.
///
/// ```
/// assert_eq!(tempest_tokenize::part_sizes(7, 3), [3, 2, 2]);
/// assert_eq!(tempest_tokenize::part_sizes(2, 4), [1, 1]);
/// ```
pub fn part_sizes(n: usize, k: usize) -> Vec<usize> {
    let k = k.clamp(1, n.max(1));
    let (base, extra) = (n / k, n % k);
    (0..k).map(|i| base + usize::from(i < extra)).collect()
}

impl HostBatch {
    /// Ids that hold a byte.
    pub fn real_ids(&self) -> usize {
        self.byte_mask.iter().filter(|&&m| m != 0).count()
    }

    /// Padded ids / all ids: what padding costs this batch.
    pub fn padding_ratio(&self) -> f64 {
        if self.ids.is_empty() {
            return 0.0;
        }
        1.0 - self.real_ids() as f64 / self.ids.len() as f64
    }

    /// Moves the batch to `device` as tensors.
    #[cfg(feature = "tensors")]
    pub fn to_tensors(&self, device: &Device) -> Result<Batch> {
        let (b, n, l) = (self.batch, self.blocks, self.block_bytes);
        Ok(Batch {
            ids: Tensor::from_slice(&self.ids, (b, n, l), device)?,
            byte_mask: Tensor::from_slice(&self.byte_mask, (b, n, l), device)?,
            block_mask: Tensor::from_slice(&self.block_mask, (b, n), device)?,
            block_len: Tensor::from_slice(&self.block_len, (b, n), device)?,
            block_index: Tensor::from_slice(&self.block_index, (b, n), device)?,
            block_time: Tensor::from_slice(&self.block_time, (b, n), device)?,
            block_duration: Tensor::from_slice(&self.block_duration, (b, n), device)?,
            block_row: Tensor::from_slice(&self.block_row, (b, n), device)?,
            block_col: Tensor::from_slice(&self.block_col, (b, n), device)?,
            block_format: Tensor::from_slice(&self.block_format, (b, n), device)?,
            labels: Tensor::from_slice(&self.labels, b, device)?,
        })
    }
}

/// Pads `items` to the largest block count and block length among them (not to a global
/// maximum) and lays them out as a [`HostBatch`].
///
/// # Panics
/// If `labels.len() != items.len()`.
pub fn collate(items: &[&TokenizedItem], labels: &[u32], pad_id: u32) -> HostBatch {
    assert_eq!(items.len(), labels.len(), "one label per item");
    let b = items.len();
    let n = items.iter().map(|i| i.num_blocks()).max().unwrap_or(0);
    let l = items.iter().map(|i| i.max_block_len()).max().unwrap_or(0);
    let mut out = HostBatch {
        batch: b,
        blocks: n,
        block_bytes: l,
        ids: Vec::with_capacity(b * n * l),
        byte_mask: Vec::with_capacity(b * n * l),
        block_mask: vec![0; b * n],
        block_len: vec![0; b * n],
        block_index: vec![0; b * n],
        block_time: vec![0.0; b * n],
        block_duration: vec![0.0; b * n],
        block_row: vec![0; b * n],
        block_col: vec![0; b * n],
        block_format: vec![0; b * n],
        labels: labels.to_vec(),
    };
    // Each row of L ids is written once, bytes then padding: the ids are the largest buffer of
    // the data pipeline, and filling it with padding first would write the bytes twice.
    for (bi, item) in items.iter().enumerate() {
        let format = u32::from(item.format.id());
        for (k, pos) in item.positions.iter().enumerate() {
            let bytes = item.block(k);
            out.ids.extend(bytes.iter().map(|&id| u32::from(id)));
            out.ids.extend(std::iter::repeat_n(pad_id, l - bytes.len()));
            out.byte_mask.extend(std::iter::repeat_n(1u8, bytes.len()));
            out.byte_mask
                .extend(std::iter::repeat_n(0u8, l - bytes.len()));
            let row = bi * n + k;
            out.block_mask[row] = 1;
            out.block_len[row] = item.source_len(k) as u32;
            out.block_index[row] = pos.index;
            out.block_time[row] = pos.time;
            out.block_duration[row] = pos.duration;
            out.block_row[row] = pos.row;
            out.block_col[row] = pos.col;
            out.block_format[row] = format;
        }
        let missing = (n - item.positions.len()) * l;
        out.ids.extend(std::iter::repeat_n(pad_id, missing));
        out.byte_mask.extend(std::iter::repeat_n(0u8, missing));
    }
    out
}

#[cfg(all(test, feature = "tensors"))]
mod tests {
    use super::*;

    #[test]
    fn parts_cut_along_the_batch_in_order() {
        let (b, n, l) = (5, 2, 3);
        let host = HostBatch {
            batch: b,
            blocks: n,
            block_bytes: l,
            ids: (0..(b * n * l) as u32).collect(),
            byte_mask: vec![1; b * n * l],
            block_mask: vec![1; b * n],
            block_len: vec![3; b * n],
            block_index: (0..(b * n) as u32).collect(),
            block_time: vec![0.0; b * n],
            block_duration: vec![0.0; b * n],
            block_row: vec![0; b * n],
            block_col: vec![0; b * n],
            block_format: vec![3; b * n],
            labels: vec![9, 8, 7, 6, 5],
        };
        let batch = host.to_tensors(&Device::Cpu).unwrap();
        assert_eq!(batch.len(), 5);
        let labels = |p: &[Batch]| -> Vec<Vec<u32>> {
            p.iter().map(|b| b.labels.to_vec1().unwrap()).collect()
        };
        let two = batch.parts(2).unwrap();
        assert_eq!(labels(&two), [vec![9, 8, 7], vec![6, 5]]);
        // The second part's first id is the fourth item's first id; N and L are kept.
        assert_eq!(two[1].ids.dims(), [2, n, l]);
        let first: Vec<u32> = two[1].ids.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(first[0], (3 * n * l) as u32);
        assert_eq!(batch.parts(9).unwrap().len(), 5);
        assert_eq!(labels(&batch.parts(0).unwrap()), [vec![9, 8, 7, 6, 5]]);
    }
}
