//! The embedding maps' maths: PCA (power iteration with deflation) and t-SNE, each to two
//! dimensions, on `[n, d]` row-major features.

use rayon::prelude::*;

/// The first two principal components of `x` (`[n, d]`), by power iteration on the
/// covariance with deflation; returns `[n]` pairs.
pub fn pca2(x: &[f32], d: usize) -> Vec<(f64, f64)> {
    let n = x.len() / d.max(1);
    if n == 0 {
        return Vec::new();
    }
    let mut mean = vec![0f64; d];
    for i in 0..n {
        for j in 0..d {
            mean[j] += f64::from(x[i * d + j]) / n as f64;
        }
    }
    let mut cov = vec![0f64; d * d];
    for i in 0..n {
        let r: Vec<f64> = (0..d).map(|j| f64::from(x[i * d + j]) - mean[j]).collect();
        for a in 0..d {
            for b in 0..d {
                cov[a * d + b] += r[a] * r[b];
            }
        }
    }
    let mut comps: Vec<Vec<f64>> = Vec::new();
    for c in 0..2 {
        let mut v: Vec<f64> = (0..d).map(|j| if j % 2 == c { 1.0 } else { 0.5 } + j as f64 * 1e-3).collect();
        for _ in 0..200 {
            let mut w: Vec<f64> = (0..d).map(|a| (0..d).map(|b| cov[a * d + b] * v[b]).sum()).collect();
            for u in &comps {
                let dot: f64 = w.iter().zip(u).map(|(a, b)| a * b).sum();
                w.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = w.iter().map(|a| a * a).sum::<f64>().sqrt();
            if norm == 0.0 {
                break;
            }
            v = w.into_iter().map(|a| a / norm).collect();
        }
        comps.push(v);
    }
    (0..n)
        .map(|i| {
            let p = |u: &Vec<f64>| (0..d).map(|j| (f64::from(x[i * d + j]) - mean[j]) * u[j]).sum::<f64>();
            (p(&comps[0]), p(&comps[1]))
        })
        .collect()
}

/// Exact t-SNE to 2-D (van der Maaten and Hinton, 2008) of `x` (`[n, d]`): Gaussian
/// affinities calibrated to `perplexity`, Student-t map, 1000 gradient steps with early
/// exaggeration 12 for 250, momentum 0.5 then 0.8, per-coordinate gains, learning rate
/// max(n / 48, 50) as scikit-learn's `auto`; seeded initialisation. Quadratic in `n`.
pub fn tsne2(x: &[f32], d: usize, perplexity: f64, seed: u64) -> Vec<(f64, f64)> {
    let n = x.len() / d.max(1);
    if n < 3 {
        return (0..n).map(|i| (i as f64, 0.0)).collect();
    }
    let dist: Vec<f64> = (0..n * n)
        .into_par_iter()
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            (0..d).map(|k| f64::from(x[i * d + k] - x[j * d + k]).powi(2)).sum()
        })
        .collect();
    let target = perplexity.min((n - 1) as f64 / 3.0).max(1.0).ln();
    let cond: Vec<Vec<f64>> =
        (0..n).into_par_iter().map(|i| affinities(&dist[i * n..(i + 1) * n], i, target)).collect();
    let p: Vec<f64> =
        (0..n * n).map(|ij| ((cond[ij / n][ij % n] + cond[ij % n][ij / n]) / (2.0 * n as f64)).max(1e-12)).collect();
    let mut rng = crate::rng::Rng::new(seed);
    let mut y: Vec<f64> = (0..2 * n).map(|_| 1e-4 * rng.normal()).collect();
    let mut update = vec![0f64; 2 * n];
    let mut gains = vec![1f64; 2 * n];
    let lr = (n as f64 / 48.0).max(50.0);
    for it in 0..1000 {
        let exaggeration = if it < 250 { 12.0 } else { 1.0 };
        let momentum = if it < 250 { 0.5 } else { 0.8 };
        for (k, g) in gradient(&p, &y, exaggeration).into_iter().enumerate() {
            gains[k] = if (g > 0.0) == (update[k] > 0.0) { (gains[k] * 0.8).max(0.01) } else { gains[k] + 0.2 };
            update[k] = momentum * update[k] - lr * gains[k] * g;
            y[k] += update[k];
        }
    }
    (0..n).map(|i| (y[2 * i], y[2 * i + 1])).collect()
}

