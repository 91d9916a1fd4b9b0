//! JPEG MCUs (ITU T.81): one block per minimum coded unit of every scan.
//!
//! The reader parses the marker segments (T.81 Annex B) and then walks each scan's
//! entropy-coded data by Huffman decoding it (T.81 F.2.2): every data unit's DC and AC codes are
//! decoded with the scan's tables, their extra bits skipped, so that each MCU's first and last bit
//! are known exactly. Nothing is dequantised or inverse-transformed.
//!
//! Supported: 8-bit sequential Huffman DCT (SOF0 baseline, SOF1 extended), 1–4 components with
//! sampling factors 1–4, interleaved and single-component scans, several scans per frame, and
//! restart intervals. Progressive, arithmetic, lossless and hierarchical processes and 12-bit
//! samples are refused with [`Error::Unsupported`] naming the SOF
//! marker: their scans have no per-MCU bit stream of this kind.
//!
//! Each MCU is a [`Block`] with `kind = BlockKind::Mcu`, `place = Place::Grid { row, col }`
//! (in the scan's MCU grid), `offset`/`bit` = where its first bit lies in the file, `bits` = its
//! entropy-coded length (stuffed 0x00 bytes not counted), and `data` = its bits re-packed from
//! bit 0 with stuffing removed, the last byte zero-padded.
//!
//! ```
//! use cff_blocks::{jpeg::JpegReader, Options, Place};
//!
//! // A 16×8 grayscale baseline JPEG whose Huffman tables hold one code each (DC `0` =
//! // category 0, AC `0` = end of block): each MCU is the two bits `00`.
//! let mut file = vec![0xFF, 0xD8]; // SOI
//! file.extend([0xFF, 0xC0, 0, 11, 8, 0, 8, 0, 16, 1, 1, 0x11, 0]); // SOF0: 8-bit, 16×8, Y
//! file.extend([0xFF, 0xC4, 0, 38]); // DHT: DC table 0 and AC table 0
//! for class in [0x00, 0x10] {
//!     file.extend([class, 1]);
//!     file.extend([0; 15]);
//!     file.push(0);
//! }
//! file.extend([0xFF, 0xDA, 0, 8, 1, 1, 0x00, 0, 63, 0]); // SOS: component 1, tables 0/0
//! file.extend([0b0000_1111, 0xFF, 0xD9]); // two MCUs, padding 1-bits, EOI
//!
//! let mut reader = JpegReader::new(&file, &Options::default())?;
//! assert_eq!((reader.frame().width, reader.frame().height), (16, 8));
//! let mcus: Vec<_> = reader.by_ref().collect::<Result<_, _>>()?;
//! assert_eq!(mcus.len(), 2);
//! assert_eq!(mcus[1].place, Place::Grid { row: 0, col: 1 });
//! assert_eq!((mcus[1].offset, mcus[1].bit, mcus[1].bits), (file.len() as u64 - 3, 2, Some(2)));
//! # Ok::<(), cff_blocks::Error>(())
//! ```

mod huffman;
mod markers;
mod scan;

use std::borrow::Cow;
use std::ops::Range;

use huffman::HuffmanTable;
use markers::{
    is_rst, malformed, marker_name, parse_dht, parse_dqt, parse_dri, parse_sof, parse_sos,
    read_marker, read_segment, sof_name, truncated, ScanHeader, DHP, DHT, DNL, DQT, DRI, EOI, EXP,
    RST0, SOI, SOS, TEM,
};
pub use markers::{Component, FrameHeader};
use scan::{decode_data_unit, skip_data_unit, Bits, DecodeError, Ecs, EcsEnd};

use crate::{Block, BlockKind, Detail, Error, Limits, Options, Place, Region, RegionKind, Result};

