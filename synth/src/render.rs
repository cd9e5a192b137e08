//! The procedural radiograph. An image is a density map (soft tissue, air in the lungs, bone,
//! fluid, metal) built from simple shapes, turned into detector intensity by exponential
//! attenuation, scatter, gain and noise, and stored as 12-bit values.
//!
//! What depends on what (so that learned representations and linear probes are measurable):
//! - subject (shared by all of a subject's studies): body width, lung size, rib spacing, heart
//!   size; sex (women: narrower body, breast shadows over the lower lungs; men: larger lungs);
//!   age (bone density falls and the aortic knob grows with age);
//! - study findings (ground truth, also when reported as uncertain): cardiomegaly widens the
//!   heart, enlarged cardiomediastinum the upper mediastinum; effusion fills and blunts a
//!   costophrenic angle (a layering haze when recumbent); consolidation and pneumonia are
//!   patchy dense blobs; edema a perihilar haze; atelectasis plate-like bands; a lesion a
//!   round nodule; pneumothorax a marking-free rim with a pleural line; pleural other a
//!   thickened pleura; fracture a broken, offset rib; support devices bright tubes, lines,
//!   a pacemaker or ECG leads;
//! - view: PA and AP are frontal (AP: magnified heart, scapulae over the lungs, lower lung
//!   volumes, more scatter and noise, a "portable" marker); LATERAL/LL a side projection with
//!   the spine posterior and the heart anterior; recumbent lowers lung volume.

use crate::canvas::{Canvas, ValueNoise, smooth};
use crate::studies::{Image, Study, finding::*};
use pipeline::rng::Rng;

/// Subject-level anatomy.
struct Anatomy {
    body_w: f32,
    lung_w: f32,
    lung_h: f32,
    heart_w: f32,
    rib_step: f32,
    bone: f32,
    female: bool,
    age: f32,
}

fn anatomy(study: &Study) -> Anatomy {
    let mut r = Rng::new(study.subject_seed ^ 0xA5A5_5A5A);
    let female = study.sex == 'F';
    let age = study.age as f32;
    let g = |r: &mut Rng, s: f64| (r.normal() * s) as f32;
    Anatomy {
        body_w: if female { 0.40 } else { 0.43 } + g(&mut r, 0.015),
        lung_w: if female { 0.16 } else { 0.175 } + g(&mut r, 0.008),
        lung_h: if female { 0.29 } else { 0.31 } + g(&mut r, 0.012),
        heart_w: 0.115 + g(&mut r, 0.008) + 0.0003 * (age - 60.0),
        rib_step: 0.05 + g(&mut r, 0.002),
        bone: (1.15 - 0.007 * (age - 20.0)).clamp(0.55, 1.15),
        female,
        age,
    }
}

/// Renders the display image (MONOCHROME2 sense: dense = bright) as 12-bit values.
pub fn render(study: &Study, image: &Image) -> Vec<u16> {
    let (w, h) = (usize::from(image.cols), usize::from(image.rows));
    let mut cv = Canvas::new(w, h);
    let a = anatomy(study);
    // Finding placement is per study, so all views of a study agree.
    let mut srng = Rng::new(study.seed ^ 0x5EED);
    let mut irng = Rng::new(image.seed);
    let lateral = matches!(image.view, "LATERAL" | "LL" | "XTABLE LATERAL" | "SWIMMERS")
        || (image.view.is_empty() && image.view_code.1.contains("lateral"));
    let portable = study.procedure.contains("PORT");
    let recumbent = image.orientation == "Recumbent";
    if lateral {
        draw_lateral(&mut cv, study, &a, &mut srng, &mut irng, recumbent);
    } else {
        draw_frontal(&mut cv, study, &a, &mut srng, &mut irng, portable, recumbent);
    }
    expose(&cv, &mut irng, portable)
}

