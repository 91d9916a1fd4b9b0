//! The benchmark groups of cff-blocks, one module each, run by `bench_main.rs`.

pub mod parsing;