/// Format-specific facts about one MCU.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct McuInfo {
    /// Index of the scan the MCU belongs to, from 0 (sequential files may code each component
    /// in its own scan).
    pub scan: u32,
    /// Index of the restart interval within the scan, from 0 (always 0 without DRI).
    pub restart_interval: u32,
    /// Identifiers Cs of the scan's components, in scan order; see [`McuInfo::component_ids`].
    pub component_ids: [u8; 4],
    /// How many entries of `component_ids` are used (1..=4).
    pub components: u8,
    /// Data units (8×8 blocks) in the MCU: 1 in a single-component scan, Σ Hi·Vi otherwise.
    pub data_units: u8,
}

impl McuInfo {
    /// Identifiers of the scan's components.
    pub fn component_ids(&self) -> &[u8] {
        &self.component_ids[..(self.components as usize).min(4)]
    }
}

/// One data unit's quantised DCT coefficients, as decoded by
/// [`JpegReader::next_with_coefficients`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataUnit {
    /// Index of the component in [`FrameHeader::components`].
    pub component: usize,
    /// Row of the data unit in the component's grid of 8×8 blocks. Interleaved scans code
    /// padding data units past [`FrameHeader::component_blocks`] at the right and bottom edges.
    pub row: u32,
    /// Column of the data unit in the component's grid of 8×8 blocks.
    pub col: u32,
    /// The 64 quantised coefficients in zig-zag order (T.81 Figure A.6), DC un-differenced
    /// (the DC predictor of F.2.1.3.1 applied). Multiply by the quantization table, also in
    /// zig-zag order, to dequantise.
    pub coefficients: [i32; 64],
}

/// Marker segments read so far: the frame header and the tables in force.
#[derive(Debug, Default)]
struct Headers {
    frame: Option<FrameHeader>,
    quant: [Option<[u16; 64]>; 4],
    dc: [Option<HuffmanTable>; 4],
    ac: [Option<HuffmanTable>; 4],
    restart_interval: u16,
}

/// One data unit of an MCU: which component, which table, where in the MCU.
#[derive(Debug, Clone, Copy)]
struct UnitPlan {
    /// Index of the component in the scan (its DC predictor).
    slot: usize,
    /// Index of the component in the frame.
    component: usize,
    dc: usize,
    ac: usize,
    /// Data units of this component per MCU, horizontally and vertically (1 × 1 in a
    /// single-component scan), and this unit's place among them.
    h: u32,
    v: u32,
    dx: u32,
    dy: u32,
}

/// A scan being walked.
#[derive(Debug)]
struct ScanState {
    index: u32,
    units: Vec<UnitPlan>,
    info: McuInfo,
    mcus_x: u32,
    total: u64,
    /// Index of the next MCU in the scan.
    next: u64,
    /// Ri: MCUs per restart interval, 0 = no restart markers.
    restart: u64,
    /// Index of the current restart interval.
    interval: u32,
    /// MCUs left in the current interval; 0 = the next MCU opens a new one.
    left: u64,
    /// Bit position in the current entropy-coded segment.
    bit: usize,
    ecs_end: EcsEnd,
    dc_pred: [i32; 4],
}

/// Reads the MCUs of a JPEG file held in memory.
#[derive(Debug)]
pub struct JpegReader<'a> {
    data: &'a [u8],
    limits: Limits,
    regions: Vec<Region>,
    // Boxed: the tables and the scan state are large, and the reader sits in an enum.
    headers: Box<Headers>,
    frame: FrameHeader,
    header_end: usize,
    /// File position of the next marker to read between scans.
    pos: usize,
    ecs: Ecs,
    scan: Option<Box<ScanState>>,
    scans: u32,
    index: u64,
    done: bool,
}

