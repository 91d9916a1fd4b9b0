//! TEMPEST in candle: the model of "TransformErs froM comPressed rEpreSenTations"
//! (arXiv 2510.23665), which classifies files from the bytes of their compressed blocks.
//!
//! ```text
//! ids [B, N, L] ─► byte embedding + in-block positions ─► E_t (each block alone)
//!   ─► M (L bytes → L' tokens) ─┬─► D_t (bytes back; L_r)            when λ > 0
//!                               └─► E_c (\[CLS\] + N·L' tokens) ─► head (L_c)
//! loss = L_c + λ·L_r
//! ```
//!
//! [`Config`] holds the hyper-parameters (presets [`Config::tiny`], [`Config::small`],
//! [`Config::paper`]); [`Tempest`] is the model, taking a [`tempest_tokenize::Batch`];
//! [`save`]/[`load`] write and read checkpoints (safetensors + `config.json`); [`Classifier`]
//! classifies a file end to end; [`batch_gradients`] computes a batch's gradients in
//! parts at once (the optimiser, schedule and loop are tempest-train's); [`cost`] counts
//! parameters and FLOPs. The fused CPU ops and the CUDA kernels are tempest-kernels'
//! (re-exported as [`kernels`]); [`nn`]'s layers hand it views of their weights.
//!
//! ```
//! use candle_core::{DType, Device};
//! use tempest_model::{Config, Tempest};
//! use tempest_tokenize::{collate, BlockPosition, TokenizedItem, PAD_ID};
//!
//! let mut item = TokenizedItem::new(cff_blocks::Format::Jpeg, 0);
//! for i in 0..4 {
//!     item.push_block(&[i as u8; 10], BlockPosition { index: i, time: 0.0, duration: 0.0, row: 0, col: i }, 64);
//! }
//! let batch = collate(&[&item], &[3], PAD_ID).to_tensors(&Device::Cpu)?;
//! let (model, _vars) = Tempest::init(&Config::tiny(), &Device::Cpu, DType::F32)?;
//! let losses = model.loss(&batch, false)?;
//! assert_eq!(losses.logits.dims(), &[1, 10]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
// All unsafe code (the CUDA launches) lives in tempest-kernels.
#![forbid(unsafe_code)]

mod checkpoint;
mod classifier;
mod config;
pub mod cost;
pub mod cuda;
mod device;
mod error;
#[cfg(test)]
mod fused_tests;
mod gradients;
mod mixup;
mod model;
pub mod nn;
pub mod pretrain;

pub use tempest_kernels as kernels;

pub use checkpoint::{
    class_names, load, load_config, load_trainable, save, verify, write_checksums, FileCheck,
    CHECKSUMS_FILE, CLASSES_FILE, CONFIG_FILE, WEIGHTS_FILE,
};
pub use classifier::{Classifier, Prediction};
pub use config::{
    BlockPositionKind, Config, Execution, IdFactors, MixerKind, OrdinalIds, StackConfig,
};
pub use device::{DeviceChoice, Precision};
pub use error::{Error, Result};
pub use gradients::{auto_parts, batch_gradients, correct, BatchGradients};
pub use mixup::Mixup;
pub use model::{
    cross_entropy, reconstruction_loss, time_features, BlockDecoder, Losses, Mixer, Output,
    Tempest, TIME_FREQUENCIES,
};
pub use pretrain::{
    MaskPlan, MaskedBlockModel, Masking, PretrainLoss, Target as PretrainTarget, Teacher,
};
pub use tempest_kernels::{dropout_seed, release_scratch, DropoutRng};
