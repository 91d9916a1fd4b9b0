//! Reader tests on hand-made files.
//!
//! The default tables are tiny, so that every bit is known: DC: `0` = category 0, `1` =
//! category 1; AC: `0` = EOB, `1` = run 0 / category 1. A data unit of zeros is `00` (2 bits); a
//! data unit whose 64 coefficients are all 1 is 128 one-bits (DC `1`+`1`, then 63 × `1`+`1`).

use super::*;
use crate::Reader;

pub(crate) struct Spec {
    pub(crate) width: u16,
    pub(crate) height: u16,
    /// (id, Hi << 4 | Vi)
    pub(crate) components: Vec<(u8, u8)>,
    pub(crate) restart: u16,
    pub(crate) dc: ([u8; 16], Vec<u8>),
    pub(crate) ac: ([u8; 16], Vec<u8>),
    /// Each scan: its component ids and its entropy-coded bytes (stuffing and RST included).
    pub(crate) scans: Vec<(Vec<u8>, Vec<u8>)>,
    pub(crate) trailing: Vec<u8>,
}

fn one_bit_codes(a: u8, b: u8) -> ([u8; 16], Vec<u8>) {
    let mut counts = [0; 16];
    counts[0] = 2;
    (counts, vec![a, b])
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            width: 16,
            height: 8,
            components: vec![(1, 0x11)],
            restart: 0,
            dc: one_bit_codes(0, 1),
            ac: one_bit_codes(0x00, 0x01),
            scans: vec![(vec![1], vec![0b0000_1111])],
            trailing: Vec::new(),
        }
    }
}

fn segment(out: &mut Vec<u8>, code: u8, payload: &[u8]) {
    out.extend([0xFF, code]);
    out.extend(((payload.len() + 2) as u16).to_be_bytes());
    out.extend(payload);
}

impl Spec {
    pub(crate) fn build(&self) -> Vec<u8> {
        let mut f = vec![0xFF, SOI];
        let mut dqt = vec![0];
        dqt.extend([1u8; 64]);
        segment(&mut f, DQT, &dqt);
        let mut sof = vec![8];
        sof.extend(self.height.to_be_bytes());
        sof.extend(self.width.to_be_bytes());
        sof.push(self.components.len() as u8);
        for &(id, hv) in &self.components {
            sof.extend([id, hv, 0]);
        }
        segment(&mut f, 0xC0, &sof);
        let mut dht = vec![0x00];
        dht.extend(self.dc.0);
        dht.extend(&self.dc.1);
        dht.push(0x10);
        dht.extend(self.ac.0);
        dht.extend(&self.ac.1);
        segment(&mut f, DHT, &dht);
        if self.restart > 0 {
            segment(&mut f, DRI, &self.restart.to_be_bytes());
        }
        for (ids, data) in &self.scans {
            let mut sos = vec![ids.len() as u8];
            for &id in ids {
                sos.extend([id, 0x00]);
            }
            sos.extend([0, 63, 0]);
            segment(&mut f, SOS, &sos);
            f.extend(data);
        }
        f.extend([0xFF, EOI]);
        f.extend(&self.trailing);
        f
    }
}

/// The doc example's file: 16×8 grayscale, two all-zero MCUs (`00` `00`, padded with 1s).
pub(crate) fn build(
    width: u16,
    height: u16,
    components: &[(u8, u8)],
    restart: u16,
    data: &[u8],
) -> Vec<u8> {
    let ids = components.iter().map(|c| c.0).collect();
    Spec {
        width,
        height,
        components: components.to_vec(),
        restart,
        scans: vec![(ids, data.to_vec())],
        ..Spec::default()
    }
    .build()
}

fn read(file: &[u8]) -> (Vec<Block<'_>>, Option<Error>) {
    let mut blocks = Vec::new();
    let reader = match JpegReader::new(file, &Options::default()) {
        Ok(r) => r,
        Err(e) => return (blocks, Some(e)),
    };
    for item in reader {
        match item {
            Ok(b) => blocks.push(b),
            Err(e) => return (blocks, Some(e)),
        }
    }
    (blocks, None)
}

fn header_len(file: &[u8]) -> u64 {
    JpegReader::new(file, &Options::default())
        .unwrap()
        .header_span()
        .end
}

