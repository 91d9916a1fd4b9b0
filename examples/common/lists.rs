//! The comma-separated values of the examples' flags (`--qualities 75,50`, `--folds 1,2`,
//! `--seconds 1,10`).

use std::fmt::Display;

/// Each comma-separated item of `s`, trimmed, read by `one`; an error names the item.
pub fn comma_list<T, E: Display>(
    s: &str,
    one: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, String> {
    s.split(',')
        .map(|v| {
            let v = v.trim();
            one(v).map_err(|e| format!("{v}: {e}"))
        })
        .collect()
}
