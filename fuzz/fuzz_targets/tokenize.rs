#![no_main]
// Fuzzes the tokenizer on any bytes, with every kind of block ids (bytes, bit windows, codec
// fields, MP3 main data, band lines and energies), crops, loudness jitter, band masks and
// merged short windows: errors are fine, panics are not, and every id it gives fits the
// vocabulary of its kind.
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tempest_tokenize::{tokenize, BlockTokens, Crop, CropContext, TokenizerConfig};

mod common;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the settings, the rest is the file.
    let Some((&knobs, file)) = data.split_first() else {
        return;
    };
    let tokens = BlockTokens::ALL[usize::from(knobs) % BlockTokens::ALL.len()].0;
    let stride = if tokens.has_fields() { 8 } else { [8, 4, 2, 1][usize::from(knobs >> 3) % 4] };
    let mut config = TokenizerConfig::default()
        .with_tokens(tokens)
        .with_max_block_bytes(64)
        .with_max_blocks(32)
        .with_crop(if knobs & 0x20 != 0 { Crop::Random } else { Crop::Centre })
        .with_gain_jitter(knobs >> 6)
        .with_band_mask(knobs >> 5)
        .with_band_shift((knobs >> 2) & 3)
        .with_time_mask(u16::from(knobs >> 4));
    // Merged short windows exist for the band energies only (validate() refuses the rest).
    config.merge_short_windows = tokens.has_energies() && knobs & 0x40 != 0;
    config.bit_stride = stride;
    config.reader = common::options();
    let ctx = CropContext {
        item: u64::from(knobs),
        ..CropContext::default()
    };
    if let Ok(item) = tokenize(file, Path::new("fuzz"), &config, ctx) {
        let vocab = tokens.vocab_size();
        for k in 0..item.num_blocks() {
            assert!(item.block(k).len() <= 64);
            assert!(item.block(k).iter().all(|&id| usize::from(id) < vocab));
        }
    }
});
