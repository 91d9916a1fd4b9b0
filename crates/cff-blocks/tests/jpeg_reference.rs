//! The JPEG reader against independent references, on the fixtures of `fixtures/jpeg/` (made by
//! libjpeg-turbo's cjpeg, see `make.sh` there).
//!
//! - The MCU count of every scan equals T.81 A.2's formula, computed here from the SOF and SOS
//!   segments by a marker walk of this file's own.
//! - The MCUs tile each entropy-coded segment exactly: this file unstuffs the segments itself,
//!   and checks that the first MCU of each restart interval starts on its first bit, that each
//!   MCU starts where the previous one ended, that its bytes are those bits re-packed, and that
//!   what is left before the marker is fewer than 8 padding bits, all 1s (T.81 F.1.2.3).
//! - The coefficients the walk decodes, dequantised and inverse-transformed here (plain float
//!   IDCT, replicated chroma, JFIF YCbCr→RGB), give the pixels of independent decoders within
//!   ±2 per sample:
//!   - jpeg-decoder, components before colour conversion (`ColorTransform::RGB` on a YCbCr
//!     file interleaves Y, Cb and Cr untouched), for every
//!     plane that it does not upsample: all planes of grayscale and 4:4:4 files, the Y plane
//!     of subsampled ones. (jpeg-decoder upsamples chroma with a triangle filter; our
//!     replication would differ by far more than rounding.)
//!   - libjpeg-turbo's `djpeg -nosmooth -dct float` RGB output (committed `*.djpeg.ppm`) for
//!     the subsampled colour files: `-nosmooth` replicates chroma as we do, so the chroma
//!     planes are checked too.
#![allow(clippy::unwrap_used)]

use cff_blocks::jpeg::{DataUnit, FrameHeader, JpegReader};
use cff_blocks::{Block, Detail, Error, Options};

mod common;

fn fixture(name: &str) -> Vec<u8> {
    common::fixture_in("jpeg", name)
}

const SUPPORTED: &[&str] = &[
    "gray28_q75.jpg",
    "gray28_q50_rst1.jpg",
    "gray28_q95_opt.jpg",
    "gray301_q75.jpg",
    "gray301_s22.jpg",
    "c444_q75.jpg",
    "c444_q95_rst2.jpg",
    "c420_q75.jpg",
    "c420_q50_rst1.jpg",
    "c422_q75_opt.jpg",
    "c440_q95_rst3.jpg",
    "c420_scans_each.jpg",
    "c422_scans_y_cbcr.jpg",
];

// ---------------------------------------------------------------------------------------------
// An independent marker walk: frame components, and for each scan its components and the
// unstuffed bits of each entropy-coded segment with the file offset of every data byte.

struct Segment {
    /// Unstuffed bytes.
    bytes: Vec<u8>,
    /// File offset of each unstuffed byte.
    offsets: Vec<usize>,
}

struct Scan {
    component_ids: Vec<u8>,
    segments: Vec<Segment>,
}

struct Layout {
    width: u32,
    height: u32,
    /// (id, h, v)
    components: Vec<(u8, u32, u32)>,
    scans: Vec<Scan>,
}

fn walk(file: &[u8]) -> Layout {
    let mut layout = Layout {
        width: 0,
        height: 0,
        components: Vec::new(),
        scans: Vec::new(),
    };
    let mut i = 2;
    loop {
        assert_eq!(file[i], 0xFF);
        let code = file[i + 1];
        if code == 0xD9 {
            return layout;
        }
        let len = u16::from_be_bytes([file[i + 2], file[i + 3]]) as usize;
        let body = &file[i + 4..i + 2 + len];
        match code {
            0xC0 | 0xC1 => {
                layout.height = u16::from_be_bytes([body[1], body[2]]) as u32;
                layout.width = u16::from_be_bytes([body[3], body[4]]) as u32;
                for c in body[6..].chunks(3) {
                    layout
                        .components
                        .push((c[0], (c[1] >> 4) as u32, (c[1] & 15) as u32));
                }
            }
            0xDA => {
                let ids = body[1..1 + 2 * body[0] as usize]
                    .chunks(2)
                    .map(|c| c[0])
                    .collect();
                let mut scan = Scan {
                    component_ids: ids,
                    segments: Vec::new(),
                };
                // Entropy-coded segments up to the first marker that is not RSTn.
                let mut j = i + 2 + len;
                let mut seg = Segment {
                    bytes: Vec::new(),
                    offsets: Vec::new(),
                };
                loop {
                    if file[j] != 0xFF {
                        seg.bytes.push(file[j]);
                        seg.offsets.push(j);
                        j += 1;
                    } else if file[j + 1] == 0x00 {
                        seg.bytes.push(0xFF);
                        seg.offsets.push(j);
                        j += 2;
                    } else if (0xD0..=0xD7).contains(&file[j + 1]) {
                        scan.segments.push(std::mem::replace(
                            &mut seg,
                            Segment {
                                bytes: Vec::new(),
                                offsets: Vec::new(),
                            },
                        ));
                        j += 2;
                    } else {
                        break;
                    }
                }
                scan.segments.push(seg);
                layout.scans.push(scan);
                i = j;
                continue;
            }
            _ => {}
        }
        i += 2 + len;
    }
}

