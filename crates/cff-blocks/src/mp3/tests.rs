//! Tests of the MP3 reader on frames built by hand.

#![allow(clippy::unwrap_used)]

use std::borrow::Cow;

use super::stream::{agrees, Stream};
use super::tags::{APE_HAS_HEADER, APE_IS_HEADER};
use super::*;
use crate::{Block, BlockKind, Detail, Error, Limits, Options, Place, Region, RegionKind};

/// MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, joint stereo, no CRC: 417 bytes.
const MPEG1_128K: u32 = 0xFFFB_9064;
/// MPEG-2 Layer III, 32 kbit/s, 16 kHz, mono: 144 bytes.
const MPEG2_32K: u32 = 0xFFF3_48C4;
/// MPEG-2.5 Layer III, 16 kbit/s, 8 kHz, mono: 144 bytes.
const MPEG25_16K: u32 = 0xFFE3_28C4;

/// A frame of zeros behind the header `word`.
fn frame(word: u32) -> Vec<u8> {
    let h = FrameHeader::parse(word).unwrap();
    let mut f = vec![0u8; usize::from(h.frame_bytes())];
    f[..4].copy_from_slice(&word.to_be_bytes());
    f
}

fn frames(word: u32, n: usize) -> Vec<u8> {
    frame(word).repeat(n)
}

fn read(data: &[u8]) -> (Vec<Block<'_>>, Vec<Region>, Option<Error>) {
    read_with(data, &Options::default())
}