impl<'a> JpegReader<'a> {
    /// Opens a reader: parses the markers from SOI up to and including the first SOS, so that
    /// unsupported processes, missing tables and oversized frames are refused here.
    pub fn new(data: &'a [u8], options: &Options) -> Result<Self> {
        match data.get(..2) {
            Some([0xFF, SOI]) => {}
            Some(&[a, b]) => return Err(malformed(0, "SOI (FF D8)", format!("{a:02X} {b:02X}"))),
            _ => return Err(truncated(0, "SOI marker", 2, data.len())),
        }
        let mut headers = Box::<Headers>::default();
        let mut regions = Vec::new();
        let mut pos = 2;
        let first = parse_markers(data, &mut pos, &mut headers, &options.limits, &mut regions)?;
        let Some(first) = first else {
            return Err(malformed(pos.saturating_sub(2), "a scan (SOS)", "EOI"));
        };
        let frame = headers
            .frame
            .clone()
            .ok_or_else(|| malformed(0, "SOF", "none"))?;
        let mut reader = JpegReader {
            data,
            limits: options.limits.clone(),
            regions,
            headers,
            frame,
            header_end: pos,
            pos,
            ecs: Ecs::default(),
            scan: None,
            scans: 0,
            index: 0,
            done: false,
        };
        reader.start_scan(first);
        Ok(reader)
    }

    /// Ranges of the input seen so far that are not part of any block: bytes after EOI
    /// ([`RegionKind::Trailing`]) and entropy-coded bytes past a restart interval's last MCU
    /// ([`RegionKind::Garbage`]). Marker segments are neither; see
    /// [`JpegReader::header_span`].
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The frame header (T.81 B.2.2).
    pub fn frame(&self) -> &FrameHeader {
        &self.frame
    }

    /// The quantization tables Tq = 0..=3 in force (T.81 B.2.4.1), in zig-zag order, as
    /// defined so far (tables may be redefined between scans).
    pub fn quant_tables(&self) -> &[Option<[u16; 64]>; 4] {
        &self.headers.quant
    }

    /// The restart interval Ri in force (T.81 B.2.4.4), 0 = none.
    pub fn restart_interval(&self) -> u16 {
        self.headers.restart_interval
    }

    /// The file header: from SOI up to and including the first SOS segment (tables, frame
    /// header, first scan header), as byte offsets. A tokenizer may keep it as one extra block.
    pub fn header_span(&self) -> Range<u64> {
        0..self.header_end as u64
    }

