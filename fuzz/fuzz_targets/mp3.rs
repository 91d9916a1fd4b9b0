#![no_main]
// Fuzzes the mp3 reader directly, whatever the first bytes say, and the Layer III decoding of
// every frame it finds: side information, the bit reservoir, the entropy decoding of the main
// data. Errors are fine; panics are not.
use cff_blocks::mp3::{decode_granules, MainData, SideInfo};
use cff_blocks::Detail;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(reader) = cff_blocks::mp3::Mp3Reader::new(data, &common::options()) {
        common::check(data, reader);
    }
    if let Ok(reader) = cff_blocks::mp3::Mp3Reader::new(data, &common::options()) {
        let mut reservoir = MainData::new();
        for block in reader {
            let Ok(block) = block else { break };
            if !matches!(block.detail, Detail::Mp3(_)) {
                continue;
            }
            let Ok(side) = SideInfo::parse(&block.data, block.offset) else {
                continue;
            };
            if let Ok(Some(own)) = reservoir.push(&block.data, &side, block.offset) {
                let own = own.to_vec();
                if let Ok(lines) = decode_granules(&side, &own, block.offset) {
                    for g in lines.iter().flatten() {
                        assert!(usize::from(g.coded) <= cff_blocks::mp3::LINES);
                    }
                }
            }
        }
    }
});
