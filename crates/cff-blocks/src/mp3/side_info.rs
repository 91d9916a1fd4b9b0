//! Layer III side information as values, and each frame's own main data.
//!
//! The side information follows a frame's header (and its CRC) and says how the frame's
//! granules were coded: the quantiser step (`global_gain`), how many spectral pairs use the
//! big Huffman tables (`big_values`), how many bits of scalefactors and Huffman data there
//! are (`part2_3_length`), the window type, the tables. Its fields straddle byte boundaries,
//! but none needs Huffman decoding: [`SideInfo::parse`] reads them bit by bit.
//!
//! Syntax: ISO 11172-3 2.4.1.7 (MPEG-1: two granules, `scfsi`, 4-bit `scalefac_compress`,
//! `preflag`) and ISO 13818-3 2.4.1.7 (MPEG-2 and 2.5: one granule, 9-bit
//! `scalefac_compress`, no `preflag`, which is implied by `scalefac_compress`).
//!
//! A frame's audio data is not where its bytes are: `main_data_begin` points back into the
//! main data of earlier frames (the bit reservoir). [`MainData`] reassembles, frame after
//! frame, the bytes that hold each frame's own granules.

use crate::{Error, Format, Result};

use super::{FrameHeader, Version};

/// One granule of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub struct Granule {
    /// Bits of scalefactors and Huffman data (12 bits).
    pub part2_3_length: u16,
    /// Spectral pairs coded with the big-value tables (9 bits; at most 288).
    pub big_values: u16,
    /// The quantiser step size (8 bits).
    pub global_gain: u8,
    /// Scalefactor bit lengths: 4 bits (MPEG-1), 9 bits (MPEG-2/2.5).
    pub scalefac_compress: u16,
    /// Whether a block type other than normal is used.
    pub window_switching: bool,
    /// 0 normal, 1 start, 2 short (three short windows), 3 stop; 0 without window switching.
    pub block_type: u8,
    /// Lower subbands long, upper short (window switching only).
    pub mixed_block: bool,
    /// Huffman table of each region of the big values (the third is 0 with window switching).
    pub table_select: [u8; 3],
    /// Gain offset of each short window (window switching only).
    pub subblock_gain: [u8; 3],
    /// Scalefactor bands in the first region (4 bits; implied with window switching, stored 0).
    pub region0_count: u8,
    /// Scalefactor bands in the second region (3 bits; implied with window switching, stored 0).
    pub region1_count: u8,
    /// Pre-emphasis of high scalefactor bands (MPEG-1 only; false for MPEG-2/2.5).
    pub preflag: bool,
    /// Scalefactor step: false = √2, true = 2.
    pub scalefac_scale: bool,
    /// Table of the count1 region: false = table A, true = table B.
    pub count1table_select: bool,
}

/// The side information of one Layer III frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SideInfo {
    /// Bytes back from the end of the side information, counting earlier frames' main data
    /// only, where this frame's main data starts.
    pub main_data_begin: u16,
    /// The private bits (5 or 3 in MPEG-1, 1 or 2 in MPEG-2/2.5).
    pub private_bits: u8,
    /// Scalefactor selection information per channel, 4 bits (MPEG-1; 0 for MPEG-2/2.5).
    pub scfsi: [u8; 2],
    /// Granules in the frame: 2 (MPEG-1) or 1 (MPEG-2/2.5).
    pub granules: u8,
    /// Channels: 1 or 2.
    pub channels: u8,
    /// `granule[gr][ch]`; entries past `granules` and `channels` are zero.
    pub granule: [[Granule; 2]; 2],
    /// The frame's header, as parsed to find the side information (its version, sampling
    /// rate and channel mode say how the main data is laid out).
    pub header: FrameHeader,
    /// Bytes of the frame before its main-data bytes: header, CRC, side information.
    data_start: u8,
}

/// Reads bits most significant first, and knows where it is: the side information's fields
/// and the main data's scalefactors and Huffman codewords.
pub(super) struct BitReader<'a> {
    pub(super) data: &'a [u8],
    /// Bits read so far.
    pub(super) pos: usize,
}