fn div_ceil(a: u32, b: u32) -> u32 {
    a.div_ceil(b)
}

/// T.81 A.2.2 / A.2.3: MCUs of a scan.
fn expected_mcus(layout: &Layout, scan: &Scan) -> u32 {
    let hmax = layout.components.iter().map(|c| c.1).max().unwrap();
    let vmax = layout.components.iter().map(|c| c.2).max().unwrap();
    if scan.component_ids.len() == 1 {
        let c = layout
            .components
            .iter()
            .find(|c| c.0 == scan.component_ids[0])
            .unwrap();
        let w = div_ceil(layout.width * c.1, hmax);
        let h = div_ceil(layout.height * c.2, vmax);
        div_ceil(w, 8) * div_ceil(h, 8)
    } else {
        div_ceil(layout.width, 8 * hmax) * div_ceil(layout.height, 8 * vmax)
    }
}

fn bit_at(bytes: &[u8], pos: usize) -> u8 {
    (bytes[pos / 8] >> (7 - pos % 8)) & 1
}

fn info(b: &Block<'_>) -> cff_blocks::jpeg::McuInfo {
    match &b.detail {
        Detail::Jpeg(i) => i.clone(),
        d => panic!("not a JPEG block: {d:?}"),
    }
}

#[test]
fn mcus_tile_every_scan_exactly() {
    for name in SUPPORTED {
        let file = fixture(name);
        let layout = walk(&file);
        let blocks: Vec<Block<'_>> = JpegReader::new(&file, &Options::default())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            blocks.iter().map(|b| b.index).collect::<Vec<_>>(),
            (0..blocks.len() as u64).collect::<Vec<_>>()
        );
        let mut rest = &blocks[..];
        for (s, scan) in layout.scans.iter().enumerate() {
            let n = expected_mcus(&layout, scan) as usize;
            let (mcus, tail) = rest.split_at(n);
            rest = tail;
            assert!(
                mcus.iter().all(|b| info(b).scan == s as u32),
                "{name}: scan {s} has {n} MCUs"
            );
            assert_eq!(info(&mcus[0]).component_ids(), &scan.component_ids[..]);
            let mut k = 0;
            for (r, seg) in scan.segments.iter().enumerate() {
                let mut pos = 0usize;
                while k < mcus.len() && info(&mcus[k]).restart_interval == r as u32 {
                    let b = &mcus[k];
                    let bits = b.bits.unwrap() as usize;
                    assert_eq!(
                        (b.offset as usize, b.bit as usize),
                        (seg.offsets[pos / 8], pos % 8),
                        "{name}: MCU {k} of scan {s} does not start where MCU {} ended",
                        k as i64 - 1
                    );
                    assert_eq!(b.data.len(), bits.div_ceil(8));
                    for t in 0..bits.div_ceil(8) * 8 {
                        let expect = if t < bits {
                            bit_at(&seg.bytes, pos + t)
                        } else {
                            0
                        };
                        assert_eq!(bit_at(&b.data, t), expect, "{name}: MCU {k}, bit {t}");
                    }
                    pos += bits;
                    k += 1;
                }
                // Fewer than 8 bits left, all padding 1-bits.
                let total = seg.bytes.len() * 8;
                assert!(
                    pos <= total && total - pos < 8,
                    "{name}: interval {r} of scan {s}: MCUs {pos} bits, segment {total}"
                );
                assert!((pos..total).all(|t| bit_at(&seg.bytes, t) == 1));
            }
            assert_eq!(k, n, "{name}: scan {s}: MCUs outside its restart intervals");
        }
        assert!(rest.is_empty(), "{name}: MCUs beyond the scans");
    }
}

