#![no_main]
// Fuzzes the ogg_opus reader directly, whatever the first bytes say.
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(reader) = cff_blocks::opus::OpusReader::new(data, &common::options()) {
        common::check(data, reader);
    }
});
