//! Multi-label evaluation (METHOD.md section 9): per-label AUROC and average precision as
//! scikit-learn computes them (ties share a threshold), macro means over the labels that are
//! defined, and seeded percentile bootstrap confidence intervals.
//!
//! A bootstrap resample draws [`Clusters`] with replacement and takes every row of a drawn
//! cluster as often as it was drawn: patients by default ([`BootstrapUnit::Patient`]; images
//! of one patient are correlated, so resampling images claims more certainty than the test
//! set holds), or images.
//!
//! A label whose evaluated rows hold a single class has no AUROC: it is reported as undefined
//! (`None`) and left out of the macro mean. Rows whose label is NaN (the `ignore` uncertainty
//! policy, a missing value) are left out of that label only.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// One label's rows sorted by descending score, NaN labels dropped.
#[derive(Debug, Clone)]
struct Sorted {
    /// Row index in the evaluated set, by descending score.
    rows: Vec<usize>,
    scores: Vec<f32>,
    positive: Vec<bool>,
}

impl Sorted {
    fn new(scores: impl Iterator<Item = f32>, labels: impl Iterator<Item = f32>) -> Self {
        let mut v: Vec<(usize, f32, bool)> = scores
            .zip(labels)
            .enumerate()
            .filter(|(_, (_, y))| !y.is_nan())
            .map(|(i, (s, y))| (i, s, y > 0.5))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        Self {
            rows: v.iter().map(|r| r.0).collect(),
            scores: v.iter().map(|r| r.1).collect(),
            positive: v.iter().map(|r| r.2).collect(),
        }
    }

    /// AUROC and average precision with each row weighted by `weight(row)` (1 for the plain
    /// metric, the bootstrap count for a resample). AUROC is `None` when one class has no
    /// weight; AP is `None` without positives and 1 with positives only (as scikit-learn).
    fn metrics(&self, weight: impl Fn(usize) -> f64) -> Metrics {
        let (mut tp, mut fp, mut area, mut ap) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        let (mut tp_prev, mut fp_prev) = (0.0f64, 0.0f64);
        let n = self.rows.len();
        let mut i = 0;
        let mut steps: Vec<(f64, f64)> = Vec::new();
        while i < n {
            // One threshold per distinct score: tied rows enter the curve together.
            let mut j = i;
            while j < n && self.scores[j] == self.scores[i] {
                let w = weight(self.rows[j]);
                if self.positive[j] {
                    tp += w;
                } else {
                    fp += w;
                }
                j += 1;
            }
            area += (fp - fp_prev) * (tp + tp_prev) / 2.0;
            steps.push((tp - tp_prev, tp / (tp + fp).max(f64::MIN_POSITIVE)));
            tp_prev = tp;
            fp_prev = fp;
            i = j;
        }
        if tp <= 0.0 {
            return Metrics { auroc: None, ap: None };
        }
        for (dtp, precision) in steps {
            ap += dtp / tp * precision;
        }
        Metrics { auroc: (fp > 0.0).then(|| area / (tp * fp)), ap: Some(ap) }
    }
}

/// One label's AUROC and average precision (`None` = undefined).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    pub auroc: Option<f64>,
    pub ap: Option<f64>,
}

/// AUROC and average precision of one label.
pub fn auroc_ap(scores: &[f32], labels: &[f32]) -> Metrics {
    Sorted::new(scores.iter().copied(), labels.iter().copied()).metrics(|_| 1.0)
}

/// A value with its 95% bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// One label's results; `None` fields are undefined (one class in the evaluated rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelResult {
    pub label: String,
    pub positives: usize,
    pub rows: usize,
    pub auroc: Option<Estimate>,
    pub average_precision: Option<Estimate>,
}

/// Metrics of an N x L score matrix against its labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub rows: usize,
    pub labels: Vec<LabelResult>,
    /// Means over the defined labels, with bootstrap intervals.
    pub macro_auroc: Option<Estimate>,
    pub macro_average_precision: Option<Estimate>,
    /// Labels left out of the macro means.
    pub undefined: Vec<String>,
    pub bootstrap_resamples: usize,
    pub bootstrap_seed: u64,
    /// What a resample draws, and how many of them the rows hold (patients or images).
    pub bootstrap_unit: BootstrapUnit,
    pub bootstrap_clusters: usize,
}

