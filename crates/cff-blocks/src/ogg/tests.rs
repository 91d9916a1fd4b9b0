//! Tests of the page walker and the CRC, and the page builders the Opus tests share.

#![allow(clippy::unwrap_used)]

use super::crc::table_crc32_update;
use super::*;
use crate::{Error, Region, RegionKind, Result};

/// Bit-at-a-time reference CRC straight from the definition (RFC 3533 §6).
fn crc32_bitwise(data: &[u8]) -> u32 {
    crc32_bitwise_from(0, data)
}

/// The same, continuing from the register `crc`.
fn crc32_bitwise_from(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= (b as u32) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ CRC_POLYNOMIAL
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A small deterministic generator (xorshift64*) for test data.
pub(crate) struct Rng(pub u64);
impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Builds one page with the given lacing values and body, and a correct CRC.
pub(crate) fn page(
    header_type: u8,
    granule: i64,
    serial: u32,
    sequence: u32,
    lacing: &[u8],
    body: &[u8],
) -> Vec<u8> {
    assert_eq!(
        lacing.iter().map(|&l| l as usize).sum::<usize>(),
        body.len()
    );
    let mut p = Vec::new();
    p.extend_from_slice(b"OggS");
    p.push(0);
    p.push(header_type);
    p.extend_from_slice(&granule.to_le_bytes());
    p.extend_from_slice(&serial.to_le_bytes());
    p.extend_from_slice(&sequence.to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    p.push(lacing.len() as u8);
    p.extend_from_slice(lacing);
    p.extend_from_slice(body);
    let crc = crc32_bitwise(&p);
    p[22..26].copy_from_slice(&crc.to_le_bytes());
    p
}

/// Lacing values for packets laid whole on one page.
pub(crate) fn lacing_for(sizes: &[usize]) -> Vec<u8> {
    let mut l = Vec::new();
    for &s in sizes {
        l.extend(std::iter::repeat_n(255u8, s / 255));
        l.push((s % 255) as u8);
    }
    l
}

#[test]
fn crc_check_value() {
    // CRC-32/MPEG-2 in the same catalogue (Greg Cook's "Catalogue of parametrised CRC
    // algorithms", reveng.sourceforge.io/crc-catalogue) is this CRC with an initial
    // register of 0xFFFFFFFF; its check value is 0x0376E6E7.
    assert_eq!(crc32_bitwise_from(0xFFFF_FFFF, b"123456789"), 0x0376_E6E7);
    assert_eq!(crc32_update(0xFFFF_FFFF, b"123456789"), 0x0376_E6E7);
    // CRC-32/CKSUM (same polynomial, init 0, not reflected) has the catalogue check value
    // 0x765E7680 for "123456789" after its final xor with 0xFFFFFFFF; Ogg has no final
    // xor, so its check value is 0x765E7680 ^ 0xFFFFFFFF.
    assert_eq!(crc32_bitwise(b"123456789"), 0x765E_7680 ^ 0xFFFF_FFFF);
    assert_eq!(crc32(b"123456789"), 0x765E_7680 ^ 0xFFFF_FFFF);
    assert_eq!(crc32(&[]), 0);
}

/// Random bytes, lengths from 0 to 130 KB at random offsets (alignment), each checked whole
/// and fed in up to eight pieces cut at random places: `update` must equal the bitwise
/// reference both ways.
fn check_against_bitwise(update: fn(u32, &[u8]) -> u32, seed: u64) {
    let mut rng = Rng(seed);
    let mut buf = vec![0u8; 140_000];
    for b in buf.iter_mut() {
        *b = rng.next_u64() as u8;
    }
    for i in 0..200 {
        let start = rng.below(64) as usize;
        // Every short length (the table/SIMD threshold and the SIMD kernels' own block
        // sizes sit below 512), then page-sized ones, then some up to 130 KB.
        let len = match i {
            0..=99 => rng.below(512) as usize,
            100..=189 => rng.below(8000) as usize,
            _ => rng.below(130_001) as usize,
        };
        let slice = &buf[start..start + len];
        let expected = crc32_bitwise(slice);
        assert_eq!(update(0, slice), expected, "len {len}");
        let pieces = 1 + rng.below(8) as usize;
        let mut cuts: Vec<usize> = (1..pieces)
            .map(|_| rng.below(len as u64 + 1) as usize)
            .collect();
        cuts.push(0);
        cuts.push(len);
        cuts.sort_unstable();
        let crc = cuts
            .windows(2)
            .fold(0, |crc, w| update(crc, &slice[w[0]..w[1]]));
        assert_eq!(crc, expected, "len {len} cut at {cuts:?}");
    }
}

#[test]
fn table_crc_matches_bitwise_reference() {
    check_against_bitwise(table_crc32_update, 0x0123_4567_89AB_CDEF);
}

#[test]
fn public_crc_matches_bitwise_reference() {
    check_against_bitwise(crc32_update, 0xFEDC_BA98_7654_3210);
}

/// The carry-less-multiply kernels this processor runs; prints which are skipped.
#[cfg(all(feature = "simd-crc", target_arch = "x86_64"))]
fn clmul_levels() -> Vec<u8> {
    let levels: Vec<u8> = [clmul::CLMUL128, clmul::CLMUL256]
        .into_iter()
        .filter(|&l| l <= clmul::level())
        .collect();
    if levels.len() < 2 {
        eprintln!(
            "skipped: {} of the 2 carry-less-multiply kernels (this CPU lacks PCLMULQDQ or \
             VPCLMULQDQ+AVX2)",
            2 - levels.len()
        );
    }
    levels
}

#[cfg(all(feature = "simd-crc", target_arch = "x86_64"))]
#[test]
fn clmul_kernels_match_bitwise_reference_on_every_length() {
    // Every length from 0 to 600 (the kernels' 16-, 32-, 64- and 128-byte blocks and every
    // tail), three random start offsets (alignments) and initial registers each, with the
    // Ogg CRC field (bytes 22..26) read as it is and taken as zeros.
    let mut rng = Rng(0x5DEE_CE66_D1CE_5EED);
    let buf: Vec<u8> = (0..700).map(|_| rng.next_u64() as u8).collect();
    let mut checked = 0;
    for level in clmul_levels() {
        for len in 0..=600 {
            for _ in 0..3 {
                let start = rng.below(64) as usize;
                let init = match rng.below(4) {
                    0 => 0,
                    1 => u32::MAX,
                    _ => rng.next_u64() as u32,
                };
                let data = &buf[start..start + len];
                let got = clmul::update_with(level, init, data, false);
                let got_zeroed = clmul::update_with(level, init, data, true);
                if len < 32 {
                    assert_eq!((got, got_zeroed), (None, None), "len {len}");
                    continue;
                }
                let expected = crc32_bitwise_from(init, data);
                assert_eq!(got, Some(expected), "level {level} len {len} start {start}");
                let mut zeroed = data.to_vec();
                zeroed[22..26].fill(0);
                let expected = crc32_bitwise_from(init, &zeroed);
                assert_eq!(got_zeroed, Some(expected), "level {level} len {len} zeroed");
                checked += 1;
            }
        }
    }
    if !clmul_levels().is_empty() {
        assert!(checked >= 569 * 3, "{checked}");
    }
}

#[cfg(all(feature = "simd-crc", target_arch = "x86_64"))]
#[test]
fn clmul_kernels_match_on_big_inputs_and_the_check_value() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF0);
    let buf: Vec<u8> = (0..(1 << 20) + 100).map(|_| rng.next_u64() as u8).collect();
    for level in clmul_levels() {
        for (start, len) in [(0, 1 << 20), (3, 1_000_000), (17, (1 << 20) + 13)] {
            let init = rng.next_u64() as u32;
            let data = &buf[start..start + len];
            let expected = crc32_bitwise_from(init, data);
            assert_eq!(clmul::update_with(level, init, data, false), Some(expected));
            assert_eq!(table_crc32_update(init, data), expected);
        }
        // Leading zero bytes leave a zero register at zero: the check value of "123456789"
        // (see `crc_check_value`) also holds behind 40 zero bytes, long enough for the
        // kernels.
        let mut msg = vec![0u8; 40];
        msg.extend_from_slice(b"123456789");
        assert_eq!(
            clmul::update_with(level, 0, &msg, false),
            Some(0x765E_7680 ^ 0xFFFF_FFFF)
        );
    }
}

