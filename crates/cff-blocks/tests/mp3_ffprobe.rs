//! MP3 frames against an independent tool: every audio block of every fixture must be one of
//! the packets `ffprobe -show_packets` lists, offset for offset and size for size. The fixtures
//! and the listings were made by `tests/fixtures/mp3/make.sh` (LAME 3.100, ffprobe 5.1); this
//! test only reads the committed files.
#![allow(clippy::unwrap_used)]

use cff_blocks::mp3::{ChannelMode, Mp3Reader, VbrKind, Version};
use cff_blocks::{Block, BlockKind, Detail, Options, Place, Reader, Region, RegionKind};

mod common;

fn fixture(name: &str) -> Vec<u8> {
    common::fixture_in("mp3", name)
}

fn fixture_text(name: &str) -> String {
    String::from_utf8(fixture(name)).unwrap()
}

/// One packet of an ffprobe listing.
struct Packet {
    pos: u64,
    size: u64,
    /// "Skip Samples" side data: the samples a decoder drops at the start.
    skip_samples: Option<u64>,
}

/// Parses `ffprobe -show_entries packet=pos,size -of csv=p=0` output: ffprobe 5.1 writes size
/// first, then pos, then any side data; side data also leaves blank lines.
fn packets(name: &str) -> Vec<Packet> {
    fixture_text(&format!("{name}.packets.csv"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let skip_samples = f
                .iter()
                .position(|&x| x == "Skip Samples")
                .and_then(|i| f.get(i + 1))
                .map(|x| x.parse().unwrap());
            Packet {
                size: f[0].parse().unwrap(),
                pos: f[1].parse().unwrap(),
                skip_samples,
            }
        })
        .collect()
}

fn read(data: &[u8]) -> (Vec<Block<'_>>, Vec<Region>) {
    let mut reader = Mp3Reader::new(data, &Options::default()).unwrap();
    let blocks: Vec<Block<'_>> = reader.by_ref().collect::<Result<_, _>>().unwrap();
    (blocks, reader.regions().to_vec())
}

fn info<'b>(block: &'b Block<'_>) -> &'b cff_blocks::mp3::FrameInfo {
    match &block.detail {
        Detail::Mp3(info) => info,
        other => panic!("not an MP3 block: {other:?}"),
    }
}

/// What the encoder was asked for (make.sh), which every frame must show.
struct Expect {
    name: &'static str,
    version: Version,
    sample_rate: u32,
    mono: bool,
    crc: bool,
    /// CBR bitrate, or the range ABR/VBR frames must stay in.
    kbps: (u16, u16),
    reservoir: bool,
    vbr: Option<VbrKind>,
    tags: &'static [RegionKind],
}

const FIXTURES: &[Expect] = &[
    Expect {
        name: "cbr32_16k_mono.mp3",
        version: Version::Mpeg2,
        sample_rate: 16_000,
        mono: true,
        crc: false,
        kbps: (32, 32),
        reservoir: true,
        // A 144-byte frame cannot hold LAME's Info tag, so LAME writes none (ffprobe's first
        // packet is at byte 0).
        vbr: None,
        tags: &[],
    },
    Expect {
        name: "abr20_16k_mono.mp3",
        version: Version::Mpeg2,
        sample_rate: 16_000,
        mono: true,
        crc: false,
        kbps: (16, 24),
        reservoir: true,
        vbr: Some(VbrKind::Xing),
        tags: &[],
    },
    Expect {
        name: "cbr128_44k_stereo_id3.mp3",
        version: Version::Mpeg1,
        sample_rate: 44_100,
        mono: false,
        crc: false,
        kbps: (128, 128),
        reservoir: true,
        vbr: Some(VbrKind::Info),
        tags: &[RegionKind::Id3v2, RegionKind::Id3v1],
    },
    Expect {
        name: "vbr_32k_stereo.mp3",
        version: Version::Mpeg1,
        sample_rate: 32_000,
        mono: false,
        crc: false,
        kbps: (32, 320),
        reservoir: true,
        vbr: Some(VbrKind::Xing),
        tags: &[],
    },
    Expect {
        name: "crc_48k_stereo.mp3",
        version: Version::Mpeg1,
        sample_rate: 48_000,
        mono: false,
        crc: true,
        kbps: (96, 96),
        reservoir: true,
        vbr: Some(VbrKind::Info),
        tags: &[],
    },
    Expect {
        name: "crc_22k_stereo_noxing.mp3",
        version: Version::Mpeg2,
        sample_rate: 22_050,
        mono: false,
        crc: true,
        kbps: (48, 48),
        reservoir: true,
        vbr: None,
        tags: &[],
    },
    Expect {
        name: "nores_24k_mono_id3v2.mp3",
        version: Version::Mpeg2,
        sample_rate: 24_000,
        mono: true,
        crc: false,
        kbps: (40, 40),
        reservoir: false,
        vbr: None,
        tags: &[RegionKind::Id3v2],
    },
    Expect {
        name: "mpeg25_8k_mono.mp3",
        version: Version::Mpeg25,
        sample_rate: 8_000,
        mono: true,
        crc: false,
        kbps: (16, 16),
        reservoir: true,
        vbr: None,
        tags: &[],
    },
    Expect {
        name: "mpeg25_11k_mono_noxing_id3v1.mp3",
        version: Version::Mpeg25,
        sample_rate: 11_025,
        mono: true,
        crc: false,
        kbps: (24, 24),
        reservoir: true,
        vbr: None,
        tags: &[RegionKind::Id3v1],
    },
    Expect {
        name: "vbr_12k_mono.mp3",
        version: Version::Mpeg25,
        sample_rate: 12_000,
        mono: true,
        crc: false,
        kbps: (8, 160),
        reservoir: true,
        vbr: Some(VbrKind::Xing),
        tags: &[],
    },
];