/// What a bootstrap resample draws with replacement (`--bootstrap-unit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BootstrapUnit {
    /// Patients, each with all of its images (METHOD.md section 9).
    #[default]
    Patient,
    /// Images, as if every image were independent.
    Image,
}

impl BootstrapUnit {
    /// The plural noun, for reports.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Patient => "patients",
            Self::Image => "images",
        }
    }
}

/// The clusters a bootstrap resamples: the cluster of each row, numbered 0.. in order of
/// first appearance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clusters {
    unit: BootstrapUnit,
    of_row: Vec<u32>,
    count: usize,
}

impl Clusters {
    /// Every row its own cluster: image-level resampling.
    pub fn images(rows: usize) -> Self {
        Self { unit: BootstrapUnit::Image, of_row: (0..rows as u32).collect(), count: rows }
    }

    /// Rows with equal `patient` ids form one cluster.
    pub fn patients(patient: &[u32]) -> Self {
        let mut dense = std::collections::HashMap::new();
        let of_row: Vec<u32> = patient
            .iter()
            .map(|p| {
                let next = dense.len() as u32;
                *dense.entry(*p).or_insert(next)
            })
            .collect();
        Self { unit: BootstrapUnit::Patient, of_row, count: dense.len() }
    }

    /// The clusters of `rows` rows for `unit`; `None` for patients without `patients` (one
    /// per row).
    pub fn new(unit: BootstrapUnit, rows: usize, patients: Option<&[u32]>) -> Option<Self> {
        match (unit, patients) {
            (BootstrapUnit::Image, _) => Some(Self::images(rows)),
            (BootstrapUnit::Patient, Some(p)) if p.len() == rows => Some(Self::patients(p)),
            (BootstrapUnit::Patient, _) => None,
        }
    }

    pub fn unit(&self) -> BootstrapUnit {
        self.unit
    }

    /// How many clusters (patients, or images) there are.
    pub fn count(&self) -> usize {
        self.count
    }

    pub fn rows(&self) -> usize {
        self.of_row.len()
    }