/// Point `i`'s conditional affinities from its squared distances `row`: a Gaussian whose
/// precision is found by bisection so that the entropy is `target` (the log perplexity).
fn affinities(row: &[f64], i: usize, target: f64) -> Vec<f64> {
    let n = row.len();
    let (mut lo, mut hi, mut beta) = (0.0f64, f64::INFINITY, 1.0f64);
    let mut p = vec![0f64; n];
    for _ in 0..64 {
        let min = row.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, v)| *v).fold(f64::INFINITY, f64::min);
        let mut sum = 0.0;
        for j in 0..n {
            p[j] = if j == i { 0.0 } else { (-(row[j] - min) * beta).exp() };
            sum += p[j];
        }
        let mut h = 0.0;
        for v in p.iter_mut() {
            *v /= sum;
            if *v > 1e-12 {
                h -= *v * v.ln();
            }
        }
        if (h - target).abs() < 1e-5 {
            break;
        }
        if h > target {
            lo = beta;
            beta = if hi.is_finite() { (beta + hi) / 2.0 } else { beta * 2.0 };
        } else {
            hi = beta;
            beta = (beta + lo) / 2.0;
        }
    }
    p
}

/// The gradient of the t-SNE loss at the map `y` (`[n, 2]` flattened), with the affinities
/// `p` multiplied by `exaggeration`.
fn gradient(p: &[f64], y: &[f64], exaggeration: f64) -> Vec<f64> {
    let n = y.len() / 2;
    let num: Vec<f64> = (0..n * n)
        .into_par_iter()
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            if i == j {
                0.0
            } else {
                1.0 / (1.0 + (y[2 * i] - y[2 * j]).powi(2) + (y[2 * i + 1] - y[2 * j + 1]).powi(2))
            }
        })
        .collect();
    let z: f64 = num.iter().sum::<f64>().max(1e-12);
    (0..n)
        .into_par_iter()
        .flat_map_iter(|i| {
            let (mut gx, mut gy) = (0.0, 0.0);
            for j in 0..n {
                let w = (exaggeration * p[i * n + j] - num[i * n + j] / z) * num[i * n + j];
                gx += w * (y[2 * i] - y[2 * j]);
                gy += w * (y[2 * i + 1] - y[2 * j + 1]);
            }
            [4.0 * gx, 4.0 * gy]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two clusters far apart in 8-D stay apart in both maps: every point is nearer its own
    /// cluster's centroid than the other's.
    #[test]
    fn pca_and_tsne_keep_clusters_apart() {
        let mut rng = crate::rng::Rng::new(2);
        let (n, d) = (60, 8);
        let x: Vec<f32> = (0..n)
            .flat_map(|i| {
                let c = if i < n / 2 { 0.0 } else { 6.0 };
                (0..d).map(|_| (c + rng.normal()) as f32).collect::<Vec<_>>()
            })
            .collect();
        for pts in [pca2(&x, d), tsne2(&x, d, 10.0, 1)] {
            let centre = |r: std::ops::Range<usize>| {
                let k = r.len() as f64;
                let (sx, sy) = pts[r].iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
                (sx / k, sy / k)
            };
            let (a, b) = (centre(0..n / 2), centre(n / 2..n));
            let dist = |p: &(f64, f64), c: (f64, f64)| (p.0 - c.0).hypot(p.1 - c.1);
            for (i, p) in pts.iter().enumerate() {
                let (own, other) = if i < n / 2 { (a, b) } else { (b, a) };
                assert!(dist(p, own) < dist(p, other), "point {i}");
            }
        }
    }
}
