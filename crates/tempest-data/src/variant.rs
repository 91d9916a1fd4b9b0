//! The compressed versions an item is prepared in: [`Variant`], spelled `mp3:20`, `opus:24`,
//! `jpeg:75` or `jpeg:75x2r1@1/-1~3`.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// One compressed version of an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Variant {
    /// MP3 at this many kbps: CBR where that is a legal bitrate at the sample rate, bounded
    /// ABR otherwise (`cff_encode::mp3::Mp3Options::for_kbps`). Needs feature `mp3`.
    Mp3(u32),
    /// Ogg Opus at this many kbps, 20 ms frames, constrained VBR. Needs feature `opus`.
    Opus(u32),
    /// Baseline JPEG, 4:2:0 for colour, of the image as [`JpegVariant`] transforms it.
    Jpeg(JpegVariant),
}

/// How a JPEG variant is made: the image is first warped by a random distortion (if any),
/// moved by `dx` pixels right and `dy` down (negative: left, up; the uncovered edge repeats
/// the nearest edge pixel), enlarged `scale` times (bilinear), then encoded at `quality` with
/// a restart marker after every `restart` MCUs (0: none).
///
/// Moving is an augmentation that changes every MCU's bytes while the label stays; enlarging
/// makes each 8×8 MCU cover fewer source pixels, so more, simpler MCUs describe the image (a
/// 28×28 digit has 16 MCUs, 49 at `x2`); a restart marker resets the DC prediction (T.81
/// F.1.1.5.1 and F.1.2.1.3), so at `r1` every MCU codes its own average brightness instead of
/// the difference to the previous MCU's. Spelled `jpeg:75x2r1@1/-1~3`; `x1`, `r0`, `@0/0` and
/// `~0` are left out, so the plain image at quality 75 is `jpeg:75`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct JpegVariant {
    /// 1 to 100.
    pub quality: u8,
    /// 1 to [`MAX_SCALE`].
    pub scale: u8,
    /// Source pixels to the right (−[`MAX_SHIFT`] to [`MAX_SHIFT`]).
    pub dx: i8,
    /// Source pixels down.
    pub dy: i8,
    /// MCUs per restart interval (T.81 B.2.4.4, DRI); 0: no restart markers.
    pub restart: u16,
    /// 0: none; k ≥ 1: the image is first warped by the k-th random affine distortion
    /// (`cff_encode::image::Distortion::draw`: rotation, scale, shear and move, drawn from k
    /// and the image's pixels, so each image gets its own k-th version).
    pub distort: u16,
}

impl JpegVariant {
    /// The image as it is, at `quality`.
    pub const fn plain(quality: u8) -> Self {
        JpegVariant {
            quality,
            scale: 1,
            dx: 0,
            dy: 0,
            restart: 0,
            distort: 0,
        }
    }

    /// The scale unless 1 and the shift unless (0, 0), for the names.
    fn parts(self) -> (Option<u8>, Option<(i8, i8)>) {
        (
            Some(self.scale).filter(|&k| k != 1),
            Some((self.dx, self.dy)).filter(|&d| d != (0, 0)),
        )
    }
}

/// The largest move of a JPEG variant in either direction, in source pixels.
pub const MAX_SHIFT: i8 = 8;

/// The largest enlargement of a JPEG variant.
pub const MAX_SCALE: u8 = 8;

impl Variant {
    /// JPEG at `quality` of the image as it is (`jpeg:75`); the quality is checked when the
    /// variant is parsed or encoded.
    pub const fn jpeg_quality(quality: u8) -> Variant {
        Variant::Jpeg(JpegVariant::plain(quality))
    }

    /// Whether the variant encodes audio (else images).
    pub fn is_audio(self) -> bool {
        matches!(self, Variant::Mp3(_) | Variant::Opus(_))
    }

    /// A JPEG variant of the image moved by (`dx`, `dy`) and enlarged `scale` times. Values
    /// out of range are an error.
    pub fn jpeg(quality: u8, scale: u8, dx: i8, dy: i8) -> Result<Variant> {
        if !(1..=100).contains(&quality) {
            return Err(Error::setting(
                "jpeg quality",
                format!("{quality} (1 to 100)"),
            ));
        }
        if !(1..=MAX_SCALE).contains(&scale) {
            return Err(Error::setting(
                "jpeg scale",
                format!("{scale} (1 to {MAX_SCALE})"),
            ));
        }
        if dx.abs() > MAX_SHIFT || dy.abs() > MAX_SHIFT {
            return Err(Error::setting(
                "jpeg shift",
                format!("{dx}/{dy} (−{MAX_SHIFT} to {MAX_SHIFT} pixels)"),
            ));
        }
        Ok(Variant::Jpeg(JpegVariant {
            scale,
            dx,
            dy,
            ..JpegVariant::plain(quality)
        }))
    }

