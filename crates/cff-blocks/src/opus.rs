//! Opus packets in Ogg (RFC 7845).
//!
//! A block is one Ogg packet of the Opus logical stream: the identification header
//! (`OpusHead`) and the comment header (`OpusTags`) as [`BlockKind::Metadata`] blocks, then every
//! audio packet as a [`BlockKind::Audio`] block (RFC 7845 §3). Packets that lie inside one page
//! borrow their bytes from the input; packets that span pages are assembled into an owned buffer,
//! after checking [`Limits::max_block_bytes`](crate::Limits::max_block_bytes).
//!
//! Timestamps follow RFC 7845 §4: the granule position of a page is the number of 48 kHz
//! samples decoded (pre-skip included) after the last packet completed on that page, so the
//! first packet completed on a page starts at the granule position minus the durations of all
//! packets completed on the page; each packet's duration comes from its TOC byte (RFC 6716
//! §3.1). A block's [`Place::Time`] start is that position minus the pre-skip: it is the index of
//! the block's first sample in the decoded output, negative inside the pre-skip. On the last
//! page (EOS), a granule position smaller than the samples of its packets trims the end
//! (RFC 7845 §4.4): the blocks' durations are cut so that no block plays past it.
//!
//! To scan whole files, [`OpusReader::for_each_block`] gives the same blocks as compact
//! [`BlockRecord`]s (index, offset, bytes, kind, time, duration, TOC) through one loop per page,
//! faster than the iterator (`docs/benchmarks.md` has the numbers).
//!
//! See `docs/formats.md` for every rule with its clause.

use std::borrow::Cow;

use crate::ogg::{hex_prefix, Chunk, Page, PageWalker, Piece, Pieces};
use crate::{Block, BlockKind, Detail, Error, Format, Options, Place, Region, RegionKind, Result};

/// The rate of every Opus timestamp and duration, whatever the input's rate (RFC 7845 §4).
pub const SAMPLE_RATE: u32 = 48_000;

/// The most audio one Opus packet may hold: 120 ms at 48 kHz (RFC 6716 §3.4 R5).
pub const MAX_PACKET_SAMPLES: u32 = 5760;

/// The largest frame (RFC 6716 §3.2.1, §3.4 R2).
pub const MAX_FRAME_BYTES: usize = 1275;

/// The coding mode of a packet (RFC 6716 §3.1, Table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// SILK only (configurations 0–11): linear prediction, for speech.
    Silk,
    /// SILK and CELT together (configurations 12–15).
    Hybrid,
    /// CELT only (configurations 16–31): MDCT.
    Celt,
}

/// The audio bandwidth of a packet (RFC 6716 §2, Table 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bandwidth {
    /// 4 kHz.
    Narrowband,
    /// 6 kHz.
    Mediumband,
    /// 8 kHz.
    Wideband,
    /// 12 kHz.
    SuperWideband,
    /// 20 kHz.
    Fullband,
}

impl Bandwidth {
    /// The audio bandwidth in Hz (RFC 6716 Table 1).
    pub fn hz(self) -> u32 {
        match self {
            Bandwidth::Narrowband => 4_000,
            Bandwidth::Mediumband => 6_000,
            Bandwidth::Wideband => 8_000,
            Bandwidth::SuperWideband => 12_000,
            Bandwidth::Fullband => 20_000,
        }
    }
}

/// The table-of-contents byte that starts every Opus packet (RFC 6716 §3.1).
///
/// Kept as the byte itself (one byte in a block's [`PacketInfo`]); the methods decode its
/// fields (RFC 6716 §3.1, Table 2). Every byte value is a valid TOC.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Toc(u8);

/// Samples per frame at 48 kHz by configuration number (RFC 6716 Table 2).
const FRAME_SIZES: [u16; 32] = [
    // SILK-only: NB, MB, WB, each 10, 20, 40, 60 ms.
    480, 960, 1920, 2880, 480, 960, 1920, 2880, 480, 960, 1920, 2880,
    // Hybrid: SWB, FB, each 10, 20 ms.
    480, 960, 480, 960, // CELT-only: NB, WB, SWB, FB, each 2.5, 5, 10, 20 ms.
    120, 240, 480, 960, 120, 240, 480, 960, 120, 240, 480, 960, 120, 240, 480, 960,
];

impl Toc {
    /// The TOC byte `byte`.
    #[inline]
    pub const fn new(byte: u8) -> Toc {
        Toc(byte)
    }

    /// The byte itself.
    #[inline]
    pub const fn byte(self) -> u8 {
        self.0
    }

    /// Configuration number, 0–31 (the top five bits).
    #[inline]
    pub const fn config(self) -> u8 {
        self.0 >> 3
    }

    /// Coding mode (RFC 6716 Table 2: configurations 0–11 SILK, 12–15 hybrid, 16–31 CELT).
    pub const fn mode(self) -> Mode {
        match self.config() {
            0..=11 => Mode::Silk,
            12..=15 => Mode::Hybrid,
            _ => Mode::Celt,
        }
    }

    /// Audio bandwidth (RFC 6716 Table 2).
    pub const fn bandwidth(self) -> Bandwidth {
        let config = self.config();
        match config {
            0..=11 => match config / 4 {
                0 => Bandwidth::Narrowband,
                1 => Bandwidth::Mediumband,
                _ => Bandwidth::Wideband,
            },
            12 | 13 => Bandwidth::SuperWideband,
            14 | 15 => Bandwidth::Fullband,
            _ => match (config - 16) / 4 {
                0 => Bandwidth::Narrowband,
                1 => Bandwidth::Wideband,
                2 => Bandwidth::SuperWideband,
                _ => Bandwidth::Fullband,
            },
        }
    }

    /// Samples per frame at 48 kHz (120 = 2.5 ms … 2880 = 60 ms).
    #[inline]
    pub const fn frame_size(self) -> u32 {
        FRAME_SIZES[self.config() as usize] as u32
    }

    /// The stereo flag `s`.
    #[inline]
    pub const fn stereo(self) -> bool {
        self.0 & 0x04 != 0
    }

    /// Frame-count code `c`, 0–3 (RFC 6716 §3.2): one frame, two equal frames, two frames of
    /// different sizes, or an arbitrary number of frames.
    #[inline]
    pub const fn code(self) -> u8 {
        self.0 & 0x03
    }
}

impl std::fmt::Debug for Toc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Toc")
            .field("byte", &self.byte())
            .field("config", &self.config())
            .field("mode", &self.mode())
            .field("bandwidth", &self.bandwidth())
            .field("frame_size", &self.frame_size())
            .field("stereo", &self.stereo())
            .field("code", &self.code())
            .finish()
    }
}

/// The frame layout of one Opus packet (RFC 6716 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Frames {
    /// Number of frames, 1–48.
    pub count: u8,
    /// Code 3 only: the frames have individual sizes (VBR).
    pub vbr: bool,
    /// Code 3 only: trailing padding bytes (not counting the bytes that give its length).
    pub padding: u32,
}

