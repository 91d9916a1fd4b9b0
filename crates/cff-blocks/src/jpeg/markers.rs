//! Markers and marker segments (T.81 Annex B), separate from entropy decoding.

use super::huffman::{Class, HuffmanTable, TableError};
use crate::{Error, Format, Limits, Result};

/// Start of image (T.81 B.1.1.3, Table B.1).
pub(crate) const SOI: u8 = 0xD8;
/// End of image.
pub(crate) const EOI: u8 = 0xD9;
/// Start of scan.
pub(crate) const SOS: u8 = 0xDA;
/// Define quantization tables.
pub(crate) const DQT: u8 = 0xDB;
/// Define number of lines.
pub(crate) const DNL: u8 = 0xDC;
/// Define restart interval.
pub(crate) const DRI: u8 = 0xDD;
/// Define hierarchical progression.
pub(crate) const DHP: u8 = 0xDE;
/// Expand reference components.
pub(crate) const EXP: u8 = 0xDF;
/// Define Huffman tables.
pub(crate) const DHT: u8 = 0xC4;
/// Temporary private use in arithmetic coding: a marker without a length.
pub(crate) const TEM: u8 = 0x01;
/// First restart marker (RST0); RST0..=RST7 are 0xD0..=0xD7.
pub(crate) const RST0: u8 = 0xD0;

pub(crate) fn malformed(offset: usize, expected: &'static str, found: impl Into<String>) -> Error {
    Error::Malformed {
        format: Format::Jpeg,
        offset: offset as u64,
        expected,
        found: found.into(),
    }
}

pub(crate) fn truncated(
    offset: usize,
    what: &'static str,
    needed: usize,
    available: usize,
) -> Error {
    Error::Truncated {
        format: Format::Jpeg,
        offset: offset as u64,
        what,
        needed: needed as u64,
        available: available as u64,
    }
}

fn unsupported(offset: usize, what: String) -> Error {
    Error::Unsupported {
        format: Format::Jpeg,
        offset: offset as u64,
        what,
    }
}

/// Whether `code` is RST0..=RST7.
pub(crate) fn is_rst(code: u8) -> bool {
    (RST0..=RST0 + 7).contains(&code)
}

/// The name and coding process of a start-of-frame marker (T.81 Table B.1), `None` for other
/// markers. 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) sit in the same range but are not SOFs.
pub(crate) fn sof_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0xC0 => "SOF0 (baseline DCT, Huffman)",
        0xC1 => "SOF1 (extended sequential DCT, Huffman)",
        0xC2 => "SOF2 (progressive DCT, Huffman)",
        0xC3 => "SOF3 (lossless, Huffman)",
        0xC5 => "SOF5 (differential sequential DCT, Huffman; hierarchical)",
        0xC6 => "SOF6 (differential progressive DCT, Huffman; hierarchical)",
        0xC7 => "SOF7 (differential lossless, Huffman; hierarchical)",
        0xC9 => "SOF9 (extended sequential DCT, arithmetic)",
        0xCA => "SOF10 (progressive DCT, arithmetic)",
        0xCB => "SOF11 (lossless, arithmetic)",
        0xCD => "SOF13 (differential sequential DCT, arithmetic; hierarchical)",
        0xCE => "SOF14 (differential progressive DCT, arithmetic; hierarchical)",
        0xCF => "SOF15 (differential lossless, arithmetic; hierarchical)",
        _ => return None,
    })
}

/// One component of a frame (T.81 B.2.2: Ci, Hi, Vi, Tqi).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Component {
    /// Component identifier Ci (JFIF: 1 = Y, 2 = Cb, 3 = Cr).
    pub id: u8,
    /// Horizontal sampling factor Hi, 1..=4.
    pub h: u8,
    /// Vertical sampling factor Vi, 1..=4.
    pub v: u8,
    /// Quantization table destination Tqi, 0..=3.
    pub quant_table: u8,
}

/// The frame header (T.81 B.2.2), from the SOF segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameHeader {
    /// The SOF marker's second byte: 0xC0 (SOF0, baseline) or 0xC1 (SOF1, extended sequential).
    pub marker: u8,
    /// Byte offset of the SOF marker in the file.
    pub offset: u64,
    /// Sample precision P in bits (always 8 here).
    pub precision: u8,
    /// Number of lines Y.
    pub height: u16,
    /// Number of samples per line X.
    pub width: u16,
    /// The components, in frame order.
    pub components: Vec<Component>,
}

