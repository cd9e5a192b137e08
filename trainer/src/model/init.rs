//! torchvision's ViT initialisation, drawn from the crate's seeded [`Rng`] so a seed gives the
//! same weights on every backend.

use std::cell::RefCell;

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor, TensorData};

use super::norm::LayerNorm;
use crate::rng::Rng;

/// Draws parameters on a device.
#[derive(Debug)]
pub struct Init<'a> {
    device: &'a Device,
    rng: RefCell<&'a mut Rng>,
}

impl<'a> Init<'a> {
    pub fn new(device: &'a Device, rng: &'a mut Rng) -> Self {
        Self { device, rng: RefCell::new(rng) }
    }

    fn draw<const D: usize>(&self, shape: [usize; D], f: impl Fn(&mut Rng) -> f64) -> Tensor<D> {
        let n: usize = shape.iter().product();
        let mut rng = self.rng.borrow_mut();
        let values: Vec<f32> = (0..n).map(|_| f(&mut rng) as f32).collect();
        Tensor::from_data(TensorData::new(values, shape), self.device)
    }

    /// N(0, std).
    pub fn normal<const D: usize>(&self, shape: [usize; D], std: f64) -> Tensor<D> {
        self.draw(shape, |r| r.normal() * std)
    }

    /// N(0, std) truncated to [-2, 2] (PyTorch's `trunc_normal_` default bounds).
    pub fn trunc_normal<const D: usize>(&self, shape: [usize; D], std: f64) -> Tensor<D> {
        self.draw(shape, |r| {
            loop {
                let v = r.normal() * std;
                if (-2.0..=2.0).contains(&v) {
                    break v;
                }
            }
        })
    }

    /// U(-a, a).
    pub fn uniform<const D: usize>(&self, shape: [usize; D], a: f64) -> Tensor<D> {
        self.draw(shape, |r| r.uniform(-a, a))
    }

    /// LayerNorm with scale 1 and shift 0.
    pub fn layer_norm(&self, d: usize, eps: f64) -> LayerNorm {
        LayerNorm::new(d, eps, self.device)
    }

    fn linear(&self, d_in: usize, d_out: usize, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Linear {
        let mut l = LinearConfig::new(d_in, d_out).with_bias(bias.is_some()).init(self.device);
        l.weight = Param::from_tensor(weight);
        l.bias = bias.map(Param::from_tensor);
        l
    }

    /// Xavier-uniform weight (`[d_in, d_out]`), bias N(0, `bias_std`) (0: zeros).
    pub fn linear_xavier(&self, d_in: usize, d_out: usize, bias_std: f64) -> Linear {
        let a = (6.0 / (d_in + d_out) as f64).sqrt();
        let w = self.uniform([d_in, d_out], a);
        let b = if bias_std > 0.0 { self.normal([d_out], bias_std) } else { Tensor::zeros([d_out], self.device) };
        self.linear(d_in, d_out, w, Some(b))
    }

    /// PyTorch's default `nn.Linear` weight, U(-1/sqrt(in), 1/sqrt(in)), with a zero bias:
    /// `nn.MultiheadAttention`'s output projection, whose bias alone its init resets.
    pub fn linear_default_zero_bias(&self, d_in: usize, d_out: usize) -> Linear {
        let a = 1.0 / (d_in as f64).sqrt();
        let w = self.uniform([d_in, d_out], a);
        self.linear(d_in, d_out, w, Some(Tensor::zeros([d_out], self.device)))
    }

    /// Truncated-normal weight with `std`, zero bias (the patch projection).
    pub fn linear_trunc_normal(&self, d_in: usize, d_out: usize, std: f64) -> Linear {
        let w = self.trunc_normal([d_in, d_out], std);
        self.linear(d_in, d_out, w, Some(Tensor::zeros([d_out], self.device)))
    }

    /// A bias-free linear with U(-1/sqrt(d_in), 1/sqrt(d_in)) weights (PyTorch's default
    /// `nn.Linear` bound), or with a bias drawn the same way.
    pub fn linear_default(&self, d_in: usize, d_out: usize, bias: bool) -> Linear {
        let a = 1.0 / (d_in as f64).sqrt();
        let w = self.uniform([d_in, d_out], a);
        let b = bias.then(|| self.uniform([d_out], a));
        self.linear(d_in, d_out, w, b)
    }
}
