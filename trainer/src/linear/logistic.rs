//! The standard protocol for probing frozen features: features standardised with the training
//! split's mean and standard deviation, one L2-regularised logistic regression per label
//! solved to convergence (L-BFGS), and the regularisation strength chosen on the validation
//! split's macro AUROC.
//!
//! Each label minimises scikit-learn's objective, `0.5 * |w|^2 + C * sum_i loss_i` (the
//! intercept is not penalised), divided by `C * n` so the gradient tolerance does not depend
//! on the number of rows. Rows whose label is NaN are left out of that label only.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Per-feature mean and scale of the training rows; a constant feature gets scale 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

impl Standardizer {
    /// Fits on `x` (`[rows, dim]`, row-major).
    pub fn fit(x: &[f32], dim: usize) -> Self {
        let n = (x.len() / dim.max(1)).max(1) as f64;
        let mut mean = vec![0.0f64; dim];
        for row in x.chunks_exact(dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0f64; dim];
        for row in x.chunks_exact(dim) {
            for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
                *s += (f64::from(v) - m).powi(2);
            }
        }
        let scale = var.iter().map(|s| (s / n).sqrt()).map(|s| if s > 1e-12 { s } else { 1.0 }).collect();
        Self { mean, scale }
    }

    /// `x` standardised, as `f32`.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let d = self.mean.len();
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks_exact(d) {
            out.extend(row.iter().zip(&self.mean).zip(&self.scale).map(|((&v, m), s)| ((f64::from(v) - m) / s) as f32));
        }
        out
    }
}

/// Solver settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticConfig {
    /// Candidate inverse regularisation strengths (scikit-learn's `C`).
    pub cs: Vec<f64>,
    /// Convergence: the largest gradient entry of the scaled objective at most this.
    pub tolerance: f64,
    pub max_iterations: usize,
}

impl Default for LogisticConfig {
    fn default() -> Self {
        // 1e-4 to 10 in half decades.
        let cs = (0..11).map(|k| 10f64.powf(-4.0 + 0.5 * f64::from(k))).collect();
        Self { cs, tolerance: 1e-6, max_iterations: 1000 }
    }
}

/// One fitted label: weights then intercept, and how the solver ended.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelFit {
    /// `dim` weights, then the intercept.
    pub params: Vec<f64>,
    pub iterations: usize,
    pub converged: bool,
}

/// The fitted labels at one `C`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticModel {
    pub c: f64,
    pub dim: usize,
    pub labels: Vec<LabelFit>,
}

