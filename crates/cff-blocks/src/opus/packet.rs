//! The frame layout of an Opus packet (RFC 6716 §3.2) and its requirements (§3.4).

use super::{Toc, MAX_FRAME_BYTES, MAX_PACKET_SAMPLES};

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
    if let Some(&byte) = data.first() {
        let toc = Toc::new(byte);
        if let Some(frames) = frames(toc, data, check_lengths) {
            return Ok((toc, frames));
        }
    }
    // An invalid packet: parsed again, for the requirement it breaks.
    parse_packet_general(data, check_lengths)
}

/// The frame layout of the packet `data`, whose first byte is `toc`; `None` when the packet
/// breaks a requirement of RFC 6716 §3.4 ([`parse_packet`] says which).
///
/// Every path that reads an audio packet takes its layout from here: [`parse_packet`], the
/// iterator's hot path and the page loop of `for_each_block`. The common cases, one frame or
/// two of equal size within the length limits (R2, R3), are decided inline and their result
/// stays in registers; the rest goes to the general parser, out of line.
#[inline(always)]
pub(super) fn frames(toc: Toc, data: &[u8], check_lengths: bool) -> Option<Frames> {
    let len = data.len().saturating_sub(1);
    let common = match toc.code() {
        0 => !check_lengths || len <= MAX_FRAME_BYTES,
        1 => !check_lengths || (len.is_multiple_of(2) && len / 2 <= MAX_FRAME_BYTES),
        _ => false,
    };
    match toc.frame_count(None) {
        Some(count) if common => Some(Frames::equal(count)),
        _ => frames_general(data, check_lengths),
    }
}

impl Frames {
    /// `count` frames of equal size, no padding (codes 0 and 1).
    #[inline(always)]
    const fn equal(count: u8) -> Frames {
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
    let count = toc
        .frame_count(rest.first().copied())
        .ok_or("a code 3 packet of at least two bytes (RFC 6716 §3.4 R6)")?;
    const TOO_BIG: &str = "frames of at most 1275 bytes (RFC 6716 §3.4 R2)";
    let frames = match toc.code() {
        0 => {
            if check_lengths && rest.len() > MAX_FRAME_BYTES {
                return Err(TOO_BIG);
            }
            Frames::equal(count)
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
            Frames::equal(count)
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
                count,
                vbr: true,
                padding: 0,
            }
        }
        _ => {
            // The count byte, which `frame_count` read: its top bits flag VBR and padding.
            let (&count_byte, mut rest) = rest
                .split_first()
                .ok_or("a code 3 packet of at least two bytes (RFC 6716 §3.4 R6)")?;
            let vbr = count_byte & 0x80 != 0;
            if count == 0 {
                return Err("a code 3 packet with at least one frame (RFC 6716 §3.4 R5)");
            }
            if toc.samples(count) > MAX_PACKET_SAMPLES {
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
