//! Strided f32 matrix products on slices, one thread each, through two libraries: `gemm`
//! (burn-flex's own) and `matrixmultiply`. The fused kernels call them per tile (an image and
//! head of the attention, a block of rows of a linear layer) and spread the tiles over the
//! cores themselves, with rayon, so one pool holds every thread.
//!
//! Why two: measured on the step's shapes (2 cores, AVX2; README, `trainer bench`),
//! matrixmultiply is the faster on the linear layers (their outputs, input gradients and, cut
//! into parts of rows, weight gradients); on attention's tiles, one thread each, gemm was as
//! fast on `q kᵀ` and `Pᵀ dout` and faster on `P v` (65-95 against 50 GFLOP/s at 197 tokens,
//! 32 per head).
//!
//! Both take raw pointers and strides; this is the one place that calls them, and [`Mat`] and
//! [`MatMut`] are what make the calls sound (see the SAFETY comments).
//!
//! The module's other `unsafe`: [`filled`], [`zeros`] and [`copied`] make the fused kernels'
//! new buffers on rayon's threads, each block written by the thread that then works on it,
//! where `vec![0.0; n]` would zero all of it on the calling thread first while the others wait
//! (in `trainer bench` that zeroing and copying was about half of the main thread's own time).
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Values per block of [`zeros`] and [`copied`].
const BLOCK: usize = 16 * 1024;

/// A read-only strided view of a `rows x cols` f32 matrix: element (i, j) is
/// `data[offset + i * row_stride + j * col_stride]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mat<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A row-major view: rows `row_stride` apart, columns adjacent.
    ///
    /// # Panics
    /// If an element would lie outside `data`.
    pub(super) fn rows(data: &'a [f32], offset: usize, rows: usize, cols: usize, row_stride: usize) -> Self {
        let m = Mat { data, offset, rows, cols, row_stride, col_stride: 1 };
        assert!(
            end(offset, rows, cols, row_stride, 1) <= data.len(),
            "matrix view [{rows} x {cols}] at {offset} (row stride {row_stride}) exceeds {} values",
            data.len()
        );
        m
    }

    /// The transpose, as a view of the same values.
    pub(super) fn t(self) -> Self {
        Mat { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// A writable row-major view of a `rows x cols` f32 matrix, rows `row_stride >= cols` apart,
/// so that no two elements share a place.
#[derive(Debug)]
pub(super) struct MatMut<'a> {
    data: &'a mut [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a> MatMut<'a> {
    /// # Panics
    /// If rows overlap (`row_stride < cols` with more than one row) or an element would lie
    /// outside `data`.
    pub(super) fn rows(data: &'a mut [f32], offset: usize, rows: usize, cols: usize, row_stride: usize) -> Self {
        assert!(rows <= 1 || row_stride >= cols, "rows of {cols} values {row_stride} apart overlap");
        assert!(
            end(offset, rows, cols, row_stride, 1) <= data.len(),
            "matrix view [{rows} x {cols}] at {offset} (row stride {row_stride}) exceeds {} values",
            data.len()
        );
        MatMut { data, offset, rows, cols, row_stride }
    }
}

/// One past the last index a view reads (its offset when it is empty).
fn end(offset: usize, rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        return offset;
    }
    offset + (rows - 1) * row_stride + (cols - 1) * col_stride + 1
}

/// `(m, n, k)` of the product `a b` into `dst`.
///
/// # Panics
/// If the shapes do not chain: `a` is `m x k`, `b` is `k x n`, `dst` is `m x n`.
fn chain(dst: &MatMut<'_>, a: &Mat<'_>, b: &Mat<'_>) -> (usize, usize, usize) {
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    assert!(
        a.rows == m && b.rows == k && b.cols == n,
        "matrix product of [{} x {}] and [{} x {}] into [{m} x {n}]",
        a.rows,
        a.cols,
        b.rows,
        b.cols
    );
    (m, n, k)
}

/// A stride as the libraries take it.
fn stride(s: usize) -> isize {
    isize::try_from(s).expect("a stride fits in isize (it indexes a slice)")
}

/// `dst = scale * a b`, overwriting `dst` (which may hold anything, NaN included).
///
/// # Panics
/// If the shapes do not chain: `a` is `m x k`, `b` is `k x n`, `dst` is `m x n`.
pub(super) fn product(dst: MatMut<'_>, a: Mat<'_>, b: Mat<'_>, scale: f32) {
    let (m, n, k) = chain(&dst, &a, &b);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            let row = dst.offset + i * dst.row_stride;
            dst.data[row..row + n].fill(0.0);
        }
        return;
    }
    // SAFETY: gemm reads a[i][l] at a.offset + i a.row_stride + l a.col_stride for i < m,
    // l < k, b likewise for l < k, j < n, and writes dst[i][j] at dst.offset + i dst.row_stride
    // + j for i < m, j < n. `Mat::rows`/`MatMut::rows` checked that the last of these indices
    // is inside each slice (strides are non-negative, so the last is the largest), and the
    // assertion above that the shapes agree with those checked bounds; so every pointer gemm
    // forms stays inside its slice. Distinct (i, j) of dst are distinct places (row_stride >=
    // n), so gemm's writes do not overlap one another, and `dst` is a `&mut` slice, so they
    // overlap neither `a` nor `b` nor anything another thread reads. With `read_dst = false`
    // gemm never reads dst's prior values. `Parallelism::None`: gemm starts no threads.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr().add(dst.offset),
            1,
            stride(dst.row_stride),
            false,
            a.data.as_ptr().add(a.offset),
            stride(a.col_stride),
            stride(a.row_stride),
            b.data.as_ptr().add(b.offset),
            stride(b.col_stride),
            stride(b.row_stride),
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `dst = a b`, or `dst += a b` with `accumulate`, through matrixmultiply.
///
/// # Panics
/// If the shapes do not chain, as [`product`].
pub(super) fn product_mm(dst: MatMut<'_>, a: Mat<'_>, b: Mat<'_>, accumulate: bool) {
    let (m, n, k) = chain(&dst, &a, &b);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: as in `product`: every index sgemm forms (a[i][l], b[l][j], dst[i][j] for i < m,
    // l < k, j < n, at offset + i row_stride + j col_stride) lies inside its slice, by the bounds
    // `Mat::rows`/`MatMut::rows` checked and the shape assertion above; distinct dst elements
    // are distinct places (row_stride >= n), as sgemm requires of C; `dst` is a `&mut` slice,
    // so it overlaps neither input nor anything another thread touches. Without `accumulate`
    // (beta = 0) sgemm does not read dst. Built without matrixmultiply's `threading` feature,
    // it starts no threads.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr().add(a.offset),
            stride(a.row_stride),
            stride(a.col_stride),
            b.data.as_ptr().add(b.offset),
            stride(b.row_stride),
            stride(b.col_stride),
            if accumulate { 1.0 } else { 0.0 },
            dst.data.as_mut_ptr().add(dst.offset),
            stride(dst.row_stride),
            1,
        );
    }
}

