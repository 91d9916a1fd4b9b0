//! PNG plots of a run: the learning curves and the confusion matrix.
//!
//! [`write_run_plots`] reads a run's `metrics.jsonl` (so a resumed run plots all its epochs)
//! and writes `curves.png` (loss and accuracy per epoch, training and evaluation) and
//! `confusion.png` (the test's confusion matrix, or the last evaluation's before the test).
//! [`train()`](crate::train()) calls it after every epoch and after the test.
//!
//! Drawing is plotters' bitmap backend with pure-Rust text (ab_glyph) in the Hack typeface
//! that the `epaint_default_fonts` crate embeds, so no system font or library is needed; the
//! pixels are encoded with the `png` crate.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;
use serde_json::Value;

use crate::error::{Error, Result};

/// The font family name under which the embedded face is registered with plotters.
const FAMILY: &str = "sans-serif";

/// Colours of the series: training in orange, evaluation in blue.
const TRAIN: RGBColor = RGBColor(230, 120, 20);
const EVAL: RGBColor = RGBColor(30, 90, 200);

/// One epoch of a run, as plotted.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochPoint {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Mean training loss (L_c + λ·L_r) over the epoch.
    pub train_loss: f64,
    /// Training accuracy over the epoch.
    pub train_accuracy: f64,
    /// Evaluation loss (mean over the evaluated variants), if recorded.
    pub eval_loss: Option<f64>,
    /// Evaluation accuracy (`None`: the epoch was not evaluated, `TrainOptions::eval_every`).
    pub eval_accuracy: Option<f64>,
}

fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(
            FAMILY,
            FontStyle::Normal,
            epaint_default_fonts::HACK_REGULAR,
        )
        .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Plot("the embedded font could not be read".into()))
    }
}

fn plot_err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> Error + '_ {
    move |e| Error::Plot(format!("{}: {e}", path.display()))
}

/// Encodes an RGB buffer as PNG, written to a temporary file and renamed into place.
fn write_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<()> {
    let tmp = path.with_extension("png.tmp");
    {
        let file = File::create(&tmp).map_err(Error::io(&tmp))?;
        let mut enc = png::Encoder::new(BufWriter::new(file), width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(plot_err(&tmp))?;
        w.write_image_data(rgb).map_err(plot_err(&tmp))?;
        w.finish().map_err(plot_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(Error::io(path))
}

/// Draws the learning curves: loss on the left, accuracy on the right, one point per epoch.
pub fn plot_curves(points: &[EpochPoint], path: &Path) -> Result<()> {
    register_font()?;
    let (w, h) = (960u32, 420u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(path))?;
        let (left, right) = root.split_horizontally(w / 2);
        let losses = points
            .iter()
            .flat_map(|p| std::iter::once(p.train_loss).chain(p.eval_loss))
            .filter(|v| v.is_finite());
        let max_loss = losses.fold(0.0f64, f64::max).max(1e-3) * 1.05;

        let series = |f: fn(&EpochPoint) -> Option<f64>| -> Vec<(f64, f64)> {
            points
                .iter()
                .filter_map(|p| f(p).map(|v| (p.epoch as f64, v)))
                .collect()
        };
        panel(
            &left,
            "loss",
            max_loss,
            &series(|p| Some(p.train_loss)),
            &series(|p| p.eval_loss),
            SeriesLabelPosition::UpperRight,
            path,
        )?;
        panel(
            &right,
            "accuracy",
            1.0,
            &series(|p| Some(p.train_accuracy)),
            &series(|p| p.eval_accuracy),
            SeriesLabelPosition::LowerRight,
            path,
        )?;
        root.present().map_err(plot_err(path))?;
    }
    write_png(path, &buf, w, h)
}

/// One panel (the legend in a corner the curves rarely reach: loss falls, accuracy rises):
/// epochs 1..=`last` against 0..`y_max`, training and evaluation series, a legend.
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    y_max: f64,
    train: &[(f64, f64)],
    eval: &[(f64, f64)],
    legend_at: SeriesLabelPosition,
    path: &Path,
) -> Result<()> {
    // At least two epochs wide, so that a single point is not a zero-width range.
    let last = train.iter().chain(eval).map(|p| p.0).fold(2.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(1f64..last, 0f64..y_max)
        .map_err(plot_err(path))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .label_style((FAMILY, 13))
        .draw()
        .map_err(plot_err(path))?;
    draw_series(&mut chart, train, TRAIN, "training", path)?;
    draw_series(&mut chart, eval, EVAL, "evaluation", path)?;
    legend(&mut chart, legend_at, path)
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn draw_series(
    chart: &mut Chart<'_, '_>,
    data: &[(f64, f64)],
    colour: RGBColor,
    label: &str,
    path: &Path,
) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    chart
        .draw_series(LineSeries::new(
            data.iter().copied(),
            colour.stroke_width(2),
        ))
        .map_err(plot_err(path))?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
    chart
        .draw_series(data.iter().map(|&p| Circle::new(p, 3, colour.filled())))
        .map_err(plot_err(path))?;
    Ok(())
}

fn legend<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    at: SeriesLabelPosition,
    path: &Path,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(at)
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err(path))
}