/// Attenuation, scatter, gain and noise: density -> 12-bit intensity.
fn expose(cv: &Canvas, rng: &mut Rng, portable: bool) -> Vec<u16> {
    let scatter = if portable { 0.13 } else { 0.07 } + 0.02 * rng.f64() as f32;
    let gain = if portable { 0.78 } else { 0.88 } + 0.06 * rng.f64() as f32;
    let sigma = if portable { 0.02 } else { 0.012 };
    // 1 - exp(-1.15 d) tabulated on [0, 8) with linear interpolation.
    const STEPS: f32 = 512.0;
    let table: Vec<f32> = (0..=4097).map(|i| 1.0 - (-1.15 * i as f32 / STEPS).exp()).collect();
    let atten = |d: f32| {
        let f = (d.max(0.0) * STEPS).min(4096.0);
        let i = f as usize;
        let t = f - i as f32;
        table[i] + t * (table[i + 1] - table[i])
    };
    // Vignetting is separable: 1 - 0.12 (x^2 + y^2).
    let vx: Vec<f32> = (0..cv.w).map(|c| (c as f32 / cv.w as f32 - 0.5).powi(2)).collect();
    // Sum of four 16-bit uniforms ~ normal (Irwin-Hall), scaled to unit variance.
    let noise_scale = sigma * 1.7 / 65536.0;
    let mut out = Vec::with_capacity(cv.d.len());
    for (r, row) in cv.d.chunks_exact(cv.w).enumerate() {
        let vy = (r as f32 / cv.h as f32 - 0.5).powi(2);
        for (c, &d) in row.iter().enumerate() {
            let bits = rng.next_u64();
            let u = (bits & 0xFFFF) + ((bits >> 16) & 0xFFFF) + ((bits >> 32) & 0xFFFF) + (bits >> 48);
            let noise = (u as f32 - 131_072.0) * noise_scale;
            let vignette = 1.0 - 0.12 * (vx[c] + vy);
            let inten = (scatter + gain * atten(d)) * vignette + noise;
            out.push((inten.clamp(0.0, 1.0) * 4095.0 + 0.5) as u16);
        }
    }
    out
}

fn draw_frontal(cv: &mut Canvas, s: &Study, a: &Anatomy, sr: &mut Rng, ir: &mut Rng, portable: bool, recumbent: bool) {
    let t = &s.truth;
    let jx = (ir.normal() * 0.012) as f32;
    let jy = (ir.normal() * 0.012) as f32;
    let cx = 0.5 + jx;
    // Body, neck, shoulders.
    cv.ellipse(cx, 0.6 + jy, a.body_w, 0.62, 1.0, 0.06);
    cv.ellipse(cx, 0.04 + jy, 0.1, 0.14, 0.8, 0.2);
    if portable {
        // Arms at the sides and scapulae projected over the upper lungs.
        for side in [-1.0f32, 1.0] {
            cv.ellipse(cx + side * (a.body_w + 0.04), 0.35 + jy, 0.05, 0.3, 0.7, 0.2);
            cv.ellipse(cx + side * 0.31, 0.3 + jy, 0.08, 0.14, 0.18, 0.3);
        }
    }
    // Lungs: air lowers density; inspiration is lower when portable or recumbent.
    let mut lung_h = a.lung_h * if portable { 0.92 } else { 1.0 } * if recumbent { 0.9 } else { 1.0 };
    lung_h += (ir.normal() * 0.005) as f32;
    let lung_cy = 0.45 + jy - (a.lung_h - lung_h) * 0.5;
    let dx = a.lung_w + 0.035;
    draw_lungs(cv, t, a, sr, (cx, dx, lung_cy, lung_h), recumbent);
    // Mediastinum and spine (wider upper mediastinum when enlarged).
    let upper = if t[ENLARGED_CM] { 0.085 } else { 0.055 };
    let half_w = |y: f32| if y < 0.45 { upper } else { 0.055 };
    cv.each(cx - 0.1, cx + 0.1, 0.05, 0.95, |x, y, v| {
        let k = 1.0 - (x - cx).abs() / half_w(y);
        *v += 0.42 * smooth(k * 2.5);
    });
    for k in 0..18 {
        let vy = 0.06 + k as f32 * 0.047;
        cv.ellipse(cx, vy + jy, 0.026, 0.018, 0.18 * a.bone, 0.4);
    }
    // Heart: wider with cardiomegaly, magnified on AP.
    let hw = a.heart_w * if t[CARDIOMEGALY] { 1.45 } else { 1.0 } * if portable { 1.12 } else { 1.0 };
    cv.ellipse(cx + 0.45 * hw, lung_cy + 0.17, hw, 0.12, 0.55, 0.12);
    // Aortic knob grows with age.
    cv.ellipse(cx + 0.05, lung_cy - 0.11, 0.018 + 0.00025 * a.age, 0.02, 0.45, 0.3);
    // Liver under the right hemidiaphragm, gastric bubble under the left.
    cv.ellipse(cx - 0.18, lung_cy + lung_h + 0.13, 0.2, 0.12, 0.25, 0.3);
    cv.ellipse(cx + 0.16, lung_cy + lung_h + 0.05, 0.04, 0.025, -0.35, 0.4);
    // Breast shadows.
    if a.female {
        for side in [-1.0f32, 1.0] {
            cv.ellipse(cx + side * 0.19, lung_cy + 0.28, 0.15, 0.1, 0.22, 0.5);
        }
    }
    draw_ribs(cv, t, a, sr, (cx, dx, lung_cy, lung_h), portable);
    draw_opacities(cv, s, sr, |u, v| (cx + u * (dx + a.lung_w * 0.8), lung_cy + v * lung_h));
    if t[SUPPORT_DEVICES] {
        draw_devices(cv, sr, cx, lung_cy, lung_h, false);
    }
    if portable {
        cv.ellipse(0.9, 0.06, 0.035, 0.015, 2.2, 0.05);
    }
}

