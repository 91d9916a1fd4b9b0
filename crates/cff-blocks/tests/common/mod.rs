//! Shared by the integration tests: reading the committed fixtures.
#![allow(dead_code)]

use std::path::PathBuf;

/// The bytes of `tests/fixtures/<kind>/<name>`; panics naming the path if it cannot be read.
pub fn fixture_in(kind: &str, name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The LAME 3.100 files of `tests/fixtures/mp3/make.sh`: MPEG-1, 2 and 2.5, mono and joint
/// stereo, CRC, CBR, ABR and VBR, with and without the bit reservoir.
pub const LAME_FIXTURES: [&str; 10] = [
    "abr20_16k_mono.mp3",
    "cbr128_44k_stereo_id3.mp3",
    "cbr32_16k_mono.mp3",
    "crc_22k_stereo_noxing.mp3",
    "crc_48k_stereo.mp3",
    "mpeg25_11k_mono_noxing_id3v1.mp3",
    "mpeg25_8k_mono.mp3",
    "nores_24k_mono_id3v2.mp3",
    "vbr_12k_mono.mp3",
    "vbr_32k_stereo.mp3",
];