    /// This JPEG variant with a restart marker after every `mcus` MCUs (0: none; T.81
    /// B.2.4.4). An audio variant is an error.
    ///
    /// ```
    /// use tempest_data::Variant;
    /// let v = Variant::jpeg(75, 2, 1, -1)?.with_restart(1)?;
    /// assert_eq!(v.to_string(), "jpeg:75x2r1@1/-1");
    /// assert_eq!(v.with_restart(0)?, Variant::jpeg(75, 2, 1, -1)?);
    /// # Ok::<(), tempest_data::Error>(())
    /// ```
    pub fn with_restart(self, mcus: u16) -> Result<Variant> {
        self.with_jpeg("a restart interval", |j| j.restart = mcus)
    }

    /// This JPEG variant with the `k`-th random distortion (0: none; see
    /// [`JpegVariant::distort`]). An audio variant is an error.
    ///
    /// ```
    /// use tempest_data::Variant;
    /// let v = Variant::jpeg(75, 2, 0, 0)?.with_restart(1)?.with_distortion(3)?;
    /// assert_eq!(v.to_string(), "jpeg:75x2r1~3");
    /// assert_eq!(v.to_string().parse::<Variant>()?, v);
    /// # Ok::<(), tempest_data::Error>(())
    /// ```
    pub fn with_distortion(self, k: u16) -> Result<Variant> {
        self.with_jpeg("a distortion", |j| j.distort = k)
    }

    /// This JPEG variant changed by `set`; an audio variant is an error saying it takes no
    /// `what`.
    fn with_jpeg(self, what: &str, set: impl FnOnce(&mut JpegVariant)) -> Result<Variant> {
        match self {
            Variant::Jpeg(mut j) => {
                set(&mut j);
                Ok(Variant::Jpeg(j))
            }
            Variant::Mp3(_) | Variant::Opus(_) => Err(Error::setting(
                "variant",
                format!("{self}: only jpeg variants take {what}"),
            )),
        }
    }

    /// A JPEG variant's distortion (0 for every other variant).
    pub fn distortion(self) -> u16 {
        match self {
            Variant::Jpeg(j) => j.distort,
            _ => 0,
        }
    }

    /// A JPEG variant's restart interval (0 for every other variant).
    pub fn restart_interval(self) -> u16 {
        match self {
            Variant::Jpeg(j) => j.restart,
            _ => 0,
        }
    }

    /// The JPEG variants at `quality` and `scale` moved by every (dx, dy) with |dx|, |dy| ≤
    /// `max` other than (0, 0), row by row: the 8 neighbours for `max` = 1, 24 for 2; `max`
    /// above [`MAX_SHIFT`] counts as [`MAX_SHIFT`]. The unmoved image is
    /// `Variant::jpeg(quality, scale, 0, 0)`, which also checks `quality` and `scale` (this
    /// does not: an out-of-range one fails when the variant is encoded).
    pub fn jpeg_shifts(quality: u8, scale: u8, max: u8) -> Vec<Variant> {
        let m = max.min(MAX_SHIFT as u8) as i8;
        let mut out = Vec::new();
        for dy in -m..=m {
            for dx in -m..=m {
                if (dx, dy) != (0, 0) {
                    out.push(Variant::Jpeg(JpegVariant {
                        scale,
                        dx,
                        dy,
                        ..JpegVariant::plain(quality)
                    }));
                }
            }
        }
        out
    }

    /// The folder the variant's files go to: `mp3-20`, `opus-24`, `jpeg-75`,
    /// `jpeg-75-x2-shift1_-1`, `jpeg-75-x2-r1`.
    pub fn dir_name(self) -> String {
        match self {
            Variant::Mp3(k) => format!("mp3-{k}"),
            Variant::Opus(k) => format!("opus-{k}"),
            Variant::Jpeg(j) => {
                let (scale, shift) = j.parts();
                let mut name = format!("jpeg-{}", j.quality);
                if let Some(k) = scale {
                    name += &format!("-x{k}");
                }
                if j.restart > 0 {
                    name += &format!("-r{}", j.restart);
                }
                if let Some((dx, dy)) = shift {
                    name += &format!("-shift{dx}_{dy}");
                }
                if j.distort > 0 {
                    name += &format!("-distort{}", j.distort);
                }
                name
            }
        }
    }

    /// File extension of the variant's outputs.
    pub fn extension(self) -> &'static str {
        match self {
            Variant::Mp3(_) => "mp3",
            Variant::Opus(_) => "opus",
            Variant::Jpeg(_) => "jpg",
        }
    }

    /// Whether this build can encode the variant (MP3 and Opus need their features).
    pub fn available(self) -> bool {
        match self {
            Variant::Mp3(_) => cfg!(feature = "mp3"),
            Variant::Opus(_) => cfg!(feature = "opus"),
            Variant::Jpeg(_) => true,
        }
    }
}