/// The frontal lungs (`frame`: centre x, lung centre offset, lung centre y, lung height):
/// air, markings, pneumothorax, effusion, pleural thickening, and the hilar vessels.
fn draw_lungs(cv: &mut Canvas, t: &[bool], a: &Anatomy, sr: &mut Rng, frame: (f32, f32, f32, f32), recumbent: bool) {
    let (cx, dx, lung_cy, lung_h) = frame;
    let texture = ValueNoise::new(sr, 10);
    let effusion_side = side_of(sr);
    let effusion_level = 0.15 + 0.3 * sr.f64() as f32;
    let ptx_side = side_of(sr);
    let ptx_size = 0.45 + 0.25 * sr.f64() as f32;
    for side in [-1.0f32, 1.0] {
        let lcx = cx + side * dx;
        let rx = a.lung_w * if side > 0.0 { 0.95 } else { 1.0 };
        let ry = lung_h * if side > 0.0 { 1.02 } else { 1.0 };
        let eff = t[EFFUSION] && effusion_side.includes(side);
        let ptx = t[PNEUMOTHORAX] && ptx_side.includes(side);
        let thick = t[PLEURAL_OTHER] && side < 0.0;
        cv.each(lcx - rx * 1.1, lcx + rx * 1.1, lung_cy - ry * 1.1, lung_cy + ry * 1.1, |x, y, v| {
            let ux = (x - lcx) / rx;
            let uy = (y - lung_cy) / ry;
            let r2 = ux * ux + uy * uy;
            if r2 > 1.1 {
                return;
            }
            let inside = smooth((1.05 - r2.sqrt()) * 10.0);
            let lat = (ux * side).max(0.0); // 0 at the medial side, 1 at the lateral wall
            let mut dd = -0.72 * inside;
            // Lung markings, fading towards the periphery.
            let markings = 0.1 * (1.0 - 0.6 * lat) * texture.at(x, y);
            if ptx && lat > 1.0 - ptx_size && uy < 0.3 {
                dd -= 0.1 * inside;
                if (lat - (1.0 - ptx_size)).abs() < 0.03 {
                    dd += 0.22 * inside;
                }
            } else {
                dd += markings * inside;
            }
            if eff {
                if recumbent {
                    dd += (0.18 + 0.22 * (uy + 1.0) * 0.5) * inside;
                } else {
                    // Fluid meniscus: higher laterally, blunting the costophrenic angle.
                    let level = 1.0 - 2.0 * effusion_level - 0.5 * lat * lat;
                    dd += 0.7 * smooth((uy - level) * 12.0) * inside;
                }
            }
            if thick && r2 > 0.8 && uy.abs() < 0.6 {
                dd += 0.3 * smooth((r2 - 0.8) * 10.0) * inside;
            }
            *v += dd;
        });
        // Vessels radiating from the hilum.
        let hx = cx + side * 0.07;
        let hy = lung_cy + 0.02;
        for k in 0..5 {
            let ang = (0.2 + 0.25 * k as f32 + 0.1 * sr.f64() as f32) * std::f32::consts::PI * 0.5;
            let len = 0.08 + 0.06 * sr.f64() as f32;
            let end = (hx + side * ang.cos() * len * 1.3, hy + (ang.sin() - 0.4) * len);
            cv.segment((hx, hy), end, 0.004, 0.12);
        }
    }
}