/// Parses the TOC and frame layout of an Opus packet and checks the requirements of
/// RFC 6716 §3.4.
///
/// With `check_lengths`, every requirement R1–R7 is checked. Without it only the ones that do
/// not depend on the packet's length layout are (R1, R5, and the padding fitting in the packet):
/// the packets of a multistream Ogg Opus stream (RFC 7845 §5.1.1) hold several Opus packets, all
/// but the last in self-delimiting framing (RFC 6716 Appendix B), whose lengths are laid out
/// differently. On failure, returns what the packet should have been, citing the requirement.
#[inline(always)]
pub fn parse_packet(
    data: &[u8],
    check_lengths: bool,
) -> std::result::Result<(Toc, Frames), &'static str> {
    // The common cases inline: one frame, or two of equal size, that pass R2 and R3. Anything
    // else, errors included, is decided by the general parser.
    if let Some((&byte, rest)) = data.split_first() {
        let toc = Toc::new(byte);
        let len = rest.len();
        let count = match toc.code() {
            0 if !check_lengths || len <= MAX_FRAME_BYTES => 1,
            1 if !check_lengths || (len % 2 == 0 && len / 2 <= MAX_FRAME_BYTES) => 2,
            _ => 0,
        };
        if count != 0 {
            let frames = Frames {
                count,
                vbr: false,
                padding: 0,
            };
            return Ok((toc, frames));
        }
    }
    parse_packet_general(data, check_lengths)
}

impl Frames {
    /// `count` frames of equal size, no padding (codes 0 and 1).
    #[inline(always)]
    const fn one(count: u8) -> Frames {
        Frames {
            count,
            vbr: false,
            padding: 0,
        }
    }
}

/// The frame layout of a valid packet by [`parse_packet_general`], `None` for an invalid one.
#[inline(never)]
fn frames_general(data: &[u8], check_lengths: bool) -> Option<Frames> {
    parse_packet_general(data, check_lengths)
        .ok()
        .map(|(_, frames)| frames)
}

/// [`parse_packet`] for every packet.
#[inline(never)]
fn parse_packet_general(
    data: &[u8],
    check_lengths: bool,
) -> std::result::Result<(Toc, Frames), &'static str> {
    let (&toc_byte, rest) = data
        .split_first()
        .ok_or("an Opus packet of at least one byte (RFC 6716 §3.4 R1)")?;
    let toc = Toc::new(toc_byte);
    const TOO_BIG: &str = "frames of at most 1275 bytes (RFC 6716 §3.4 R2)";
    let frames = match toc.code() {
        0 => {
            if check_lengths && rest.len() > MAX_FRAME_BYTES {
                return Err(TOO_BIG);
            }
            Frames {
                count: 1,
                vbr: false,
                padding: 0,
            }
        }
        1 => {
            if check_lengths {
                if rest.len() % 2 != 0 {
                    return Err("a code 1 packet with an odd total length (RFC 6716 §3.4 R3)");
                }
                if rest.len() / 2 > MAX_FRAME_BYTES {
                    return Err(TOO_BIG);
                }
            }
            Frames {
                count: 2,
                vbr: false,
                padding: 0,
            }
        }
        2 => {
            if check_lengths {
                const R4: &str =
                    "a code 2 packet whose first frame length fits in it (RFC 6716 §3.4 R4)";
                let (first, used) = frame_length(rest).ok_or(R4)?;
                let remaining = rest.len() - used;
                if first > remaining {
                    return Err(R4);
                }
                if remaining - first > MAX_FRAME_BYTES {
                    return Err(TOO_BIG);
                }
            }
            Frames {
                count: 2,
                vbr: true,
                padding: 0,
            }
        }
        _ => {
            let (&count_byte, mut rest) = rest
                .split_first()
                .ok_or("a code 3 packet of at least two bytes (RFC 6716 §3.4 R6)")?;
            let count = count_byte & 0x3F;
            let vbr = count_byte & 0x80 != 0;
            if count == 0 {
                return Err("a code 3 packet with at least one frame (RFC 6716 §3.4 R5)");
            }
            if u32::from(count) * toc.frame_size() > MAX_PACKET_SAMPLES {
                return Err("a code 3 packet of at most 120 ms (RFC 6716 §3.4 R5)");
            }
            const PADDING: &str = "code 3 padding that fits in the packet (RFC 6716 §3.4 R6, R7)";
            let mut padding = 0u32;
            if count_byte & 0x40 != 0 {
                // RFC 6716 §3.2.5: each 255 adds 254 bytes and asks for another length byte.
                loop {
                    let (&b, r) = rest.split_first().ok_or(PADDING)?;
                    rest = r;
                    if b == 255 {
                        padding += 254;
                    } else {
                        padding += u32::from(b);
                        break;
                    }
                }
            }
            let mut available = rest.len().checked_sub(padding as usize).ok_or(PADDING)?;
            if check_lengths {
                if vbr {
                    const R7: &str =
                        "a VBR code 3 packet that holds its frame lengths (RFC 6716 §3.4 R7)";
                    for _ in 1..count {
                        let (len, used) = frame_length(rest).ok_or(R7)?;
                        rest = rest.get(used..).ok_or(R7)?;
                        available = available.checked_sub(used + len).ok_or(R7)?;
                    }
                    if available > MAX_FRAME_BYTES {
                        return Err(TOO_BIG);
                    }
                } else {
                    if available % usize::from(count) != 0 {
                        return Err(
                            "a CBR code 3 packet whose frames share its length (RFC 6716 §3.4 R6)",
                        );
                    }
                    if available / usize::from(count) > MAX_FRAME_BYTES {
                        return Err(TOO_BIG);
                    }
                }
            }
            Frames {
                count,
                vbr,
                padding,
            }
        }
    };
    Ok((toc, frames))
}

/// Reads a frame length (RFC 6716 §3.2.1): one byte below 252, else two bytes
/// (`first + 4 · second`). Returns the length and the bytes used.
fn frame_length(data: &[u8]) -> Option<(usize, usize)> {
    let first = *data.first()?;
    if first < 252 {
        Some((usize::from(first), 1))
    } else {
        let second = *data.get(1)?;
        Some((usize::from(first) + 4 * usize::from(second), 2))
    }
}

/// The duration in 48 kHz samples of a packet whose first two bytes are given, or `None` when
/// it has none (empty, code 3 without its count byte or with zero frames, over 120 ms).
fn packet_samples(b0: Option<u8>, b1: Option<u8>) -> Option<u32> {
    let toc = Toc::new(b0?);
    let frames = match toc.code() {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(b1? & 0x3F),
    };
    let samples = frames * toc.frame_size();
    (frames > 0 && samples <= MAX_PACKET_SAMPLES).then_some(samples)
}

/// Counts the audio packets completed in `pieces` and their samples; `packets` is the number of
/// packets of the stream completed before them (0 and 1 are the headers) and `pending` the
/// packet the first piece completes, if one is being assembled.
fn page_samples(packets: u64, pending: Option<&Pending>, pieces: &Pieces<'_>) -> (u32, i64) {
    let mut samples = 0i64;
    let mut audio = 0u32;
    let mut carried: &[u8] = pending.map_or(&[], |p| &p.buf);
    for (number, piece) in (packets..).zip(pieces.clone()) {
        if !piece.complete {
            break;
        }
        if number >= 2 {
            let mut bytes = carried.iter().chain(piece.data).copied();
            let (b0, b1) = (bytes.next(), bytes.next());
            samples += i64::from(packet_samples(b0, b1).unwrap_or(0));
            audio += 1;
        }
        carried = &[];
    }
    (audio, samples)
}