/// Blocks and regions cover the file exactly once, in order.
fn assert_tiles(name: &str, len: usize, blocks: &[Block<'_>], regions: &[Region]) {
    let mut spans: Vec<(u64, u64)> = blocks
        .iter()
        .map(|b| (b.offset, b.len() as u64))
        .chain(regions.iter().map(|r| (r.offset, r.len)))
        .collect();
    spans.sort_unstable();
    let mut at = 0;
    for (offset, n) in spans {
        assert_eq!(offset, at, "{name}: gap or overlap at byte {at}");
        at += n;
    }
    assert_eq!(at, len as u64, "{name}: spans end before the file does");
}

#[test]
fn audio_blocks_are_ffprobe_packets() {
    for e in FIXTURES {
        let data = fixture(e.name);
        let (blocks, regions) = read(&data);
        let audio: Vec<&Block<'_>> = blocks
            .iter()
            .filter(|b| b.kind == BlockKind::Audio)
            .collect();
        let probe = packets(e.name);
        assert_eq!(audio.len(), probe.len(), "{}: frame count", e.name);
        for (b, p) in audio.iter().zip(&probe) {
            assert_eq!(
                (b.offset, b.len() as u64),
                (p.pos, p.size),
                "{}: block {}",
                e.name,
                b.index
            );
        }
        assert_tiles(e.name, data.len(), &blocks, &regions);
    }
}

#[test]
fn headers_match_the_encoder_settings() {
    for e in FIXTURES {
        let data = fixture(e.name);
        let (blocks, _) = read(&data);
        for b in &blocks {
            let h = info(b).header;
            assert_eq!(h.version(), e.version, "{} block {}", e.name, b.index);
            assert_eq!(
                h.sample_rate(),
                e.sample_rate,
                "{} block {}",
                e.name,
                b.index
            );
            assert_eq!(h.channel_mode() == ChannelMode::Mono, e.mono, "{}", e.name);
            assert_eq!(h.crc(), e.crc, "{} block {}", e.name, b.index);
            assert_eq!(
                b.data[0], 0xFF,
                "{}: a block starts with its header",
                e.name
            );
            assert_eq!(usize::from(h.frame_bytes()), b.len());
            if b.kind == BlockKind::Audio {
                assert!(
                    (e.kbps.0..=e.kbps.1).contains(&h.bitrate_kbps()),
                    "{} block {}: {} kbit/s",
                    e.name,
                    b.index,
                    h.bitrate_kbps()
                );
            }
        }
    }
}

#[test]
fn time_advances_by_the_frame_duration() {
    for e in FIXTURES {
        let data = fixture(e.name);
        let (blocks, _) = read(&data);
        let per_frame = if e.version == Version::Mpeg1 {
            1152
        } else {
            576
        };
        let mut next = 0i64;
        let mut audio = 0i64;
        for b in &blocks {
            match (b.kind, b.place) {
                (
                    BlockKind::Audio,
                    Place::Time {
                        start,
                        duration,
                        rate,
                    },
                ) => {
                    assert_eq!(start, next, "{} block {}", e.name, b.index);
                    assert_eq!(duration, per_frame, "{}", e.name);
                    assert_eq!(rate, e.sample_rate, "{}", e.name);
                    next += i64::from(duration);
                    audio += 1;
                }
                (BlockKind::Metadata, Place::None) => {}
                other => panic!("{}: block {} is {other:?}", e.name, b.index),
            }
        }
        let probe = packets(e.name).len() as i64;
        assert_eq!(next, probe * i64::from(per_frame), "{}", e.name);
        assert_eq!(audio, probe, "{}", e.name);
    }
}

#[test]
fn vbr_headers_say_what_the_stream_holds() {
    for e in FIXTURES {
        let data = fixture(e.name);
        let (blocks, _) = read(&data);
        let meta: Vec<&Block<'_>> = blocks
            .iter()
            .filter(|b| b.kind == BlockKind::Metadata)
            .collect();
        let Some(kind) = e.vbr else {
            assert!(meta.is_empty(), "{}", e.name);
            continue;
        };
        assert_eq!(meta.len(), 1, "{}", e.name);
        assert_eq!(meta[0].index, 0, "{}", e.name);
        let vbr = info(meta[0]).vbr.unwrap();
        assert_eq!(vbr.kind, kind, "{}", e.name);
        // LAME's frame count leaves the Xing frame out; its byte count is the whole stream.
        let audio = blocks.len() - 1;
        assert_eq!(vbr.frames, Some(audio as u32), "{}", e.name);
        let stream: usize = blocks.iter().map(Block::len).sum();
        assert_eq!(vbr.bytes, Some(stream as u32), "{}", e.name);
        // FFmpeg turns the LAME tag's delay into skip samples, adding its decoder delay of 529.
        let skip = packets(e.name)[0].skip_samples.unwrap();
        assert_eq!(
            u64::from(vbr.encoder_delay.unwrap()) + 529,
            skip,
            "{}",
            e.name
        );
    }
}

#[test]
fn tags_are_regions_where_the_tag_bytes_are() {
    for e in FIXTURES {
        let data = fixture(e.name);
        let (_, regions) = read(&data);
        let kinds: Vec<RegionKind> = regions.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, e.tags, "{}", e.name);
        for r in &regions {
            let bytes = &data[r.offset as usize..(r.offset + r.len) as usize];
            match r.kind {
                RegionKind::Id3v2 => {
                    assert_eq!(r.offset, 0);
                    assert_eq!(&bytes[..3], b"ID3");
                    // The first frame (ffprobe's first packet, or the Xing frame) follows.
                    assert_eq!(data[r.len as usize], 0xFF);
                }
                RegionKind::Id3v1 => {
                    assert_eq!(r.len, 128);
                    assert_eq!(r.offset + 128, data.len() as u64);
                    assert_eq!(&bytes[..3], b"TAG");
                }
                other => panic!("{}: unexpected region {other:?}", e.name),
            }
        }
    }
}

