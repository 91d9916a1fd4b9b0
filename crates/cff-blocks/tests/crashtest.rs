//! Every file under `tests/crashtest/<format>/` is malformed on purpose (the `make_*.py`
//! scripts beside them say how each was made). Each must give an error or a partial result:
//! never a panic, and never an allocation beyond a fixed budget, however much the file claims.
//!
//! The budget is enforced by a capped global allocator: an allocation above it aborts this test
//! binary. Run `cargo test -p cff-blocks --test crashtest -- --nocapture` to see the last file
//! read before an abort.

use std::alloc::System;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use cap::Cap;
use cff_blocks::{ErrorClass, Limits, Options, Reader};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// Bytes a reader may hold at once beyond the file itself, with the limits below.
const BUDGET: usize = 32 << 20;

/// Limits sized for files of a few kilobytes, so that files which claim more hit them.
fn options() -> Options {
    Options::default().with_limits(
        Limits::default()
            .with_max_block_bytes(4096)
            .with_max_blocks(4096)
            .with_max_pixels(1 << 20),
    )
}

/// Files whose headers claim gigabytes, and the error each must give.
const HOSTILE: [(&str, ErrorClass); 5] = [
    ("jpeg/sof_65535x65535.jpg", ErrorClass::Limit),
    ("mp3/id3_size_256mb.mp3", ErrorClass::Malformed),
    ("opus/tags_vendor_4gb.opus", ErrorClass::Malformed),
    ("opus/tags_comment_count_4g.opus", ErrorClass::Malformed),
    (
        "opus/packet_spans_26_pages_never_ends.opus",
        ErrorClass::Limit,
    ),
];

fn corpus() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crashtest");
    let mut files = Vec::new();
    for dir in std::fs::read_dir(&root).expect("tests/crashtest exists") {
        let dir = dir.expect("readable").path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).expect("readable") {
            files.push(f.expect("readable").path());
        }
    }
    files.sort();
    files
}

/// What reading one file gave.
#[derive(Debug)]
struct Outcome {
    blocks: u64,
    error: Option<ErrorClass>,
}

fn read(data: &[u8], options: &Options) -> Outcome {
    let mut outcome = Outcome {
        blocks: 0,
        error: None,
    };
    let mut reader = match Reader::new(data, options) {
        Ok(r) => r,
        Err(e) => {
            outcome.error = Some(e.class());
            return outcome;
        }
    };
    for item in reader.by_ref() {
        match item {
            Ok(block) => {
                assert_eq!(block.index, outcome.blocks, "block indices count from 0");
                assert!(block.bit < 8);
                assert!(block.offset < data.len() as u64, "offset inside the file");
                if let Some(bits) = block.bits {
                    assert_eq!(block.data.len() as u64, bits.div_ceil(8));
                }
                outcome.blocks += 1;
            }
            Err(e) => {
                assert!(e.offset().is_none_or(|o| o <= data.len() as u64), "{e}");
                outcome.error = Some(e.class());
                break;
            }
        }
    }
    // A reader that failed stays failed.
    assert!(outcome.error.is_none() || reader.next().is_none());
    for r in reader.regions() {
        assert!(
            r.offset + r.len <= data.len() as u64,
            "region inside the file: {r:?}"
        );
    }
    outcome
}

#[test]
fn malformed_files_give_errors_not_panics() {
    let files = corpus();
    let mut panics = Vec::new();
    let mut errors = 0;
    let mut limits = 0;
    for path in &files {
        let data = std::fs::read(path).expect("readable");
        eprintln!("crashtest: {}", path.display());
        ALLOCATOR
            .set_limit(ALLOCATOR.allocated() + BUDGET)
            .expect("limit above current use");
        // The default limits must keep allocations within the budget too.
        let result = catch_unwind(AssertUnwindSafe(|| {
            read(&data, &Options::default());
            read(&data, &options())
        }));
        ALLOCATOR.set_limit(usize::MAX).expect("no limit");
        match result {
            Ok(outcome) => {
                errors += usize::from(outcome.error.is_some());
                limits += usize::from(outcome.error == Some(ErrorClass::Limit));
                if let Some((_, class)) = HOSTILE.iter().find(|(f, _)| path.ends_with(f)) {
                    assert_eq!(
                        outcome.error,
                        Some(*class),
                        "{}: a file that claims gigabytes must fail, got {outcome:?}",
                        path.display()
                    );
                }
            }
            Err(_) => panics.push(path.display().to_string()),
        }
    }
    assert!(panics.is_empty(), "readers panicked on: {panics:#?}");
    assert!(files.len() >= 100, "the corpus holds {} files", files.len());
    // The corpus must exercise the error paths, not only files that happen to stay valid.
    assert!(
        errors * 2 >= files.len(),
        "{errors} errors in {} files",
        files.len()
    );
    assert!(limits >= 2, "only {limits} files hit a limit");
}
