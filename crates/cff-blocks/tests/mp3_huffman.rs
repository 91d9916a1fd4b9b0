//! The entropy decoding of Layer III main data (`cff_blocks::mp3::decode_granules`) on real
//! encoder output (LAME 3.100, the fixtures of `tests/fixtures/mp3/make.sh`: MPEG-1, 2 and 2.5,
//! mono and joint stereo, CRC, VBR, the 8 kHz band layout), checked against the bitstream's own
//! bookkeeping rather than against our reading of it: each granule's scalefactors and Huffman
//! codewords must end at exactly the `part2_3_length` the encoder wrote in the side
//! information. One wrong codeword or band edge shifts every later codeword of the granule, so
//! the count would be off, unless the count1 region's free length absorbs the shift; so two
//! rules of LAME's own choices are checked too (no trailing all-zero quadruple; the last four
//! big-value lines hold a magnitude above 1, since LAME starts the count1 region at the
//! longest tail of quadruples within ±1).
#![allow(clippy::unwrap_used)]

use cff_blocks::mp3::{decode_granules, Granule, GranuleLines, MainData, SideInfo, LINES};
use cff_blocks::{BlockKind, Options, Reader};

mod common;

fn fixture(name: &str) -> Vec<u8> {
    common::fixture_in("mp3", name)
}

const FILES: [&str; 10] = common::LAME_FIXTURES;

#[derive(Debug, Default)]
struct Count {
    granules: usize,
    exact: usize,
    nonzero_lines: usize,
    big_linbits: usize,
    short: usize,
    /// Granules that keep the first of [`lame_rules`].
    last_quad_nonzero: usize,
    /// Granules with at least 4 big-value lines that keep the second.
    big_tail_above_one: usize,
    big_granules: usize,
}

/// Two choices LAME makes in every granule it writes, which a misdecoded granule breaks too:
/// its last coded quadruple is not all zero (an encoder does not code zeros that the zero
/// region would give for free), and, with 4 or more big-value lines, the last four of them
/// hold a magnitude above 1 (LAME starts the count1 region at the longest tail of quadruples
/// within ±1; `None` with fewer).
fn lame_rules(g: &Granule, l: &GranuleLines) -> (bool, Option<bool>) {
    let coded = usize::from(l.coded);
    let last_quad = &l.lines[coded.saturating_sub(4)..coded];
    let big = usize::from(g.big_values) * 2;
    (
        coded == 0 || last_quad.iter().any(|&v| v != 0),
        (big >= 4).then(|| l.lines[big - 4..big].iter().any(|&v| v.abs() > 1)),
    )
}

/// Decodes every frame of `data` whose main data is in the file and counts what it finds.
fn decode_all(name: &str, data: &[u8]) -> Count {
    let mut reservoir = MainData::new();
    let mut c = Count::default();
    for block in Reader::new(data, &Options::default()).unwrap() {
        let block = block.unwrap();
        if block.kind != BlockKind::Audio {
            continue;
        }
        let side = SideInfo::parse(&block.data, block.offset).unwrap();
        let Some(own) = reservoir.push(&block.data, &side, block.offset).unwrap() else {
            continue;
        };
        let lines = decode_granules(&side, own, block.offset)
            .unwrap_or_else(|e| panic!("{name} frame at {}: {e}", block.offset));
        for gr in 0..usize::from(side.granules) {
            for ch in 0..usize::from(side.channels) {
                let g = &side.granule[gr][ch];
                let l = &lines[gr][ch];
                c.granules += 1;
                c.exact += usize::from(l.bits_read == g.part2_3_length);
                assert!(usize::from(l.coded) <= LINES);
                assert!(usize::from(l.coded) >= usize::from(g.big_values) * 2);
                c.nonzero_lines += l.lines.iter().filter(|&&v| v != 0).count();
                c.big_linbits += l.lines.iter().filter(|&&v| v.abs() > 15).count();
                c.short += usize::from(g.window_switching && g.block_type == 2);
                let (last_quad, big_tail) = lame_rules(g, l);
                c.last_quad_nonzero += usize::from(last_quad);
                if let Some(above_one) = big_tail {
                    c.big_granules += 1;
                    c.big_tail_above_one += usize::from(above_one);
                }
            }
        }
    }
    c
}