    /// The file header's bytes (see [`JpegReader::header_span`]).
    pub fn header(&self) -> &'a [u8] {
        self.data.get(..self.header_end).unwrap_or(self.data)
    }

    /// Scans started so far.
    pub fn scans(&self) -> u32 {
        self.scans
    }

    /// Like [`Iterator::next`], and also decodes the MCU's data units into `units` (cleared
    /// first): component, position and quantised coefficients of each, in coding order. Slower
    /// than `next`, which skips the coefficients' bits unread; meant for tests and tools.
    pub fn next_with_coefficients(
        &mut self,
        units: &mut Vec<DataUnit>,
    ) -> Option<Result<Block<'a>>> {
        units.clear();
        self.advance::<true>(units)
    }

    fn advance<const COEFS: bool>(
        &mut self,
        units: &mut Vec<DataUnit>,
    ) -> Option<Result<Block<'a>>> {
        if self.done {
            return None;
        }
        match self.step::<COEFS>(units) {
            Ok(Some(block)) => Some(Ok(block)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    fn step<const COEFS: bool>(&mut self, units: &mut Vec<DataUnit>) -> Result<Option<Block<'a>>> {
        loop {
            if let Some(scan) = &self.scan {
                if scan.next < scan.total {
                    if scan.left == 0 {
                        self.begin_interval()?;
                    }
                    return self.decode_mcu::<COEFS>(units).map(Some);
                }
                self.finish_scan()?;
            }
            let header = parse_markers(
                self.data,
                &mut self.pos,
                &mut self.headers,
                &self.limits,
                &mut self.regions,
            )?;
            match header {
                Some(header) => self.start_scan(header),
                None => return Ok(None),
            }
        }
    }

    /// Lays out a scan's MCU (T.81 A.2.2, A.2.3) and its grid.
    fn start_scan(&mut self, header: ScanHeader) {
        let frame = &self.frame;
        let mut units = Vec::new();
        let single = header.components.len() == 1;
        let mut info = McuInfo {
            scan: self.scans,
            restart_interval: 0,
            component_ids: [0; 4],
            components: header.components.len() as u8,
            data_units: 0,
        };
        for (slot, c) in header.components.iter().enumerate() {
            if let Some(id) = info.component_ids.get_mut(slot) {
                *id = c.id;
            }
            let f = frame.components.get(c.index).copied().unwrap_or(Component {
                id: c.id,
                h: 1,
                v: 1,
                quant_table: 0,
            });
            // A.2.2: a single-component scan codes one data unit per MCU, whatever Hi and Vi.
            let (h, v) = if single {
                (1, 1)
            } else {
                (f.h as u32, f.v as u32)
            };
            for dy in 0..v {
                for dx in 0..h {
                    units.push(UnitPlan {
                        slot,
                        component: c.index,
                        dc: c.dc_table,
                        ac: c.ac_table,
                        h,
                        v,
                        dx,
                        dy,
                    });
                }
            }
        }
        info.data_units = units.len() as u8;
        let (mcus_x, mcus_y) = match header.components.first() {
            Some(c) if single => frame.component_blocks(c.index),
            _ => frame.interleaved_mcus(),
        };
        self.scan = Some(Box::new(ScanState {
            index: self.scans,
            units,
            info,
            mcus_x,
            total: mcus_x as u64 * mcus_y as u64,
            next: 0,
            restart: self.headers.restart_interval as u64,
            interval: 0,
            left: 0,
            bit: 0,
            ecs_end: EcsEnd::EndOfData,
            dc_pred: [0; 4],
        }));
        self.scans += 1;
    }

    /// Reports the bytes of the current segment that no MCU used (beyond the last MCU's
    /// padding byte) as garbage.
    fn close_interval(&mut self) {
        let Some(scan) = &self.scan else { return };
        let used = scan.bit.div_ceil(8);
        if used < self.ecs.len {
            let offset = self.ecs.file_offset_of(used);
            self.regions.push(Region {
                offset: offset as u64,
                len: self.ecs.end.saturating_sub(offset) as u64,
                kind: RegionKind::Garbage,
            });
        }
    }

    /// Opens the next restart interval (T.81 E.2.4, F.2.1.3.1, B.2.1): after the first, the
    /// previous segment must end in RSTm with m = interval index mod 8; the DC predictors
    /// reset and the data starts on a byte boundary.
    fn begin_interval(&mut self) -> Result<()> {
        let started = self.scan.as_ref().is_some_and(|s| s.next > 0);
        if started {
            self.close_interval();
        }
        let Some(scan) = self.scan.as_mut() else {
            return Ok(());
        };
        let start = if started {
            let expected = RST0 + (scan.interval % 8) as u8;
            match scan.ecs_end {
                EcsEnd::Marker { at, code } if code == expected => {
                    scan.interval += 1;
                    at + 2
                }
                EcsEnd::Marker { at, code } => {
                    return Err(malformed(
                        at,
                        "the next restart marker in sequence",
                        format!("{} where RST{} was due", marker_name(code), expected - RST0),
                    ))
                }
                EcsEnd::EndOfData => {
                    return Err(truncated(self.ecs.end, "restart marker", 2, 0));
                }
            }
        } else {
            self.pos
        };
        scan.ecs_end = self.ecs.load(self.data, start);
        scan.bit = 0;
        scan.dc_pred = [0; 4];
        let remaining = scan.total - scan.next;
        scan.left = if scan.restart == 0 {
            remaining
        } else {
            scan.restart.min(remaining)
        };
        scan.info.restart_interval = scan.interval;
        Ok(())
    }

    /// Ends a scan whose MCUs have all been read: the segment must end at a marker.
    fn finish_scan(&mut self) -> Result<()> {
        self.close_interval();
        let Some(scan) = self.scan.take() else {
            return Ok(());
        };
        match scan.ecs_end {
            // A restart marker after the last interval is not called for (T.81 B.2.1), but it
            // is harmless: step over it.
            EcsEnd::Marker { at, code } if is_rst(code) => self.pos = at + 2,
            EcsEnd::Marker { at, .. } => self.pos = at,
            EcsEnd::EndOfData => {
                return Err(truncated(
                    self.ecs.end,
                    "marker after the scan (EOI)",
                    2,
                    self.data.len().saturating_sub(self.ecs.end),
                ))
            }
        }
        Ok(())
    }

    fn decode_mcu<const COEFS: bool>(&mut self, out: &mut Vec<DataUnit>) -> Result<Block<'a>> {
        let JpegReader {
            ecs,
            scan,
            headers,
            limits,
            index,
            data,
            ..
        } = self;
        let Some(scan) = scan.as_mut() else {
            return Err(malformed(0, "a scan", "none"));
        };
        let start = scan.bit;
        let row = (scan.next / scan.mcus_x.max(1) as u64) as u32;
        let col = (scan.next % scan.mcus_x.max(1) as u64) as u32;
        let mut bits = Bits::new(&ecs.bytes, start);
        let bit_len = ecs.bit_len();
        for unit in &scan.units {
            let (Some(dc), Some(ac)) = (
                headers.dc.get(unit.dc).and_then(Option::as_ref),
                headers.ac.get(unit.ac).and_then(Option::as_ref),
            ) else {
                return Err(malformed(
                    ecs.start,
                    "the scan's Huffman tables",
                    "a table missing",
                ));
            };
            let decoded = if COEFS {
                out.push(DataUnit {
                    component: unit.component,
                    row: row * unit.v + unit.dy,
                    col: col * unit.h + unit.dx,
                    coefficients: [0; 64],
                });
                let mut coefficients = [0; 64];
                let pred = &mut scan.dc_pred[unit.slot & 3];
                let r = decode_data_unit(&mut bits, dc, ac, pred, &mut coefficients);
                if let Some(u) = out.last_mut() {
                    u.coefficients = coefficients;
                }
                r
            } else {
                skip_data_unit(&mut bits, dc, ac)
            };
            if let Err(e) = decoded {
                return Err(decode_error(e, ecs, scan, data));
            }
            if bits.pos() > bit_len {
                return Err(ran_out(ecs, scan, start, data));
            }
        }
        let end = bits.pos();
        let offset = ecs.file_offset(start / 8);
        let bytes = ecs.repack(start, end);
        if bytes.len() as u64 > limits.max_block_bytes {
            return Err(Error::Limit {
                offset: offset as u64,
                what: "max_block_bytes",
                limit: limits.max_block_bytes,
                found: bytes.len() as u64,
            });
        }
        if *index >= limits.max_blocks {
            return Err(Error::Limit {
                offset: offset as u64,
                what: "max_blocks",
                limit: limits.max_blocks,
                found: *index + 1,
            });
        }
        let block = Block {
            index: *index,
            offset: offset as u64,
            bit: (start % 8) as u8,
            data: Cow::Owned(bytes),
            bits: Some((end - start) as u64),
            kind: BlockKind::Mcu,
            place: Place::Grid { row, col },
            detail: Detail::Jpeg(scan.info.clone()),
        };
        *index += 1;
        scan.bit = end;
        scan.next += 1;
        scan.left -= 1;
        Ok(block)
    }
}