/// The frontal ribs (one broken with a fracture) and clavicles; `frame` as [`draw_lungs`].
fn draw_ribs(cv: &mut Canvas, t: &[bool], a: &Anatomy, sr: &mut Rng, frame: (f32, f32, f32, f32), portable: bool) {
    let (cx, dx, lung_cy, lung_h) = frame;
    let fracture =
        t[FRACTURE].then(|| (side_of(sr).one(), 3 + sr.range_i64(0, 5) as usize, 0.4 + 0.3 * sr.f64() as f32));
    let steep = if portable { 0.6 } else { 1.0 };
    for side in [-1.0f32, 1.0] {
        let x_in = cx + side * 0.03;
        let span = dx + a.lung_w + 0.02;
        for j in 0..10 {
            let y0 = lung_cy - lung_h * 0.9 + j as f32 * a.rib_step * (lung_h / 0.28);
            let broken = fracture.filter(|&(fs, fj, _)| fs == side && fj == j);
            let (xa, xb) = if side > 0.0 { (x_in, x_in + span) } else { (x_in - span, x_in) };
            let curve = |x: f32| {
                let u = (x - x_in).abs() / span;
                let mut y = y0 + 0.07 * steep * u * u + 0.02 * u;
                if let Some((_, _, at)) = broken
                    && u > at
                {
                    y += 0.008;
                }
                y
            };
            if let Some((_, _, at)) = broken {
                let x_gap = x_in + side * span * at;
                let (l, r) = if side > 0.0 { (xa, x_gap - 0.006) } else { (x_gap + 0.006, xb) };
                cv.band_x(l, r, 0.007, 0.32 * a.bone, curve);
                let (l, r) = if side > 0.0 { (x_gap + 0.006, xb) } else { (xa, x_gap - 0.006) };
                cv.band_x(l, r, 0.007, 0.32 * a.bone, curve);
            } else {
                cv.band_x(xa, xb, 0.007, 0.32 * a.bone, curve);
            }
        }
        cv.segment(
            (cx + side * 0.035, lung_cy - lung_h - 0.02),
            (cx + side * 0.27, lung_cy - lung_h - 0.07),
            0.011,
            0.45 * a.bone,
        );
    }
}