/// The identification header (RFC 7845 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpusHead {
    /// Version; the upper four bits are the major version, which must be 0.
    pub version: u8,
    /// Output channels, at least 1.
    pub channels: u8,
    /// Samples at 48 kHz to discard from the start of the decoded output (§4.2).
    pub pre_skip: u16,
    /// Sample rate of the encoder's input, for information only (0 = unspecified).
    pub input_sample_rate: u32,
    /// Gain to apply to the output, in Q7.8 dB.
    pub output_gain: i16,
    /// Channel mapping family (§5.1.1): 0 = mono/stereo, 1 = Vorbis order, 255 = undefined.
    pub mapping_family: u8,
    /// Opus streams in each packet (1 for family 0).
    pub streams: u8,
    /// Of those, the coupled (stereo) ones.
    pub coupled_streams: u8,
    /// The channel mapping table, one entry per output channel (empty for family 0, where the
    /// mapping is implicit).
    pub mapping: Vec<u8>,
}

fn malformed(offset: u64, expected: &'static str, found: String) -> Error {
    Error::Malformed {
        format: Format::OggOpus,
        offset,
        expected,
        found,
    }
}

impl OpusHead {
    /// Parses an identification header packet; `offset` is its byte offset in the file, for
    /// errors.
    pub fn parse(packet: &[u8], offset: u64) -> Result<OpusHead> {
        let Some(rest) = packet.strip_prefix(b"OpusHead") else {
            return Err(malformed(
                offset,
                "the identification header magic OpusHead (RFC 7845 §5.1)",
                hex_prefix(packet, 8),
            ));
        };
        let Some(&[version, channels, s0, s1, r0, r1, r2, r3, g0, g1, mapping_family]) =
            rest.get(..11)
        else {
            return Err(malformed(
                offset,
                "an identification header of at least 19 bytes (RFC 7845 §5.1)",
                format!("{} bytes", packet.len()),
            ));
        };
        if version >> 4 != 0 {
            return Err(Error::Unsupported {
                format: Format::OggOpus,
                offset,
                what: format!("OpusHead version {version} (major version above 0, RFC 7845 §5.1)"),
            });
        }
        if channels == 0 {
            return Err(malformed(
                offset,
                "at least one output channel (RFC 7845 §5.1)",
                "0 channels".into(),
            ));
        }
        let mut head = OpusHead {
            version,
            channels,
            pre_skip: u16::from_le_bytes([s0, s1]),
            input_sample_rate: u32::from_le_bytes([r0, r1, r2, r3]),
            output_gain: i16::from_le_bytes([g0, g1]),
            mapping_family,
            streams: 1,
            coupled_streams: channels - 1,
            mapping: Vec::new(),
        };
        if mapping_family == 0 {
            // §5.1.1.1: one stream, mono or stereo, no table.
            if channels > 2 {
                return Err(malformed(
                    offset,
                    "1 or 2 channels for channel mapping family 0 (RFC 7845 §5.1.1.1)",
                    format!("{channels} channels"),
                ));
            }
            return Ok(head);
        }
        if mapping_family == 1 && channels > 8 {
            return Err(malformed(
                offset,
                "1 to 8 channels for channel mapping family 1 (RFC 7845 §5.1.1.2)",
                format!("{channels} channels"),
            ));
        }
        let table = rest.get(11..);
        let (Some(&streams), Some(&coupled), Some(mapping)) = (
            table.and_then(|t| t.first()),
            table.and_then(|t| t.get(1)),
            table.and_then(|t| t.get(2..2 + usize::from(channels))),
        ) else {
            return Err(malformed(
                offset,
                "a channel mapping table of 2 + channels bytes (RFC 7845 §5.1.1)",
                format!("{} bytes for {channels} channels", packet.len()),
            ));
        };
        let total = u16::from(streams) + u16::from(coupled);
        if streams == 0 || coupled > streams || total > 255 {
            return Err(malformed(
                offset,
                "1 to 255 streams, no more coupled than total (RFC 7845 §5.1.1)",
                format!("{streams} streams, {coupled} coupled"),
            ));
        }
        if let Some(&bad) = mapping.iter().find(|&&m| m != 255 && u16::from(m) >= total) {
            return Err(malformed(
                offset,
                "channel mapping entries below the decoded channel count, or 255 (RFC 7845 §5.1.1)",
                format!("entry {bad} with {total} decoded channels"),
            ));
        }
        head.streams = streams;
        head.coupled_streams = coupled;
        head.mapping = mapping.to_vec();
        Ok(head)
    }
}

/// The comment header (RFC 7845 §5.2): vendor string and user comments.
///
/// The comments are counted and their lengths checked, not stored: their bytes are in the
/// header's block.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpusTags {
    /// The vendor string (UTF-8, invalid sequences replaced).
    pub vendor: String,
    /// Number of user comments (`TAG=value` strings).
    pub comment_count: u32,
}

impl OpusTags {
    /// Parses a comment header packet; `offset` is its byte offset in the file, for errors.
    ///
    /// Every length is checked against the bytes that remain before anything is read, so a
    /// header that claims a 4 GB vendor string or a billion comments is an error, not an
    /// allocation.
    pub fn parse(packet: &[u8], offset: u64) -> Result<OpusTags> {
        let Some(rest) = packet.strip_prefix(b"OpusTags") else {
            return Err(malformed(
                offset,
                "the comment header magic OpusTags (RFC 7845 §5.2)",
                hex_prefix(packet, 8),
            ));
        };
        let (vendor_len, rest) = read_u32(rest).ok_or_else(|| {
            malformed(
                offset,
                "a vendor string length (RFC 7845 §5.2)",
                format!("{} bytes", packet.len()),
            )
        })?;
        let vendor = rest.get(..vendor_len as usize).ok_or_else(|| {
            malformed(
                offset,
                "a vendor string within the comment header (RFC 7845 §5.2)",
                format!("length {vendor_len}, {} bytes remain", rest.len()),
            )
        })?;
        let rest = rest.get(vendor_len as usize..).unwrap_or(&[]);
        let (comment_count, mut rest) = read_u32(rest).ok_or_else(|| {
            malformed(
                offset,
                "a user comment count (RFC 7845 §5.2)",
                "end of the comment header".into(),
            )
        })?;
        // Each comment needs at least its 4-byte length.
        if comment_count as usize > rest.len() / 4 {
            return Err(malformed(
                offset,
                "user comments within the comment header (RFC 7845 §5.2)",
                format!("{comment_count} comments in {} bytes", rest.len()),
            ));
        }
        for i in 0..comment_count {
            let bad = || {
                malformed(
                    offset,
                    "user comments within the comment header (RFC 7845 §5.2)",
                    format!("comment {i} runs past the end"),
                )
            };
            let (len, r) = read_u32(rest).ok_or_else(bad)?;
            rest = r.get(len as usize..).ok_or_else(bad)?;
        }
        Ok(OpusTags {
            vendor: String::from_utf8_lossy(vendor).into_owned(),
            comment_count,
        })
    }
}

fn read_u32(data: &[u8]) -> Option<(u32, &[u8])> {
    let (&[a, b, c, d], rest) = (data.get(..4)?, data.get(4..)?) else {
        return None;
    };
    Some((u32::from_le_bytes([a, b, c, d]), rest))
}

