//! Tokenizing the real files made by real encoders that cff-blocks tests against.

use std::path::{Path, PathBuf};

use cff_blocks::{Format, Options, Reader};
use tempest_tokenize::{tokenize, tokenize_file, Crop, CropContext, KindFilter, TokenizerConfig};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cff-blocks/tests/fixtures")
        .join(rel)
}

#[test]
fn format_defaults_truncate_no_block_of_the_fixtures() {
    // 16 kHz MP3 at 32 and ~20 kbps, Opus at 64 kbps stereo (20 ms), 28×28 q95 gray JPEG.
    for (rel, format) in [
        ("mp3/cbr32_16k_mono.mp3", Format::Mp3),
        ("mp3/abr20_16k_mono.mp3", Format::Mp3),
        ("opus/tone_stereo_64k_20ms.opus", Format::OggOpus),
        ("opus/speech_mono_24k_20ms.opus", Format::OggOpus),
        ("jpeg/gray28_q95_opt.jpg", Format::Jpeg),
    ] {
        let config = TokenizerConfig::for_format(format);
        let item = tokenize_file(&fixture(rel), &config, CropContext::default()).unwrap();
        assert_eq!(item.format, format);
        assert_eq!(item.truncated_blocks, 0, "{rel}");
        assert!(item.num_blocks() > 0, "{rel}");
    }
}

#[test]
fn items_hold_the_reader_s_blocks_and_times() {
    let path = fixture("opus/speech_mono_24k_20ms.opus");
    let data = std::fs::read(&path).unwrap();
    let config = TokenizerConfig::for_format(Format::OggOpus);
    let item = tokenize(&data, &path, &config, CropContext::default()).unwrap();
    let audio: Vec<_> = Reader::new(&data, &Options::default())
        .unwrap()
        .map(Result::unwrap)
        .filter(|b| b.kind == cff_blocks::BlockKind::Audio)
        .collect();
    assert_eq!(
        item.num_blocks(),
        audio.len(),
        "metadata left out by default"
    );
    for (k, b) in audio.iter().enumerate() {
        assert_eq!(item.block(k), &b.data[..]);
        let t = b.place.time_seconds().unwrap() as f32;
        assert_eq!(item.positions[k].time, t);
    }

    let with_meta = config.with_kinds(KindFilter {
        metadata: true,
        ..KindFilter::default()
    });
    let all = tokenize(&data, &path, &with_meta, CropContext::default()).unwrap();
    assert_eq!(
        all.num_blocks(),
        audio.len() + 2,
        "OpusHead and OpusTags kept"
    );
}

#[test]
fn jpeg_header_block_comes_first_and_counts_against_n() {
    let path = fixture("jpeg/gray28_q75.jpg");
    let data = std::fs::read(&path).unwrap();
    let header = match Reader::new(&data, &Options::default()).unwrap() {
        Reader::Jpeg(r) => r.header().to_vec(),
        _ => unreachable!("a JPEG"),
    };
    let config = TokenizerConfig::for_format(Format::Jpeg)
        .with_jpeg_header_block(true)
        .with_max_block_bytes(4096);
    let item = tokenize(&data, &path, &config, CropContext::default()).unwrap();
    assert_eq!(item.num_blocks(), 17, "16 MCUs and the header");
    assert_eq!(item.block(0), &header[..]);
    assert_eq!(&header[..2], &[0xFF, 0xD8]);
    assert_eq!((item.positions[16].row, item.positions[16].col), (3, 3));

    let cropped = tokenize(
        &data,
        &path,
        &config.with_max_blocks(5).with_crop(Crop::Centre),
        CropContext::default(),
    )
    .unwrap();
    assert_eq!(cropped.num_blocks(), 5);
    assert_eq!(cropped.block(0), &header[..]);
    assert_eq!(cropped.source_blocks, 17);
}

#[test]
fn bit_strides_read_each_mcu_at_its_bit_length() {
    // Every id is checked against the MCU's bits read one by one from the JPEG reader's block.
    let path = fixture("jpeg/gray28_q75.jpg");
    let data = std::fs::read(&path).unwrap();
    let blocks: Vec<_> = Reader::new(&data, &Options::default())
        .unwrap()
        .map(|b| b.unwrap())
        .filter(|b| b.kind == cff_blocks::BlockKind::Mcu)
        .collect();
    assert_eq!(blocks.len(), 16);
    let bytes = tokenize(
        &data,
        &path,
        &TokenizerConfig::for_format(Format::Jpeg),
        CropContext::default(),
    )
    .unwrap();
    for stride in [1u8, 2, 4, 8] {
        let config = TokenizerConfig::for_format(Format::Jpeg)
            .with_bit_stride(stride)
            .with_max_block_bytes(4096);
        config.validate().unwrap();
        let item = tokenize(&data, &path, &config, CropContext::default()).unwrap();
        assert_eq!(item.num_blocks(), 16);
        for (i, b) in blocks.iter().enumerate() {
            let nbits = b.bits.unwrap() as usize;
            let bit = |k: usize| -> u8 {
                if k < nbits {
                    (b.data[k / 8] >> (7 - k % 8)) & 1
                } else {
                    0
                }
            };
            let ids = item.block(i);
            assert_eq!(
                ids.len(),
                nbits.div_ceil(stride as usize),
                "MCU {i} stride {stride}"
            );
            for (j, &id) in ids.iter().enumerate() {
                let want = (0..8).fold(0u8, |v, k| (v << 1) | bit(j * stride as usize + k));
                assert_eq!(id, want, "MCU {i} stride {stride} id {j}");
            }
            if stride == 8 {
                // Byte ids equal the block's bytes up to its last, partly used byte.
                assert_eq!(&ids[..ids.len() - 1], &bytes.block(i)[..ids.len() - 1]);
            }
        }
    }
    let bad = TokenizerConfig::for_format(Format::Jpeg).with_bit_stride(3);
    assert!(bad.validate().is_err());
    // A stride the windows cannot be read at is an error from `tokenize`, not a panic.
    let zero = TokenizerConfig::for_format(Format::Jpeg).with_bit_stride(0);
    assert!(tokenize(&data, &path, &zero, CropContext::default()).is_err());
}
