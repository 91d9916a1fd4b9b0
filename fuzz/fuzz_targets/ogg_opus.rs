#![no_main]
// Fuzzes the ogg_opus reader directly, whatever the first bytes say, and checks that
// `for_each_block` gives exactly the iterator's blocks and error.
use cff_blocks::opus::OpusReader;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let options = common::options();
    let Ok(reader) = OpusReader::new(data, &options) else {
        return;
    };
    common::check(data, reader);

    let mut by_iterator = Vec::new();
    let mut iterator_error = None;
    if let Ok(reader) = OpusReader::new(data, &options) {
        for item in reader {
            match item {
                Ok(b) => by_iterator.push((b.index, b.offset, b.data.to_vec(), b.kind, b.place)),
                Err(e) => {
                    iterator_error = Some(e.to_string());
                    break;
                }
            }
        }
    }
    let mut by_visitor = Vec::new();
    if let Ok(mut reader) = OpusReader::new(data, &options) {
        let result = reader.for_each_block(|r| {
            by_visitor.push((r.index, r.offset, r.data.to_vec(), r.kind, r.place()))
        });
        assert_eq!(result.err().map(|e| e.to_string()), iterator_error);
    }
    assert_eq!(by_visitor, by_iterator);
});
