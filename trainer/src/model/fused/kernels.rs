//! The fused kernels on burn-flex's tensors: each a pass over f32 slices in fixed-size chunks,
//! spread over the cores with rayon and compiled per instruction set through pulp's
//! `WithSimd` (the math helpers are branch-free and `inline(always)` so the loops vectorise).
//! Chunk boundaries do not depend on the thread count, so neither do the results.

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use super::math::{exp, normal_cdf, normal_pdf};
use super::products::{copied, filled, zeros};

/// Elements per parallel task: large enough to amortise a task, small enough to share the
/// work of one layer's activations among the cores.
const CHUNK: usize = 16 * 1024;

/// `x`'s f32 values in logical order, copied only when `x` is a strided view.
pub(super) fn dense(x: &FlexTensor) -> FlexTensor {
    if x.as_slice::<f32>().is_some() { x.clone() } else { x.to_contiguous() }
}

pub(super) fn values(x: &FlexTensor) -> &[f32] {
    x.as_slice::<f32>().expect("a contiguous f32 tensor (made so by `dense`)")
}

/// A tensor of `x`'s shape holding `data`.
fn like(x: &FlexTensor, data: Vec<f32>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, x.layout().shape().clone()))
}

/// `grad` as a dense buffer the backward may overwrite: its own storage when nothing else
/// holds it, else a copy.
fn writable(grad: FlexTensor) -> FlexTensor {
    let n = grad.layout().num_elements();
    let whole = grad.is_unique()
        && grad.is_contiguous()
        && grad.layout().start_offset() == 0
        && grad.bytes().len() == n * size_of::<f32>();
    if whole { grad } else { like(&grad, copied(values(&dense(&grad)))) }
}

pub(super) fn gelu_forward(x: &FlexTensor) -> FlexTensor {
    forward(Kernel::GeluForward, x)
}

pub(super) fn gelu_backward(x: &FlexTensor, grad: FlexTensor) -> FlexTensor {
    backward(Kernel::GeluBackward, x, grad)
}

pub(super) fn softmax_forward(x: &FlexTensor) -> FlexTensor {
    forward(Kernel::SoftmaxForward { row: row_len(x) }, x)
}

pub(super) fn softmax_backward(y: &FlexTensor, grad: FlexTensor) -> FlexTensor {
    backward(Kernel::SoftmaxBackward { row: row_len(y) }, y, grad)
}

/// `kernel` on `x` into a new tensor.
fn forward(kernel: Kernel, x: &FlexTensor) -> FlexTensor {
    let x = dense(x);
    let (xs, chunk) = (values(&x), kernel.chunk());
    let out = filled(xs.len(), chunk, &[0.0], |i, out| kernel.on(&xs[i * chunk..i * chunk + out.len()], out));
    like(&x, out)
}

/// `kernel` on `grad` in place, given what the forward saved.
fn backward(kernel: Kernel, saved: &FlexTensor, grad: FlexTensor) -> FlexTensor {
    let saved = dense(saved);
    let mut grad = writable(grad);
    kernel.run(values(&saved), grad.try_storage_mut::<f32>().expect("writable() returns a unique tensor"));
    grad
}

fn row_len(x: &FlexTensor) -> usize {
    x.layout().shape().last().copied().filter(|&n| n > 0).unwrap_or(1)
}

/// The fused kernels. Each runs over one chunk of the data in [`Chunk::with_simd`].
#[derive(Debug, Clone, Copy)]
enum Kernel {
    /// out = x Φ(x).
    GeluForward,
    /// out (the incoming gradient) *= Φ(x) + x φ(x).
    GeluBackward,
    /// out = softmax(x) over rows of `row` values.
    SoftmaxForward { row: usize },
    /// out (the incoming gradient g) = y (g - <g, y>) per row, where x holds y, the output.
    SoftmaxBackward { row: usize },
}

impl Kernel {
    /// Values per parallel task: whole rows for softmax.
    fn chunk(self) -> usize {
        match self {
            Kernel::SoftmaxForward { row } | Kernel::SoftmaxBackward { row } => (CHUNK / row).max(1) * row,
            Kernel::GeluForward | Kernel::GeluBackward => CHUNK,
        }
    }

