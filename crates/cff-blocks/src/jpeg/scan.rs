//! Entropy-coded segments: unstuffing, bit reading, and walking MCUs by Huffman decoding
//! (T.81 F.2.2), with no dequantisation and no IDCT.

use super::huffman::{HuffmanTable, LOOKAHEAD_BITS};

/// One entropy-coded segment (T.81 B.1.1.5): the bytes between a SOS or RST marker and the
/// next marker, with every stuffed 0x00 after a 0xFF removed (T.81 F.1.2.3), plus what is
/// needed to map a bit of the unstuffed data back to its byte in the file.
#[derive(Debug, Default)]
pub(crate) struct Ecs {
    /// Unstuffed bytes, followed by `PAD` zero bytes so that 8-byte loads never fall short.
    pub(crate) bytes: Vec<u8>,
    /// For each byte removed from the file, the index in `bytes` of the 0xFF it followed.
    /// Sorted. Byte `u` of `bytes` lies at file offset `start + u + #{f < u}`.
    pub(crate) removed: Vec<usize>,
    /// File offset of the segment's first byte.
    pub(crate) start: usize,
    /// File offset of the marker that ends the segment (its first 0xFF, fill bytes included).
    pub(crate) end: usize,
    /// Unstuffed length in bytes (without the padding).
    pub(crate) len: usize,
    /// Cursor into `removed` for monotone lookups.
    cursor: usize,
}

const PAD: usize = 8;

/// Offset of the next 0xFF at or after `from`, or `data.len()`.
fn find_ff(data: &[u8], from: usize) -> usize {
    let mut i = from;
    // Eight bytes at a time: a byte is 0xFF exactly where the complement has a zero byte.
    while let Some(chunk) = data.get(i..).and_then(|s| s.first_chunk::<8>()) {
        let x = !u64::from_le_bytes(*chunk);
        if x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080 != 0 {
            break;
        }
        i += 8;
    }
    while let Some(&b) = data.get(i) {
        if b == 0xFF {
            return i;
        }
        i += 1;
    }
    data.len()
}

/// Where an entropy-coded segment stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EcsEnd {
    /// At a marker: the offset of the 0xFF before its code, and the code.
    Marker { at: usize, code: u8 },
    /// The data ended without a marker.
    EndOfData,
}

impl Ecs {
    /// Loads the segment starting at file offset `start`, reusing the buffers.
    pub(crate) fn load(&mut self, data: &[u8], start: usize) -> EcsEnd {
        self.bytes.clear();
        self.removed.clear();
        self.cursor = 0;
        self.start = start;
        // Once per reader (the buffer is reused): the segment is at most the rest of the file.
        self.bytes.reserve(data.len().saturating_sub(start) + PAD);
        let mut i = start;
        let stop = loop {
            let ff = find_ff(data, i);
            self.bytes.extend_from_slice(data.get(i..ff).unwrap_or(&[]));
            if ff >= data.len() {
                self.end = data.len();
                break EcsEnd::EndOfData;
            }
            // Fill bytes: a run of 0xFF, then either 0x00 (stuffing, T.81 F.1.2.3; libjpeg
            // also reads FF FF .. FF 00 as one data byte 0xFF) or a marker code.
            let mut j = ff + 1;
            while data.get(j) == Some(&0xFF) {
                j += 1;
            }
            match data.get(j) {
                Some(0x00) => {
                    self.bytes.push(0xFF);
                    let at = self.bytes.len() - 1;
                    for _ in ff + 1..=j {
                        self.removed.push(at);
                    }
                    i = j + 1;
                }
                Some(&code) => {
                    self.end = ff;
                    break EcsEnd::Marker { at: j - 1, code };
                }
                None => {
                    self.end = ff;
                    break EcsEnd::EndOfData;
                }
            }
        };
        self.len = self.bytes.len();
        self.bytes.extend_from_slice(&[0; PAD]);
        stop
    }

    /// Bits of entropy-coded data in the segment.
    pub(crate) fn bit_len(&self) -> usize {
        self.len * 8
    }

