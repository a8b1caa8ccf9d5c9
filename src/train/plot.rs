//! Loss curves as PNG (png crate), drawn by hand: white background, frame with ticks and numeric tick labels,
//! grid, axis labels, title, a light raw curve and a bold smoothed one, a legend. Text uses the small bitmap font
//! embedded below (printable ASCII, 5x7 cells with 2 descender rows), so no font file and no extra crate.
//! Spec: this file   Test: tests/runout.rs (smooth_*, plot_*)
//!
//! smooth() is LLaMA-Factory's (extras/ploting.py), "EMA implementation according to TensorBoard":
//!   w = 1.8 * (1 / (1 + exp(-0.05 * len)) - 0.5);   s_0 = x_0;   s_i = w * s_{i-1} + (1 - w) * x_i
//! (s_0 = w x_0 + (1 - w) x_0 = x_0). w grows with the number of points: 0.0225 for 1 point, 0.83 for 100.
//! Files as LLaMA-Factory's `plot_loss(output_dir, keys=["loss", "eval_loss"])`: training_loss.png and
//! training_eval_loss.png, title "training {key} of {output_dir}", x = "step" of each log_history entry.
//! Contract easy to miss: non-finite values are skipped (the line joins their neighbours, and a NaN loss cannot wreck the
//! axis range); lines are anti-aliased by distance-to-segment coverage, drawn per curve into a coverage mask and
//! composited once, so a translucent curve has no darker dots where its segments meet.

use crate::error::Result;
use crate::train::checkpoint::write_bytes_atomic;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Image size: LLaMA-Factory's matplotlib default is 640x480 at dpi 100; larger reads better with a bitmap font.
const WIDTH: usize = 900;
const HEIGHT: usize = 600;
/// matplotlib's tab10 colour cycle; the first is LLaMA-Factory's "#1f77b4".
const PALETTE: [[u8; 3]; 6] = [
    [0x1f, 0x77, 0xb4],
    [0xff, 0x7f, 0x0e],
    [0x2c, 0xa0, 0x2c],
    [0xd6, 0x27, 0x28],
    [0x94, 0x67, 0xbd],
    [0x8c, 0x56, 0x4b],
];
/// LLaMA-Factory draws the raw curve with alpha 0.4.
const RAW_ALPHA: f32 = 0.4;
const RAW_WIDTH: f32 = 1.5;
const BOLD_WIDTH: f32 = 2.5;
const BLACK: [u8; 3] = [0, 0, 0];
const GRID: [u8; 3] = [0xe6, 0xe6, 0xe6];
/// Text is the 5x9 font scaled by 2: 10x18 px cells, 12 px advance.
const TEXT_SCALE: usize = 2;
/// Fraction of the data range added on each side (matplotlib's default margin is 0.05).
const MARGIN: f64 = 0.04;

/// LLaMA-Factory's `smooth` (see the header).
pub fn smooth(scalars: &[f64]) -> Vec<f64> {
    let Some(&first) = scalars.first() else { return Vec::new() };
    let weight = 1.8 * (1.0 / (1.0 + (-0.05 * scalars.len() as f64).exp()) - 0.5);
    let mut last = first;
    scalars
        .iter()
        .map(|&x| {
            last = last * weight + (1.0 - weight) * x;
            last
        })
        .collect()
}