    /// Bootstrap resample `b` as a weight per row: `count` clusters drawn with replacement
    /// (from stream `(seed, stream, b)`), each row weighted by how often its cluster was
    /// drawn. With one row per cluster this is the plain multinomial resample of the rows.
    fn resample(&self, seed: u64, stream: u64, b: usize) -> Vec<u32> {
        let mut rng = Rng::derive(seed, stream, b as u64);
        let mut drawn = vec![0u32; self.count];
        for _ in 0..self.count {
            drawn[rng.below(self.count)] += 1;
        }
        self.of_row.iter().map(|&c| drawn[c as usize]).collect()
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Linear interpolation between closest ranks (numpy's default).
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn interval(value: f64, mut samples: Vec<f64>) -> Estimate {
    samples.retain(|v| v.is_finite());
    samples.sort_by(f64::total_cmp);
    Estimate { value, low: percentile(&samples, 0.025), high: percentile(&samples, 0.975) }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The macro AUROC of `scores` against `labels` (row-major `[rows, names.len()]`), without
/// intervals; `None` when no label is defined.
pub fn macro_auroc(scores: &[f32], labels: &[f32], names: &[String]) -> Option<f64> {
    let rows = scores.len() / names.len().max(1);
    evaluate(scores, labels, names, 0, 0, &Clusters::images(rows)).macro_auroc.map(|e| e.value)
}

/// Evaluates `scores` and `labels` (both row-major `[rows, names.len()]`) with `resamples`
/// bootstrap resamples of `clusters` (one per row) drawn from `seed`. In a resample, a label
/// with one class is left out of that resample's macro mean; the macro interval is over the
/// labels defined on the full set.
pub fn evaluate(
    scores: &[f32],
    labels: &[f32],
    names: &[String],
    resamples: usize,
    seed: u64,
    clusters: &Clusters,
) -> Evaluation {
    let l = names.len();
    let rows = scores.len() / l.max(1);
    assert_eq!(clusters.rows(), rows, "one cluster per evaluated row");
    let sorted: Vec<Sorted> = (0..l)
        .map(|k| Sorted::new((0..rows).map(|i| scores[i * l + k]), (0..rows).map(|i| labels[i * l + k])))
        .collect();
    let full: Vec<Metrics> = sorted.iter().map(|s| s.metrics(|_| 1.0)).collect();
    // Each resample is a multinomial count per row, from its own stream of `seed`.
    let boot: Vec<Vec<Metrics>> = (0..resamples)
        .into_par_iter()
        .map(|b| {
            let counts = clusters.resample(seed, 0xB007, b);
            sorted.iter().map(|s| s.metrics(|r| f64::from(counts[r]))).collect()
        })
        .collect();
    let pick = |k: usize, f: fn(&Metrics) -> Option<f64>| {
        f(&full[k]).map(|v| interval(v, boot.iter().filter_map(|b| f(&b[k])).collect()))
    };
    let results: Vec<LabelResult> = (0..l)
        .map(|k| LabelResult {
            label: names[k].clone(),
            positives: sorted[k].positive.iter().filter(|&&p| p).count(),
            rows: sorted[k].rows.len(),
            auroc: pick(k, |m| m.auroc),
            average_precision: pick(k, |m| m.ap),
        })
        .collect();
    // A macro mean is over the labels where the metric is defined on the full set.
    let macro_of = |f: fn(&Metrics) -> Option<f64>| {
        let defined: Vec<usize> = (0..l).filter(|&k| f(&full[k]).is_some()).collect();
        let value = mean(&defined.iter().filter_map(|&k| f(&full[k])).collect::<Vec<_>>())?;
        let samples =
            boot.iter().filter_map(|b| mean(&defined.iter().filter_map(|&k| f(&b[k])).collect::<Vec<_>>())).collect();
        Some(interval(value, samples))
    };
    Evaluation {
        rows,
        macro_auroc: macro_of(|m| m.auroc),
        macro_average_precision: macro_of(|m| m.ap),
        undefined: (0..l).filter(|&k| full[k].auroc.is_none()).map(|k| names[k].clone()).collect(),
        labels: results,
        bootstrap_resamples: resamples,
        bootstrap_seed: seed,
        bootstrap_unit: clusters.unit(),
        bootstrap_clusters: clusters.count(),
    }
}

/// The difference in macro AUROC, `b - a`, of two score matrices on the same rows and labels,
/// with a paired 95% bootstrap interval (both scored on the same resamples of `clusters`):
/// the interval of "does model b differ from model a on this test set". Labels undefined on
/// the full set are left out; `None` when no label is defined.
pub fn paired_macro_auroc_delta(
    a: &[f32],
    b: &[f32],
    labels: &[f32],
    l: usize,
    resamples: usize,
    seed: u64,
    clusters: &Clusters,
) -> Option<Estimate> {
    paired_mean_macro_auroc_delta(&[(a, b)], labels, l, resamples, seed, clusters)
}

/// [`paired_macro_auroc_delta`] averaged over several pairs `(a_i, b_i)` scored on the same
/// rows (e.g. one pair per seed): the mean over pairs of `macro AUROC(b_i) - macro
/// AUROC(a_i)`, every pair scored on the same bootstrap resamples of `clusters`.
pub fn paired_mean_macro_auroc_delta(
    pairs: &[(&[f32], &[f32])],
    labels: &[f32],
    l: usize,
    resamples: usize,
    seed: u64,
    clusters: &Clusters,
) -> Option<Estimate> {
    let (value, samples) = paired_samples(pairs, labels, l, resamples, seed, clusters)?;
    Some(interval(value, samples))
}

/// An equivalence test of a paired difference: two one-sided tests (TOST) at level 0.05
/// against `-margin` and `+margin`, read off the bootstrap's 90% interval, beside the usual
/// two-sided test of "no difference" read off its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Equivalence {
    /// The difference with its 95% interval.
    pub delta: Estimate,
    /// Its 90% interval: both one-sided tests reject at 0.05 exactly when it lies within
    /// the margins.
    pub low90: f64,
    pub high90: f64,
    pub margin: f64,
    pub verdict: Verdict,
}

/// What an [`Equivalence`] concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The 90% interval lies within +-margin: any difference is smaller than the margin.
    Equivalent,
    /// Not equivalent, and the 95% interval excludes 0: a difference is shown.
    Different,
    /// Neither: the test set cannot tell (the interval straddles a margin and holds 0).
    Undecided,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Self::Equivalent => "equivalent",
            Self::Different => "different",
            Self::Undecided => "undecided",
        }
    }
}

