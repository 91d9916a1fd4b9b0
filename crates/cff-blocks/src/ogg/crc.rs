//! The Ogg CRC-32 (RFC 3533 §6): slicing-by-16 tables in safe Rust on two lanes, or carry-less
//! multiplication (`clmul.rs`) where the `simd-crc` feature and the processor allow.

#[cfg(all(feature = "simd-crc", target_arch = "x86_64"))]
use super::clmul;

/// The CRC-32 generator polynomial of Ogg (RFC 3533 §6): 0x04C11DB7, processed most
/// significant bit first (not reflected), initial value 0, no final xor.
pub const CRC_POLYNOMIAL: u32 = 0x04C1_1DB7;

/// Slicing-by-16 tables: `CRC_TABLES[k][v]` is the CRC register after feeding byte `v` into a
/// zero register and then `k` zero bytes. Built at compile time.
static CRC_TABLES: [[u32; 256]; 16] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 16] {
    let mut t = [[0u32; 256]; 16];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ CRC_POLYNOMIAL
            } else {
                c << 1
            };
            bit += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 16 {
        let mut i = 0;
        while i < 256 {
            // One more zero byte through the register: shift it out and fold its top byte.
            let prev = t[k - 1][i];
            t[k][i] = (prev << 8) ^ t[0][(prev >> 24) as usize];
            i += 1;
        }
        k += 1;
    }
    t
}

/// One slicing-by-16 step: sixteen bytes through the register.
#[inline(always)]
fn crc_step16(crc: u32, chunk: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let &[b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15] = chunk else {
        return crc;
    };
    // The register's four bytes line up with the first four data bytes (MSB first); each byte
    // j of the sixteen then still has 15 - j bytes to travel through the register.
    let w = crc ^ u32::from_be_bytes([b0, b1, b2, b3]);
    t[15][(w >> 24) as usize]
        ^ t[14][((w >> 16) & 0xFF) as usize]
        ^ t[13][((w >> 8) & 0xFF) as usize]
        ^ t[12][(w & 0xFF) as usize]
        ^ t[11][b4 as usize]
        ^ t[10][b5 as usize]
        ^ t[9][b6 as usize]
        ^ t[8][b7 as usize]
        ^ t[7][b8 as usize]
        ^ t[6][b9 as usize]
        ^ t[5][b10 as usize]
        ^ t[4][b11 as usize]
        ^ t[3][b12 as usize]
        ^ t[2][b13 as usize]
        ^ t[1][b14 as usize]
        ^ t[0][b15 as usize]
}

/// `a(x) · b(x) mod P(x)` over GF(2), registers read most significant bit first.
const fn gf2_mulmod(a: u32, b: u32) -> u32 {
    let mut r = 0u32;
    let mut i = 32;
    while i > 0 {
        i -= 1;
        r = if r & 0x8000_0000 != 0 {
            (r << 1) ^ CRC_POLYNOMIAL
        } else {
            r << 1
        };
        if (b >> i) & 1 != 0 {
            r ^= a;
        }
    }
    r
}

/// Half-lengths the two-lane CRC handles, in 16-byte units: a page body is at most 65025 bytes.
const LANE_UNITS: usize = 2048;

/// `SHIFT[k]` = x^(128·k) mod P: multiplying a CRC register by it appends 16·k zero bytes.
static SHIFT: [u32; LANE_UNITS + 1] = shift_table();

const fn shift_table() -> [u32; LANE_UNITS + 1] {
    let mut t = [0u32; LANE_UNITS + 1];
    // The register 0x0000_0001 stands for x^0 = 1; 128 doublings mod P give x^128 mod P.
    t[0] = 1;
    let mut step = 1u32;
    let mut n = 0;
    while n < 128 {
        step = if step & 0x8000_0000 != 0 {
            (step << 1) ^ CRC_POLYNOMIAL
        } else {
            step << 1
        };
        n += 1;
    }
    let mut k = 1;
    while k <= LANE_UNITS {
        t[k] = gf2_mulmod(t[k - 1], step);
        k += 1;
    }
    t
}