impl BitReader<'_> {
    /// The next bit; `None` past the end.
    pub(super) fn bit(&mut self) -> Option<u8> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(b)
    }

    /// The next `n` (at most 16) bits; `None` past the end.
    pub(super) fn bits(&mut self, n: u8) -> Option<u16> {
        let mut v = 0u16;
        for _ in 0..n {
            v = (v << 1) | u16::from(self.bit()?);
        }
        Some(v)
    }

    /// The next `n` bits where the caller has checked that they exist (0 past the end).
    fn take(&mut self, n: u8) -> u16 {
        self.bits(n).unwrap_or(0)
    }

    fn flag(&mut self) -> bool {
        self.take(1) == 1
    }
}

impl SideInfo {
    /// Parses the side information of `frame` (a whole Layer III frame, header first).
    /// `offset` is the frame's byte offset in its file, for errors.
    ///
    /// Errors: the frame is not Layer III or is too short for its side information
    /// ([`Error::Truncated`]); a field holds a value the standard forbids (`big_values` above
    /// 288, window switching with block type 0) ([`Error::Malformed`]).
    ///
    /// ```
    /// use cff_blocks::mp3::SideInfo;
    /// // An MPEG-2 mono 16 kHz 32 kbps header, then 9 bytes of side information:
    /// // main_data_begin 0, private 0, part2_3_length 100, big_values 10, global_gain 150, …
    /// let mut frame = vec![0xFF, 0xF3, 0x48, 0xC4, 0x00, 0x03, 0x20, 0x2A, 0x58, 0, 0, 0, 0];
    /// frame.resize(144, 0);
    /// let side = SideInfo::parse(&frame, 0)?;
    /// assert_eq!(side.granule[0][0].part2_3_length, 100);
    /// assert_eq!(side.granule[0][0].big_values, 10);
    /// assert_eq!(side.granule[0][0].global_gain, 150);
    /// # Ok::<(), cff_blocks::Error>(())
    /// ```
    pub fn parse(frame: &[u8], offset: u64) -> Result<SideInfo> {
        let malformed = |expected: &'static str, found: String| Error::Malformed {
            format: Format::Mp3,
            offset,
            expected,
            found,
        };
        let word = match frame.get(..4) {
            Some(w) => u32::from_be_bytes([w[0], w[1], w[2], w[3]]),
            None => {
                return Err(Error::Truncated {
                    format: Format::Mp3,
                    offset,
                    what: "frame header",
                    needed: 4,
                    available: frame.len() as u64,
                })
            }
        };
        let header = FrameHeader::parse(word)
            .map_err(|e| malformed("a Layer III frame header", e.to_string()))?;
        let len = header.side_info_len();
        if len == 0 {
            return Err(malformed(
                "a Layer III frame",
                format!("{:?}", header.layer()),
            ));
        }
        let start = header.side_info_offset();
        let Some(data) = frame.get(start..start + len) else {
            return Err(Error::Truncated {
                format: Format::Mp3,
                offset,
                what: "side information",
                needed: (start + len) as u64,
                available: frame.len() as u64,
            });
        };
        let mpeg1 = header.version() == Version::Mpeg1;
        let channels = header.channels();
        let mut bits = BitReader { data, pos: 0 };
        let mut side = SideInfo {
            main_data_begin: bits.take(if mpeg1 { 9 } else { 8 }),
            private_bits: bits.take(match (mpeg1, channels) {
                (true, 1) => 5,
                (true, _) => 3,
                (false, 1) => 1,
                (false, _) => 2,
            }) as u8,
            scfsi: [0; 2],
            granules: if mpeg1 { 2 } else { 1 },
            channels,
            granule: [[Granule::default(); 2]; 2],
            header,
            data_start: (start + len) as u8,
        };
        if mpeg1 {
            for ch in 0..usize::from(channels) {
                side.scfsi[ch] = bits.take(4) as u8;
            }
        }
        for gr in 0..usize::from(side.granules) {
            for ch in 0..usize::from(channels) {
                let g = &mut side.granule[gr][ch];
                g.part2_3_length = bits.take(12);
                g.big_values = bits.take(9);
                g.global_gain = bits.take(8) as u8;
                g.scalefac_compress = bits.take(if mpeg1 { 4 } else { 9 });
                g.window_switching = bits.flag();
                if g.window_switching {
                    g.block_type = bits.take(2) as u8;
                    g.mixed_block = bits.flag();
                    g.table_select = [bits.take(5) as u8, bits.take(5) as u8, 0];
                    g.subblock_gain = [bits.take(3) as u8, bits.take(3) as u8, bits.take(3) as u8];
                } else {
                    g.table_select = [bits.take(5) as u8, bits.take(5) as u8, bits.take(5) as u8];
                    g.region0_count = bits.take(4) as u8;
                    g.region1_count = bits.take(3) as u8;
                }
                if mpeg1 {
                    g.preflag = bits.flag();
                }
                g.scalefac_scale = bits.flag();
                g.count1table_select = bits.flag();
                if g.big_values > 288 {
                    return Err(malformed(
                        "big_values of at most 288",
                        format!("{} (granule {gr}, channel {ch})", g.big_values),
                    ));
                }
                if g.window_switching && g.block_type == 0 {
                    return Err(malformed(
                        "a block type of 1, 2 or 3 with window switching",
                        format!("block type 0 (granule {gr}, channel {ch})"),
                    ));
                }
            }
        }
        debug_assert_eq!(bits.pos, len * 8, "side information fully read");
        Ok(side)
    }

    /// The granules actually present, in bitstream order (granule, then channel).
    pub fn granules(&self) -> impl Iterator<Item = &Granule> + '_ {
        let channels = usize::from(self.channels);
        self.granule[..usize::from(self.granules)]
            .iter()
            .flat_map(move |g| &g[..channels])
    }

    /// Bytes of the frame before the main-data bytes it carries: its header, CRC and side
    /// information.
    pub fn data_start(&self) -> usize {
        usize::from(self.data_start)
    }

    /// Bits of the frame's own main data: the sum of its granules' `part2_3_length`.
    pub fn main_data_bits(&self) -> u32 {
        self.granules().map(|g| u32::from(g.part2_3_length)).sum()
    }
}