impl Equivalence {
    fn new(value: f64, mut samples: Vec<f64>, margin: f64) -> Self {
        samples.retain(|v| v.is_finite());
        samples.sort_by(f64::total_cmp);
        let q = |p: f64| percentile(&samples, p);
        let delta = Estimate { value, low: q(0.025), high: q(0.975) };
        let (low90, high90) = (q(0.05), q(0.95));
        let verdict = if -margin < low90 && high90 < margin {
            Verdict::Equivalent
        } else if delta.low > 0.0 || delta.high < 0.0 {
            Verdict::Different
        } else {
            Verdict::Undecided
        };
        Self { delta, low90, high90, margin, verdict }
    }
}

/// [`paired_mean_macro_auroc_delta`] with its [`Equivalence`] test at `margin` (same resamples,
/// so the same 95% interval).
#[allow(clippy::too_many_arguments)]
pub fn paired_mean_macro_auroc_equivalence(
    pairs: &[(&[f32], &[f32])],
    labels: &[f32],
    l: usize,
    resamples: usize,
    seed: u64,
    clusters: &Clusters,
    margin: f64,
) -> Option<Equivalence> {
    let (value, samples) = paired_samples(pairs, labels, l, resamples, seed, clusters)?;
    Some(Equivalence::new(value, samples, margin))
}

/// The mean paired difference over `pairs` and its bootstrap samples.
fn paired_samples(
    pairs: &[(&[f32], &[f32])],
    labels: &[f32],
    l: usize,
    resamples: usize,
    seed: u64,
    clusters: &Clusters,
) -> Option<(f64, Vec<f64>)> {
    let rows = labels.len() / l.max(1);
    assert_eq!(clusters.rows(), rows, "one cluster per evaluated row");
    let sort = |s: &[f32], k: usize| Sorted::new((0..rows).map(|i| s[i * l + k]), (0..rows).map(|i| labels[i * l + k]));
    let sorted: Vec<Vec<(Sorted, Sorted)>> =
        pairs.iter().map(|(a, b)| (0..l).map(|k| (sort(a, k), sort(b, k))).collect()).collect();
    let first = sorted.first()?;
    let defined: Vec<usize> = (0..l).filter(|&k| first[k].0.metrics(|_| 1.0).auroc.is_some()).collect();
    let delta = |w: &dyn Fn(usize) -> f64| -> Option<f64> {
        let mut per_pair = Vec::with_capacity(sorted.len());
        for pair in &sorted {
            let (mut sum, mut n) = (0.0, 0usize);
            for &k in &defined {
                if let (Some(x), Some(y)) = (pair[k].0.metrics(w).auroc, pair[k].1.metrics(w).auroc) {
                    sum += y - x;
                    n += 1;
                }
            }
            per_pair.push((n > 0).then(|| sum / n as f64)?);
        }
        mean(&per_pair)
    };
    let value = delta(&|_| 1.0)?;
    let samples: Vec<f64> = (0..resamples)
        .into_par_iter()
        .filter_map(|r| {
            let counts = clusters.resample(seed, 0xD17A, r);
            delta(&|i| f64::from(counts[i]))
        })
        .collect();
    Some((value, samples))
}

