//! The table-of-contents byte of an Opus packet (RFC 6716 §3.1) and the frame-count rule
//! (§3.2).

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

    /// The number of frames in a packet that starts with this TOC (RFC 6716 §3.2): 1 for code 0,
    /// 2 for codes 1 and 2, and for code 3 the low six bits of `count_byte`, the byte after the
    /// TOC; `None` for code 3 without that byte. A count of 0 (invalid, R5) is returned as it is.
    ///
    /// The one place that reads the frame count: the packet parser, the readers' hot paths
    /// (through `packet::frames`) and the timestamps of a page's packets all go through it.
    #[inline(always)]
    pub const fn frame_count(self, count_byte: Option<u8>) -> Option<u8> {
        match (self.code(), count_byte) {
            (0, _) => Some(1),
            (1 | 2, _) => Some(2),
            (_, Some(byte)) => Some(byte & 0x3F),
            (_, None) => None,
        }
    }

    /// Samples at 48 kHz of `count` frames of this configuration.
    #[inline(always)]
    pub const fn samples(self, count: u8) -> u32 {
        count as u32 * self.frame_size()
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
