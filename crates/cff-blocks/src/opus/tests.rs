//! Tests of the Ogg Opus reader on pages built by hand.

#![allow(clippy::unwrap_used)]

use std::borrow::Cow;

use super::timestamps::packet_samples;
use super::*;
use crate::ogg::tests::{lacing_for, page};
use crate::ogg::{FLAG_BOS, FLAG_CONTINUED, FLAG_EOS};
use crate::{Block, BlockKind, Detail, Error, Limits, Options, Place, Region, RegionKind, Result};

const SERIAL: u32 = 0x00DD_BA11;
/// CELT fullband 20 ms, mono, one frame (RFC 6716 Table 2: config 31).
const TOC_20MS: u8 = 31 << 3;

fn opus_head(channels: u8, pre_skip: u16) -> Vec<u8> {
    let mut h = b"OpusHead".to_vec();
    h.push(1);
    h.push(channels);
    h.extend_from_slice(&pre_skip.to_le_bytes());
    h.extend_from_slice(&48_000u32.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes());
    h.push(0);
    h
}

fn opus_tags(vendor: &[u8], comments: &[&[u8]]) -> Vec<u8> {
    let mut t = b"OpusTags".to_vec();
    t.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    t.extend_from_slice(vendor);
    t.extend_from_slice(&(comments.len() as u32).to_le_bytes());
    for c in comments {
        t.extend_from_slice(&(c.len() as u32).to_le_bytes());
        t.extend_from_slice(c);
    }
    t
}

/// An audio packet of `len` bytes: a 20 ms TOC then filler that names the packet.
fn audio(len: usize, tag: u8) -> Vec<u8> {
    let mut p = vec![tag; len];
    p[0] = TOC_20MS;
    p
}

/// The two header pages of a stream.
fn headers(serial: u32, pre_skip: u16) -> Vec<u8> {
    let head = opus_head(1, pre_skip);
    let tags = opus_tags(b"hand-made", &[b"A=b"]);
    let mut f = page(FLAG_BOS, 0, serial, 0, &lacing_for(&[head.len()]), &head);
    f.extend(page(0, 0, serial, 1, &lacing_for(&[tags.len()]), &tags));
    f
}

/// One page holding whole packets.
fn packets_page(flags: u8, granule: i64, serial: u32, seq: u32, pkts: &[Vec<u8>]) -> Vec<u8> {
    let sizes: Vec<usize> = pkts.iter().map(Vec::len).collect();
    page(
        flags,
        granule,
        serial,
        seq,
        &lacing_for(&sizes),
        &pkts.concat(),
    )
}

fn read<'a>(data: &'a [u8], options: &Options) -> (Vec<Block<'a>>, Option<Error>, Vec<Region>) {
    let mut reader = OpusReader::new(data, options).unwrap();
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
    assert!(reader.next().is_none(), "the reader stops after an error");
    (blocks, error, reader.regions().to_vec())
}

fn info<'b>(b: &'b Block<'_>) -> &'b PacketInfo {
    match &b.detail {
        Detail::Opus(i) => i,
        _ => panic!("not opus"),
    }
}

fn time(b: &Block<'_>) -> (i64, u32) {
    match b.place {
        Place::Time {
            start,
            duration,
            rate,
        } => {
            assert_eq!(rate, 48_000);
            (start, duration)
        }
        _ => panic!("no time"),
    }
}

