//! The baseline TEMPEST is measured against (arXiv 2510.23665 §4): the same compressed files,
//! decoded, turned into spectrogram or pixel patches and classified by a ViT of E_c's width and
//! depth.
//!
//! ```text
//! file bytes ─► decode (minimp3 / zune-jpeg / libopus) ─► samples or pixels
//!   ─► log-mel [128, frames] (Kaldi fbank, AST's options) or pixels [H, W, C]
//!   ─► patches (AST: 16×16, stride 10; images: 7×7 or 4×4) ─► ViT with \[CLS\] ─► head
//! ```
//!
//! - [`decode`]: [`decode::decode_mp3`], [`decode::decode_jpeg`], [`decode::decode_opus`]
//!   (feature `opus`), with [`decode::Limits`].
//! - [`Fbank`]: Kaldi-style log-mel filter banks (realfft), checked against
//!   kaldi-native-fbank in the tests.
//! - [`Featurizer`] and [`PatchSpec`]: decoded media to normalised maps and patches; 1 s of
//!   16 kHz audio gives 98 frames and 12 × 9 = 108 patches.
//! - [`Vit`]: the model, built from `tempest_model::nn`'s layers; [`VitLearner`] trains it
//!   with `tempest_train::fit`.
//! - [`compare()`]: TEMPEST and the baseline on one dataset, split and budget, and the
//!   table of tokens, attention, parameters, FLOPs, preparation time, throughput and
//!   accuracy.
#![deny(missing_docs)]

pub mod compare;
pub mod decode;
mod error;
pub mod fbank;
pub mod features;
pub mod vit;

pub use compare::{compare, CompareOptions, Comparison, Media, Row};
pub use error::{Error, Result};
pub use fbank::{Fbank, FbankConfig, Window};
pub use features::{FeatureConfig, Features, Featurizer, PatchSpec, Source};
pub use vit::{PatchBatch, SpecMasks, Vit, VitConfig, VitLearner};
