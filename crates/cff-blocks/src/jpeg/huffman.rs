//! Huffman tables (T.81 Annex C) and their decoding (T.81 F.2.2.3), with a lookahead table.

/// Codes up to this many bits are decoded by one table lookup; longer ones (rare: the
/// Annex K tables put only the least frequent AC symbols above 10 bits) take the slow path.
pub(crate) const LOOKAHEAD_BITS: u32 = 10;

/// Why a DHT table cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableError {
    /// The 16 counts add up to more than 256 symbols (T.81 B.2.4.2).
    TooManyValues(usize),
    /// More codes of some length than that length can hold: the code space overflows (the
    /// procedure of T.81 C.2 would assign a code of `length + 1` bits).
    CodeSpaceOverflow { length: u32 },
}

/// One Huffman table, ready for decoding.
///
/// `lookahead[peek]` holds `length << 8 | symbol` for every `LOOKAHEAD_BITS`-bit pattern that
/// starts with a code of at most `LOOKAHEAD_BITS` bits, 0 otherwise (no code has length 0).
/// Longer codes use MAXCODE / VALPTR / MINCODE as in T.81 F.2.2.3, folded into `value_offset`.
#[derive(Clone)]
pub(crate) struct HuffmanTable {
    lookahead: Box<[u16; 1 << LOOKAHEAD_BITS]>,
    /// Largest code of each length, -1 where there is none (T.81 F.15, MAXCODE).
    max_code: [i32; 17],
    /// `VALPTR(l) - MINCODE(l)`: code + offset is the symbol's index in `values`.
    value_offset: [i32; 17],
    values: [u8; 256],
}

impl std::fmt::Debug for HuffmanTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HuffmanTable")
            .field("max_code", &self.max_code)
            .finish_non_exhaustive()
    }
}

impl HuffmanTable {
    /// Builds a table from BITS (`counts[l - 1]` codes of length `l`) and HUFFVAL (T.81 C.1,
    /// C.2: codes are assigned in order of length, consecutively, doubling at each new length).
    pub(crate) fn new(counts: &[u8; 16], values: &[u8]) -> Result<Self, TableError> {
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total > 256 || values.len() != total {
            return Err(TableError::TooManyValues(total));
        }
        let mut table = HuffmanTable {
            lookahead: Box::new([0; 1 << LOOKAHEAD_BITS]),
            max_code: [-1; 17],
            value_offset: [0; 17],
            values: [0; 256],
        };
        table.values[..total].copy_from_slice(values);

        let mut code: u32 = 0;
        let mut index: usize = 0;
        for length in 1..=16u32 {
            let count = counts[length as usize - 1] as u32;
            if count > 0 {
                table.value_offset[length as usize] = index as i32 - code as i32;
                for _ in 0..count {
                    // Every code must fit in its length (T.81 C.2 never yields a longer one
                    // from valid counts).
                    if code >= 1 << length {
                        return Err(TableError::CodeSpaceOverflow { length });
                    }
                    if length <= LOOKAHEAD_BITS {
                        // Every pattern whose first `length` bits are `code` decodes to it.
                        let shift = LOOKAHEAD_BITS - length;
                        let first = (code << shift) as usize;
                        let entry = (length as u16) << 8 | values[index] as u16;
                        for slot in &mut table.lookahead[first..first + (1 << shift)] {
                            *slot = entry;
                        }
                    }
                    code += 1;
                    index += 1;
                }
                table.max_code[length as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        Ok(table)
    }

    /// Decodes the code at the top of `peek` (the next bits of the stream, most significant
    /// first; at least 16 of them valid): `(code length, symbol)`, or `None` where no code of
    /// the table matches (T.81 F.2.2.3 running past 16 bits).
    #[inline(always)]
    pub(crate) fn decode(&self, peek: u64) -> Option<(u32, u8)> {
        let entry = self.lookahead[(peek >> (64 - LOOKAHEAD_BITS)) as usize];
        if entry != 0 {
            return Some(((entry >> 8) as u32, entry as u8));
        }
        self.decode_slow(peek)
    }

    #[cold]
    fn decode_slow(&self, peek: u64) -> Option<(u32, u8)> {
        for length in LOOKAHEAD_BITS + 1..=16 {
            let code = (peek >> (64 - length)) as i32;
            if code <= self.max_code[length as usize] {
                let index = (code + self.value_offset[length as usize]) as usize;
                return Some((length, self.values[index & 0xFF]));
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn top(bits: &str) -> u64 {
        let v = u64::from_str_radix(bits, 2).unwrap();
        v << (64 - bits.len())
    }

    /// The luminance DC table of T.81 Table K.3.
    fn k3() -> HuffmanTable {
        let counts = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
        let values = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
        HuffmanTable::new(&counts, &values).unwrap()
    }

    #[test]
    fn decodes_the_codes_of_table_k3() {
        let t = k3();
        // Table K.3: category 0 = 00, 1 = 010, 5 = 110, 6 = 1110, 11 = 111111110.
        assert_eq!(t.decode(top("00")), Some((2, 0)));
        assert_eq!(t.decode(top("010")), Some((3, 1)));
        assert_eq!(t.decode(top("110")), Some((3, 5)));
        assert_eq!(t.decode(top("1110")), Some((4, 6)));
        assert_eq!(t.decode(top("111111110")), Some((9, 11)));
        // Trailing bits after the code do not matter.
        assert_eq!(t.decode(top("0101111111")), Some((3, 1)));
        // 111111111... is no code of this table.
        assert_eq!(t.decode(top("1111111111111111")), None);
    }

    #[test]
    fn decodes_codes_longer_than_the_lookahead() {
        // One code of each length: 0, 10, 110, ..., fifteen 1s then 0 (length 16).
        let counts = [1u8; 16];
        let values: Vec<u8> = (0..16).collect();
        let t = HuffmanTable::new(&counts, &values).unwrap();
        for length in 1..=16usize {
            let code = "1".repeat(length - 1) + "0";
            assert_eq!(
                t.decode(top(&code)),
                Some((length as u32, length as u8 - 1))
            );
        }
        assert_eq!(t.decode(u64::MAX), None);
    }

    #[test]
    fn refuses_counts_that_overflow_the_code_space() {
        // Three codes of length 1 cannot exist.
        let mut counts = [0u8; 16];
        counts[0] = 3;
        assert_eq!(
            HuffmanTable::new(&counts, &[0, 1, 2]).unwrap_err(),
            TableError::CodeSpaceOverflow { length: 1 }
        );
        // Two of length 1 fill the space; one more of length 2 overflows it.
        counts[0] = 2;
        counts[1] = 1;
        assert_eq!(
            HuffmanTable::new(&counts, &[0, 1, 2]).unwrap_err(),
            TableError::CodeSpaceOverflow { length: 2 }
        );
        // 17 codes of length 4 when 16 fit.
        let mut counts = [0u8; 16];
        counts[3] = 17;
        assert!(HuffmanTable::new(&counts, &[0; 17]).is_err());
    }

    #[test]
    fn refuses_more_than_256_values() {
        let counts = [255u8; 16];
        assert!(matches!(
            HuffmanTable::new(&counts, &[]),
            Err(TableError::TooManyValues(4080))
        ));
    }

    #[test]
    fn an_empty_table_decodes_nothing() {
        let t = HuffmanTable::new(&[0; 16], &[]).unwrap();
        assert_eq!(t.decode(0), None);
        assert_eq!(t.decode(u64::MAX), None);
    }
}
