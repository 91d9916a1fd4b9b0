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
        assert_eq!(item.block(k), &widen(&b.data)[..]);
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
    assert_eq!(item.block(0), &widen(&header)[..]);
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
    assert_eq!(cropped.block(0), &widen(&header)[..]);
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
                assert_eq!(id, u16::from(want), "MCU {i} stride {stride} id {j}");
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

/// Bytes as the ids a tokenized item holds.
fn widen(bytes: &[u8]) -> Vec<u16> {
    bytes.iter().map(|&b| u16::from(b)).collect()
}

/// The 16 kHz mono 32 kbps LAME fixture: its path and bytes.
fn mono_16k_mp3() -> (PathBuf, Vec<u8>) {
    let path = fixture("mp3/cbr32_16k_mono.mp3");
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, data)
}

/// The audio blocks of a file, in order.
fn audio_frames(data: &[u8]) -> Vec<cff_blocks::Block<'_>> {
    Reader::new(data, &Options::default())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|b| b.kind == cff_blocks::BlockKind::Audio)
        .collect()
}

/// The MP3 defaults reading blocks as `tokens`, with room for a whole frame's ids.
fn mp3_config(tokens: tempest_tokenize::BlockTokens) -> TokenizerConfig {
    TokenizerConfig::for_format(Format::Mp3)
        .with_tokens(tokens)
        .with_max_block_bytes(400)
}

#[test]
fn field_tokens_give_each_field_its_value_then_the_chosen_bytes() {
    use cff_blocks::mp3::{MainData, SideInfo};
    use tempest_tokenize::fields::{field_name, FIELD_BASE};
    use tempest_tokenize::{BlockTokens, FIELDS_VOCAB_SIZE};

    let (path, data) = mono_16k_mp3();
    let frames = audio_frames(&data);
    let config = mp3_config;
    let ctx = CropContext::default();
    let fields = tokenize(&data, &path, &config(BlockTokens::Fields), ctx).unwrap();
    let with_bytes = tokenize(&data, &path, &config(BlockTokens::FieldsAndBytes), ctx).unwrap();
    let with_data = tokenize(&data, &path, &config(BlockTokens::FieldsAndData), ctx).unwrap();
    assert_eq!(fields.num_blocks(), frames.len());
    let mut reservoir = MainData::new();
    let mut reached_back = 0;
    for (k, frame) in frames.iter().enumerate() {
        let side = SideInfo::parse(&frame.data, frame.offset).unwrap();
        // MPEG-2 mono: bitrate index, main_data_begin, then 15 fields of the one granule.
        let ids = fields.block(k);
        assert_eq!(ids.len(), 17, "frame {k}");
        assert!(ids
            .iter()
            .all(|&id| u32::from(id) >= FIELD_BASE && usize::from(id) < FIELDS_VOCAB_SIZE));
        let names: Vec<_> = ids
            .iter()
            .map(|&id| field_name(id.into()).unwrap())
            .collect();
        assert_eq!(names[4], "mp3.global_gain");
        let gain_base = ids[4] - u16::from(side.granule[0][0].global_gain);
        // The global_gain id moves with the value: one id per value from the field's base.
        assert_eq!(field_name(gain_base.into()), Some("mp3.global_gain"));
        assert_eq!(fields.source_len(k), frame.data.len());
        // fields+bytes: the frame's bytes after header and side information follow.
        let rest: Vec<u16> = frame.data[4 + 9..].iter().map(|&b| u16::from(b)).collect();
        assert_eq!(&with_bytes.block(k)[..17], ids);
        assert_eq!(&with_bytes.block(k)[17..], &rest[..]);
        // fields+data: the frame's own main data from the reservoir.
        let own = reservoir
            .push(&frame.data, &side, frame.offset)
            .unwrap()
            .unwrap();
        assert_eq!(&with_data.block(k)[..17], ids);
        let own: Vec<u16> = own.iter().map(|&b| u16::from(b)).collect();
        assert_eq!(&with_data.block(k)[17..], &own[..]);
        if side.main_data_begin > 0 {
            reached_back += 1;
            assert_ne!(with_data.block(k), with_bytes.block(k), "frame {k}");
        }
    }
    assert!(reached_back > 0);

    // Opus: TOC config, stereo, code, frame count, length / 4, then the packet after its TOC.
    let path = fixture("opus/speech_mono_24k_20ms.opus");
    let config = TokenizerConfig::for_format(Format::OggOpus)
        .with_tokens(BlockTokens::FieldsAndBytes)
        .with_max_block_bytes(400);
    let item = tokenize_file(&path, &config, ctx).unwrap();
    let data = std::fs::read(&path).unwrap();
    let packets: Vec<_> = Reader::new(&data, &Options::default())
        .unwrap()
        .map(Result::unwrap)
        .filter(|b| b.kind == cff_blocks::BlockKind::Audio)
        .collect();
    assert_eq!(item.num_blocks(), packets.len());
    for (k, p) in packets.iter().enumerate() {
        let ids = item.block(k);
        let names: Vec<_> = ids[..5]
            .iter()
            .map(|&id| field_name(id.into()).unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "opus.config",
                "opus.stereo",
                "opus.code",
                "opus.frames",
                "opus.bytes/4"
            ]
        );
        let rest: Vec<u16> = p.data[1..].iter().map(|&b| u16::from(b)).collect();
        assert_eq!(&ids[5..], &rest[..]);
    }

    // Field ids need whole bytes.
    let bad = TokenizerConfig::for_format(Format::Mp3)
        .with_tokens(BlockTokens::Fields)
        .with_bit_stride(4);
    assert!(bad.validate().is_err());
}

