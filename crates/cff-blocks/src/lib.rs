//! Exact block readers for compressed files: MP3 frames, Ogg Opus packets and JPEG MCUs.
//!
//! TEMPEST (arXiv 2510.23665) tokenizes a compressed file by the codec's own blocks. This crate
//! finds those blocks, exactly and without decoding: every reader yields [`Block`]s that say
//! where the block lies in the file, what its bytes are, what kind it is and when or where it
//! plays.
//!
//! ```
//! use cff_blocks::{Options, Reader, BlockKind};
//!
//! // One MPEG-2 Layer III frame header (16 kHz, 32 kbps, mono) repeated: 72·32000/16000 = 144
//! // bytes per frame.
//! let mut frame = vec![0u8; 144];
//! frame[..4].copy_from_slice(&[0xFF, 0xF3, 0x48, 0xC4]);
//! let file: Vec<u8> = frame.repeat(3);
//!
//! let mut reader = Reader::new(&file, &Options::default())?;
//! let blocks: Vec<_> = reader.by_ref().collect::<Result<_, _>>()?;
//! assert_eq!(blocks.len(), 3);
//! assert_eq!(blocks[1].offset, 144);
//! assert_eq!(blocks[1].kind, BlockKind::Audio);
//! assert_eq!(blocks[1].place.duration_seconds(), Some(0.036));
//! # Ok::<(), cff_blocks::Error>(())
//! ```
//!
//! Readers are iterators of `Result<Block>`. After an error they yield nothing more; the
//! blocks already yielded stand (a partial result). Input that is not part of any block (tags,
//! garbage skipped while resynchronising, other Ogg streams) is reported by
//! [`Reader::regions`]. For scanning whole Ogg Opus files,
//! [`opus::OpusReader::for_each_block`] visits the same blocks as compact records, faster.
//! [`detect`] tells the format from a file's first bytes, [`detect_file`] from a path, reading
//! only those bytes.
#![deny(missing_docs)]
// Only the call of the carry-less-multiply CRC kernels after CPU feature detection needs
// `unsafe` (`ogg::clmul::update_with`, x86-64 with the `simd-crc` feature); every other build
// has none at all.
#![cfg_attr(
    not(all(feature = "simd-crc", target_arch = "x86_64")),
    forbid(unsafe_code)
)]
#![cfg_attr(all(feature = "simd-crc", target_arch = "x86_64"), deny(unsafe_code))]

mod block;
mod error;
pub mod jpeg;
pub mod mp3;
pub mod ogg;
mod options;
pub mod opus;
mod summary;

use std::io::Read;
use std::path::Path;

pub use block::{Block, BlockKind, Detail, Format, Place, Region, RegionKind};
pub use error::{Error, ErrorClass, Result};
pub use options::{Limits, Options};
pub use summary::Summary;

/// Detects the format from the first bytes of a file.
///
/// MP3: an ID3v2 tag (`ID3`) or an MPEG audio frame sync (11 set bits). Ogg: `OggS` (the
/// stream is checked for Opus when it is read). JPEG: SOI followed by a marker (`FF D8 FF`).
pub fn detect(data: &[u8]) -> Result<Format> {
    match data {
        [b'O', b'g', b'g', b'S', ..] => Ok(Format::OggOpus),
        [0xFF, 0xD8, 0xFF, ..] => Ok(Format::Jpeg),
        [b'I', b'D', b'3', ..] => Ok(Format::Mp3),
        [0xFF, b1, ..] if b1 & 0xE0 == 0xE0 => Ok(Format::Mp3),
        _ => Err(Error::UnknownFormat {
            path: None,
            found: data
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        }),
    }
}

/// Bytes that [`detect_file`] reads: the longest signature [`detect`] checks is 3 bytes; the
/// rest are for the hex prefix of an [`Error::UnknownFormat`].
const DETECT_BYTES: u64 = 8;

