//! Log-mel filter-bank features in the manner of Kaldi's `compute-fbank-feats`, with the
//! options the Audio Spectrogram Transformer uses (Gong et al. 2021, its data loader calls
//! `torchaudio.compliance.kaldi.fbank(waveform, htk_compat=True, use_energy=False,
//! window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)` on samples in
//! [-1, 1]).
//!
//! Per frame (Kaldi `feature-window.cc`, `ProcessWindow`): subtract the frame's mean, apply
//! pre-emphasis `x[i] -= 0.97·x[i−1]` (`x[0] -= 0.97·x[0]`), multiply by the window, zero-pad to
//! a power of two, take the power spectrum, apply triangular filters equally spaced on the mel
//! scale `1127·ln(1 + f/700)` between 20 Hz and the Nyquist frequency (`mel-computations.cc`),
//! and take `ln(max(energy, ε))` with ε the f32 machine epsilon. Frames are `snip_edges`:
//! `1 + ⌊(samples − window)/shift⌋` frames, none before the first full window.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

use crate::{Error, Result};

/// The analysis window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Window {
    /// `0.5 − 0.5·cos(2πi/(N−1))` (AST's choice).
    Hanning,
    /// The Hanning window to the power 0.85 (Kaldi's default).
    Povey,
    /// `0.54 − 0.46·cos(2πi/(N−1))`.
    Hamming,
    /// All ones.
    Rectangular,
}

/// Filter-bank options; [`FbankConfig::default`] is AST's recipe at 16 kHz.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FbankConfig {
    /// Samples per second of the input.
    pub sample_rate: u32,
    /// Window length in milliseconds (25).
    pub frame_length_ms: f64,
    /// Hop in milliseconds (10).
    pub frame_shift_ms: f64,
    /// Mel bins (128).
    pub num_mel_bins: usize,
    /// Lowest filter edge in Hz (20).
    pub low_freq: f64,
    /// Highest filter edge in Hz; 0 or less counts down from the Nyquist frequency (0).
    pub high_freq: f64,
    /// Pre-emphasis coefficient (0.97).
    pub preemphasis: f32,
    /// Subtract each frame's mean before pre-emphasis (true).
    pub remove_dc_offset: bool,
    /// The window (Hanning).
    pub window: Window,
}

impl Default for FbankConfig {
    fn default() -> Self {
        FbankConfig {
            sample_rate: 16_000,
            frame_length_ms: 25.0,
            frame_shift_ms: 10.0,
            num_mel_bins: 128,
            low_freq: 20.0,
            high_freq: 0.0,
            preemphasis: 0.97,
            remove_dc_offset: true,
            window: Window::Hanning,
        }
    }
}

/// Kaldi's mel scale.
fn mel(hz: f64) -> f64 {
    1127.0 * (1.0 + hz / 700.0).ln()
}

/// One triangular filter: the first FFT bin it covers and its weights from there.
#[derive(Debug, Clone)]
struct Filter {
    first: usize,
    weights: Vec<f32>,
}

/// A filter bank ready to run: window, filters and FFT plan computed once.
#[derive(Clone)]
pub struct Fbank {
    config: FbankConfig,
    frame_length: usize,
    frame_shift: usize,
    padded: usize,
    window: Vec<f32>,
    filters: Vec<Filter>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for Fbank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fbank")
            .field("config", &self.config)
            .field("frame_length", &self.frame_length)
            .field("frame_shift", &self.frame_shift)
            .field("padded", &self.padded)
            .finish()
    }
}