#[test]
fn gain_jitter_moves_every_global_gain_of_an_item_by_one_offset() {
    use tempest_tokenize::BlockTokens;
    let path = fixture("mp3/cbr32_16k_mono.mp3");
    let plain = TokenizerConfig::for_format(Format::Mp3).with_tokens(BlockTokens::Fields);
    let base = tokenize_file(&path, &plain, CropContext::default()).unwrap();
    let jittered = plain.clone().with_gain_jitter(3);
    let mut offsets = std::collections::BTreeSet::new();
    for epoch in 0..40 {
        let ctx = CropContext {
            seed: 9,
            epoch,
            item: 4,
        };
        let item = tokenize_file(&path, &jittered, ctx).unwrap();
        assert_eq!(
            item,
            tokenize_file(&path, &jittered, ctx).unwrap(),
            "repeatable"
        );
        let mut offset = None;
        for k in 0..base.num_blocks() {
            let (a, b) = (base.block(k), item.block(k));
            for (j, (&x, &y)) in a.iter().zip(b).enumerate() {
                if j == 4 {
                    // global_gain: the same move in every frame (none of this clip is near 0
                    // or 255, where it would clamp).
                    let d = i32::from(y) - i32::from(x);
                    assert_eq!(*offset.get_or_insert(d), d, "frame {k}");
                } else {
                    assert_eq!(x, y, "frame {k} field {j}");
                }
            }
        }
        offsets.insert(offset.unwrap());
    }
    assert!(offsets.iter().all(|d| (-3..=3).contains(d)), "{offsets:?}");
    assert!(
        offsets.len() >= 5,
        "offsets drawn over 40 epochs: {offsets:?}"
    );
}

#[test]
fn line_tokens_follow_the_fields_one_per_scalefactor_band() {
    use cff_blocks::mp3::{decode_granules, long_band_edges, MainData, SideInfo};
    use tempest_tokenize::fields::{
        field_name, field_range, BAND_LEVELS, BAND_SCALEFACS, LONG_BANDS,
    };
    use tempest_tokenize::{BlockTokens, LINES_VOCAB_SIZE};

    let (path, data) = mono_16k_mp3();
    let frames = audio_frames(&data);
    let config = mp3_config;
    assert_eq!(BlockTokens::FieldsAndLines.vocab_size(), LINES_VOCAB_SIZE);
    let ctx = CropContext::default();
    let fields = tokenize(&data, &path, &config(BlockTokens::Fields), ctx).unwrap();
    let lines = tokenize(&data, &path, &config(BlockTokens::FieldsAndLines), ctx).unwrap();
    assert_eq!(lines.num_blocks(), frames.len());
    let edges = long_band_edges(16_000).unwrap();
    let mut reservoir = MainData::new();
    let (mut long_frames, mut short_frames) = (0, 0);
    for (k, frame) in frames.iter().enumerate() {
        let side = SideInfo::parse(&frame.data, frame.offset).unwrap();
        let ids = lines.block(k);
        assert_eq!(
            &ids[..17],
            fields.block(k),
            "frame {k}: the fields come first"
        );
        assert!(ids.iter().all(|&id| usize::from(id) < LINES_VOCAB_SIZE));
        let Some(own) = reservoir.push(&frame.data, &side, frame.offset).unwrap() else {
            assert_eq!(ids.len(), 17);
            continue;
        };
        let decoded = decode_granules(&side, own, frame.offset).unwrap();
        let g = &side.granule[0][0];
        let bands = &ids[17..];
        if g.window_switching && g.block_type == 2 {
            short_frames += 1;
            assert_eq!(bands.len(), 39, "frame {k}");
            assert!(bands
                .iter()
                .all(|&id| field_name(id.into()) == Some("mp3.short_band(level,scalefac)")));
            continue;
        }
        long_frames += 1;
        assert_eq!(bands.len(), LONG_BANDS, "frame {k}");
        let per_band = (BAND_LEVELS * BAND_SCALEFACS) as u32;
        let start = field_range("mp3.band(level,scalefac)").unwrap().start;
        for (b, &id) in bands.iter().enumerate() {
            // All bands share one run of BAND_LEVELS × BAND_SCALEFACS ids.
            let within = u32::from(id) - start;
            assert!(within < per_band, "frame {k} band {b}");
            let level = within / BAND_SCALEFACS as u32;
            let l = &decoded[0][0];
            let q = &l.lines[usize::from(edges[b])..usize::from(edges[b + 1])];
            // Level 0 exactly where the band's lines are all zero.
            assert_eq!(level == 0, q.iter().all(|&v| v == 0), "frame {k} band {b}");
            let sf = u32::from(l.scalefac[b].min(7));
            assert_eq!(within % BAND_SCALEFACS as u32, sf, "frame {k} band {b}");
        }
    }
    assert!(
        long_frames > 10 && short_frames > 0,
        "{long_frames} {short_frames}"
    );

    // Opus packets have no lines: their fields only.
    let path = fixture("opus/speech_mono_24k_20ms.opus");
    let opus = |tokens| {
        let config = TokenizerConfig::for_format(Format::OggOpus)
            .with_tokens(tokens)
            .with_max_block_bytes(400);
        tokenize_file(&path, &config, ctx).unwrap()
    };
    let (f, l) = (opus(BlockTokens::Fields), opus(BlockTokens::FieldsAndLines));
    assert_eq!(f.num_blocks(), l.num_blocks());
    assert!((0..f.num_blocks()).all(|k| f.block(k) == l.block(k)));
}