/// Which header, or audio, a packet is (RFC 7845 §3: packet 0 is `OpusHead`, packet 1
/// `OpusTags`, the rest audio).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// The identification header.
    Head,
    /// The comment header.
    Tags,
    /// An audio packet.
    Audio,
}

/// Facts about one packet of an Ogg Opus stream: the [`Detail::Opus`] payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PacketInfo {
    /// Header or audio.
    pub packet: PacketKind,
    /// The TOC byte decoded (audio packets only).
    pub toc: Option<Toc>,
    /// Number of frames and padding (audio packets only): the count byte for code 3.
    pub frames: Option<Frames>,
    /// Samples at 48 kHz the packet decodes to, before end trimming (0 for headers).
    pub duration: u32,
    /// Samples cut from the end of this packet by end trimming (RFC 7845 §4.4); the block's
    /// [`Place::Time`] duration is `duration - trimmed`.
    pub trimmed: u32,
    /// Serial number of the logical stream.
    pub serial: u32,
    /// Which link of a chained file (RFC 3533 §4) the packet belongs to, from 0.
    pub link: u32,
    /// Sequence number of the page on which the packet ends.
    pub page_sequence: u32,
    /// Granule position of the page on which the packet ends.
    pub granule_position: i64,
    /// Whether the packet started on an earlier page (its bytes were assembled).
    pub spans_pages: bool,
    /// Whether data of this stream was lost just before this packet: a jump in page sequence
    /// numbers (RFC 3533 §6), a page dropped for a bad CRC, or a packet whose other part is
    /// missing. The bytes of such an incomplete packet are not part of any block.
    pub after_gap: bool,
}

/// A packet being assembled across pages (RFC 3533 §5: lacing value 255 at the end of a page).
#[derive(Debug)]
struct Pending {
    /// Byte offset in the file of the packet's first byte.
    offset: u64,
    buf: Vec<u8>,
}

/// The state of the logical stream being read (one link of a chain).
#[derive(Debug)]
struct Link {
    serial: u32,
    index: u32,
    /// Packets completed so far; 0 and 1 are the headers.
    packets: u64,
    /// EOS seen.
    ended: bool,
    /// A page without BOS seen: a later BOS page starts a new link (RFC 3533 §4: all BOS pages
    /// of a link come first).
    saw_data_page: bool,
    last_sequence: Option<u32>,
    /// Granule-domain position (pre-skip included) where the next audio packet starts.
    next_pos: Option<i64>,
    /// The granule position of the last page on which an audio packet ended: where the next
    /// page's packets start.
    resync: Option<i64>,
    /// Output samples of the links before this one.
    base: i64,
    pre_skip: i64,
    /// Whether the stream carries one Opus stream per packet, so that RFC 6716 §3.4 length
    /// checks apply.
    single_stream: bool,
    gap: bool,
}

impl Link {
    fn new(serial: u32, index: u32, base: i64) -> Link {
        Link {
            serial,
            index,
            packets: 0,
            ended: false,
            saw_data_page: false,
            last_sequence: None,
            next_pos: None,
            resync: None,
            base,
            pre_skip: 0,
            single_stream: true,
            gap: false,
        }
    }
}

/// The page whose packets are being yielded.
#[derive(Debug)]
struct PageState<'a> {
    page: Page<'a>,
    pieces: Pieces<'a>,
    /// Granule-domain position where the next audio packet completed on this page starts.
    pos: i64,
    /// End trimming: no packet on this page plays past this granule-domain position.
    end_limit: Option<i64>,
}

/// Reads the packets of an Ogg Opus file held in memory.
///
/// Picks the first logical stream whose BOS page starts with `OpusHead`, or the one whose serial
/// is [`Options::ogg_serial`]; pages of other streams become [`RegionKind::OtherStream`]
/// regions. Chained files (a new Opus stream starting after the previous one ended) are
/// followed when no serial was asked for: each link's headers are yielded again and timestamps
/// continue from where the previous link's output ended.
#[derive(Debug)]
pub struct OpusReader<'a> {
    // Boxed: one allocation per file keeps the reader small to move (it sits in an enum with
    // the other readers) and costs nothing per block.
    state: Box<State<'a>>,
}

/// Everything the reader tracks between blocks.
#[derive(Debug)]
struct State<'a> {
    data: &'a [u8],
    walker: PageWalker<'a>,
    options: Options,
    regions: Vec<Region>,
    head: OpusHead,
    tags: Option<OpusTags>,
    link: Link,
    page: Option<PageState<'a>>,
    pending: Option<Pending>,
    /// Output sample position after the last audio block yielded.
    output_end: i64,
    index: u64,
    done: bool,
    /// The hot path ([`State::next_in_page`]) runs while `index` is below this; 0 when it
    /// may not run. Set by [`State::refresh_fast`] after each call of the general path, and
    /// only for a page on which the hot path's simplifications hold.
    fast_end: u64,
    /// `index` when [`State::refresh_fast`] let the hot path run: the blocks since are the hot
    /// path's, whose bookkeeping [`State::sync_fast`] does.
    fast_start: u64,
    /// While the hot path runs: the link's base less its pre-skip, which turns a
    /// granule-domain position into an output sample position.
    out_base: i64,
    /// While the hot path runs: what its blocks' [`PacketInfo`] share (the page's facts), for
    /// it to fill in the packet's own.
    fast_info: PacketInfo,
}

/// The most samples the packets completed on one page can hold: at most 255 of them (one per
/// lacing value), each of at most 120 ms (RFC 6716 §3.4 R5).
const PAGE_MAX_SAMPLES: i64 = 255 * MAX_PACKET_SAMPLES as i64;

/// The most bytes of a packet's piece on one page: 255 lacing values of 255 (RFC 3533 §6).
const PAGE_MAX_BODY: u64 = 255 * 255;

impl<'a> OpusReader<'a> {
    /// Opens a reader over a whole file held in memory: finds the Opus stream and parses its
    /// identification header.
    ///
    /// Fails when the input holds no valid Ogg page, no Opus stream (or none with the requested
    /// serial), or an invalid `OpusHead`.
    pub fn new(data: &'a [u8], options: &Options) -> Result<Self> {
        if data.len() as u64 > options.limits.max_file_bytes {
            return Err(Error::Limit {
                offset: 0,
                what: "max_file_bytes",
                limit: options.limits.max_file_bytes,
                found: data.len() as u64,
            });
        }
        let mut walker = PageWalker::new(data, options.verify_crc);
        let mut regions = Vec::new();
        let mut foreign: Option<Page<'a>> = None;
        let wanted = |serial: u32| options.ogg_serial.is_none_or(|s| s == serial);
        let first = loop {
            match walker.next() {
                Some(Ok(Chunk::Page(p))) => {
                    if p.is_bos() && wanted(p.serial()) && p.body().starts_with(b"OpusHead") {
                        break p;
                    }
                    if foreign.is_none() && p.is_bos() {
                        foreign = Some(p);
                    }
                    push_region(&mut regions, other_stream(&p));
                }
                Some(Ok(Chunk::Skipped(r))) => push_region(&mut regions, r),
                Some(Err(e)) => return Err(e),
                None => return Err(no_stream(data, foreign, options.ogg_serial)),
            }
        };
        let head_packet = first
            .pieces()
            .next()
            .filter(|p| p.complete && !first.is_continued());
        let Some(head_packet) = head_packet else {
            return Err(malformed(
                first.body_offset(),
                "OpusHead complete on the first page of its stream (RFC 7845 §5.1)",
                "a packet continued across pages".into(),
            ));
        };
        let head = OpusHead::parse(head_packet.data, first.body_offset())?;
        let mut state = State {
            data,
            walker,
            options: options.clone(),
            regions,
            head,
            tags: None,
            link: Link::new(first.serial(), 0, 0),
            page: None,
            pending: None,
            output_end: 0,
            index: 0,
            done: false,
            fast_end: 0,
            fast_start: 0,
            out_base: 0,
            fast_info: PacketInfo {
                packet: PacketKind::Audio,
                toc: None,
                frames: None,
                duration: 0,
                trimmed: 0,
                serial: 0,
                link: 0,
                page_sequence: 0,
                granule_position: 0,
                spans_pages: false,
                after_gap: false,
            },
        };
        state.load_page(first)?;
        Ok(OpusReader {
            state: Box::new(state),
        })
    }