fn fmt_estimate(e: &Option<Estimate>) -> String {
    match e {
        Some(e) => format!("{:.3} ({:.3}-{:.3})", e.value, e.low, e.high),
        None => "undefined".into(),
    }
}

impl Evaluation {
    /// A Markdown table: one row per label, then the macro means.
    pub fn markdown(&self) -> String {
        let mut s = String::from("| label | positives / rows | AUROC (95% CI) | AP (95% CI) |\n|---|---|---|---|\n");
        for r in &self.labels {
            s += &format!(
                "| {} | {} / {} | {} | {} |\n",
                r.label,
                r.positives,
                r.rows,
                fmt_estimate(&r.auroc),
                fmt_estimate(&r.average_precision)
            );
        }
        s += &format!(
            "| **macro** | {} labels defined | {} | {} |\n",
            self.labels.len() - self.undefined.len(),
            fmt_estimate(&self.macro_auroc),
            fmt_estimate(&self.macro_average_precision)
        );
        s += &format!("\n{}\n", self.interval_note());
        if !self.undefined.is_empty() {
            s += &format!(
                "\nUndefined (one class in the evaluated rows), left out of the macro means: {}.\n",
                self.undefined.join(", ")
            );
        }
        s
    }

    /// One sentence on what the intervals resample.
    pub fn interval_note(&self) -> String {
        let unit = self.bootstrap_unit.plural();
        let whole = match self.bootstrap_unit {
            BootstrapUnit::Patient => ", each with all of its images",
            BootstrapUnit::Image => "",
        };
        format!(
            "95% intervals: percentile bootstrap, {} resamples of the {} {unit}{whole} (seed {}).",
            self.bootstrap_resamples, self.bootstrap_clusters, self.bootstrap_seed
        )
    }
}

