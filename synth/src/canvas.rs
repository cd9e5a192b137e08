//! Drawing primitives of the procedural radiograph: a density canvas in normalised
//! coordinates and a smooth value-noise texture.

use pipeline::rng::Rng;

/// A density canvas in normalised coordinates (x right, y down, both 0..1).
pub struct Canvas {
    pub w: usize,
    pub h: usize,
    /// Density, row-major.
    pub d: Vec<f32>,
}

pub fn smooth(t: f32) -> f32 {
    let t = t.clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

impl Canvas {
    pub fn new(w: usize, h: usize) -> Self {
        Self { w, h, d: vec![0.0; w * h] }
    }

    fn px(&self, x: f32) -> isize {
        (x * self.w as f32).floor() as isize
    }
    fn py(&self, y: f32) -> isize {
        (y * self.h as f32).floor() as isize
    }
    fn xs(&self, c: isize) -> f32 {
        (c as f32 + 0.5) / self.w as f32
    }
    fn ys(&self, r: isize) -> f32 {
        (r as f32 + 0.5) / self.h as f32
    }
    fn clip(&self, x0: f32, x1: f32, y0: f32, y1: f32) -> (usize, usize, usize, usize) {
        let c0 = self.px(x0).clamp(0, self.w as isize) as usize;
        let c1 = (self.px(x1) + 1).clamp(0, self.w as isize) as usize;
        let r0 = self.py(y0).clamp(0, self.h as isize) as usize;
        let r1 = (self.py(y1) + 1).clamp(0, self.h as isize) as usize;
        (c0, c1, r0, r1)
    }

    /// Visits every pixel of the bounding box with its normalised coordinates.
    pub fn each(&mut self, x0: f32, x1: f32, y0: f32, y1: f32, mut f: impl FnMut(f32, f32, &mut f32)) {
        let (c0, c1, r0, r1) = self.clip(x0, x1, y0, y1);
        let (w, h) = (self.w as f32, self.h as f32);
        for r in r0..r1 {
            let y = (r as f32 + 0.5) / h;
            let row = &mut self.d[r * self.w..(r + 1) * self.w];
            for (c, v) in row.iter_mut().enumerate().take(c1).skip(c0) {
                f((c as f32 + 0.5) / w, y, v);
            }
        }
    }

    /// Filled ellipse with a soft edge (`soft` as a fraction of the radius).
    pub fn ellipse(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, amp: f32, soft: f32) {
        let (ix, iy) = (1.0 / rx, 1.0 / ry);
        let pad = 1.0 + soft;
        self.each(cx - rx * pad, cx + rx * pad, cy - ry * pad, cy + ry * pad, |x, y, v| {
            let dx = (x - cx) * ix;
            let dy = (y - cy) * iy;
            let d = (dx * dx + dy * dy).sqrt();
            *v += amp * smooth((1.0 + soft - d) / (2.0 * soft).max(1e-4));
        });
    }

    /// Gaussian blob.
    pub fn blob(&mut self, cx: f32, cy: f32, sx: f32, sy: f32, amp: f32) {
        let (a, b) = (0.5 / (sx * sx), 0.5 / (sy * sy));
        self.each(cx - 3.0 * sx, cx + 3.0 * sx, cy - 3.0 * sy, cy + 3.0 * sy, |x, y, v| {
            let e = (x - cx) * (x - cx) * a + (y - cy) * (y - cy) * b;
            *v += amp * (-e).exp();
        });
    }

    /// A band along `y = f(x)` for x in [x0, x1], half thickness `t`.
    pub fn band_x(&mut self, x0: f32, x1: f32, t: f32, amp: f32, f: impl Fn(f32) -> f32) {
        let (c0, c1, _, _) = self.clip(x0, x1, 0.0, 0.0);
        for c in c0..c1 {
            let x = self.xs(c as isize);
            let yc = f(x);
            let (r0, r1) = (self.py(yc - 2.0 * t).max(0), (self.py(yc + 2.0 * t) + 1).min(self.h as isize));
            for r in r0..r1.max(r0) {
                let y = self.ys(r);
                let k = 1.0 - ((y - yc).abs() / t);
                self.d[r as usize * self.w + c] += amp * smooth(k * 2.0);
            }
        }
    }

    /// A band along `x = f(y)` for y in [y0, y1], half thickness `t`.
    pub fn band_y(&mut self, y0: f32, y1: f32, t: f32, amp: f32, f: impl Fn(f32) -> f32) {
        let (_, _, r0, r1) = self.clip(0.0, 0.0, y0, y1);
        for r in r0..r1 {
            let y = self.ys(r as isize);
            let xc = f(y);
            let (c0, c1) = (self.px(xc - 2.0 * t).max(0), (self.px(xc + 2.0 * t) + 1).min(self.w as isize));
            for c in c0..c1.max(c0) {
                let x = self.xs(c);
                let k = 1.0 - ((x - xc).abs() / t);
                self.d[r * self.w + c as usize] += amp * smooth(k * 2.0);
            }
        }
    }

    /// A straight segment.
    pub fn segment(&mut self, (x0, y0): (f32, f32), (x1, y1): (f32, f32), t: f32, amp: f32) {
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = (dx * dx + dy * dy).max(1e-9);
        self.each(x0.min(x1) - 2.0 * t, x0.max(x1) + 2.0 * t, y0.min(y1) - 2.0 * t, y0.max(y1) + 2.0 * t, |x, y, v| {
            let s = (((x - x0) * dx + (y - y0) * dy) / len2).clamp(0.0, 1.0);
            let (px, py) = (x0 + s * dx - x, y0 + s * dy - y);
            let d = (px * px + py * py).sqrt();
            *v += amp * smooth((1.0 - d / t) * 2.0);
        });
    }
}

/// Coarse random grid, bilinearly interpolated: soft lung texture.
pub struct ValueNoise {
    n: usize,
    g: Vec<f32>,
}

impl ValueNoise {
    pub fn new(rng: &mut Rng, n: usize) -> Self {
        Self { n, g: (0..(n + 1) * (n + 1)).map(|_| rng.f64() as f32 - 0.5).collect() }
    }
    pub fn at(&self, x: f32, y: f32) -> f32 {
        let fx = x.clamp(0.0, 0.9999) * self.n as f32;
        let fy = y.clamp(0.0, 0.9999) * self.n as f32;
        let (i, j) = (fx as usize, fy as usize);
        let (u, v) = (fx - i as f32, fy - j as f32);
        let s = self.n + 1;
        let a = self.g[j * s + i] * (1.0 - u) + self.g[j * s + i + 1] * u;
        let b = self.g[(j + 1) * s + i] * (1.0 - u) + self.g[(j + 1) * s + i + 1] * u;
        a * (1.0 - v) + b * v
    }
}