    /// Ranges of the input seen so far that are not part of any block: garbage skipped while
    /// resynchronising, pages of other logical streams, trailing bytes. Page headers and the
    /// fragments of packets broken by lost pages are not listed.
    pub fn regions(&self) -> &[Region] {
        &self.state.regions
    }

    /// The identification header of the stream being read (of the current link in a chained
    /// file).
    pub fn head(&self) -> &OpusHead {
        &self.state.head
    }

    /// The comment header of the stream being read, once its block has been yielded.
    pub fn tags(&self) -> Option<&OpusTags> {
        self.state.tags.as_ref()
    }

    /// The serial number of the logical stream being read.
    pub fn serial(&self) -> u32 {
        self.state.link.serial
    }
}

impl<'a> State<'a> {
    /// Starts the walk through a page of the stream being read: checks its sequence number and
    /// continuation flag, and places its packets in time.
    fn load_page(&mut self, page: Page<'a>) -> Result<()> {
        let link = &mut self.link;
        // RFC 3533 §6: sequence numbers increase by one per page; a jump means lost pages, and
        // a packet left unfinished before them can never be completed.
        let lost = link
            .last_sequence
            .is_some_and(|s| page.sequence() != s.wrapping_add(1));
        link.last_sequence = Some(page.sequence());
        if !page.is_bos() {
            link.saw_data_page = true;
        }
        if lost {
            link.gap = true;
            self.pending = None;
        }
        let mut pieces = page.pieces();
        if page.is_continued() {
            if self.pending.is_none() {
                // The start of this packet was lost (or never existed): drop the rest of it.
                pieces.next();
                link.gap = true;
            }
        } else if self.pending.take().is_some() {
            // The unfinished packet of the previous page is not continued here (RFC 3533 §6).
            link.gap = true;
        }
        if page.is_eos() {
            link.ended = true;
        }

        // Where the first audio packet completed on this page starts (RFC 7845 §4). A page's
        // granule position counts the samples of every packet completed up to and including
        // it. Within a stream, the packets of a page therefore start at the previous page's
        // granule position (as ffmpeg counts); on the first audio page, or after lost pages,
        // they start at this page's granule position less the durations of its packets.
        if let Some(granule) = link.resync.take() {
            link.next_pos = Some(granule);
        }
        let granule = page.granule_position();
        let pos = match link.next_pos {
            Some(next) if !lost || granule == -1 => next,
            known => {
                let (audio, samples) = page_samples(link.packets, self.pending.as_ref(), &pieces);
                match known {
                    // No audio packet ends here (headers, or a page in the middle of a long
                    // packet), or packets end on a page without a granule position (against
                    // RFC 3533 §6): carry on.
                    _ if audio == 0 || granule == -1 => known.unwrap_or(0),
                    Some(_) => granule.saturating_sub(samples),
                    None if granule >= samples => granule - samples,
                    // RFC 7845 §4.5: on a first audio page that is also the last, a granule
                    // position below its samples is end trimming from a start at 0.
                    None if page.is_eos() => 0,
                    None => {
                        return Err(malformed(
                            page.offset(),
                            "a first audio page whose granule position is at least the \
                             samples of its packets (RFC 7845 §4.5)",
                            format!("granule position {granule} for {samples} samples"),
                        ))
                    }
                }
            }
        };
        // RFC 7845 §4.4: on the last page, a granule position below the end of its packets
        // trims the end; no packet plays past it.
        let end_limit = (page.is_eos() && granule != -1).then_some(granule);
        self.page = Some(PageState {
            page,
            pieces,
            pos,
            end_limit,
        });
        Ok(())
    }

    /// Routes a page: the stream being read, the first page of a new link, or another stream.
    fn on_page(&mut self, page: Page<'a>) -> Result<()> {
        if page.serial() == self.link.serial && !self.link.ended {
            return self.load_page(page);
        }
        let new_link = page.is_bos()
            && !page.is_continued()
            && (self.link.ended || self.link.saw_data_page)
            && self.options.ogg_serial.is_none_or(|s| s == page.serial())
            && page.body().starts_with(b"OpusHead");
        if new_link {
            // RFC 3533 §4 (chaining): a new link begins with its own BOS pages once the previous
            // link is over; RFC 7845 §3: it repeats the headers.
            let first = page.pieces().next();
            if !first.is_some_and(|p| p.complete) {
                return Err(malformed(
                    page.body_offset(),
                    "OpusHead complete on the first page of its stream (RFC 7845 §5.1)",
                    "a packet continued across pages".into(),
                ));
            }
            self.pending = None;
            self.link = Link::new(page.serial(), self.link.index + 1, self.output_end);
            return self.load_page(page);
        }
        push_region(&mut self.regions, other_stream(&page));
        Ok(())
    }

    /// Adds an unfinished piece to the packet being assembled, refusing it above the block-size
    /// limit before copying anything.
    fn continue_packet(&mut self, page: &Page<'a>, piece: Piece<'a>) -> Result<()> {
        let (offset, have) = match &self.pending {
            Some(p) => (p.offset, p.buf.len()),
            None => (page.body_offset() + piece.start as u64, 0),
        };
        self.check_block_bytes(offset, have + piece.data.len())?;
        match &mut self.pending {
            Some(p) => p.buf.extend_from_slice(piece.data),
            None => {
                self.pending = Some(Pending {
                    offset,
                    buf: piece.data.to_vec(),
                })
            }
        }
        Ok(())
    }

    fn check_block_bytes(&self, offset: u64, len: usize) -> Result<()> {
        let limit = self.options.limits.max_block_bytes;
        if len as u64 > limit {
            return Err(Error::Limit {
                offset,
                what: "max_block_bytes",
                limit,
                found: len as u64,
            });
        }
        Ok(())
    }