#[cfg(all(feature = "simd-crc", target_arch = "x86_64"))]
#[test]
fn clmul_kernels_match_bitwise_reference_in_pieces() {
    for level in clmul_levels() {
        // The kernel where it takes the input, else the tables (as `crc32_update` does).
        let update: fn(u32, &[u8]) -> u32 = if level == clmul::CLMUL256 {
            |crc, d| {
                clmul::update_with(clmul::CLMUL256, crc, d, false)
                    .unwrap_or_else(|| table_crc32_update(crc, d))
            }
        } else {
            |crc, d| {
                clmul::update_with(clmul::CLMUL128, crc, d, false)
                    .unwrap_or_else(|| table_crc32_update(crc, d))
            }
        };
        check_against_bitwise(update, 0x0DDB_A11C_0FFE_E000 + u64::from(level));
    }
}

#[test]
fn page_crc_matches_bitwise_reference() {
    // Random header fields, segment counts from 0 to 255 and random bodies: the page CRC
    // (computed with the CRC field as zeros) equals the bitwise CRC of the page with that
    // field zeroed, and a page parses with verification on only with that CRC stored.
    let mut rng = Rng(0x0BAD_C0FF_EE15_600D);
    for i in 0..300 {
        let segments = match i {
            0 => 0,
            1 => 255,
            _ => rng.below(256) as usize,
        };
        let lacing: Vec<u8> = (0..segments).map(|_| rng.next_u64() as u8).collect();
        let len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        let body: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let flags = rng.below(8) as u8;
        let mut p = page(
            flags,
            rng.next_u64() as i64,
            rng.next_u64() as u32,
            rng.next_u64() as u32,
            &lacing,
            &body,
        );
        // `page` stored the bitwise CRC of the page with the field zeroed.
        let stored = u32::from_le_bytes([p[22], p[23], p[24], p[25]]);
        let parsed = Page::parse(&p, 0, true).unwrap();
        assert_eq!(parsed.computed_crc(), stored, "page {i}");
        // Any change to the stored CRC is caught.
        p[22 + i % 4] ^= 1 << (i % 8);
        assert!(Page::parse(&p, 0, true).is_err(), "page {i}");
    }
}