impl FrameHeader {
    /// Hmax, the largest horizontal sampling factor (T.81 A.1.1).
    pub fn max_h(&self) -> u8 {
        self.components.iter().map(|c| c.h).max().unwrap_or(1)
    }

    /// Vmax, the largest vertical sampling factor.
    pub fn max_v(&self) -> u8 {
        self.components.iter().map(|c| c.v).max().unwrap_or(1)
    }

    /// Samples per line and lines of component `index`: xi = ⌈X·Hi/Hmax⌉, yi = ⌈Y·Vi/Vmax⌉
    /// (T.81 A.1.1). `(0, 0)` for an index past the last component.
    pub fn component_size(&self, index: usize) -> (u32, u32) {
        let Some(c) = self.components.get(index) else {
            return (0, 0);
        };
        (
            div_ceil(self.width as u32 * c.h as u32, self.max_h() as u32),
            div_ceil(self.height as u32 * c.v as u32, self.max_v() as u32),
        )
    }

    /// Columns and rows of 8×8 data units that cover component `index` (its size rounded up
    /// to whole data units). Interleaved scans add padding data units beyond these at the
    /// right and bottom edges (T.81 A.2.4).
    pub fn component_blocks(&self, index: usize) -> (u32, u32) {
        let (w, h) = self.component_size(index);
        (div_ceil(w, 8), div_ceil(h, 8))
    }

    /// Columns and rows of MCUs of an interleaved scan: ⌈X/(8·Hmax)⌉ × ⌈Y/(8·Vmax)⌉ (T.81
    /// A.2.3).
    pub fn interleaved_mcus(&self) -> (u32, u32) {
        (
            div_ceil(self.width as u32, 8 * self.max_h() as u32),
            div_ceil(self.height as u32, 8 * self.max_v() as u32),
        )
    }
}

pub(crate) fn div_ceil(a: u32, b: u32) -> u32 {
    if b == 0 {
        0
    } else {
        a.div_ceil(b)
    }
}

/// One component of a scan (T.81 B.2.3: Csj, Tdj, Taj).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanComponent {
    /// Index of the component in the frame.
    pub(crate) index: usize,
    pub(crate) id: u8,
    pub(crate) dc_table: usize,
    pub(crate) ac_table: usize,
}

/// A scan header (T.81 B.2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanHeader {
    pub(crate) components: Vec<ScanComponent>,
}

/// A marker segment located in the file: `marker` at `offset` (of its 0xFF), `payload` after
/// the two length bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment<'a> {
    pub(crate) code: u8,
    pub(crate) offset: usize,
    pub(crate) payload: &'a [u8],
}

impl Segment<'_> {
    /// File offset of the payload's first byte.
    pub(crate) fn payload_offset(&self) -> usize {
        self.offset + 4
    }

    /// File offset just after the segment.
    pub(crate) fn end(&self) -> usize {
        self.payload_offset() + self.payload.len()
    }
}

/// Finds the marker at `pos`, skipping fill bytes (0xFF, T.81 B.1.1.2): `(offset of the
/// marker's 0xFF, code)`.
pub(crate) fn read_marker(data: &[u8], pos: usize) -> Result<(usize, u8)> {
    match data.get(pos) {
        Some(0xFF) => {}
        Some(&b) => return Err(malformed(pos, "a marker (0xFF)", format!("byte 0x{b:02X}"))),
        None => return Err(truncated(pos, "marker", 2, 0)),
    }
    let mut at = pos;
    loop {
        match data.get(at + 1) {
            Some(0xFF) => at += 1,
            Some(0x00) => {
                return Err(malformed(at, "a marker", "0xFF00 (stuffed data)"));
            }
            Some(&code) => return Ok((at, code)),
            None => return Err(truncated(pos, "marker", at + 2 - pos, data.len() - pos)),
        }
    }
}

/// Reads the length field of the segment whose marker is at `offset` (T.81 B.1.1.4: the length
/// counts itself but not the marker).
pub(crate) fn read_segment(data: &[u8], offset: usize, code: u8) -> Result<Segment<'_>> {
    let available = data.len().saturating_sub(offset);
    let len = match data.get(offset + 2..offset + 4) {
        Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]) as usize,
        _ => return Err(truncated(offset, "marker segment length", 4, available)),
    };
    if len < 2 {
        return Err(malformed(
            offset + 2,
            "a segment length of at least 2",
            len.to_string(),
        ));
    }
    match data.get(offset + 4..offset + 2 + len) {
        Some(payload) => Ok(Segment {
            code,
            offset,
            payload,
        }),
        None => Err(truncated(offset, "marker segment", len + 2, available)),
    }
}