impl LogisticModel {
    /// Probabilities `[rows, labels]` of standardised features `x` (`[rows, dim]`).
    pub fn predict(&self, x: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len() / self.dim.max(1) * self.labels.len());
        for row in x.chunks_exact(self.dim) {
            out.extend(self.labels.iter().map(|f| sigmoid(linear(&f.params, row)) as f32));
        }
        out
    }

    /// Mean binary cross-entropy over the defined entries of `labels` (`[rows, labels]`).
    pub fn loss(&self, x: &[f32], labels: &[f32]) -> f64 {
        let l = self.labels.len();
        let (mut sum, mut n) = (0.0, 0usize);
        for (row, y) in x.chunks_exact(self.dim).zip(labels.chunks_exact(l)) {
            for (f, &t) in self.labels.iter().zip(y) {
                if !t.is_nan() {
                    let z = linear(&f.params, row);
                    sum += softplus(z) - f64::from(t) * z;
                    n += 1;
                }
            }
        }
        sum / n.max(1) as f64
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// `log(1 + e^z)` without overflow.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

fn linear(params: &[f64], row: &[f32]) -> f64 {
    let (w, b) = params.split_at(row.len());
    // Four partial sums, so the compiler can vectorise.
    let mut acc = [0.0f64; 4];
    let mut chunks = row.chunks_exact(4);
    let mut wc = w.chunks_exact(4);
    for (r, c) in (&mut chunks).zip(&mut wc) {
        for ((a, &x), w) in acc.iter_mut().zip(r).zip(c) {
            *a += f64::from(x) * w;
        }
    }
    let tail: f64 = chunks.remainder().iter().zip(wc.remainder()).map(|(&r, c)| f64::from(r) * c).sum();
    acc.iter().sum::<f64>() + tail + b[0]
}

/// The scaled objective of one label at `params`, its gradient written into `grad`.
fn objective(x: &[f32], dim: usize, y: &[f32], c: f64, params: &[f64], grad: &mut [f64]) -> f64 {
    grad.iter_mut().for_each(|g| *g = 0.0);
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (row, &t) in x.chunks_exact(dim).zip(y) {
        if t.is_nan() {
            continue;
        }
        let t = f64::from(t);
        let z = linear(params, row);
        sum += softplus(z) - t * z;
        let r = sigmoid(z) - t;
        for (g, &v) in grad[..dim].iter_mut().zip(row) {
            *g += r * f64::from(v);
        }
        grad[dim] += r;
        n += 1;
    }
    let n = n.max(1) as f64;
    let penalty = 1.0 / (c * n);
    let mut norm = 0.0;
    for (g, w) in grad[..dim].iter_mut().zip(&params[..dim]) {
        *g = *g / n + penalty * w;
        norm += w * w;
    }
    grad[dim] /= n;
    sum / n + 0.5 * penalty * norm
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Minimises a smooth convex `f` (value, gradient into the slice) from `x` by L-BFGS with
/// 10 pairs and a backtracking (Armijo) line search. Returns the point, the iterations and
/// whether the gradient tolerance was met.
fn lbfgs(
    mut f: impl FnMut(&[f64], &mut [f64]) -> f64,
    mut x: Vec<f64>,
    tolerance: f64,
    max_iterations: usize,
) -> (Vec<f64>, usize, bool) {
    const MEMORY: usize = 10;
    let d = x.len();
    let mut g = vec![0.0; d];
    let mut fx = f(&x, &mut g);
    let mut pairs: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = std::collections::VecDeque::new();
    let (mut x_new, mut g_new) = (vec![0.0; d], vec![0.0; d]);
    for it in 0..max_iterations {
        if max_abs(&g) <= tolerance {
            return (x, it, true);
        }
        // Two-loop recursion: direction = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(pairs.len());
        for (s, y, rho) in pairs.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        let gamma = pairs.back().map_or(1.0 / max_abs(&g).max(1.0), |(s, y, _)| dot(s, y) / dot(y, y));
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, y, rho), a) in pairs.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        let dir = if slope < 0.0 {
            dir
        } else {
            // Not a descent direction (numerical trouble): restart from the gradient.
            pairs.clear();
            slope = -dot(&g, &g);
            g.iter().map(|v| -v).collect()
        };
        let mut step = 1.0;
        let accepted = loop {
            x_new.iter_mut().zip(&x).zip(&dir).for_each(|((n, xi), di)| *n = xi + step * di);
            let f_new = f(&x_new, &mut g_new);
            if f_new <= fx + 1e-4 * step * slope {
                break Some(f_new);
            }
            step *= 0.5;
            if step < 1e-20 {
                break None;
            }
        };
        let Some(f_new) = accepted else {
            // No decrease possible in floating point: as converged as it gets.
            let ok = max_abs(&g) <= tolerance * 100.0;
            return (x, it, ok);
        };
        let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 * dot(&y, &y).max(f64::MIN_POSITIVE) {
            if pairs.len() == MEMORY {
                pairs.pop_front();
            }
            pairs.push_back((s, y, 1.0 / sy));
        }
        std::mem::swap(&mut x, &mut x_new);
        std::mem::swap(&mut g, &mut g_new);
        fx = f_new;
    }
    let ok = max_abs(&g) <= tolerance;
    (x, max_iterations, ok)
}

