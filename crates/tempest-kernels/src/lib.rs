//! TEMPEST's kernels for candle: the fused CPU ops with hand-written backward passes and the
//! CUDA kernels, each behind one dispatch function.
//!
//! | op | dispatch | CUDA kernel ([`cuda`]) | fused CPU op ([`cpu`]) |
//! |---|---|---|---|
//! | layer norm | [`layer_norm`] | [`cuda::layer_norm`] | [`cpu::layer_norm`] |
//! | attention over heads | [`attention`] (and [`attend`], [`attend_projected`] with the projections) | [`cuda::attention`] | [`cpu::attention`], [`cpu::biased_softmax`], [`cpu::softmax`] |
//! | GELU, the MLP | [`gelu`], [`mlp`] | (candle's) | [`cpu::gelu`] |
//! | a transformer layer | [`layer`] | (op by op) | `cpu::layer`: the whole layer as one node |
//! | byte embedding | [`embed_bytes`] | [`cuda::embed_bytes`] | `cpu::block_ops` |
//! | the linear mixer's masked mix | [`masked_mix`] | [`cuda::masked_mix`] | `cpu::block_ops` |
//! | embedding + E_t + norm + mix | [`encode_and_mix`] | (op by op) | `cpu::block_encoder`: one node |
//! | dropout | [`DropoutRng::dropout`] | (a host-built mask) | [`dropout`](mod@dropout) |
//!
//! Each dispatch tries the CUDA kernel (a CUDA tensor, feature `cuda`, a dtype and shape the
//! kernel takes), then the fused CPU op (f32/f64 on the CPU), then candle's tensor ops, which
//! run anywhere and define what the others compute. The ops take plain views of the weights
//! ([`LinearView`], [`NormView`], [`AttentionWeights`], [`MlpWeights`], [`LayerWeights`],
//! [`BlockEncoderWeights`]): this crate knows no model, and the model (tempest-model) builds
//! the views from its own layers.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use tempest_kernels::{layer_norm, NormView};
//!
//! let x = Tensor::arange(0f32, 12.0, &Device::Cpu)?.reshape((3, 4))?;
//! let (w, b) = (Tensor::ones(4, DType::F32, &Device::Cpu)?, Tensor::zeros(4, DType::F32, &Device::Cpu)?);
//! let norm = NormView { weight: &w, bias: &b, eps: 1e-5 };
//! let fused = layer_norm(&x, &norm, true)?;
//! let plain = layer_norm(&x, &norm, false)?;
//! let diff = (fused - plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
//! assert!(diff < 1e-5);
//! # Ok::<(), candle_core::Error>(())
//! ```
#![deny(missing_docs)]
// Unsafe code is allowed only in `cuda::launch` (feature `cuda`: device allocations and
// kernel launches); everywhere else, and in every build without the feature, it is forbidden.
#![cfg_attr(not(feature = "cuda"), forbid(unsafe_code))]

pub mod cpu;
pub mod cuda;
mod dispatch;
pub mod dropout;
mod scratch;
#[cfg(test)]
mod testing;
mod views;

pub use cpu::block_encoder::{encode_and_mix, BlockEncoderWeights};
pub use cpu::contiguous;
pub use dispatch::{
    attend, attend_projected, attention, embed_bytes, gelu, key_bias, layer, layer_norm, linear,
    masked_mix, mlp, MASK_BIAS,
};
pub use dropout::{dropout_seed, DropoutRng};
pub use scratch::release_scratch;
pub use views::{AttentionWeights, Kernels, LayerWeights, LinearView, MlpWeights, NormView};
