//! An Ogg page writer (RFC 3533), enough for one logical stream of whole packets.

use crate::{Error, Result};

/// Header type flag: first page of a logical stream (RFC 3533 §6, `header_type` bit 0x02).
pub const BOS: u8 = 0x02;
/// Header type flag: last page of a logical stream (bit 0x04).
pub const EOS: u8 = 0x04;

/// Writes the pages of one logical Ogg stream into a byte vector. Every packet is kept whole
/// on one page; packets never continue across pages, so no page carries flag 0x01.
#[derive(Debug, Clone)]
pub struct OggWriter {
    serial: u32,
    sequence: u32,
    out: Vec<u8>,
}

impl OggWriter {
    /// A writer for the stream with serial number `serial`.
    pub fn new(serial: u32) -> Self {
        OggWriter {
            serial,
            sequence: 0,
            out: Vec::new(),
        }
    }

    /// Segments a packet of `len` bytes takes in a segment table (RFC 3533 §5: lacing values
    /// of 255 and a final value below 255, which is 0 when the length is a multiple of 255).
    pub fn segments(len: usize) -> usize {
        len / 255 + 1
    }

    /// Appends one page holding `packets` whole, with granule position `granule` and header
    /// type `flags` ([`BOS`], [`EOS`]). At most 255 segments fit on a page.
    pub fn write_page(&mut self, packets: &[&[u8]], granule: i64, flags: u8) -> Result<()> {
        let segments: usize = packets.iter().map(|p| Self::segments(p.len())).sum();
        if segments > 255 {
            return Err(Error::encoder(
                "ogg",
                format!("{segments} segments do not fit in one page (255)"),
            ));
        }
        let start = self.out.len();
        self.out.extend_from_slice(b"OggS");
        self.out.push(0); // stream_structure_version
        self.out.push(flags & (BOS | EOS));
        self.out.extend_from_slice(&granule.to_le_bytes());
        self.out.extend_from_slice(&self.serial.to_le_bytes());
        self.out.extend_from_slice(&self.sequence.to_le_bytes());
        self.out.extend_from_slice(&[0; 4]); // CRC, filled in below
        self.out.push(segments as u8);
        for p in packets {
            self.out.extend(std::iter::repeat_n(255u8, p.len() / 255));
            self.out.push((p.len() % 255) as u8);
        }
        for p in packets {
            self.out.extend_from_slice(p);
        }
        // RFC 3533 §6: the CRC covers the whole page with the CRC field set to zero.
        let crc = cff_blocks::ogg::crc32(&self.out[start..]);
        self.out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
        self.sequence = self.sequence.wrapping_add(1);
        Ok(())
    }

    /// Pages written so far.
    pub fn pages(&self) -> u32 {
        self.sequence
    }

    /// The bytes written.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cff_blocks::ogg::Page;

    #[test]
    fn pages_parse_with_valid_crc_and_lacing() {
        let mut w = OggWriter::new(0x1234_5678);
        let big = vec![7u8; 510];
        w.write_page(&[b"head"], 0, BOS).unwrap();
        w.write_page(&[&big, b"x", &[]], 960, EOS).unwrap();
        let bytes = w.finish();
        let first = Page::parse(&bytes, 0, true).unwrap();
        assert!(first.is_bos());
        assert_eq!(first.body(), b"head");
        let second = Page::parse(&bytes, first.len(), true).unwrap();
        assert!(second.is_eos());
        assert_eq!(second.sequence(), 1);
        assert_eq!(second.serial(), 0x1234_5678);
        assert_eq!(second.granule_position(), 960);
        // 510 = 255 + 255 + 0: three segments, then 1 and 0 for the other packets.
        assert_eq!(second.segment_table(), &[255, 255, 0, 1, 0]);
        assert_eq!(second.len(), bytes.len() - first.len());
    }

    #[test]
    fn too_many_segments_is_an_error() {
        let mut w = OggWriter::new(1);
        let p = vec![0u8; 255 * 255];
        assert!(w.write_page(&[&p], 0, 0).is_err());
    }
}