/// Continues the Ogg CRC-32 over `data` from the register value `crc`. Start from 0.
///
/// With the `simd-crc` feature (on by default) on x86-64, inputs of 32 bytes or more are
/// folded with carry-less multiplication (module `clmul`: 256-bit VPCLMULQDQ with AVX2, else
/// 128-bit PCLMULQDQ, chosen at run time). Shorter inputs, other processors and every build
/// without the feature use the slicing-by-16 tables of this module. Both give the same register.
pub fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    #[cfg(all(feature = "simd-crc", target_arch = "x86_64"))]
    if let Some(crc) = clmul::update(crc, data, false) {
        return crc;
    }
    table_crc32_update(crc, data)
}

/// Continues the Ogg CRC-32 over `data` from the register value `crc`, in safe Rust.
///
/// Slicing-by-16 (sixteen bytes per step through sixteen 1 KiB tables) on two lanes at once:
/// the two halves of a long input are run as independent CRCs, so that the processor overlaps
/// their table look-ups, and joined with CRC(A‖B) = CRC(A)·x^(8|B|) + CRC(B) mod P (the CRC is
/// linear and has no initial value or final xor, RFC 3533 §6).
pub(super) fn table_crc32_update(mut crc: u32, mut data: &[u8]) -> u32 {
    loop {
        // Below 256 bytes the join costs more than the second lane saves.
        let units = (data.len() / 32).min(LANE_UNITS);
        if units < 8 {
            break;
        }
        let half = units * 16;
        let (a, rest) = data.split_at(half);
        let (b, tail) = rest.split_at(half);
        let mut crc_b = 0u32;
        for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
            crc = crc_step16(crc, ca);
            crc_b = crc_step16(crc_b, cb);
        }
        let shift = SHIFT.get(units).copied().unwrap_or(1);
        crc = gf2_mulmod(crc, shift) ^ crc_b;
        data = tail;
    }
    let mut chunks = data.chunks_exact(16);
    for chunk in &mut chunks {
        crc = crc_step16(crc, chunk);
    }
    let t = &CRC_TABLES;
    for &b in chunks.remainder() {
        crc = (crc << 8) ^ t[0][((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

/// The Ogg CRC-32 of `data` (RFC 3533 §6).
pub fn crc32(data: &[u8]) -> u32 {
    crc32_update(0, data)
}

/// Byte range of the CRC field in the page header (RFC 3533 §6, "CRC checksum").
pub(super) const CRC_FIELD: std::ops::Range<usize> = 22..26;

/// The CRC-32 of a whole page (header, segment table, body) with its CRC field taken as zero
/// (RFC 3533 §6).
pub(super) fn page_crc(page: &[u8]) -> u32 {
    // With carry-less multiplication, one pass over the page as it lies in the input, the
    // kernel masking the CRC field out of its first vector.
    #[cfg(all(feature = "simd-crc", target_arch = "x86_64"))]
    if let Some(crc) = clmul::update(0, page, true) {
        return crc;
    }
    // Otherwise (tables, or a page under 32 bytes): the 22 bytes before the CRC field, then
    // the field as zeros, make 26 bytes; behind 6 zero bytes (which leave a register of 0
    // unchanged: the CRC has no initial value, RFC 3533 §6) they are two 16-byte steps. The
    // rest of the page (segment count and table, then the body) lies contiguous in the
    // input: one call.
    let mut head = [0u8; 32];
    if let (Some(dst), Some(src)) = (
        head.get_mut(6..6 + CRC_FIELD.start),
        page.get(..CRC_FIELD.start),
    ) {
        dst.copy_from_slice(src);
    }
    let (a, b) = head.split_at(16);
    let crc = crc_step16(crc_step16(0, a), b);
    crc32_update(crc, page.get(CRC_FIELD.end..).unwrap_or(&[]))
}
