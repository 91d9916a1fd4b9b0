//! Ogg pages (RFC 3533) and their CRC-32.
//!
//! Placeholder: the page walker lands in this module.