/// The error for an MCU that needs more bits than its entropy-coded segment holds.
fn ran_out(ecs: &Ecs, scan: &ScanState, start: usize, data: &[u8]) -> Error {
    match scan.ecs_end {
        EcsEnd::Marker { at, code } => malformed(
            at,
            "entropy-coded data for every MCU of the scan",
            format!(
                "{} in the middle of MCU {} of {} (scan {})",
                marker_name(code),
                scan.next,
                scan.total,
                scan.index
            ),
        ),
        EcsEnd::EndOfData => {
            // The data ends inside the MCU: it needs at least one byte more than there is.
            let offset = ecs.file_offset_of(start / 8);
            let available = data.len().saturating_sub(offset);
            truncated(
                offset,
                "entropy-coded data of an MCU",
                available + 1,
                available,
            )
        }
    }
}

fn decode_error(e: DecodeError, ecs: &Ecs, scan: &ScanState, data: &[u8]) -> Error {
    let pos = match e {
        DecodeError::InvalidCode { pos, .. }
        | DecodeError::DcCategory { pos, .. }
        | DecodeError::AcCategory { pos, .. }
        | DecodeError::RunPastEnd { pos } => pos,
    };
    // Past the end of the segment the reader sees zeros: the real problem is the marker.
    if pos >= ecs.bit_len() {
        return ran_out(ecs, scan, pos, data);
    }
    let offset = ecs.file_offset_of(pos / 8);
    let at = format!("bit {} of MCU {} (scan {})", pos % 8, scan.next, scan.index);
    match e {
        DecodeError::InvalidCode { ac, .. } => malformed(
            offset,
            if ac {
                "a code of the scan's AC Huffman table"
            } else {
                "a code of the scan's DC Huffman table"
            },
            format!("no code matches at {at}"),
        ),
        DecodeError::DcCategory { size, .. } => malformed(
            offset,
            "a DC magnitude category <= 11",
            format!("{size} at {at}"),
        ),
        DecodeError::AcCategory { size, .. } => malformed(
            offset,
            "an AC magnitude category <= 10",
            format!("{size} at {at}"),
        ),
        DecodeError::RunPastEnd { .. } => malformed(
            offset,
            "AC runs ending within the 64 coefficients",
            format!("a run past coefficient 63 at {at}"),
        ),
    }
}

