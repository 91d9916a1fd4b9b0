#!/usr/bin/env bash
# The project's test command: formatting, lints, every test of the workspace, and a build of
# the fuzz targets. `.ci/run` runs exactly this on a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."
# candle and criterion use rayon; on a small shared machine more threads only spin.
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"

# Optional features that CI builds and tests too: LAME and libopus encoders (cff-encode), the
# SIMD Ogg CRC (cff-blocks). `.ci/run` installs what they need (cmake).
features="mp3,opus,cff-blocks/simd-crc"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --workspace --all-targets --features "$features" -- -D warnings
cargo test --workspace --features "$features"
# cff-blocks without its default `simd-crc`: the readers on the table CRC alone.
cargo test -p cff-blocks --no-default-features
# The fuzz targets live outside the workspace (cargo-fuzz builds them with its own flags);
# a plain build keeps them compiling. Run them with `cargo fuzz run <target>`.
cargo build --manifest-path fuzz/Cargo.toml
