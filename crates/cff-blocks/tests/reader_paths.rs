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
//! - `OpusReader::for_each_block` (one loop per page, a compact record per block) must give
//!   exactly the iterator's blocks (index, offset, bytes, kind, place, TOC), the same error and
//!   the same regions, on the same files, under options that move the hand-over points
//!   (CRC off, hot path off, block-count and block-size limits), also when the iterator has
//!   taken the first blocks.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use cff_blocks::jpeg::JpegReader;
use cff_blocks::mp3::Mp3Reader;
use cff_blocks::opus::{BlockRecord, OpusReader};
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

/// The facts a `BlockRecord` carries, from either API: index, offset, bytes, kind, place, TOC.
type Facts = (
    u64,
    u64,
    Vec<u8>,
    cff_blocks::BlockKind,
    cff_blocks::Place,
    Option<u8>,
);

fn block_facts(block: &Block<'_>) -> Facts {
    let toc = match &block.detail {
        cff_blocks::Detail::Opus(info) => info.toc.map(|t| t.byte()),
        other => panic!("not an Opus block: {other:?}"),
    };
    (
        block.index,
        block.offset,
        block.data.to_vec(),
        block.kind,
        block.place,
        toc,
    )
}

fn record_facts(record: BlockRecord<'_>) -> Facts {
    // The record's own conversions agree with its place.
    let place = record.place();
    assert_eq!(record.time_seconds(), place.time_seconds());
    assert_eq!(record.duration_seconds(), place.duration_seconds());
    assert_eq!(record.len(), record.data.len());
    (
        record.index,
        record.offset,
        record.data.to_vec(),
        record.kind,
        place,
        record.toc.map(|t| t.byte()),
    )
}

/// The iterator's outcome from the start: facts of every block, error, regions.
fn by_iterator(data: &[u8], options: &Options) -> Option<Scan> {
    let mut reader = OpusReader::new(data, options).ok()?;
    let (blocks, error) = drain(&mut reader);
    Some((
        blocks.iter().map(block_facts).collect(),
        error,
        reader.regions().to_vec(),
    ))
}

/// `first` blocks through the iterator, the rest through `for_each_block`.
fn by_for_each(data: &[u8], options: &Options, first: usize) -> Option<Scan> {
    let mut reader = OpusReader::new(data, options).ok()?;
    let mut facts = Vec::new();
    for _ in 0..first {
        match reader.next() {
            Some(Ok(block)) => facts.push(block_facts(&block)),
            Some(Err(e)) => {
                assert!(reader.next().is_none());
                return Some((facts, Some(e.to_string()), reader.regions().to_vec()));
            }
            None => break,
        }
    }
    let result = reader.for_each_block(|record| facts.push(record_facts(record)));
    // Finished either way: nothing more from the iterator or a second scan.
    assert!(reader.next().is_none());
    let mut more = 0;
    assert!(reader.for_each_block(|_| more += 1).is_ok());
    assert_eq!(more, 0);
    Some((
        facts,
        result.err().map(|e| e.to_string()),
        reader.regions().to_vec(),
    ))
}

type Scan = (Vec<Facts>, Option<String>, Vec<Region>);

/// `assert_eq!` that names the first block that differs instead of printing every block.
fn assert_same(got: Option<&Scan>, expected: Option<&Scan>, context: &str) {
    let (Some(got), Some(expected)) = (got, expected) else {
        assert_eq!(got.is_some(), expected.is_some(), "{context}: opens");
        return;
    };
    if let Some(i) = (0..got.0.len().min(expected.0.len())).find(|&i| got.0[i] != expected.0[i]) {
        panic!(
            "{context}: block {i} differs:\n got {:?}\n expected {:?}",
            got.0[i], expected.0[i]
        );
    }
    assert_eq!(got.0.len(), expected.0.len(), "{context}: blocks");
    assert_eq!(got.1, expected.1, "{context}: error");
    assert_eq!(got.2, expected.2, "{context}: regions");
}

#[test]
fn opus_for_each_block_equals_iterator() {
    let settings = [
        ("default", Options::default()),
        ("no CRC", Options::default().with_verify_crc(false)),
        (
            "hot path off",
            Options::default().with_limits(Limits::default().with_max_block_bytes(255 * 255 - 1)),
        ),
        (
            "max_blocks 40",
            Options::default().with_limits(Limits::default().with_max_blocks(40)),
        ),
        (
            "max_block_bytes 300",
            Options::default().with_limits(Limits::default().with_max_block_bytes(300)),
        ),
    ];
    let (mut records, mut errors, mut limited) = (0, 0, 0);
    for path in files("opus") {
        let data = std::fs::read(&path).unwrap();
        for (name, options) in &settings {
            let expected = by_iterator(&data, options);
            for first in [0, 1, 2, 3, 7] {
                let got = by_for_each(&data, options, first);
                let context = format!(
                    "{} ({name}, {first} blocks through the iterator first)",
                    path.display()
                );
                assert_same(got.as_ref(), expected.as_ref(), &context);
            }
            if let Some((facts, error, _)) = expected {
                records += facts.len();
                errors += usize::from(error.is_some());
                limited += usize::from(error.is_some_and(|e| e.contains("max_block")));
            }
        }
    }
    // The comparison saw many blocks, errors, and the limits stopping readers.
    assert!(records > 5000, "only {records} blocks compared");
    assert!(errors >= 20, "only {errors} runs ended in an error");
    assert!(limited >= 5, "only {limited} runs stopped by a limit");
}
