//! The readers' fast paths give what their general paths give.
//!
//! - [`Reader`] calls each format reader's hot path itself and its general path through one
//!   call; its items (blocks, then the error if one stops it) and regions must equal the format
//!   reader's own, on every committed fixture and every file of the crashtest corpus (malformed
//!   on purpose: truncations, flipped bits, gaps, so that the two paths hand over at odd
//!   places).
//! - The Ogg Opus hot path runs only while no packet inside a page can reach the block-size
//!   limit; a limit of one byte less than the largest page body turns it off without changing
//!   any result on these files (no packet of theirs comes near it). Both runs must agree.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use cff_blocks::jpeg::JpegReader;
use cff_blocks::mp3::Mp3Reader;
use cff_blocks::opus::OpusReader;
use cff_blocks::{Block, Error, Format, Limits, Options, Reader, Region};

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// Every fixture and crashtest file of a format, by extension.
fn files(ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["fixtures", "crashtest"] {
        let Ok(entries) = std::fs::read_dir(tests_dir().join(dir).join(ext)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let jpeg = ext == "jpeg" && path.extension().is_some_and(|e| e == "jpg");
            if path.extension().is_some_and(|e| e == ext) || jpeg {
                out.push(path);
            }
        }
    }
    out.sort();
    assert!(out.len() >= 5, "{ext}: only {} files found", out.len());
    out
}

/// What a reader gives: its blocks, the error that stopped it (as text: errors hold no
/// `PartialEq`), and its regions.
type Outcome<'a> = (Vec<Block<'a>>, Option<String>, Vec<Region>);

fn drain<'a>(
    reader: &mut dyn Iterator<Item = Result<Block<'a>, Error>>,
) -> (Vec<Block<'a>>, Option<String>) {
    let mut blocks = Vec::new();
    let mut error = None;
    for item in &mut *reader {
        match item {
            Ok(block) => blocks.push(block),
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    // After an error (or the end) a reader yields nothing more.
    assert!(reader.next().is_none());
    (blocks, error)
}

fn generic<'a>(data: &'a [u8], options: &Options) -> Option<Outcome<'a>> {
    let mut reader = Reader::new(data, options).ok()?;
    let (blocks, error) = drain(&mut reader);
    Some((blocks, error, reader.regions().to_vec()))
}

fn own<'a>(data: &'a [u8], format: Format, options: &Options) -> Option<Outcome<'a>> {
    match format {
        Format::Mp3 => {
            let mut r = Mp3Reader::new(data, options).ok()?;
            let (blocks, error) = drain(&mut r);
            Some((blocks, error, r.regions().to_vec()))
        }
        Format::OggOpus => {
            let mut r = OpusReader::new(data, options).ok()?;
            let (blocks, error) = drain(&mut r);
            Some((blocks, error, r.regions().to_vec()))
        }
        Format::Jpeg => {
            let mut r = JpegReader::new(data, options).ok()?;
            let (blocks, error) = drain(&mut r);
            Some((blocks, error, r.regions().to_vec()))
        }
        other => panic!("no reader for {other}"),
    }
}

fn check_generic(ext: &str, format: Format) {
    let mut compared = 0;
    for path in files(ext) {
        let data = std::fs::read(&path).unwrap();
        let name = path.display();
        if cff_blocks::detect(&data).ok() != Some(format) {
            // Damaged first bytes: the generic reader rightly takes it for something else.
            continue;
        }
        let options = Options::default();
        let (g, o) = (generic(&data, &options), own(&data, format, &options));
        assert_eq!(
            g.is_some(),
            o.is_some(),
            "{name}: opens with one reader only"
        );
        if let (Some(g), Some(o)) = (g, o) {
            assert_eq!(g, o, "{name}");
            compared += usize::from(!g.0.is_empty());
        }
    }
    assert!(compared >= 5, "{ext}: only {compared} files gave blocks");
}

#[test]
fn generic_reader_equals_mp3_reader() {
    check_generic("mp3", Format::Mp3);
}

#[test]
fn generic_reader_equals_opus_reader() {
    check_generic("opus", Format::OggOpus);
}

#[test]
fn generic_reader_equals_jpeg_reader() {
    check_generic("jpeg", Format::Jpeg);
}

#[test]
fn opus_hot_path_equals_general_path() {
    // 255 · 255 bytes is the largest body a page can hold; one less keeps the hot path off.
    let general_only =
        Options::default().with_limits(Limits::default().with_max_block_bytes(255 * 255 - 1));
    let mut audio = 0;
    for path in files("opus") {
        let data = std::fs::read(&path).unwrap();
        let fast = own(&data, Format::OggOpus, &Options::default());
        let slow = own(&data, Format::OggOpus, &general_only);
        assert_eq!(fast, slow, "{}", path.display());
        audio += fast.map_or(0, |o| o.0.len());
    }
    assert!(audio > 1000, "only {audio} blocks compared");
}