#[test]
fn toc_configurations() {
    // RFC 6716 Table 2, one row per mode and the edges of each.
    let cases = [
        (0u8, Mode::Silk, Bandwidth::Narrowband, 480),
        (3, Mode::Silk, Bandwidth::Narrowband, 2880),
        (5, Mode::Silk, Bandwidth::Mediumband, 960),
        (10, Mode::Silk, Bandwidth::Wideband, 1920),
        (12, Mode::Hybrid, Bandwidth::SuperWideband, 480),
        (15, Mode::Hybrid, Bandwidth::Fullband, 960),
        (16, Mode::Celt, Bandwidth::Narrowband, 120),
        (21, Mode::Celt, Bandwidth::Wideband, 240),
        (26, Mode::Celt, Bandwidth::SuperWideband, 480),
        (31, Mode::Celt, Bandwidth::Fullband, 960),
    ];
    for (config, mode, bandwidth, frame_size) in cases {
        let toc = Toc::new(config << 3 | 0x04 | 2);
        assert_eq!(toc.config(), config);
        assert_eq!(toc.mode(), mode, "config {config}");
        assert_eq!(toc.bandwidth(), bandwidth, "config {config}");
        assert_eq!(toc.frame_size(), frame_size, "config {config}");
        assert!(toc.stereo());
        assert_eq!(toc.code(), 2);
    }
    assert_eq!(Bandwidth::Fullband.hz(), 20_000);
}

#[test]
fn the_parser_and_the_timestamps_count_frames_alike() {
    for byte in 0..=255u8 {
        let toc = Toc::new(byte);
        for count_byte in [0u8, 1, 2, 3, 6, 48, 0x40 | 2, 0x80 | 3] {
            // Long enough for any layout; lengths unchecked (as in a multistream stream), so
            // only the frame count and the 120 ms limit decide.
            let mut packet = vec![byte, count_byte];
            packet.resize(400, 0);
            let count = toc.frame_count(Some(count_byte)).unwrap();
            let samples = toc.samples(count);
            let valid = count > 0 && samples <= MAX_PACKET_SAMPLES;
            match parse_packet(&packet, false) {
                Ok((_, frames)) => assert_eq!(frames.count, count, "TOC {byte:#04x}"),
                Err(_) => assert!(!valid, "TOC {byte:#04x}, count byte {count_byte:#04x}"),
            }
            let timed = packet_samples(Some(byte), Some(count_byte));
            assert_eq!(timed, valid.then_some(samples), "TOC {byte:#04x}");
        }
    }
    // Code 3 without its count byte has no frame count.
    assert_eq!(Toc::new(3).frame_count(None), None);
    assert_eq!(Toc::new(2).frame_count(None), Some(2));
}

#[test]
fn frame_count_codes() {
    let t = TOC_20MS;
    // Code 0: one frame.
    let (toc, f) = parse_packet(&[t, 1, 2, 3], true).unwrap();
    assert_eq!((toc.code(), f.count), (0, 1));
    // A TOC alone is a valid packet: one zero-length frame (PLC, RFC 7845 §4.1).
    assert_eq!(parse_packet(&[t], true).unwrap().1.count, 1);
    // Code 1: two frames of equal size, so an even payload (RFC 6716 §3.4 R3).
    assert_eq!(parse_packet(&[t | 1, 1, 2], true).unwrap().1.count, 2);
    assert!(parse_packet(&[t | 1, 1, 2, 3], true).is_err());
    // Code 2: the first frame's length, then both frames (R4).
    assert_eq!(parse_packet(&[t | 2, 2, 9, 9, 8], true).unwrap().1.count, 2);
    assert!(parse_packet(&[t | 2, 5, 9], true).is_err());
    assert!(parse_packet(&[t | 2], true).is_err());
    // Two-byte frame length: 252 + 4·1 = 256 bytes.
    let mut p = vec![t | 2, 252, 1];
    p.extend(vec![0u8; 256 + 3]);
    assert!(parse_packet(&p, true).is_ok());
    // Over 1275 bytes in one frame breaks R2.
    assert!(parse_packet(&vec![t; 1277], true).is_err());
    assert!(parse_packet(&vec![t; 1277], false).is_ok());
}