// ---- font: printable ASCII, 5 columns, up to 9 rows ('#' on), rows 0..6 are the cap height, 7..8 descenders.
const FONT: &[(char, &str)] = &[
    (' ', ""),
    ('!', "..#..|..#..|..#..|..#..|..#..|.....|..#.."),
    ('"', ".#.#.|.#.#.|.#.#."),
    ('#', ".#.#.|.#.#.|#####|.#.#.|#####|.#.#.|.#.#."),
    ('$', "..#..|.####|#.#..|.###.|..#.#|####.|..#.."),
    ('%', "##...|##..#|...#.|..#..|.#...|#..##|...##"),
    ('&', ".##..|#..#.|#.#..|.#...|#.#.#|#..#.|.##.#"),
    ('\'', "..#..|..#..|..#.."),
    ('(', "...#.|..#..|.#...|.#...|.#...|..#..|...#."),
    (')', ".#...|..#..|...#.|...#.|...#.|..#..|.#..."),
    ('*', ".....|..#..|#.#.#|.###.|#.#.#|..#..|....."),
    ('+', ".....|..#..|..#..|#####|..#..|..#..|....."),
    (',', ".....|.....|.....|.....|.....|..#..|..#..|.#..."),
    ('-', ".....|.....|.....|#####"),
    ('.', ".....|.....|.....|.....|.....|.##..|.##.."),
    ('/', ".....|....#|...#.|..#..|.#...|#...."),
    ('0', ".###.|#...#|#..##|#.#.#|##..#|#...#|.###."),
    ('1', "..#..|.##..|..#..|..#..|..#..|..#..|.###."),
    ('2', ".###.|#...#|....#|...#.|..#..|.#...|#####"),
    ('3', "#####|...#.|..#..|...#.|....#|#...#|.###."),
    ('4', "...#.|..##.|.#.#.|#..#.|#####|...#.|...#."),
    ('5', "#####|#....|####.|....#|....#|#...#|.###."),
    ('6', "..##.|.#...|#....|####.|#...#|#...#|.###."),
    ('7', "#####|....#|...#.|..#..|.#...|.#...|.#..."),
    ('8', ".###.|#...#|#...#|.###.|#...#|#...#|.###."),
    ('9', ".###.|#...#|#...#|.####|....#|...#.|.##.."),
    (':', ".....|.##..|.##..|.....|.##..|.##.."),
    (';', ".....|.##..|.##..|.....|.##..|.##..|.#..."),
    ('<', "...#.|..#..|.#...|#....|.#...|..#..|...#."),
    ('=', ".....|.....|#####|.....|#####"),
    ('>', ".#...|..#..|...#.|....#|...#.|..#..|.#..."),
    ('?', ".###.|#...#|....#|...#.|..#..|.....|..#.."),
    ('@', ".###.|#...#|....#|.##.#|#.#.#|#.#.#|.###."),
    ('A', ".###.|#...#|#...#|#####|#...#|#...#|#...#"),
    ('B', "####.|#...#|#...#|####.|#...#|#...#|####."),
    ('C', ".###.|#...#|#....|#....|#....|#...#|.###."),
    ('D', "###..|#..#.|#...#|#...#|#...#|#..#.|###.."),
    ('E', "#####|#....|#....|####.|#....|#....|#####"),
    ('F', "#####|#....|#....|####.|#....|#....|#...."),
    ('G', ".###.|#...#|#....|#.###|#...#|#...#|.####"),
    ('H', "#...#|#...#|#...#|#####|#...#|#...#|#...#"),
    ('I', ".###.|..#..|..#..|..#..|..#..|..#..|.###."),
    ('J', "..###|...#.|...#.|...#.|...#.|#..#.|.##.."),
    ('K', "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#"),
    ('L', "#....|#....|#....|#....|#....|#....|#####"),
    ('M', "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#"),
    ('N', "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#"),
    ('O', ".###.|#...#|#...#|#...#|#...#|#...#|.###."),
    ('P', "####.|#...#|#...#|####.|#....|#....|#...."),
    ('Q', ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#"),
    ('R', "####.|#...#|#...#|####.|#.#..|#..#.|#...#"),
    ('S', ".####|#....|#....|.###.|....#|....#|####."),
    ('T', "#####|..#..|..#..|..#..|..#..|..#..|..#.."),
    ('U', "#...#|#...#|#...#|#...#|#...#|#...#|.###."),
    ('V', "#...#|#...#|#...#|#...#|#...#|.#.#.|..#.."),
    ('W', "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#."),
    ('X', "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#"),
    ('Y', "#...#|#...#|.#.#.|..#..|..#..|..#..|..#.."),
    ('Z', "#####|....#|...#.|..#..|.#...|#....|#####"),
    ('[', ".###.|.#...|.#...|.#...|.#...|.#...|.###."),
    ('\\', ".....|#....|.#...|..#..|...#.|....#"),
    (']', ".###.|...#.|...#.|...#.|...#.|...#.|.###."),
    ('^', "..#..|.#.#.|#...#"),
    ('_', ".....|.....|.....|.....|.....|.....|#####"),
    ('`', ".#...|..#..|...#."),
    ('a', ".....|.....|.###.|....#|.####|#...#|.####"),
    ('b', "#....|#....|#.##.|##..#|#...#|#...#|####."),
    ('c', ".....|.....|.###.|#....|#....|#...#|.###."),
    ('d', "....#|....#|.##.#|#..##|#...#|#...#|.####"),
    ('e', ".....|.....|.###.|#...#|#####|#....|.###."),
    ('f', "..##.|.#..#|.#...|###..|.#...|.#...|.#..."),
    ('g', ".....|.....|.####|#...#|#...#|.####|....#|#...#|.###."),
    ('h', "#....|#....|#.##.|##..#|#...#|#...#|#...#"),
    ('i', "..#..|.....|.##..|..#..|..#..|..#..|.###."),
    ('j', "...#.|.....|..##.|...#.|...#.|...#.|...#.|#..#.|.##.."),
    ('k', "#....|#....|#..#.|#.#..|##...|#.#..|#..#."),
    ('l', ".##..|..#..|..#..|..#..|..#..|..#..|.###."),
    ('m', ".....|.....|##.#.|#.#.#|#.#.#|#...#|#...#"),
    ('n', ".....|.....|#.##.|##..#|#...#|#...#|#...#"),
    ('o', ".....|.....|.###.|#...#|#...#|#...#|.###."),
    ('p', ".....|.....|####.|#...#|#...#|####.|#....|#....|#...."),
    ('q', ".....|.....|.####|#...#|#...#|.####|....#|....#|....#"),
    ('r', ".....|.....|#.##.|##..#|#....|#....|#...."),
    ('s', ".....|.....|.####|#....|.###.|....#|####."),
    ('t', ".#...|.#...|###..|.#...|.#...|.#..#|..##."),
    ('u', ".....|.....|#...#|#...#|#...#|#..##|.##.#"),
    ('v', ".....|.....|#...#|#...#|#...#|.#.#.|..#.."),
    ('w', ".....|.....|#...#|#...#|#.#.#|#.#.#|.#.#."),
    ('x', ".....|.....|#...#|.#.#.|..#..|.#.#.|#...#"),
    ('y', ".....|.....|#...#|#...#|#...#|.####|....#|#...#|.###."),
    ('z', ".....|.....|#####|...#.|..#..|.#...|#####"),
    ('{', "...#.|..#..|..#..|.#...|..#..|..#..|...#."),
    ('|', "..#..|..#..|..#..|..#..|..#..|..#..|..#.."),
    ('}', ".#...|..#..|..#..|...#.|..#..|..#..|.#..."),
    ('~', ".....|.....|.#...|#.#.#|...#."),
];
const GLYPH_W: usize = 5;
const GLYPH_H: usize = 9;
/// Pixels (unscaled) from one character to the next.
const ADVANCE: usize = GLYPH_W + 1;

/// Bitmap rows of `c` (bit 4 = leftmost column); characters outside the font draw as '?'.
pub fn glyph(c: char) -> [u8; GLYPH_H] {
    let art = FONT.iter().find(|(k, _)| *k == c).or_else(|| FONT.iter().find(|(k, _)| *k == '?')).map_or("", |g| g.1);
    let mut rows = [0u8; GLYPH_H];
    for (r, line) in art.split('|').enumerate().take(GLYPH_H) {
        for (i, ch) in line.bytes().take(GLYPH_W).enumerate() {
            if ch == b'#' {
                rows[r] |= 1 << (GLYPH_W - 1 - i);
            }
        }
    }
    rows
}

/// Every glyph of the font is 5 columns of '.'/'#' and at most 9 rows (checked by the tests).
pub fn font_is_well_formed() -> bool {
    FONT.len() == 95
        && FONT.iter().enumerate().all(|(i, (c, art))| {
            *c as u32 == 32 + i as u32
                && (art.is_empty()
                    || art.split('|').count() <= GLYPH_H
                        && art.split('|').all(|l| l.len() == GLYPH_W && l.bytes().all(|b| b == b'.' || b == b'#')))
        })
}

/// Width in pixels of `text` drawn at `scale`.
pub fn text_width(text: &str, scale: usize) -> usize {
    let n = text.chars().count();
    if n == 0 {
        0
    } else {
        (n * ADVANCE - 1) * scale
    }
}

/// An RGB image.
struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>, // (H, W, 3)
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Canvas { w, h, rgb: vec![255; w * h * 3] }
    }
    /// Blends `color` over pixel (x, y) with opacity `a` in [0, 1]; outside the image is ignored.
    fn blend(&mut self, x: i64, y: i64, color: [u8; 3], a: f32) {
        if x < 0 || y < 0 || x as usize >= self.w || y as usize >= self.h || a <= 0.0 {
            return;
        }
        let i = (y as usize * self.w + x as usize) * 3;
        let a = a.min(1.0);
        for c in 0..3 {
            let old = self.rgb[i + c] as f32;
            self.rgb[i + c] = (old + (color[c] as f32 - old) * a).round() as u8;
        }
    }
    fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, color: [u8; 3]) {
        for y in y0..y1 {
            for x in x0..x1 {
                self.blend(x, y, color, 1.0);
            }
        }
    }
    fn hline(&mut self, x0: i64, x1: i64, y: i64, color: [u8; 3]) {
        self.fill_rect(x0, y, x1 + 1, y + 1, color);
    }
    fn vline(&mut self, x: i64, y0: i64, y1: i64, color: [u8; 3]) {
        self.fill_rect(x, y0, x + 1, y1 + 1, color);
    }
    /// Text with its top-left corner at (x, y).
    fn text(&mut self, x: i64, y: i64, text: &str, scale: usize, color: [u8; 3]) {
        let s = scale as i64;
        for (k, c) in text.chars().enumerate() {
            let ox = x + (k * ADVANCE * scale) as i64;
            for (r, bits) in glyph(c).iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits & (1 << (GLYPH_W - 1 - col)) != 0 {
                        let (px, py) = (ox + col as i64 * s, y + r as i64 * s);
                        self.fill_rect(px, py, px + s, py + s, color);
                    }
                }
            }
        }
    }
    /// Text rotated 90° counter-clockwise (reads bottom to top); (x, y) is the bottom-left of the text run.
    fn text_up(&mut self, x: i64, y: i64, text: &str, scale: usize, color: [u8; 3]) {
        let s = scale as i64;
        for (k, c) in text.chars().enumerate() {
            let oy = y - (k * ADVANCE * scale) as i64;
            for (r, bits) in glyph(c).iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits & (1 << (GLYPH_W - 1 - col)) != 0 {
                        // glyph column -> up, glyph row -> right
                        let (px, py) = (x + r as i64 * s, oy - (col as i64 + 1) * s);
                        self.fill_rect(px, py, px + s, py + s, color);
                    }
                }
            }
        }
    }
    /// Composites a coverage mask (H, W) in `color` with opacity `alpha`.
    fn composite(&mut self, mask: &[f32], color: [u8; 3], alpha: f32) {
        for y in 0..self.h {
            for x in 0..self.w {
                let m = mask[y * self.w + x];
                if m > 0.0 {
                    self.blend(x as i64, y as i64, color, m * alpha);
                }
            }
        }
    }
    fn encode_png(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let perr = |e: png::EncodingError| crate::error::Error::msg(format!("png encode: {e}"));
        {
            let mut enc = png::Encoder::new(&mut out, self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut wr = enc.write_header().map_err(perr)?;
            wr.write_image_data(&self.rgb).map_err(perr)?;
            wr.finish().map_err(perr)?;
        }
        Ok(out)
    }
}

