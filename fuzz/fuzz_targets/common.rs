// Shared by the fuzz targets: read every block of `data` with tight limits and check the
// invariants that hold for any input, valid or not.
use cff_blocks::{Block, Limits, Options, Result};

pub fn options() -> Options {
    Options::default().with_limits(
        Limits::default()
            .with_max_blocks(100_000)
            .with_max_block_bytes(1 << 16)
            .with_max_pixels(1 << 22),
    )
}

#[allow(dead_code)] // not every target walks blocks itself
pub fn check<'a>(data: &'a [u8], blocks: impl Iterator<Item = Result<Block<'a>>>) {
    let mut last_index = None;
    for item in blocks {
        let Ok(block) = item else { break };
        // Indices count up from 0 without gaps.
        assert_eq!(block.index, last_index.map_or(0, |i: u64| i + 1));
        last_index = Some(block.index);
        assert!(block.bit < 8);
        assert!(block.offset <= data.len() as u64);
        if let Some(bits) = block.bits {
            assert_eq!(block.data.len() as u64, bits.div_ceil(8));
        }
    }
}