/// Parses a DQT segment (T.81 B.2.4.1) into `tables`, zig-zag order kept.
pub(crate) fn parse_dqt(seg: &Segment<'_>, tables: &mut [Option<[u16; 64]>; 4]) -> Result<()> {
    let mut rest = seg.payload;
    let mut at = seg.payload_offset();
    while let Some((&pq_tq, tail)) = rest.split_first() {
        let (pq, tq) = (pq_tq >> 4, pq_tq & 15);
        if pq > 1 || tq > 3 {
            return Err(malformed(
                at,
                "DQT Pq <= 1 and Tq <= 3",
                format!("Pq {pq}, Tq {tq}"),
            ));
        }
        let size = 64 << pq;
        let Some(values) = tail.get(..size) else {
            return Err(malformed(
                seg.offset,
                "a DQT length that holds whole tables",
                format!("{} bytes for a {}-byte table", tail.len(), size),
            ));
        };
        let mut table = [0u16; 64];
        for (k, q) in table.iter_mut().enumerate() {
            *q = if pq == 0 {
                values[k] as u16
            } else {
                u16::from_be_bytes([values[2 * k], values[2 * k + 1]])
            };
        }
        tables[tq as usize] = Some(table);
        rest = &tail[size..];
        at += 1 + size;
    }
    Ok(())
}

/// Parses a DHT segment (T.81 B.2.4.2): every table in it, into the DC (class 0) or AC
/// (class 1) destinations.
pub(crate) fn parse_dht(
    seg: &Segment<'_>,
    dc: &mut [Option<HuffmanTable>; 4],
    ac: &mut [Option<HuffmanTable>; 4],
) -> Result<()> {
    let mut rest = seg.payload;
    let mut at = seg.payload_offset();
    while let Some((&tc_th, tail)) = rest.split_first() {
        let (tc, th) = (tc_th >> 4, tc_th & 15);
        if tc > 1 || th > 3 {
            return Err(malformed(
                at,
                "DHT Tc <= 1 and Th <= 3",
                format!("Tc {tc}, Th {th}"),
            ));
        }
        let Some((counts, tail)) = tail.split_first_chunk::<16>() else {
            return Err(malformed(
                at,
                "16 DHT code counts",
                format!("{} bytes", tail.len()),
            ));
        };
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total > 256 {
            return Err(malformed(
                at + 1,
                "DHT code counts adding up to at most 256",
                total.to_string(),
            ));
        }
        let Some(values) = tail.get(..total) else {
            return Err(malformed(
                seg.offset,
                "a DHT length that holds every table's values",
                format!("{} bytes for {} values", tail.len(), total),
            ));
        };
        let class = if tc == 0 { Class::Dc } else { Class::Ac };
        let table = HuffmanTable::new(counts, values, class).map_err(|e| match e {
            TableError::TooManyValues(n) => malformed(
                at + 1,
                "DHT code counts adding up to at most 256",
                n.to_string(),
            ),
            TableError::CodeSpaceOverflow { length } => malformed(
                at + 1,
                "DHT code counts that fit their lengths",
                format!("too many codes of length {length}"),
            ),
        })?;
        let slot = if tc == 0 {
            &mut dc[th as usize]
        } else {
            &mut ac[th as usize]
        };
        *slot = Some(table);
        rest = &tail[total..];
        at += 17 + total;
    }
    Ok(())
}

/// Parses a DRI segment (T.81 B.2.4.4): the restart interval Ri in MCUs, 0 = none.
pub(crate) fn parse_dri(seg: &Segment<'_>) -> Result<u16> {
    match seg.payload {
        &[hi, lo] => Ok(u16::from_be_bytes([hi, lo])),
        p => Err(malformed(
            seg.offset,
            "a DRI length of 4",
            (p.len() + 2).to_string(),
        )),
    }
}