/// A new buffer of `len` values made on rayon's threads, `block` values at a time (the last
/// block may be shorter): each block is first set to `start` repeated, then handed to `fill`
/// with its index, on the same thread. `block` must be a multiple of `start.len()`, so every
/// block starts at the beginning of `start` (the bias of a linear layer, one row's worth).
///
/// # Panics
/// If `start` is empty or `block` is no multiple of its length; and if `fill` panics.
pub(super) fn filled(len: usize, block: usize, start: &[f32], fill: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    assert!(
        !start.is_empty() && block > 0 && block.is_multiple_of(start.len()),
        "blocks of {block} values cannot start with a pattern of {}",
        start.len()
    );
    build(len, block, |_, chunk| repeat(chunk, start), fill)
}

/// `len` zeros, written on rayon's threads.
pub(super) fn zeros(len: usize) -> Vec<f32> {
    build(len, BLOCK, |_, chunk| repeat(chunk, &[0.0]), |_, _| {})
}

/// A copy of `src`, made on rayon's threads.
pub(super) fn copied(src: &[f32]) -> Vec<f32> {
    build(
        src.len(),
        BLOCK,
        |i, chunk| _ = chunk.write_copy_of_slice(&src[i * BLOCK..i * BLOCK + chunk.len()]),
        |_, _| {},
    )
}

/// Writes every element of `chunk`: `pattern` repeated from its start.
fn repeat(chunk: &mut [MaybeUninit<f32>], pattern: &[f32]) {
    if let [value] = pattern {
        for slot in chunk.iter_mut() {
            slot.write(*value);
        }
    } else {
        for part in chunk.chunks_mut(pattern.len()) {
            part.write_copy_of_slice(&pattern[..part.len()]);
        }
    }
}