#[test]
fn code_3_packets() {
    let t = TOC_20MS | 3;
    // CBR, 3 frames of 2 bytes.
    let (_, f) = parse_packet(&[t, 3, 1, 1, 2, 2, 3, 3], true).unwrap();
    assert_eq!((f.count, f.vbr, f.padding), (3, false, 0));
    // CBR whose payload does not split into equal frames (R6).
    assert!(parse_packet(&[t, 3, 1, 1, 2, 2, 3], true).is_err());
    // Padding: flag 0x40, length bytes 255 (254 bytes, more follow) then 2: 256 bytes.
    let mut p = vec![t, 0x40 | 2, 255, 2];
    p.extend(vec![7u8; 4]); // two frames of 2 bytes
    p.extend(vec![0u8; 256]);
    let (_, f) = parse_packet(&p, true).unwrap();
    assert_eq!((f.count, f.padding), (2, 256));
    // Padding longer than the packet (R6).
    assert!(parse_packet(&p[..p.len() - 1], true).is_err());
    // VBR: frame lengths 1 and 2 given, the last frame takes the rest.
    let (_, f) = parse_packet(&[t, 0x80 | 3, 1, 2, 9, 8, 8, 7, 7, 7], true).unwrap();
    assert_eq!((f.count, f.vbr), (3, true));
    assert!(parse_packet(&[t, 0x80 | 3, 1, 9, 9], true).is_err()); // R7
                                                                   // No frames, or more than 120 ms (R5): 7 × 20 ms.
    assert!(parse_packet(&[t, 0], true).is_err());
    assert!(parse_packet(&[t, 7], false).is_err());
    assert!(parse_packet(&[t, 6], false).is_ok());
    // 48 frames of 2.5 ms is exactly 120 ms.
    assert_eq!(
        parse_packet(&[(16 << 3) | 3, 48], false).unwrap().1.count,
        48
    );
    // Code 3 needs its count byte; nothing at all is not a packet (R1).
    assert!(parse_packet(&[t], false).is_err());
    assert!(parse_packet(&[], false).is_err());
    assert_eq!(packet_samples(Some(t), Some(6)), Some(5760));
    assert_eq!(packet_samples(Some(t), Some(7)), None);
    assert_eq!(packet_samples(Some(t), None), None);
}

/// A stream with packets inside pages, one spanning three pages, a page where no packet
/// ends (granule -1), EOS with end trimming.
fn spanning_stream() -> (Vec<u8>, Vec<Vec<u8>>) {
    let big = audio(700, 0xBB); // lacing 255 255 190
    let p1 = audio(10, 1);
    let p2 = audio(20, 2);
    let p3 = audio(30, 3);
    let mut f = headers(SERIAL, 312);
    // Page 2: p1 whole, then the first 255 bytes of `big`. One packet ends: 960.
    let mut body = p1.clone();
    body.extend_from_slice(&big[..255]);
    f.extend(page(0, 960, SERIAL, 2, &[10, 255], &body));
    // Page 3: the next 255 bytes only; nothing ends here.
    f.extend(page(FLAG_CONTINUED, -1, SERIAL, 3, &[255], &big[255..510]));
    // Page 4: the last 190 bytes of `big`, then p2. Two packets end: 960 + 2·960.
    let mut body = big[510..].to_vec();
    body.extend_from_slice(&p2);
    f.extend(page(FLAG_CONTINUED, 2880, SERIAL, 4, &[190, 20], &body));
    // Page 5 (EOS): p3, trimmed to 500 of its 960 samples.
    f.extend(packets_page(
        FLAG_EOS,
        2880 + 500,
        SERIAL,
        5,
        std::slice::from_ref(&p3),
    ));
    (f, vec![p1, big, p2, p3])
}

