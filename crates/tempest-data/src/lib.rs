//! The datasets TEMPEST learns from: how raw datasets are laid out, their preparation into
//! compressed files, the manifest of a prepared folder, and the labelled, split [`Dataset`]
//! that training reads. No tensors here: this crate builds without candle.
//!
//! - [`Variant`]: one compressed version of an item (`mp3:20`, `opus:24`, `jpeg:75`,
//!   `jpeg:75x2r1@1/-1`), parsed and printed in that spelling.
//! - [`Layout`] and its scanners ([`layout`]): `folder`, `esc50`, `speechcommands`, `mnist`;
//!   each layout's rules in one module, for raw inputs and for files already compressed.
//! - [`prepare()`]: every item in every variant, in parallel, skipping outputs already there,
//!   with a progress bar and the inputs that failed counted in its [`Summary`]; the encoders
//!   are cff-encode's.
//! - [`manifest`]: `manifest.csv`, written and read in one place.
//! - [`Dataset`] and [`SplitPlan`]: the items of a prepared folder or a raw layout, and which
//!   splits train, select the best checkpoint, and test; [`DataSource`]: a prepared folder or
//!   a raw layout, as the command lines name them.
//!
//! ```
//! use tempest_data::{parse_variants, Variant};
//!
//! let v = parse_variants("mp3:20,jpeg:75x2r1@1/-1")?;
//! assert_eq!(v[0], Variant::Mp3(20));
//! assert_eq!(v[1].dir_name(), "jpeg-75-x2-r1-shift1_-1");
//! # Ok::<(), tempest_data::Error>(())
//! ```
#![deny(missing_docs)]

pub mod dataset;
mod encode;
mod error;
mod files;
pub mod layout;
pub mod manifest;
pub mod prepare;
mod source;
pub mod variant;

pub use dataset::{holds_images, Dataset, Sample, SplitPlan};
pub use error::{Error, Result};
pub use files::write_atomically;
pub use layout::{scan, Item, Layout, Source};
pub use manifest::{MANIFEST_FILE, MANIFEST_HEADER};
pub use prepare::{prepare, Failure, PrepareConfig, Summary};
pub use source::DataSource;
pub use variant::{parse_variants, JpegVariant, Variant, MAX_SCALE, MAX_SHIFT};