fn draw_lateral(cv: &mut Canvas, s: &Study, a: &Anatomy, sr: &mut Rng, ir: &mut Rng, recumbent: bool) {
    let t = &s.truth;
    let jx = (ir.normal() * 0.012) as f32;
    let jy = (ir.normal() * 0.012) as f32;
    let cx = 0.5 + jx;
    cv.ellipse(cx, 0.6 + jy, a.body_w * 0.85, 0.62, 1.1, 0.06);
    let lung_h = a.lung_h * 1.05 * if recumbent { 0.9 } else { 1.0 };
    let lung_cy = 0.45 + jy;
    let lw = a.lung_w * 1.7;
    let texture = ValueNoise::new(sr, 10);
    let eff = t[EFFUSION];
    let level = 0.15 + 0.3 * sr.f64() as f32;
    cv.each(cx - lw * 1.1, cx + lw * 1.1, lung_cy - lung_h * 1.1, lung_cy + lung_h * 1.1, |x, y, v| {
        let ux = (x - cx) / lw;
        let uy = (y - lung_cy) / lung_h;
        let r2 = ux * ux + uy * uy;
        if r2 > 1.1 {
            return;
        }
        let inside = smooth((1.05 - r2.sqrt()) * 10.0);
        let mut dd = -0.62 * inside + 0.08 * texture.at(x, y) * inside;
        if eff {
            // Fluid in the posterior costophrenic sulcus (posterior = image right).
            let post = ux.max(0.0);
            dd += 0.6 * smooth((uy - (1.0 - 2.0 * level) + 0.4 * post) * 10.0) * post.sqrt() * inside;
        }
        *v += dd;
    });
    // Spine posterior, sternum anterior, heart anterior-inferior.
    for k in 0..18 {
        cv.ellipse(cx + 0.22, 0.06 + k as f32 * 0.047 + jy, 0.035, 0.019, 0.35 * a.bone, 0.3);
    }
    cv.band_y(0.2, 0.6, 0.008, 0.3 * a.bone, |_| cx - lw * 0.95);
    let hw = a.heart_w * 1.1 * if t[CARDIOMEGALY] { 1.4 } else { 1.0 };
    cv.ellipse(cx - 0.1, lung_cy + 0.17, hw, 0.13, 0.5, 0.15);
    if t[ENLARGED_CM] {
        cv.ellipse(cx - 0.02, lung_cy - 0.08, 0.06, 0.1, 0.25, 0.3);
    }
    if a.female {
        cv.ellipse(cx - a.body_w * 0.85, lung_cy + 0.25, 0.09, 0.12, 0.3, 0.4);
    }
    for j in 0..9 {
        let y0 = lung_cy - lung_h * 0.8 + j as f32 * a.rib_step * 1.1;
        cv.band_x(cx - lw * 0.3, cx + lw, 0.006, 0.15 * a.bone, |x| y0 + 0.05 * (x - cx));
    }
    draw_opacities(cv, s, sr, |u, v| (cx + 0.6 * u.abs() * lw - 0.1 * lw, lung_cy + v * lung_h));
    if t[SUPPORT_DEVICES] {
        draw_devices(cv, sr, cx - 0.05, lung_cy, lung_h, true);
    }
}

/// Parenchymal findings, placed in lung coordinates (u: -1 right lung .. 1 left lung,
/// v: -1 apex .. 1 base) mapped to the image by `at`.
fn draw_opacities(cv: &mut Canvas, s: &Study, sr: &mut Rng, at: impl Fn(f32, f32) -> (f32, f32)) {
    let t = &s.truth;
    let place = |sr: &mut Rng, v_lo: f32, v_hi: f32| {
        let side = if sr.bernoulli(0.5) { -1.0 } else { 1.0 };
        let u = side * (0.45 + 0.4 * sr.f64() as f32);
        let v = v_lo + (v_hi - v_lo) * sr.f64() as f32;
        at(u, v)
    };
    if t[CONSOLIDATION] || t[PNEUMONIA] {
        let (x, y) = place(sr, -0.1, 0.7);
        let n = if t[CONSOLIDATION] { 5 } else { 3 };
        let amp = if t[CONSOLIDATION] { 0.22 } else { 0.16 };
        for _ in 0..n {
            let ox = (sr.normal() * 0.025) as f32;
            let oy = (sr.normal() * 0.025) as f32;
            cv.blob(x + ox, y + oy, 0.03, 0.028, amp);
        }
    }
    if t[LUNG_OPACITY] {
        let (x, y) = place(sr, -0.3, 0.6);
        cv.blob(x, y, 0.05, 0.045, 0.14);
    }
    if t[EDEMA] {
        for side in [-1.0, 1.0] {
            let (x, y) = at(0.35 * side, 0.05);
            cv.blob(x, y, 0.07, 0.09, 0.2);
        }
    }
    if t[ATELECTASIS] {
        let (x, y) = place(sr, 0.45, 0.8);
        let tilt = (sr.normal() * 0.1) as f32;
        cv.band_x(x - 0.06, x + 0.06, 0.007, 0.35, move |xx| y + tilt * (xx - x));
    }
    if t[LUNG_LESION] {
        let (x, y) = place(sr, -0.6, 0.5);
        let r = 0.012 + 0.015 * sr.f64() as f32;
        cv.ellipse(x, y, r, r, 0.55, 0.25);
    }
}

