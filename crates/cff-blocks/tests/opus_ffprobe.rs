//! Ogg Opus packets against ffprobe and opusinfo.
//!
//! The fixtures and their reference listings are made by `tests/fixtures/opus/make.sh`:
//! `FILE.packets.csv` is `ffprobe -show_packets -select_streams a:0 -show_entries
//! packet=pts,duration,size -of csv=p=0 FILE` (one packet per line; ffprobe adds the "Skip
//! Samples" side data to some lines, and blank lines after them), `FILE.opusinfo.txt` is
//! `opusinfo FILE`.
//!
//! ffprobe's pts for Ogg Opus is the packet's position derived from the granule positions minus
//! the pre-skip, so the first packet has pts -312 for opusenc's usual pre-skip; its duration is
//! the TOC duration, cut on the last packet by end trimming. Both are exactly what
//! `Place::Time` promises, so they are compared as they are. Ogg `pos` is the page position in
//! ffprobe, not the packet's, so sizes are compared in order and offsets are checked against the
//! file's bytes instead.

#![allow(clippy::unwrap_used)]

use std::borrow::Cow;
use std::path::PathBuf;

use cff_blocks::opus::{OpusReader, PacketInfo, PacketKind};
use cff_blocks::{Block, BlockKind, Detail, Options, Place, Reader, RegionKind};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/opus")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probe {
    pts: i64,
    duration: u32,
    size: usize,
}

fn ffprobe(name: &str) -> Vec<Probe> {
    let text = String::from_utf8(read(name)).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Probe {
                pts: f[0].parse().unwrap(),
                duration: f[1].parse().unwrap(),
                size: f[2].parse().unwrap(),
            }
        })
        .collect()
}

/// What `opusinfo` printed about each logical stream.
#[derive(Debug, Default)]
struct OpusInfo {
    serial: u32,
    pre_skip: u16,
    channels: u8,
    input_sample_rate: u32,
    comments: u32,
    /// Playback length in milliseconds, as printed (`0m:02.723s`).
    playback_ms: u64,
}

fn opusinfo(name: &str) -> Vec<OpusInfo> {
    let text = String::from_utf8(read(name)).unwrap();
    let mut streams: Vec<OpusInfo> = Vec::new();
    // opusinfo prints the comment sections in header order (BOS order) and the statistics
    // under "Opus stream N:"; for a multiplexed file they interleave.
    let mut comment_sections = 0usize;
    let mut comments_of: Option<usize> = None;
    let mut stats_of = 0usize;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("New logical stream") {
            let hex = rest.split("serial: ").nth(1).unwrap();
            streams.push(OpusInfo {
                serial: u32::from_str_radix(&hex[..8], 16).unwrap(),
                ..Default::default()
            });
            continue;
        }
        if line.starts_with("User comments section follows") {
            comments_of = Some(comment_sections);
            comment_sections += 1;
            continue;
        }
        if let Some(n) = line.strip_prefix("Opus stream ") {
            stats_of = n.trim_end_matches(':').parse::<usize>().unwrap() - 1;
            comments_of = None;
            continue;
        }
        if !line.starts_with('\t') {
            comments_of = None;
            continue;
        }
        if let Some(i) = comments_of {
            streams[i].comments += 1;
            continue;
        }
        let s = &mut streams[stats_of];
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Pre-skip: ") {
            s.pre_skip = v.parse().unwrap();
        } else if let Some(v) = line.strip_prefix("Channels: ") {
            s.channels = v.parse().unwrap();
        } else if let Some(v) = line.strip_prefix("Original sample rate: ") {
            s.input_sample_rate = v.trim_end_matches(" Hz").parse().unwrap();
        } else if let Some(v) = line.strip_prefix("Playback length: ") {
            // e.g. "0m:02.723s"
            let (min, sec) = v.trim_end_matches('s').split_once("m:").unwrap();
            let (s_whole, ms) = sec.split_once('.').unwrap();
            s.playback_ms = min.parse::<u64>().unwrap() * 60_000
                + s_whole.parse::<u64>().unwrap() * 1000
                + ms.parse::<u64>().unwrap();
        }
    }
    streams
}

fn info<'b>(block: &'b Block<'_>) -> &'b PacketInfo {
    match &block.detail {
        Detail::Opus(info) => info,
        other => panic!("not an Opus block: {other:?}"),
    }
}

fn time(block: &Block<'_>) -> (i64, u32) {
    match block.place {
        Place::Time {
            start,
            duration,
            rate: 48_000,
        } => (start, duration),
        other => panic!("block {} has no 48 kHz time: {other:?}", block.index),
    }
}

/// Reads every block, failing on any error.
fn read_blocks<'a>(data: &'a [u8], options: &Options) -> (Vec<Block<'a>>, OpusReader<'a>) {
    let mut reader = OpusReader::new(data, options).unwrap();
    let blocks = reader.by_ref().collect::<Result<Vec<_>, _>>().unwrap();
    (blocks, reader)
}

