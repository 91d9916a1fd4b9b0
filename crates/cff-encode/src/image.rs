//! Image input: 8-bit grayscale or RGB pixels from PNG files and IDX arrays (MNIST).

use std::io::{Cursor, Read};

use tempest_tokenize::rng::{SplitMix64, GOLDEN_GAMMA};

use crate::{Error, Result};

/// Colour model of an [`Image`]'s pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelKind {
    /// One 8-bit luma sample per pixel.
    Gray,
    /// Three 8-bit samples per pixel: red, green, blue.
    Rgb,
}

impl PixelKind {
    /// Samples per pixel.
    pub fn channels(self) -> usize {
        match self {
            PixelKind::Gray => 1,
            PixelKind::Rgb => 3,
        }
    }
}

/// An 8-bit image, rows top to bottom, samples interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Gray or RGB.
    pub kind: PixelKind,
    /// `width · height · kind.channels()` samples.
    pub pixels: Vec<u8>,
}

impl Image {
    /// Wraps pixels, checking that their count matches the size.
    pub fn new(width: u32, height: u32, kind: PixelKind, pixels: Vec<u8>) -> Result<Image> {
        let want = u64::from(width) * u64::from(height) * kind.channels() as u64;
        if pixels.len() as u64 != want {
            return Err(Error::setting(
                "image",
                format!(
                    "{width}x{height} {kind:?} needs {want} samples, got {}",
                    pixels.len()
                ),
            ));
        }
        Ok(Image {
            width,
            height,
            kind,
            pixels,
        })
    }
}

/// Decodes a PNG to 8-bit gray or RGB: palettes are expanded, 16-bit samples cut to their
/// high byte, and alpha dropped (the pixels are kept as stored, not composited).
pub fn read_png(data: &[u8], max_pixels: u64) -> Result<Image> {
    let png_err = |e: png::DecodingError| match e {
        png::DecodingError::LimitsExceeded => Error::Limit {
            what: "png decoding memory",
            limit: max_pixels.saturating_mul(4),
            found: 0,
        },
        other => Error::malformed("png", 0, other.to_string()),
    };
    let limits = png::Limits {
        bytes: usize::try_from(max_pixels.saturating_mul(8)).unwrap_or(usize::MAX),
    };
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(data), limits);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(png_err)?;
    let (width, height) = {
        let info = reader.info();
        (info.width, info.height)
    };
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(Error::Limit {
            what: "pixels per image",
            limit: max_pixels,
            found: pixels,
        });
    }
    let size = reader.output_buffer_size().ok_or(Error::Limit {
        what: "png output buffer",
        limit: usize::MAX as u64,
        found: u64::MAX,
    })?;
    let mut buf = vec![0u8; size];
    let out = reader.next_frame(&mut buf).map_err(png_err)?;
    buf.truncate(out.buffer_size());
    if out.bit_depth != png::BitDepth::Eight {
        return Err(Error::Unsupported {
            format: "png",
            what: format!("{:?} samples after expansion", out.bit_depth),
        });
    }
    let (kind, pixels) = match out.color_type {
        png::ColorType::Grayscale => (PixelKind::Gray, buf),
        png::ColorType::Rgb => (PixelKind::Rgb, buf),
        png::ColorType::GrayscaleAlpha => {
            (PixelKind::Gray, buf.chunks_exact(2).map(|p| p[0]).collect())
        }
        png::ColorType::Rgba => (
            PixelKind::Rgb,
            buf.chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        ),
        png::ColorType::Indexed => {
            return Err(Error::Unsupported {
                format: "png",
                what: "palette not expanded".into(),
            })
        }
    };
    // Rows may carry no padding at 8 bits, so the buffer is exactly the pixels.
    Image::new(width, height, kind, pixels)
}

/// An IDX array of unsigned bytes (the MNIST file format: magic `00 00 08 n`, then `n`
/// big-endian u32 dimensions, then the values in row-major order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    /// The dimensions, outermost first.
    pub dims: Vec<u32>,
    /// The values.
    pub data: Vec<u8>,
}

impl Idx {
    /// Number of items along the first dimension.
    pub fn len(&self) -> usize {
        self.dims.first().map_or(0, |&d| d as usize)
    }

