//! Prints each model preset's parameter count, FLOPs per item and attention sizes against an
//! Audio Spectrogram Transformer's.
//!
//! ```text
//! cargo run --example cost
//! ```

fn main() {
    print!("{}", tempest::tempest_model::cost::table());
}