#[test]
fn walks_two_mcus_to_the_bit() {
    let file = build(16, 8, &[(1, 0x11)], 0, &[0b0000_1111]);
    let start = header_len(&file);
    assert_eq!(&file[start as usize - 2..start as usize], &[63, 0]);
    let (blocks, err) = read(&file);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(blocks.len(), 2);
    let b = &blocks[1];
    assert_eq!((b.index, b.offset, b.bit, b.bits), (1, start, 2, Some(2)));
    assert_eq!(b.data.as_ref(), &[0]);
    assert_eq!(b.kind, BlockKind::Mcu);
    assert_eq!(b.place, Place::Grid { row: 0, col: 1 });
    let Detail::Jpeg(info) = &b.detail else {
        panic!()
    };
    assert_eq!(
        (
            info.scan,
            info.restart_interval,
            info.component_ids(),
            info.data_units
        ),
        (0, 0, &[1u8][..], 1)
    );
}

#[test]
fn the_generic_reader_dispatches_here() {
    let file = build(16, 8, &[(1, 0x11)], 0, &[0b0000_1111]);
    let reader = Reader::new(&file, &Options::default()).unwrap();
    assert_eq!(reader.count(), 2);
}

#[test]
fn removes_stuffing_inside_and_between_mcus() {
    // MCU 0: 128 one-bits (16 bytes 0xFF, each stuffed); MCU 1: 00; padding 111111.
    let mut data = [0xFF, 0x00].repeat(16);
    data.push(0b0011_1111);
    let file = build(16, 8, &[(1, 0x11)], 0, &data);
    let start = header_len(&file);
    let (blocks, err) = read(&file);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(blocks[0].bits, Some(128));
    assert_eq!(blocks[0].data.as_ref(), &[0xFF; 16]);
    assert_eq!((blocks[1].offset, blocks[1].bit), (start + 32, 0));
    assert_eq!(blocks[1].data.as_ref(), &[0]);

    // The same, shifted by one zero MCU first: MCU 1 starts at bit 2 of the first byte and
    // its re-packed bytes are still 16 × 0xFF.
    let mut bits = String::from("00");
    bits += &"1".repeat(128);
    bits += "00";
    while bits.len() % 8 != 0 {
        bits.push('1');
    }
    let mut data = Vec::new();
    for c in bits.as_bytes().chunks(8) {
        let b = u8::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap();
        data.push(b);
        if b == 0xFF {
            data.push(0);
        }
    }
    let file = build(24, 8, &[(1, 0x11)], 0, &data);
    let (blocks, err) = read(&file);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(blocks.len(), 3);
    assert_eq!((blocks[1].offset, blocks[1].bit), (start, 2));
    assert_eq!(blocks[1].data.as_ref(), &[0xFF; 16]);
    // Bit 130 is in unstuffed byte 16: file byte 16 + the 15 stuffed zeros before it (the first
    // byte, 0x3F, is not stuffed).
    assert_eq!((blocks[2].offset, blocks[2].bit), (start + 31, 2));
}

#[test]
fn restart_markers_reset_alignment_and_count_intervals() {
    // Two MCUs, one per interval: `00` + padding, RST0, `00` + padding.
    let file = build(16, 8, &[(1, 0x11)], 1, &[0x3F, 0xFF, 0xD0, 0x3F]);
    let start = header_len(&file);
    let (blocks, err) = read(&file);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(blocks.len(), 2);
    assert_eq!((blocks[1].offset, blocks[1].bit), (start + 3, 0));
    let intervals: Vec<u32> = blocks
        .iter()
        .map(|b| match &b.detail {
            Detail::Jpeg(i) => i.restart_interval,
            _ => u32::MAX,
        })
        .collect();
    assert_eq!(intervals, [0, 1]);

    // Fill bytes before the restart marker are allowed (T.81 B.1.1.2).
    let file = build(
        16,
        8,
        &[(1, 0x11)],
        1,
        &[0x3F, 0xFF, 0xFF, 0xFF, 0xD0, 0x3F],
    );
    let (blocks, err) = read(&file);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(blocks[1].offset, start + 5);
}