    /// Makes the block of a packet that ends with `piece`.
    fn complete_packet(&mut self, page: Page<'a>, piece: Piece<'a>) -> Result<Block<'a>> {
        let (offset, carried) = match &self.pending {
            Some(p) => (p.offset, p.buf.len()),
            None => (page.body_offset() + piece.start as u64, 0),
        };
        if self.index >= self.options.limits.max_blocks {
            return Err(Error::Limit {
                offset,
                what: "max_blocks",
                limit: self.options.limits.max_blocks,
                found: self.index + 1,
            });
        }
        self.check_block_bytes(offset, carried + piece.data.len())?;
        let (data, spans_pages): (Cow<'a, [u8]>, bool) = match self.pending.take() {
            Some(mut p) => {
                p.buf.extend_from_slice(piece.data);
                (Cow::Owned(p.buf), true)
            }
            None => (Cow::Borrowed(piece.data), false),
        };
        let number = self.link.packets;
        self.link.packets += 1;
        let mut info = PacketInfo {
            packet: PacketKind::Audio,
            toc: None,
            frames: None,
            duration: 0,
            trimmed: 0,
            serial: page.serial(),
            link: self.link.index,
            page_sequence: page.sequence(),
            granule_position: page.granule_position(),
            spans_pages,
            after_gap: std::mem::take(&mut self.link.gap),
        };
        let (kind, place) = match number {
            0 => {
                let head = OpusHead::parse(&data, offset)?;
                self.link.pre_skip = i64::from(head.pre_skip);
                self.link.single_stream = head.streams == 1;
                self.head = head;
                info.packet = PacketKind::Head;
                (BlockKind::Metadata, Place::None)
            }
            1 => {
                self.tags = Some(OpusTags::parse(&data, offset)?);
                info.packet = PacketKind::Tags;
                (BlockKind::Metadata, Place::None)
            }
            _ => {
                let (toc, frames) = parse_packet(&data, self.link.single_stream)
                    .map_err(|expected| malformed(offset, expected, hex_prefix(&data, 4)))?;
                return Ok(self.audio_block(offset, data, info, toc, frames));
            }
        };
        let block = Block {
            index: self.index,
            offset,
            bit: 0,
            data,
            bits: None,
            kind,
            place,
            detail: Detail::Opus(info),
        };
        self.index += 1;
        Ok(block)
    }

    /// Lets the hot path run on the current page when its simplifications hold there: no
    /// packet is being assembled, the headers are behind, no gap is to be reported, no packet
    /// inside a page can reach the block-size limit, no end trimming applies, and no position
    /// of a packet completed on this page can overflow, so that plain arithmetic gives what
    /// [`State::audio_block`]'s saturating arithmetic would. Called after every call of the
    /// general path.
    fn refresh_fast(&mut self) {
        self.fast_end = 0;
        self.fast_start = self.index;
        let link = &self.link;
        if self.done
            || self.pending.is_some()
            || link.packets < 2
            || link.gap
            || self.options.limits.max_block_bytes < PAGE_MAX_BODY
        {
            return;
        }
        let Some(state) = &self.page else { return };
        if state.end_limit.is_some() {
            return;
        }
        // Every packet completed on this page starts and ends in [pos, pos + PAGE_MAX_SAMPLES].
        // audio_block's plain path needs the end, base + start, base + start - pre_skip and
        // that plus the duration to fit: check them at the extremes of that range.
        let pos = state.pos;
        let fits = pos.checked_add(PAGE_MAX_SAMPLES).is_some()
            && link.base.checked_add(pos).is_some_and(|from_base| {
                from_base.checked_sub(link.pre_skip).is_some()
                    && from_base.checked_add(PAGE_MAX_SAMPLES).is_some()
            });
        if !fits {
            return;
        }
        self.out_base = link.base - link.pre_skip;
        let page = &state.page;
        self.fast_info = PacketInfo {
            packet: PacketKind::Audio,
            toc: None,
            frames: None,
            duration: 0,
            trimmed: 0,
            serial: page.serial(),
            link: link.index,
            page_sequence: page.sequence(),
            granule_position: page.granule_position(),
            spans_pages: false,
            after_gap: false,
        };
        self.fast_end = self.options.limits.max_blocks;
    }

    /// The bookkeeping of the blocks the hot path yielded since [`State::refresh_fast`], done
    /// once before the general path runs: what [`State::audio_block`] does per packet.
    fn sync_fast(&mut self) {
        let yielded = self.index - self.fast_start;
        self.fast_end = 0;
        self.fast_start = self.index;
        if yielded == 0 {
            return;
        }
        self.link.packets += yielded;
        if let Some(state) = &self.page {
            self.link.next_pos = Some(state.pos);
            let granule = state.page.granule_position();
            if granule != -1 {
                self.link.resync = Some(granule);
            }
            self.output_end = self.out_base + state.pos;
        }
    }

    /// The hot path, taken for every audio packet that lies whole inside the page being read
    /// while [`State::refresh_fast`] allows it: a valid packet on a page where no limit, gap or
    /// end trimming applies. It peeks at the next piece of the page and builds the block that
    /// [`State::complete_packet`] would, leaving the per-page bookkeeping to
    /// [`State::sync_fast`]; `None` (anything else) leaves the reader as it was, for the
    /// general path.
    #[inline(always)]
    fn next_in_page(&mut self) -> Option<Block<'a>> {
        if self.index >= self.fast_end {
            return None;
        }
        let state = self.page.as_mut()?;
        let (piece, seg, body_pos) = state.pieces.peek_complete()?;
        // parse_packet's common cases, written out so that the frame layout stays in registers
        // (through parse_packet's result in memory, written field by field and read whole,
        // it stalled store forwarding); the rest through the general parser.
        let (&byte, rest) = piece.data.split_first()?;
        let toc = Toc::new(byte);
        let single = self.link.single_stream;
        let len = rest.len();
        let frames = match toc.code() {
            0 if !single || len <= MAX_FRAME_BYTES => Frames::one(1),
            1 if !single || (len % 2 == 0 && len / 2 <= MAX_FRAME_BYTES) => Frames::one(2),
            _ => frames_general(piece.data, single)?,
        };
        state.pieces.skip_to(seg, body_pos);
        let duration = u32::from(frames.count) * toc.frame_size();
        let start = state.pos;
        state.pos = start + i64::from(duration);
        let page = &state.page;
        let index = self.index;
        self.index += 1;
        Some(Block {
            index,
            offset: page.body_offset() + piece.start as u64,
            bit: 0,
            data: Cow::Borrowed(piece.data),
            bits: None,
            kind: BlockKind::Audio,
            place: Place::Time {
                start: self.out_base + start,
                duration,
                rate: SAMPLE_RATE,
            },
            detail: Detail::Opus(PacketInfo {
                toc: Some(toc),
                frames: Some(frames),
                duration,
                ..self.fast_info
            }),
        })
    }

    /// The hot path over the rest of the page in one loop, for [`OpusReader::for_each_block`]:
    /// gives `f` the record of every packet that [`State::next_in_page`] would yield, one after
    /// the other, and stops where it would return `None`. The walk's position, the block index
    /// and the time position stay in registers and are written back once.
    #[inline(always)]
    fn for_each_in_page<F: FnMut(BlockRecord<'a>)>(&mut self, f: &mut F) {
        let mut index = self.index;
        let Some(allowed) = self.fast_end.checked_sub(index).filter(|&n| n > 0) else {
            return;
        };
        let Some(state) = self.page.as_mut() else {
            return;
        };
        let single = self.link.single_stream;
        let body_offset = state.page.body_offset();
        let (table, body, mut seg, mut body_pos) = state.pieces.parts();
        // Each packet takes at least one lacing value: with the table cut after `allowed` more
        // of them, the loop cannot pass the block limit, and needs no count of its own. A
        // packet cut off by it goes to the general path, as one continued on the next page.
        let allowed = usize::try_from(allowed).unwrap_or(usize::MAX);
        let table = table
            .get(..seg.saturating_add(allowed).min(table.len()))
            .unwrap_or(table);
        // The output sample position (granule-domain position plus out_base) of the next packet.
        let mut start = self.out_base + state.pos;
        'packets: loop {
            // The packet's lacing values: 255 continues it, less ends it (RFC 3533 §5); a run
            // that reaches the end of the table continues on the next page (general path).
            let mut next_seg = seg;
            let mut len = 0usize;
            loop {
                let Some(&lacing) = table.get(next_seg) else {
                    break 'packets;
                };
                next_seg += 1;
                len += usize::from(lacing);
                if lacing < 255 {
                    break;
                }
            }
            let Some(data) = body.get(body_pos..body_pos + len) else {
                break;
            };
            // As in next_in_page: codes 0 and 1 here, the rest through the general parser;
            // an invalid packet is left to the general path, which reports it.
            let Some(&byte) = data.first() else {
                break;
            };
            let toc = Toc::new(byte);
            let len_rest = len - 1;
            let count = match toc.code() {
                0 if !single || len_rest <= MAX_FRAME_BYTES => 1,
                1 if !single || (len_rest.is_multiple_of(2) && len_rest / 2 <= MAX_FRAME_BYTES) => {
                    2
                }
                _ => match frames_general(data, single) {
                    Some(frames) => frames.count,
                    None => break,
                },
            };
            let duration = u32::from(count) * toc.frame_size();
            f(BlockRecord {
                index,
                offset: body_offset + body_pos as u64,
                data,
                kind: BlockKind::Audio,
                start,
                duration,
                toc: Some(toc),
            });
            seg = next_seg;
            body_pos += len;
            index += 1;
            start += i64::from(duration);
        }
        state.pieces.skip_to(seg, body_pos);
        state.pos = start - self.out_base;
        self.index = index;
    }

    /// The block of a valid audio packet, placed in time (RFC 7845 §4): it starts where the
    /// last packet of the page ended, lasts what its TOC says, and is cut by end trimming.
    /// `info` is filled in but for the audio facts.
    #[inline(always)]
    fn audio_block(
        &mut self,
        offset: u64,
        data: Cow<'a, [u8]>,
        mut info: PacketInfo,
        toc: Toc,
        frames: Frames,
    ) -> Block<'a> {
        let duration = u32::from(frames.count) * toc.frame_size();
        let samples = i64::from(duration);
        let state = self.page.as_mut();
        let (start, end_limit) = state.as_ref().map_or((0, None), |s| (s.pos, s.end_limit));
        let (base, pre_skip) = (self.link.base, self.link.pre_skip);
        // Positions saturate at the ends of i64 (granule positions come from the file). Where
        // nothing overflows and no end trimming applies, plain arithmetic gives the same.
        let plain = match (
            end_limit,
            start.checked_add(samples),
            base.checked_add(start),
        ) {
            (None, Some(end), Some(from_base)) => from_base
                .checked_sub(pre_skip)
                .and_then(|out_start| Some((end, out_start, out_start.checked_add(samples)?))),
            _ => None,
        };
        let (end, played, out_start, output_end) = match plain {
            Some((end, out_start, output_end)) => (end, duration, out_start, output_end),
            None => {
                let end = start.saturating_add(samples);
                let played_end = end_limit.map_or(end, |limit| end.min(limit));
                let played = played_end.saturating_sub(start).clamp(0, samples) as u32;
                let out_start = base.saturating_add(start).saturating_sub(pre_skip);
                (
                    end,
                    played,
                    out_start,
                    out_start.saturating_add(i64::from(played)),
                )
            }
        };
        if let Some(s) = state {
            s.pos = end;
        }
        self.link.next_pos = Some(end);
        if info.granule_position != -1 {
            self.link.resync = Some(info.granule_position);
        }
        self.output_end = output_end;
        info.toc = Some(toc);
        info.frames = Some(frames);
        info.duration = duration;
        info.trimmed = duration - played;
        let block = Block {
            index: self.index,
            offset,
            bit: 0,
            data,
            bits: None,
            kind: BlockKind::Audio,
            place: Place::Time {
                start: out_start,
                duration: played,
                rate: SAMPLE_RATE,
            },
            detail: Detail::Opus(info),
        };
        self.index += 1;
        block
    }

    fn next_block(&mut self) -> Result<Option<Block<'a>>> {
        self.next_block_or_page::<false>()
            .map(|step| step.flatten())
    }

    /// [`State::next_block`], which with `STOP_AT_PAGE` also returns `Some(None)` right after
    /// loading a page of the stream being read, before its first packet: for
    /// [`OpusReader::for_each_block`], whose page loop can then take that packet too.
    #[inline(always)]
    fn next_block_or_page<const STOP_AT_PAGE: bool>(
        &mut self,
    ) -> Result<Option<Option<Block<'a>>>> {
        loop {
            if let Some(state) = self.page.as_mut() {
                let page = state.page;
                match state.pieces.next() {
                    Some(piece) if piece.complete => {
                        return self.complete_packet(page, piece).map(|b| Some(Some(b)))
                    }
                    Some(piece) => self.continue_packet(&page, piece)?,
                    None => self.page = None,
                }
                continue;
            }
            match self.walker.next() {
                Some(Ok(Chunk::Page(page))) => {
                    self.on_page(page)?;
                    if STOP_AT_PAGE && self.page.is_some() {
                        return Ok(Some(None));
                    }
                }
                Some(Ok(Chunk::Skipped(region))) => push_region(&mut self.regions, region),
                Some(Err(e)) => return Err(e),
                None => return self.finish().map(|b| b.map(Some)),
            }
        }
    }

    /// The end of the input: a packet still being assembled was cut off.
    fn finish(&mut self) -> Result<Option<Block<'a>>> {
        if let Some(p) = self.pending.take() {
            let available = (self.data.len() as u64).saturating_sub(p.offset);
            return Err(Error::Truncated {
                format: Format::OggOpus,
                offset: p.offset,
                what: "Opus packet continued past the last page",
                needed: available + 1,
                available,
            });
        }
        Ok(None)
    }
}