/// Every block's bytes are the file's bytes at its offset: the same slice for packets inside
/// one page (borrowed, zero-copy), and a run that starts there for packets spanning pages.
fn check_offsets(data: &[u8], blocks: &[Block<'_>]) {
    for b in blocks {
        assert_eq!(b.bit, 0);
        let at = b.offset as usize;
        let spans = info(b).spans_pages;
        match &b.data {
            Cow::Borrowed(slice) => {
                assert!(!spans, "block {} spans pages but is borrowed", b.index);
                assert_eq!(&data[at..at + slice.len()], *slice, "block {}", b.index);
            }
            Cow::Owned(buf) => {
                assert!(spans, "block {} is owned but lies in one page", b.index);
                // Up to the end of the first page's part, the bytes are contiguous in the file.
                let first_part = buf.iter().zip(&data[at..]).take_while(|(a, b)| a == b);
                assert!(first_part.count() >= 255, "block {}", b.index);
            }
        }
    }
}

/// The audio blocks of one logical stream equal ffprobe's packets: sizes in order, start
/// (pts) and duration.
fn check_against_ffprobe(audio: &[&Block<'_>], probe: &[Probe], pts_shift: i64) {
    assert_eq!(audio.len(), probe.len(), "packet count");
    for (b, p) in audio.iter().zip(probe) {
        assert_eq!(b.len(), p.size, "size of block {}", b.index);
        assert_eq!(
            time(b),
            (p.pts + pts_shift, p.duration),
            "time of block {}",
            b.index
        );
    }
}

fn check_against_opusinfo(reader: &OpusReader<'_>, audio: &[&Block<'_>], info: &OpusInfo) {
    let head = reader.head();
    assert_eq!(reader.serial(), info.serial);
    assert_eq!(head.pre_skip, info.pre_skip);
    assert_eq!(head.channels, info.channels);
    assert_eq!(head.input_sample_rate, info.input_sample_rate);
    assert_eq!(reader.tags().unwrap().comment_count, info.comments);
    // opusinfo's playback length leaves out the pre-skip and is truncated to the millisecond.
    let samples: u64 = audio.iter().map(|b| u64::from(time(b).1)).sum();
    let ms = (samples - u64::from(head.pre_skip)) * 1000 / 48_000;
    assert!(
        ms.abs_diff(info.playback_ms) <= 1,
        "{ms} ms against opusinfo's {} ms",
        info.playback_ms
    );
}

fn single_stream(name: &str) {
    let data = read(name);
    let (blocks, reader) = read_blocks(&data, &Options::default());
    assert_eq!(info(&blocks[0]).packet, PacketKind::Head);
    assert_eq!(info(&blocks[1]).packet, PacketKind::Tags);
    assert!(blocks[..2]
        .iter()
        .all(|b| b.kind == BlockKind::Metadata && b.place == Place::None));
    assert!(blocks[..2].iter().all(|b| b.data.starts_with(b"Opus")));
    let audio: Vec<&Block<'_>> = blocks[2..].iter().collect();
    assert!(audio.iter().all(|b| b.kind == BlockKind::Audio));
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(b.index, i as u64);
    }
    check_offsets(&data, &blocks);
    check_against_ffprobe(&audio, &ffprobe(&format!("{name}.packets.csv")), 0);
    let infos = opusinfo(&format!("{name}.opusinfo.txt"));
    assert_eq!(infos.len(), 1);
    check_against_opusinfo(&reader, &audio, &infos[0]);
    assert!(reader.regions().is_empty(), "{:?}", reader.regions());
    // Consecutive audio blocks tile the timeline.
    for w in audio.windows(2) {
        let (s0, d0) = time(w[0]);
        assert_eq!(s0 + i64::from(d0), time(w[1]).0);
    }
    // The generic reader gives the same blocks.
    let generic: Vec<_> = Reader::new(&data, &Options::default())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(generic, blocks);
}

#[test]
fn speech_mono_24k_20ms() {
    single_stream("speech_mono_24k_20ms.opus");
}

#[test]
fn speech_mono_24k_60ms() {
    single_stream("speech_mono_24k_60ms.opus");
}

#[test]
fn tone_stereo_64k_20ms() {
    single_stream("tone_stereo_64k_20ms.opus");
}

#[test]
fn tone_stereo_64k_60ms() {
    single_stream("tone_stereo_64k_60ms.opus");
}

#[test]
fn packet_spanning_pages_from_ffmpeg() {
    single_stream("span_ffmpeg.opus");
    let data = read("span_ffmpeg.opus");
    let (blocks, _) = read_blocks(&data, &Options::default());
    let spanning: Vec<_> = blocks.iter().filter(|b| info(b).spans_pages).collect();
    assert_eq!(spanning.len(), 1);
    assert!(matches!(spanning[0].data, Cow::Owned(_)));
}

#[test]
fn packets_spanning_many_pages() {
    single_stream("repaged.opus");
    let data = read("repaged.opus");
    let (blocks, _) = read_blocks(&data, &Options::default());
    let spanning = blocks.iter().filter(|b| info(b).spans_pages).count();
    assert!(spanning > 40, "{spanning}");
    // The same audio as the file it was re-paged from.
    let source = read("tone_stereo_64k_60ms.opus");
    let (original, _) = blocks_of(&source);
    assert_eq!(original.len(), blocks.len());
    for (a, b) in original.iter().zip(&blocks).skip(2) {
        assert_eq!(a.data, b.data);
        assert_eq!(a.place, b.place);
    }
}

