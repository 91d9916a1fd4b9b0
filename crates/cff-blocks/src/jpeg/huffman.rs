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

/// Table class Tc (T.81 B.2.4.2): what the symbols mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Symbols are DC magnitude categories (T.81 F.1.2.1).
    Dc,
    /// Symbols are RRRRSSSS: a run of zeros and an AC magnitude category (T.81 F.1.2.2).
    Ac,
}

/// One Huffman table, ready for decoding.
///
/// `fast[pattern]` says what the next `LOOKAHEAD_BITS` bits of the stream start with:
/// - `bits << 8 | advance` (bit 15 clear, non-zero): a valid code whose magnitude bits also fit
///   in the pattern, `bits` = code length + magnitude bits; `advance` = how many coefficients
///   the symbol covers (AC: run + 1, 16 for ZRL, 0 for EOB; DC: 0). This is all a walk that
///   skips values needs, in one lookup.
/// - `0x8000 | length << 8 | symbol`: a code of at most `LOOKAHEAD_BITS` bits whose magnitude
///   bits do not fit, or whose symbol is invalid for the class.
/// - 0: the code is longer than `LOOKAHEAD_BITS` bits, or there is none.
///
/// Everything else uses MAXCODE / VALPTR / MINCODE as in T.81 F.2.2.3 (`value_offset` folds
/// VALPTR − MINCODE).
#[derive(Clone)]
pub(crate) struct HuffmanTable {
    fast: Box<[u16; 1 << LOOKAHEAD_BITS]>,
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
    pub(crate) fn new(counts: &[u8; 16], values: &[u8], class: Class) -> Result<Self, TableError> {
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total > 256 || values.len() != total {
            return Err(TableError::TooManyValues(total));
        }
        let mut max_code = [-1; 17];
        let mut value_offset = [0; 17];
        let mut table_values = [0; 256];
        table_values[..total].copy_from_slice(values);
        // The spans of codes of at most LOOKAHEAD_BITS bits tile the fast table from its
        // start in code order (the last code of one length, plus one, doubled, starts the
        // next): push them in turn, then zeros for the longer codes, each entry written once.
        let mut fast = Vec::with_capacity(1 << LOOKAHEAD_BITS);

        let mut code: u32 = 0;
        let mut index: usize = 0;
        for length in 1..=16u32 {
            let count = counts[length as usize - 1] as u32;
            if count > 0 {
                value_offset[length as usize] = index as i32 - code as i32;
                // Every code must fit in its length (T.81 C.2 never yields a longer one from
                // valid counts).
                if code + count > 1 << length {
                    return Err(TableError::CodeSpaceOverflow { length });
                }
                if length <= LOOKAHEAD_BITS {
                    // Every pattern whose first `length` bits are a code decodes to it.
                    let span = 1usize << (LOOKAHEAD_BITS - length);
                    for &symbol in &values[index..index + count as usize] {
                        let entry = match skip_step(symbol, class) {
                            Some((size, advance)) if length + size <= LOOKAHEAD_BITS => {
                                ((length + size) as u16) << 8 | advance as u16
                            }
                            _ => 0x8000 | (length as u16) << 8 | symbol as u16,
                        };
                        fast.extend(std::iter::repeat_n(entry, span));
                    }
                }
                code += count;
                index += count as usize;
                max_code[length as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        fast.resize(1 << LOOKAHEAD_BITS, 0);
        let fast: Box<[u16; 1 << LOOKAHEAD_BITS]> = match fast.into_boxed_slice().try_into() {
            Ok(fast) => fast,
            // The code-space check above keeps the spans within the table.
            Err(_) => {
                return Err(TableError::CodeSpaceOverflow {
                    length: LOOKAHEAD_BITS,
                })
            }
        };
        let table = HuffmanTable {
            fast,
            max_code,
            value_offset,
            values: table_values,
        };
        Ok(table)
    }

    /// Decodes the code at the top of `peek` (the next bits of the stream, most significant
    /// first; at least 16 of them valid): `(code length, symbol)`, or `None` where no code of
    /// the table matches (T.81 F.2.2.3 running past 16 bits). Off the fast path: the walk
    /// uses [`HuffmanTable::fast`], and this only where that has no answer, and to decode
    /// coefficients.
    pub(crate) fn decode(&self, peek: u64) -> Option<(u32, u8)> {
        let entry = self.fast[(peek >> (64 - LOOKAHEAD_BITS)) as usize];
        if entry & 0x8000 != 0 {
            return Some((((entry >> 8) & 0x1F) as u32, entry as u8));
        }
        // A skip entry means a code of at most LOOKAHEAD_BITS bits, 0 a longer one.
        let lengths = if entry == 0 {
            LOOKAHEAD_BITS + 1..=16
        } else {
            1..=LOOKAHEAD_BITS
        };
        for length in lengths {
            let code = (peek >> (64 - length)) as i32;
            if code <= self.max_code[length as usize] {
                let index = (code + self.value_offset[length as usize]) as usize;
                return Some((length, self.values[index & 0xFF]));
            }
        }
        None
    }

    /// The fast table (see [`HuffmanTable`]), for loops that keep it in a register.
    #[inline(always)]
    pub(crate) fn fast(&self) -> &[u16; 1 << LOOKAHEAD_BITS] {
        &self.fast
    }

    /// The fast entry for the code at the top of `peek` as `(bits, advance)`, or `(0, 0)`
    /// where the caller must take [`HuffmanTable::decode`].
    #[cfg(test)]
    pub(crate) fn skip(&self, peek: u64) -> (u32, u32) {
        let entry = self.fast[(peek >> (64 - LOOKAHEAD_BITS)) as usize];
        if entry & 0x8000 != 0 {
            return (0, 0);
        }
        ((entry >> 8) as u32, (entry & 0xFF) as u32)
    }
}

/// For a valid symbol of `class`: its magnitude bits and how many coefficients it covers.
/// `None` for symbols the 8-bit sequential process does not allow (DC categories above 11,
/// AC categories above 10), which the slow path reports.
fn skip_step(symbol: u8, class: Class) -> Option<(u32, u32)> {
    match class {
        Class::Dc if symbol <= 11 => Some((symbol as u32, 0)),
        Class::Dc => None,
        Class::Ac => {
            let (run, size) = ((symbol >> 4) as u32, (symbol & 15) as u32);
            match size {
                // T.81 F.1.2.2.1: ZRL is sixteen zeros; any other size-0 symbol ends the
                // block, as EOB does (libjpeg reads them so).
                0 if run == 15 => Some((0, 16)),
                0 => Some((0, 0)),
                1..=10 => Some((size, run + 1)),
                _ => None,
            }
        }
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
        HuffmanTable::new(&counts, &values, Class::Dc).unwrap()
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
        let t = HuffmanTable::new(&counts, &values, Class::Dc).unwrap();
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
            HuffmanTable::new(&counts, &[0, 1, 2], Class::Dc).unwrap_err(),
            TableError::CodeSpaceOverflow { length: 1 }
        );
        // Two of length 1 fill the space; one more of length 2 overflows it.
        counts[0] = 2;
        counts[1] = 1;
        assert_eq!(
            HuffmanTable::new(&counts, &[0, 1, 2], Class::Dc).unwrap_err(),
            TableError::CodeSpaceOverflow { length: 2 }
        );
        // 17 codes of length 4 when 16 fit.
        let mut counts = [0u8; 16];
        counts[3] = 17;
        assert!(HuffmanTable::new(&counts, &[0; 17], Class::Ac).is_err());
    }

    #[test]
    fn refuses_more_than_256_values() {
        let counts = [255u8; 16];
        assert!(matches!(
            HuffmanTable::new(&counts, &[], Class::Ac),
            Err(TableError::TooManyValues(4080))
        ));
    }

    #[test]
    fn an_empty_table_decodes_nothing() {
        let t = HuffmanTable::new(&[0; 16], &[], Class::Dc).unwrap();
        assert_eq!(t.decode(0), None);
        assert_eq!(t.decode(u64::MAX), None);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod skip_tests {
    use super::*;

    #[test]
    fn skip_entries_cover_code_and_magnitude_bits() {
        // AC: EOB = 00, 0x01 = 01, ZRL = 10, 0x12 = 110, 0x0B (category 11, invalid) = 111.
        let t = HuffmanTable::new(
            &[0, 3, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0x00, 0x01, 0xF0, 0x12, 0x0B],
            Class::Ac,
        )
        .unwrap();
        let top = |s: &str| u64::from_str_radix(s, 2).unwrap() << (64 - s.len());
        assert_eq!(t.skip(top("00")), (2, 0));
        assert_eq!(t.skip(top("01")), (3, 1));
        assert_eq!(t.skip(top("10")), (2, 16));
        assert_eq!(t.skip(top("110")), (5, 2));
        assert_eq!(t.skip(top("111")).0, 0);
        // As a DC table, 0x12 = category 18 is invalid and 0x01 is one magnitude bit.
        let t = HuffmanTable::new(
            &[0, 3, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0x00, 0x01, 0x0B, 0x12, 0x05],
            Class::Dc,
        )
        .unwrap();
        assert_eq!(t.skip(top("01")), (3, 0));
        // Category 11 is valid, but 2 + 11 bits do not fit the lookahead.
        assert_eq!(t.skip(top("10")).0, 0);
        assert_eq!(t.skip(top("110")).0, 0);
        assert_eq!(t.skip(top("111")), (8, 0));
    }
}