#[test]
fn parses_a_page_and_its_pieces() {
    let body: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
    // Packets of 10, 300 (lacing 255 45) and 290 bytes (lacing 255 35).
    let p = page(FLAG_BOS, 1234, 7, 3, &[10, 255, 45, 255, 35], &body);
    let page = Page::parse(&p, 0, true).unwrap();
    assert_eq!(page.len(), p.len());
    assert_eq!(page.granule_position(), 1234);
    assert_eq!(page.serial(), 7);
    assert_eq!(page.sequence(), 3);
    assert!(page.is_bos() && !page.is_eos() && !page.is_continued());
    assert_eq!(page.body_offset(), 27 + 5);
    let pieces: Vec<_> = page.pieces().collect();
    assert_eq!(pieces.len(), 3);
    assert_eq!((pieces[0].start, pieces[0].data.len()), (0, 10));
    assert_eq!((pieces[1].start, pieces[1].data.len()), (10, 300));
    assert_eq!((pieces[2].start, pieces[2].data.len()), (310, 290));
    assert!(pieces.iter().all(|p| p.complete));
    assert!(!page.ends_with_continued_packet());

    // A page ending with lacing 255 leaves its last piece open.
    let p = page_with_open_end();
    let page = Page::parse(&p, 0, true).unwrap();
    let pieces: Vec<_> = page.pieces().collect();
    assert_eq!(pieces.len(), 2);
    assert!(pieces[0].complete && !pieces[1].complete);
    assert!(page.ends_with_continued_packet());
}

fn page_with_open_end() -> Vec<u8> {
    page(0, -1, 7, 4, &[3, 255, 255], &[1u8; 513])
}