/// Fits every label at `c` on standardised `x` (`[rows, dim]`) and `labels` (`[rows, l]`,
/// NaN = left out), starting from `warm` when given (the fit at a neighbouring `c`).
pub fn fit(
    x: &[f32],
    dim: usize,
    labels: &[f32],
    l: usize,
    c: f64,
    cfg: &LogisticConfig,
    warm: Option<&LogisticModel>,
) -> LogisticModel {
    let fits = (0..l)
        .into_par_iter()
        .map(|k| {
            let y: Vec<f32> = labels.iter().skip(k).step_by(l).copied().collect();
            let start = warm.map_or_else(|| vec![0.0; dim + 1], |m| m.labels[k].params.clone());
            let (params, iterations, converged) =
                lbfgs(|p, g| objective(x, dim, &y, c, p, g), start, cfg.tolerance, cfg.max_iterations);
            LabelFit { params, iterations, converged }
        })
        .collect();
    LogisticModel { c, dim, labels: fits }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The solver's optimum satisfies the optimality condition of the objective, computed
    /// independently: X^T (sigmoid(Xw + b) - y) / n + w / (C n) = 0 and the intercept's
    /// gradient is 0; a stronger penalty gives smaller weights.
    #[test]
    fn the_fit_is_the_regularised_optimum() {
        let mut rng = Rng::new(3);
        let (n, d) = (300, 5);
        let truth = [1.5, -2.0, 0.0, 0.5, 0.0];
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..n {
            let row: Vec<f32> = (0..d).map(|_| rng.normal() as f32).collect();
            let z: f64 = row.iter().zip(&truth).map(|(a, b)| f64::from(*a) * b).sum::<f64>() - 0.3;
            y.push(if rng.f64() < sigmoid(z) { 1.0 } else { 0.0 });
            x.extend(row);
        }
        let cfg = LogisticConfig::default();
        let m = fit(&x, d, &y, 1, 1.0, &cfg, None);
        let f = &m.labels[0];
        assert!(f.converged, "{f:?}");
        let mut g = vec![0.0; d + 1];
        for (row, &t) in x.chunks_exact(d).zip(&y) {
            let z: f64 = row.iter().zip(&f.params).map(|(a, b)| f64::from(*a) * b).sum::<f64>() + f.params[d];
            let r = 1.0 / (1.0 + (-z).exp()) - f64::from(t);
            for (gk, &x) in g.iter_mut().zip(row) {
                *gk += r * f64::from(x) / n as f64;
            }
            g[d] += r / n as f64;
        }
        for (gk, w) in g.iter_mut().zip(&f.params[..d]) {
            *gk += w / n as f64;
        }
        assert!(g.iter().all(|v| v.abs() < 1e-5), "{g:?}");
        // Recovers the generating weights roughly, and a strong penalty shrinks them.
        assert!((f.params[0] - 1.5).abs() < 0.5 && (f.params[1] + 2.0).abs() < 0.5, "{:?}", f.params);
        let strong = fit(&x, d, &y, 1, 1e-3, &cfg, None);
        let norm = |p: &[f64]| p[..d].iter().map(|v| v * v).sum::<f64>();
        assert!(norm(&strong.labels[0].params) < 0.1 * norm(&f.params));
        // A warm start reaches the same optimum.
        let warm = fit(&x, d, &y, 1, 1.0, &cfg, Some(&strong));
        assert!(warm.labels[0].params.iter().zip(&f.params).all(|(a, b)| (a - b).abs() < 1e-4));
    }

    /// NaN labels are left out: the fit equals the fit on the defined rows alone.
    #[test]
    fn undefined_labels_are_left_out() {
        let mut rng = Rng::new(4);
        let x: Vec<f32> = (0..200).map(|_| rng.normal() as f32).collect();
        let y: Vec<f32> = x.iter().map(|v| if *v > 0.2 { 1.0 } else { 0.0 }).collect();
        let mut y_nan = y.clone();
        let mut x_kept = Vec::new();
        let mut y_kept = Vec::new();
        for (i, ((yn, &xi), &yi)) in y_nan.iter_mut().zip(&x).zip(&y).enumerate() {
            if i % 3 == 0 {
                *yn = f32::NAN;
            } else {
                x_kept.push(xi);
                y_kept.push(yi);
            }
        }
        let cfg = LogisticConfig::default();
        let a = fit(&x, 1, &y_nan, 1, 0.1, &cfg, None);
        let b = fit(&x_kept, 1, &y_kept, 1, 0.1, &cfg, None);
        assert!(a.labels[0].params.iter().zip(&b.labels[0].params).all(|(p, q)| (p - q).abs() < 1e-6));
        assert!(a.loss(&x, &y_nan).is_finite());
    }

    #[test]
    fn standardised_features_have_zero_mean_unit_variance() {
        let x = [1.0f32, 5.0, 3.0, 5.0, 5.0, 5.0];
        let s = Standardizer::fit(&x, 2);
        let z = s.apply(&x);
        assert_eq!(s.mean, vec![3.0, 5.0]);
        assert_eq!(s.scale[1], 1.0, "a constant feature keeps scale 1");
        let col0: Vec<f32> = z.iter().step_by(2).copied().collect();
        assert!((col0.iter().sum::<f32>()).abs() < 1e-6);
        assert!((col0.iter().map(|v| v * v).sum::<f32>() / 3.0 - 1.0).abs() < 1e-6);
    }
}
