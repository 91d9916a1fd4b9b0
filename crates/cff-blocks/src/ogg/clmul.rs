//! The Ogg CRC-32 by carry-less multiplication (feature `simd-crc`, x86-64): 256-bit
//! VPCLMULQDQ where the processor has it (with AVX2; no AVX-512 needed), 128-bit PCLMULQDQ
//! where it has only that, and `None` (the caller's tables) elsewhere.
//!
//! # The math
//!
//! Bytes are polynomials over GF(2), first byte and most significant bit first (the CRC is not
//! reflected, RFC 3533 §6). Read as a big-endian number, 16 bytes of input are one polynomial of
//! degree below 128; byte-reversing a little-endian load puts exactly that number in a 128-bit
//! register. With no initial value and no final xor, the register after a message M is
//! M·x³² mod P, P = x³² + 0x04C11DB7. All that matters about the input read so far is therefore
//! its residue mod P, and any polynomial congruent to it will do:
//!
//! - **Folding.** If A (128 bits, A = H·x⁶⁴ + L) stands for everything up to some point and the
//!   next chunk D starts d bits later, the two together are A·x^d + D ≡ H·(x^(d+64) mod P) +
//!   L·(x^d mod P) + D: two 64×32-bit carry-less products (each below 96 bits) and two xors give
//!   a new 128-bit stand-in. Several accumulators, each folding over the others' chunks (d =
//!   their combined width), keep the multiplier busy; at the end each is folded onto the last
//!   by its distance from it.
//! - **Initial register.** Continuing from a register c is the same as xoring c into the
//!   first four bytes of the input (the top 32 bits of the first chunk).
//! - **Tail.** With r < 16 bytes T left, A·x^(8r) + T is split by byte shuffles into the r top
//!   bytes of A, now standing at x¹²⁸ (folded by 128 bits), and the rest of A shifted up, with T
//!   in its r low bytes.
//! - **Reduction.** A·x³² mod P: the top 64 bits of A fold by x⁹⁶ mod P onto the low 64 shifted
//!   up by 32 (96 bits), whose top 32 bits fold by x⁶⁴ mod P (64 bits, Z); then Barrett: the
//!   quotient Z div P is ⌊⌊Z / x³²⌋·μ / x³²⌋ with μ = ⌊x⁶⁴ / P⌋ (exact for polynomials), and
//!   Z mod P is the low 32 bits of Z − quotient·P.
//!
//! The constants are computed at compile time from the polynomial. Intel's white paper "Fast CRC
//! Computation for Generic Polynomials Using PCLMULQDQ Instruction" (2009) describes the
//! method; this is our own derivation and code.
//!
//! # Safety
//!
//! The kernels are safe functions with `#[target_feature]`: the intrinsics are safe to call
//! inside them and they read input only through slices (vectors are built from `u64`s, which
//! the compiler turns into plain vector loads). Calling a kernel needs the features present:
//! `level` detects them once per process, and `update_with` holds the one `unsafe` block.

use std::arch::x86_64::{
    __m128i, __m256i, _mm256_castsi256_si128, _mm256_clmulepi64_epi128, _mm256_extracti128_si256,
    _mm256_set_epi64x, _mm256_set_m128i, _mm256_shuffle_epi8, _mm256_xor_si256, _mm_and_si128,
    _mm_clmulepi64_si128, _mm_cvtsi128_si32, _mm_move_epi64, _mm_set_epi32, _mm_set_epi64x,
    _mm_shuffle_epi8, _mm_slli_si128, _mm_srli_epi64, _mm_srli_si128, _mm_xor_si128,
};
use std::sync::atomic::{AtomicU8, Ordering};

use super::CRC_POLYNOMIAL;

/// `x^n mod P` as a register value (bit i = coefficient of xⁱ).
const fn xpow(n: u32) -> i64 {
    let mut r = 1u32;
    let mut i = 0;
    while i < n {
        r = if r & 0x8000_0000 != 0 {
            (r << 1) ^ CRC_POLYNOMIAL
        } else {
            r << 1
        };
        i += 1;
    }
    r as i64
}

/// P with its x³² term: 33 bits.
const P_FULL: i64 = (1 << 32) | CRC_POLYNOMIAL as i64;

/// μ = ⌊x⁶⁴ / P⌋ (33 bits), by long division.
const fn barrett_mu() -> i64 {
    let p = P_FULL as u128;
    let mut rem: u128 = 1 << 64;
    let mut q = 0u64;
    let mut bit = 64;
    while bit >= 32 {
        if (rem >> bit) & 1 != 0 {
            rem ^= p << (bit - 32);
            q |= 1 << (bit - 32);
        }
        bit -= 1;
    }
    q as i64
}