/// Detects the format of the file at `path` as [`detect`] does, reading only its first bytes.
///
/// Its errors name the path: [`Error::Io`] when the file cannot be opened or read, and
/// [`Error::UnknownFormat`] (with `path` set) when its first bytes match no supported format.
pub fn detect_file(path: impl AsRef<Path>) -> Result<Format> {
    let path = path.as_ref();
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::with_capacity(DETECT_BYTES as usize);
    std::fs::File::open(path)
        .and_then(|file| file.take(DETECT_BYTES).read_to_end(&mut head))
        .map_err(io)?;
    detect(&head).map_err(|e| match e {
        Error::UnknownFormat { found, .. } => Error::UnknownFormat {
            found,
            path: Some(path.to_path_buf()),
        },
        e => e,
    })
}

/// Reads a whole file into memory, refusing files above [`Limits::max_file_bytes`] before
/// reading them.
pub fn load(path: impl AsRef<Path>, limits: &Limits) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > limits.max_file_bytes {
        return Err(Error::Limit {
            offset: 0,
            what: "max_file_bytes",
            limit: limits.max_file_bytes,
            found: len,
        });
    }
    let mut data = Vec::with_capacity(len as usize);
    // `take` guards against a file that grows while it is read.
    file.take(limits.max_file_bytes.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(io)?;
    check_file_size(data.len(), limits)?;
    Ok(data)
}

fn check_file_size(len: usize, limits: &Limits) -> Result<()> {
    if len as u64 > limits.max_file_bytes {
        return Err(Error::Limit {
            offset: 0,
            what: "max_file_bytes",
            limit: limits.max_file_bytes,
            found: len as u64,
        });
    }
    Ok(())
}