#[test]
fn the_coefficient_walk_finds_the_same_blocks() {
    // `next` skips magnitude bits by table; `next_with_coefficients` reads them: both must end
    // every data unit on the same bit.
    for name in SUPPORTED {
        let file = fixture(name);
        let fast: Vec<Block<'_>> = JpegReader::new(&file, &Options::default())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut reader = JpegReader::new(&file, &Options::default()).unwrap();
        let mut units = Vec::new();
        let mut slow = Vec::new();
        while let Some(block) = reader.next_with_coefficients(&mut units) {
            slow.push(block.unwrap());
        }
        assert_eq!(fast, slow, "{name}");
    }
}

#[test]
fn restart_fixtures_have_one_interval_per_restart_segment() {
    // gray28_q50_rst1 has one MCU per interval: 16 intervals, every MCU on a byte boundary.
    let file = fixture("gray28_q50_rst1.jpg");
    let blocks: Vec<_> = JpegReader::new(&file, &Options::default())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(blocks.len(), 16);
    assert!(blocks.iter().all(|b| b.bit == 0));
    let intervals: Vec<u32> = blocks.iter().map(|b| info(b).restart_interval).collect();
    assert_eq!(intervals, (0..16).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------------
// Pixels from coefficients, for comparison with independent decoders.

/// Zig-zag index → natural (row-major) index (T.81 Figure A.6).
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// The inverse DCT of T.81 A.3.3, separably, in f64.
fn idct(coefs: &[f64; 64]) -> [u8; 64] {
    let mut cos = [[0f64; 8]; 8];
    for (x, row) in cos.iter_mut().enumerate() {
        for (u, c) in row.iter_mut().enumerate() {
            let cu = if u == 0 {
                std::f64::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            *c = cu * ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos();
        }
    }
    let mut tmp = [0f64; 64];
    for v in 0..8 {
        for x in 0..8 {
            tmp[v * 8 + x] = (0..8).map(|u| cos[x][u] * coefs[v * 8 + u]).sum::<f64>() / 2.0;
        }
    }
    let mut out = [0u8; 64];
    for y in 0..8 {
        for x in 0..8 {
            let s: f64 = (0..8).map(|v| cos[y][v] * tmp[v * 8 + x]).sum::<f64>() / 2.0;
            out[y * 8 + x] = (s + 128.0).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Component planes (each `component_size` samples) from every MCU's coefficients.
fn planes(file: &[u8]) -> (FrameHeader, Vec<(usize, usize, Vec<u8>)>) {
    let mut reader = JpegReader::new(file, &Options::default()).unwrap();
    let frame = reader.frame().clone();
    let mut planes: Vec<(usize, usize, Vec<u8>)> = (0..frame.components.len())
        .map(|c| {
            let (bw, bh) = frame.component_blocks(c);
            (
                bw as usize * 8,
                bh as usize * 8,
                vec![0u8; (bw * bh * 64) as usize],
            )
        })
        .collect();
    let mut units: Vec<DataUnit> = Vec::new();
    while let Some(block) = reader.next_with_coefficients(&mut units) {
        block.unwrap();
        for unit in &units {
            let (w, h, plane) = &mut planes[unit.component];
            let (x0, y0) = (unit.col as usize * 8, unit.row as usize * 8);
            if x0 >= *w || y0 >= *h {
                continue; // a padding data unit of an interleaved MCU
            }
            let q = reader.quant_tables()[frame.components[unit.component].quant_table as usize]
                .unwrap();
            let mut natural = [0f64; 64];
            for k in 0..64 {
                natural[ZIGZAG[k]] = unit.coefficients[k] as f64 * q[k] as f64;
            }
            let pixels = idct(&natural);
            for y in 0..8 {
                for x in 0..8 {
                    plane[(y0 + y) * *w + x0 + x] = pixels[y * 8 + x];
                }
            }
        }
    }
    (frame, planes)
}

/// Sample of component `c` under image pixel (x, y), replicating subsampled components.
fn sample(
    frame: &FrameHeader,
    planes: &[(usize, usize, Vec<u8>)],
    c: usize,
    x: usize,
    y: usize,
) -> f64 {
    let comp = frame.components[c];
    let xs = x * comp.h as usize / frame.max_h() as usize;
    let ys = y * comp.v as usize / frame.max_v() as usize;
    let (w, _, plane) = &planes[c];
    plane[ys * w + xs] as f64
}

fn max_diff(a: impl Iterator<Item = f64>, b: impl Iterator<Item = u8>) -> f64 {
    a.zip(b)
        .map(|(a, b)| (a - b as f64).abs())
        .fold(0.0, f64::max)
}

#[test]
fn coefficients_give_jpeg_decoders_planes() {
    for name in SUPPORTED {
        let file = fixture(name);
        let (frame, planes) = planes(&file);
        let n = frame.components.len();
        let mut decoder = jpeg_decoder::Decoder::new(&file[..]);
        // `ColorTransform::RGB` interleaves three components as they are: Y, Cb, Cr unconverted.
        // (`ColorTransform::None` panics in jpeg-decoder 0.3.2 on these files.)
        decoder.set_color_transform(if n == 3 {
            jpeg_decoder::ColorTransform::RGB
        } else {
            jpeg_decoder::ColorTransform::Grayscale
        });
        let reference = decoder.decode().unwrap();
        let (w, h) = (frame.width as usize, frame.height as usize);
        assert_eq!(reference.len(), w * h * n);
        // Planes jpeg-decoder does not upsample: those at full resolution.
        for c in 0..n {
            let comp = frame.components[c];
            if (comp.h, comp.v) != (frame.max_h(), frame.max_v()) {
                continue;
            }
            let ours = (0..h).flat_map(|y| (0..w).map(move |x| (x, y)));
            let ours = ours.map(|(x, y)| sample(&frame, &planes, c, x, y));
            let theirs = reference.iter().skip(c).step_by(n).copied();
            let d = max_diff(ours, theirs);
            assert!(d <= 2.0, "{name}: component {c} differs by up to {d}");
        }
    }
}

fn ycbcr_to_rgb(y: f64, cb: f64, cr: f64) -> [f64; 3] {
    // JFIF 1.02 §7.
    [
        y + 1.402 * (cr - 128.0),
        y - 0.344136 * (cb - 128.0) - 0.714136 * (cr - 128.0),
        y + 1.772 * (cb - 128.0),
    ]
    .map(|v| v.round().clamp(0.0, 255.0))
}

#[test]
fn coefficients_give_djpegs_pixels_for_subsampled_colour() {
    for name in [
        "c420_q75",
        "c422_q75_opt",
        "c440_q95_rst3",
        "c420_scans_each",
    ] {
        let file = fixture(&format!("{name}.jpg"));
        let ppm = fixture(&format!("{name}.djpeg.ppm"));
        let (frame, planes) = planes(&file);
        let (w, h) = (frame.width as usize, frame.height as usize);
        let header = format!("P6\n{w} {h}\n255\n");
        assert!(ppm.starts_with(header.as_bytes()), "{name}: ppm header");
        let reference = &ppm[header.len()..];
        assert_eq!(reference.len(), w * h * 3);
        let ours = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .flat_map(|(x, y)| {
                let s = |c| sample(&frame, &planes, c, x, y);
                ycbcr_to_rgb(s(0), s(1), s(2))
            });
        let d = max_diff(ours, reference.iter().copied());
        assert!(d <= 2.0, "{name}: RGB differs by up to {d}");
    }
}

#[test]
fn unsupported_processes_are_named() {
    for (name, what) in [
        (
            "unsupported_progressive.jpg",
            "SOF2 (progressive DCT, Huffman)",
        ),
        (
            "unsupported_arithmetic.jpg",
            "SOF9 (extended sequential DCT, arithmetic)",
        ),
        ("unsupported_12bit.jpg", "12-bit sample precision (SOF1"),
    ] {
        let file = fixture(name);
        let err = JpegReader::new(&file, &Options::default()).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{name}: {err}");
        assert!(err.to_string().contains(what), "{name}: {err}");
        let sof = file
            .windows(2)
            .position(|w| w[0] == 0xFF && (0xC0..=0xCF).contains(&w[1]) && w[1] != 0xC4)
            .unwrap() as u64;
        assert!(
            err.offset() == Some(sof) || err.offset() == Some(sof + 4),
            "{name}: {err}"
        );
    }
}

#[test]
fn the_header_span_ends_after_the_first_sos() {
    let file = fixture("c420_q75.jpg");
    let reader = JpegReader::new(&file, &Options::default()).unwrap();
    let sos = file.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let len = u16::from_be_bytes([file[sos + 2], file[sos + 3]]) as usize;
    assert_eq!(reader.header_span(), 0..(sos + 2 + len) as u64);
    assert_eq!(reader.header().len(), sos + 2 + len);
    let f = reader.frame();
    assert_eq!((f.width, f.height, f.max_h(), f.max_v()), (301, 75, 2, 2));
    assert!(reader.quant_tables()[0].is_some() && reader.quant_tables()[1].is_some());
}