    /// File offset of unstuffed byte `u`. Calls must come with `u` non-decreasing until the
    /// next `load` (the cursor only moves forward).
    pub(crate) fn file_offset(&mut self, u: usize) -> usize {
        while self.removed.get(self.cursor).is_some_and(|&f| f < u) {
            self.cursor += 1;
        }
        self.start + u + self.cursor
    }

    /// File offset of unstuffed byte `u`, without moving the cursor.
    pub(crate) fn file_offset_of(&self, u: usize) -> usize {
        self.start + u + self.removed.partition_point(|&f| f < u)
    }

    /// The bits `[start, end)` re-packed from bit 0, the last byte zero-padded.
    pub(crate) fn repack(&self, start: usize, end: usize) -> Vec<u8> {
        let bits = end.saturating_sub(start);
        let n = bits.div_ceil(8);
        let first = start / 8;
        let shift = (start % 8) as u32;
        let mut out = Vec::with_capacity(n + 7);
        if shift == 0 {
            out.extend_from_slice(self.bytes.get(first..first + n).unwrap_or(&[]));
        } else {
            // Seven output bytes per 8-byte load (the eighth would lack its low bits).
            let mut i = 0;
            while i < n {
                let at = first + i;
                let word = match self.bytes.get(at..).and_then(|s| s.first_chunk::<8>()) {
                    Some(chunk) => u64::from_be_bytes(*chunk),
                    None => tail_word(&self.bytes, at),
                };
                out.extend_from_slice(&(word << shift).to_be_bytes()[..7]);
                i += 7;
            }
        }
        out.resize(n, 0);
        if !bits.is_multiple_of(8) {
            if let Some(last) = out.last_mut() {
                *last &= 0xFFu8 << (8 - bits % 8);
            }
        }
        out
    }
}

/// A bit reader over unstuffed data, most significant bit first.
///
/// `buf` holds `count` valid bits at its top, zeros below. `refill` tops it up to 56..=63
/// bits with one 8-byte load whatever the count (F. Giesen's branchless refill), so that every
/// code and its magnitude bits (at most 16 + 11) can be taken after one refill.
#[derive(Debug)]
pub(crate) struct Bits<'b> {
    bytes: &'b [u8],
    /// Next byte of `bytes` to load.
    next: usize,
    buf: u64,
    count: u32,
}

impl<'b> Bits<'b> {
    /// A reader at bit `pos` of `bytes`.
    pub(crate) fn new(bytes: &'b [u8], pos: usize) -> Self {
        let mut bits = Bits {
            bytes,
            next: pos / 8,
            buf: 0,
            count: 0,
        };
        bits.refill();
        bits.consume((pos % 8) as u32);
        bits
    }

    /// The bit position of the next unread bit.
    #[inline(always)]
    pub(crate) fn pos(&self) -> usize {
        self.next * 8 - self.count as usize
    }

    #[inline(always)]
    pub(crate) fn refill(&mut self) {
        let word = match self
            .bytes
            .get(self.next..)
            .and_then(|s| s.first_chunk::<8>())
        {
            Some(chunk) => u64::from_be_bytes(*chunk),
            None => tail_word(self.bytes, self.next),
        };
        // The bits ORed in past the whole bytes counted are the stream's next bits too, and
        // the next refill ORs the same values there again.
        self.buf |= word >> self.count;
        self.next += ((63 - self.count) >> 3) as usize;
        self.count |= 56;
    }

    /// The next 56 or more bits at the top of a u64 (refilled first).
    #[inline(always)]
    fn peek(&mut self) -> u64 {
        self.refill();
        self.buf
    }

    /// Drops `n` bits, `n` at most the 56 a refill guarantees.
    #[inline(always)]
    fn consume(&mut self, n: u32) {
        self.buf <<= n;
        self.count -= n;
    }
}

/// The 8 bytes from `at`, big-endian; past the end of the data the stream reads as zeros.
#[cold]
fn tail_word(bytes: &[u8], at: usize) -> u64 {
    let mut chunk = [0u8; 8];
    for (k, b) in chunk.iter_mut().enumerate() {
        *b = bytes.get(at + k).copied().unwrap_or(0);
    }
    u64::from_be_bytes(chunk)
}