impl<'a> OpusReader<'a> {
    /// Everything but the hot path: pages, headers, packets that span pages, the end, errors.
    #[inline(never)]
    pub(crate) fn next_general(&mut self) -> Option<Result<Block<'a>>> {
        self.general_step(State::next_block)
    }

    /// One step of the general path: the hot path's bookkeeping handed back before `step`, the
    /// end or an error remembered, the hot path's conditions decided again after it.
    #[inline(always)]
    fn general_step<T>(
        &mut self,
        step: impl FnOnce(&mut State<'a>) -> Result<Option<T>>,
    ) -> Option<Result<T>> {
        let state = &mut *self.state;
        if state.done {
            return None;
        }
        state.sync_fast();
        let item = match step(state) {
            Ok(Some(x)) => Some(Ok(x)),
            Ok(None) => {
                state.done = true;
                None
            }
            Err(e) => {
                state.done = true;
                Some(Err(e))
            }
        };
        state.refresh_fast();
        item
    }
}

impl<'a> OpusReader<'a> {
    /// [`OpusReader::next_general`] for [`OpusReader::for_each_block`]: also returns, with
    /// `Some(Ok(None))`, right after loading a page of the stream, so that the page loop can
    /// take its first packet where the hot path may run.
    #[inline(never)]
    fn next_general_or_page(&mut self) -> Option<Result<Option<Block<'a>>>> {
        self.general_step(State::next_block_or_page::<true>)
    }
}