fn read_with<'a>(
    data: &'a [u8],
    options: &Options,
) -> (Vec<Block<'a>>, Vec<Region>, Option<Error>) {
    let mut reader = Mp3Reader::new(data, options).unwrap();
    let mut blocks = Vec::new();
    let mut error = None;
    for item in reader.by_ref() {
        match item {
            Ok(b) => blocks.push(b),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    assert!(reader.next().is_none(), "nothing after the end or an error");
    (blocks, reader.regions().to_vec(), error)
}

fn offsets(blocks: &[Block<'_>]) -> Vec<u64> {
    blocks.iter().map(|b| b.offset).collect()
}

fn region(offset: usize, len: usize, kind: RegionKind) -> Region {
    Region {
        offset: offset as u64,
        len: len as u64,
        kind,
    }
}

fn id3v2(major: u8, flags: u8, size: u32) -> Vec<u8> {
    let mut t = vec![b'I', b'D', b'3', major, 0, flags];
    t.extend([21, 14, 7, 0].map(|s| ((size >> s) & 0x7F) as u8));
    t.resize(10 + size as usize, 0);
    t
}

#[test]
fn parses_an_mpeg1_header() {
    let h = FrameHeader::parse(MPEG1_128K).unwrap();
    assert_eq!(h.version(), Version::Mpeg1);
    assert_eq!(h.layer(), Layer::III);
    assert!(!h.crc());
    assert_eq!(h.bitrate_kbps(), 128);
    assert_eq!(h.sample_rate(), 44_100);
    assert!(!h.padding());
    assert_eq!(h.channel_mode(), ChannelMode::JointStereo);
    assert_eq!(h.mode_extension(), 2);
    assert!(!h.copyright());
    assert!(h.original());
    assert_eq!(h.emphasis(), Emphasis::None);
    // 144 · 128000 / 44100 = 417.96…, rounded down.
    assert_eq!(h.frame_bytes(), 417);
    assert_eq!(h.samples(), 1152);
    assert_eq!(h.side_info_len(), 32);
    assert_eq!(h.side_info_offset(), 4);
}

#[test]
fn parses_mpeg2_and_mpeg25_headers() {
    let h = FrameHeader::parse(MPEG2_32K).unwrap();
    assert_eq!(
        (
            h.version(),
            h.bitrate_kbps(),
            h.sample_rate(),
            h.frame_bytes(),
            h.samples()
        ),
        (Version::Mpeg2, 32, 16_000, 144, 576)
    );
    assert_eq!(h.channel_mode(), ChannelMode::Mono);
    assert_eq!(h.side_info_len(), 9);
    let h = FrameHeader::parse(MPEG25_16K).unwrap();
    assert_eq!(
        (
            h.version(),
            h.bitrate_kbps(),
            h.sample_rate(),
            h.frame_bytes(),
            h.samples()
        ),
        (Version::Mpeg25, 16, 8_000, 144, 576)
    );
    // MPEG-2, 22.05 kHz, 48 kbit/s, stereo: 17 bytes of side information.
    let h = FrameHeader::parse(0xFFF3_6000).unwrap();
    assert_eq!(
        (h.sample_rate(), h.bitrate_kbps(), h.frame_bytes()),
        (22_050, 48, 156)
    );
    assert_eq!(h.side_info_len(), 17);
}

#[test]
fn bitrate_and_sample_rate_tables() {
    // Layer III bitrates per index (ISO 11172-3 2.4.2.3, ISO 13818-3 2.4.2.3).
    let mpeg1 = [
        32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    let lsf = [8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let versions = [
        (0b11u32, &mpeg1, [44_100u32, 48_000, 32_000], 144u32),
        (0b10, &lsf, [22_050, 24_000, 16_000], 72),
        (0b00, &lsf, [11_025, 12_000, 8_000], 72),
    ];
    for (v, kbps, rates, k) in versions {
        for (i, &rate) in rates.iter().enumerate() {
            for (b, &br) in kbps.iter().enumerate() {
                for pad in 0..2u32 {
                    let word = 0xFFE0_0000
                        | v << 19
                        | 1 << 17
                        | 1 << 16
                        | (b as u32 + 1) << 12
                        | (i as u32) << 10
                        | pad << 9;
                    let h = FrameHeader::parse(word).unwrap();
                    assert_eq!(u32::from(h.bitrate_kbps()), br);
                    assert_eq!(h.sample_rate(), rate);
                    assert_eq!(h.padding(), pad == 1);
                    assert_eq!(u32::from(h.frame_bytes()), k * br * 1000 / rate + pad);
                }
            }
        }
    }
    // Extremes: the longest and the shortest Layer III frames.
    assert_eq!(FrameHeader::parse(0xFFFB_EA00).unwrap().frame_bytes(), 1441);
    assert_eq!(FrameHeader::parse(0xFFF3_1400).unwrap().frame_bytes(), 24);
}

#[test]
fn the_stream_tables_follow_the_header_rules() {
    // For every shape of stream (version, sampling frequency, mono or not), every header
    // word with the sync bits set (bits 5..2 fixed: mode extension, copyright and original
    // change nothing) gets from the hot path's tables exactly what FrameHeader::parse and
    // agrees give: the Layer III frame length, or 0.
    let mut keys = 0;
    for version in [0b11u32, 0b10, 0b00] {
        for rate in 0..3u32 {
            for mode in [0b01u32, 0b11] {
                let key = 0xFFE0_0000
                    | version << 19
                    | 1 << 17
                    | 1 << 16
                    | 9 << 12
                    | rate << 10
                    | mode << 6;
                let stream = Stream::new(key);
                keys += 1;
                for bits in 0..1u32 << 17 {
                    let word = 0xFFE0_0000 | (bits >> 2) << 6 | 0b1010 << 2 | (bits & 3);
                    let expected = match FrameHeader::parse(word) {
                        Ok(h) if h.layer() == Layer::III && agrees(word, key) => {
                            usize::from(h.frame_bytes())
                        }
                        _ => 0,
                    };
                    assert_eq!(stream.frame_len(word), expected, "{key:#x} {word:#x}");
                }
                // A word without the sync is never a header of the stream.
                assert_eq!(stream.frame_len(key & !(1 << 25)), 0);
                assert_eq!(
                    stream.frame_len(key),
                    usize::from(FrameHeader(key).frame_bytes())
                );
            }
        }
    }
    assert_eq!(keys, 18);
}

#[test]
fn padding_adds_one_byte() {
    let plain = FrameHeader::parse(MPEG1_128K).unwrap();
    let padded = FrameHeader::parse(MPEG1_128K | 1 << 9).unwrap();
    assert!(padded.padding());
    assert_eq!(padded.frame_bytes(), plain.frame_bytes() + 1);
}

#[test]
fn invalid_headers_are_refused() {
    assert_eq!(FrameHeader::parse(0x7FFB_9064), Err(HeaderError::NoSync));
    assert_eq!(
        FrameHeader::parse(0xFFEB_9064),
        Err(HeaderError::ReservedVersion)
    );
    assert_eq!(
        FrameHeader::parse(0xFFF9_9064),
        Err(HeaderError::ReservedLayer)
    );
    assert_eq!(
        FrameHeader::parse(0xFFFB_F064),
        Err(HeaderError::ForbiddenBitrate)
    );
    assert_eq!(
        FrameHeader::parse(0xFFFB_9C64),
        Err(HeaderError::ReservedSampleRate)
    );
    assert_eq!(
        FrameHeader::parse(0xFFFB_9066),
        Err(HeaderError::ReservedEmphasis)
    );
    assert_eq!(
        FrameHeader::parse(0xFFFB_0064),
        Err(HeaderError::FreeFormat)
    );
    // Layers I and II parse (so that the reader can name them).
    let h = FrameHeader::parse(0xFFFD_9064).unwrap();
    // 144 · 160000 / 44100 = 522.4…
    assert_eq!(
        (h.layer(), h.bitrate_kbps(), h.frame_bytes()),
        (Layer::II, 160, 522)
    );
    let h = FrameHeader::parse(0xFFFF_9064).unwrap();
    // 4 · floor(12 · 288000 / 44100) = 4 · 78.
    assert_eq!(
        (h.layer(), h.bitrate_kbps(), h.frame_bytes()),
        (Layer::I, 288, 312)
    );
}

#[test]
fn crc_shifts_the_side_information() {
    // MPEG-1 with CRC: main_data_begin is the first 9 bits after the 2 CRC bytes.
    let word = MPEG1_128K & !(1 << 16);
    let mut f = frame(word);
    f[4..8].copy_from_slice(&[0xAB, 0xCD, 0b1000_0000, 0b1000_0000]);
    let data = f.repeat(3);
    let (blocks, _, err) = read(&data);
    assert!(err.is_none());
    // The first frame comes from the general path, the others from the hot path.
    assert_eq!(blocks.len(), 3);
    for block in &blocks {
        let Detail::Mp3(info) = block.detail else {
            unreachable!()
        };
        assert!(info.header.crc());
        assert_eq!(info.header.side_info_offset(), 6);
        assert_eq!(info.main_data_begin, 257);
        assert_eq!(info.side_info_len, 32);
    }
}

#[test]
fn main_data_begin_is_9_bits_in_mpeg1_and_8_in_lsf() {
    let mut f = frame(MPEG1_128K);
    f[4..6].copy_from_slice(&[0xFF, 0xFF]);
    let data = f.repeat(2);
    let (blocks, _, _) = read(&data);
    let Detail::Mp3(info) = blocks[1].detail else {
        unreachable!()
    };
    assert_eq!(info.main_data_begin, 511);

    let mut f = frame(MPEG2_32K);
    f[4..6].copy_from_slice(&[0xFF, 0xFF]);
    let data = f.repeat(2);
    let (blocks, _, _) = read(&data);
    let Detail::Mp3(info) = blocks[1].detail else {
        unreachable!()
    };
    assert_eq!(info.main_data_begin, 255);
}

#[test]
fn frames_carry_time_in_samples() {
    let data = frames(MPEG1_128K, 3);
    let (blocks, regions, err) = read(&data);
    assert!(err.is_none() && regions.is_empty());
    assert_eq!(offsets(&blocks), [0, 417, 834]);
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(b.index, i as u64);
        assert_eq!(b.bit, 0);
        assert_eq!(b.bits, None);
        assert_eq!(b.kind, BlockKind::Audio);
        assert!(matches!(b.data, Cow::Borrowed(_)));
        assert_eq!(
            b.place,
            Place::Time {
                start: 1152 * i as i64,
                duration: 1152,
                rate: 44_100
            }
        );
    }
}

#[test]
fn id3v2_tags_with_footer_and_in_a_row() {
    let mut data = id3v2(4, 0x10, 30);
    data.extend(b"3DI\x04\x00\x10\x00\x00\x00\x1e");
    let first = data.len();
    assert_eq!(first, 50);
    data.extend(id3v2(3, 0, 5));
    data.extend(frames(MPEG2_32K, 2));
    let (blocks, regions, err) = read(&data);
    assert!(err.is_none());
    assert_eq!(offsets(&blocks), [65, 209]);
    assert_eq!(
        regions,
        [
            region(0, 50, RegionKind::Id3v2),
            region(50, 15, RegionKind::Id3v2)
        ]
    );
}

#[test]
fn an_id3v2_tag_larger_than_the_file_is_truncated() {
    // Syncsafe 0x7F7F7F7F: 256 MiB.
    let mut data = b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f".to_vec();
    data.extend(frames(MPEG2_32K, 2));
    let (blocks, _, err) = read(&data);
    assert!(blocks.is_empty());
    match err {
        Some(Error::Truncated {
            offset: 0, needed, ..
        }) => assert_eq!(needed, 10 + (1 << 28) - 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn tags_at_the_end() {
    let mut data = frames(MPEG2_32K, 3);
    // APEv2 tag with header: 32-byte header, 8 bytes of items, 32-byte footer.
    let ape_at = data.len();
    let mut ape = Vec::new();
    for flags in [APE_HAS_HEADER | APE_IS_HEADER, APE_HAS_HEADER] {
        let mut h = b"APETAGEX".to_vec();
        for v in [2000u32, 40, 1, flags, 0, 0] {
            h.extend(v.to_le_bytes());
        }
        ape.push(h);
    }
    data.extend(&ape[0]);
    data.extend([0u8; 8]);
    data.extend(&ape[1]);
    let id3v1_at = data.len();
    let mut v1 = b"TAG".to_vec();
    v1.resize(128, b' ');
    data.extend(v1);
    let (blocks, regions, err) = read(&data);
    assert!(err.is_none());
    assert_eq!(blocks.len(), 3);
    assert_eq!(
        regions,
        [
            region(ape_at, 72, RegionKind::Ape),
            region(id3v1_at, 128, RegionKind::Id3v1)
        ]
    );
}

#[test]
fn an_ape_tag_at_the_start() {
    let mut data = b"APETAGEX".to_vec();
    for v in [2000u32, 32, 0, APE_HAS_HEADER | APE_IS_HEADER, 0, 0] {
        data.extend(v.to_le_bytes());
    }
    let mut footer = data.clone();
    footer[20..24].copy_from_slice(&APE_HAS_HEADER.to_le_bytes());
    data.extend(footer);
    data.extend(frames(MPEG2_32K, 2));
    let (blocks, regions, _) = read(&data);
    assert_eq!(offsets(&blocks), [64, 208]);
    assert_eq!(regions, [region(0, 64, RegionKind::Ape)]);
}

#[test]
fn resynchronises_over_garbage_and_reports_it() {
    let mut data = frames(MPEG2_32K, 2);
    data.extend([0x12; 30]);
    data.extend(frames(MPEG2_32K, 2));
    data.extend([0x34; 5]);
    let (blocks, regions, err) = read(&data);
    assert!(err.is_none());
    assert_eq!(offsets(&blocks), [0, 144, 318, 462]);
    assert_eq!(
        regions,
        [
            region(288, 30, RegionKind::Garbage),
            region(606, 5, RegionKind::Trailing)
        ]
    );
    // The time line has no hole.
    assert_eq!(
        blocks[2].place,
        Place::Time {
            start: 2 * 576,
            duration: 576,
            rate: 16_000
        }
    );
}

#[test]
fn garbage_before_the_first_frame() {
    let mut data = vec![0xFF, 0xFF, 0x00, 0xFF, 0xF3, 0x48];
    data.extend(frames(MPEG2_32K, 2));
    let (blocks, regions, err) = read(&data);
    assert!(err.is_none());
    assert_eq!(offsets(&blocks), [6, 150]);
    let mut reader = Mp3Reader::new(&data, &Options::default()).unwrap();
    assert_eq!(reader.stream_header(), None);
    reader.next();
    assert_eq!(
        reader.stream_header().map(FrameHeader::word),
        Some(MPEG2_32K)
    );
    assert!(format!("{reader:?}").contains("pos: 150"));
    assert_eq!(regions, [region(0, 6, RegionKind::Garbage)]);
}

#[test]
fn false_syncs_in_garbage_are_rejected() {
    let mut garbage = vec![0x11; 200];
    // A header of another version and one of the stream's own shape, neither followed by
    // a header where its frame would end.
    garbage[10..14].copy_from_slice(&MPEG1_128K.to_be_bytes());
    garbage[20..24].copy_from_slice(&MPEG2_32K.to_be_bytes());
    let mut data = frames(MPEG2_32K, 2);
    data.extend(&garbage);
    data.extend(frames(MPEG2_32K, 2));
    let (blocks, regions, err) = read(&data);
    assert!(err.is_none());
    assert_eq!(offsets(&blocks), [0, 144, 488, 632]);
    assert_eq!(regions, [region(288, 200, RegionKind::Garbage)]);
}

#[test]
fn a_stream_of_another_shape_does_not_lock_once_locked() {
    // MPEG-2 frames, then a run of MPEG-1 frames that confirm each other, then MPEG-2.
    let mut data = frames(MPEG2_32K, 2);
    data.extend(frames(MPEG1_128K, 3));
    data.extend(frames(MPEG2_32K, 2));
    let (blocks, regions, _) = read(&data);
    assert_eq!(offsets(&blocks), [0, 144, 1539, 1683]);
    assert_eq!(regions, [region(288, 1251, RegionKind::Garbage)]);
}

#[test]
fn a_frame_cut_short_becomes_garbage() {
    let f = frame(MPEG2_32K);
    let mut data = f.repeat(2);
    data.extend(&f[..50]);
    data.extend(f.repeat(2));
    let (blocks, regions, err) = read(&data);
    assert!(err.is_none());
    assert_eq!(offsets(&blocks), [0, 144, 338, 482]);
    assert_eq!(regions, [region(288, 50, RegionKind::Garbage)]);
}

#[test]
fn a_truncated_last_frame_is_an_error_after_the_whole_ones() {
    let mut data = frames(MPEG2_32K, 3);
    data.truncate(3 * 144 - 10);
    let (blocks, _, err) = read(&data);
    assert_eq!(blocks.len(), 2);
    match err {
        Some(Error::Truncated {
            offset: 288,
            needed: 144,
            available: 134,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_prefix_reads_without_panic() {
    let mut data = id3v2(3, 0, 20);
    data.extend(frames(MPEG1_128K, 3));
    data.extend(b"TAG");
    for n in 0..data.len() {
        let (blocks, regions, err) = read(&data[..n]);
        let covered: u64 = blocks.iter().map(|b| b.len() as u64).sum::<u64>()
            + regions.iter().map(|r| r.len).sum::<u64>();
        assert!(covered <= n as u64);
        if err.is_none() {
            assert_eq!(covered, n as u64, "prefix {n}");
        }
    }
}

#[test]
fn layer_ii_and_free_format_are_unsupported() {
    let layer2 = 0xFFFD_9064;
    let (_, _, err) = read(&frames(layer2, 3));
    match err {
        Some(Error::Unsupported {
            what, offset: 0, ..
        }) => {
            assert_eq!(what, "MPEG-1 Layer II");
        }
        other => panic!("{other:?}"),
    }
    // Three free-format headers 500 bytes apart, the last one padded: a stream.
    let mut data = vec![0u8; 1600];
    for at in [0, 500, 1001] {
        data[at..at + 4].copy_from_slice(&0xFFFB_0064u32.to_be_bytes());
    }
    let (_, _, err) = read(&data);
    match err {
        Some(Error::Unsupported {
            what, offset: 0, ..
        }) => {
            assert!(what.contains("free-format"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    // Two are not: the lone pair is garbage.
    data[1001] = 0;
    let (_, _, err) = read(&data);
    assert!(matches!(err, Some(Error::Malformed { .. })), "{err:?}");
}

#[test]
fn files_without_frames_are_malformed() {
    for data in [&[][..], &[0xFF; 500][..], &[0x00, 0x01, 0x02][..]] {
        let (blocks, _, err) = read(data);
        assert!(blocks.is_empty());
        assert!(matches!(err, Some(Error::Malformed { .. })), "{err:?}");
    }
    // A lone header that announces a frame longer than the file.
    let (_, _, err) = read(&MPEG1_128K.to_be_bytes());
    assert!(matches!(err, Some(Error::Malformed { .. })), "{err:?}");
}

#[test]
fn a_xing_frame_is_metadata() {
    let mut xing = frame(MPEG1_128K);
    // After 32 bytes of side information: "Xing", flags (frames, bytes), then the fields.
    xing[36..40].copy_from_slice(b"Xing");
    xing[40..44].copy_from_slice(&3u32.to_be_bytes());
    xing[44..48].copy_from_slice(&2u32.to_be_bytes());
    xing[48..52].copy_from_slice(&(3 * 417u32).to_be_bytes());
    xing[52..56].copy_from_slice(b"LAME");
    // Delay 576 = 0x240, padding 1000 = 0x3E8 at byte 21 of the LAME tag.
    xing[73..76].copy_from_slice(&[0x24, 0x03, 0xE8]);
    let mut data = xing;
    data.extend(frames(MPEG1_128K, 2));
    let (blocks, _, err) = read(&data);
    assert!(err.is_none());
    assert_eq!(blocks[0].kind, BlockKind::Metadata);
    assert_eq!(blocks[0].place, Place::None);
    let Detail::Mp3(info) = blocks[0].detail else {
        unreachable!()
    };
    assert_eq!(
        info.vbr,
        Some(VbrHeader {
            kind: VbrKind::Xing,
            frames: Some(2),
            bytes: Some(1251),
            encoder_delay: Some(576),
            encoder_padding: Some(1000),
        })
    );
    assert_eq!(blocks[1].kind, BlockKind::Audio);
    assert_eq!(
        blocks[1].place,
        Place::Time {
            start: 0,
            duration: 1152,
            rate: 44_100
        }
    );
    // Only the first frame may be one.
    let mut data = frames(MPEG1_128K, 1);
    data.extend(&blocks[0].data[..]);
    let (blocks, _, _) = read(&data);
    assert!(blocks.iter().all(|b| b.kind == BlockKind::Audio));
}

#[test]
fn a_vbri_frame_is_metadata() {
    let mut vbri = frame(MPEG2_32K);
    vbri[36..40].copy_from_slice(b"VBRI");
    vbri[40..42].copy_from_slice(&1u16.to_be_bytes());
    vbri[42..44].copy_from_slice(&1105u16.to_be_bytes());
    vbri[46..50].copy_from_slice(&432u32.to_be_bytes());
    vbri[50..54].copy_from_slice(&2u32.to_be_bytes());
    let mut data = vbri;
    data.extend(frames(MPEG2_32K, 2));
    let (blocks, _, _) = read(&data);
    let Detail::Mp3(info) = blocks[0].detail else {
        unreachable!()
    };
    assert_eq!(blocks[0].kind, BlockKind::Metadata);
    let vbr = info.vbr.unwrap();
    assert_eq!(
        (vbr.kind, vbr.frames, vbr.bytes, vbr.encoder_delay),
        (VbrKind::Vbri, Some(2), Some(432), Some(1105))
    );
}

#[test]
fn limits_stop_the_reader() {
    let data = frames(MPEG2_32K, 5);
    let options = Options::default().with_limits(Limits::default().with_max_blocks(3));
    let (blocks, _, err) = read_with(&data, &options);
    assert_eq!(blocks.len(), 3);
    assert!(
        matches!(
            err,
            Some(Error::Limit {
                what: "max_blocks",
                limit: 3,
                found: 4,
                ..
            })
        ),
        "{err:?}"
    );
    // A limit that every frame meets, though the stream's largest frame (160 kbit/s, 721
    // bytes) would not: all frames are read.
    let options = Options::default().with_limits(Limits::default().with_max_block_bytes(144));
    let (blocks, _, err) = read_with(&data, &options);
    assert!(err.is_none() && blocks.len() == 5, "{err:?}");
    // A larger frame in the middle is refused there.
    let mut mixed = frames(MPEG2_32K, 2);
    mixed.extend(frames(MPEG2_32K | 0x1000, 1));
    mixed.extend(frames(MPEG2_32K, 2));
    let (blocks, _, err) = read_with(&mixed, &options);
    assert_eq!(blocks.len(), 2);
    assert!(
        matches!(
            err,
            Some(Error::Limit {
                what: "max_block_bytes",
                offset: 288,
                found: 180,
                ..
            })
        ),
        "{err:?}"
    );
    let options = Options::default().with_limits(Limits::default().with_max_block_bytes(100));
    let (blocks, _, err) = read_with(&data, &options);
    assert!(blocks.is_empty());
    assert!(
        matches!(
            err,
            Some(Error::Limit {
                what: "max_block_bytes",
                found: 144,
                ..
            })
        ),
        "{err:?}"
    );
    // Regions count too: five empty ID3v2 tags in a row.
    let mut tags = id3v2(3, 0, 0).repeat(5);
    tags.extend(&data);
    let options = Options::default().with_limits(Limits::default().with_max_blocks(3));
    let (blocks, regions, err) = read_with(&tags, &options);
    assert!(blocks.is_empty());
    assert_eq!(regions.len(), 3);
    assert!(
        matches!(
            err,
            Some(Error::Limit {
                what: "max_blocks",
                offset: 30,
                ..
            })
        ),
        "{err:?}"
    );
    let options = Options::default().with_limits(Limits::default().with_max_file_bytes(100));
    assert!(Mp3Reader::new(&data, &options).is_err());
}