/// Why a data unit could not be decoded; positions are bits of the unstuffed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// No code of the DC or AC table matches the next 16 bits.
    InvalidCode { pos: usize, ac: bool },
    /// A DC magnitude category above 11 (T.81 F.1.2.1.1, 8-bit).
    DcCategory { pos: usize, size: u8 },
    /// An AC magnitude category above 10 (T.81 F.1.2.2.1, 8-bit).
    AcCategory { pos: usize, size: u8 },
    /// A run of zeros past coefficient 63 (T.81 F.1.2.2.1).
    RunPastEnd { pos: usize },
}

/// EXTEND (T.81 F.2.2.1, Figure F.12): the signed value of the `size` extra bits `v`.
#[inline(always)]
fn extend(v: u32, size: u32) -> i32 {
    if size == 0 {
        0
    } else if v < 1 << (size - 1) {
        v as i32 - ((1 << size) - 1)
    } else {
        v as i32
    }
}

/// Walks over one data unit (T.81 F.2.2.1, F.2.2.2) without computing any value: each code
/// and its magnitude bits are skipped together, which is all the MCU boundaries need.
#[inline(always)]
pub(crate) fn skip_data_unit(
    bits: &mut Bits<'_>,
    dc: &HuffmanTable,
    ac: &HuffmanTable,
) -> Result<(), DecodeError> {
    let peek = bits.peek();
    let entry = dc.fast()[(peek >> (64 - LOOKAHEAD_BITS)) as usize];
    if (entry as i16) > 0 {
        bits.consume((entry >> 8) as u32);
    } else {
        let (len, size) = decode_dc(bits.pos(), dc, peek)?;
        bits.consume(len + size);
    }
    let fast = ac.fast();
    let mut k = 1u32;
    // One AC code with its magnitude bits takes at most 16 + 10 bits: two fit in the 56 bits
    // of a refill, which halves the refills on the loop's dependency chain.
    macro_rules! step {
        () => {
            let entry = fast[(bits.buf >> (64 - LOOKAHEAD_BITS)) as usize];
            let (mut n, mut advance) = ((entry >> 8) as u32, (entry & 0xFF) as u32);
            // Bit 15 set or 0: no fast answer.
            if (entry as i16) <= 0 {
                (n, advance) = decode_ac(bits.pos(), ac, bits.buf)?;
            }
            bits.consume(n);
            if advance == 0 {
                return Ok(()); // EOB
            }
            k += advance;
            if k >= 64 {
                // The last coefficient coded must be number 63 at most (T.81 F.1.2.2.1).
                if k > 64 {
                    return Err(DecodeError::RunPastEnd {
                        pos: bits.pos() - n as usize,
                    });
                }
                return Ok(());
            }
        };
    }
    loop {
        bits.refill();
        step!();
        step!();
    }
}

#[cold]
fn decode_dc(pos: usize, dc: &HuffmanTable, peek: u64) -> Result<(u32, u32), DecodeError> {
    let Some((len, size)) = dc.decode(peek) else {
        return Err(DecodeError::InvalidCode { pos, ac: false });
    };
    if size > 11 {
        return Err(DecodeError::DcCategory { pos, size });
    }
    Ok((len, size as u32))
}

/// The slow AC path: `(code length + magnitude bits, coefficients covered)`.
#[cold]
fn decode_ac(pos: usize, ac: &HuffmanTable, peek: u64) -> Result<(u32, u32), DecodeError> {
    let Some((len, rs)) = ac.decode(peek) else {
        return Err(DecodeError::InvalidCode { pos, ac: true });
    };
    let (run, size) = ((rs >> 4) as u32, (rs & 15) as u32);
    match size {
        0 if run == 15 => Ok((len, 16)),
        0 => Ok((len, 0)),
        1..=10 => Ok((len + size, run + 1)),
        _ => Err(DecodeError::AcCategory { pos, size: rs & 15 }),
    }
}