/// Tubes, lines, pacemaker and ECG leads (1 to 3 of them).
fn draw_devices(cv: &mut Canvas, sr: &mut Rng, cx: f32, lung_cy: f32, lung_h: f32, lateral: bool) {
    let n = 1 + sr.geometric(0.5, 2);
    for _ in 0..n {
        match sr.range_i64(0, 4) {
            0 => {
                // Endotracheal tube down to above the carina.
                let tip = lung_cy - lung_h * 0.45 + 0.03 * sr.f64() as f32;
                cv.band_y(0.0, tip, 0.005, 1.3, move |y| cx - 0.005 + 0.01 * y);
            }
            1 => {
                // Nasogastric tube into the stomach.
                let stomach = lung_cy + lung_h + 0.07;
                cv.band_y(0.0, stomach, 0.004, 1.2, move |y| cx - 0.01 + 0.02 * (y * 6.0).sin() * 0.3);
                cv.segment((cx - 0.01, stomach), (cx + 0.12, stomach + 0.03), 0.004, 1.2);
            }
            2 => {
                // Central venous line from the subclavian region to the cavoatrial junction.
                let start = (cx - 0.22, lung_cy - lung_h - 0.02);
                let mid = (cx - 0.06, lung_cy - lung_h * 0.7);
                let tip = (cx - 0.02, lung_cy - lung_h * 0.15);
                cv.segment(start, mid, 0.003, 1.4);
                cv.segment(mid, tip, 0.003, 1.4);
            }
            3 if !lateral => {
                // Pacemaker generator with leads to the heart.
                let generator = (cx + 0.22, lung_cy - lung_h * 0.85);
                cv.ellipse(generator.0, generator.1, 0.035, 0.025, 2.0, 0.1);
                cv.segment(generator, (cx + 0.02, lung_cy - lung_h * 0.5), 0.003, 1.5);
                cv.segment((cx + 0.02, lung_cy - lung_h * 0.5), (cx + 0.07, lung_cy + 0.2), 0.003, 1.5);
            }
            _ => {
                // ECG electrodes.
                for _ in 0..4 {
                    let x = cx + (sr.normal() * 0.18) as f32;
                    let y = lung_cy + (sr.normal() * 0.2) as f32;
                    cv.ellipse(x, y, 0.012, 0.012, 1.2, 0.2);
                    cv.ellipse(x, y, 0.007, 0.007, -0.8, 0.2);
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Side {
    Right,
    Left,
    Both,
}

impl Side {
    fn includes(self, side: f32) -> bool {
        match self {
            Side::Both => true,
            Side::Right => side < 0.0,
            Side::Left => side > 0.0,
        }
    }
    fn one(self) -> f32 {
        if matches!(self, Side::Left) { 1.0 } else { -1.0 }
    }
}

fn side_of(r: &mut Rng) -> Side {
    match r.weighted(&[0.4, 0.35, 0.25]) {
        0 => Side::Right,
        1 => Side::Left,
        _ => Side::Both,
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;
    use cxr_dataset::Split;

    use super::*;
    use crate::studies::{Setting, Syntax};

    fn study(findings: &[usize], sex: char) -> Study {
        let mut truth = [false; 14];
        for &f in findings {
            truth[f] = true;
        }
        Study {
            subject_id: 10000032,
            study_id: 50414267,
            time: NaiveDate::from_ymd_opt(2180, 5, 6).unwrap().and_hms_opt(21, 30, 14).unwrap(),
            setting: Setting::Ward,
            age: 60,
            sex,
            died_in_stay: false,
            procedure: "CHEST (PA AND LAT)",
            truth,
            chexpert: None,
            negbio: None,
            split: Split::Train,
            images: vec![],
            seed: 11,
            subject_seed: 12,
        }
    }

    fn pa() -> Image {
        Image {
            dicom_id: "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014".into(),
            view: "PA",
            view_code: ("R-10214", "postero-anterior"),
            orientation: "Erect",
            rows: 128,
            cols: 128,
            monochrome1: false,
            window: false,
            rescale: false,
            syntax: Syntax::ExplicitLittle,
            seed: 13,
        }
    }

    /// Mean intensity over a box given in normalised coordinates.
    fn mean(px: &[u16], (x0, x1, y0, y1): (f32, f32, f32, f32)) -> f64 {
        let n = 128;
        let (c0, c1, r0, r1) =
            ((x0 * 128.0) as usize, (x1 * 128.0) as usize, (y0 * 128.0) as usize, (y1 * 128.0) as usize);
        let mut sum = 0.0;
        for r in r0..r1 {
            for c in c0..c1 {
                sum += f64::from(px[r * n + c]);
            }
        }
        sum / ((r1 - r0) * (c1 - c0)) as f64
    }

    #[test]
    fn rendering_is_deterministic_and_12_bit() {
        let a = render(&study(&[], 'M'), &pa());
        assert_eq!(a, render(&study(&[], 'M'), &pa()));
        assert_eq!(a.len(), 128 * 128);
        assert!(a.iter().all(|&v| v < 4096));
        let mut other = pa();
        other.seed = 14;
        assert_ne!(a, render(&study(&[], 'M'), &other), "noise is per image");
    }

    #[test]
    fn findings_are_visible_where_they_should_be() {
        let normal = render(&study(&[], 'M'), &pa());
        // Cardiomegaly: the heart shadow reaches further towards the left chest wall.
        let big_heart = render(&study(&[CARDIOMEGALY], 'M'), &pa());
        let left_heart_border = (0.66, 0.74, 0.58, 0.7);
        assert!(mean(&big_heart, left_heart_border) > mean(&normal, left_heart_border) + 100.0);
        // Effusion fills the lung bases.
        let effusion = render(&study(&[EFFUSION], 'M'), &pa());
        let bases = (0.1, 0.9, 0.62, 0.72);
        assert!(mean(&effusion, bases) > mean(&normal, bases) + 40.0);
        // Devices add near-metal brightness.
        let devices = render(&study(&[SUPPORT_DEVICES], 'M'), &pa());
        let bright = |px: &[u16]| px.iter().filter(|&&v| v > 3600).count();
        assert!(bright(&devices) > bright(&normal));
        // Breast shadows make women's lower lung fields denser.
        let female = render(&study(&[], 'F'), &pa());
        let lower_lungs = (0.15, 0.4, 0.6, 0.72);
        assert!(mean(&female, lower_lungs) > mean(&normal, lower_lungs));
    }

    #[test]
    fn lateral_and_portable_views_differ_from_pa() {
        let s = study(&[], 'M');
        let frontal = render(&s, &pa());
        let lateral = render(&s, &Image { view: "LATERAL", view_code: ("R-102CD", "lateral"), ..pa() });
        let diff = frontal.iter().zip(&lateral).filter(|(a, b)| a.abs_diff(**b) > 400).count();
        assert!(diff > frontal.len() / 10);
        let portable = Study { procedure: "CHEST (PORTABLE AP)", ..s.clone() };
        let ap = render(&portable, &Image { view: "AP", view_code: ("R-10206", "antero-posterior"), ..pa() });
        // More scatter: the darkest air is lighter on portable films.
        let darkest = |px: &[u16]| *px.iter().min().unwrap();
        assert!(darkest(&ap) > darkest(&frontal));
    }
}
