//! Placeholder: the block-parsing bench lands here.
fn main() {}