/// Folding constants for a distance of `d` bits, as (for the high 64 bits, for the low 64
/// bits): (x^(d+64) mod P, x^d mod P).
const fn fold_k(d: u32) -> (i64, i64) {
    (xpow(d + 64), xpow(d))
}

const K128: (i64, i64) = fold_k(128);
const K256: (i64, i64) = fold_k(256);
const K384: (i64, i64) = fold_k(384);
const K512: (i64, i64) = fold_k(512);
const K768: (i64, i64) = fold_k(768);
const K1024: (i64, i64) = fold_k(1024);
/// Reduction: x⁶⁴ mod P (to the low qword) and x⁹⁶ mod P (to the high qword).
const K_REDUCE: (i64, i64) = (xpow(64), xpow(96));
/// Barrett: P (to the low qword) and μ (to the high qword).
const K_BARRETT: (i64, i64) = (P_FULL, barrett_mu());

/// Byte windows for the tail shuffles: `SHUFFLE[16 - r..32 - r]` moves the top r bytes of a
/// register to its bottom, `SHUFFLE[32 - r..48 - r]` moves the rest up by r bytes (0x80 makes a
/// zero byte).
static SHUFFLE: [u8; 48] = {
    let mut t = [0x80u8; 48];
    let mut i = 0;
    while i < 16 {
        t[i] = i as u8;
        t[32 + i] = i as u8;
        i += 1;
    }
    t
};

/// `LOW_MASK[16 - r..32 - r]` keeps the r low bytes of a register.
static LOW_MASK: [u8; 32] = {
    let mut t = [0u8; 32];
    let mut i = 0;
    while i < 16 {
        t[i] = 0xFF;
        i += 1;
    }
    t
};

/// Little-endian 64-bit word `i` of a 16-byte array.
#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> i64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i * 8..i * 8 + 8]);
    i64::from_le_bytes(w)
}

/// Sixteen bytes as they lie in memory (byte j in lane byte j).
#[target_feature(enable = "sse2")]
#[inline]
fn raw128(b: &[u8; 16]) -> __m128i {
    _mm_set_epi64x(word(b, 1), word(b, 0))
}

/// The byte-reversing shuffle for one 128-bit lane.
#[target_feature(enable = "sse2")]
#[inline]
fn reverse_mask() -> __m128i {
    _mm_set_epi64x(0x0001_0203_0405_0607, 0x0809_0A0B_0C0D_0E0F)
}

/// Sixteen bytes as one polynomial: the big-endian number in a 128-bit register.
#[target_feature(enable = "sse2,ssse3")]
#[inline]
fn load128(b: &[u8; 16]) -> __m128i {
    _mm_shuffle_epi8(raw128(b), reverse_mask())
}

/// The first sixteen bytes of a slice (`None` when shorter).
fn array16(b: &[u8]) -> Option<&[u8; 16]> {
    b.first_chunk::<16>()
}

/// One 128-bit fold: `a` moved forward by the distance of `k` (see [`fold_k`]).
#[target_feature(enable = "sse2,pclmulqdq")]
#[inline]
fn fold128(a: __m128i, k: (i64, i64)) -> __m128i {
    let k = _mm_set_epi64x(k.0, k.1);
    _mm_xor_si128(
        _mm_clmulepi64_si128::<0x11>(a, k),
        _mm_clmulepi64_si128::<0x00>(a, k),
    )
}

/// The first 32 bytes (`a`, then `c`) as two polynomials, with the register `crc` xored into
/// the first and, with `zero_field`, bytes 22..26 (the Ogg CRC field) taken as zeros.
#[target_feature(enable = "sse2,ssse3")]
#[inline]
fn first32(a: &[u8; 16], c: &[u8; 16], crc: u32, zero_field: bool) -> (__m128i, __m128i) {
    let x0 = _mm_xor_si128(load128(a), _mm_set_epi32(crc as i32, 0, 0, 0));
    // Bytes 6..10 of the second half are bytes 22..26 of the page.
    let mask = if zero_field {
        _mm_set_epi64x(!0xFFFF, 0x0000_FFFF_FFFF_FFFF)
    } else {
        _mm_set_epi64x(-1, -1)
    };
    let x1 = _mm_shuffle_epi8(_mm_and_si128(raw128(c), mask), reverse_mask());
    (x0, x1)
}

