//! The benchmark groups of the facade, one module each, run by `bench_main.rs`. Each module
//! gives its criterion group (a function of its own name) and `IDS`, the start of every
//! benchmark id it registers.

pub mod encode;
pub mod model_step;
pub mod tokenize;
