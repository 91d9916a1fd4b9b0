//! Dataset preparation.
