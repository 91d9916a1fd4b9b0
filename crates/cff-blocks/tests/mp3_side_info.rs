//! Layer III side information of real encoder output (LAME 3.100, the fixtures of
//! `tests/fixtures/mp3/make.sh`), checked against rules the bitstream itself must obey rather
//! than against our own reading of it:
//!
//! - a decoder reads main data in order, so each frame's main data starts at or after the end
//!   of the previous frame's (ISO 11172-3 2.4.3.4.2: `main_data_begin` points into the
//!   reservoir, never into data a previous frame used) and ends before the frame's own end;
//! - `--nores` streams never use the reservoir (`main_data_begin` 0 in every frame);
//! - a misread field shifts every later one: `part2_3_length` sums that do not fit the frame
//!   sizes would break the first rule within a few frames.
#![allow(clippy::unwrap_used)]

use cff_blocks::mp3::{MainData, SideInfo};
use cff_blocks::{BlockKind, Detail, Options, Reader};

mod common;

fn fixture(name: &str) -> Vec<u8> {
    common::fixture_in("mp3", name)
}

const FILES: [&str; 10] = common::LAME_FIXTURES;

/// What one fixture's frames add up to.
#[derive(Debug, Default)]
struct Walk {
    frames: usize,
    max_begin: u16,
    window_switching: usize,
    main_data_bytes: usize,
}

fn walk(name: &str) -> Walk {
    let data = fixture(name);
    let mut reservoir = MainData::new();
    let mut stream_bytes = 0usize; // main-data bytes of the frames before this one
    let mut previous_end = 0usize; // where the previous frame's own main data ended
    let mut w = Walk::default();
    for block in Reader::new(&data, &Options::default()).unwrap() {
        let block = block.unwrap();
        if block.kind != BlockKind::Audio {
            continue;
        }
        let Detail::Mp3(info) = block.detail else {
            panic!("{name}: not an MP3 frame")
        };
        let side = SideInfo::parse(&block.data, block.offset)
            .unwrap_or_else(|e| panic!("{name} frame at {}: {e}", block.offset));
        // The reader's own fast read of main_data_begin agrees with the bit-level parse.
        assert_eq!(side.main_data_begin, info.main_data_begin, "{name}");
        let own = block.len() - info.header.side_info_offset() - info.header.side_info_len();
        let begin = usize::from(side.main_data_begin);
        assert!(
            begin <= stream_bytes,
            "{name} frame {}: main data {begin} bytes back, only {stream_bytes} exist",
            w.frames
        );
        let start = stream_bytes - begin;
        let end = start + (side.main_data_bits() as usize).div_ceil(8);
        assert!(
            start >= previous_end,
            "{name} frame {}: main data starts at {start}, the previous ended at {previous_end}",
            w.frames
        );
        assert!(
            end <= stream_bytes + own,
            "{name} frame {}: main data ends at {end}, past the frame's end {}",
            w.frames,
            stream_bytes + own
        );
        let got = reservoir.push(&block.data, &side, block.offset).unwrap();
        assert_eq!(got.map(<[u8]>::len), Some(end - start), "{name}");
        for g in side.granules() {
            assert!(g.big_values <= 288);
            if g.window_switching {
                w.window_switching += 1;
                assert_ne!(g.block_type, 0);
            }
        }
        previous_end = end;
        stream_bytes += own;
        w.frames += 1;
        w.max_begin = w.max_begin.max(side.main_data_begin);
        w.main_data_bytes += end - start;
    }
    w
}

#[test]
fn every_fixture_frame_obeys_the_reservoir_rules() {
    for name in FILES {
        let w = walk(name);
        assert!(w.frames > 10, "{name}: {w:?}");
        assert!(w.main_data_bytes > 0, "{name}: {w:?}");
        if name.starts_with("nores") {
            assert_eq!(w.max_begin, 0, "{name}: --nores uses no reservoir");
        } else {
            assert!(w.max_begin > 0, "{name}: LAME uses the reservoir: {w:?}");
        }
    }
}

#[test]
fn the_reservoir_starts_afresh_and_none_marks_an_unreachable_start() {
    // Start the reservoir in the middle of a stream: the first frame that reaches back is None.
    let data = fixture("cbr32_16k_mono.mp3");
    let blocks: Vec<_> = Reader::new(&data, &Options::default())
        .unwrap()
        .map(Result::unwrap)
        .filter(|b| b.kind == BlockKind::Audio)
        .collect();
    let (i, first) = blocks
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, b)| SideInfo::parse(&b.data, b.offset).unwrap().main_data_begin > 0)
        .unwrap();
    let mut reservoir = MainData::new();
    let side = SideInfo::parse(&first.data, first.offset).unwrap();
    assert_eq!(
        reservoir.push(&first.data, &side, first.offset).unwrap(),
        None
    );
    // The next frames come back once what they reach for is there.
    let mut some = 0;
    for b in &blocks[i + 1..] {
        let side = SideInfo::parse(&b.data, b.offset).unwrap();
        if reservoir.push(&b.data, &side, b.offset).unwrap().is_some() {
            some += 1;
        }
    }
    assert!(
        some + 2 >= blocks.len() - i - 1,
        "{some} of {}",
        blocks.len() - i - 1
    );
}