#[test]
fn band_mask_silences_one_run_of_bands_per_item_and_nothing_else() {
    use tempest_tokenize::fields::{field_name, field_range, LONG_BANDS};
    use tempest_tokenize::BlockTokens;

    let (path, data) = mono_16k_mp3();
    let config = mp3_config(BlockTokens::FieldsAndLines);
    let silent = field_range("mp3.band(level,scalefac)").unwrap().start as u16;
    let plain = tokenize(&data, &path, &config, CropContext::default()).unwrap();
    let mut widths = std::collections::BTreeSet::new();
    for item in 0..24u64 {
        let ctx = CropContext {
            item,
            ..CropContext::default()
        };
        let masked = tokenize(&data, &path, &config.clone().with_band_mask(6), ctx).unwrap();
        assert_eq!(masked.num_blocks(), plain.num_blocks());
        // The bands that differ from the plain ids, or are silent where the plain one is not.
        let mut run: Option<Vec<usize>> = None;
        for k in 0..plain.num_blocks() {
            let (p, m) = (plain.block(k), masked.block(k));
            assert_eq!(p.len(), m.len());
            assert_eq!(p[..17], m[..17], "fields untouched, block {k}");
            if p.len() != 17 + LONG_BANDS {
                continue; // short blocks and the first frame
            }
            let changed: Vec<usize> = (0..LONG_BANDS)
                .filter(|&b| p[17 + b] != m[17 + b])
                .collect();
            for &b in &changed {
                assert_eq!(m[17 + b], silent, "block {k} band {b}");
                assert_eq!(
                    field_name(m[17 + b].into()),
                    Some("mp3.band(level,scalefac)")
                );
            }
            // Every masked band reads silent; the run is one contiguous range of at most 6.
            let silent_now: Vec<usize> = (0..LONG_BANDS).filter(|&b| m[17 + b] == silent).collect();
            assert!(changed.iter().all(|b| silent_now.contains(b)));
            if let (Some(first), Some(last)) = (changed.first(), changed.last()) {
                assert!(last - first < 6, "block {k}: {changed:?}");
            }
            run.get_or_insert_with(Vec::new).extend(changed);
        }
        let mut all = run.unwrap_or_default();
        all.sort_unstable();
        all.dedup();
        if let (Some(first), Some(last)) = (all.first(), all.last()) {
            // The same range in every frame of the item: the union is still at most 6 wide.
            assert!(last - first < 6, "item {item}: {all:?}");
            widths.insert(last - first + 1);
        }
        // The same context draws the same mask.
        let again = tokenize(&data, &path, &config.clone().with_band_mask(6), ctx).unwrap();
        assert!((0..masked.num_blocks()).all(|k| again.block(k) == masked.block(k)));
    }
    // Items draw different ranges: more than one width seen over 24 items.
    assert!(widths.len() > 1, "{widths:?}");
}

/// `with_time_mask(K)`: one contiguous run of at most K frames per item has every band id
/// silent, the side-information fields and every other frame stay as they were; the run is
/// drawn from the context (the same context, the same run), items differ, and evaluation
/// reads no mask.
#[test]
fn time_mask_silences_every_band_of_one_run_of_frames() {
    use tempest_tokenize::fields::{field_range, LONG_BANDS};
    use tempest_tokenize::BlockTokens;

    let (path, data) = mono_16k_mp3();
    let config = mp3_config(BlockTokens::FieldsAndLines);
    let silent = field_range("mp3.band(level,scalefac)").unwrap().start as u16;
    let plain = tokenize(&data, &path, &config, CropContext::default()).unwrap();
    // Short-block frames have band ids of their own field.
    let short_silent = field_range("mp3.short_band(level,scalefac)").unwrap().start as u16;
    let masked_config = config.clone().with_time_mask(5);
    let mut starts = std::collections::BTreeSet::new();
    for item in 0..24u64 {
        let ctx = CropContext {
            item,
            ..CropContext::default()
        };
        let masked = tokenize(&data, &path, &masked_config, ctx).unwrap();
        assert_eq!(masked.num_blocks(), plain.num_blocks());
        let mut changed = Vec::new();
        for k in 0..plain.num_blocks() {
            let (p, m) = (plain.block(k), masked.block(k));
            assert_eq!(p.len(), m.len());
            assert_eq!(p[..17], m[..17], "fields untouched, block {k}");
            if p != m {
                // A masked frame: all of its band ids silent.
                let loud: Vec<(usize, u16)> = m
                    .iter()
                    .copied()
                    .enumerate()
                    .skip(17)
                    .filter(|&(_, x)| x != silent && x != short_silent)
                    .collect();
                assert!(loud.is_empty(), "block {k}: {loud:?} of {}", m.len());
                changed.push(k);
            }
        }
        if let (Some(&first), Some(&last)) = (changed.first(), changed.last()) {
            assert!(last - first < 5, "item {item}: {changed:?}");
            starts.insert(first);
        }
        let again = tokenize(&data, &path, &masked_config, ctx).unwrap();
        assert!((0..masked.num_blocks()).all(|k| again.block(k) == masked.block(k)));
    }
    // Items draw different runs.
    assert!(starts.len() > 2, "{starts:?}");
    assert!(plain.num_blocks() > 10 && LONG_BANDS == 22);
    // Evaluation never masks.
    let eval = masked_config.eval_config().unwrap();
    assert_eq!(eval.time_mask, 0);
}

/// `with_band_shift(K)`: each item's long-block band ids are its plain ids moved by one shift
/// in −K..=K (the same in every frame), the positions left empty read silent, the fields stay;
/// the shift is drawn from the context (the same context, the same shift) and items differ.
#[test]
fn band_shift_moves_every_band_of_an_item_by_one_drawn_shift() {
    use tempest_tokenize::fields::{field_range, LONG_BANDS};
    use tempest_tokenize::BlockTokens;

    let (path, data) = mono_16k_mp3();
    let config = mp3_config(BlockTokens::FieldsAndLines);
    let silent = field_range("mp3.band(level,scalefac)").unwrap().start as u16;
    let plain = tokenize(&data, &path, &config, CropContext::default()).unwrap();
    let mut shifts = std::collections::BTreeSet::new();
    for item in 0..24u64 {
        let ctx = CropContext {
            item,
            ..CropContext::default()
        };
        let shifted = tokenize(&data, &path, &config.clone().with_band_shift(2), ctx).unwrap();
        assert_eq!(shifted.num_blocks(), plain.num_blocks());
        // The shifts under which every long-block frame of the item matches the plain ids.
        let mut fits: Vec<i32> = (-2..=2).collect();
        let mut frames = 0;
        for k in 0..plain.num_blocks() {
            let (p, s) = (plain.block(k), shifted.block(k));
            assert_eq!(p.len(), s.len());
            assert_eq!(p[..17], s[..17], "fields untouched, block {k}");
            if p.len() != 17 + LONG_BANDS {
                continue;
            }
            frames += 1;
            fits.retain(|&d| {
                (0..LONG_BANDS).all(|pos| {
                    let b = pos as i32 - d;
                    let want = if (0..LONG_BANDS as i32).contains(&b) {
                        p[17 + b as usize]
                    } else {
                        silent
                    };
                    s[17 + pos] == want
                })
            });
        }
        assert!(frames > 10, "{frames} long-block frames");
        // Loud frames tell the shifts apart: exactly one shift explains the whole item.
        assert_eq!(fits.len(), 1, "item {item}: shifts that fit {fits:?}");
        shifts.insert(fits[0]);
        let again = tokenize(&data, &path, &config.clone().with_band_shift(2), ctx).unwrap();
        assert!((0..shifted.num_blocks()).all(|k| again.block(k) == shifted.block(k)));
    }
    assert!(shifts.len() >= 3, "items draw different shifts: {shifts:?}");
}

