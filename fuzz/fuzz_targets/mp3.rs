#![no_main]
// Fuzzes the mp3 reader directly, whatever the first bytes say.
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(reader) = cff_blocks::mp3::Mp3Reader::new(data, &common::options()) {
        common::check(data, reader);
    }
});