/// Reads marker segments from `pos` up to and including the next SOS (returning its header,
/// `pos` just after it) or EOI (returning `None`, `pos` just after it, any bytes after it
/// recorded as trailing).
fn parse_markers(
    data: &[u8],
    pos: &mut usize,
    headers: &mut Headers,
    limits: &Limits,
    regions: &mut Vec<Region>,
) -> Result<Option<ScanHeader>> {
    loop {
        let (at, code) = read_marker(data, *pos)?;
        match code {
            EOI => {
                *pos = at + 2;
                if *pos < data.len() {
                    regions.push(Region {
                        offset: *pos as u64,
                        len: (data.len() - *pos) as u64,
                        kind: RegionKind::Trailing,
                    });
                }
                return Ok(None);
            }
            SOI => return Err(malformed(at, "a marker other than SOI", "a second SOI")),
            c if is_rst(c) => {
                return Err(malformed(
                    at,
                    "a marker segment between scans",
                    marker_name(c),
                ))
            }
            TEM => {
                *pos = at + 2;
                continue;
            }
            _ => {}
        }
        let seg = read_segment(data, at, code)?;
        match code {
            SOS => {
                let Some(frame) = headers.frame.as_ref() else {
                    return Err(malformed(at, "SOF before SOS", "SOS"));
                };
                let header = parse_sos(&seg, frame, &headers.dc, &headers.ac)?;
                *pos = seg.end();
                return Ok(Some(header));
            }
            DQT => parse_dqt(&seg, &mut headers.quant)?,
            DHT => parse_dht(&seg, &mut headers.dc, &mut headers.ac)?,
            DRI => headers.restart_interval = parse_dri(&seg)?,
            DHP | EXP => {
                return Err(Error::Unsupported {
                    format: crate::Format::Jpeg,
                    offset: at as u64,
                    what: format!(
                        "{} (hierarchical process)",
                        if code == DHP { "DHP" } else { "EXP" }
                    ),
                })
            }
            DNL => {
                return Err(malformed(
                    at,
                    "DNL only in a frame of height 0 (not read)",
                    "DNL",
                ))
            }
            c if sof_name(c).is_some() => {
                if headers.frame.is_some() {
                    return Err(malformed(at, "one frame per image", "a second SOF"));
                }
                headers.frame = Some(parse_sof(&seg, limits)?);
            }
            // APPn, COM, DAC, JPGn and reserved markers: skipped by their length.
            _ => {}
        }
        *pos = seg.end();
    }
}

impl<'a> Iterator for JpegReader<'a> {
    type Item = Result<Block<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut none = Vec::new();
        self.advance::<false>(&mut none)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
