//! Multi-head self-attention as one fused kernel on burn-flex, forward and backward.
//!
//! The input is the packed projection `qkv` `[batch, tokens, 3 * dim]` as the ViT's stacked
//! linear layer writes it (per token: q for every head, then k, then v; head `h` owns columns
//! `h * head_dim .. (h + 1) * head_dim` of each); the output is `[batch, tokens, dim]`, heads
//! side by side, which is what the output projection reads. Per (image, head) tile, on one
//! thread: `P = softmax(q kᵀ / √head_dim)` (a `tokens x tokens` matrix, kept for the backward),
//! then `out = P v`; images run in parallel. The strided views read q, k and v in place and
//! write each head's columns of the output in place: none of the permutes, reshapes and copies
//! of the composed version, no separate scaling pass, and parallel over images and heads
//! rather than inside each small product.
//!
//! The backward, per tile, given `dout`: `dv = Pᵀ dout`, `dP = dout vᵀ`,
//! `dS = P ⊙ (dP - rowsum(dP ⊙ P))` (softmax's backward), `dq = dS k / √head_dim`,
//! `dk = dSᵀ q / √head_dim`, written into the packed gradient of `qkv`. Every tile's sums run
//! in a fixed order, so results do not depend on the thread count.

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;
use rayon::prelude::*;

use super::kernels::{dense, softmax_backward_rows, softmax_rows, values};
use super::products::{Mat, MatMut, product, zeros};

/// The attention's shape, read off `qkv`.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    tokens: usize,
    dim: usize,
    heads: usize,
    head_dim: usize,
}

impl Dims {
    fn of(qkv: &FlexTensor, heads: usize) -> Dims {
        let shape = qkv.layout().shape();
        assert_eq!(shape.num_dims(), 3, "fused attention: qkv must be [batch, tokens, 3 * dim], not {shape:?}");
        let (batch, tokens, packed) = (shape[0], shape[1], shape[2]);
        assert!(
            heads > 0 && packed % (3 * heads) == 0,
            "fused attention: the last axis ({packed}) is not 3 x {heads} heads x head_dim"
        );
        let dim = packed / 3;
        Dims { batch, tokens, dim, heads, head_dim: dim / heads }
    }

    fn scale(self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// q (part 0), k (1) or v (2) of `head` within one image's packed rows.
    fn part<'a>(self, qkv: &'a [f32], part: usize, head: usize) -> Mat<'a> {
        Mat::rows(qkv, part * self.dim + head * self.head_dim, self.tokens, self.head_dim, 3 * self.dim)
    }

    /// `head`'s columns of one image's `[tokens, dim]` rows.
    fn head<'a>(self, rows: &'a [f32], head: usize) -> Mat<'a> {
        Mat::rows(rows, head * self.head_dim, self.tokens, self.head_dim, self.dim)
    }

    /// `head`'s `tokens x tokens` matrix within one image's `[heads, tokens, tokens]`.
    fn square(self, head: usize) -> (usize, usize, usize, usize) {
        (head * self.tokens * self.tokens, self.tokens, self.tokens, self.tokens)
    }
}

/// The attention's output `[batch, tokens, dim]` and, with `keep`, its probabilities
/// `[batch, heads, tokens, tokens]` (what the backward needs); without, each image's
/// probabilities live in a scratch buffer of their own (the EMA target, evaluation).
pub(super) fn attention_forward(qkv: &FlexTensor, heads: usize, keep: bool) -> (FlexTensor, Option<FlexTensor>) {
    let qkv = dense(qkv);
    let d = Dims::of(&qkv, heads);
    let (n, per_image) = (d.tokens, d.tokens * 3 * d.dim);
    let mut out = zeros(d.batch * n * d.dim);
    let mut probs = if keep { zeros(d.batch * d.heads * n * n) } else { Vec::new() };
    if n > 0 && d.dim > 0 {
        let images = out.par_chunks_mut(n * d.dim).zip(values(&qkv).par_chunks(per_image));
        if keep {
            images
                .zip(probs.par_chunks_mut(d.heads * n * n))
                .for_each(|((out, qkv), probs)| image_forward(d, qkv, probs, out));
        } else {
            images.for_each(|(out, qkv)| image_forward(d, qkv, &mut vec![0.0f32; d.heads * n * n], out));
        }
    }
    let out = FlexTensor::from_data(TensorData::new(out, [d.batch, n, d.dim]));
    let probs = keep.then(|| FlexTensor::from_data(TensorData::new(probs, [d.batch, d.heads, n, n])));
    (out, probs)
}