    /// Runs over all of `x` and `out` (the same length), chunks in parallel.
    fn run(self, x: &[f32], out: &mut [f32]) {
        assert_eq!(x.len(), out.len(), "{self:?}: input and output differ in size");
        let chunk = self.chunk();
        out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(out, x)| self.on(x, out));
    }

    /// Runs over one chunk, on the calling thread.
    fn on(self, x: &[f32], out: &mut [f32]) {
        pulp::Arch::new().dispatch(Chunk { kernel: self, x, out })
    }
}

/// One chunk of a kernel's work. Through pulp's `WithSimd` the loops below are compiled once
/// per instruction set (AVX2 + FMA, AVX-512, baseline) and the best the CPU has runs: the
/// math helpers are branch-free and `inline(always)` so they vectorise inside them.
struct Chunk<'a> {
    kernel: Kernel,
    x: &'a [f32],
    out: &'a mut [f32],
}

impl WithSimd for Chunk<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let Chunk { kernel, x, out } = self;
        match kernel {
            Kernel::GeluForward => {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v * normal_cdf(v);
                }
            }
            Kernel::GeluBackward => {
                for (g, &v) in out.iter_mut().zip(x) {
                    *g *= normal_cdf(v) + v * normal_pdf(v);
                }
            }
            Kernel::SoftmaxForward { row } => {
                for (y, x) in out.chunks_exact_mut(row).zip(x.chunks_exact(row)) {
                    softmax_row(x, y);
                }
            }
            Kernel::SoftmaxBackward { row } => {
                for (g, y) in out.chunks_exact_mut(row).zip(x.chunks_exact(row)) {
                    softmax_backward_row(g, y);
                }
            }
        }
    }
}

/// Softmax of each row of `row` values of `x`, in place, on the calling thread (the fused
/// attention's tiles).
pub(super) fn softmax_rows(x: &mut [f32], row: usize) {
    pulp::Arch::new().dispatch(RowsInPlace { x, y: &[], row })
}

/// Softmax's backward on each row of `row` values, in place: `g` (the incoming gradient)
/// becomes `y (g - <g, y>)`, `y` being the softmax's output; on the calling thread.
pub(super) fn softmax_backward_rows(g: &mut [f32], y: &[f32], row: usize) {
    assert_eq!(g.len(), y.len(), "softmax backward: gradient and output differ in size");
    pulp::Arch::new().dispatch(RowsInPlace { x: g, y, row })
}

/// [`softmax_rows`] (when `y` is empty) or [`softmax_backward_rows`] over whole rows.
struct RowsInPlace<'a> {
    x: &'a mut [f32],
    y: &'a [f32],
    row: usize,
}

impl WithSimd for RowsInPlace<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let RowsInPlace { x, y, row } = self;
        // `for` loops, not iterator adaptors: the math must inline here, where the instruction
        // set is enabled (through a non-inlined adaptor `mul_add` became a call to libm's fmaf).
        if y.is_empty() {
            for x in x.chunks_exact_mut(row) {
                softmax_row_in_place(x);
            }
        } else {
            for (g, y) in x.chunks_exact_mut(row).zip(y.chunks_exact(row)) {
                softmax_backward_row(g, y);
            }
        }
    }
}

/// Each row's mean and 1/sqrt(var + epsilon), from LayerNorm's forward.
#[derive(Debug, Clone)]
pub(super) struct RowStats {
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

pub(super) fn layer_norm_forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
) -> (FlexTensor, RowStats) {
    let (x, gamma, beta) = (dense(x), dense(gamma), dense(beta));
    let d = row_len(&x);
    let (xs, gamma_v, beta_v) = (values(&x), values(&gamma), values(&beta));
    assert!(gamma_v.len() == d && beta_v.len() == d, "LayerNorm: scale and shift must have {d} values");
    let rows = xs.len() / d;
    let mut out = zeros(xs.len());
    let mut stats = RowStats { mean: vec![0.0; rows], rstd: vec![0.0; rows] };
    let per = (CHUNK / d).max(1);
    out.par_chunks_mut(per * d)
        .zip(xs.par_chunks(per * d))
        .zip(stats.mean.par_chunks_mut(per).zip(stats.rstd.par_chunks_mut(per)))
        .for_each(|((y, x), (mean, rstd))| {
            let rows = NormRows { d, x, gamma: gamma_v, beta: beta_v, epsilon: epsilon as f32, y, mean, rstd };
            pulp::Arch::new().dispatch(rows)
        });
    (like(&x, out), stats)
}