impl fmt::Display for Variant {
    /// The spelling [`FromStr`] reads: `mp3:20`, `opus:24`, `jpeg:75`, `jpeg:75x2r1@1/-1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Variant::Mp3(k) => write!(f, "mp3:{k}"),
            Variant::Opus(k) => write!(f, "opus:{k}"),
            Variant::Jpeg(j) => {
                let (scale, shift) = j.parts();
                write!(f, "jpeg:{}", j.quality)?;
                if let Some(k) = scale {
                    write!(f, "x{k}")?;
                }
                if j.restart > 0 {
                    write!(f, "r{}", j.restart)?;
                }
                if let Some((dx, dy)) = shift {
                    write!(f, "@{dx}/{dy}")?;
                }
                if j.distort > 0 {
                    write!(f, "~{}", j.distort)?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for Variant {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::setting("variant", format!("{s:?}: {why}"));
        let (codec, value) = s
            .split_once(':')
            .ok_or_else(|| bad("expected CODEC:VALUE, e.g. mp3:20"))?;
        // The JPEG suffixes, peeled off from the last: `~k`, `@dx/dy`, `rN`, `xK`.
        let (value, distort) = match value.split_once('~') {
            Some((v, k)) => (v, Some(k)),
            None => (value, None),
        };
        let (value, shift) = match value.split_once('@') {
            Some((v, shift)) => (v, Some(shift)),
            None => (value, None),
        };
        let (value, restart) = match value.split_once('r') {
            Some((v, restart)) => (v, Some(restart)),
            None => (value, None),
        };
        let (value, scale) = match value.split_once('x') {
            Some((v, scale)) => (v, Some(scale)),
            None => (value, None),
        };
        let n: u32 = value
            .trim()
            .parse()
            .map_err(|_| bad("the value is not a number"))?;
        if shift.is_some() || scale.is_some() || restart.is_some() || distort.is_some() {
            let is_jpeg = matches!(codec.trim(), "jpeg" | "jpg");
            if !is_jpeg {
                return Err(bad(
                    "only jpeg variants take a scale, a restart interval, a shift or a distortion",
                ));
            }
            let restart = match restart {
                Some(t) => t
                    .trim()
                    .parse::<u16>()
                    .map_err(|_| bad("the restart interval after r is not a number"))?,
                None => 0,
            };
            let scale = match scale {
                Some(t) => t
                    .trim()
                    .parse::<u8>()
                    .map_err(|_| bad("the scale after x is not a number"))?,
                None => 1,
            };
            let (dx, dy) = match shift {
                Some(t) => t
                    .split_once('/')
                    .and_then(|(x, y)| Some((x.trim().parse().ok()?, y.trim().parse().ok()?)))
                    .ok_or_else(|| bad("expected a shift DX/DY in pixels, e.g. jpeg:75@1/-1"))?,
                None => (0, 0),
            };
            let distort = match distort {
                Some(t) => t
                    .trim()
                    .parse::<u16>()
                    .map_err(|_| bad("the distortion after ~ is not a number"))?,
                None => 0,
            };
            let quality = u8::try_from(n).map_err(|_| bad("the value is out of range"))?;
            return Variant::jpeg(quality, scale, dx, dy)
                .and_then(|v| v.with_restart(restart))
                .and_then(|v| v.with_distortion(distort))
                .map_err(|e| bad(&e.to_string()));
        }
        match codec.trim() {
            "mp3" if (8..=320).contains(&n) => Ok(Variant::Mp3(n)),
            "opus" if (1..=512).contains(&n) => Ok(Variant::Opus(n)),
            "jpeg" | "jpg" if (1..=100).contains(&n) => Ok(Variant::jpeg_quality(n as u8)),
            "mp3" | "opus" | "jpeg" | "jpg" => Err(bad("the value is out of range")),
            _ => Err(bad("the codec is not mp3, opus or jpeg")),
        }
    }
}

/// Parses a comma-separated list of variants (`mp3:20,mp3:26,opus:24`), refusing duplicates.
pub fn parse_variants(list: &str) -> Result<Vec<Variant>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let v: Variant = part.parse()?;
        if !seen.insert(v) {
            return Err(Error::setting("variant", format!("{v} is given twice")));
        }
        out.push(v);
    }
    if out.is_empty() {
        return Err(Error::setting("variants", "none given"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse_and_print() {
        let v = parse_variants("mp3:20, mp3:26,opus:24,jpeg:75").unwrap();
        assert_eq!(
            v,
            vec![
                Variant::Mp3(20),
                Variant::Mp3(26),
                Variant::Opus(24),
                Variant::jpeg_quality(75)
            ]
        );
        assert_eq!(v[0].to_string(), "mp3:20");
        assert_eq!(v[3].dir_name(), "jpeg-75");
        for bad in [
            "",
            "mp3",
            "mp3:x",
            "mp3:2",
            "jpeg:0",
            "jpeg:101",
            "flac:5",
            "mp3:20,mp3:20",
            "jpeg:75@1",
            "jpeg:75@9/0",
            "jpeg:75@0/-9",
            "jpeg:101@1/1",
            "jpeg:300x2",
            "jpeg:75x0",
            "jpeg:75x9",
            "jpeg:75xx",
            "mp3:20@1/1",
            "mp3:20x2",
            "jpeg:75@1/1,jpeg:75@1/1",
            "jpeg:75,jpeg:75x1",
        ] {
            assert!(parse_variants(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scaled_and_shifted_variants_parse_print_and_list() {
        let v =
            parse_variants("jpeg:75,jpeg:75@1/-1,jpg:50x2@-8/8,jpeg:90x3,jpeg:60x1@0/0").unwrap();
        let at = |quality, scale, dx, dy| {
            Variant::Jpeg(JpegVariant {
                scale,
                dx,
                dy,
                ..JpegVariant::plain(quality)
            })
        };
        assert_eq!(
            v,
            [
                Variant::jpeg_quality(75),
                at(75, 1, 1, -1),
                at(50, 2, -8, 8),
                at(90, 3, 0, 0),
                Variant::jpeg_quality(60)
            ]
        );
        let names: Vec<String> = v.iter().map(|v| v.to_string()).collect();
        assert_eq!(
            names,
            [
                "jpeg:75",
                "jpeg:75@1/-1",
                "jpeg:50x2@-8/8",
                "jpeg:90x3",
                "jpeg:60"
            ]
        );
        for v in &v {
            assert_eq!(v.to_string().parse::<Variant>().unwrap(), *v);
            assert_eq!(v.extension(), "jpg");
            assert!(!v.is_audio());
        }
        assert_eq!(v[1].dir_name(), "jpeg-75-shift1_-1");
        assert_eq!(v[2].dir_name(), "jpeg-50-x2-shift-8_8");
        assert_eq!(v[3].dir_name(), "jpeg-90-x3");
        let shifts = Variant::jpeg_shifts(75, 2, 1);
        assert_eq!(shifts.len(), 8);
        assert!(!shifts.contains(&Variant::jpeg(75, 2, 0, 0).unwrap()));
        let names: HashSet<String> = shifts.iter().map(|v| v.dir_name()).collect();
        assert_eq!(names.len(), 8);
        assert_eq!(Variant::jpeg_shifts(75, 1, 2).len(), 24);
        assert!(Variant::jpeg_shifts(75, 1, 0).is_empty());
        assert_eq!(Variant::jpeg_shifts(75, 1, 200).len(), 17 * 17 - 1);
        assert!(Variant::jpeg(0, 1, 0, 0).is_err());
        assert!(Variant::jpeg(75, 9, 0, 0).is_err());
        assert!(Variant::jpeg(75, 1, -9, 0).is_err());
    }

    #[test]
    fn restart_intervals_parse_print_and_name_their_folder() {
        let v = parse_variants("jpeg:75r1,jpeg:75x2r4@1/-1,jpeg:60r0,jpg:50x2r2").unwrap();
        let names: Vec<String> = v.iter().map(|v| v.to_string()).collect();
        assert_eq!(
            names,
            ["jpeg:75r1", "jpeg:75x2r4@1/-1", "jpeg:60", "jpeg:50x2r2"]
        );
        assert_eq!(v[2], Variant::jpeg_quality(60));
        let restarts: Vec<u16> = v.iter().map(|v| v.restart_interval()).collect();
        assert_eq!(restarts, [1, 4, 0, 2]);
        let dirs: Vec<String> = v.iter().map(|v| v.dir_name()).collect();
        assert_eq!(
            dirs,
            [
                "jpeg-75-r1",
                "jpeg-75-x2-r4-shift1_-1",
                "jpeg-60",
                "jpeg-50-x2-r2"
            ]
        );
        for v in &v {
            assert_eq!(v.to_string().parse::<Variant>().unwrap(), *v);
        }
        assert_eq!(
            Variant::jpeg(75, 2, 1, -1)
                .unwrap()
                .with_restart(4)
                .unwrap(),
            v[1]
        );
        assert_eq!(v[0].with_restart(0).unwrap(), Variant::jpeg_quality(75));
        assert!(Variant::Mp3(20).with_restart(1).is_err());
        for bad in [
            "mp3:20r1",
            "jpeg:75r",
            "jpeg:75r-1",
            "jpeg:75r70000",
            "jpeg:75rx2",
        ] {
            assert!(bad.parse::<Variant>().is_err(), "{bad}");
        }
    }
}
