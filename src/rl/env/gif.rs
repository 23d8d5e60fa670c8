//! Episode GIFs from rendered frames (the labs' `rgb_array_list` animations), written with the
//! `gif` crate; each frame gets its own palette quantised with NeuQuant.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{ensure, Context, Result};

use super::{Frame, RgbImage};

/// Writes frames of one size into an animated, looping GIF.
pub struct GifWriter<W: Write> {
    encoder: gif::Encoder<W>,
    width: usize,
    height: usize,
    delay_cs: u16,
}

impl GifWriter<BufWriter<File>> {
    /// Creates `path` for `width x height` frames shown at `fps` frames per second.
    pub fn create(path: impl AsRef<Path>, width: usize, height: usize, fps: f64) -> Result<Self> {
        let path = path.as_ref();
        let file = File::create(path).with_context(|| format!("cannot create GIF {}", path.display()))?;
        GifWriter::new(BufWriter::new(file), width, height, fps)
    }
}

impl<W: Write> GifWriter<W> {
    /// Starts a GIF on `writer`.
    pub fn new(writer: W, width: usize, height: usize, fps: f64) -> Result<Self> {
        ensure!(
            width <= u16::MAX as usize && height <= u16::MAX as usize,
            "GIF frames are at most 65535 pixels a side"
        );
        ensure!(fps > 0.0, "GIF frame rate must be positive, got {fps}");
        let mut encoder = gif::Encoder::new(writer, width as u16, height as u16, &[])?;
        encoder.set_repeat(gif::Repeat::Infinite)?;
        // GIF delays are in hundredths of a second.
        let delay_cs = (100.0 / fps).round().clamp(1.0, u16::MAX as f64) as u16;
        Ok(GifWriter { encoder, width, height, delay_cs })
    }

    /// Appends one frame.
    pub fn add(&mut self, frame: Frame<'_>) -> Result<()> {
        ensure!(
            (frame.width, frame.height) == (self.width, self.height),
            "GIF frame is {}x{}, the GIF is {}x{}",
            frame.width,
            frame.height,
            self.width,
            self.height
        );
        // Speed 10 is NeuQuant's usual quality/speed trade-off.
        let mut gif_frame = gif::Frame::from_rgb_speed(self.width as u16, self.height as u16, frame.rgb, 10);
        gif_frame.delay = self.delay_cs;
        self.encoder.write_frame(&gif_frame)?;
        Ok(())
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(self) -> Result<W> {
        Ok(self.encoder.into_inner()?)
    }
}

/// Saves an episode's frames (e.g. collected with [`Frame::to_image`]) as a GIF at `fps`.
pub fn save_gif(path: impl AsRef<Path>, frames: &[RgbImage], fps: f64) -> Result<()> {
    let first = frames.first().context("cannot save a GIF without frames")?;
    let mut writer = GifWriter::create(path, first.width, first.height, fps)?;
    for frame in frames {
        writer.add(frame.frame())?;
    }
    writer.finish()?.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_decodable_animation() {
        let frames: Vec<RgbImage> =
            (0..3u8).map(|i| RgbImage { width: 4, height: 2, rgb: vec![i * 80; 4 * 2 * 3] }).collect();
        let mut writer = GifWriter::new(Vec::new(), 4, 2, 25.0).unwrap();
        for f in &frames {
            writer.add(f.frame()).unwrap();
        }
        let bytes = writer.finish().unwrap();
        assert_eq!(&bytes[..6], b"GIF89a");
        let mut decoder = gif::DecodeOptions::new().read_info(bytes.as_slice()).unwrap();
        let mut n = 0;
        while let Some(frame) = decoder.read_next_frame().unwrap() {
            assert_eq!((frame.width, frame.height, frame.delay), (4, 2, 4));
            n += 1;
        }
        assert_eq!(n, 3);
        assert!(GifWriter::new(Vec::new(), 4, 2, 25.0)
            .unwrap()
            .add(RgbImage { width: 1, height: 1, rgb: vec![0; 3] }.frame())
            .is_err());
    }
}