/// A reader for any supported format, chosen by [`detect`].
// A plain tag byte: `next` reads it once per block, and a tag folded into a niche of a
// variant's fields took several instructions to decode.
#[derive(Debug)]
#[non_exhaustive]
#[repr(u8)]
pub enum Reader<'a> {
    /// MP3 frames.
    Mp3(mp3::Mp3Reader<'a>),
    /// Ogg Opus packets.
    OggOpus(opus::OpusReader<'a>),
    /// JPEG MCUs.
    Jpeg(jpeg::JpegReader<'a>),
}

impl<'a> Reader<'a> {
    /// Detects the format of `data` and opens the matching reader.
    pub fn new(data: &'a [u8], options: &Options) -> Result<Self> {
        check_file_size(data.len(), &options.limits)?;
        Ok(match detect(data)? {
            Format::Mp3 => Reader::Mp3(mp3::Mp3Reader::new(data, options)?),
            Format::OggOpus => Reader::OggOpus(opus::OpusReader::new(data, options)?),
            Format::Jpeg => Reader::Jpeg(jpeg::JpegReader::new(data, options)?),
        })
    }

    /// The format being read.
    pub fn format(&self) -> Format {
        match self {
            Reader::Mp3(_) => Format::Mp3,
            Reader::OggOpus(_) => Format::OggOpus,
            Reader::Jpeg(_) => Format::Jpeg,
        }
    }

    /// Ranges of the input seen so far that are not part of any block.
    pub fn regions(&self) -> &[Region] {
        match self {
            Reader::Mp3(r) => r.regions(),
            Reader::OggOpus(r) => r.regions(),
            Reader::Jpeg(r) => r.regions(),
        }
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<Block<'a>>;

    // Inline, so that a caller's loop sees each reader's hot path. The hot paths give a
    // block by value and meet before the one call that writes a result in memory (the general
    // path of whichever reader this is): with a call per reader on that path, the compiler
    // wrote every field of every block to memory.
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let hot = match self {
            Reader::Mp3(r) => r.next_confirmed(),
            Reader::OggOpus(r) => r.next_in_page(),
            Reader::Jpeg(_) => None,
        };
        match hot {
            Some(block) => Some(Ok(block)),
            None => self.next_general(),
        }
    }
}

impl<'a> Reader<'a> {
    /// Everything but the readers' hot paths.
    #[inline(never)]
    fn next_general(&mut self) -> Option<Result<Block<'a>>> {
        match self {
            Reader::Mp3(r) => r.next_general(),
            Reader::OggOpus(r) => r.next_general(),
            Reader::Jpeg(r) => r.next(),
        }
    }
}

/// Reads every block of `data`: the blocks found, a summary, and the error that stopped the
/// reader early, if one did (the blocks before it stand).
pub fn read_all<'a>(
    data: &'a [u8],
    options: &Options,
) -> Result<(Vec<Block<'a>>, Summary, Option<Error>)> {
    let mut reader = Reader::new(data, options)?;
    let mut summary = Summary::new(reader.format());
    let mut blocks = Vec::new();
    let mut error = None;
    for item in reader.by_ref() {
        match item {
            Ok(block) => {
                summary.add_block(&block);
                blocks.push(block);
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    summary.add_regions(reader.regions());
    Ok((blocks, summary, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_by_first_bytes() {
        assert_eq!(detect(b"OggS\0\x02").ok(), Some(Format::OggOpus));
        assert_eq!(detect(&[0xFF, 0xD8, 0xFF, 0xE0]).ok(), Some(Format::Jpeg));
        assert_eq!(detect(b"ID3\x04\0").ok(), Some(Format::Mp3));
        assert_eq!(detect(&[0xFF, 0xFB, 0x90, 0x64]).ok(), Some(Format::Mp3));
        let err = detect(b"RIFF\0\0\0\0WAVE").unwrap_err();
        assert!(err.to_string().contains("52 49 46 46"), "{err}");
        assert!(detect(&[]).is_err());
        assert!(detect(&[0xFF]).is_err());
    }

    #[test]
    fn detect_file_reads_the_start_and_names_the_path() {
        let dir = std::env::temp_dir().join(format!("cff-blocks-detect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases: [(&str, &[u8], Format); 3] = [
            ("a.opus", b"OggS\0\x02", Format::OggOpus),
            ("b.jpg", &[0xFF, 0xD8, 0xFF, 0xE0, 0, 16], Format::Jpeg),
            ("c.mp3", &[0xFF, 0xF3, 0x48, 0xC4], Format::Mp3),
        ];
        for (name, bytes, format) in cases {
            // What follows the signature is never read: a megabyte of anything.
            let mut file = bytes.to_vec();
            file.resize(1 << 20, 0xAB);
            let path = dir.join(name);
            std::fs::write(&path, &file).unwrap();
            assert_eq!(detect_file(&path).unwrap(), format, "{name}");
        }
        let unknown = dir.join("d.wav");
        std::fs::write(&unknown, b"RIFF\0\0\0\0WAVE").unwrap();
        let err = detect_file(&unknown).unwrap_err();
        assert!(matches!(err, Error::UnknownFormat { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("d.wav") && message.contains("52 49 46 46"),
            "{message}"
        );
        let empty = dir.join("e.mp3");
        std::fs::write(&empty, b"").unwrap();
        assert!(detect_file(&empty)
            .unwrap_err()
            .to_string()
            .contains("e.mp3"));
        let missing = detect_file(dir.join("missing.opus")).unwrap_err();
        assert!(matches!(missing, Error::Io { .. }), "{missing}");
        assert!(missing.to_string().contains("missing.opus"), "{missing}");
        // detect on bytes in memory names no file.
        assert!(!detect(b"RIFF").unwrap_err().to_string().contains(" of "));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_refuses_files_above_the_limit_before_reading() {
        let dir = std::env::temp_dir().join(format!("cff-blocks-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.bin");
        std::fs::write(&path, vec![0u8; 1000]).unwrap();
        let err = load(&path, &Limits::default().with_max_file_bytes(999)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Limit {
                    found: 1000,
                    limit: 999,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(load(&path, &Limits::default()).unwrap().len(), 1000);
        let missing = load(dir.join("missing.mp3"), &Limits::default()).unwrap_err();
        assert!(missing.to_string().contains("missing.mp3"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