/// Folds the last `tail.len()` (< 16) bytes onto `x`; `last16` is the input's last 16 bytes.
#[target_feature(enable = "sse2,ssse3,pclmulqdq")]
#[inline]
fn fold_tail(x: __m128i, r: usize, last16: &[u8; 16]) -> __m128i {
    let (Some(top), Some(up), Some(keep)) = (
        SHUFFLE.get(16 - r..32 - r).and_then(array16),
        SHUFFLE.get(32 - r..48 - r).and_then(array16),
        LOW_MASK.get(16 - r..32 - r).and_then(array16),
    ) else {
        return x;
    };
    let top = _mm_shuffle_epi8(x, raw128(top));
    let up = _mm_shuffle_epi8(x, raw128(up));
    let t = _mm_and_si128(load128(last16), raw128(keep));
    _mm_xor_si128(fold128(top, K128), _mm_xor_si128(up, t))
}

/// The register for the input that `x` stands for: x·x³² mod P.
#[target_feature(enable = "sse2,sse4.1,pclmulqdq")]
#[inline]
fn reduce(x: __m128i) -> u32 {
    let k = _mm_set_epi64x(K_REDUCE.1, K_REDUCE.0);
    // High 64 bits × (x⁹⁶ mod P), plus the low 64 bits × x³².
    let y = _mm_xor_si128(
        _mm_clmulepi64_si128::<0x11>(x, k),
        _mm_slli_si128::<4>(_mm_move_epi64(x)),
    );
    // Bits 64..96 × (x⁶⁴ mod P), plus bits 0..64.
    let z = _mm_xor_si128(
        _mm_clmulepi64_si128::<0x00>(_mm_srli_si128::<8>(y), k),
        _mm_move_epi64(y),
    );
    let b = _mm_set_epi64x(K_BARRETT.1, K_BARRETT.0);
    let q = _mm_srli_epi64::<32>(_mm_clmulepi64_si128::<0x10>(_mm_srli_epi64::<32>(z), b));
    let r = _mm_xor_si128(z, _mm_clmulepi64_si128::<0x00>(q, b));
    _mm_cvtsi128_si32(r) as u32
}

/// The end shared by both kernels: `x` stands for the input up to `rest`, `rest` has fewer
/// than 32 bytes, `data` is the whole input (at least 32 bytes).
#[target_feature(enable = "sse2,ssse3,sse4.1,pclmulqdq")]
#[inline]
fn finish(mut x: __m128i, mut rest: &[u8], data: &[u8]) -> u32 {
    if let Some((c, r)) = rest.split_first_chunk::<16>() {
        x = _mm_xor_si128(fold128(x, K128), load128(c));
        rest = r;
    }
    if let (false, Some(last)) = (rest.is_empty(), data.last_chunk::<16>()) {
        x = fold_tail(x, rest.len(), last);
    }
    reduce(x)
}

/// The 128-bit kernel: four accumulators over 64-byte blocks. `None` if `data` has fewer
/// than 32 bytes.
#[target_feature(enable = "sse2,ssse3,sse4.1,pclmulqdq")]
fn update128(crc: u32, data: &[u8], zero_field: bool) -> Option<u32> {
    let (chunks, tail) = data.as_chunks::<16>();
    let [c0, c1, rest @ ..] = chunks else {
        return None;
    };
    let mut rest = rest;
    let (x0, x1) = first32(c0, c1, crc, zero_field);
    let mut x = if let [c2, c3, r @ ..] = rest {
        let mut acc = [x0, x1, load128(c2), load128(c3)];
        let (blocks, r) = r.as_chunks::<4>();
        for b in blocks {
            for (a, c) in acc.iter_mut().zip(b) {
                *a = _mm_xor_si128(fold128(*a, K512), load128(c));
            }
        }
        rest = r;
        _mm_xor_si128(
            _mm_xor_si128(fold128(acc[0], K384), fold128(acc[1], K256)),
            _mm_xor_si128(fold128(acc[2], K128), acc[3]),
        )
    } else {
        _mm_xor_si128(fold128(x0, K128), x1)
    };
    for c in rest {
        x = _mm_xor_si128(fold128(x, K128), load128(c));
    }
    Some(finish(x, tail, data))
}

/// Thirty-two bytes as two polynomials, one per 128-bit lane (the first in the low lane).
#[target_feature(enable = "avx2")]
#[inline]
fn load256(b: &[u8; 32]) -> __m256i {
    let mut w = [0i64; 4];
    for (w, c) in w.iter_mut().zip(b.as_chunks::<8>().0) {
        *w = i64::from_le_bytes(*c);
    }
    let rev = _mm256_set_epi64x(
        0x0001_0203_0405_0607,
        0x0809_0A0B_0C0D_0E0F,
        0x0001_0203_0405_0607,
        0x0809_0A0B_0C0D_0E0F,
    );
    _mm256_shuffle_epi8(_mm256_set_epi64x(w[3], w[2], w[1], w[0]), rev)
}