/// Draws a confusion matrix (rows: true class, columns: predicted), each cell shaded by its
/// share of the row, with counts written in the cells when there are at most 20 classes.
pub fn plot_confusion(confusion: &[Vec<u64>], classes: &[String], path: &Path) -> Result<()> {
    register_font()?;
    let n = confusion.len();
    if n == 0 || confusion.iter().any(|r| r.len() != n) {
        return Err(Error::Plot(format!(
            "{}: the confusion matrix is not square ({n} rows)",
            path.display()
        )));
    }
    let cell = (640 / n as u32).clamp(8, 64);
    let label_w = 120u32;
    let (w, h) = (
        (label_w + cell * n as u32 + 30).max(600),
        60 + cell * n as u32 + 40,
    );
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(path))?;
        let total: u64 = confusion.iter().flatten().sum();
        let correct: u64 = (0..n).map(|i| confusion[i][i]).sum();
        let title =
            format!("confusion: {correct} of {total} correct (rows true, columns predicted)");
        root.draw(&Text::new(title, (10, 12), (FAMILY, 16)))
            .map_err(plot_err(path))?;
        let text_size = (cell as f64 * 0.45).clamp(8.0, 14.0);
        for (i, row) in confusion.iter().enumerate() {
            let row_total = row.iter().sum::<u64>().max(1) as f64;
            let y = 50 + cell as i32 * i as i32;
            let name: String = classes
                .get(i)
                .map(|s| s.chars().take(14).collect())
                .unwrap_or_else(|| i.to_string());
            if cell >= 10 {
                root.draw(&Text::new(
                    name,
                    (6, y + cell as i32 / 2 - text_size as i32 / 2),
                    (FAMILY, text_size),
                ))
                .map_err(plot_err(path))?;
            }
            for (j, &count) in row.iter().enumerate() {
                let share = count as f64 / row_total;
                let x = label_w as i32 + cell as i32 * j as i32;
                // White (nothing) to dark blue (the whole row).
                let shade = |full: f64, empty: f64| (empty + (full - empty) * share) as u8;
                let colour = RGBColor(shade(20.0, 255.0), shade(60.0, 255.0), shade(150.0, 255.0));
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell as i32, y + cell as i32)],
                    colour.filled(),
                ))
                .map_err(plot_err(path))?;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell as i32, y + cell as i32)],
                    RGBColor(200, 200, 200),
                ))
                .map_err(plot_err(path))?;
                if n <= 20 && count > 0 {
                    let ink = if share > 0.5 { WHITE } else { BLACK };
                    root.draw(&Text::new(
                        count.to_string(),
                        (x + 3, y + cell as i32 / 2 - text_size as i32 / 2),
                        (FAMILY, text_size).into_font().color(&ink),
                    ))
                    .map_err(plot_err(path))?;
                }
            }
        }
        root.present().map_err(plot_err(path))?;
    }
    write_png(path, &buf, w, h)
}

/// What a run's `metrics.jsonl` holds for plotting.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunMetrics {
    /// The epochs in order (the last line wins where a resumed run repeated an epoch).
    pub epochs: Vec<EpochPoint>,
    /// The confusion matrix of the test, or of the last evaluation when no test line exists
    /// yet (its first variant's).
    pub confusion: Option<Vec<Vec<u64>>>,
}