    /// Whether the array has no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Item `i` of an image array: `[n, rows, cols]` (gray) or `[n, rows, cols, 3]` (RGB).
    pub fn image(&self, i: usize) -> Result<Image> {
        let (h, w, kind) = match self.dims.as_slice() {
            [_, h, w] => (*h, *w, PixelKind::Gray),
            [_, h, w, 3] => (*h, *w, PixelKind::Rgb),
            other => {
                return Err(Error::Unsupported {
                    format: "idx",
                    what: format!("dimensions {other:?} as images"),
                })
            }
        };
        let size = h as usize * w as usize * kind.channels();
        let start = i.checked_mul(size).filter(|_| i < self.len());
        let pixels = start
            .and_then(|s| self.data.get(s..s + size))
            .ok_or_else(|| Error::setting("idx image", format!("index {i} of {}", self.len())))?;
        Image::new(w, h, kind, pixels.to_vec())
    }
}

/// An affine distortion about an image's centre: a pixel at `p` (from the centre) of the
/// result takes its value from `A·p − (dx, dy)` of the original, `A` = rotation · shear /
/// scale.
/// The augmentation of Simard et al. 2003 (ICDAR, "Best practices for convolutional neural
/// networks applied to visual document analysis") without the elastic part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Distortion {
    /// Rotation, radians (positive: counter-clockwise on screen).
    pub rotate: f32,
    /// Enlargement (1: none).
    pub scale: f32,
    /// Horizontal shear: x moves by `shear · y`.
    pub shear: f32,
    /// Move right and down, in pixels.
    pub dx: f32,
    /// See `dx`.
    pub dy: f32,
}

impl Distortion {
    /// The largest rotation [`Distortion::draw`] picks: 15°.
    pub const MAX_ROTATE_DEGREES: f32 = 15.0;
    /// Scales are drawn in 1 ± this.
    pub const MAX_SCALE_CHANGE: f32 = 0.1;
    /// Shears are drawn in ± this.
    pub const MAX_SHEAR: f32 = 0.2;
    /// Moves are drawn in ± this many pixels in each direction.
    pub const MAX_MOVE: f32 = 1.5;

    /// The `k`-th random distortion of `image`: each parameter uniform in its range above,
    /// drawn from `k` and a hash of the image's pixels, so that the same image and `k` always
    /// give the same distortion and different images get different ones.
    pub fn draw(image: &Image, k: u16) -> Distortion {
        // FNV-1a over the pixels and the size, then SplitMix64 steps.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in image
            .pixels
            .iter()
            .chain(&image.width.to_le_bytes())
            .chain(&image.height.to_le_bytes())
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut rng = SplitMix64::new(h ^ u64::from(k).wrapping_mul(GOLDEN_GAMMA));
        // In [-1, 1).
        let mut uniform = || (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        Distortion {
            rotate: uniform() * Self::MAX_ROTATE_DEGREES.to_radians(),
            scale: 1.0 + uniform() * Self::MAX_SCALE_CHANGE,
            shear: uniform() * Self::MAX_SHEAR,
            dx: uniform() * Self::MAX_MOVE,
            dy: uniform() * Self::MAX_MOVE,
        }
    }
}

impl Image {
    /// The image under distortion `d`, same size, by bilinear interpolation, rounded; samples
    /// outside the original repeat its nearest edge pixel (MNIST's black border stays black).
    /// Pixels missing from a hand-built `Image` whose buffer is short read as 0.
    pub fn warped(&self, d: &Distortion) -> Image {
        let c = self.kind.channels();
        let (w, h) = (self.width as usize, self.height as usize);
        if w == 0 || h == 0 {
            return self.clone();
        }
        let (cos, sin) = (d.rotate.cos(), d.rotate.sin());
        let s = d.scale.max(1e-3);
        // A = rotation · shear / scale (output offsets to source offsets).
        let a = [
            cos / s,
            (cos * d.shear - sin) / s,
            sin / s,
            (sin * d.shear + cos) / s,
        ];
        let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
        let at = |x: isize, y: isize, k: usize| -> f32 {
            let x = x.clamp(0, w as isize - 1) as usize;
            let y = y.clamp(0, h as isize - 1) as usize;
            f32::from(self.pixels.get((y * w + x) * c + k).copied().unwrap_or(0))
        };
        let mut pixels = Vec::with_capacity(w * h * c);
        for y in 0..h {
            for x in 0..w {
                let (px, py) = (x as f32 - cx, y as f32 - cy);
                let sx = a[0] * px + a[1] * py + cx - d.dx;
                let sy = a[2] * px + a[3] * py + cy - d.dy;
                let (x0, y0) = (sx.floor(), sy.floor());
                let (fx, fy) = (sx - x0, sy - y0);
                let (x0, y0) = (x0 as isize, y0 as isize);
                for k in 0..c {
                    let top = at(x0, y0, k) * (1.0 - fx) + at(x0 + 1, y0, k) * fx;
                    let bottom = at(x0, y0 + 1, k) * (1.0 - fx) + at(x0 + 1, y0 + 1, k) * fx;
                    let v = top * (1.0 - fy) + bottom * fy;
                    pixels.push((v + 0.5).clamp(0.0, 255.0) as u8);
                }
            }
        }
        Image {
            width: self.width,
            height: self.height,
            kind: self.kind,
            pixels,
        }
    }