/// The mean power per line that an energy id stands for (the middle of its level), or `None`
/// for a silent band.
fn energy_of(level: u32) -> Option<f64> {
    use tempest_tokenize::fields::{ENERGY_FLOOR_DB, ENERGY_STEP_DB};
    (level > 0).then(|| {
        let db = ENERGY_FLOOR_DB + (f64::from(level) - 0.5) * ENERGY_STEP_DB;
        10f64.powf(db / 10.0)
    })
}

#[test]
fn half_bands_split_each_band_energy_in_two_that_add_up_to_it() {
    // `fields+half-bands` gives each band two ids, the energies of its lower and upper half.
    // Their powers, weighted by the halves' widths, must add up to the band's energy as
    // `fields+energy` reads it (each id is rounded down to a 1.5 dB step, so within ±1.5 dB),
    // and the fields before them must not change.
    use cff_blocks::mp3::{long_band_edges, short_band_edges};
    use tempest_tokenize::fields::{field_name, field_range, LONG_BANDS, SHORT_BANDS};
    use tempest_tokenize::{BlockTokens, ENERGY_VOCAB_SIZE};

    assert_eq!(
        BlockTokens::parse("fields+half-bands"),
        Some(BlockTokens::FieldsAndHalfBands)
    );
    assert_eq!(
        BlockTokens::FieldsAndHalfBands.vocab_size(),
        ENERGY_VOCAB_SIZE
    );
    let (long_edges, short_edges) = (
        long_band_edges(16_000).unwrap(),
        short_band_edges(16_000).unwrap(),
    );
    let mut checked = 0;
    for rel in ["mp3/cbr32_16k_mono.mp3", "mp3/abr20_16k_mono.mp3"] {
        let path = fixture(rel);
        let data = std::fs::read(&path).unwrap();
        let read =
            |tokens| tokenize(&data, &path, &mp3_config(tokens), CropContext::default()).unwrap();
        let (whole, halves) = (
            read(BlockTokens::FieldsAndEnergy),
            read(BlockTokens::FieldsAndHalfBands),
        );
        assert_eq!(whole.num_blocks(), halves.num_blocks());
        for k in 0..whole.num_blocks() {
            let (w, h) = (whole.block(k), halves.block(k));
            assert_eq!(&w[..17], &h[..17], "{rel} frame {k}: the fields");
            let (w, h) = (&w[17..], &h[17..]);
            assert_eq!(h.len(), 2 * w.len(), "{rel} frame {k}: two ids per band");
            let short = w.len() == 3 * SHORT_BANDS;
            assert!(short || w.is_empty() || w.len() == LONG_BANDS);
            let (name, start) = if short {
                (
                    "mp3.short_band_energy",
                    field_range("mp3.short_band_energy").unwrap().start,
                )
            } else {
                (
                    "mp3.band_energy",
                    field_range("mp3.band_energy").unwrap().start,
                )
            };
            for (j, &id) in w.iter().enumerate() {
                let width = if short {
                    let b = j / 3;
                    usize::from(short_edges[b + 1] - short_edges[b])
                } else {
                    usize::from(long_edges[j + 1] - long_edges[j])
                };
                let (lower, upper) = (h[2 * j], h[2 * j + 1]);
                for half in [lower, upper] {
                    assert_eq!(field_name(half.into()), Some(name), "{rel} frame {k}");
                }
                let level = |id: u16| u32::from(id) - start;
                let band = energy_of(level(id));
                let (lo_w, hi_w) = ((width / 2) as f64, (width - width / 2) as f64);
                let sum = energy_of(level(lower)).unwrap_or(0.0) * lo_w
                    + energy_of(level(upper)).unwrap_or(0.0) * hi_w;
                match band {
                    None => assert_eq!((level(lower), level(upper)), (0, 0), "{rel} frame {k}"),
                    Some(e) if level(id) > 1 && level(id) < 61 => {
                        let db = 10.0 * (sum / (e * width as f64)).log10();
                        assert!(db.abs() <= 1.5 + 1e-9, "{rel} frame {k} band {j}: {db} dB");
                        checked += 1;
                    }
                    Some(_) => {}
                }
            }
        }
    }
    assert!(checked > 1000, "only {checked} bands compared");
}

#[test]
fn merged_short_windows_keep_a_short_frame_s_energy_in_the_long_layout() {
    // With `merge_short_windows` a short-block frame gives the 22 long bands' energies. Its
    // total power (Σ mean power × width over the long bands) must match the total of its
    // 13 × 3 short-band energies read the usual way (within the 1.5 dB rounding and the
    // long bands' widths against three lines per short line), and long-block frames must
    // read exactly as before.
    use cff_blocks::mp3::{long_band_edges, short_band_edges};
    use tempest_tokenize::fields::{field_name, field_range, LONG_BANDS, SHORT_BANDS};
    use tempest_tokenize::BlockTokens;

    let (long_edges, short_edges) = (
        long_band_edges(16_000).unwrap(),
        short_band_edges(16_000).unwrap(),
    );
    let long_start = field_range("mp3.band_energy").unwrap().start;
    let short_start = field_range("mp3.short_band_energy").unwrap().start;
    let power = |id: u16, start: u32| energy_of(u32::from(id) - start).unwrap_or(0.0);
    let mut short_frames = 0;
    for rel in ["mp3/cbr32_16k_mono.mp3", "mp3/abr20_16k_mono.mp3"] {
        let path = fixture(rel);
        let data = std::fs::read(&path).unwrap();
        let config = mp3_config(BlockTokens::FieldsAndEnergy);
        let plain = tokenize(&data, &path, &config, CropContext::default()).unwrap();
        let merged_config = config.clone().with_merge_short_windows(true);
        let merged = tokenize(&data, &path, &merged_config, CropContext::default()).unwrap();
        // It is saved with a checkpoint's tokenizer and kept for evaluation.
        assert!(merged_config.eval_config().unwrap().merge_short_windows);
        for k in 0..plain.num_blocks() {
            let (p, m) = (&plain.block(k)[17..], &merged.block(k)[17..]);
            if p.len() != 3 * SHORT_BANDS {
                assert_eq!(p, m, "{rel} frame {k}: long blocks unchanged");
                continue;
            }
            short_frames += 1;
            assert_eq!(m.len(), LONG_BANDS, "{rel} frame {k}");
            assert!(m
                .iter()
                .all(|&id| field_name(id.into()) == Some("mp3.band_energy")));
            let ours: f64 = m
                .iter()
                .enumerate()
                .map(|(b, &id)| {
                    power(id, long_start) * f64::from(long_edges[b + 1] - long_edges[b])
                })
                .sum();
            let theirs: f64 = p
                .iter()
                .enumerate()
                .map(|(j, &id)| {
                    let b = j / 3;
                    power(id, short_start) * f64::from(short_edges[b + 1] - short_edges[b])
                })
                .sum();
            if theirs > 0.0 {
                let db = 10.0 * (ours / theirs).log10();
                assert!(db.abs() < 2.0, "{rel} frame {k}: {db} dB");
            } else {
                assert_eq!(ours, 0.0, "{rel} frame {k}");
            }
        }
    }
    assert!(short_frames > 0, "no short-block frame in the fixtures");
    // Only energies can be merged.
    let lines = mp3_config(BlockTokens::FieldsAndLines).with_merge_short_windows(true);
    assert!(lines
        .validate()
        .unwrap_err()
        .to_string()
        .contains("merge_short_windows"));
}