/// Parses a SOF segment (T.81 B.2.2), refusing every process but 8-bit sequential Huffman
/// DCT, and images above `limits.max_pixels` before anything is allocated for them.
pub(crate) fn parse_sof(seg: &Segment<'_>, limits: &Limits) -> Result<FrameHeader> {
    let name = sof_name(seg.code).unwrap_or("SOF");
    if !matches!(seg.code, 0xC0 | 0xC1) {
        return Err(unsupported(seg.offset, name.to_string()));
    }
    let p = seg.payload;
    let Some(&[precision, y_hi, y_lo, x_hi, x_lo, nf]) = p.first_chunk::<6>() else {
        return Err(malformed(
            seg.offset,
            "a SOF length of at least 8",
            (p.len() + 2).to_string(),
        ));
    };
    if precision == 12 && seg.code == 0xC1 {
        return Err(unsupported(
            seg.offset + 4,
            format!("12-bit sample precision ({name})"),
        ));
    }
    if precision != 8 {
        return Err(malformed(
            seg.offset + 4,
            "sample precision 8",
            format!("{precision} ({name})"),
        ));
    }
    let height = u16::from_be_bytes([y_hi, y_lo]);
    let width = u16::from_be_bytes([x_hi, x_lo]);
    if width == 0 {
        return Err(malformed(seg.offset + 7, "a frame width X > 0", "0"));
    }
    if height == 0 {
        return Err(unsupported(
            seg.offset + 5,
            "height defined by a DNL marker (Y = 0 in the frame header)".to_string(),
        ));
    }
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_pixels {
        return Err(Error::Limit {
            offset: seg.offset as u64,
            what: "max_pixels",
            limit: limits.max_pixels,
            found: pixels,
        });
    }
    if nf == 0 {
        return Err(malformed(seg.offset + 9, "at least one component", "0"));
    }
    if nf > 4 {
        return Err(unsupported(
            seg.offset + 9,
            format!("{nf} components in a frame (at most 4 are read)"),
        ));
    }
    if p.len() != 6 + 3 * nf as usize {
        return Err(malformed(
            seg.offset,
            "a SOF length of 8 + 3 per component",
            format!("{} for {} components", p.len() + 2, nf),
        ));
    }
    let mut components = Vec::with_capacity(nf as usize);
    for (i, c) in p[6..].chunks_exact(3).enumerate() {
        let at = seg.offset + 10 + 3 * i;
        let (id, h, v, tq) = (c[0], c[1] >> 4, c[1] & 15, c[2]);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
            return Err(malformed(
                at + 1,
                "sampling factors 1..=4",
                format!("H {h}, V {v} for component {id}"),
            ));
        }
        if tq > 3 {
            return Err(malformed(
                at + 2,
                "a quantization table 0..=3",
                tq.to_string(),
            ));
        }
        if components.iter().any(|o: &Component| o.id == id) {
            return Err(malformed(
                at,
                "distinct component identifiers",
                format!("component {id} twice"),
            ));
        }
        components.push(Component {
            id,
            h,
            v,
            quant_table: tq,
        });
    }
    Ok(FrameHeader {
        marker: seg.code,
        offset: seg.offset as u64,
        precision,
        height,
        width,
        components,
    })
}

/// Parses a SOS segment (T.81 B.2.3) against the frame and the tables defined so far.
pub(crate) fn parse_sos(
    seg: &Segment<'_>,
    frame: &FrameHeader,
    dc: &[Option<HuffmanTable>; 4],
    ac: &[Option<HuffmanTable>; 4],
) -> Result<ScanHeader> {
    let p = seg.payload;
    let ns = p.first().copied().unwrap_or(0) as usize;
    if !(1..=4).contains(&ns) {
        return Err(malformed(
            seg.offset + 4,
            "1..=4 components in a scan",
            ns.to_string(),
        ));
    }
    if p.len() != 4 + 2 * ns {
        return Err(malformed(
            seg.offset,
            "a SOS length of 6 + 2 per component",
            format!("{} for {} components", p.len() + 2, ns),
        ));
    }
    let mut components: Vec<ScanComponent> = Vec::with_capacity(ns);
    for (j, c) in p[1..1 + 2 * ns].chunks_exact(2).enumerate() {
        let at = seg.offset + 5 + 2 * j;
        let (id, td, ta) = (c[0], (c[1] >> 4) as usize, (c[1] & 15) as usize);
        let Some(index) = frame.components.iter().position(|f| f.id == id) else {
            return Err(malformed(
                at,
                "a scan component declared in the frame",
                format!("component {id}"),
            ));
        };
        if components.iter().any(|o| o.id == id) {
            return Err(malformed(
                at,
                "distinct scan components",
                format!("component {id} twice"),
            ));
        }
        if td > 3 || dc[td].is_none() {
            return Err(malformed(
                at + 1,
                "a Huffman table referenced by a scan to be defined",
                format!("DC table {td} for component {id}"),
            ));
        }
        if ta > 3 || ac[ta].is_none() {
            return Err(malformed(
                at + 1,
                "a Huffman table referenced by a scan to be defined",
                format!("AC table {ta} for component {id}"),
            ));
        }
        components.push(ScanComponent {
            index,
            id,
            dc_table: td,
            ac_table: ta,
        });
    }
    // T.81 B.2.3: sequential DCT scans cover the whole spectrum, without approximation.
    let tail = &p[1 + 2 * ns..];
    if tail != [0, 63, 0] {
        return Err(malformed(
            seg.offset + 5 + 2 * ns,
            "Ss = 0, Se = 63, Ah = Al = 0 (sequential DCT)",
            format!("{tail:?}"),
        ));
    }
    // T.81 B.2.3: an interleaved MCU holds at most 10 data units.
    if ns > 1 {
        let units: u32 = components
            .iter()
            .map(|c| {
                let f = &frame.components[c.index];
                f.h as u32 * f.v as u32
            })
            .sum();
        if units > 10 {
            return Err(malformed(
                seg.offset,
                "at most 10 data units per MCU (sum of Hi x Vi)",
                units.to_string(),
            ));
        }
    }
    Ok(ScanHeader { components })
}

