//! Per-file statistics over blocks, as the `blocks` example prints them.

use crate::{Block, BlockKind, Format, Region};

/// Counts and sizes of one file's blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The file's format.
    pub format: Format,
    /// Blocks of every kind.
    pub blocks: u64,
    /// Audio blocks.
    pub audio_blocks: u64,
    /// Metadata blocks.
    pub metadata_blocks: u64,
    /// MCU blocks.
    pub mcu_blocks: u64,
    /// Bytes of all blocks together (as the tokenizer sees them).
    pub block_bytes: u64,
    /// Bytes of the largest block.
    pub max_block_bytes: u64,
    /// Seconds of audio the audio blocks play.
    pub duration_seconds: f64,
    /// Bytes skipped as garbage (resynchronisation, trailing bytes).
    pub skipped_bytes: u64,
    /// Bytes in known non-block structures (tags, other Ogg streams).
    pub other_bytes: u64,
}

impl Summary {
    /// An empty summary.
    pub fn new(format: Format) -> Self {
        Summary {
            format,
            blocks: 0,
            audio_blocks: 0,
            metadata_blocks: 0,
            mcu_blocks: 0,
            block_bytes: 0,
            max_block_bytes: 0,
            duration_seconds: 0.0,
            skipped_bytes: 0,
            other_bytes: 0,
        }
    }

    /// Counts one block.
    pub fn add_block(&mut self, block: &Block<'_>) {
        self.blocks += 1;
        match block.kind {
            BlockKind::Audio => {
                self.audio_blocks += 1;
                self.duration_seconds += block.place.duration_seconds().unwrap_or(0.0);
            }
            BlockKind::Metadata => self.metadata_blocks += 1,
            BlockKind::Mcu => self.mcu_blocks += 1,
        }
        let len = block.data.len() as u64;
        self.block_bytes += len;
        self.max_block_bytes = self.max_block_bytes.max(len);
    }

    /// Counts the regions a reader reported.
    pub fn add_regions(&mut self, regions: &[Region]) {
        for r in regions {
            if r.kind.is_garbage() {
                self.skipped_bytes += r.len;
            } else {
                self.other_bytes += r.len;
            }
        }
    }

    /// Mean bytes per block, 0 without blocks.
    pub fn mean_block_bytes(&self) -> f64 {
        if self.blocks == 0 {
            0.0
        } else {
            self.block_bytes as f64 / self.blocks as f64
        }
    }

    /// Audio blocks per second of audio (the paper's tokens per second), for audio files.
    pub fn blocks_per_second(&self) -> Option<f64> {
        (self.duration_seconds > 0.0).then(|| self.audio_blocks as f64 / self.duration_seconds)
    }
}