/// Bits of main data a Layer III frame holds: the sum of `part2_3_length` over its granules
/// and channels, read from the side information (ISO 11172-3 2.4.1.7, ISO 13818-3 2.4.1.7).
fn main_data_bits(frame: &[u8], offset: usize, mpeg1: bool, channels: usize) -> usize {
    let bit = |pos: usize| usize::from(frame[offset + pos / 8] >> (7 - pos % 8) & 1);
    let field = |pos: usize, n: usize| (pos..pos + n).fold(0, |acc, p| (acc << 1) | bit(p));
    // main_data_begin, private bits, scfsi; then 59 (MPEG-1) or 63 (LSF) bits per granule and
    // channel, each opening with part2_3_length (12 bits).
    let (mut pos, granules, per) = match (mpeg1, channels) {
        (true, 1) => (9 + 5 + 4, 2, 59),
        (true, _) => (9 + 3 + 8, 2, 59),
        (false, 1) => (8 + 1, 1, 63),
        (false, _) => (8 + 2, 1, 63),
    };
    let mut bits = 0;
    for _ in 0..granules * channels {
        bits += field(pos, 12);
        pos += per;
    }
    bits
}

#[test]
fn main_data_begin_points_into_earlier_frames() {
    for e in FIXTURES {
        let data = fixture(e.name);
        let (blocks, _) = read(&data);
        // Main data is one byte stream laid over the frames' payloads (ISO 11172-3 2.4.2.7,
        // main_data_begin): a frame's main data starts main_data_begin bytes before its own
        // payload, after the previous frame's main data, and ends within its own payload.
        let mut payload_start = 0usize;
        let mut previous_end = 0usize;
        let mut used = false;
        for b in blocks.iter().filter(|b| b.kind == BlockKind::Audio) {
            let i = info(b);
            let h = i.header;
            let side = h.side_info_offset();
            let back = usize::from(i.main_data_begin);
            let payload = b.len() - side - usize::from(i.side_info_len);
            let bits = main_data_bits(
                &b.data,
                side,
                h.version() == Version::Mpeg1,
                usize::from(h.channels()),
            );
            let start = payload_start.checked_sub(back).unwrap_or_else(|| {
                panic!(
                    "{} block {}: main_data_begin {back} before the stream",
                    e.name, b.index
                )
            });
            let end = start + bits.div_ceil(8);
            assert!(
                start >= previous_end,
                "{} block {}: overlap",
                e.name,
                b.index
            );
            assert!(
                end <= payload_start + payload,
                "{} block {}",
                e.name,
                b.index
            );
            used |= back > 0;
            previous_end = end;
            payload_start += payload;
        }
        assert_eq!(used, e.reservoir, "{}: bit reservoir use", e.name);
    }
}