/// A 256-bit fold: each lane moved forward by the distance of `k`.
#[target_feature(enable = "avx2,vpclmulqdq")]
#[inline]
fn fold256(a: __m256i, k: (i64, i64)) -> __m256i {
    let k = _mm256_set_epi64x(k.0, k.1, k.0, k.1);
    _mm256_xor_si256(
        _mm256_clmulepi64_epi128::<0x11>(a, k),
        _mm256_clmulepi64_epi128::<0x00>(a, k),
    )
}

/// The 256-bit kernel: four accumulators (eight lanes) over 128-byte blocks. `None` if `data`
/// has fewer than 32 bytes.
#[target_feature(enable = "sse2,ssse3,sse4.1,pclmulqdq,avx,avx2,vpclmulqdq")]
fn update256(crc: u32, data: &[u8], zero_field: bool) -> Option<u32> {
    let (chunks, tail) = data.as_chunks::<32>();
    let [head, rest @ ..] = chunks else {
        return None;
    };
    let mut rest = rest;
    let [a, c] = head.as_chunks::<16>().0 else {
        return None;
    };
    let (x0, x1) = first32(a, c, crc, zero_field);
    let y0 = _mm256_set_m128i(x1, x0);
    let mut y = if let [c1, c2, c3, r @ ..] = rest {
        let mut acc = [y0, load256(c1), load256(c2), load256(c3)];
        let (blocks, r) = r.as_chunks::<4>();
        for b in blocks {
            for (a, c) in acc.iter_mut().zip(b) {
                *a = _mm256_xor_si256(fold256(*a, K1024), load256(c));
            }
        }
        rest = r;
        _mm256_xor_si256(
            _mm256_xor_si256(fold256(acc[0], K768), fold256(acc[1], K512)),
            _mm256_xor_si256(fold256(acc[2], K256), acc[3]),
        )
    } else {
        y0
    };
    for c in rest {
        y = _mm256_xor_si256(fold256(y, K256), load256(c));
    }
    let x = _mm_xor_si128(
        fold128(_mm256_castsi256_si128(y), K128),
        _mm256_extracti128_si256::<1>(y),
    );
    Some(finish(x, tail, data))
}

/// Not yet detected.
const UNKNOWN: u8 = 0;
/// Neither kernel runs here.
const NONE: u8 = 1;
/// PCLMULQDQ (with SSE4.1): the 128-bit kernel.
pub(super) const CLMUL128: u8 = 2;
/// VPCLMULQDQ and AVX2 as well: the 256-bit kernel.
pub(super) const CLMUL256: u8 = 3;

/// The detected level, cached: a page pays one relaxed load.
static LEVEL: AtomicU8 = AtomicU8::new(UNKNOWN);

/// The best kernel this processor runs ([`CLMUL256`], [`CLMUL128`] or 1 for none).
pub(super) fn level() -> u8 {
    let cached = LEVEL.load(Ordering::Relaxed);
    if cached != UNKNOWN {
        return cached;
    }
    let clmul = is_x86_feature_detected!("pclmulqdq")
        && is_x86_feature_detected!("sse4.1")
        && is_x86_feature_detected!("ssse3");
    let detected =
        if clmul && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("vpclmulqdq") {
            CLMUL256
        } else if clmul {
            CLMUL128
        } else {
            NONE
        };
    LEVEL.store(detected, Ordering::Relaxed);
    detected
}

/// Continues the Ogg CRC-32 over `data` (at least 32 bytes) from the register `crc`, with the
/// kernel of `level` (at most what [`level`] found), bytes 22..26 taken as zeros if
/// `zero_field`. `None` when `data` is shorter or the processor lacks the kernel's features.
#[inline]
pub(super) fn update_with(level: u8, crc: u32, data: &[u8], zero_field: bool) -> Option<u32> {
    if data.len() < 32 || level > self::level() || level < CLMUL128 {
        return None;
    }
    #[allow(unsafe_code)]
    // SAFETY: `level()` detected at run time every feature the chosen kernel enables
    // (`update256`: avx2, which implies avx, vpclmulqdq and those of `update128`; `update128`:
    // pclmulqdq, sse4.1, ssse3, and sse2 which x86-64 always has), and `level` is at most what
    // it found (checked just above). The kernels touch memory only through the slice.
    unsafe {
        if level == CLMUL256 {
            update256(crc, data, zero_field)
        } else {
            update128(crc, data, zero_field)
        }
    }
}

/// Continues the Ogg CRC-32 over `data` with the best kernel this processor runs; `None` when
/// `data` is shorter than 32 bytes or no kernel runs here (then the caller uses its tables).
#[inline]
pub(super) fn update(crc: u32, data: &[u8], zero_field: bool) -> Option<u32> {
    update_with(level(), crc, data, zero_field)
}
