//! What a run leaves: its [`RunReport`], the lines of `metrics.jsonl` a resumed run keeps, and
//! the plots redrawn after each epoch.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::json;
use tempest_model::DeviceChoice;
use tempest_tokenize::LoaderStats;

use crate::evaluate::EvalReport;
use crate::{Error, Result};

/// How a training run ended.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Stopped early (Ctrl-C or `stop_after_steps`) after saving; `--resume` continues it.
    pub interrupted: bool,
    /// Epochs completed.
    pub epochs: usize,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Best selection accuracy and its epoch (validation, or test when there is none).
    pub best: Option<(f64, usize)>,
    /// The final test (absent when interrupted).
    pub test: Option<EvalReport>,
    /// Training files read and skipped, over all epochs of this process.
    pub train_stats: LoaderStats,
    /// Evaluation files read and skipped, over all evaluations of this process.
    pub eval_stats: LoaderStats,
    /// Every skipped file: path → reason.
    pub skipped: BTreeMap<String, String>,
    /// Training seconds, including those before a resume.
    pub elapsed_s: f64,
    /// Items trained on in this process (all epochs, a partial one included).
    pub train_items: u64,
    /// Seconds those items took (forward, backward, optimiser; evaluation excluded).
    pub train_seconds: f64,
    /// The device the run trained on.
    pub device: DeviceChoice,
}

impl RunReport {
    /// Training items per second in this process.
    pub fn train_items_per_s(&self) -> f64 {
        self.train_items as f64 / self.train_seconds.max(1e-9)
    }

    /// One line: steps, items, seconds and items/s of the training in this process, and the
    /// device.
    pub fn speed_summary(&self) -> String {
        format!(
            "trained {} steps on {}: {} items in {:.1} s, {:.1} items/s\n",
            self.steps,
            self.device,
            self.train_items,
            self.train_seconds,
            self.train_items_per_s()
        )
    }

    /// Lines saying how many files were used and skipped, and why.
    pub fn files_summary(&self) -> String {
        let mut s = String::new();
        let line = |name: &str, st: &LoaderStats| {
            let reasons: Vec<String> = st.skipped.iter().map(|(r, n)| format!("{r} {n}")).collect();
            format!(
                "{name}: {} file reads used, {} skipped{}{}\n",
                st.files_used,
                st.files_skipped(),
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", reasons.join(", "))
                },
                if st.truncated_blocks == 0 {
                    String::new()
                } else {
                    format!("; {} blocks cut to L", st.truncated_blocks)
                }
            )
        };
        s.push_str(&line("training", &self.train_stats));
        s.push_str(&line("evaluation", &self.eval_stats));
        for (path, why) in self.skipped.iter().take(20) {
            s.push_str(&format!("  skipped {path}: {why}\n"));
        }
        if self.skipped.len() > 20 {
            s.push_str(&format!("  … and {} more\n", self.skipped.len() - 20));
        }
        s
    }
}

/// Keeps the lines of `metrics.jsonl` that a resumed run stands on: those of the first
/// `epochs` epochs. A run stopped after writing an epoch's line but before saving its
/// resumable checkpoint (a kill between the two) redoes that epoch; without this its line
/// would appear twice. Lines of later epochs and a final test line go; a line that is not
/// JSON is an error naming the file and line.
pub(crate) fn trim_metrics(path: &Path, epochs: usize) -> Result<()> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path)(e)),
    };
    let mut kept = String::with_capacity(text.len());
    let mut dropped = 0;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::dataset(path, format!("line {}: {e}", n + 1)))?;
        let keep = v
            .get("epoch")
            .and_then(serde_json::Value::as_u64)
            .is_some_and(|e| e as usize <= epochs);
        if keep {
            kept.push_str(line);
            kept.push('\n');
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        let tmp = path.with_extension("jsonl.tmp");
        fs::write(&tmp, kept).map_err(Error::io(&tmp))?;
        fs::rename(&tmp, path).map_err(Error::io(path))?;
    }
    Ok(())
}

/// Redraws the run's plots; a plot that cannot be drawn is reported and the run goes on (the
/// metrics themselves are already in `metrics.jsonl`).
#[cfg(feature = "plots")]
pub(crate) fn plot(run_dir: &Path, classes: &[String]) {
    if let Err(e) = crate::plots::write_run_plots(run_dir, classes) {
        eprintln!("warning: plots not written: {e}");
    }
}

/// Without the `plots` feature a run writes its metrics only.
#[cfg(not(feature = "plots"))]
pub(crate) fn plot(_run_dir: &Path, _classes: &[String]) {}

pub(crate) fn loader_skips(stats: &LoaderStats) -> serde_json::Value {
    json!(stats.skipped)
}
