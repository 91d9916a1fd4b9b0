#![no_main]
// Fuzzes format detection and the reader it picks, as `cff_blocks::read_all` users meet it.
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(reader) = cff_blocks::Reader::new(data, &common::options()) {
        common::check(data, reader);
    }
});
