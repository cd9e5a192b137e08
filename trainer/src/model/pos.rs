//! Position embeddings for inputs smaller than the pretraining size: the patch grid of the
//! learned embedding (14x14 at 224) resized to the input's grid (6x6 at 96) with PyTorch's
//! bicubic interpolation (`F.interpolate(mode="bicubic", align_corners=False)`, cubic
//! coefficient A = -0.75, edge samples clamped, no antialiasing). The CLS embedding is kept.
//!
//! The resize is linear, so it is a matrix `R` (out x in) per axis, applied as
//! `out = R grid R^T` channel by channel; gradients flow through it like any matmul.

use burn::tensor::{Device, Tensor, TensorData};

/// Cubic convolution kernel with A = -0.75 (PyTorch's `upsample_bicubic2d`).
fn cubic(x: f64) -> f64 {
    const A: f64 = -0.75;
    let x = x.abs();
    if x <= 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// The `out x in` interpolation matrix of one axis.
pub fn bicubic_matrix(input: usize, output: usize) -> Vec<f32> {
    let scale = input as f64 / output as f64;
    let mut m = vec![0f32; output * input];
    for o in 0..output {
        // Source coordinate of the output sample's centre (align_corners = False).
        let real = scale * (o as f64 + 0.5) - 0.5;
        let base = real.floor();
        let t = real - base;
        for k in -1i64..=2 {
            let w = cubic(t - k as f64);
            let idx = (base as i64 + k).clamp(0, input as i64 - 1) as usize;
            m[o * input + idx] += w as f32;
        }
    }
    m
}

/// Resizes a position embedding `[1, 1 + g*g, dim]` (CLS first) to `[1, 1 + s*s, dim]`.
///
/// # Shapes
/// - `pos`: `[1, 1 + g*g, dim]`
/// - output: `[1, 1 + side*side, dim]`
pub fn resize(pos: Tensor<3>, side: usize, device: &Device) -> Tensor<3> {
    let [_, n, dim] = pos.dims();
    let grid = ((n - 1) as f64).sqrt().round() as usize;
    if grid == side {
        return pos;
    }
    let cls = pos.clone().narrow(1, 0, 1);
    let patches = pos.narrow(1, 1, n - 1).reshape([grid, grid * dim]);
    let r = Tensor::<2>::from_data(TensorData::new(bicubic_matrix(grid, side), [side, grid]), device);
    // Rows: [side, grid*dim] -> [side, grid, dim] -> columns.
    let rows = r.clone().matmul(patches).reshape([side, grid, dim]).swap_dims(0, 1).reshape([grid, side * dim]);
    let both = r.matmul(rows).reshape([side, side, dim]).swap_dims(0, 1).reshape([1, side * side, dim]);
    Tensor::cat(vec![cls, both], 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_the_matrix_sum_to_one() {
        for (i, o) in [(14, 6), (14, 14), (6, 14), (5, 2)] {
            let m = bicubic_matrix(i, o);
            for r in 0..o {
                let s: f32 = m[r * i..(r + 1) * i].iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "{i}->{o} row {r}: {s}");
            }
        }
        // Same size: the identity.
        let m = bicubic_matrix(4, 4);
        for r in 0..4 {
            for c in 0..4 {
                assert!((m[r * 4 + c] - f32::from(u8::from(r == c))).abs() < 1e-6);
            }
        }
    }
}