#[test]
fn band_energies_follow_the_loudness_an_independent_decoder_hears() {
    // minimp3 (an independent decoder) turns each fixture into samples; the energy ids of a
    // frame, summed over its bands (an MDCT with the polyphase filterbank keeps the energy
    // up to a constant), must rise and fall with the samples' energy over the same stretch.
    use cff_blocks::mp3::long_band_edges;
    use tempest_tokenize::fields::{field_name, field_range, ENERGY_LEVELS, LONG_BANDS};
    use tempest_tokenize::{BlockTokens, ENERGY_VOCAB_SIZE};

    assert_eq!(BlockTokens::FieldsAndEnergy.vocab_size(), ENERGY_VOCAB_SIZE);
    assert_eq!(
        BlockTokens::parse("fields+energy"),
        Some(BlockTokens::FieldsAndEnergy)
    );
    for rel in ["mp3/cbr32_16k_mono.mp3", "mp3/abr20_16k_mono.mp3"] {
        let path = fixture(rel);
        let data = std::fs::read(&path).unwrap();
        let config = mp3_config(BlockTokens::FieldsAndEnergy);
        let item = tokenize(&data, &path, &config, CropContext::default()).unwrap();
        let lines = tokenize(
            &data,
            &path,
            &mp3_config(BlockTokens::FieldsAndLines),
            CropContext::default(),
        )
        .unwrap();
        let edges = long_band_edges(16_000).unwrap();
        let long = field_range("mp3.band_energy").unwrap();
        // Per frame: Σ over bands of width × mean power, from the ids.
        let mut ours = Vec::new();
        for k in 0..item.num_blocks() {
            let ids = item.block(k);
            assert_eq!(
                ids.len(),
                lines.block(k).len(),
                "{rel} frame {k}: one id per band"
            );
            assert_eq!(
                &ids[..17],
                &lines.block(k)[..17],
                "{rel} frame {k}: fields first"
            );
            assert!(ids.iter().all(|&id| usize::from(id) < ENERGY_VOCAB_SIZE));
            let bands = &ids[17..];
            if bands.len() != LONG_BANDS {
                assert!(
                    bands.is_empty()
                        || bands
                            .iter()
                            .all(|&id| field_name(id.into()) == Some("mp3.short_band_energy"))
                );
                ours.push(None);
                continue;
            }
            let mut total = 0.0;
            for (b, &id) in bands.iter().enumerate() {
                assert_eq!(field_name(id.into()), Some("mp3.band_energy"));
                let width = f64::from(edges[b + 1] - edges[b]);
                total += energy_of(u32::from(id) - long.start).unwrap_or(0.0) * width;
            }
            ours.push(Some(total));
        }
        // minimp3's samples, 576 per frame at 16 kHz (MPEG-2: one granule).
        let mut decoder = minimp3::Decoder::new(std::io::Cursor::new(data.clone()));
        let mut pcm = Vec::new();
        loop {
            match decoder.next_frame() {
                Ok(f) => pcm.extend(f.data.iter().map(|&s| f64::from(s) / 32768.0)),
                Err(minimp3::Error::Eof) => break,
                Err(e) => panic!("{rel}: {e:?}"),
            }
        }
        let theirs: Vec<f64> = pcm
            .chunks(576)
            .map(|c| c.iter().map(|x| x * x).sum())
            .collect();
        // minimp3 starts its output a frame or two later than the bitstream (its decoder
        // delay): the best of lags 0–2 must follow ours closely.
        let best = (0..3usize)
            .map(|lag| {
                let pairs: Vec<(f64, f64)> = ours
                    .iter()
                    .zip(theirs.iter().skip(lag))
                    .filter_map(|(o, t)| Some(((*o)?.max(1e-12).log10(), t.max(1e-12).log10())))
                    .collect();
                correlation(&pairs)
            })
            .fold(f64::MIN, f64::max);
        assert!(
            best > 0.95,
            "{rel}: log energies correlate at {best:.3} only"
        );
        // The levels cover the file: no band is clipped at the top level, and few non-silent
        // bands sit on the floor.
        let levels: Vec<u32> = (0..item.num_blocks())
            .flat_map(|k| item.block(k)[17..].to_vec())
            .filter(|&id| field_name(id.into()) == Some("mp3.band_energy"))
            .map(|id| u32::from(id) - long.start)
            .collect();
        let (floor, top) = (
            levels.iter().filter(|&&l| l == 1).count(),
            levels
                .iter()
                .filter(|&&l| l == ENERGY_LEVELS as u32 - 1)
                .count(),
        );
        let sounding = levels.iter().filter(|&&l| l > 0).count();
        assert_eq!(top, 0, "{rel}");
        assert!(
            floor * 10 < sounding,
            "{rel}: {floor} of {sounding} bands on the floor"
        );
    }
}

