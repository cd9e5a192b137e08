//! EHR-augmented Masked Siamese Network pretraining and evaluation of Vision Transformers on a
//! dataset built by `pipeline` (METHOD.md). Built on burn; the CPU backend is burn-flex, with
//! fused kernels of our own for its hot element-wise ops ([`model::fused`]) and one allocator
//! setting ([`memory`]).
//!
//! [`backend`] chooses where the model runs (CPU, wgpu or CUDA); [`parallel`] trains on
//! several devices at once (data parallelism). In data-flow order: [`data`] (a verified
//! dataset version, read from its image shards), [`views`] (the 12 MSN views and token
//! masks), [`model`] (the ViT backbone, its position-embedding resize, the projection head, the
//! EHR-fused network), [`msn`] (the loss), [`pretrain`] (the training loop), [`weights`]
//! (loading PyTorch weights by name), [`import`] (a reference checkpoint as a run),
//! [`transform`] and [`linear`] (linear evaluation), [`metrics`] (AUROC/AP with bootstrap
//! intervals), [`report`] (figures and HTML pages), [`experiment`] (`run` and `ablate`),
//! [`parity`] (whole runs against the reference PyTorch MSN), [`bench`] (the speed of a
//! pretraining step), [`selftest`] (the golden parity cases, shipped in the binary).
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use trainer::model::VitConfig;
//! let device = Device::flex();
//! let cfg = VitConfig::new(16, 1, 2, 32).with_image_size(32).with_patch_size(8);
//! let vit = cfg.init(&device, &mut trainer::rng::Rng::new(24));
//! let cls = vit.forward(Tensor::zeros([2, 3, 32, 32], &device), None);
//! assert_eq!(cls.dims(), [2, 16]);
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod backend;
pub mod bench;
pub mod data;
mod error;
pub mod experiment;
pub mod import;
pub mod linear;
#[cfg(feature = "cuda")]
mod llvm_absent;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod msn;
pub mod parallel;
pub mod parity;
pub mod pretrain;
pub mod report;
pub mod rng;
pub mod selftest;
pub mod transform;
pub mod views;
pub mod weights;

pub use error::{Error, Result};

/// A digest of the trainer's source files (and the contract crate's), from the build script:
/// the code every run stage stands for (`experiment::RunKey`, the feature cache's key).
pub const CODE_DIGEST: &str = env!("TRAINER_CODE_DIGEST");