/// LayerNorm's gradients for the input (in `grad`'s storage), the scale and the shift. The
/// scale's and shift's sums over rows are added chunk by chunk in a fixed order, so they do not
/// depend on the thread count.
pub(super) fn layer_norm_backward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    stats: &RowStats,
    grad: FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, gamma) = (dense(x), dense(gamma));
    let d = row_len(&x);
    let mut grad = writable(grad);
    let (xs, gamma_v) = (values(&x), values(&gamma));
    let g = grad.try_storage_mut::<f32>().expect("writable() returns a unique tensor");
    assert_eq!(g.len(), xs.len(), "LayerNorm backward: gradient and input differ in size");
    let per = (CHUNK / d).max(1);
    let partials: Vec<(Vec<f32>, Vec<f32>)> = g
        .par_chunks_mut(per * d)
        .zip(xs.par_chunks(per * d))
        .zip(stats.mean.par_chunks(per).zip(stats.rstd.par_chunks(per)))
        .map(|((g, x), (mean, rstd))| {
            let mut sums = (vec![0.0f32; d], vec![0.0f32; d]);
            let rows =
                NormRowsBackward { d, x, gamma: gamma_v, mean, rstd, g, dgamma: &mut sums.0, dbeta: &mut sums.1 };
            pulp::Arch::new().dispatch(rows);
            sums
        })
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0.0f32; d], vec![0.0f32; d]);
    for (pg, pb) in partials {
        dgamma.iter_mut().zip(pg).for_each(|(a, b)| *a += b);
        dbeta.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    (grad, like(&gamma, dgamma), like(&gamma, dbeta))
}

/// LayerNorm's forward over whole rows of `d` values.
struct NormRows<'a> {
    d: usize,
    x: &'a [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
    epsilon: f32,
    y: &'a mut [f32],
    mean: &'a mut [f32],
    rstd: &'a mut [f32],
}

impl WithSimd for NormRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let n = self.d as f32;
        let rows = self.x.chunks_exact(self.d).zip(self.y.chunks_exact_mut(self.d));
        for ((x, y), (mean, rstd)) in rows.zip(self.mean.iter_mut().zip(self.rstd.iter_mut())) {
            let mu = sum(x) / n;
            // Two passes, as burn's: the variance of the centred values (centred in y).
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x - mu;
            }
            let r = 1.0 / (dot(y, y) / n + self.epsilon).sqrt();
            for ((y, &g), &b) in y.iter_mut().zip(self.gamma).zip(self.beta) {
                *y = *y * r * g + b;
            }
            (*mean, *rstd) = (mu, r);
        }
    }
}

/// LayerNorm's backward over whole rows: with x̂ = (x - mean) r and h = g gamma,
/// dx = r (h - mean(h) - x̂ mean(h x̂)); the rows' g x̂ and g are added to `dgamma`, `dbeta`.
struct NormRowsBackward<'a> {
    d: usize,
    x: &'a [f32],
    gamma: &'a [f32],
    mean: &'a [f32],
    rstd: &'a [f32],
    g: &'a mut [f32],
    dgamma: &'a mut [f32],
    dbeta: &'a mut [f32],
}