/// Pearson's correlation of the pairs.
fn correlation(pairs: &[(f64, f64)]) -> f64 {
    let n = pairs.len() as f64;
    let mx = pairs.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pairs.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = pairs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let vx: f64 = pairs.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let vy: f64 = pairs.iter().map(|p| (p.1 - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

#[test]
fn a_gain_offset_moves_every_band_energy_by_one_level_per_step() {
    // One global_gain step is 1.5 dB, one energy level too: an offset of 4 steps moves every
    // sounding band 4 levels up (5 where 6.02 dB crosses one more level edge), silent bands
    // stay silent, and the level-and-scalefactor ids do not move.
    use cff_blocks::mp3::{decode_granules, MainData, SideInfo};
    use tempest_tokenize::fields::{
        field_name, field_range, mp3_line_ids, BandValue, ENERGY_LEVELS,
    };

    let (_, data) = mono_16k_mp3();
    let mut reservoir = MainData::new();
    let mut moved = 0;
    for frame in audio_frames(&data) {
        let side = SideInfo::parse(&frame.data, frame.offset).unwrap();
        let Some(own) = reservoir.push(&frame.data, &side, frame.offset).unwrap() else {
            continue;
        };
        let lines = decode_granules(&side, own, frame.offset).unwrap();
        let ids = |value, offset| {
            let mut out = Vec::new();
            mp3_line_ids(&side, &lines, 0..0, 0, value, offset, false, &mut out);
            out
        };
        let (plain, louder) = (ids(BandValue::Energy, 0), ids(BandValue::Energy, 4));
        assert_eq!(plain.len(), louder.len());
        for (&a, &b) in plain.iter().zip(&louder) {
            let name = field_name(a.into()).unwrap();
            assert_eq!(field_name(b.into()), Some(name));
            let start = field_range(name).unwrap().start as u16;
            let (a, b) = (a - start, b - start);
            assert!(b < ENERGY_LEVELS as u16);
            if a == 0 {
                assert_eq!(b, 0, "silent bands stay silent");
            } else if a == 1 {
                // On the floor: quieter than it says, so it rises by 5 levels at most.
                assert!(b <= 6, "{a} → {b}");
            } else {
                assert!(b - a == 4 || b - a == 5, "{a} → {b}");
                moved += 1;
            }
        }
        let lines_ids = (
            ids(BandValue::LevelScalefac, 0),
            ids(BandValue::LevelScalefac, 4),
        );
        assert_eq!(lines_ids.0, lines_ids.1);
    }
    assert!(moved > 100, "only {moved} bands moved");
}

#[test]
fn energy_tokens_are_the_band_energies_without_the_fields() {
    use tempest_tokenize::fields::{field_name, LONG_BANDS};
    use tempest_tokenize::{BlockTokens, ENERGY_VOCAB_SIZE};

    assert_eq!(BlockTokens::parse("energy"), Some(BlockTokens::Energy));
    assert_eq!(BlockTokens::Energy.vocab_size(), ENERGY_VOCAB_SIZE);
    for rel in [
        "mp3/cbr32_16k_mono.mp3",
        "mp3/abr20_16k_mono.mp3",
        "mp3/vbr_32k_stereo.mp3",
    ] {
        let path = fixture(rel);
        let data = std::fs::read(&path).unwrap();
        let ctx = CropContext::default();
        let both = tokenize(&data, &path, &mp3_config(BlockTokens::FieldsAndEnergy), ctx).unwrap();
        let alone = tokenize(&data, &path, &mp3_config(BlockTokens::Energy), ctx).unwrap();
        assert_eq!(alone.num_blocks(), both.num_blocks(), "{rel}");
        let mut with_data = 0;
        for k in 0..alone.num_blocks() {
            let ids = alone.block(k);
            assert!(
                !ids.is_empty(),
                "{rel} frame {k}: never an empty block ({:?})",
                both.block(k)
            );
            assert!(ids.iter().all(|&id| field_name(id.into())
                .is_some_and(|n| n == "mp3.band_energy" || n == "mp3.short_band_energy")));
            let full = both.block(k);
            if full.len() > ids.len() {
                // The same band ids, after the fields.
                assert_eq!(&full[full.len() - ids.len()..], ids, "{rel} frame {k}");
                with_data += 1;
            } else {
                // No main data in the file for this frame: silence, one id per long band.
                assert_eq!(ids.len(), LONG_BANDS, "{rel} frame {k}");
            }
        }
        assert!(with_data * 10 > alone.num_blocks() * 9, "{rel}");
    }
}

#[test]
fn masks_applied_to_a_tokenized_item_are_the_tokenizers() {
    // compare tokenizes once and masks each time it trains (TokenizedItem::with_band_masks):
    // the same seed, epoch and item must shift and silence the same bands and frames as the
    // tokenizer does while reading (long blocks; short ones are mapped by position,
    // documented).
    use tempest_tokenize::fields::field_name;
    use tempest_tokenize::BlockTokens;

    let (path, data) = mono_16k_mp3();
    for tokens in [
        BlockTokens::FieldsAndLines,
        BlockTokens::FieldsAndEnergy,
        BlockTokens::FieldsAndHalfBands,
        BlockTokens::FieldsAndPackedHalves,
    ] {
        let plain_config = mp3_config(tokens);
        let plain = tokenize(&data, &path, &plain_config, CropContext::default()).unwrap();
        for masked_config in [
            plain_config.clone().with_band_mask(5).with_time_mask(5),
            plain_config.clone().with_band_shift(2),
            plain_config
                .clone()
                .with_band_mask(5)
                .with_time_mask(5)
                .with_band_shift(3),
        ] {
            let (mut differ, mut compared) = (0, 0);
            for item in 0..20 {
                let ctx = CropContext {
                    seed: 7,
                    epoch: 3,
                    item,
                };
                let read = tokenize(&data, &path, &masked_config, ctx).unwrap();
                let after = plain.with_band_masks(&masked_config, ctx);
                assert_eq!(read.num_blocks(), after.num_blocks());
                for k in 0..read.num_blocks() {
                    let short = read
                        .block(k)
                        .iter()
                        .any(|&id| field_name(id.into()).is_some_and(|n| n.contains("short")));
                    if short {
                        continue;
                    }
                    compared += 1;
                    assert_eq!(
                        read.block(k),
                        after.block(k),
                        "{tokens:?} item {item} frame {k}"
                    );
                    differ += usize::from(read.block(k) != plain.block(k));
                }
            }
            assert!(compared > 1000, "{compared}");
            assert!(differ > 100, "the masks changed only {differ} frames");
        }
        // Without band ids, or without masks, nothing changes.
        let fields = tokenize(
            &data,
            &path,
            &mp3_config(BlockTokens::Fields),
            CropContext::default(),
        )
        .unwrap();
        let masked_fields = mp3_config(BlockTokens::Fields)
            .with_band_mask(5)
            .with_time_mask(5);
        assert_eq!(
            fields.with_band_masks(&masked_fields, CropContext::default()),
            fields
        );
        assert_eq!(
            plain.with_band_masks(&plain_config, CropContext::default()),
            plain
        );
    }
}

#[test]
fn energy_peaks_keep_the_band_energy_and_add_where_the_strongest_line_lies() {
    // `fields+energy-peaks` gives as many ids as `fields+energy`, the same fields, and each
    // band id holds the band's energy level (id ÷ 8 in its field) with a peak class (id mod
    // 8); silent bands stay silent, sounding ones spread over the classes. The same holds with
    // short windows merged, and masked bands read as the field's first id.
    use tempest_tokenize::fields::{field_name, field_range, PEAK_CLASSES};
    use tempest_tokenize::{BlockTokens, PEAK_VOCAB_SIZE};

    assert_eq!(
        BlockTokens::parse("fields+energy-peaks"),
        Some(BlockTokens::FieldsAndEnergyPeaks)
    );
    assert_eq!(
        BlockTokens::FieldsAndEnergyPeaks.vocab_size(),
        PEAK_VOCAB_SIZE
    );
    let pairs = [
        ("mp3.band_energy", "mp3.band_energy_peak"),
        ("mp3.short_band_energy", "mp3.short_band_energy_peak"),
    ];
    let mut classes = [0usize; PEAK_CLASSES];
    let mut short_bands = 0;
    for merge in [false, true] {
        for rel in ["mp3/cbr32_16k_mono.mp3", "mp3/abr20_16k_mono.mp3"] {
            let path = fixture(rel);
            let data = std::fs::read(&path).unwrap();
            let read = |tokens| {
                let mut config = mp3_config(tokens);
                config.merge_short_windows = merge;
                tokenize(&data, &path, &config, CropContext::default()).unwrap()
            };
            let (energy, peaks) = (
                read(BlockTokens::FieldsAndEnergy),
                read(BlockTokens::FieldsAndEnergyPeaks),
            );
            assert_eq!(energy.num_blocks(), peaks.num_blocks());
            for k in 0..energy.num_blocks() {
                let (e, p) = (energy.block(k), peaks.block(k));
                assert_eq!(e.len(), p.len(), "{rel} frame {k}: one id per band");
                assert_eq!(&e[..17], &p[..17], "{rel} frame {k}: the fields");
                for (&ei, &pi) in e[17..].iter().zip(&p[17..]) {
                    let name = field_name(ei.into()).unwrap();
                    let (_, peak_name) = *pairs.iter().find(|(n, _)| *n == name).unwrap();
                    assert_eq!(field_name(pi.into()), Some(peak_name), "{rel} frame {k}");
                    let level = u32::from(ei) - field_range(name).unwrap().start;
                    let v = u32::from(pi) - field_range(peak_name).unwrap().start;
                    assert_eq!(v / PEAK_CLASSES as u32, level, "{rel} frame {k}: the level");
                    if level == 0 {
                        assert_eq!(v, 0, "{rel} frame {k}: a silent band has no peak");
                    } else {
                        classes[(v % PEAK_CLASSES as u32) as usize] += 1;
                    }
                    short_bands += usize::from(peak_name.contains("short"));
                }
            }
        }
    }
    assert!(short_bands > 0, "the fixtures have short blocks");
    // Every quarter, standing out or not, occurs on real music.
    assert!(classes.iter().all(|&c| c > 0), "{classes:?}");
    // A band mask silences a run of bands as it does for the energies.
    let silent = field_range("mp3.band_energy_peak").unwrap().start as u16;
    let long_blocks = band_masked_long_blocks(BlockTokens::FieldsAndEnergyPeaks);
    assert!(!long_blocks.is_empty());
    assert!(long_blocks.iter().all(|b| b[17..].contains(&silent)));
}

/// The long-block frames (17 field ids + 22 band ids) of the CBR fixture read as `tokens`
/// with a band mask of 5.
fn band_masked_long_blocks(tokens: tempest_tokenize::BlockTokens) -> Vec<Vec<u16>> {
    let path = fixture("mp3/cbr32_16k_mono.mp3");
    let data = std::fs::read(&path).expect("the CBR fixture");
    let config = mp3_config(tokens).with_band_mask(5);
    let masked = tokenize(&data, &path, &config, CropContext::default()).expect("tokenized");
    (0..masked.num_blocks())
        .map(|k| masked.block(k))
        .filter(|b| b.len() == 17 + 22)
        .map(<[u16]>::to_vec)
        .collect()
}

#[test]
fn packed_halves_hold_both_half_band_energies_in_one_id() {
    // `fields+packed-halves` gives as many ids as `fields+energy` and the same fields; each
    // band id, read as `lower · 64 + upper` in its field, holds the two ids that
    // `fields+half-bands` gives for that band, in the same order, with short windows merged or
    // not. A band mask silences a run of bands as the field's first id (both halves level 0).
    use tempest_tokenize::fields::{field_name, field_range, halves_factors, ENERGY_LEVELS};
    use tempest_tokenize::{BlockTokens, HALVES_VOCAB_SIZE, PEAK_VOCAB_SIZE};

    assert_eq!(
        BlockTokens::parse("fields+packed-halves"),
        Some(BlockTokens::FieldsAndPackedHalves)
    );
    assert_eq!(
        BlockTokens::FieldsAndPackedHalves.vocab_size(),
        HALVES_VOCAB_SIZE
    );
    assert_eq!(
        HALVES_VOCAB_SIZE - PEAK_VOCAB_SIZE,
        2 * ENERGY_LEVELS * ENERGY_LEVELS
    );
    // The factors cover the two fields and point at the energies' rows.
    let factors = BlockTokens::FieldsAndPackedHalves.id_factors();
    assert_eq!(factors, halves_factors().to_vec());
    for ((start, values, classes, value_start), (packed, plain)) in factors.iter().zip([
        ("mp3.band_energy_halves", "mp3.band_energy"),
        ("mp3.short_band_energy_halves", "mp3.short_band_energy"),
    ]) {
        let r = field_range(packed).unwrap();
        assert_eq!((*start, start + values * classes), (r.start, r.end));
        assert_eq!(*value_start, field_range(plain).unwrap().start);
    }
    let pairs = [
        ("mp3.band_energy", "mp3.band_energy_halves"),
        ("mp3.short_band_energy", "mp3.short_band_energy_halves"),
    ];
    let (mut bands, mut uneven, mut short_bands) = (0usize, 0usize, 0usize);
    for merge in [false, true] {
        for rel in ["mp3/cbr32_16k_mono.mp3", "mp3/abr20_16k_mono.mp3"] {
            let path = fixture(rel);
            let data = std::fs::read(&path).unwrap();
            let read = |tokens| {
                let mut config = mp3_config(tokens);
                config.merge_short_windows = merge;
                tokenize(&data, &path, &config, CropContext::default()).unwrap()
            };
            let (energy, halves, packed) = (
                read(BlockTokens::FieldsAndEnergy),
                read(BlockTokens::FieldsAndHalfBands),
                read(BlockTokens::FieldsAndPackedHalves),
            );
            assert_eq!(energy.num_blocks(), packed.num_blocks());
            for k in 0..packed.num_blocks() {
                let (e, h, p) = (energy.block(k), halves.block(k), packed.block(k));
                assert_eq!(e.len(), p.len(), "{rel} frame {k}: one id per band");
                assert_eq!(&h[..17], &p[..17], "{rel} frame {k}: the fields");
                assert_eq!(h.len() - 17, 2 * (p.len() - 17), "{rel} frame {k}");
                for (j, &pi) in p[17..].iter().enumerate() {
                    let name = field_name(pi.into()).unwrap();
                    let (plain, _) = *pairs.iter().find(|(_, n)| *n == name).unwrap();
                    let base = field_range(plain).unwrap().start;
                    let (lo, hi) = (
                        u32::from(h[17 + 2 * j]) - base,
                        u32::from(h[17 + 2 * j + 1]) - base,
                    );
                    let v = u32::from(pi) - field_range(name).unwrap().start;
                    assert_eq!(
                        (v / ENERGY_LEVELS as u32, v % ENERGY_LEVELS as u32),
                        (lo, hi),
                        "{rel} frame {k} band {j}"
                    );
                    bands += 1;
                    uneven += usize::from(lo != hi);
                    short_bands += usize::from(name.contains("short"));
                }
            }
        }
    }
    assert!(short_bands > 0, "the fixtures have short blocks");
    // The halves often differ: the packed id says more than the band's mean.
    assert!(uneven * 4 > bands, "{uneven} of {bands}");
    let silent = field_range("mp3.band_energy_halves").unwrap().start as u16;
    let long_blocks = band_masked_long_blocks(BlockTokens::FieldsAndPackedHalves);
    assert!(!long_blocks.is_empty());
    assert!(long_blocks
        .iter()
        .all(|b| b[17..].iter().filter(|&&id| id == silent).count() >= 5));
}

#[test]
fn a_format_s_own_block_cap_cuts_its_blocks_and_no_other_format_s() {
    // One configuration for a run over MP3 and JPEG files: JPEG MCUs cut to 8 bytes, MP3
    // frames kept whole, as each format's recipe reads them.
    let fields = tempest_tokenize::BlockTokens::FieldsAndEnergy;
    let whole = TokenizerConfig::for_format(Format::Mp3).with_tokens(fields);
    let capped = whole.clone().with_format_block_bytes(Format::Jpeg, 8);
    capped.validate().unwrap();
    assert_eq!(
        (
            capped.block_bytes_for(Format::Jpeg),
            capped.block_bytes_for(Format::Mp3)
        ),
        (8, whole.max_block_bytes)
    );
    let jpeg = fixture("jpeg/c420_q75.jpg");
    let (a, b) = (
        tokenize_file(&jpeg, &whole, CropContext::default()).unwrap(),
        tokenize_file(&jpeg, &capped, CropContext::default()).unwrap(),
    );
    assert_eq!(a.num_blocks(), b.num_blocks());
    assert!(
        (0..a.num_blocks()).any(|k| a.block(k).len() > 8),
        "some MCU is longer"
    );
    for k in 0..a.num_blocks() {
        let n = a.block(k).len().min(8);
        assert_eq!(b.block(k), &a.block(k)[..n], "MCU {k}: its first 8 bytes");
        // The length embedding still sees the MCU's whole length.
        assert_eq!(b.source_len(k), a.source_len(k));
    }
    assert!(b.truncated_blocks > 0 && a.truncated_blocks == 0);
    let mp3 = fixture("mp3/cbr32_16k_mono.mp3");
    assert_eq!(
        tokenize_file(&mp3, &whole, CropContext::default()).unwrap(),
        tokenize_file(&mp3, &capped, CropContext::default()).unwrap()
    );
    // Saved and read back; a cap of 0 or an unknown format is refused.
    let json = serde_json::to_string(&capped).unwrap();
    assert!(
        json.contains("\"format_block_bytes\":{\"jpeg\":8}"),
        "{json}"
    );
    let back: TokenizerConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back.block_bytes_for(Format::Jpeg), 8);
    assert!(!serde_json::to_string(&whole)
        .unwrap()
        .contains("format_block_bytes"));
    assert!(whole
        .clone()
        .with_format_block_bytes(Format::Jpeg, 0)
        .validate()
        .is_err());
    let mut odd = whole;
    odd.format_block_bytes.insert("png".into(), 8);
    assert!(odd.validate().is_err());
}
