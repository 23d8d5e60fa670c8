//! A tiny RGB rasteriser for `render()`: filled polygons, circles, rectangles and lines, enough
//! to redraw Gymnasium's pygame pictures without a graphics dependency.

use super::Frame;

/// An RGB colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Color(pub [u8; 3]);

impl Color {
    /// White, the classic-control background.
    pub const WHITE: Color = Color([255, 255, 255]);

    /// A colour from its components.
    pub const fn rgb(r: u8, g: u8, b: u8) -> Color {
        Color([r, g, b])
    }
}

/// An owned RGB image (`height * width * 3` bytes, row-major), e.g. one frame of an episode GIF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Interleaved RGB bytes.
    pub rgb: Vec<u8>,
}

impl RgbImage {
    /// Borrows the image as a [`Frame`].
    pub fn frame(&self) -> Frame<'_> {
        Frame { width: self.width, height: self.height, rgb: &self.rgb }
    }
}

/// A drawing surface, allocated once per environment and redrawn on every `render()`.
#[derive(Clone, Debug)]
pub struct Canvas {
    image: RgbImage,
}

impl Canvas {
    /// A black `width x height` canvas.
    pub fn new(width: usize, height: usize) -> Self {
        Canvas { image: RgbImage { width, height, rgb: vec![0; width * height * 3] } }
    }

    /// The picture drawn so far.
    pub fn frame(&self) -> Frame<'_> {
        self.image.frame()
    }

    /// Paints every pixel.
    pub fn fill(&mut self, color: Color) {
        for px in self.image.rgb.chunks_exact_mut(3) {
            px.copy_from_slice(&color.0);
        }
    }

    fn put(&mut self, x: usize, y: usize, color: Color) {
        let i = (y * self.image.width + x) * 3;
        self.image.rgb[i..i + 3].copy_from_slice(&color.0);
    }

    /// Fills the rectangle `[x0, x1) x [y0, y1)` (rows counted from the top), clipped.
    pub fn fill_rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, color: Color) {
        for y in y0..y1.min(self.image.height) {
            for x in x0..x1.min(self.image.width) {
                self.put(x, y, color);
            }
        }
    }

    /// Fills a polygon of at most 8 vertices given with rows counted from the top.
    pub fn fill_polygon(&mut self, points: &[(f64, f64)], color: Color) {
        assert!(points.len() <= 8, "polygons have at most 8 vertices");
        let (ymin, ymax) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        let row_lo = ymin.floor().max(0.0) as usize;
        let row_hi = (ymax.ceil().max(0.0) as usize).min(self.image.height);
        for row in row_lo..row_hi {
            // Even-odd scanline through pixel centres; crossings sorted in a fixed array.
            let yc = row as f64 + 0.5;
            let mut xs = [0.0f64; 8];
            let mut n = 0;
            for i in 0..points.len() {
                let (a, b) = (points[i], points[(i + 1) % points.len()]);
                if (a.1 <= yc) != (b.1 <= yc) {
                    xs[n] = a.0 + (yc - a.1) / (b.1 - a.1) * (b.0 - a.0);
                    n += 1;
                }
            }
            let xs = &mut xs[..n];
            xs.sort_by(f64::total_cmp);
            for pair in xs.chunks_exact(2) {
                let x0 = (pair[0] - 0.5).ceil().max(0.0) as usize;
                let x1 = ((pair[1] - 0.5).floor() + 1.0).max(0.0) as usize;
                for x in x0..x1.min(self.image.width) {
                    self.put(x, row, color);
                }
            }
        }
    }

    /// Fills a disc centred at `(cx, cy)` (rows from the top).
    pub fn fill_circle(&mut self, cx: f64, cy: f64, radius: f64, color: Color) {
        let r2 = radius * radius;
        let y0 = (cy - radius).floor().max(0.0) as usize;
        let y1 = ((cy + radius).ceil() as usize + 1).min(self.image.height);
        let x0 = (cx - radius).floor().max(0.0) as usize;
        let x1 = ((cx + radius).ceil() as usize + 1).min(self.image.width);
        for y in y0..y1 {
            for x in x0..x1 {
                let (dx, dy) = (x as f64 - cx, y as f64 - cy);
                if dx * dx + dy * dy <= r2 {
                    self.put(x, y, color);
                }
            }
        }
    }

    fn flip_y(&self, y: f64) -> f64 {
        self.image.height as f64 - y
    }

    /// [`Canvas::fill_polygon`] with `y` pointing up, as Gymnasium's pygame code draws before
    /// flipping the surface.
    pub fn fill_polygon_y_up(&mut self, points: &[(f64, f64)], color: Color) {
        let mut flipped = [(0.0, 0.0); 8];
        for (f, p) in flipped.iter_mut().zip(points) {
            *f = (p.0, self.flip_y(p.1));
        }
        self.fill_polygon(&flipped[..points.len()], color);
    }

    /// [`Canvas::fill_circle`] with `y` pointing up.
    pub fn fill_circle_y_up(&mut self, cx: f64, cy: f64, radius: f64, color: Color) {
        let cy = self.image.height as f64 - 1.0 - cy;
        self.fill_circle(cx, cy, radius, color);
    }

    /// A full-width horizontal line at row `y` counted from the bottom.
    pub fn hline_y_up(&mut self, y: usize, color: Color) {
        if y < self.image.height {
            let row = self.image.height - 1 - y;
            self.fill_rect(0, row, self.image.width, row + 1, color);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polygon_fill_covers_pixel_centres_inside() {
        let mut c = Canvas::new(10, 10);
        c.fill_polygon(&[(2.0, 2.0), (2.0, 6.0), (5.0, 6.0), (5.0, 2.0)], Color::WHITE);
        let lit = c.frame().rgb.chunks_exact(3).filter(|p| p[0] == 255).count();
        assert_eq!(lit, 3 * 4);
        let at = |x: usize, y: usize| c.frame().rgb[(y * 10 + x) * 3];
        assert_eq!((at(2, 2), at(4, 5), at(5, 5), at(4, 6)), (255, 255, 0, 0));
    }
}
