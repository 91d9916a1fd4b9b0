//! The GPU check: [`tempest_kernels::cuda::check`] (every kernel against its CPU reference), and
//! what needs the model: the model with our kernels against candle's stock ops, random batches
//! and the FLOPs of a training step. `examples/gpu_check.rs` (run by `scripts/gpu-check.sh`)
//! prints them; the CUDA tests assert them. Everything here also runs CPU against CPU, which is
//! how the CPU tests keep it compiling and honest.

use candle_core::{DType, Device, Result};
use candle_nn::{VarBuilder, VarMap};
use tempest_tokenize::{collate, Batch, BlockPosition, TokenizedItem, PAD_ID};

pub use tempest_kernels::cuda::check::*;

use crate::{cost, Config, Tempest};

/// The model with our kernels against the same weights with candle's stock ops, on `dev` in
/// f32: the largest relative error of the logits, of the loss and of the gradients.
pub fn compare_model(dev: &Device, cfg: &Config, batch: &Batch) -> Result<(f64, f64, f64)> {
    let mut on = cfg.clone();
    on.execution.cuda_kernels = true;
    on.dropout = 0.0;
    let mut off = on.clone();
    off.execution.cuda_kernels = false;
    let varmap = VarMap::new();
    let ours = Tempest::new(&on, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    let stock = Tempest::new(&off, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    let batch = batch_to(batch, dev)?;
    let (a, b) = (ours.loss(&batch, false)?, stock.loss(&batch, false)?);
    let logits = rel_err(&a.logits, &b.logits)?;
    let loss = rel_err(&a.total, &b.total)?;
    let (ga, gb) = (a.total.backward()?, b.total.backward()?);
    let mut grads = 0.0f64;
    for v in varmap.all_vars() {
        match (ga.get(v.as_tensor()), gb.get(v.as_tensor())) {
            (Some(x), Some(y)) => grads = grads.max(rel_err(x, y)?),
            (None, None) => {}
            _ => candle_core::bail!("a variable has a gradient on one path only"),
        }
    }
    Ok((logits, loss, grads))
}

/// The batch's tensors on `dev`.
pub fn batch_to(b: &Batch, dev: &Device) -> Result<Batch> {
    Ok(Batch {
        ids: b.ids.to_device(dev)?,
        byte_mask: b.byte_mask.to_device(dev)?,
        block_mask: b.block_mask.to_device(dev)?,
        block_len: b.block_len.to_device(dev)?,
        block_index: b.block_index.to_device(dev)?,
        block_time: b.block_time.to_device(dev)?,
        block_duration: b.block_duration.to_device(dev)?,
        block_row: b.block_row.to_device(dev)?,
        block_col: b.block_col.to_device(dev)?,
        block_format: b.block_format.to_device(dev)?,
        labels: b.labels.to_device(dev)?,
    })
}

/// `items` random items of `blocks` blocks of `len` bytes (the last block of each item
/// shorter, as audio ends), labels `0..classes`, on the CPU.
pub fn random_batch(
    rng: &mut Rng,
    items: usize,
    blocks: usize,
    len: usize,
    classes: usize,
) -> Result<Batch> {
    let items_v: Vec<TokenizedItem> = (0..items)
        .map(|_| {
            let mut it = TokenizedItem::new(cff_blocks::Format::Mp3, 0);
            for k in 0..blocks {
                let n = if k + 1 == blocks {
                    1 + rng.below(len)
                } else {
                    len
                };
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                let pos = BlockPosition {
                    index: k as u32,
                    time: k as f32 * 0.036,
                    duration: 0.036,
                    row: 0,
                    col: 0,
                };
                it.push_block(&bytes, pos, len);
            }
            it
        })
        .collect();
    let refs: Vec<&TokenizedItem> = items_v.iter().collect();
    let labels: Vec<u32> = (0..items).map(|i| (i % classes) as u32).collect();
    collate(&refs, &labels, PAD_ID)
        .to_tensors(&Device::Cpu)
        .map_err(candle_core::Error::wrap)
}

/// Training FLOPs of one step of `cfg` on `batch` (matrix products only, [`cost::flops`]).
pub fn step_flops(cfg: &Config, batch: &Batch) -> Result<f64> {
    let (b, n, l) = batch.ids.dims3()?;
    Ok(cost::flops(cfg, n, l).training() * b as f64)
}