/// Reads a run's `metrics.jsonl` for plotting.
pub fn read_metrics(path: &Path) -> Result<RunMetrics> {
    let file = File::open(path).map_err(Error::io(path))?;
    let mut points: Vec<EpochPoint> = Vec::new();
    let mut eval_confusion = None;
    let mut test_confusion = None;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(Error::io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| Error::Dataset {
            path: path.to_path_buf(),
            what: format!("line {}: {e}", n + 1),
        })?;
        if let Some(test) = v.get("test") {
            test_confusion = first_confusion(test);
            continue;
        }
        // A pretraining run's lines have "pretrain" (the masked blocks' loss and the share of
        // their ids predicted right, and no "eval") where training has "train".
        let stats = v
            .get("train")
            .map(|t| (t, "accuracy"))
            .or_else(|| v.get("pretrain").map(|p| (p, "id_accuracy")));
        let (Some(epoch), Some((train, accuracy))) = (v["epoch"].as_u64(), stats) else {
            continue;
        };
        // Epochs without an evaluation (`TrainOptions::eval_every`) have no "eval".
        let eval = v.get("eval").unwrap_or(&Value::Null);
        let losses: Vec<f64> = eval["variants"]
            .as_array()
            .map(|vs| {
                vs.iter()
                    .filter_map(|m| m["metrics"]["loss"].as_f64())
                    .collect()
            })
            .unwrap_or_default();
        let point = EpochPoint {
            epoch: epoch as usize,
            train_loss: train["loss"].as_f64().unwrap_or(f64::NAN),
            train_accuracy: train[accuracy].as_f64().unwrap_or(f64::NAN),
            eval_loss: (!losses.is_empty())
                .then(|| losses.iter().sum::<f64>() / losses.len() as f64),
            eval_accuracy: eval["accuracy"].as_f64(),
        };
        points.retain(|p| p.epoch != point.epoch);
        points.push(point);
        if let Some(c) = first_confusion(eval) {
            eval_confusion = Some(c);
        }
    }
    points.sort_by_key(|p| p.epoch);
    Ok(RunMetrics {
        epochs: points,
        confusion: test_confusion.or(eval_confusion),
    })
}

fn first_confusion(eval: &Value) -> Option<Vec<Vec<u64>>> {
    let m = eval["variants"].as_array()?.first()?["metrics"]["confusion"].as_array()?;
    m.iter()
        .map(|row| {
            row.as_array()?
                .iter()
                .map(Value::as_u64)
                .collect::<Option<Vec<u64>>>()
        })
        .collect()
}

