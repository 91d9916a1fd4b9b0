//! Opus packets in Ogg (RFC 7845).
//!
//! Placeholder: the reader lands in this module.

use crate::{Block, Options, Region, Result};

/// Format-specific facts about one block.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PacketInfo {}

/// Reads blocks from a byte slice.
#[derive(Debug)]
pub struct OpusReader<'a> {
    data: &'a [u8],
    regions: Vec<Region>,
}

impl<'a> OpusReader<'a> {
    /// Opens a reader over a whole file held in memory.
    pub fn new(data: &'a [u8], _options: &Options) -> Result<Self> {
        Ok(OpusReader {
            data,
            regions: Vec::new(),
        })
    }

    /// Ranges of the input seen so far that are not part of any block.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }
}

impl<'a> Iterator for OpusReader<'a> {
    type Item = Result<Block<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let _ = self.data;
        None
    }
}