/// Anti-aliased thick segment into a coverage mask (H, W): coverage = clamp(half_width + 0.5 - distance, 0, 1),
/// distance from the pixel centre to the segment; max with what is there (no double-blending at joints).
fn stroke_segment(mask: &mut [f32], w: usize, h: usize, a: (f64, f64), b: (f64, f64), width: f32, clip: [f64; 4]) {
    let hw = width as f64 / 2.0;
    let pad = hw + 1.0;
    let x0 = (a.0.min(b.0) - pad).floor().max(clip[0]) as i64;
    let x1 = (a.0.max(b.0) + pad).ceil().min(clip[2]) as i64;
    let y0 = (a.1.min(b.1) - pad).floor().max(clip[1]) as i64;
    let y1 = (a.1.max(b.1) + pad).ceil().min(clip[3]) as i64;
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    for y in y0.max(0)..=y1.min(h as i64 - 1) {
        for x in x0.max(0)..=x1.min(w as i64 - 1) {
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            let t = if len2 > 0.0 { (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
            let (qx, qy) = (a.0 + t * dx - px, a.1 + t * dy - py);
            let cov = (hw + 0.5 - (qx * qx + qy * qy).sqrt()).clamp(0.0, 1.0) as f32;
            let m = &mut mask[y as usize * w + x as usize];
            if cov > *m {
                *m = cov;
            }
        }
    }
}

/// About `target` round-number ticks (1, 2, 5 × 10^k apart) covering [lo, hi].
fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let raw = (hi - lo) / target as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = mag
        * if norm < 1.5 {
            1.0
        } else if norm < 3.0 {
            2.0
        } else if norm < 7.0 {
            5.0
        } else {
            10.0
        };
    let mut ticks = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + step * 1e-9 && ticks.len() < 50 {
        ticks.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    (ticks, step)
}

/// Tick label with as many decimals as the tick step needs; scientific for very large or small values.
fn tick_label(v: f64, step: f64) -> String {
    let big = v.abs().max(step);
    if big >= 1e6 || step < 1e-5 {
        return crate::train::progress::format_sci(v, 2);
    }
    let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
    // A step like 0.25 needs one more decimal than its magnitude says.
    let decimals = if ((step * 10f64.powi(decimals as i32)).round() - step * 10f64.powi(decimals as i32)).abs() > 1e-6 {
        decimals + 1
    } else {
        decimals
    };
    format!("{v:.decimals$}")
}

/// Data range with a margin; a flat or empty range is widened so the axis is still readable.
fn padded_range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let d = (lo.abs() * 0.1).max(0.5);
        return (lo - d, hi + d);
    }
    let m = (hi - lo) * MARGIN;
    (lo - m, hi + m)
}