impl WithSimd for NormRowsBackward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let n = self.d as f32;
        let rows = self.x.chunks_exact(self.d).zip(self.g.chunks_exact_mut(self.d));
        // Per row: x̂ and h = g gamma, in scratch rows.
        let (mut xh, mut h) = (vec![0.0f32; self.d], vec![0.0f32; self.d]);
        for ((x, g), (&mu, &r)) in rows.zip(self.mean.iter().zip(self.rstd)) {
            for ((((xh, h), &x), &g), &w) in xh.iter_mut().zip(h.iter_mut()).zip(x).zip(g.iter()).zip(self.gamma) {
                *xh = (x - mu) * r;
                *h = g * w;
            }
            for (((dg, db), &xh), &g) in self.dgamma.iter_mut().zip(self.dbeta.iter_mut()).zip(&xh).zip(g.iter()) {
                *dg += g * xh;
                *db += g;
            }
            let (h_mean, hx_mean) = (sum(&h) / n, dot(&h, &xh) / n);
            for ((g, &h), &xh) in g.iter_mut().zip(&h).zip(&xh) {
                *g = r * (h - h_mean - xh * hx_mean);
            }
        }
    }
}

/// Σ x in 8 independent lanes, so it vectorises (the order differs from a serial sum only in
/// rounding, and is the same on every run).
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    let mut lanes = [0.0f32; 8];
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The largest value of `x`, NaN ignored as `f32::max` does (-inf when there is none), in 8
/// lanes as [`sum`]: a fold through `f32::max` is one serial chain of scalar compares (in the
/// attention's rows of 30-197 scores it took longer than the row's `exp`).
#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut lanes = [f32::NEG_INFINITY; 8];
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v);
        }
    }
    lanes.iter().copied().fold(tail, f32::max)
}

/// Σ a b over two slices of the same length, in 8 lanes as [`sum`].
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(a, b)| a * b).sum();
    let mut lanes = [0.0f32; 8];
    for (a, b) in ca.zip(cb) {
        for ((l, &a), &b) in lanes.iter_mut().zip(a).zip(b) {
            *l += a * b;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// One row's softmax, max-subtracted.
#[inline(always)]
fn softmax_row(x: &[f32], y: &mut [f32]) {
    let max = max(x);
    if max == f32::NEG_INFINITY {
        // All -inf (a fully masked row): what burn's composite softmax gives, NaN.
        y.fill(f32::NAN);
        return;
    }
    for (y, &x) in y.iter_mut().zip(x) {
        *y = exp(x - max);
    }
    normalise(y);
}

/// [`softmax_row`] in place.
#[inline(always)]
fn softmax_row_in_place(y: &mut [f32]) {
    let max = max(y);
    if max == f32::NEG_INFINITY {
        y.fill(f32::NAN);
        return;
    }
    for y in y.iter_mut() {
        *y = exp(*y - max);
    }
    normalise(y);
}

/// Scales `y` to sum to 1.
#[inline(always)]
fn normalise(y: &mut [f32]) {
    let inv = 1.0 / sum(y);
    for y in y.iter_mut() {
        *y *= inv;
    }
}

/// One row of softmax's backward: `g` becomes `y (g - <g, y>)`.
#[inline(always)]
fn softmax_backward_row(g: &mut [f32], y: &[f32]) {
    let dot = dot(g, y);
    for (g, &y) in g.iter_mut().zip(y) {
        *g = y * (*g - dot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 8-lane max equals the serial fold for every length around the lane count, wherever
    /// the largest value sits, and ignores NaN as `f32::max` does.
    #[test]
    fn lane_max_equals_the_serial_fold() {
        let serial = |x: &[f32]| x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for len in 0..40 {
            for top in 0..len.max(1) {
                let mut x: Vec<f32> = (0..len).map(|i| ((i * 7919) % 13) as f32 - 20.0).collect();
                if let Some(v) = x.get_mut(top) {
                    *v = 3.5;
                }
                assert_eq!(max(&x), serial(&x), "length {len}, largest at {top}");
                if len > 1 {
                    x[(top + 1) % len] = f32::NAN;
                    assert_eq!(max(&x), serial(&x), "length {len} with a NaN");
                }
            }
        }
        assert_eq!(max(&[f32::NAN; 9]), f32::NEG_INFINITY);
        assert_eq!(max(&[f32::NEG_INFINITY; 11]), f32::NEG_INFINITY);
    }
}