#[test]
fn dc_predictors_restart_with_each_interval() {
    // Two MCUs with DC diff +1 each (`1`+`1`, EOB `0`), one per interval, then without
    // restarts: the absolute DC is 1, 1 with restarts and 1, 2 without.
    let dc_of = |file: &[u8]| -> Vec<i32> {
        let mut r = JpegReader::new(file, &Options::default()).unwrap();
        let mut units = Vec::new();
        let mut dc = Vec::new();
        while let Some(b) = r.next_with_coefficients(&mut units) {
            b.unwrap();
            dc.push(units[0].coefficients[0]);
        }
        dc
    };
    let with = build(
        16,
        8,
        &[(1, 0x11)],
        1,
        &[0b1101_1111, 0xFF, 0xD0, 0b1101_1111],
    );
    assert_eq!(dc_of(&with), [1, 1]);
    let without = build(16, 8, &[(1, 0x11)], 0, &[0b1101_1011]);
    assert_eq!(dc_of(&without), [1, 2]);
}

#[test]
fn restart_markers_out_of_order_are_malformed() {
    let file = build(
        24,
        8,
        &[(1, 0x11)],
        1,
        &[0x3F, 0xFF, 0xD0, 0x3F, 0xFF, 0xD2, 0x3F],
    );
    let (blocks, err) = read(&file);
    assert_eq!(blocks.len(), 2);
    let err = err.unwrap();
    assert!(err.to_string().contains("RST2 where RST1"), "{err}");
    let at = file.windows(2).position(|w| w == [0xFF, 0xD2]).unwrap() as u64;
    assert_eq!(err.offset(), Some(at));
}

#[test]
fn a_marker_in_the_middle_of_the_scan_is_malformed_after_the_mcus_before_it() {
    // 8 MCUs of 2 bits need 2 bytes; one byte holds 4.
    let file = build(64, 8, &[(1, 0x11)], 0, &[0x00]);
    let (blocks, err) = read(&file);
    assert_eq!(blocks.len(), 4);
    let err = err.unwrap();
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
    assert!(
        err.to_string().contains("EOI in the middle of MCU 4 of 8"),
        "{err}"
    );
    assert_eq!(err.offset(), Some(file.len() as u64 - 2));
}

#[test]
fn invalid_codes_are_malformed_with_their_offset() {
    // A DC table whose only code is `0`: the `1` in the second MCU matches nothing.
    let mut counts = [0; 16];
    counts[0] = 1;
    let file = Spec {
        dc: (counts, vec![0]),
        scans: vec![(vec![1], vec![0b0010_0000])],
        ..Spec::default()
    }
    .build();
    let start = header_len(&file);
    let (blocks, err) = read(&file);
    assert_eq!(blocks.len(), 1);
    let err = err.unwrap();
    assert!(err.to_string().contains("DC Huffman table"), "{err}");
    assert_eq!(err.offset(), Some(start));
}