impl Fbank {
    /// Prepares the window, the mel filters and the FFT for `config`.
    pub fn new(config: &FbankConfig) -> Result<Self> {
        let sr = f64::from(config.sample_rate);
        let frame_length = (sr * config.frame_length_ms / 1000.0).round() as usize;
        let frame_shift = (sr * config.frame_shift_ms / 1000.0).round() as usize;
        if frame_length < 2 || frame_shift == 0 || config.num_mel_bins == 0 {
            return Err(Error::setting(
                "fbank",
                "the window needs 2 samples or more, the hop 1 or more, and 1 mel bin or more",
            ));
        }
        let padded = frame_length.next_power_of_two();
        let nyquist = sr / 2.0;
        let high = if config.high_freq > 0.0 {
            config.high_freq
        } else {
            nyquist + config.high_freq
        };
        if !(0.0..nyquist).contains(&config.low_freq) || high <= config.low_freq || high > nyquist {
            return Err(Error::setting(
                "fbank",
                format!(
                    "filters from {} to {high} Hz do not fit below {nyquist} Hz",
                    config.low_freq
                ),
            ));
        }
        let a = 2.0 * std::f64::consts::PI / (frame_length - 1) as f64;
        let window = (0..frame_length)
            .map(|i| {
                let c = (a * i as f64).cos();
                (match config.window {
                    Window::Hanning => 0.5 - 0.5 * c,
                    Window::Povey => (0.5 - 0.5 * c).powf(0.85),
                    Window::Hamming => 0.54 - 0.46 * c,
                    Window::Rectangular => 1.0,
                }) as f32
            })
            .collect();
        // Kaldi `MelBanks`: bins 0..padded/2 (the Nyquist bin is never used), filters with
        // edges equally spaced in mel.
        let bins = padded / 2;
        let bin_hz = sr / padded as f64;
        let (lo, hi) = (mel(config.low_freq), mel(high));
        let delta = (hi - lo) / (config.num_mel_bins + 1) as f64;
        let filters = (0..config.num_mel_bins)
            .map(|b| {
                let left = lo + b as f64 * delta;
                let centre = left + delta;
                let right = centre + delta;
                let mut first = None;
                let mut weights = Vec::new();
                for i in 0..bins {
                    let m = mel(bin_hz * i as f64);
                    if m > left && m < right {
                        let w = if m <= centre {
                            (m - left) / (centre - left)
                        } else {
                            (right - m) / (right - centre)
                        };
                        first.get_or_insert(i);
                        weights.push(w as f32);
                    }
                }
                Filter {
                    first: first.unwrap_or(0),
                    weights,
                }
            })
            .collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(padded);
        Ok(Fbank {
            config: config.clone(),
            frame_length,
            frame_shift,
            padded,
            window,
            filters,
            fft,
        })
    }

    /// The options.
    pub fn config(&self) -> &FbankConfig {
        &self.config
    }

    /// Mel bins per frame.
    pub fn bins(&self) -> usize {
        self.filters.len()
    }

    /// Frames for `samples` input samples (`snip_edges`).
    pub fn num_frames(&self, samples: usize) -> usize {
        if samples < self.frame_length {
            0
        } else {
            1 + (samples - self.frame_length) / self.frame_shift
        }
    }

    /// Log-mel energies of `samples`: `[frames, bins]`, row-major (one frame per row).
    pub fn compute(&self, samples: &[f32]) -> Vec<f32> {
        let frames = self.num_frames(samples.len());
        let bins = self.bins();
        let mut out = Vec::with_capacity(frames * bins);
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0f32; self.padded / 2 + 1];
        let n = self.frame_length;
        for f in 0..frames {
            let start = f * self.frame_shift;
            let frame = &samples[start..start + n];
            input[..n].copy_from_slice(frame);
            input[n..].iter_mut().for_each(|x| *x = 0.0);
            let x = &mut input[..n];
            if self.config.remove_dc_offset {
                let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
                x.iter_mut().for_each(|v| *v -= mean as f32);
            }
            let p = self.config.preemphasis;
            if p != 0.0 {
                for i in (1..n).rev() {
                    x[i] -= p * x[i - 1];
                }
                x[0] -= p * x[0];
            }
            x.iter_mut().zip(&self.window).for_each(|(v, w)| *v *= w);
            // The lengths are the plan's own, so processing cannot fail.
            if self
                .fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .is_err()
            {
                out.extend(std::iter::repeat_n(f32::EPSILON.ln(), bins));
                continue;
            }
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.re * c.re + c.im * c.im;
            }
            for filter in &self.filters {
                let e: f32 = filter
                    .weights
                    .iter()
                    .zip(&power[filter.first..])
                    .map(|(w, p)| w * p)
                    .sum();
                out.push(e.max(f32::EPSILON).ln());
            }
        }
        out
    }
}