/// Reads `f` with `for_each_block` and requires the iterator's blocks (as records), error
/// and regions; returns the records and the error.
fn check_for_each(f: &[u8], options: &Options) -> (usize, Option<Error>) {
    let (blocks, err, regions) = read(f, options);
    let mut reader = OpusReader::new(f, options).unwrap();
    let mut records = Vec::new();
    let result = reader.for_each_block(|r| {
        records.push((r.index, r.offset, r.data.to_vec(), r.kind, r.place(), r.toc))
    });
    let expected: Vec<_> = blocks
        .iter()
        .map(|b| {
            (
                b.index,
                b.offset,
                b.data.to_vec(),
                b.kind,
                b.place,
                info(b).toc,
            )
        })
        .collect();
    assert_eq!(records, expected);
    let result = result.err();
    assert_eq!(
        result.as_ref().map(ToString::to_string),
        err.as_ref().map(ToString::to_string)
    );
    assert_eq!(reader.regions(), regions);
    (records.len(), result)
}

#[test]
fn for_each_block_gives_the_iterators_blocks_and_errors_inside_a_page() {
    let code1 = |len: usize, tag: u8| {
        let mut p = audio(len, tag);
        p[0] = TOC_20MS | 1;
        p
    };
    // Code 3, CBR, 3 frames of 20 ms, no padding (RFC 6716 §3.2.5).
    let code3 = vec![TOC_20MS | 3, 3, 7, 7, 7];
    // The packets of the first audio page go through the page loop (the iterator takes the
    // first through its general path): valid ones of every kind the loop handles itself or
    // hands to the general parser, then each invalid kind, which must end the scan with the
    // iterator's error.
    let valid = [
        ("code 1", code1(9, 3), 1920),
        ("code 3", code3, 2880),
        ("two segments", audio(600, 4), 960),
    ];
    for (what, packet, samples) in valid {
        let mut f = headers(SERIAL, 0);
        let pkts = [audio(5, 1), audio(5, 2), packet, audio(5, 5)];
        f.extend(packets_page(0, 2880 + samples, SERIAL, 2, &pkts));
        f.extend(packets_page(
            FLAG_EOS,
            3840 + samples,
            SERIAL,
            3,
            &pkts[..1],
        ));
        let (records, err) = check_for_each(&f, &Options::default());
        assert!(err.is_none(), "{what}: {err:?}");
        assert_eq!(records, 7, "{what}");
    }
    let invalid = [
        ("empty", vec![]),
        ("code 1 of odd length", code1(6, 3)),
        ("code 3 without frames", vec![TOC_20MS | 3, 0]),
        ("code 0 frame of 1276 bytes", audio(1277, 3)),
    ];
    for (what, packet) in invalid {
        let mut f = headers(SERIAL, 0);
        let pkts = [audio(5, 1), audio(5, 2), packet, audio(5, 5)];
        // A granule position above the samples of any of these pages (RFC 7845 §4.5).
        f.extend(packets_page(0, 10_000, SERIAL, 2, &pkts));
        let (records, err) = check_for_each(&f, &Options::default());
        assert!(
            matches!(err, Some(Error::Malformed { .. })),
            "{what}: {err:?}"
        );
        assert_eq!(records, 4, "{what}");
    }
}