fn blocks_of(data: &[u8]) -> (Vec<Block<'_>>, OpusReader<'_>) {
    read_blocks(data, &Options::default())
}

#[test]
fn first_page_with_a_non_zero_start() {
    single_stream("offset_start.opus");
    let data = read("offset_start.opus");
    let (blocks, _) = blocks_of(&data);
    // The stream starts 4800 samples in, less the pre-skip (RFC 7845 §4.5).
    assert_eq!(time(&blocks[2]).0, 4800 - 312);
}

#[test]
fn end_trimming_cuts_the_last_block() {
    let data = read("speech_mono_24k_20ms.opus");
    let (blocks, _) = blocks_of(&data);
    let last = blocks.last().unwrap();
    let i = info(last);
    assert_eq!(i.duration, 960);
    assert!(i.trimmed > 0);
    assert_eq!(time(last).1, i.duration - i.trimmed);
    // The stream ends exactly at the last granule position less the pre-skip.
    let (start, duration) = time(last);
    assert_eq!(start + i64::from(duration), i.granule_position - 312);
}

#[test]
fn multiplexed_streams() {
    let data = read("multiplexed.opus");
    let a0 = ffprobe("multiplexed.opus.packets.csv");
    let a1 = ffprobe("multiplexed.opus.a1.packets.csv");
    let infos = opusinfo("multiplexed.opus.opusinfo.txt");
    assert_eq!(infos.len(), 2);

    for (serial, probe, info) in [
        (None, &a0, &infos[0]),
        (Some(infos[1].serial), &a1, &infos[1]),
    ] {
        let options = Options::default().with_ogg_serial(serial);
        let (blocks, reader) = read_blocks(&data, &options);
        let audio: Vec<_> = blocks
            .iter()
            .filter(|b| b.kind == BlockKind::Audio)
            .collect();
        check_against_ffprobe(&audio, probe, 0);
        check_against_opusinfo(&reader, &audio, info);
        check_offsets(&data, &blocks);
        assert!(blocks.iter().all(|b| self::info(b).serial == info.serial));
        // Every page of the other stream is reported, and nothing else is.
        let regions = reader.regions();
        assert!(!regions.is_empty());
        assert!(regions.iter().all(|r| r.kind == RegionKind::OtherStream));
        let other: u64 = regions.iter().map(|r| r.len).sum();
        let ours: u64 = blocks.iter().map(|b| b.len() as u64).sum();
        assert!(other + ours < data.len() as u64);
        for r in regions {
            let page = &data[r.offset as usize..];
            assert_eq!(&page[..4], b"OggS");
            let serial = u32::from_le_bytes(page[14..18].try_into().unwrap());
            assert_ne!(serial, info.serial);
        }
    }
}

#[test]
fn chained_streams_continue_the_timeline() {
    let data = read("chained.opus");
    let probe = ffprobe("chained.opus.packets.csv");
    let infos = opusinfo("chained.opus.opusinfo.txt");
    assert_eq!(infos.len(), 2);
    let (blocks, reader) = blocks_of(&data);
    // Each link yields its two headers, then its audio.
    let kinds: Vec<_> = blocks.iter().map(|b| info(b).packet).collect();
    let heads: Vec<_> = kinds
        .iter()
        .enumerate()
        .filter(|(_, k)| **k == PacketKind::Head)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(heads.len(), 2);
    let (link0, link1) = blocks.split_at(heads[1]);
    assert_eq!(kinds[heads[1] + 1], PacketKind::Tags);
    let audio0: Vec<_> = link0[2..].iter().collect();
    let audio1: Vec<_> = link1[2..].iter().collect();
    assert!(audio0
        .iter()
        .all(|b| info(b).link == 0 && info(b).serial == infos[0].serial));
    assert!(audio1
        .iter()
        .all(|b| info(b).link == 1 && info(b).serial == infos[1].serial));
    // ffprobe lists both links under one stream and restarts the second at -pre_skip; here the
    // second link continues where the first one's output ended.
    let (probe0, probe1) = probe.split_at(audio0.len());
    check_against_ffprobe(&audio0, probe0, 0);
    let last = probe0.last().unwrap();
    let link0_end = last.pts + i64::from(last.duration);
    check_against_ffprobe(&audio1, probe1, link0_end);
    check_against_opusinfo(&reader, &audio1, &infos[1]);
    check_offsets(&data, &blocks);
    assert!(reader.regions().is_empty());

    // Asking for the first serial reads the first link only; the second is another stream.
    let options = Options::default().with_ogg_serial(Some(infos[0].serial));
    let (only0, reader) = read_blocks(&data, &options);
    assert_eq!(only0.len(), link0.len());
    assert_eq!(
        reader.regions(),
        &[cff_blocks::Region {
            offset: link1[0].offset - 28,
            len: data.len() as u64 - (link1[0].offset - 28),
            kind: RegionKind::OtherStream
        }]
    );
}