#[test]
fn granule_minus_one_and_flags() {
    let p = page(FLAG_CONTINUED | FLAG_EOS, -1, 9, 1, &[255], &[0u8; 255]);
    let page = Page::parse(&p, 0, true).unwrap();
    assert_eq!(page.granule_position(), -1);
    assert!(page.is_continued() && page.is_eos() && !page.is_bos());
    // A page with no segments is legal (RFC 3533 §6 allows an empty page).
    let p = page_empty();
    let page = Page::parse(&p, 0, true).unwrap();
    assert_eq!(page.pieces().count(), 0);
    assert_eq!(page.len(), 27);
}

fn page_empty() -> Vec<u8> {
    page(0, -1, 9, 2, &[], &[])
}

#[test]
fn wrong_crc_is_detected_and_accepted_when_verification_is_off() {
    let mut p = page(0, 960, 1, 2, &[4], b"abcd");
    p[30] ^= 0x40; // body byte 2 (27 header bytes, 1 lacing value)
    let err = Page::parse(&p, 0, true).unwrap_err();
    assert!(matches!(err, Error::Malformed { offset: 0, .. }), "{err}");
    assert!(err.to_string().contains("CRC"), "{err}");
    let page = Page::parse(&p, 0, false).unwrap();
    assert_eq!(page.body(), b"ab#d"); // 0x63 ^ 0x40
    assert_ne!(page.computed_crc(), page.crc());
}

#[test]
fn truncated_and_foreign_bytes() {
    let p = page(0, 960, 1, 2, &[4], b"abcd");
    for cut in [5, 26, 27, 30] {
        let err = Page::parse(&p[..cut], 0, true).unwrap_err();
        assert!(
            matches!(err, Error::Truncated { offset: 0, .. }),
            "cut {cut}: {err}"
        );
    }
    let err = Page::parse(b"RIFF....", 0, true).unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
    let mut v1 = p.clone();
    v1[4] = 1; // version 1 is not Ogg as RFC 3533 defines it
    assert!(Page::parse(&v1, 0, false).is_err());
}

#[test]
fn walker_resynchronises_over_garbage_and_reports_it() {
    let a = page(FLAG_BOS, 0, 5, 0, &[3], b"one");
    let b = page(0, 10, 5, 1, &[3], b"two");
    let c = page(FLAG_EOS, 20, 5, 2, &[5], b"three");
    let mut bad = b.clone();
    bad[28] ^= 1; // corrupt b's body: its CRC no longer verifies
    let mut file = a.clone();
    file.extend_from_slice(b"junk OggS junk"); // a false capture pattern inside garbage
    let garbage_start = file.len();
    file.extend_from_slice(&bad);
    let c_at = file.len();
    file.extend_from_slice(&c);
    file.extend_from_slice(b"tail");

    let chunks: Vec<_> = PageWalker::new(&file, true).collect::<Result<_>>().unwrap();
    assert_eq!(chunks.len(), 4, "{chunks:?}");
    assert!(matches!(chunks[0], Chunk::Page(p) if p.sequence() == 0));
    assert_eq!(
        chunks[1],
        Chunk::Skipped(Region {
            offset: a.len() as u64,
            len: (c_at - a.len()) as u64,
            kind: RegionKind::Garbage
        })
    );
    assert!(garbage_start < c_at);
    assert!(matches!(chunks[2], Chunk::Page(p) if p.sequence() == 2 && p.offset() == c_at as u64));
    assert_eq!(
        chunks[3],
        Chunk::Skipped(Region {
            offset: (c_at + c.len()) as u64,
            len: 4,
            kind: RegionKind::Trailing
        })
    );

    // Without CRC verification the corrupted page is accepted as a page.
    let pages = PageWalker::new(&file, false)
        .filter(|c| matches!(c, Ok(Chunk::Page(_))))
        .count();
    assert_eq!(pages, 3);
}

#[test]
fn walker_reports_a_truncated_final_page() {
    let a = page(FLAG_BOS, 0, 5, 0, &[3], b"one");
    let b = page(0, 10, 5, 1, &[100], &[7u8; 100]);
    let mut file = a.clone();
    file.extend_from_slice(&b[..60]);
    let mut w = PageWalker::new(&file, true);
    assert!(matches!(w.next(), Some(Ok(Chunk::Page(_)))));
    let err = w.next().unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Truncated { offset, needed, available: 60, .. }
            if offset == a.len() as u64 && needed == b.len() as u64),
        "{err}"
    );
    assert!(w.next().is_none());
}
