//! The pixel half of the DQN preprocessing stack (Mnih et al. 2015; Machado et al. 2018; the
//! order of stable-baselines3's `common/atari_wrappers.py`): max over the last two frames,
//! area resize to 84x84 and a stack of the last 4 frames, plus reward sign clipping.
//!
//! Grayscale comes from ALE's own luminance palette (as Gymnasium's `AtariPreprocessing`), so
//! no colour conversion runs here. Everything works in buffers sized once, so a step allocates
//! nothing.

/// Reward clipping to `{-1, 0, +1}` (SB3's `ClipRewardEnv`: `np.sign`).
pub fn clip_reward(reward: f64) -> f64 {
    if reward > 0.0 {
        1.0
    } else if reward < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Pixel-wise maximum of two frames into `a` (SB3's `MaxAndSkipEnv`: removes the flicker of
/// sprites drawn every other frame).
pub fn max_into(a: &mut [u8], b: &[u8]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x = (*x).max(*y);
    }
}

/// One axis of an area resize: for each output index, the source span it covers and the share
/// of each source sample (its overlap with the output cell divided by the cell's size).
#[derive(Clone, Debug)]
struct AreaAxis {
    /// First source index per output index.
    start: Vec<usize>,
    /// Offsets into `weights` per output index (length n_out + 1).
    offsets: Vec<usize>,
    weights: Vec<f32>,
}

impl AreaAxis {
    fn new(n_in: usize, n_out: usize) -> Self {
        let scale = n_in as f64 / n_out as f64;
        let (mut start, mut offsets, mut weights) = (Vec::new(), vec![0], Vec::new());
        for o in 0..n_out {
            let (lo, hi) = (o as f64 * scale, ((o + 1) as f64 * scale).min(n_in as f64));
            let first = lo.floor() as usize;
            start.push(first);
            let mut i = first;
            while (i as f64) < hi {
                let overlap = (hi.min((i + 1) as f64) - lo.max(i as f64)).max(0.0);
                weights.push((overlap / (hi - lo)) as f32);
                i += 1;
            }
            offsets.push(weights.len());
        }
        AreaAxis { start, offsets, weights }
    }

    fn taps(&self, o: usize) -> (usize, &[f32]) {
        (self.start[o], &self.weights[self.offsets[o]..self.offsets[o + 1]])
    }
}

/// OpenCV's `INTER_AREA` resize (what SB3's `WarpFrame` and Gymnasium's `AtariPreprocessing`
/// call): each output pixel is the area-weighted mean of the source pixels under it, rounded to
/// nearest. It runs separably, columns first: whole-row multiply-adds that vectorise, leaving the
/// gather of the horizontal pass for the already shrunk rows.
#[derive(Clone, Debug)]
pub struct AreaResize {
    src: (usize, usize),
    dst: (usize, usize),
    channels: usize,
    cols: AreaAxis,
    rows: AreaAxis,
    /// Vertically resized rows: `dst_height x src_width x channels`.
    tmp: Vec<f32>,
}

impl AreaResize {
    /// A resize from `src = (height, width)` to `dst = (height, width)` with interleaved channels.
    pub fn new(src: (usize, usize), dst: (usize, usize), channels: usize) -> Self {
        AreaResize {
            src,
            dst,
            channels,
            cols: AreaAxis::new(src.1, dst.1),
            rows: AreaAxis::new(src.0, dst.0),
            tmp: vec![0.0; dst.0 * src.1 * channels],
        }
    }

    /// Resizes `input` (`src` sized) into `out` (`dst` sized).
    pub fn run(&mut self, input: &[u8], out: &mut [u8]) {
        let c = self.channels;
        let (src_row, dst_row) = (self.src.1 * c, self.dst.1 * c);
        assert_eq!(input.len(), self.src.0 * src_row, "resize input size");
        assert_eq!(out.len(), self.dst.0 * dst_row, "resize output size");
        for (y, acc) in self.tmp.chunks_exact_mut(src_row).enumerate() {
            let (first, weights) = self.rows.taps(y);
            acc.fill(0.0);
            for (k, &w) in weights.iter().enumerate() {
                let row = &input[(first + k) * src_row..][..src_row];
                for (a, &p) in acc.iter_mut().zip(row) {
                    *a += w * p as f32;
                }
            }
        }
        for (acc, row_out) in self.tmp.chunks_exact(src_row).zip(out.chunks_exact_mut(dst_row)) {
            for x in 0..self.dst.1 {
                let (first, weights) = self.cols.taps(x);
                let span = &acc[first * c..][..weights.len() * c];
                if c == 1 {
                    // Grayscale, the DQN case: a plain dot product, without strided indexing.
                    let sum: f32 = weights.iter().zip(span).map(|(w, p)| w * p).sum();
                    row_out[x] = to_u8(sum);
                    continue;
                }
                for ch in 0..c {
                    let sum: f32 = weights.iter().enumerate().map(|(k, &w)| w * span[k * c + ch]).sum();
                    row_out[x * c + ch] = to_u8(sum);
                }
            }
        }
    }
}

/// Rounds a non-negative mean of bytes to the nearest byte. `f32::round` is a libm call on
/// baseline x86-64 (no SSE4.1), which cost more than the rest of the resize; adding one half
/// and truncating with Rust's saturating cast rounds the same except on exact ties.
#[inline]
fn to_u8(v: f32) -> u8 {
    (v + 0.5) as u8
}

/// The last `k` frames, oldest first, in one contiguous buffer the network reads directly.
#[derive(Clone, Debug)]
pub struct FrameStack {
    frame_len: usize,
    data: Vec<u8>,
}

impl FrameStack {
    /// A stack of `k` frames of `frame_len` bytes.
    pub fn new(k: usize, frame_len: usize) -> Self {
        FrameStack { frame_len, data: vec![0; k * frame_len] }
    }

    /// Drops the oldest frame and returns the slot for the newest, to be written in place.
    pub fn push_slot(&mut self) -> &mut [u8] {
        self.data.copy_within(self.frame_len.., 0);
        let n = self.data.len();
        &mut self.data[n - self.frame_len..]
    }

    /// After a reset: repeats the newest frame in every slot (Gymnasium's `FrameStackObservation`
    /// with `padding_type="reset"`).
    pub fn fill_with_newest(&mut self) {
        let n = self.data.len();
        let (older, newest) = self.data.split_at_mut(n - self.frame_len);
        for slot in older.chunks_exact_mut(self.frame_len) {
            slot.copy_from_slice(newest);
        }
    }

    /// The stacked frames, oldest first.
    pub fn frames(&self) -> &[u8] {
        &self.data
    }
}

/// Max-pool, resize and stack in one place: what an agent step costs beyond emulation
/// (`benches/env.rs` measures it against the emulator).
#[derive(Clone, Debug)]
pub struct Preprocessor {
    resize: Option<AreaResize>,
    stack: FrameStack,
}

impl Preprocessor {
    /// Frames of `src = (height, width)` with `channels`, resized to `size x size` if given, stacked
    /// by `k`.
    pub fn new(src: (usize, usize), channels: usize, size: Option<usize>, k: usize) -> Self {
        let out = size.map_or(src, |s| (s, s));
        Preprocessor {
            resize: size.map(|s| AreaResize::new(src, (s, s), channels)),
            stack: FrameStack::new(k, out.0 * out.1 * channels),
        }
    }

    /// Pushes a new observation built from the last frame and, when given, the frame before it
    /// (max-pooled into `last`); `reset` fills the stack with it.
    pub fn push(&mut self, last: &mut [u8], previous: Option<&[u8]>, reset: bool) -> &[u8] {
        if let Some(previous) = previous {
            max_into(last, previous);
        }
        let slot = self.stack.push_slot();
        match &mut self.resize {
            Some(resize) => resize.run(last, slot),
            None => slot.copy_from_slice(last),
        }
        if reset {
            self.stack.fill_with_newest();
        }
        self.stack.frames()
    }

    /// The current stacked observation.
    pub fn frames(&self) -> &[u8] {
        self.stack.frames()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_resize_averages_whole_and_partial_pixels() {
        // 4 -> 2 is a plain 2x2 mean.
        let mut r = AreaResize::new((2, 4), (1, 2), 1);
        let mut out = [0u8; 2];
        r.run(&[0, 10, 20, 30, 2, 12, 22, 32], &mut out);
        assert_eq!(out, [6, 26]);
        // 5 -> 2: each output covers 2.5 inputs, the middle one split in half.
        let mut r = AreaResize::new((1, 5), (1, 2), 1);
        r.run(&[10, 20, 30, 40, 50], &mut out);
        assert_eq!(out, [18, 42]); // (10 + 20 + 15) / 2.5 = 18, (15 + 40 + 50) / 2.5 = 42
                                   // A constant image stays constant at the DQN size.
        let mut r = AreaResize::new((210, 160), (84, 84), 1);
        let mut out = vec![0u8; 84 * 84];
        r.run(&vec![77u8; 210 * 160], &mut out);
        assert!(out.iter().all(|&p| p == 77));
    }

    #[test]
    fn frame_stack_keeps_the_newest_frame_last() {
        let mut s = FrameStack::new(3, 2);
        s.push_slot().copy_from_slice(&[1, 1]);
        s.fill_with_newest();
        assert_eq!(s.frames(), &[1, 1, 1, 1, 1, 1]);
        s.push_slot().copy_from_slice(&[2, 2]);
        s.push_slot().copy_from_slice(&[3, 3]);
        assert_eq!(s.frames(), &[1, 1, 2, 2, 3, 3]);
    }

    #[test]
    fn max_pool_and_clip() {
        let mut a = [1, 5, 3];
        max_into(&mut a, &[4, 2, 3]);
        assert_eq!(a, [4, 5, 3]);
        assert_eq!([clip_reward(7.0), clip_reward(-0.5), clip_reward(0.0)], [1.0, -1.0, 0.0]);
    }
}
