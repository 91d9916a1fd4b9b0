//! The VBR headers of a stream's first frame: Xing/Info with the LAME tag, and VBRI.

use super::header::FrameHeader;
use super::{u16_be_at, word_at};

/// Which VBR header a metadata frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VbrKind {
    /// `Xing` (variable bitrate, written by LAME and Xing).
    Xing,
    /// `Info` (the same structure, written by LAME for constant bitrate).
    Info,
    /// `VBRI` (Fraunhofer).
    Vbri,
}

/// What a Xing/Info or VBRI header says about the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VbrHeader {
    /// Which header.
    pub kind: VbrKind,
    /// Audio frames in the stream, this frame not counted, where the header gives it.
    pub frames: Option<u32>,
    /// Bytes of the stream, where the header gives it.
    pub bytes: Option<u32>,
    /// Samples the encoder added at the start (LAME tag, or VBRI `delay`), where given.
    pub encoder_delay: Option<u16>,
    /// Samples the encoder added at the end (LAME tag), where given.
    pub encoder_padding: Option<u16>,
}

/// Reads the Xing/Info or VBRI header in `frame`, if it holds one.
pub(super) fn vbr_header(frame: &[u8], header: &FrameHeader) -> Option<VbrHeader> {
    // LAME and FFmpeg place the Xing tag right after the side information as if there were no
    // CRC (LAME's VbrTag.c; verified on `lame -p` output); also accept it after the CRC.
    let plain = 4 + header.side_info_len();
    let at = [plain, plain + 2];
    let candidates = if header.crc() { &at[..] } else { &at[..1] };
    for &x in candidates {
        let kind = match frame.get(x..x + 4) {
            Some(b"Xing") => VbrKind::Xing,
            Some(b"Info") => VbrKind::Info,
            _ => continue,
        };
        let flags = word_at(frame, x + 4)?;
        let mut p = x + 8;
        let mut field = |bit: u32, len: usize| -> Option<u32> {
            if flags & bit == 0 {
                return None;
            }
            let v = word_at(frame, p);
            p += len;
            v
        };
        let frames = field(1, 4);
        let bytes = field(2, 4);
        let _toc = field(4, 100);
        let _quality = field(8, 4);
        // The LAME tag follows (LAME's "Mp3 Info Tag rev 1" specification): a 9-byte encoder
        // string, then at byte 21 the encoder delay and padding, 12 bits each.
        let (mut encoder_delay, mut encoder_padding) = (None, None);
        if let Some(lame) = frame.get(p..p + 24) {
            if lame.starts_with(b"LAME") || lame.starts_with(b"Lavf") || lame.starts_with(b"Lavc") {
                let (a, b, c) = (lame[21], lame[22], lame[23]);
                encoder_delay = Some((u16::from(a) << 4) | u16::from(b >> 4));
                encoder_padding = Some((u16::from(b & 0x0F) << 8) | u16::from(c));
            }
        }
        return Some(VbrHeader {
            kind,
            frames,
            bytes,
            encoder_delay,
            encoder_padding,
        });
    }
    // VBRI: always 32 bytes after the header (Fraunhofer's VBRI specification): version,
    // delay, quality (u16 each), then bytes and frames (u32 each), big-endian.
    if frame.get(36..40) == Some(b"VBRI") {
        return Some(VbrHeader {
            kind: VbrKind::Vbri,
            frames: word_at(frame, 50),
            bytes: word_at(frame, 46),
            encoder_delay: u16_be_at(frame, 42),
            encoder_padding: None,
        });
    }
    None
}