/// The human name of a marker, for error messages.
pub(crate) fn marker_name(code: u8) -> String {
    match code {
        SOI => "SOI".into(),
        EOI => "EOI".into(),
        SOS => "SOS".into(),
        DQT => "DQT".into(),
        DHT => "DHT".into(),
        DRI => "DRI".into(),
        DNL => "DNL".into(),
        c if is_rst(c) => format!("RST{}", c - RST0),
        c if (0xE0..=0xEF).contains(&c) => format!("APP{}", c - 0xE0),
        0xFE => "COM".into(),
        c => sof_name(c)
            .map(|n| n.split(' ').next().unwrap_or(n).to_string())
            .unwrap_or_else(|| format!("marker 0xFF{c:02X}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn seg(code: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0xFF, code];
        v.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn reads_markers_after_fill_bytes() {
        let data = [0x12, 0xFF, 0xFF, 0xFF, 0xD9];
        assert_eq!(read_marker(&data, 1).unwrap(), (3, EOI));
        assert!(matches!(
            read_marker(&data, 0),
            Err(Error::Malformed { offset: 0, .. })
        ));
        assert!(matches!(
            read_marker(&[0xFF, 0xFF], 0),
            Err(Error::Truncated { .. })
        ));
    }

    #[test]
    fn reads_segment_lengths() {
        let data = seg(0xFE, b"hello");
        let s = read_segment(&data, 0, 0xFE).unwrap();
        assert_eq!(s.payload, b"hello");
        assert_eq!(s.end(), data.len());
        // A length running past the end of the data.
        assert!(matches!(
            read_segment(&data[..6], 0, 0xFE),
            Err(Error::Truncated { needed: 9, .. })
        ));
        // A length below 2.
        assert!(matches!(
            read_segment(&[0xFF, 0xFE, 0, 1], 0, 0xFE),
            Err(Error::Malformed { offset: 2, .. })
        ));
    }

    fn sof(code: u8, precision: u8, w: u16, h: u16, comps: &[(u8, u8, u8)]) -> Vec<u8> {
        let mut p = vec![precision];
        p.extend_from_slice(&h.to_be_bytes());
        p.extend_from_slice(&w.to_be_bytes());
        p.push(comps.len() as u8);
        for &(id, hv, tq) in comps {
            p.extend_from_slice(&[id, hv, tq]);
        }
        seg(code, &p)
    }

    fn parse(data: &[u8], limits: &Limits) -> Result<FrameHeader> {
        let s = read_segment(data, 0, data[1])?;
        parse_sof(&s, limits)
    }

    #[test]
    fn parses_a_frame_header() {
        let data = sof(
            0xC0,
            8,
            301,
            75,
            &[(1, 0x22, 0), (2, 0x11, 1), (3, 0x11, 1)],
        );
        let f = parse(&data, &Limits::default()).unwrap();
        assert_eq!((f.width, f.height, f.max_h(), f.max_v()), (301, 75, 2, 2));
        assert_eq!(f.components[1].quant_table, 1);
        assert_eq!(f.interleaved_mcus(), (19, 5));
        assert_eq!(f.component_size(0), (301, 75));
        assert_eq!(f.component_size(1), (151, 38));
        assert_eq!(f.component_blocks(1), (19, 5));
        assert_eq!(f.component_blocks(0), (38, 10));
    }

    #[test]
    fn refuses_unsupported_and_malformed_frames() {
        let ok = [(1u8, 0x11u8, 0u8)];
        let err = parse(&sof(0xC2, 8, 8, 8, &ok), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("SOF2 (progressive"), "{err}");
        let err = parse(&sof(0xC9, 8, 8, 8, &ok), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("SOF9"), "{err}");
        let err = parse(&sof(0xC1, 12, 8, 8, &ok), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("12-bit"), "{err}");
        assert!(matches!(err, Error::Unsupported { .. }));
        let err = parse(&sof(0xC0, 8, 8, 0, &ok), &Limits::default()).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        let err = parse(&sof(0xC0, 8, 8, 8, &[]), &Limits::default()).unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{err}");
        let err = parse(&sof(0xC0, 8, 8, 8, &[(1, 0x51, 0)]), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("sampling"), "{err}");
        let err = parse(
            &sof(0xC0, 8, 8, 8, &[(1, 0x11, 0), (1, 0x11, 0)]),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        // The pixel limit is checked on the header, before anything is allocated.
        let err = parse(
            &sof(0xC0, 8, 65535, 65535, &ok),
            &Limits::default().with_max_pixels(1 << 20),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Limit {
                    what: "max_pixels",
                    found: 4294836225,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn parses_quantization_tables_of_both_precisions() {
        let mut p = vec![0x01];
        p.extend((1..=64).map(|v| v as u8));
        p.push(0x12);
        p.extend((0..64u16).flat_map(|v| (v * 300).to_be_bytes()));
        let data = seg(DQT, &p);
        let mut tables = [None; 4];
        parse_dqt(&read_segment(&data, 0, DQT).unwrap(), &mut tables).unwrap();
        assert_eq!(tables[1].unwrap()[63], 64);
        assert_eq!(tables[2].unwrap()[5], 1500);
        assert!(tables[0].is_none());
        // A table cut short by the segment length.
        let data = seg(DQT, &p[..60]);
        assert!(parse_dqt(&read_segment(&data, 0, DQT).unwrap(), &mut tables).is_err());
    }

    #[test]
    fn parses_huffman_tables_and_refuses_bad_counts() {
        let mut dc: [Option<HuffmanTable>; 4] = Default::default();
        let mut ac: [Option<HuffmanTable>; 4] = Default::default();
        // A DC table 1 with two 1-bit codes, then an AC table 0 with one 1-bit code.
        let mut p = vec![0x01, 2];
        p.extend([0; 15]);
        p.extend([0, 1]);
        p.extend([0x10, 1]);
        p.extend([0; 15]);
        p.push(0x00);
        let data = seg(DHT, &p);
        parse_dht(&read_segment(&data, 0, DHT).unwrap(), &mut dc, &mut ac).unwrap();
        assert!(dc[1].is_some() && ac[0].is_some() && dc[0].is_none());
        // Three 1-bit codes.
        let mut p = vec![0x00, 3];
        p.extend([0; 15]);
        p.extend([0, 1, 2]);
        let data = seg(DHT, &p);
        let err = parse_dht(&read_segment(&data, 0, DHT).unwrap(), &mut dc, &mut ac).unwrap_err();
        assert!(err.to_string().contains("length 1"), "{err}");
        // Counts adding up to more than the values present.
        let mut p = vec![0x00, 0, 4];
        p.extend([0; 14]);
        p.extend([0, 1]);
        let data = seg(DHT, &p);
        assert!(parse_dht(&read_segment(&data, 0, DHT).unwrap(), &mut dc, &mut ac).is_err());
        // Class 2 does not exist.
        let data = seg(DHT, &[0x20]);
        assert!(parse_dht(&read_segment(&data, 0, DHT).unwrap(), &mut dc, &mut ac).is_err());
    }

    #[test]
    fn names_markers() {
        assert_eq!(marker_name(0xD3), "RST3");
        assert_eq!(marker_name(0xE1), "APP1");
        assert_eq!(marker_name(0xC2), "SOF2");
        assert_eq!(marker_name(0x05), "marker 0xFF05");
    }
}