/// `spliced_garbage_ape.mp3` is `abr20_16k_mono.mp3` with tags, garbage, false syncs and a cut
/// frame spliced in by `splice.py`, which recorded what it put where.
#[test]
fn spliced_file_resynchronises_onto_the_source_frames() {
    let source = fixture("abr20_16k_mono.mp3");
    // The source's frames: the Xing frame before ffprobe's first packet, then the packets.
    let probe = packets("abr20_16k_mono.mp3");
    let mut frames: Vec<&[u8]> = vec![&source[..probe[0].pos as usize]];
    frames.extend(
        probe
            .iter()
            .map(|p| &source[p.pos as usize..(p.pos + p.size) as usize]),
    );
    let dropped: Vec<usize> = fixture_text("spliced_garbage_ape.mp3.dropped.csv")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let expected: Vec<&[u8]> = frames
        .iter()
        .enumerate()
        .filter(|(i, _)| !dropped.contains(i))
        .map(|(_, f)| *f)
        .collect();

    let data = fixture("spliced_garbage_ape.mp3");
    // Through the format-detecting reader, as a user would open it.
    let mut reader = Reader::new(&data, &Options::default()).unwrap();
    let blocks: Vec<Block<'_>> = reader.by_ref().collect::<Result<_, _>>().unwrap();
    let regions = reader.regions().to_vec();
    let got: Vec<&[u8]> = blocks.iter().map(|b| &*b.data).collect();
    assert_eq!(got.len(), expected.len());
    for (i, (g, x)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, x, "block {i}");
    }

    let recorded: Vec<(u64, u64, RegionKind)> = fixture_text("spliced_garbage_ape.mp3.regions.csv")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let kind = match f[2] {
                "id3v2" => RegionKind::Id3v2,
                "id3v1" => RegionKind::Id3v1,
                "ape" => RegionKind::Ape,
                "garbage" => RegionKind::Garbage,
                k => panic!("unknown kind {k}"),
            };
            (f[0].parse().unwrap(), f[1].parse().unwrap(), kind)
        })
        .collect();
    let found: Vec<(u64, u64, RegionKind)> =
        regions.iter().map(|r| (r.offset, r.len, r.kind)).collect();
    assert_eq!(found, recorded);
    assert_tiles("spliced", data.len(), &blocks, &regions);

    // The time line has no hole for the skipped garbage, and one frame less than the source.
    let audio = blocks.iter().filter(|b| b.kind == BlockKind::Audio).count();
    assert_eq!(audio, probe.len() - dropped.len());
    let last = blocks.last().unwrap().place;
    assert_eq!(
        last,
        Place::Time {
            start: (audio as i64 - 1) * 576,
            duration: 576,
            rate: 16_000
        }
    );
}
