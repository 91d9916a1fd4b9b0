//! Classification metrics: accuracy, top-5, per-class accuracy, confusion matrix, loss.

use serde::{Deserialize, Serialize};

/// Item-weighted sums over the batches of one epoch, from which its means are taken. Saved in
/// `train_state.json` as the array `[loss, classification, reconstruction, correct, items]`,
/// the form earlier checkpoints have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "[f64; 5]", into = "[f64; 5]")]
pub struct EpochSums {
    /// Σ loss × items.
    pub loss: f64,
    /// Σ classification loss (L_c) × items.
    pub classification: f64,
    /// Σ reconstruction loss (L_r) × items.
    pub reconstruction: f64,
    /// Items classified correctly.
    pub correct: f64,
    /// Items.
    pub items: f64,
}

impl EpochSums {
    /// One batch's contributions: its mean losses times its items, its correct items, its
    /// items.
    pub fn of(g: &tempest_model::BatchGradients) -> Self {
        let n = g.items as f64;
        EpochSums {
            loss: g.loss * n,
            classification: g.classification * n,
            reconstruction: g.reconstruction * n,
            correct: g.correct as f64,
            items: n,
        }
    }

    /// Adds another batch's sums.
    pub fn add(&mut self, other: &EpochSums) {
        self.loss += other.loss;
        self.classification += other.classification;
        self.reconstruction += other.reconstruction;
        self.correct += other.correct;
        self.items += other.items;
    }

    /// Mean loss per item (0 before any item).
    pub fn mean_loss(&self) -> f64 {
        self.loss / self.items.max(1.0)
    }

    /// Mean classification loss per item.
    pub fn mean_classification(&self) -> f64 {
        self.classification / self.items.max(1.0)
    }

    /// Mean reconstruction loss per item.
    pub fn mean_reconstruction(&self) -> f64 {
        self.reconstruction / self.items.max(1.0)
    }

    /// Fraction of items classified correctly.
    pub fn accuracy(&self) -> f64 {
        self.correct / self.items.max(1.0)
    }
}

impl From<[f64; 5]> for EpochSums {
    fn from(a: [f64; 5]) -> Self {
        EpochSums {
            loss: a[0],
            classification: a[1],
            reconstruction: a[2],
            correct: a[3],
            items: a[4],
        }
    }
}

impl From<EpochSums> for [f64; 5] {
    fn from(s: EpochSums) -> Self {
        [
            s.loss,
            s.classification,
            s.reconstruction,
            s.correct,
            s.items,
        ]
    }
}

/// Running counts over a split, fed one batch of logits at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    classes: usize,
    /// `confusion[true][predicted]`.
    confusion: Vec<Vec<u64>>,
    top5: u64,
    loss_sum: f64,
    items: u64,
}

impl Tally {
    /// Empty counts for `classes` classes.
    pub fn new(classes: usize) -> Self {
        Tally {
            classes,
            confusion: vec![vec![0; classes]; classes],
            top5: 0,
            loss_sum: 0.0,
            items: 0,
        }
    }

    /// Adds one item: its true class and its logits (one per class). The loss is plain
    /// cross-entropy (no label smoothing), computed in f64 from the logits.
    pub fn add(&mut self, label: usize, logits: &[f32]) {
        if label >= self.classes || logits.len() != self.classes {
            return;
        }
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        self.confusion[label][best] += 1;
        let mine = logits[label];
        let above = logits.iter().filter(|&&x| x > mine).count();
        if above < 5 {
            self.top5 += 1;
        }
        let max = logits[best] as f64;
        let lse = max
            + logits
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        self.loss_sum += lse - mine as f64;
        self.items += 1;
    }

    /// Items counted.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// The metrics of what was counted.
    pub fn metrics(&self) -> Metrics {
        let n = self.items.max(1) as f64;
        let correct: u64 = (0..self.classes).map(|c| self.confusion[c][c]).sum();
        let per_class = self
            .confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let total: u64 = row.iter().sum();
                (total > 0).then(|| row[c] as f64 / total as f64)
            })
            .collect();
        Metrics {
            items: self.items,
            accuracy: correct as f64 / n,
            top5: (self.classes > 5).then(|| self.top5 as f64 / n),
            loss: self.loss_sum / n,
            per_class,
            confusion: self.confusion.clone(),
        }
    }
}

/// What an evaluation measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Items evaluated.
    pub items: u64,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Top-5 accuracy, where there are more than 5 classes.
    pub top5: Option<f64>,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Accuracy of each class (`None` for a class without items).
    pub per_class: Vec<Option<f64>>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

/// Mean and (population) standard deviation.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_hand() {
        let mut t = Tally::new(6);
        t.add(0, &[5.0, 1.0, 0.0, 0.0, 0.0, 0.0]); // right
        t.add(1, &[5.0, 1.0, 0.0, 0.0, 0.0, 0.0]); // wrong, 2nd: in the top 5
        t.add(2, &[0.0, 1.0, -9.0, 2.0, 3.0, 4.0]); // wrong, last: not in the top 5
        t.add(9, &[0.0; 6]); // unknown class: ignored
        let m = t.metrics();
        assert_eq!(m.items, 3);
        assert!((m.accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.top5, Some(2.0 / 3.0));
        assert_eq!(m.confusion[1][0], 1);
        assert_eq!(m.confusion[2][5], 1);
        assert_eq!(m.per_class[0], Some(1.0));
        assert_eq!(m.per_class[1], Some(0.0));
        assert_eq!(m.per_class[3], None);
        // Cross-entropy of the first item: log(e^5 + e^1 + 4) − 5.
        let l0 = (5f64.exp() + 1f64.exp() + 4.0).ln() - 5.0;
        let l1 = (5f64.exp() + 1f64.exp() + 4.0).ln() - 1.0;
        let l2 =
            (1.0f64 + 1f64.exp() + (-9f64).exp() + 2f64.exp() + 3f64.exp() + 4f64.exp()).ln() + 9.0;
        assert!((m.loss - (l0 + l1 + l2) / 3.0).abs() < 1e-9);
        assert_eq!(Tally::new(3).metrics().top5, None);
    }

    #[test]
    fn mean_and_std() {
        let (m, s) = mean_std(&[0.5, 0.7]);
        assert!((m - 0.6).abs() < 1e-12 && (s - 0.1).abs() < 1e-12);
    }
}
