//! A linear layer, `y = x W + b` over the last axis, as fused kernels on burn-flex, forward and
//! backward: the products through [`products`](super::products) on blocks of rows spread over
//! rayon's threads, the bias written as the product's starting value rather than added in a
//! pass of its own, and in the backward only the gradients a parent needs (the patch
//! embedding's input, the images, needs none).
//!
//! Every block's sums run in a fixed order and the blocks do not depend on the thread count,
//! so neither do the results.

use burn::backend::flex::FlexTensor;
use burn::tensor::{Shape, TensorData};
use rayon::prelude::*;

use super::kernels::{dense, values};
use super::products::{Mat, MatMut, product, product_mm};

/// Rows per parallel block of the products: enough to amortise packing the weight once per
/// block (at 192 x 576 about 0.4 MB), small enough to share the 6,000-row layers of a step
/// among cores.
const BLOCK_ROWS: usize = 256;

/// Rows of the weight's gradient per parallel block.
const WEIGHT_BLOCK_ROWS: usize = 32;

/// The layer's sizes: `rows` flattened leading rows, `d_in` -> `d_out`.
#[derive(Debug, Clone, Copy)]
struct Dims {
    rows: usize,
    d_in: usize,
    d_out: usize,
}

impl Dims {
    fn of(x: &FlexTensor, weight: &FlexTensor) -> Dims {
        let shape = x.layout().shape();
        let w = weight.layout().shape();
        let d_in = shape.last().copied().unwrap_or(0);
        assert!(
            w.num_dims() == 2 && w[0] == d_in,
            "fused linear: weight {w:?} is not [{d_in}, d_out] for input {shape:?}"
        );
        let rows = shape.num_elements().checked_div(d_in).unwrap_or(0);
        Dims { rows, d_in, d_out: w[1] }
    }

    /// `x`'s shape with the last axis `d_out` wide.
    fn out_shape(self, x: &FlexTensor) -> Shape {
        let mut dims: Vec<usize> = x.layout().shape().iter().copied().collect();
        if let Some(last) = dims.last_mut() {
            *last = self.d_out;
        }
        Shape::from(dims)
    }
}

/// `x W + b`: `x` `[..., d_in]`, `weight` `[d_in, d_out]` (burn's layout), `bias` `[d_out]`.
pub(super) fn linear_forward(x: &FlexTensor, weight: &FlexTensor, bias: &FlexTensor) -> FlexTensor {
    let (xd, weight, bias) = (dense(x), dense(weight), dense(bias));
    let d = Dims::of(&xd, &weight);
    let b = values(&bias);
    assert_eq!(b.len(), d.d_out, "fused linear: bias of {} values for {} outputs", b.len(), d.d_out);
    let (xs, w) = (values(&xd), values(&weight));
    let mut out = b.repeat(d.rows);
    let weight = Mat::rows(w, 0, d.d_in, d.d_out, d.d_out);
    by_row_blocks(&mut out, d.d_out, xs, d.d_in, |out, x| product_mm(out, x, weight, true));
    FlexTensor::from_data(TensorData::new(out, d.out_shape(&xd)))
}

/// Which gradients the backward computes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wanted {
    pub x: bool,
    pub weight: bool,
    pub bias: bool,
}

/// The gradients of the input, the weight and the bias (each `None` unless wanted), given the
/// forward's input and weight and the output's gradient.
pub(super) fn linear_backward(
    x: &FlexTensor,
    weight: &FlexTensor,
    grad: &FlexTensor,
    wanted: Wanted,
) -> (Option<FlexTensor>, Option<FlexTensor>, Option<FlexTensor>) {
    let (xd, weight, grad) = (dense(x), dense(weight), dense(grad));
    let d = Dims::of(&xd, &weight);
    let (xs, w, g) = (values(&xd), values(&weight), values(&grad));
    assert_eq!(g.len(), d.rows * d.d_out, "fused linear backward: gradient of {} values", g.len());
    let dx = wanted.x.then(|| {
        // dx = g Wᵀ, by blocks of rows.
        let mut dx = vec![0.0f32; d.rows * d.d_in];
        let wt = Mat::rows(w, 0, d.d_in, d.d_out, d.d_out).t();
        by_row_blocks(&mut dx, d.d_in, g, d.d_out, |dx, g| product_mm(dx, g, wt, false));
        FlexTensor::from_data(TensorData::new(dx, xd.layout().shape().clone()))
    });
    let dw = wanted.weight.then(|| {
        // dW = xᵀ g, by blocks of the weight's rows (each a sum over every input row).
        let mut dw = vec![0.0f32; d.d_in * d.d_out];
        if d.d_out > 0 && d.rows > 0 {
            let per = WEIGHT_BLOCK_ROWS;
            dw.par_chunks_mut(per * d.d_out).enumerate().for_each(|(i, dw)| {
                let (first, count) = (i * per, dw.len() / d.d_out);
                let xt = Mat::rows(xs, first, d.rows, count, d.d_in).t();
                product(
                    MatMut::rows(dw, 0, count, d.d_out, d.d_out),
                    xt,
                    Mat::rows(g, 0, d.rows, d.d_out, d.d_out),
                    1.0,
                );
            });
        }
        FlexTensor::from_data(TensorData::new(dw, [d.d_in, d.d_out]))
    });
    let db = wanted.bias.then(|| FlexTensor::from_data(TensorData::new(column_sums(g, d.d_out), [d.d_out])));
    (dx, dw, db)
}

/// `f` on matching blocks of [`BLOCK_ROWS`] rows of `out` (rows `out_width` wide) and `input`
/// (rows `in_width` wide), the blocks in parallel.
fn by_row_blocks(
    out: &mut [f32],
    out_width: usize,
    input: &[f32],
    in_width: usize,
    f: impl Fn(MatMut<'_>, Mat<'_>) + Sync,
) {
    if out_width == 0 || in_width == 0 {
        return;
    }
    out.par_chunks_mut(BLOCK_ROWS * out_width).zip(input.par_chunks(BLOCK_ROWS * in_width)).for_each(|(out, input)| {
        let rows = out.len() / out_width;
        f(MatMut::rows(out, 0, rows, out_width, out_width), Mat::rows(input, 0, rows, in_width, in_width));
    });
}

/// Σ over rows of a `[rows, width]` buffer: blocks of rows in parallel, their sums added in
/// block order.
fn column_sums(g: &[f32], width: usize) -> Vec<f32> {
    let mut total = vec![0.0f32; width];
    if width == 0 {
        return total;
    }
    let partials: Vec<Vec<f32>> = g
        .par_chunks(BLOCK_ROWS * width)
        .map(|block| {
            let mut sums = vec![0.0f32; width];
            for row in block.chunks_exact(width) {
                sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
            }
            sums
        })
        .collect();
    for p in partials {
        total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
    }
    total
}