#[test]
fn every_granule_of_every_fixture_ends_at_part2_3_length() {
    let mut total = Count::default();
    for name in FILES {
        let c = decode_all(name, &fixture(name));
        assert!(c.granules > 10, "{name}: {c:?}");
        assert_eq!(c.exact, c.granules, "{name}: {c:?}");
        assert!(c.nonzero_lines > c.granules, "{name}: {c:?}");
        // Rules of LAME's own choices, which a misdecoded granule breaks too.
        assert_eq!(c.last_quad_nonzero, c.granules, "{name}: {c:?}");
        assert_eq!(c.big_tail_above_one, c.big_granules, "{name}: {c:?}");
        total.granules += c.granules;
        total.nonzero_lines += c.nonzero_lines;
        total.big_linbits += c.big_linbits;
        total.short += c.short;
    }
    // The fixtures reach the escape (linbits) tables and short blocks, so those paths are
    // covered by the rule above too.
    assert!(total.big_linbits > 0, "{total:?}");
    assert!(total.short > 0, "{total:?}");
}

#[test]
fn a_wrong_table_breaks_the_rules() {
    // Stands in for a mistyped table: each frame in turn is decoded with its first region's
    // table swapped for a neighbour of the same shape. The rules above must notice that in
    // most frames (71 of 83 when written; a frame whose first region is empty cannot show it,
    // and Huffman codes fall back into step within a few codewords).
    let name = "cbr32_16k_mono.mp3";
    let data = fixture(name);
    let swap = |t: u8| match t {
        2 => 3,
        3 => 2,
        5 => 6,
        6 => 5,
        7 => 8,
        8 => 9,
        9 => 7,
        10 => 11,
        11 => 12,
        12 => 10,
        13 => 15,
        15 => 13,
        16..=23 => t + 8,
        24..=31 => t - 8,
        t => t,
    };
    let mut reservoir = MainData::new();
    let (mut swapped, mut noticed) = (0, 0);
    for block in Reader::new(&data, &Options::default()).unwrap() {
        let block = block.unwrap();
        if block.kind != BlockKind::Audio {
            continue;
        }
        let side = SideInfo::parse(&block.data, block.offset).unwrap();
        let Some(own) = reservoir.push(&block.data, &side, block.offset).unwrap() else {
            continue;
        };
        let mut wrong = side;
        let g = &mut wrong.granule[0][0];
        if swap(g.table_select[0]) == g.table_select[0] {
            continue;
        }
        g.table_select[0] = swap(g.table_select[0]);
        swapped += 1;
        let wrong_granule = wrong.granule[0][0];
        noticed += usize::from(match decode_granules(&wrong, own, block.offset) {
            Err(_) => true,
            Ok(lines) => {
                let l = &lines[0][0];
                let (last_quad, big_tail) = lame_rules(&wrong_granule, l);
                l.bits_read != wrong_granule.part2_3_length || !last_quad || big_tail == Some(false)
            }
        });
    }
    assert!(swapped > 20, "{swapped}");
    assert!(
        noticed * 4 >= swapped * 3,
        "{noticed} of {swapped} swaps noticed"
    );
}

#[test]
fn damaged_fixtures_give_errors_never_panics() {
    // Every fixture with bits flipped and bytes cut at places drawn from a fixed seed: the
    // side information, the reservoir and the entropy decoding must return errors or values.
    let mut state = 0x5EED_u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut decoded = 0usize;
    for name in FILES {
        let clean = fixture(name);
        for _ in 0..40 {
            let mut data = clean.clone();
            for _ in 0..1 + next() % 16 {
                let at = (next() % data.len() as u64) as usize;
                data[at] ^= 1 << (next() % 8);
            }
            if next() % 4 == 0 {
                data.truncate((next() % data.len() as u64) as usize);
            }
            let Ok(reader) = Reader::new(&data, &Options::default()) else {
                continue;
            };
            let mut reservoir = MainData::new();
            for block in reader {
                let Ok(block) = block else { break };
                if block.kind != BlockKind::Audio {
                    continue;
                }
                let Ok(side) = SideInfo::parse(&block.data, block.offset) else {
                    continue;
                };
                if let Ok(Some(own)) = reservoir.push(&block.data, &side, block.offset) {
                    if let Ok(lines) = decode_granules(&side, own, block.offset) {
                        decoded += 1;
                        assert!(lines
                            .iter()
                            .flatten()
                            .all(|g| usize::from(g.coded) <= LINES));
                    }
                }
            }
        }
    }
    assert!(decoded > 1000, "{decoded} frames decoded");
}