fn image_forward(d: Dims, qkv: &[f32], probs: &mut [f32], out: &mut [f32]) {
    for h in 0..d.heads {
        let (at, rows, cols, stride) = d.square(h);
        product(MatMut::rows(probs, at, rows, cols, stride), d.part(qkv, 0, h), d.part(qkv, 1, h).t(), d.scale());
        softmax_rows(&mut probs[at..at + rows * cols], cols);
        let p = Mat::rows(probs, at, rows, cols, stride);
        product(MatMut::rows(out, h * d.head_dim, d.tokens, d.head_dim, d.dim), p, d.part(qkv, 2, h), 1.0);
    }
}

/// The gradient of `qkv` `[batch, tokens, 3 * dim]` given the forward's input, its
/// probabilities and the output's gradient `grad` `[batch, tokens, dim]`.
pub(super) fn attention_backward(qkv: &FlexTensor, probs: &FlexTensor, heads: usize, grad: &FlexTensor) -> FlexTensor {
    let (qkv, probs, grad) = (dense(qkv), dense(probs), dense(grad));
    let d = Dims::of(&qkv, heads);
    let n = d.tokens;
    let mut dqkv = zeros(d.batch * n * 3 * d.dim);
    if n > 0 && d.dim > 0 {
        dqkv.par_chunks_mut(n * 3 * d.dim)
            .zip(values(&qkv).par_chunks(n * 3 * d.dim))
            .zip(values(&probs).par_chunks(d.heads * n * n).zip(values(&grad).par_chunks(n * d.dim)))
            .for_each(|((dqkv, qkv), (probs, grad))| image_backward(d, qkv, probs, grad, dqkv));
    }
    FlexTensor::from_data(TensorData::new(dqkv, [d.batch, n, 3 * d.dim]))
}

fn image_backward(d: Dims, qkv: &[f32], probs: &[f32], grad: &[f32], dqkv: &mut [f32]) {
    let n = d.tokens;
    let mut ds = vec![0.0f32; n * n];
    let packed = |part: usize, h: usize| part * d.dim + h * d.head_dim;
    for h in 0..d.heads {
        let (at, rows, cols, stride) = d.square(h);
        let p = Mat::rows(probs, at, rows, cols, stride);
        let dout = d.head(grad, h);
        // dv = Pᵀ dout
        product(MatMut::rows(dqkv, packed(2, h), n, d.head_dim, 3 * d.dim), p.t(), dout, 1.0);
        // dP = dout vᵀ, then dS in place
        product(MatMut::rows(&mut ds, 0, n, n, n), dout, d.part(qkv, 2, h).t(), 1.0);
        softmax_backward_rows(&mut ds, &probs[at..at + rows * cols], cols);
        let ds_view = Mat::rows(&ds, 0, n, n, n);
        // dq = dS k * scale, dk = dSᵀ q * scale
        product(MatMut::rows(dqkv, packed(0, h), n, d.head_dim, 3 * d.dim), ds_view, d.part(qkv, 1, h), d.scale());
        product(MatMut::rows(dqkv, packed(1, h), n, d.head_dim, 3 * d.dim), ds_view.t(), d.part(qkv, 0, h), d.scale());
    }
}
