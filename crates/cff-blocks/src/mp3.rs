//! MP3 frames (MPEG-1/2/2.5 Layer III).
//!
//! Placeholder: the reader lands in this module.

use crate::{Block, Options, Region, Result};

/// Format-specific facts about one block.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FrameInfo {}

/// Reads blocks from a byte slice.
#[derive(Debug)]
pub struct Mp3Reader<'a> {
    data: &'a [u8],
    regions: Vec<Region>,
}

impl<'a> Mp3Reader<'a> {
    /// Opens a reader over a whole file held in memory.
    pub fn new(data: &'a [u8], _options: &Options) -> Result<Self> {
        Ok(Mp3Reader {
            data,
            regions: Vec::new(),
        })
    }

    /// Ranges of the input seen so far that are not part of any block.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }
}

impl<'a> Iterator for Mp3Reader<'a> {
    type Item = Result<Block<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let _ = self.data;
        None
    }
}