/// Decodes one data unit (T.81 F.2.2.1, F.2.2.2) into `out`: the quantised coefficients in
/// zig-zag order, DC un-differenced with `dc_pred`. Ends on the same bit as
/// [`skip_data_unit`], which the tests check on every fixture.
pub(crate) fn decode_data_unit(
    bits: &mut Bits<'_>,
    dc: &HuffmanTable,
    ac: &HuffmanTable,
    dc_pred: &mut i32,
    out: &mut [i32; 64],
) -> Result<(), DecodeError> {
    *out = [0; 64];
    let peek = bits.peek();
    let (len, size) = decode_dc(bits.pos(), dc, peek)?;
    // len <= 16 and size <= 11: both within the 56 bits peeked.
    let v = if size == 0 {
        0
    } else {
        ((peek << len) >> (64 - size)) as u32
    };
    *dc_pred = dc_pred.wrapping_add(extend(v, size));
    out[0] = *dc_pred;
    bits.consume(len + size);

    let mut k = 1usize;
    while k < 64 {
        let peek = bits.peek();
        let pos = bits.pos();
        let Some((len, rs)) = ac.decode(peek) else {
            return Err(DecodeError::InvalidCode { pos, ac: true });
        };
        let (run, size) = ((rs >> 4) as usize, (rs & 15) as u32);
        if size == 0 {
            bits.consume(len);
            if run != 15 {
                break; // EOB
            }
            k += 16; // ZRL
            if k > 64 {
                return Err(DecodeError::RunPastEnd { pos });
            }
            continue;
        }
        if size > 10 {
            return Err(DecodeError::AcCategory { pos, size: rs & 15 });
        }
        k += run;
        if k > 63 {
            return Err(DecodeError::RunPastEnd { pos });
        }
        let v = ((peek << len) >> (64 - size)) as u32;
        out[k] = extend(v, size);
        bits.consume(len + size);
        k += 1;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::huffman::Class;
    use super::*;

    #[test]
    fn finds_ff_anywhere() {
        for n in 0..40 {
            for at in 0..n {
                let mut v = vec![0x12u8; n];
                v[at] = 0xFF;
                assert_eq!(find_ff(&v, 0), at);
                assert_eq!(find_ff(&v, at + 1), n);
            }
        }
    }

    #[test]
    fn removes_stuffing_and_maps_offsets_back() {
        // file: 10 [AB FF 00 CD FF 00 FF 00 EF] FF FF D3
        let file = [
            0x10, 0xAB, 0xFF, 0x00, 0xCD, 0xFF, 0x00, 0xFF, 0x00, 0xEF, 0xFF, 0xFF, 0xD3,
        ];
        let mut ecs = Ecs::default();
        let end = ecs.load(&file, 1);
        assert_eq!(end, EcsEnd::Marker { at: 11, code: 0xD3 });
        assert_eq!(&ecs.bytes[..ecs.len], &[0xAB, 0xFF, 0xCD, 0xFF, 0xFF, 0xEF]);
        assert_eq!(ecs.end, 10);
        let offsets: Vec<usize> = (0..ecs.len).map(|u| ecs.file_offset_of(u)).collect();
        assert_eq!(offsets, [1, 2, 4, 5, 7, 9]);
        let monotone: Vec<usize> = (0..ecs.len).map(|u| ecs.file_offset(u)).collect();
        assert_eq!(monotone, offsets);
    }

    #[test]
    fn a_segment_without_a_marker_ends_with_the_data() {
        let mut ecs = Ecs::default();
        assert_eq!(ecs.load(&[1, 2, 3], 0), EcsEnd::EndOfData);
        assert_eq!(ecs.len, 3);
        assert_eq!(ecs.load(&[1, 2, 0xFF], 0), EcsEnd::EndOfData);
        assert_eq!(ecs.len, 2);
    }

    #[test]
    fn repacks_bit_ranges() {
        let mut ecs = Ecs::default();
        ecs.load(&[0b1011_0011, 0b1100_1010, 0b0111_0000], 0);
        assert_eq!(ecs.repack(0, 8), [0b1011_0011]);
        assert_eq!(ecs.repack(0, 3), [0b1010_0000]);
        assert_eq!(ecs.repack(2, 12), [0b1100_1111, 0b0000_0000]);
        assert_eq!(ecs.repack(3, 22), [0b1001_1110, 0b0101_0011, 0b1000_0000]);
        assert_eq!(ecs.repack(5, 5), Vec::<u8>::new());
        assert_eq!(ecs.repack(16, 24), [0b0111_0000]);
    }

    #[test]
    fn extends_magnitudes() {
        // T.81 Table F.1: category 3 holds -7..-4 and 4..7.
        assert_eq!(extend(0b000, 3), -7);
        assert_eq!(extend(0b011, 3), -4);
        assert_eq!(extend(0b100, 3), 4);
        assert_eq!(extend(0b111, 3), 7);
        assert_eq!(extend(0, 1), -1);
        assert_eq!(extend(1, 1), 1);
        assert_eq!(extend(0, 0), 0);
    }

    #[test]
    fn decodes_a_data_unit_with_the_annex_k_tables() {
        // DC K.3, AC: a table with EOB = 00, 0x01 = 01, 0xF0 (ZRL) = 10, 0x12 = 110.
        let dc = HuffmanTable::new(
            &[0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
            Class::Dc,
        )
        .unwrap();
        let ac = HuffmanTable::new(
            &[0, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0x00, 0x01, 0xF0, 0x12],
            Class::Ac,
        )
        .unwrap();
        // DC: category 3 (100) value 101 = 5; AC: 0x01 '01' + '0' = -1 at k=1; 0x12 '110' +
        // '11' = 3 at k=3; ZRL '10' -> k=20; 0x01 '01' + '1' = 1 at k=20; EOB '00'.
        let stream = concat!("100101", "010", "11011", "10", "011", "00");
        let mut bytes = Vec::new();
        let padded = format!("{stream:1<32}");
        for c in padded.as_bytes().chunks(8) {
            bytes.push(u8::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap());
        }
        bytes.extend([0; 8]);
        let mut out = [0; 64];
        let mut pred = 10;
        let mut bits = Bits::new(&bytes, 0);
        decode_data_unit(&mut bits, &dc, &ac, &mut pred, &mut out).unwrap();
        assert_eq!(bits.pos(), stream.len());
        assert_eq!(pred, 15);
        let mut expect = [0; 64];
        expect[0] = 15;
        expect[1] = -1;
        expect[3] = 3;
        expect[20] = 1;
        assert_eq!(out, expect);
        // The fast walk lands on the same bit.
        let mut bits = Bits::new(&bytes, 0);
        skip_data_unit(&mut bits, &dc, &ac).unwrap();
        assert_eq!(bits.pos(), stream.len());
    }

    #[test]
    fn refuses_runs_past_the_last_coefficient() {
        let dc = HuffmanTable::new(
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0],
            Class::Dc,
        )
        .unwrap();
        // A single 1-bit AC code for ZRL: 4 ZRLs reach k = 65.
        let ac = HuffmanTable::new(
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xF0],
            Class::Ac,
        )
        .unwrap();
        let bytes = [0u8; 16];
        let mut bits = Bits::new(&bytes, 0);
        let err = skip_data_unit(&mut bits, &dc, &ac);
        assert_eq!(err, Err(DecodeError::RunPastEnd { pos: 4 }));
        let mut bits = Bits::new(&bytes, 0);
        let err = decode_data_unit(&mut bits, &dc, &ac, &mut 0, &mut [0; 64]);
        assert_eq!(err, Err(DecodeError::RunPastEnd { pos: 4 }));
        // No code of this DC table starts with 1.
        let bytes = [0xFFu8; 16];
        let mut bits = Bits::new(&bytes, 0);
        let err = skip_data_unit(&mut bits, &dc, &ac);
        assert_eq!(err, Err(DecodeError::InvalidCode { pos: 0, ac: false }));
        let mut bits = Bits::new(&bytes, 0);
        let err = decode_data_unit(&mut bits, &dc, &ac, &mut 0, &mut [0; 64]);
        assert_eq!(err, Err(DecodeError::InvalidCode { pos: 0, ac: false }));
    }
}