#[test]
fn single_component_scans_use_each_components_own_grid() {
    // 4:2:0, 24×16: Y has 3×2 blocks, Cb and Cr 2×1 (12 and 8 samples, rounded up).
    // Scan 0 codes Y alone (6 MCUs of one data unit), scan 1 Cb and Cr interleaved (the
    // frame's MCU grid, 2×1, with one Cb and one Cr unit each), scan 2 Cr alone (2×1 MCUs).
    let comps = [(1, 0x22), (2, 0x11), (3, 0x11)];
    let file = Spec {
        width: 24,
        height: 16,
        components: comps.to_vec(),
        scans: vec![
            (vec![1], vec![0x00, 0x0F]),
            (vec![2, 3], vec![0x00]),
            (vec![3], vec![0x0F]),
        ],
        ..Spec::default()
    }
    .build();
    let (blocks, err) = read(&file);
    assert!(err.is_none(), "{err:?}");
    let per_scan: Vec<(u32, u8, Place)> = blocks
        .iter()
        .map(|b| match &b.detail {
            Detail::Jpeg(i) => (i.scan, i.data_units, b.place),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(per_scan.len(), 6 + 2 + 2);
    assert_eq!(per_scan[5], (0, 1, Place::Grid { row: 1, col: 2 }));
    assert_eq!(per_scan[7], (1, 2, Place::Grid { row: 0, col: 1 }));
    assert_eq!(per_scan[9], (2, 1, Place::Grid { row: 0, col: 1 }));
    assert!(blocks[6..8].iter().all(|b| b.bits == Some(4)));
}

#[test]
fn interleaved_mcus_code_every_data_unit_of_every_component() {
    // 4:2:0 in one scan, 17×9 pixels: 2×1 MCUs of 4 Y + Cb + Cr = 6 units of 2 bits each.
    let comps = [(1, 0x22), (2, 0x11), (3, 0x11)];
    let file = build(17, 9, &comps, 0, &[0, 0, 0]);
    let mut r = JpegReader::new(&file, &Options::default()).unwrap();
    let mut units = Vec::new();
    let b = r.next_with_coefficients(&mut units).unwrap().unwrap();
    assert_eq!(b.bits, Some(12));
    let layout: Vec<(usize, u32, u32)> =
        units.iter().map(|u| (u.component, u.row, u.col)).collect();
    assert_eq!(
        layout,
        [
            (0, 0, 0),
            (0, 0, 1),
            (0, 1, 0),
            (0, 1, 1),
            (1, 0, 0),
            (2, 0, 0)
        ]
    );
    let b = r.next_with_coefficients(&mut units).unwrap().unwrap();
    assert_eq!(
        (b.offset, b.bit, b.place),
        (r.header_span().end + 1, 4, Place::Grid { row: 0, col: 1 })
    );
    assert_eq!(
        units[3],
        DataUnit {
            component: 0,
            row: 1,
            col: 3,
            coefficients: [0; 64]
        }
    );
    assert!(r.next().is_none());
}

#[test]
fn trailing_bytes_and_unused_bytes_are_regions() {
    let spec = Spec {
        scans: vec![(vec![1], vec![0x0F, 0xAA, 0xBB])],
        trailing: vec![1, 2, 3],
        ..Spec::default()
    };
    let file = spec.build();
    let start = header_len(&file);
    let mut r = JpegReader::new(&file, &Options::default()).unwrap();
    assert_eq!(r.by_ref().count(), 2);
    assert_eq!(
        r.regions(),
        &[
            Region {
                offset: start + 1,
                len: 2,
                kind: RegionKind::Garbage
            },
            Region {
                offset: file.len() as u64 - 3,
                len: 3,
                kind: RegionKind::Trailing
            }
        ]
    );
}

#[test]
fn limits_stop_the_walk() {
    let file = build(64, 8, &[(1, 0x11)], 0, &[0x00, 0x00]);
    let options = Options::default().with_limits(Limits::default().with_max_blocks(5));
    let r = JpegReader::new(&file, &options).unwrap();
    let items: Vec<_> = r.collect();
    assert_eq!(items.len(), 6);
    assert!(matches!(
        items[5],
        Err(Error::Limit {
            what: "max_blocks",
            ..
        })
    ));
    let options = Options::default().with_limits(Limits::default().with_max_pixels(100));
    let err = JpegReader::new(&file, &options).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Limit {
                what: "max_pixels",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn headers_are_checked_before_the_first_mcu() {
    // SOS naming a component the frame lacks.
    let file = Spec {
        scans: vec![(vec![7], vec![0x0F])],
        ..Spec::default()
    }
    .build();
    let err = JpegReader::new(&file, &Options::default()).unwrap_err();
    assert!(err.to_string().contains("component 7"), "{err}");
    // No SOI.
    assert!(JpegReader::new(&file[2..], &Options::default()).is_err());
    // Truncated inside a segment.
    let err = JpegReader::new(&file[..30], &Options::default()).unwrap_err();
    assert!(matches!(err, Error::Truncated { .. }), "{err}");
    // A file cut inside the scan keeps the MCUs before the cut.
    let file = build(64, 8, &[(1, 0x11)], 0, &[0x00, 0x00]);
    let (blocks, err) = read(&file[..file.len() - 3]);
    assert_eq!(blocks.len(), 4);
    assert!(matches!(err, Some(Error::Truncated { .. })), "{err:?}");
}

#[test]
fn coefficients_come_in_zigzag_order() {
    // One data unit: DC `1`+`1` (+1), AC `1`+`0` (-1 at k=1), `1`+`1` (+1 at k=2), EOB `0`.
    let file = build(8, 8, &[(1, 0x11)], 0, &[0b1110_1101]);
    let mut r = JpegReader::new(&file, &Options::default()).unwrap();
    let mut units = Vec::new();
    let b = r.next_with_coefficients(&mut units).unwrap().unwrap();
    assert_eq!(b.bits, Some(7));
    let mut expect = [0; 64];
    expect[..3].copy_from_slice(&[1, -1, 1]);
    assert_eq!(units[0].coefficients, expect);
}
