//! A linear layer, `y = x W + b` over the last axis, as fused kernels on burn-flex, forward and
//! backward: the products through [`products`](super::products) on blocks of rows spread over
//! rayon's threads, the bias written as the product's starting value rather than added in a
//! pass of its own, and in the backward only the gradients a parent needs (the patch
//! embedding's input, the images, needs none).
//!
//! The results do not depend on the thread count: the forward's and the input gradient's blocks
//! of rows decide only which thread computes a row, not how (each output row is the same sums in
//! the same order in any block that starts at a multiple of [`ROW_ALIGN`]), and the weight
//! gradient's parts are cut by the shapes alone.

use burn::backend::flex::FlexTensor;
use burn::tensor::{Shape, TensorData};
use rayon::prelude::*;

use super::kernels::{dense, values};
use super::products::{Mat, MatMut, filled, product_mm, zeros};

/// Most rows per parallel block of the products: enough to amortise packing the weight once per
/// block (at 192 x 576 about 0.4 MB), small enough to share the 1,300-2,400-row layers of a
/// step among cores.
const BLOCK_ROWS: usize = 256;

/// Blocks of rows start at multiples of this: a multiple of every row tile of matrixmultiply's
/// kernels (8 for AVX2, 16 for AVX-512), so a row falls in the same tile whatever the blocks.
const ROW_ALIGN: usize = 16;

/// Most input rows per part of the weight gradient's sum (the parts are of equal size).
const WEIGHT_PART_ROWS: usize = 512;

/// Column blocks of the weight gradient: each part's product is split in this many tasks.
const WEIGHT_COLUMN_BLOCKS: usize = 2;

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
    let weight = Mat::rows(w, 0, d.d_in, d.d_out, d.d_out);
    let out = by_row_blocks(d.rows, d.d_out, b, |first, out| {
        let rows = out.len() / d.d_out;
        let x = Mat::rows(xs, first * d.d_in, rows, d.d_in, d.d_in);
        product_mm(MatMut::rows(out, 0, rows, d.d_out, d.d_out), x, weight, true)
    });
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
        let wt = Mat::rows(w, 0, d.d_in, d.d_out, d.d_out).t();
        let dx = by_row_blocks(d.rows, d.d_in, &[0.0], |first, dx| {
            let rows = dx.len() / d.d_in;
            let g = Mat::rows(g, first * d.d_out, rows, d.d_out, d.d_out);
            product_mm(MatMut::rows(dx, 0, rows, d.d_in, d.d_in), g, wt, false)
        });
        FlexTensor::from_data(TensorData::new(dx, xd.layout().shape().clone()))
    });
    let dw =
        wanted.weight.then(|| FlexTensor::from_data(TensorData::new(weight_gradient(xs, g, d), [d.d_in, d.d_out])));
    let db = wanted.bias.then(|| FlexTensor::from_data(TensorData::new(column_sums(g, d.d_out), [d.d_out])));
    (dx, dw, db)
}

/// dW = xᵀ g `[d_in, d_out]`, a sum over every input row. The rows are cut into parts of at
/// most [`WEIGHT_PART_ROWS`] and the columns into [`WEIGHT_COLUMN_BLOCKS`]; each (part, column
/// block) is one product on rayon's threads, into a buffer of its part, and the parts are then
/// added in order. So every value of `x` and `g` is packed once for the product, where blocks
/// of the weight's rows would pack all of `g` for each block: on the step's shapes (2 threads,
/// AVX2) 112-137 GFLOP/s against 75-101 for gemm on blocks of 32 rows of dW. The cut depends
/// on the shapes only, not the thread count, and neither do the sums.
fn weight_gradient(xs: &[f32], g: &[f32], d: Dims) -> Vec<f32> {
    if d.d_in * d.d_out == 0 || d.rows == 0 {
        return zeros(d.d_in * d.d_out);
    }
    let parts = d.rows.div_ceil(WEIGHT_PART_ROWS);
    let per_part = d.rows.div_ceil(parts);
    let width = d.d_out.div_ceil(WEIGHT_COLUMN_BLOCKS);
    let blocks: Vec<(usize, usize)> =
        (0..d.d_out).step_by(width).map(|first| (first, width.min(d.d_out - first))).collect();
    // One `[d_in, block width]` product per (part, column block), part-major.
    let sums: Vec<Vec<f32>> = (0..parts * blocks.len())
        .into_par_iter()
        .map(|task| {
            let (part, (first_col, cols)) = (task / blocks.len(), blocks[task % blocks.len()]);
            let (first_row, rows) = (part * per_part, per_part.min(d.rows - part * per_part));
            let xt = Mat::rows(xs, first_row * d.d_in, rows, d.d_in, d.d_in).t();
            let gs = Mat::rows(g, first_row * d.d_out + first_col, rows, cols, d.d_out);
            filled(d.d_in * cols, d.d_in * cols, &[0.0], |_, sum| {
                product_mm(MatMut::rows(sum, 0, d.d_in, cols, cols), xt, gs, false)
            })
        })
        .collect();
    // dW's row i: per column block, the sum over parts in part order.
    filled(d.d_in * d.d_out, d.d_out, &[0.0], |i, row| {
        for (c, &(first_col, cols)) in blocks.iter().enumerate() {
            let out = &mut row[first_col..first_col + cols];
            for part in 0..parts {
                let add = &sums[part * blocks.len() + c][i * cols..(i + 1) * cols];
                out.iter_mut().zip(add).for_each(|(o, &v)| *o += v);
            }
        }
    })
}

/// A new `[rows, width]` buffer, each row starting as `start` (a row, or one value), handed to
/// `f(first row, block)` in blocks of rows on rayon's threads: at most [`BLOCK_ROWS`] rows each,
/// starting at multiples of [`ROW_ALIGN`], and as many blocks as a multiple of the thread count
/// where the rows allow, so that the threads get equal shares.
fn by_row_blocks(rows: usize, width: usize, start: &[f32], f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    if rows == 0 || width == 0 {
        return Vec::new();
    }
    let threads = rayon::current_num_threads().max(1);
    let blocks = threads * rows.div_ceil(threads * BLOCK_ROWS).max(1);
    let per = rows.div_ceil(blocks).next_multiple_of(ROW_ALIGN).min(BLOCK_ROWS.next_multiple_of(ROW_ALIGN));
    filled(rows * width, per * width, start, |block, values| f(block * per, values))
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
