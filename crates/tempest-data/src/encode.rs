//! Encoding one item's media in one variant, with cff-encode's encoders.

use cff_encode::audio::{read_wav, Audio};
use cff_encode::image::{read_png, Distortion, Image};
use cff_encode::jpeg::{encode_jpeg, JpegOptions};
use cff_encode::{load, Limits};

use crate::layout::{Item, Source};
use crate::variant::JpegVariant;
use crate::{Error, Result, Variant};

/// The media of one item, decoded once for all its variants.
pub(crate) enum Media {
    // Read only by the MP3 and Opus encoders.
    #[cfg_attr(not(any(feature = "mp3", feature = "opus")), allow(dead_code))]
    Audio(Audio),
    Image(Image),
}

/// Reads and decodes the item's input once, audio resampled to `sample_rate`.
pub(crate) fn load_media(item: &Item, limits: &Limits, sample_rate: u32) -> Result<Media> {
    Ok(match &item.source {
        Source::Wav(path) => {
            let audio = read_wav(&load(path, limits)?)?;
            Media::Audio(audio.resampled(sample_rate)?)
        }
        Source::Png(path) => Media::Image(read_png(&load(path, limits)?, limits.max_pixels)?),
        Source::Idx { images, index, .. } => Media::Image(images.image(*index)?),
    })
}

/// The bytes of `media` in `variant`; an error for a variant of the other kind of media.
pub(crate) fn encode(media: &Media, variant: Variant, limits: &Limits) -> Result<Vec<u8>> {
    Ok(match (media, variant) {
        #[cfg(feature = "mp3")]
        (Media::Audio(a), Variant::Mp3(k)) => {
            cff_encode::mp3::encode_mp3(a, &cff_encode::mp3::Mp3Options::for_kbps(k, a.rate)?)?
        }
        #[cfg(feature = "opus")]
        (Media::Audio(a), Variant::Opus(k)) => {
            cff_encode::opus::encode_opus(a, &cff_encode::opus::OpusOptions::kbps(k))?
        }
        // The image as it is goes straight to the encoder: no copy, no restart setting.
        (Media::Image(i), Variant::Jpeg(j)) if j == JpegVariant::plain(j.quality) => {
            encode_jpeg(i, &JpegOptions::with_quality(j.quality))?
        }
        (Media::Image(i), Variant::Jpeg(j)) => {
            let (w, h) = (u64::from(i.width), u64::from(i.height));
            let pixels = w * h * u64::from(j.scale) * u64::from(j.scale);
            if pixels > limits.max_pixels {
                return Err(Error::Encode(cff_encode::Error::Limit {
                    what: "pixels per image",
                    limit: limits.max_pixels,
                    found: pixels,
                }));
            }
            let distorted;
            let i = if j.distort > 0 {
                distorted = i.warped(&Distortion::draw(i, j.distort));
                &distorted
            } else {
                i
            };
            encode_jpeg(
                &i.shifted(i32::from(j.dx), i32::from(j.dy))
                    .scaled(u32::from(j.scale)),
                &JpegOptions::with_quality(j.quality).with_restart_interval(Some(j.restart)),
            )?
        }
        (_, v) => return Err(Error::unsupported("variant", format!("{v} for this item"))),
    })
}