/// Writes `curves.png` and `confusion.png` into `run_dir` from its `metrics.jsonl`; returns
/// the files written (none when the run has no epoch yet).
pub fn write_run_plots(run_dir: &Path, classes: &[String]) -> Result<Vec<PathBuf>> {
    let RunMetrics {
        epochs: points,
        confusion,
    } = read_metrics(&run_dir.join("metrics.jsonl"))?;
    let mut written = Vec::new();
    if !points.is_empty() {
        let p = run_dir.join("curves.png");
        plot_curves(&points, &p)?;
        written.push(p);
    }
    if let Some(c) = confusion {
        let p = run_dir.join("confusion.png");
        plot_confusion(&c, classes, &p)?;
        written.push(p);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let dec = png::Decoder::new(BufReader::new(File::open(path).unwrap()));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn pixel(img: &(u32, u32, Vec<u8>), x: u32, y: u32) -> [u8; 3] {
        let i = ((y * img.0 + x) * 3) as usize;
        [img.2[i], img.2[i + 1], img.2[i + 2]]
    }

    #[test]
    fn rising_accuracy_is_drawn_rising() {
        let dir = std::env::temp_dir().join(format!("tempest-plot-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let points: Vec<EpochPoint> = (1..=6)
            .map(|e| EpochPoint {
                epoch: e,
                train_loss: 2.0 / e as f64,
                train_accuracy: 0.1 + 0.12 * e as f64,
                eval_loss: Some(2.2 / e as f64),
                eval_accuracy: Some(0.1 + 0.14 * e as f64),
            })
            .collect();
        let path = dir.join("curves.png");
        plot_curves(&points, &path).unwrap();
        let img = decode(&path);
        assert_eq!((img.0, img.1), (960, 420));
        // The evaluation series (blue) in the accuracy panel: its pixels on the left of the
        // panel lie lower in the image (larger y) than those on the right.
        let mut left = Vec::new();
        let mut right = Vec::new();
        for y in 0..img.1 {
            for x in 480..img.0 {
                if pixel(&img, x, y) == [EVAL.0, EVAL.1, EVAL.2] {
                    if x < 640 {
                        left.push(y)
                    } else if x > 800 {
                        right.push(y)
                    }
                }
            }
        }
        assert!(
            left.len() > 20 && right.len() > 20,
            "{} {}",
            left.len(),
            right.len()
        );
        let mean = |v: &[u32]| v.iter().map(|&y| y as f64).sum::<f64>() / v.len() as f64;
        assert!(mean(&left) > mean(&right) + 40.0);
        // Text was rendered: dark pixels in the caption band above the plot.
        let dark = (0..img.0)
            .flat_map(|x| (0..30).map(move |y| (x, y)))
            .filter(|&(x, y)| pixel(&img, x, y).iter().all(|&c| c < 100))
            .count();
        assert!(dark > 10, "no caption text drawn");
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn confusion_shades_follow_counts() {
        let dir = std::env::temp_dir().join(format!("tempest-confusion-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let m = vec![vec![90, 10, 0], vec![0, 50, 50], vec![5, 0, 95]];
        let classes: Vec<String> = ["cat", "dog", "bird"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let path = dir.join("confusion.png");
        plot_confusion(&m, &classes, &path).unwrap();
        let img = decode(&path);
        let cell = 64;
        // A cell's colour away from its written count: the lower right corner.
        let at = |i: u32, j: u32| pixel(&img, 120 + cell * j + cell - 5, 50 + cell * i + cell - 5);
        let lum = |p: [u8; 3]| p.iter().map(|&c| c as u32).sum::<u32>();
        assert_eq!(at(0, 2), [255, 255, 255]); // zero count: white
        assert!(lum(at(0, 0)) < lum(at(1, 1))); // 90 % darker than 50 %
        assert_eq!(at(1, 1), at(1, 2)); // equal shares, equal shade
        assert!(lum(at(1, 1)) < lum(at(0, 1))); // 50 % darker than 10 %
        assert!(plot_confusion(&[vec![1, 2]], &classes, &path).is_err());
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn metrics_lines_resume_and_test() {
        let dir = std::env::temp_dir().join(format!("tempest-metrics-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let eval = |acc: f64, c: u64| {
            serde_json::json!({"accuracy": acc, "variants": [{"variant": "q75",
                "metrics": {"loss": 1.5, "confusion": [[c, 1], [0, 3]]}}]})
        };
        let lines = [
            serde_json::json!({"epoch": 1, "train": {"loss": 2.0, "accuracy": 0.3}, "eval": eval(0.4, 1)}),
            serde_json::json!({"epoch": 2, "train": {"loss": 1.0, "accuracy": 0.5}, "eval": eval(0.5, 2)}),
            // A resumed run repeats epoch 2: the later line wins.
            serde_json::json!({"epoch": 2, "train": {"loss": 0.9, "accuracy": 0.6}, "eval": eval(0.6, 4)}),
            // An epoch without evaluation (`eval_every`): its training figures only.
            serde_json::json!({"epoch": 3, "train": {"loss": 0.8, "accuracy": 0.7}}),
        ];
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        fs::write(dir.join("metrics.jsonl"), &text).unwrap();
        let RunMetrics {
            epochs: points,
            confusion,
        } = read_metrics(&dir.join("metrics.jsonl")).unwrap();
        assert_eq!(points.len(), 3);
        assert_eq!(points[1].train_loss, 0.9);
        assert_eq!(points[1].eval_loss, Some(1.5));
        assert_eq!(points[1].eval_accuracy, Some(0.6));
        assert_eq!(
            (
                points[2].train_accuracy,
                points[2].eval_loss,
                points[2].eval_accuracy
            ),
            (0.7, None, None)
        );
        // The last evaluation's confusion stands when later epochs had none.
        assert_eq!(confusion, Some(vec![vec![4, 1], vec![0, 3]]));
        let test = serde_json::json!({"test_split": ["test"], "test": eval(0.7, 9)});
        fs::write(dir.join("metrics.jsonl"), format!("{text}{test}\n")).unwrap();
        let written = write_run_plots(&dir, &["a".into(), "b".into()]).unwrap();
        assert_eq!(written.len(), 2);
        let confusion = read_metrics(&dir.join("metrics.jsonl")).unwrap().confusion;
        assert_eq!(confusion, Some(vec![vec![9, 1], vec![0, 3]]));
        fs::write(dir.join("metrics.jsonl"), "{not json\n").unwrap();
        assert!(read_metrics(&dir.join("metrics.jsonl")).is_err());
        fs::remove_dir_all(&dir).ok();
    }
}