/// Reassembles each frame's own main data (scalefactors and Huffman data of its granules) from
/// the bit reservoir, frame after frame in stream order.
///
/// Feed the frames of one stream in order to [`MainData::push`]. The bytes after each frame's
/// side information join a buffer of the stream's main data; the frame's own main data starts
/// `main_data_begin` bytes before its first such byte and is `ceil(part2_3_length sum / 8)`
/// bytes long. At most 511 bytes are ever looked back at, so the buffer stays small.
#[derive(Debug, Default, Clone)]
pub struct MainData {
    /// The latest main-data bytes of the stream, oldest first.
    buffer: Vec<u8>,
}

/// How far back a frame may reach (MPEG-1's 9-bit `main_data_begin`), plus a frame's worth.
const KEEP: usize = 511 + 4 * 1441;

impl MainData {
    /// An empty reservoir, for the start of a stream.
    pub fn new() -> Self {
        MainData::default()
    }

    /// Forgets earlier frames (after a gap in the stream).
    pub fn reset(&mut self) {
        self.buffer.clear();
    }

    /// Adds `frame` (header first) with its `side` information as [`SideInfo::parse`] read it
    /// from that frame, and returns its own
    /// main data, or `Ok(None)` when it starts before the first frame pushed (a stream cut in
    /// the middle: the bytes it needs are not there). `offset` names the frame in errors.
    ///
    /// Errors: the frame's main data would run past the bytes available up to its own end
    /// (a damaged frame or side information).
    pub fn push<'s>(
        &'s mut self,
        frame: &[u8],
        side: &SideInfo,
        offset: u64,
    ) -> Result<Option<&'s [u8]>> {
        let own = frame.get(side.data_start()..).unwrap_or(&[]);
        if self.buffer.len() > KEEP {
            let drop = self.buffer.len() - KEEP;
            self.buffer.drain(..drop);
        }
        let back = usize::from(side.main_data_begin);
        let reachable = back <= self.buffer.len();
        let start = self.buffer.len().wrapping_sub(back);
        self.buffer.extend_from_slice(own);
        if !reachable {
            return Ok(None);
        }
        let len = (side.main_data_bits() as usize).div_ceil(8);
        if start + len > self.buffer.len() {
            return Err(Error::Malformed {
                format: Format::Mp3,
                offset,
                expected: "main data within the reservoir and the frame",
                found: format!(
                    "{len} bytes from {back} bytes back, {} available",
                    self.buffer.len() - start
                ),
            });
        }
        Ok(Some(&self.buffer[start..start + len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::mp3::pack_bits as pack;

    #[test]
    fn mpeg1_stereo_fields_land_where_the_standard_puts_them() {
        // MPEG-1 Layer III, 128 kbps, 44.1 kHz, joint stereo, no CRC.
        let header = [0xFF, 0xFB, 0x90, 0x40];
        let mut fields = vec![(300, 9), (0b101, 3), (0b1010, 4), (0b0101, 4)];
        for gr in 0..2u32 {
            for ch in 0..2u32 {
                let k = gr * 2 + ch;
                fields.extend([(1000 + k, 12), (100 + k, 9), (200 + k, 8), (k + 3, 4)]);
                if k == 3 {
                    // Window switching: short blocks, mixed, tables 7 and 9, gains 1 2 3.
                    fields.extend([(1, 1), (2, 2), (1, 1), (7, 5), (9, 5)]);
                    fields.extend([(1, 3), (2, 3), (3, 3)]);
                } else {
                    fields.extend([(0, 1), (k + 1, 5), (k + 2, 5), (k + 3, 5)]);
                    fields.extend([(k + 4, 4), (k, 3)]);
                }
                fields.extend([(k & 1, 1), (1, 1), (0, 1)]);
            }
        }
        let side_bytes = pack(&fields);
        assert_eq!(side_bytes.len(), 32);
        let mut frame = header.to_vec();
        frame.extend(side_bytes);
        frame.resize(417, 0);
        let s = SideInfo::parse(&frame, 0).unwrap();
        assert_eq!((s.main_data_begin, s.private_bits), (300, 0b101));
        assert_eq!(s.scfsi, [0b1010, 0b0101]);
        assert_eq!((s.granules, s.channels), (2, 2));
        for gr in 0..2 {
            for ch in 0..2 {
                let k = (gr * 2 + ch) as u16;
                let g = s.granule[gr][ch];
                assert_eq!(g.part2_3_length, 1000 + k);
                assert_eq!(g.big_values, 100 + k);
                assert_eq!(u16::from(g.global_gain), 200 + k);
                assert_eq!(g.scalefac_compress, k + 3);
                assert_eq!(g.preflag, k & 1 == 1);
                assert!(g.scalefac_scale && !g.count1table_select);
                if k == 3 {
                    assert!(g.window_switching && g.mixed_block);
                    assert_eq!(g.block_type, 2);
                    assert_eq!(g.table_select, [7, 9, 0]);
                    assert_eq!(g.subblock_gain, [1, 2, 3]);
                } else {
                    assert!(!g.window_switching);
                    let k = k as u8;
                    assert_eq!(g.table_select, [k + 1, k + 2, k + 3]);
                    assert_eq!((g.region0_count, g.region1_count), (k + 4, k));
                }
            }
        }
        assert_eq!(s.main_data_bits(), 4006);
    }

    #[test]
    fn mpeg2_mono_with_crc_skips_the_crc_and_has_nine_bit_scalefac_compress() {
        // MPEG-2 Layer III with CRC (protection bit 0), 32 kbps, 16 kHz, mono.
        let header = [0xFF, 0xF2, 0x48, 0xC4, 0xAB, 0xCD];
        let fields = [
            (77, 8),
            (1, 1),
            (2000, 12),
            (288, 9),
            (255, 8),
            (511, 9),
            (0, 1),
            (31, 5),
            (0, 5),
            (15, 5),
            (15, 4),
            (7, 3),
            (0, 1),
            (1, 1),
        ];
        let mut frame = header.to_vec();
        frame.extend(pack(&fields));
        assert_eq!(frame.len(), 6 + 9);
        frame.resize(144, 0);
        let s = SideInfo::parse(&frame, 0).unwrap();
        assert_eq!((s.main_data_begin, s.private_bits, s.granules), (77, 1, 1));
        let g = s.granule[0][0];
        assert_eq!(
            (g.part2_3_length, g.big_values, g.global_gain),
            (2000, 288, 255)
        );
        assert_eq!(g.scalefac_compress, 511);
        assert_eq!(g.table_select, [31, 0, 15]);
        assert_eq!((g.region0_count, g.region1_count), (15, 7));
        assert!(!g.preflag && !g.scalefac_scale && g.count1table_select);
        assert_eq!(s.granules().count(), 1);
    }

    #[test]
    fn forbidden_values_and_short_frames_are_errors() {
        let header = [0xFF, 0xF3, 0x48, 0xC4];
        // big_values 289.
        let mut frame = header.to_vec();
        frame.extend(pack(&[(0, 9), (0, 12), (289, 9)]));
        frame.resize(144, 0);
        let err = SideInfo::parse(&frame, 1234).unwrap_err().to_string();
        assert!(err.contains("289") && err.contains("1234"), "{err}");
        // Window switching with block type 0.
        let mut frame = header.to_vec();
        frame.extend(pack(&[
            (0, 9),
            (0, 12),
            (0, 9),
            (0, 8),
            (0, 9),
            (1, 1),
            (0, 2),
        ]));
        frame.resize(144, 0);
        assert!(SideInfo::parse(&frame, 0).is_err());
        // Cut inside the side information.
        let err = SideInfo::parse(&header[..], 7).unwrap_err();
        assert!(matches!(err, Error::Truncated { offset: 7, .. }), "{err}");
        assert!(SideInfo::parse(&[0xFF], 0).is_err());
    }

    #[test]
    fn main_data_comes_from_the_reservoir_and_unreachable_starts_give_none() {
        // Two MPEG-2 mono frames of 20 bytes: 4 header + 9 side information + 7 main data.
        let frame = |begin: u32, bits: u32, fill: u8| {
            let mut f = vec![0xFF, 0xF3, 0x48, 0xC4];
            f.extend(pack(&[
                (begin, 8),
                (0, 1),
                (bits, 12),
                (0, 9),
                (0, 8),
                (0, 9),
            ]));
            f.resize(13, 0);
            f.extend([fill; 7]);
            f
        };
        let mut md = MainData::new();
        let a = frame(0, 24, 1);
        let sa = SideInfo::parse(&a, 0).unwrap();
        assert_eq!(md.push(&a, &sa, 0).unwrap(), Some(&[1u8, 1, 1][..]));
        // Starts 4 bytes back: the last 4 of frame a, then 6 of its own (81 bits → 11 bytes).
        let b = frame(4, 81, 2);
        let sb = SideInfo::parse(&b, 20).unwrap();
        assert_eq!(
            md.push(&b, &sb, 20).unwrap(),
            Some(&[1u8, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2][..])
        );
        // More bits than there are bytes: an error naming the frame's offset.
        let c = frame(0, 100, 3);
        let sc = SideInfo::parse(&c, 40).unwrap();
        let err = md.push(&c, &sc, 40).unwrap_err().to_string();
        assert!(err.contains("40"), "{err}");
        // A first frame that reaches back before the stream's start: None.
        let mut fresh = MainData::new();
        let d = frame(5, 8, 4);
        let sd = SideInfo::parse(&d, 0).unwrap();
        assert_eq!(fresh.push(&d, &sd, 0).unwrap(), None);
    }
}