/// The ROC curve of one label as (false positive rate, true positive rate) points, one per
/// distinct score, from (0, 0) to (1, 1); empty when the label is undefined.
pub fn roc_curve(scores: &[f32], labels: &[f32]) -> Vec<(f64, f64)> {
    let s = Sorted::new(scores.iter().copied(), labels.iter().copied());
    let p = s.positive.iter().filter(|&&x| x).count() as f64;
    let n = s.positive.len() as f64 - p;
    if p == 0.0 || n == 0.0 {
        return Vec::new();
    }
    let mut out = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    for i in 0..s.scores.len() {
        if s.positive[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        if i + 1 == s.scores.len() || s.scores[i + 1] != s.scores[i] {
            out.push((fp / n, tp / p));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_reversed_tied_and_single_class() {
        let y = [0.0, 0.0, 1.0, 1.0];
        let both = |a, p| Metrics { auroc: Some(a), ap: Some(p) };
        assert_eq!(auroc_ap(&[0.1, 0.2, 0.8, 0.9], &y), both(1.0, 1.0));
        assert_eq!(auroc_ap(&[0.9, 0.8, 0.2, 0.1], &y).auroc, Some(0.0));
        // All tied: one threshold, AUROC 0.5, AP = prevalence.
        assert_eq!(auroc_ap(&[0.5; 4], &y), both(0.5, 0.5));
        // Positives only: no AUROC, AP 1 (scikit-learn); negatives only: neither.
        assert_eq!(auroc_ap(&[0.1, 0.2, 0.3, 0.4], &[1.0; 4]), Metrics { auroc: None, ap: Some(1.0) });
        assert_eq!(auroc_ap(&[0.1, 0.2, 0.3, 0.4], &[0.0; 4]), Metrics { auroc: None, ap: None });
        // NaN labels are left out.
        assert_eq!(auroc_ap(&[0.1, 0.2, 0.8, 0.9, 0.0], &[0.0, 0.0, 1.0, 1.0, f32::NAN]), both(1.0, 1.0));
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_value() {
        let mut rng = Rng::new(5);
        let n = 200;
        let mut scores = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..n {
            let y = if rng.f64() < 0.3 { 1.0 } else { 0.0 };
            labels.extend([y, 1.0]);
            scores.extend([(y as f64 + rng.normal()) as f32, rng.f64() as f32]);
        }
        let names = vec!["a".to_string(), "b".to_string()];
        let images = Clusters::images(n);
        let a = evaluate(&scores, &labels, &names, 200, 9, &images);
        let b = evaluate(&scores, &labels, &names, 200, 9, &images);
        let c = evaluate(&scores, &labels, &names, 200, 10, &images);
        assert_eq!(a, b);
        assert_ne!(a.macro_auroc, c.macro_auroc);
        let m = a.macro_auroc.unwrap();
        assert!(m.low < m.value && m.value < m.high, "{m:?}");
        assert_eq!(a.undefined, vec!["b".to_string()]);
        assert_eq!(m.value, a.labels[0].auroc.unwrap().value, "macro over the defined label only");
        // Label b has positives only: AUROC undefined, AP 1 (and in the macro AP).
        assert!(a.markdown().contains("| b | 200 / 200 | undefined | 1.000 (1.000-1.000) |"), "{}", a.markdown());
        let ap_a = a.labels[0].average_precision.unwrap().value;
        assert!((a.macro_average_precision.unwrap().value - (ap_a + 1.0) / 2.0).abs() < 1e-12);
        // A model against itself differs by exactly 0; against the reversed scores, clearly.
        let d = paired_macro_auroc_delta(&scores, &scores, &labels, 2, 100, 1, &images).unwrap();
        assert_eq!((d.value, d.low, d.high), (0.0, 0.0, 0.0));
        let reversed: Vec<f32> = scores.iter().map(|s| -s).collect();
        let d = paired_macro_auroc_delta(&scores, &reversed, &labels, 2, 100, 1, &images).unwrap();
        assert!(d.high < 0.0 && (d.value - (1.0 - 2.0 * m.value)).abs() < 1e-9, "{d:?}");
        // Averaged over pairs: (0 + d) / 2 on the same resamples.
        let pooled =
            paired_mean_macro_auroc_delta(&[(&scores, &scores), (&scores, &reversed)], &labels, 2, 100, 1, &images)
                .unwrap();
        assert!((pooled.value - d.value / 2.0).abs() < 1e-12, "{pooled:?}");
        assert!((pooled.low - d.low / 2.0).abs() < 1e-12 && (pooled.high - d.high / 2.0).abs() < 1e-12);
        let roc = roc_curve(
            &scores.iter().step_by(2).copied().collect::<Vec<_>>(),
            &labels.iter().step_by(2).copied().collect::<Vec<_>>(),
        );
        assert_eq!(roc.first(), Some(&(0.0, 0.0)));
        assert_eq!(roc.last(), Some(&(1.0, 1.0)));
    }

    #[test]
    fn equivalence_verdicts_follow_the_intervals() {
        // Samples spread uniformly around a value.
        let around = |v: f64, spread: f64| (0..=100).map(|i| v + spread * (i as f64 / 50.0 - 1.0)).collect::<Vec<_>>();
        let e = Equivalence::new(0.001, around(0.001, 0.005), 0.01);
        assert_eq!(e.verdict, Verdict::Equivalent, "{e:?}");
        assert!((e.low90 - (0.001 - 0.0045)).abs() < 1e-12 && (e.delta.low - (0.001 - 0.00475)).abs() < 1e-12);
        // A shown difference larger than the margin; a small one shown but within it.
        assert_eq!(Equivalence::new(0.03, around(0.03, 0.01), 0.01).verdict, Verdict::Different);
        assert_eq!(Equivalence::new(0.006, around(0.006, 0.003), 0.01).verdict, Verdict::Equivalent);
        // Too wide to tell.
        assert_eq!(Equivalence::new(0.0, around(0.0, 0.05), 0.01).verdict, Verdict::Undecided);
        // The same resamples as the plain delta: the same 95% interval.
        let (scores, labels) = noisy(200, 8);
        let (other, _) = noisy(200, 9);
        let c = Clusters::images(200);
        let d = paired_mean_macro_auroc_delta(&[(&scores, &other)], &labels, 1, 200, 3, &c).unwrap();
        let q = paired_mean_macro_auroc_equivalence(&[(&scores, &other)], &labels, 1, 200, 3, &c, 0.01).unwrap();
        assert_eq!(q.delta, d);
        assert!(q.delta.low <= q.low90 && q.high90 <= q.delta.high);
    }

    /// `n` rows of one label: score = label + noise.
    fn noisy(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = Rng::new(seed);
        let labels: Vec<f32> = (0..n).map(|_| if rng.f64() < 0.4 { 1.0 } else { 0.0 }).collect();
        let scores = labels.iter().map(|&y| (f64::from(y) + 1.5 * rng.normal()) as f32).collect();
        (scores, labels)
    }

    #[test]
    fn patients_are_numbered_in_order_and_resampled_whole() {
        let c = Clusters::patients(&[7, 7, 3, 9, 3, 7]);
        assert_eq!(
            (c.of_row.clone(), c.count(), c.rows(), c.unit()),
            (vec![0, 0, 1, 2, 1, 0], 3, 6, BootstrapUnit::Patient)
        );
        for b in 0..20 {
            let w = c.resample(5, 1, b);
            // Rows of one patient share a weight; the patients drawn add up to the patients.
            assert!(w[0] == w[1] && w[1] == w[5] && w[2] == w[4], "{w:?}");
            assert_eq!(w[0] + w[2] + w[3], 3, "{w:?}");
        }
        let i = Clusters::images(4);
        assert_eq!((i.of_row.clone(), i.count(), i.unit()), (vec![0, 1, 2, 3], 4, BootstrapUnit::Image));
    }

    /// Patients whose images are copies of one image: resampling the patients is resampling
    /// the distinct images (same draws, weights scaled by the copies, which AUROC ignores),
    /// while resampling the copies as if independent narrows the interval.
    #[test]
    fn copies_of_one_image_add_no_certainty_at_the_patient_level() {
        let (scores, labels) = noisy(150, 3);
        let names = vec!["x".to_string()];
        let unique = evaluate(&scores, &labels, &names, 400, 11, &Clusters::images(150));
        let copies = 4;
        let rep = |v: &[f32]| v.iter().flat_map(|&x| std::iter::repeat_n(x, copies)).collect::<Vec<f32>>();
        let (s4, y4) = (rep(&scores), rep(&labels));
        let patient: Vec<u32> = (0..150u32).flat_map(|p| std::iter::repeat_n(p, copies)).collect();
        let by_patient = evaluate(&s4, &y4, &names, 400, 11, &Clusters::patients(&patient));
        let by_image = evaluate(&s4, &y4, &names, 400, 11, &Clusters::images(150 * copies));
        let (u, p, i) = (unique.macro_auroc.unwrap(), by_patient.macro_auroc.unwrap(), by_image.macro_auroc.unwrap());
        assert!((u.value - p.value).abs() < 1e-12 && (u.value - i.value).abs() < 1e-12);
        assert!((u.low - p.low).abs() < 1e-12 && (u.high - p.high).abs() < 1e-12, "{u:?} vs {p:?}");
        let width = |e: Estimate| e.high - e.low;
        assert!(width(i) < 0.7 * width(p), "image-level {i:?} vs patient-level {p:?}");
        assert_eq!((by_patient.bootstrap_unit, by_patient.bootstrap_clusters), (BootstrapUnit::Patient, 150));
        assert!(by_patient.markdown().contains("400 resamples of the 150 patients, each with all of its images"));
        // Paired: the same holds for a difference between two models.
        let (other, _) = noisy(150, 4);
        let o4 = rep(&other);
        let d_unique = paired_macro_auroc_delta(&scores, &other, &labels, 1, 400, 2, &Clusters::images(150)).unwrap();
        let d_patient = paired_macro_auroc_delta(&s4, &o4, &y4, 1, 400, 2, &Clusters::patients(&patient)).unwrap();
        assert!((d_unique.low - d_patient.low).abs() < 1e-12 && (d_unique.high - d_patient.high).abs() < 1e-12);
    }
}