    /// The image moved `dx` pixels right and `dy` down (negative: left, up), same size: the
    /// pixels moved out are dropped, the uncovered rows and columns repeat the nearest edge
    /// pixel of the original (MNIST's black border stays black). Pixels missing from a
    /// hand-built `Image` whose buffer is short read as 0.
    pub fn shifted(&self, dx: i32, dy: i32) -> Image {
        let (w, h) = (self.width as i64, self.height as i64);
        let c = self.kind.channels();
        let mut pixels = Vec::with_capacity(self.pixels.len());
        for y in 0..h {
            let sy = (y - i64::from(dy)).clamp(0, h - 1);
            for x in 0..w {
                let sx = (x - i64::from(dx)).clamp(0, w - 1);
                let at = (sy * w + sx) as usize * c;
                match self.pixels.get(at..at + c) {
                    Some(p) => pixels.extend_from_slice(p),
                    None => pixels.resize(pixels.len() + c, 0),
                }
            }
        }
        Image {
            width: self.width,
            height: self.height,
            kind: self.kind,
            pixels,
        }
    }

    /// The image enlarged `factor` times in both directions by bilinear interpolation (pixel
    /// centres aligned, edges repeated), rounded to the nearest value; `factor` 0 or 1 gives
    /// a copy. Pixels missing from a hand-built `Image` whose buffer is short read as 0.
    pub fn scaled(&self, factor: u32) -> Image {
        if factor <= 1 {
            return self.clone();
        }
        let c = self.kind.channels();
        let (w, h) = (self.width as usize, self.height as usize);
        let (nw, nh) = (w * factor as usize, h * factor as usize);
        // For output index i along an axis of n source samples: the two source samples and the
        // weight of the second.
        let taps = |n: usize, out: usize| -> Vec<(usize, usize, f32)> {
            (0..out)
                .map(|i| {
                    let x = (i as f32 + 0.5) / factor as f32 - 0.5;
                    let x0 = x.floor();
                    let f = x - x0;
                    let clamp = |v: f32| (v.max(0.0) as usize).min(n.saturating_sub(1));
                    (clamp(x0), clamp(x0 + 1.0), f)
                })
                .collect()
        };
        let (tx, ty) = (taps(w, nw), taps(h, nh));
        let at = |x: usize, y: usize, k: usize| -> f32 {
            f32::from(self.pixels.get((y * w + x) * c + k).copied().unwrap_or(0))
        };
        let mut pixels = Vec::with_capacity(nw * nh * c);
        for &(y0, y1, fy) in &ty {
            for &(x0, x1, fx) in &tx {
                for k in 0..c {
                    let top = at(x0, y0, k) * (1.0 - fx) + at(x1, y0, k) * fx;
                    let bottom = at(x0, y1, k) * (1.0 - fx) + at(x1, y1, k) * fx;
                    let v = top * (1.0 - fy) + bottom * fy;
                    pixels.push((v + 0.5).clamp(0.0, 255.0) as u8);
                }
            }
        }
        Image {
            width: nw as u32,
            height: nh as u32,
            kind: self.kind,
            pixels,
        }
    }
}

/// Reads an IDX array of unsigned bytes, gzip-compressed (`1f 8b`) or not. At most
/// `max_bytes` of values are accepted, whatever the header claims.
pub fn read_idx(data: &[u8], max_bytes: u64) -> Result<Idx> {
    let raw;
    let data = if data.starts_with(&[0x1F, 0x8B]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .take(max_bytes.saturating_add(1024))
            .read_to_end(&mut out)
            .map_err(|e| Error::malformed("idx.gz", 0, e.to_string()))?;
        raw = out;
        &raw[..]
    } else {
        data
    };
    let header = data
        .get(..4)
        .ok_or_else(|| Error::malformed("idx", 0, "shorter than its 4-byte magic"))?;
    if header[..2] != [0, 0] {
        return Err(Error::malformed(
            "idx",
            0,
            format!("magic {header:02x?} does not start with 00 00"),
        ));
    }
    if header[2] != 0x08 {
        return Err(Error::Unsupported {
            format: "idx",
            what: format!(
                "element type 0x{:02x} (only 0x08, unsigned byte)",
                header[2]
            ),
        });
    }
    let n = usize::from(header[3]);
    let dims: Vec<u32> = data
        .get(4..4 + 4 * n)
        .ok_or_else(|| Error::malformed("idx", 4, format!("{n} dimensions do not fit")))?
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
        .collect();
    let count = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)));
    let count = match count {
        Some(c) if c <= max_bytes => c as usize,
        other => {
            return Err(Error::Limit {
                what: "idx values",
                limit: max_bytes,
                found: other.unwrap_or(u64::MAX),
            })
        }
    };
    let body = &data[4 + 4 * n..];
    if body.len() != count {
        return Err(Error::malformed(
            "idx",
            (4 + 4 * n + body.len().min(count)) as u64,
            format!(
                "dimensions {dims:?} need {count} values, found {}",
                body.len()
            ),
        ));
    }
    Ok(Idx {
        dims,
        data: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx_bytes(dims: &[u32], values: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(values);
        v
    }

    #[test]
    fn idx_plain_and_gzip() {
        let values: Vec<u8> = (0..2 * 2 * 3).collect();
        let bytes = idx_bytes(&[2, 2, 3], &values);
        let idx = read_idx(&bytes, 1 << 20).unwrap();
        assert_eq!(idx.len(), 2);
        let img = idx.image(1).unwrap();
        assert_eq!((img.width, img.height, img.kind), (3, 2, PixelKind::Gray));
        assert_eq!(img.pixels, (6..12).collect::<Vec<u8>>());
        assert!(idx.image(2).is_err());

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &bytes).unwrap();
        assert_eq!(read_idx(&gz.finish().unwrap(), 1 << 20).unwrap(), idx);
    }

    #[test]
    fn warped_by_whole_moves_and_quarter_turns_is_exact() {
        let none = Distortion {
            rotate: 0.0,
            scale: 1.0,
            shear: 0.0,
            dx: 0.0,
            dy: 0.0,
        };
        // 3×3 gray: rows [1 2 3] [4 5 6] [7 8 9].
        let img = Image::new(3, 3, PixelKind::Gray, (1..=9).collect()).unwrap();
        assert_eq!(img.warped(&none), img);
        for (dx, dy) in [(1, 0), (-1, 0), (0, 1), (-1, -1)] {
            let moved = Distortion {
                dx: dx as f32,
                dy: dy as f32,
                ..none
            };
            assert_eq!(img.warped(&moved), img.shifted(dx, dy), "move {dx}/{dy}");
        }
        // A quarter turn counter-clockwise on screen: the result's top row is the original's
        // right column, top to bottom.
        let turn = Distortion {
            rotate: std::f32::consts::FRAC_PI_2,
            ..none
        };
        assert_eq!(img.warped(&turn).pixels, [3, 6, 9, 2, 5, 8, 1, 4, 7]);
        // Half a pixel to the right averages neighbours (rounded), the left edge repeats.
        let half = Distortion { dx: 0.5, ..none };
        assert_eq!(img.warped(&half).pixels[..3], [1, 2, 3]);
        // Enlarged 2× about the centre: the centre stays, the corners come from nearer it.
        let big = Distortion { scale: 2.0, ..none };
        let out = img.warped(&big);
        assert_eq!(out.pixels[4], 5);
        assert_eq!(out.pixels[0], 3); // (1+2+4+5)/4 = 3
    }

    #[test]
    fn distortions_are_drawn_in_range_per_image_and_k() {
        let a = Image::new(4, 4, PixelKind::Gray, (0..16).collect()).unwrap();
        let b = Image::new(4, 4, PixelKind::Gray, (1..17).collect()).unwrap();
        assert_eq!(Distortion::draw(&a, 1), Distortion::draw(&a, 1));
        assert_ne!(Distortion::draw(&a, 1), Distortion::draw(&a, 2));
        assert_ne!(Distortion::draw(&a, 1), Distortion::draw(&b, 1));
        let mut rotations = Vec::new();
        for k in 1..=500 {
            let d = Distortion::draw(&a, k);
            assert!(d.rotate.abs() <= Distortion::MAX_ROTATE_DEGREES.to_radians());
            assert!((d.scale - 1.0).abs() <= Distortion::MAX_SCALE_CHANGE);
            assert!(d.shear.abs() <= Distortion::MAX_SHEAR);
            assert!(d.dx.abs() <= Distortion::MAX_MOVE && d.dy.abs() <= Distortion::MAX_MOVE);
            rotations.push(d.rotate);
        }
        // Spread over the range, both signs.
        let max = rotations.iter().cloned().fold(f32::MIN, f32::max);
        let min = rotations.iter().cloned().fold(f32::MAX, f32::min);
        assert!(
            max > 0.9 * Distortion::MAX_ROTATE_DEGREES.to_radians(),
            "{max}"
        );
        assert!(
            min < -0.9 * Distortion::MAX_ROTATE_DEGREES.to_radians(),
            "{min}"
        );
    }

    #[test]
    fn shifted_moves_pixels_and_repeats_edges() {
        // 3×2 gray: rows [1 2 3] [4 5 6].
        let img = Image::new(3, 2, PixelKind::Gray, vec![1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(img.shifted(0, 0), img);
        assert_eq!(img.shifted(1, 0).pixels, [1, 1, 2, 4, 4, 5]);
        assert_eq!(img.shifted(-1, 0).pixels, [2, 3, 3, 5, 6, 6]);
        assert_eq!(img.shifted(0, 1).pixels, [1, 2, 3, 1, 2, 3]);
        assert_eq!(img.shifted(-2, -1).pixels, [6, 6, 6, 6, 6, 6]);
        // RGB moves whole pixels.
        let rgb = Image::new(2, 1, PixelKind::Rgb, vec![1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(rgb.shifted(1, 0).pixels, [1, 2, 3, 1, 2, 3]);
        // A hand-built image with a short buffer reads missing pixels as 0, no panic.
        let short = Image {
            width: 2,
            height: 2,
            kind: PixelKind::Gray,
            pixels: vec![7],
        };
        assert_eq!(short.shifted(0, 0).pixels, [7, 0, 0, 0]);
        assert_eq!(short.scaled(2).pixels.len(), 16);
    }

    #[test]
    fn scaled_interpolates_between_pixel_centres() {
        // 2×1 gray [0, 200] enlarged 2×: centres at 0.25 and 0.75 of each source pixel.
        let img = Image::new(2, 1, PixelKind::Gray, vec![0, 200]).unwrap();
        let s = img.scaled(2);
        assert_eq!((s.width, s.height), (4, 2));
        // x = -0.25 → clamped to 0; 0.25 → 50; 0.75 → 150; 1.25 → clamped to 200.
        assert_eq!(s.pixels, [0, 50, 150, 200, 0, 50, 150, 200]);
        // A flat image stays flat, RGB channels stay apart, factor 1 copies.
        let rgb = Image::new(1, 1, PixelKind::Rgb, vec![10, 20, 30]).unwrap();
        assert_eq!(rgb.scaled(3).pixels, [10, 20, 30].repeat(9));
        assert_eq!(img.scaled(1), img);
        // Every 3×3 block of a 3× enlargement has its source pixel at its centre.
        let src = Image::new(3, 2, PixelKind::Gray, vec![9, 80, 3, 200, 17, 255]).unwrap();
        let big = src.scaled(3);
        for y in 0..2 {
            for x in 0..3 {
                assert_eq!(
                    big.pixels[(3 * y + 1) * 9 + 3 * x + 1],
                    src.pixels[y * 3 + x]
                );
            }
        }
    }

    #[test]
    fn idx_rejects_bad_headers_and_lengths() {
        assert!(read_idx(&[0, 0], 100).is_err());
        assert!(read_idx(&[1, 0, 8, 1, 0, 0, 0, 1, 5], 100).is_err());
        assert!(matches!(
            read_idx(&[0, 0, 0x0D, 1, 0, 0, 0, 1, 5], 100),
            Err(Error::Unsupported { .. })
        ));
        assert!(read_idx(&idx_bytes(&[3], &[1, 2]), 100).is_err());
        assert!(matches!(
            read_idx(
                &idx_bytes(&[0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF], &[]),
                1 << 30
            ),
            Err(Error::Limit { .. })
        ));
    }
}