#[test]
fn block_record_is_compact_and_converts_like_a_block() {
    assert_eq!(std::mem::size_of::<BlockRecord<'_>>(), 48);
    let (f, _) = spanning_stream();
    let mut reader = OpusReader::new(&f, &Options::default()).unwrap();
    let mut records = Vec::new();
    reader
        .for_each_block(|r| records.push((r.kind, r.time_seconds(), r.duration_seconds(), r.len())))
        .unwrap();
    assert_eq!(records[0], (BlockKind::Metadata, None, None, 19));
    // The packet spanning pages: an owned buffer lent for the call.
    assert_eq!(
        records[3],
        (BlockKind::Audio, Some(648.0 / 48_000.0), Some(0.02), 700)
    );
    assert_eq!(records[5].2, Some(500.0 / 48_000.0), "end trimming");
    assert_eq!(check_for_each(&f, &Options::default()).0, 6);
}

#[test]
fn packets_in_and_across_pages() {
    let (f, pkts) = spanning_stream();
    let (blocks, err, regions) = read(&f, &Options::default());
    assert!(err.is_none(), "{err:?}");
    assert!(regions.is_empty());
    assert_eq!(blocks.len(), 6);
    assert_eq!(info(&blocks[0]).packet, PacketKind::Head);
    assert_eq!(info(&blocks[1]).packet, PacketKind::Tags);
    let audio = &blocks[2..];
    for (b, p) in audio.iter().zip(&pkts) {
        assert_eq!(b.data.as_ref(), p.as_slice());
        assert_eq!(b.kind, BlockKind::Audio);
    }
    assert!(matches!(audio[0].data, Cow::Borrowed(_)));
    assert!(matches!(audio[1].data, Cow::Owned(_)));
    assert!(info(&audio[1]).spans_pages && !info(&audio[0]).spans_pages);
    assert_eq!(info(&audio[1]).page_sequence, 4);
    assert_eq!(info(&audio[1]).granule_position, 2880);
    // Offsets point at each packet's first byte in the file.
    for b in audio {
        assert_eq!(f[b.offset as usize], TOC_20MS);
        assert_eq!(f[b.offset as usize + 1], b.data[1]);
    }
    // Timeline: 0..960, 960..1920, 1920..2880, then 2880..3380 trimmed; less pre-skip.
    let times: Vec<_> = audio.iter().map(time).collect();
    assert_eq!(times, [(-312, 960), (648, 960), (1608, 960), (2568, 500)]);
    assert_eq!(info(&audio[3]).trimmed, 460);
    assert!(audio.iter().all(|b| !info(b).after_gap));
    let toc = info(&audio[0]).toc.unwrap();
    assert_eq!((toc.mode(), toc.frame_size()), (Mode::Celt, 960));
}

#[test]
fn block_size_limit_is_enforced_before_assembly() {
    let (f, _) = spanning_stream();
    let options = Options::default().with_limits(Limits::default().with_max_block_bytes(600));
    let (blocks, err, _) = read(&f, &options);
    // p1 then the error at the big packet, as soon as its second piece would pass 600.
    assert_eq!(blocks.len(), 3);
    let big_offset = blocks[2].offset + 10;
    assert!(
        matches!(err, Some(Error::Limit { what: "max_block_bytes", limit: 600, found: 700, offset })
            if offset == big_offset),
        "{err:?}"
    );
}

#[test]
fn block_count_limit() {
    let (f, _) = spanning_stream();
    let options = Options::default().with_limits(Limits::default().with_max_blocks(4));
    let (blocks, err, _) = read(&f, &options);
    assert_eq!(blocks.len(), 4);
    assert!(matches!(
        err,
        Some(Error::Limit {
            what: "max_blocks",
            limit: 4,
            found: 5,
            ..
        })
    ));
}

#[test]
fn bad_crc_page_is_skipped_as_garbage_and_marks_a_gap() {
    let mut f = headers(SERIAL, 0);
    let a = packets_page(0, 960, SERIAL, 2, &[audio(5, 1)]);
    let b = packets_page(0, 1920, SERIAL, 3, &[audio(5, 2)]);
    let c = packets_page(FLAG_EOS, 2880, SERIAL, 4, &[audio(5, 3)]);
    f.extend(&a);
    let b_at = f.len();
    f.extend(&b);
    f.extend(&c);
    f[b_at + 30] ^= 0xFF; // byte 2 of the packet on page b
    let (blocks, err, regions) = read(&f, &Options::default());
    assert!(err.is_none());
    assert_eq!(blocks.len(), 4);
    assert_eq!(
        regions,
        [Region {
            offset: b_at as u64,
            len: b.len() as u64,
            kind: RegionKind::Garbage
        }]
    );
    let last = &blocks[3];
    assert!(info(last).after_gap && !info(&blocks[2]).after_gap);
    // The granule position still places the packet after the lost one.
    assert_eq!(time(last), (1920, 960));

    // Without verification the damaged page is read.
    let (blocks, err, regions) = read(&f, &Options::default().with_verify_crc(false));
    assert!(err.is_none() && regions.is_empty());
    assert_eq!(blocks.len(), 5);
    assert_eq!(blocks[3].data[2], 2 ^ 0xFF);
}

#[test]
fn resynchronises_over_garbage_between_pages() {
    let mut f = headers(SERIAL, 0);
    f.extend(packets_page(0, 960, SERIAL, 2, &[audio(5, 1)]));
    let junk_at = f.len();
    f.extend_from_slice(b"\0\0OggS\0garbage OggS");
    f.extend(packets_page(FLAG_EOS, 1920, SERIAL, 3, &[audio(5, 2)]));
    f.extend_from_slice(&[0xFF; 7]);
    let (blocks, err, regions) = read(&f, &Options::default());
    assert!(err.is_none(), "{err:?}");
    assert_eq!(blocks.len(), 4);
    assert!(!info(&blocks[3]).after_gap);
    assert_eq!(regions.len(), 2);
    assert_eq!(
        (regions[0].offset, regions[0].len, regions[0].kind),
        (junk_at as u64, 19, RegionKind::Garbage)
    );
    assert_eq!((regions[1].len, regions[1].kind), (7, RegionKind::Trailing));
}

#[test]
fn sequence_gap_drops_the_broken_packet() {
    // Page 2 leaves a packet open; page 3 (its continuation) is missing; page 4 starts with
    // the continued rest, which cannot be joined.
    let mut f = headers(SERIAL, 0);
    let mut body = audio(5, 1);
    body.extend(vec![9u8; 255]);
    f.extend(page(0, 960, SERIAL, 2, &[5, 255], &body));
    let mut body = vec![9u8; 10];
    body.extend(audio(6, 2));
    f.extend(page(
        FLAG_CONTINUED | FLAG_EOS,
        2880,
        SERIAL,
        4,
        &[10, 6],
        &body,
    ));
    let (blocks, err, _) = read(&f, &Options::default());
    assert!(err.is_none(), "{err:?}");
    assert_eq!(blocks.len(), 4);
    assert_eq!(blocks[3].data.len(), 6);
    assert!(info(&blocks[3]).after_gap);
    assert_eq!(time(&blocks[3]), (1920, 960));
}

#[test]
fn stream_without_eos_and_truncated_final_page() {
    let mut f = headers(SERIAL, 0);
    f.extend(packets_page(0, 960, SERIAL, 2, &[audio(5, 1)]));
    let (blocks, err, _) = read(&f, &Options::default());
    assert!(err.is_none(), "no EOS is not an error");
    assert_eq!(blocks.len(), 3);

    let cut_at = f.len();
    f.extend(packets_page(FLAG_EOS, 1920, SERIAL, 3, &[audio(50, 2)]));
    f.truncate(f.len() - 20);
    let (blocks, err, _) = read(&f, &Options::default());
    assert_eq!(blocks.len(), 3, "the blocks before the cut stand");
    assert!(
        matches!(err, Some(Error::Truncated { offset, .. }) if offset == cut_at as u64),
        "{err:?}"
    );
}

#[test]
fn packet_continued_past_the_last_page() {
    let mut f = headers(SERIAL, 0);
    f.extend(page(0, -1, SERIAL, 2, &[255], &audio(255, 1)));
    let (blocks, err, _) = read(&f, &Options::default());
    assert_eq!(blocks.len(), 2);
    assert!(matches!(err, Some(Error::Truncated { .. })), "{err:?}");
}

#[test]
fn first_audio_page_granule_rules() {
    // RFC 7845 §4.5: a first audio page with fewer samples in its granule position than in
    // its packets is invalid, unless it is also the last page (then it is end trimming).
    let mut f = headers(SERIAL, 0);
    f.extend(packets_page(
        0,
        1000,
        SERIAL,
        2,
        &[audio(5, 1), audio(5, 2)],
    ));
    let (blocks, err, _) = read(&f, &Options::default());
    assert_eq!(blocks.len(), 2);
    assert!(matches!(err, Some(Error::Malformed { .. })), "{err:?}");

    let mut f = headers(SERIAL, 0);
    f.extend(packets_page(
        FLAG_EOS,
        1000,
        SERIAL,
        2,
        &[audio(5, 1), audio(5, 2)],
    ));
    let (blocks, err, _) = read(&f, &Options::default());
    assert!(err.is_none());
    assert_eq!(time(&blocks[2]), (0, 960));
    assert_eq!(time(&blocks[3]), (960, 40));
}

#[test]
fn positions_saturate_at_the_top_of_i64() {
    // A hostile granule position at i64::MAX: the first page's three packets end exactly
    // there; the next page's packets start there and can play nothing (positions saturate
    // instead of wrapping). The hot path hands such packets to the saturating arithmetic.
    let pkts = [audio(5, 1), audio(5, 2), audio(5, 3)];
    let mut f = headers(SERIAL, 100);
    f.extend(packets_page(0, i64::MAX, SERIAL, 2, &pkts));
    f.extend(packets_page(FLAG_EOS, -1, SERIAL, 3, &pkts[..1]));
    let (blocks, err, _) = read(&f, &Options::default());
    assert!(err.is_none(), "{err:?}");
    assert_eq!(blocks.len(), 6);
    let first = i64::MAX - 3 * 960 - 100;
    assert_eq!(time(&blocks[2]), (first, 960));
    assert_eq!(time(&blocks[4]), (first + 2 * 960, 960));
    assert_eq!(time(&blocks[5]), (i64::MAX - 100, 0));
    assert_eq!(info(&blocks[5]).trimmed, 960);
}

#[test]
fn empty_and_invalid_packets_are_malformed() {
    for bad in [vec![], vec![TOC_20MS | 3, 0]] {
        let mut f = headers(SERIAL, 0);
        f.extend(packets_page(0, 960, SERIAL, 2, &[audio(5, 1)]));
        f.extend(packets_page(
            FLAG_EOS,
            1920,
            SERIAL,
            3,
            std::slice::from_ref(&bad),
        ));
        let (blocks, err, _) = read(&f, &Options::default());
        assert_eq!(blocks.len(), 3);
        assert!(
            matches!(err, Some(Error::Malformed { .. })),
            "{bad:?}: {err:?}"
        );
    }
}

#[test]
fn headers_are_parsed() {
    let (f, _) = spanning_stream();
    let mut reader = OpusReader::new(&f, &Options::default()).unwrap();
    assert_eq!(reader.head().pre_skip, 312);
    assert_eq!(reader.head().channels, 1);
    assert_eq!(reader.serial(), SERIAL);
    assert!(reader.tags().is_none());
    reader.by_ref().take(2).for_each(drop);
    let tags = reader.tags().unwrap();
    assert_eq!((tags.vendor.as_str(), tags.comment_count), ("hand-made", 1));

    // Family 1: a mapping table.
    let mut h = opus_head(3, 0);
    h[18] = 1;
    h.extend_from_slice(&[2, 1, 0, 2, 1]);
    let head = OpusHead::parse(&h, 0).unwrap();
    assert_eq!((head.streams, head.coupled_streams), (2, 1));
    assert_eq!(head.mapping, [0, 2, 1]);
    h[23] = 3; // entry 3 ≥ 2 + 1 decoded channels
    assert!(OpusHead::parse(&h, 0).is_err());
    // Family 0 with 3 channels, zero channels, short, major version 1.
    assert!(OpusHead::parse(&opus_head(3, 0), 0).is_err());
    assert!(OpusHead::parse(&opus_head(0, 0), 0).is_err());
    assert!(OpusHead::parse(&opus_head(1, 0)[..18], 0).is_err());
    let mut v = opus_head(1, 0);
    v[8] = 0x10;
    assert!(matches!(
        OpusHead::parse(&v, 0),
        Err(Error::Unsupported { .. })
    ));
}

#[test]
fn hostile_comment_header() {
    let mut t = opus_tags(b"v", &[]);
    t[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = OpusTags::parse(&t, 47).unwrap_err();
    assert!(matches!(err, Error::Malformed { offset: 47, .. }), "{err}");
    let mut t = opus_tags(b"v", &[]);
    let n = t.len();
    t[n - 4..].copy_from_slice(&1_000_000_000u32.to_le_bytes());
    assert!(OpusTags::parse(&t, 0).is_err());
    let t = opus_tags(b"v", &[b"abc"]);
    assert!(OpusTags::parse(&t[..t.len() - 1], 0).is_err());
}

#[test]
fn chained_link_after_a_stream_without_eos() {
    // Link 0 ends without EOS; a new BOS page with OpusHead after its audio pages starts
    // link 1 (RFC 3533 §4), whose timeline continues where link 0's output ended.
    let mut f = headers(SERIAL, 100);
    f.extend(packets_page(
        0,
        1920,
        SERIAL,
        2,
        &[audio(5, 1), audio(5, 2)],
    ));
    f.extend(headers(SERIAL + 1, 200));
    f.extend(packets_page(FLAG_EOS, 960, SERIAL + 1, 2, &[audio(5, 3)]));
    // A late page of link 0 after its successor began is another stream's page.
    let late = packets_page(0, 2880, SERIAL, 3, &[audio(5, 4)]);
    f.extend(&late);
    let mut reader = OpusReader::new(&f, &Options::default()).unwrap();
    let blocks: Vec<_> = reader.by_ref().collect::<Result<_>>().unwrap();
    assert_eq!(blocks.len(), 7);
    assert_eq!(info(&blocks[4]).packet, PacketKind::Head);
    assert_eq!(
        (info(&blocks[6]).link, info(&blocks[6]).serial),
        (1, SERIAL + 1)
    );
    assert_eq!(reader.head().pre_skip, 200);
    assert_eq!(reader.serial(), SERIAL + 1);
    // Link 0 plays 1920 - 100 samples; link 1 starts there, less its own pre-skip.
    assert_eq!(time(&blocks[3]), (860, 960));
    assert_eq!(time(&blocks[6]), (1820 - 200, 960));
    assert_eq!(reader.regions().len(), 1);
    assert_eq!(reader.regions()[0].len, late.len() as u64);
}

#[test]
fn other_streams_are_regions_and_serial_selects() {
    // A Vorbis-like stream first, then the Opus stream, pages interleaved.
    let vorbis = page(FLAG_BOS, 0, 77, 0, &[7], b"\x01vorbis");
    let mut f = vorbis.clone();
    let h = headers(SERIAL, 0);
    f.extend(&h);
    let other = page(0, 5, 77, 1, &[3], b"abc");
    f.extend(&other);
    f.extend(packets_page(FLAG_EOS, 960, SERIAL, 2, &[audio(5, 1)]));
    let (blocks, err, regions) = read(&f, &Options::default());
    assert!(err.is_none());
    assert_eq!(blocks.len(), 3);
    assert_eq!(
        regions,
        [
            Region {
                offset: 0,
                len: vorbis.len() as u64,
                kind: RegionKind::OtherStream
            },
            Region {
                offset: (vorbis.len() + h.len()) as u64,
                len: other.len() as u64,
                kind: RegionKind::OtherStream
            }
        ]
    );
    // Only Vorbis: not supported.
    let err = OpusReader::new(&vorbis, &Options::default()).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("76 6f 72 62 69 73"), "{err}");
    // A serial that is not there.
    let err = OpusReader::new(&f, &Options::default().with_ogg_serial(Some(5))).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    // No Ogg at all.
    let err = OpusReader::new(b"not an ogg file", &Options::default()).unwrap_err();
    assert!(matches!(err, Error::Malformed { offset: 0, .. }), "{err}");
}