/// Shortens `s` from the left with "..." so it fits in `max_px` at `scale`.
fn fit_text(s: &str, max_px: usize, scale: usize) -> String {
    if text_width(s, scale) <= max_px {
        return s.to_string();
    }
    let max_chars = (max_px / scale + 1) / ADVANCE;
    let keep = max_chars.saturating_sub(3);
    let chars: Vec<char> = s.chars().collect();
    format!("...{}", chars[chars.len() - keep.min(chars.len())..].iter().collect::<String>())
}

/// One curve to draw: points, colour, opacity, width, legend label.
struct Curve {
    pts: Vec<(f64, f64)>,
    color: [u8; 3],
    alpha: f32,
    width: f32,
    label: String,
}

/// Draws `series` (name, points (x, y)) into a PNG at `path` (written atomically). With `smooth_first`, the first
/// series is drawn as LLaMA-Factory draws a loss: raw curve light (alpha 0.4), `smooth()` of it bold, legend
/// "{name}" and "{name} (smoothed)"; every other series is a bold line in the next colour. Non-finite points
/// are dropped; an empty plot still gets axes.
pub fn plot_curve(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(&str, &[(f64, f64)])],
    smooth_first: bool,
) -> Result<()> {
    let mut curves = Vec::new();
    for (i, (name, pts)) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        let color = PALETTE[i % PALETTE.len()];
        if i == 0 && smooth_first {
            let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
            let sm: Vec<(f64, f64)> = pts.iter().zip(smooth(&ys)).map(|(p, s)| (p.0, s)).collect();
            curves.push(Curve { pts, color, alpha: RAW_ALPHA, width: RAW_WIDTH, label: name.to_string() });
            curves.push(Curve { pts: sm, color, alpha: 1.0, width: BOLD_WIDTH, label: format!("{name} (smoothed)") });
        } else {
            curves.push(Curve { pts, color, alpha: 1.0, width: BOLD_WIDTH, label: name.to_string() });
        }
    }
    let png = render_png(title, xlabel, ylabel, &curves)?;
    write_bytes_atomic(path, &png)
}

