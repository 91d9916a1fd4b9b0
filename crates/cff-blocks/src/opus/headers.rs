//! The two header packets of an Ogg Opus stream: `OpusHead` (RFC 7845 §5.1) and `OpusTags`
//! (§5.2).

use super::malformed;
use crate::ogg::hex_prefix;
use crate::{Error, Format, Result};

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