impl<'a> OpusReader<'a> {
    /// The hot path alone: the next block if it is an audio packet inside the current page
    /// that the hot path may yield.
    #[inline(always)]
    pub(crate) fn next_in_page(&mut self) -> Option<Block<'a>> {
        self.state.next_in_page()
    }
}

impl<'a> Iterator for OpusReader<'a> {
    type Item = Result<Block<'a>>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(block) = self.state.next_in_page() {
            return Some(Ok(block));
        }
        self.next_general()
    }
}

/// One block of an Ogg Opus stream as [`OpusReader::for_each_block`] gives it: the facts of the
/// iterator's [`Block`] that a scan reads (index, offset, bytes, kind, time and duration, TOC),
/// in 48 bytes, with times kept in samples and converted on demand.
///
/// The fields equal the iterator's block's: [`BlockRecord::place`] is its [`Block::place`],
/// `toc` the [`PacketInfo::toc`] of its [`Detail::Opus`]. The other facts of [`PacketInfo`]
/// (frame layout, end trimming, serial, link, page sequence and granule position, whether the
/// packet spans pages or follows a gap) are the iterator's only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlockRecord<'b> {
    /// Position of the block in the file's sequence of blocks, from 0 ([`Block::index`]).
    pub index: u64,
    /// Byte offset in the file of the packet's first byte ([`Block::offset`]).
    pub offset: u64,
    /// The packet's bytes. Borrowed from the input for a packet inside one page; for a packet
    /// assembled from several pages, from the reader's buffer for the duration of the call.
    pub data: &'b [u8],
    /// [`BlockKind::Audio`], or [`BlockKind::Metadata`] for `OpusHead` and `OpusTags`.
    pub kind: BlockKind,
    /// Audio: the index of the block's first sample in the decoded output at 48 kHz, negative
    /// inside the pre-skip (the `start` of [`Place::Time`]); 0 for metadata.
    pub start: i64,
    /// Audio: the samples at 48 kHz the block plays, after end trimming (the `duration` of
    /// [`Place::Time`]); 0 for metadata.
    pub duration: u32,
    /// The TOC byte (audio only).
    pub toc: Option<Toc>,
}

impl BlockRecord<'_> {
    /// When the block plays, as the iterator's [`Block::place`]: [`Place::Time`] at
    /// [`SAMPLE_RATE`] for audio, [`Place::None`] for metadata.
    #[inline]
    pub fn place(&self) -> Place {
        match self.kind {
            BlockKind::Audio => Place::Time {
                start: self.start,
                duration: self.duration,
                rate: SAMPLE_RATE,
            },
            _ => Place::None,
        }
    }

    /// Start time in seconds (audio only).
    pub fn time_seconds(&self) -> Option<f64> {
        self.place().time_seconds()
    }

    /// Duration in seconds (audio only).
    pub fn duration_seconds(&self) -> Option<f64> {
        self.place().duration_seconds()
    }

    /// Bytes of the block.
    #[inline]
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the block has no bytes (never, for a valid stream).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The record of an iterator's block of this reader.
    fn of_block<'b>(block: &'b Block<'_>) -> BlockRecord<'b> {
        let (start, duration) = match block.place {
            Place::Time {
                start, duration, ..
            } => (start, duration),
            _ => (0, 0),
        };
        let toc = match &block.detail {
            Detail::Opus(info) => info.toc,
            _ => None,
        };
        BlockRecord {
            index: block.index,
            offset: block.offset,
            data: &block.data,
            kind: block.kind,
            start,
            duration,
            toc,
        }
    }
}

impl<'a> OpusReader<'a> {
    /// Gives `f` a [`BlockRecord`] of every remaining block, in order, and returns the error
    /// that stops the reader, if one does: the API for scanning whole files.
    ///
    /// The records and the error are exactly what the iterator would yield from here on (the
    /// two can be mixed: blocks taken through [`Iterator::next`] are not visited again), and
    /// [`OpusReader::regions`] ends the same. What it saves is the iterator's cost per packet:
    /// for the packets that lie whole inside a page, which are most of a file, one loop per page
    /// walks the lacing values, checks the TOC and advances the time stamps, with no [`Block`]
    /// built; everything else (page headers and their CRC, `OpusHead` and `OpusTags`, packets
    /// spanning pages, gaps, end trimming, limits, errors) goes through the iterator's own code.
    /// A block given to `f` before an error stands, as with the iterator.
    ///
    /// ```
    /// # fn scan(file: &[u8]) -> cff_blocks::Result<()> {
    /// use cff_blocks::{opus::OpusReader, BlockKind, Options};
    ///
    /// let mut reader = OpusReader::new(file, &Options::default())?;
    /// let (mut packets, mut samples) = (0u64, 0u64);
    /// reader.for_each_block(|block| {
    ///     if block.kind == BlockKind::Audio {
    ///         packets += 1;
    ///         samples += u64::from(block.duration);
    ///     }
    /// })?;
    /// println!("{packets} audio packets, {} s", samples as f64 / 48_000.0);
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn for_each_block<F>(&mut self, mut f: F) -> Result<()>
    where
        F: FnMut(BlockRecord<'_>),
    {
        loop {
            self.state.for_each_in_page(&mut f);
            match self.next_general_or_page() {
                Some(Ok(Some(block))) => f(BlockRecord::of_block(&block)),
                Some(Ok(None)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    }
}

fn other_stream(page: &Page<'_>) -> Region {
    Region {
        offset: page.offset(),
        len: page.len() as u64,
        kind: RegionKind::OtherStream,
    }
}

/// Appends a region, merging it into the previous one when they touch and agree.
fn push_region(regions: &mut Vec<Region>, region: Region) {
    if let Some(last) = regions.last_mut() {
        if last.kind == region.kind && last.offset + last.len == region.offset {
            last.len += region.len;
            return;
        }
    }
    regions.push(region);
}

/// The error for input without the Opus stream asked for.
fn no_stream(data: &[u8], foreign: Option<Page<'_>>, serial: Option<u32>) -> Error {
    match (foreign, serial) {
        (_, Some(serial)) => Error::Unsupported {
            format: Format::OggOpus,
            offset: 0,
            what: format!("no Opus logical stream with serial {serial}"),
        },
        (Some(page), None) => Error::Unsupported {
            format: Format::OggOpus,
            offset: page.offset(),
            what: format!(
                "Ogg logical stream that is not Opus (first packet starts {})",
                hex_prefix(page.body(), 8)
            ),
        },
        (None, None) => malformed(
            0,
            "an Ogg page beginning an Opus stream (RFC 7845 §3)",
            hex_prefix(data, 8),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::ogg::tests::{lacing_for, page};
    use crate::ogg::{FLAG_BOS, FLAG_CONTINUED, FLAG_EOS};
    use crate::Limits;

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
            .for_each_block(|r| {
                records.push((r.kind, r.time_seconds(), r.duration_seconds(), r.len()))
            })
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
}