fn render_png(title: &str, xlabel: &str, ylabel: &str, curves: &[Curve]) -> Result<Vec<u8>> {
    let (w, h) = (WIDTH, HEIGHT);
    let mut cv = Canvas::new(w, h);
    let (xr, yr) = (
        padded_range(curves.iter().flat_map(|c| c.pts.iter().map(|p| p.0))),
        padded_range(curves.iter().flat_map(|c| c.pts.iter().map(|p| p.1))),
    );
    let (xticks, xstep) = nice_ticks(xr.0, xr.1, 8);
    let (yticks, ystep) = nice_ticks(yr.0, yr.1, 6);
    let ylabels: Vec<String> = yticks.iter().map(|&v| tick_label(v, ystep)).collect();
    let ylab_w = ylabels.iter().map(|s| text_width(s, TEXT_SCALE)).max().unwrap_or(0);
    let char_h = GLYPH_H * TEXT_SCALE;
    let cap_h = 7 * TEXT_SCALE;
    // Plot area: room on the left for the rotated y label and the tick labels, below for ticks + x label.
    let left = (12 + char_h + 10 + ylab_w + 10) as f64;
    let (right, top, bottom) = ((w - 30) as f64, 56.0, (h - 64) as f64);
    let px = |x: f64| left + (x - xr.0) / (xr.1 - xr.0) * (right - left);
    let py = |y: f64| bottom - (y - yr.0) / (yr.1 - yr.0) * (bottom - top);

    // Grid, frame, ticks, tick labels.
    for &t in &xticks {
        let x = px(t).round() as i64;
        cv.vline(x, top as i64, bottom as i64, GRID);
    }
    for &t in &yticks {
        let y = py(t).round() as i64;
        cv.hline(left as i64, right as i64, y, GRID);
    }
    cv.hline(left as i64, right as i64, top as i64, BLACK);
    cv.hline(left as i64, right as i64, bottom as i64, BLACK);
    cv.vline(left as i64, top as i64, bottom as i64, BLACK);
    cv.vline(right as i64, top as i64, bottom as i64, BLACK);
    for &t in &xticks {
        let x = px(t).round() as i64;
        cv.vline(x, bottom as i64, bottom as i64 + 5, BLACK);
        let s = tick_label(t, xstep);
        cv.text(x - text_width(&s, TEXT_SCALE) as i64 / 2, bottom as i64 + 9, &s, TEXT_SCALE, BLACK);
    }
    for (&t, s) in yticks.iter().zip(&ylabels) {
        let y = py(t).round() as i64;
        cv.hline(left as i64 - 5, left as i64, y, BLACK);
        let tx = left as i64 - 9 - text_width(s, TEXT_SCALE) as i64;
        cv.text(tx, y - cap_h as i64 / 2, s, TEXT_SCALE, BLACK);
    }

    // Title, axis labels.
    let title = fit_text(title, w - 20, TEXT_SCALE);
    cv.text((w - text_width(&title, TEXT_SCALE)) as i64 / 2, 18, &title, TEXT_SCALE, BLACK);
    let xl = fit_text(xlabel, w - 20, TEXT_SCALE);
    let mid_x = ((left + right) / 2.0) as i64;
    cv.text(
        mid_x - text_width(&xl, TEXT_SCALE) as i64 / 2,
        bottom as i64 + 9 + char_h as i64 + 8,
        &xl,
        TEXT_SCALE,
        BLACK,
    );
    let yl = fit_text(ylabel, (bottom - top) as usize, TEXT_SCALE);
    let mid_y = ((top + bottom) / 2.0) as i64;
    cv.text_up(12, mid_y + text_width(&yl, TEXT_SCALE) as i64 / 2, &yl, TEXT_SCALE, BLACK);

    // Curves, clipped to the inside of the frame.
    let clip = [left + 1.0, top + 1.0, right - 1.0, bottom - 1.0];
    for c in curves {
        let mut mask = vec![0f32; w * h]; // (H, W)
        let pts: Vec<(f64, f64)> = c.pts.iter().map(|&(x, y)| (px(x), py(y))).collect();
        if pts.len() == 1 {
            // A lone point: a dot, so it is visible at all.
            stroke_segment(&mut mask, w, h, pts[0], pts[0], c.width + 3.0, clip);
        }
        for seg in pts.windows(2) {
            stroke_segment(&mut mask, w, h, seg[0], seg[1], c.width, clip);
        }
        cv.composite(&mask, c.color, c.alpha);
    }

    // Legend, top right inside the frame.
    let labels: Vec<&Curve> = curves.iter().filter(|c| !c.label.is_empty()).collect();
    if !labels.is_empty() {
        let sample = 32usize;
        let row_h = char_h + 6;
        let lw = labels.iter().map(|c| text_width(&c.label, TEXT_SCALE)).max().unwrap_or(0) + sample + 30;
        let lh = labels.len() * row_h + 10;
        let (lx, ly) = (right as i64 - 10 - lw as i64, top as i64 + 10);
        cv.fill_rect(lx, ly, lx + lw as i64, ly + lh as i64, [255, 255, 255]);
        cv.hline(lx, lx + lw as i64, ly, [0xbb; 3]);
        cv.hline(lx, lx + lw as i64, ly + lh as i64, [0xbb; 3]);
        cv.vline(lx, ly, ly + lh as i64, [0xbb; 3]);
        cv.vline(lx + lw as i64, ly, ly + lh as i64, [0xbb; 3]);
        for (i, c) in labels.iter().enumerate() {
            let cy = ly + 5 + (i * row_h) as i64 + cap_h as i64 / 2 + 2;
            let mut mask = vec![0f32; w * h];
            let a = ((lx + 10) as f64, cy as f64 + 0.5);
            let b = ((lx + 10 + sample as i64) as f64, cy as f64 + 0.5);
            stroke_segment(&mut mask, w, h, a, b, c.width, [0.0, 0.0, w as f64, h as f64]);
            cv.composite(&mask, c.color, c.alpha);
            cv.text(lx + 20 + sample as i64, cy - cap_h as i64 / 2, &c.label, TEXT_SCALE, BLACK);
        }
    }
    cv.encode_png()
}

/// LLaMA-Factory's `plot_loss(output_dir, keys=["loss", "eval_loss"])` from HF-style log_history entries
/// ({"loss": .., "step": ..}): writes training_loss.png from "loss" and training_eval_loss.png from "eval_loss",
/// each only when some entry has that key (and a numeric "step"). Returns the written paths.
pub fn plot_loss(output_dir: &Path, log_history: &[Value]) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for key in ["loss", "eval_loss"] {
        let pts: Vec<(f64, f64)> =
            log_history.iter().filter_map(|e| Some((e.get("step")?.as_f64()?, e.get(key)?.as_f64()?))).collect();
        if pts.is_empty() {
            continue;
        }
        let path = output_dir.join(format!("training_{key}.png"));
        let title = format!("training {key} of {}", output_dir.display());
        plot_curve(&path, &title, "step", key, &[(key, &pts)], true)?;
        written.push(path);
    }
    Ok(written)
}