/// The buffer of [`filled`], [`zeros`] and [`copied`]: `init(index, block)` must write every
/// element of its block (the three callers' closures do: `repeat` and a copy of a slice of the
/// same length), then `fill` works on the initialised block.
fn build(
    len: usize,
    block: usize,
    init: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut values: Vec<f32> = Vec::with_capacity(len);
    values.spare_capacity_mut()[..len].par_chunks_mut(block.max(1)).enumerate().for_each(|(i, chunk)| {
        init(i, chunk);
        // SAFETY: `init` wrote every element of `chunk` (its contract, kept by the callers in
        // this module), so all of it is an initialised f32.
        let chunk = unsafe { chunk.assume_init_mut() };
        fill(i, chunk);
    });
    // SAFETY: the blocks of `par_chunks_mut` cover `0..len` of the spare capacity (which holds at
    // least `len`), and each block was initialised above; had a task panicked, `for_each` would
    // have passed the panic on before this line.
    unsafe { values.set_len(len) };
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            }
        }
        out
    }

    /// Strided and transposed views give the product of the matrices they show; rows of the
    /// destination outside the view are left alone.
    #[test]
    fn products_of_strided_and_transposed_views_match_the_naive_product() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.91).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        // a inside a wider buffer (row stride 10, offset 2); b stored transposed (n x k).
        let mut wide = vec![f32::NAN; 2 + m * 10];
        for i in 0..m {
            wide[2 + i * 10..2 + i * 10 + k].copy_from_slice(&a[i * k..(i + 1) * k]);
        }
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut dst = vec![f32::NAN; 1 + m * 4];
        product(MatMut::rows(&mut dst, 1, m, n, 4), Mat::rows(&wide, 2, m, k, 10), Mat::rows(&bt, 0, n, k, k).t(), 2.0);
        for i in 0..m {
            for j in 0..n {
                let got = dst[1 + i * 4 + j];
                assert!((got - 2.0 * want[i * n + j]).abs() < 1e-5, "({i}, {j}): {got} vs {}", 2.0 * want[i * n + j]);
            }
            assert!(dst[1 + i * 4 + 3].is_nan(), "the gap after row {i} was written");
        }
        assert!(dst[0].is_nan());
        // matrixmultiply: the same product, then accumulated once more.
        let mut dst = vec![0.0f32; m * n];
        for accumulate in [false, true] {
            product_mm(
                MatMut::rows(&mut dst, 0, m, n, n),
                Mat::rows(&wide, 2, m, k, 10),
                Mat::rows(&bt, 0, n, k, k).t(),
                accumulate,
            );
        }
        for (i, (got, want)) in dst.iter().zip(&want).enumerate() {
            assert!((got - 2.0 * want).abs() < 1e-5, "element {i}: {got} vs {}", 2.0 * want);
        }
    }

    /// The new buffers hold what they should: the pattern then what `fill` wrote, for lengths
    /// that are and are not a multiple of the block.
    #[test]
    fn fresh_buffers_hold_their_pattern_fill_zeros_and_copies() {
        for len in [0, 6, 7 * 6, BLOCK + 3] {
            let v = filled(len, 12, &[1.0, 2.0, 3.0], |i, block| block[0] += i as f32 * 10.0);
            for (j, &x) in v.iter().enumerate() {
                let want = [1.0, 2.0, 3.0][j % 3] + if j % 12 == 0 { (j / 12) as f32 * 10.0 } else { 0.0 };
                assert_eq!(x, want, "element {j} of {len}");
            }
            assert_eq!(v.len(), len);
            assert!(zeros(len).iter().all(|&x| x == 0.0) && zeros(len).len() == len);
            let src: Vec<f32> = (0..len).map(|i| i as f32 * 0.5).collect();
            assert_eq!(copied(&src), src);
        }
    }

    #[test]
    #[should_panic(expected = "cannot start with a pattern")]
    fn a_block_that_cuts_its_pattern_is_refused() {
        let _ = filled(10, 5, &[1.0, 2.0], |_, _| {});
    }

    #[test]
    #[should_panic(expected = "exceeds")]
    fn a_view_past_its_slice_is_refused() {
        let data = vec![0.0f32; 10];
        let _ = Mat::rows(&data, 2, 3, 3, 3);
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn overlapping_rows_are_refused() {
        let mut data = vec![0.0f32; 10];
        let _ = MatMut::rows(&mut data, 0, 3, 3, 2);
    }
}
