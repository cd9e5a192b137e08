//! The networks: the ViT backbone, its position-embedding resize, the MSN projection head and
//! their initialisation; [`norm`] (LayerNorm) and [`fused`] (GELU, softmax and LayerNorm as
//! one vectorised, multithreaded pass each on burn-flex, through a backend extension).

pub mod fused;
pub mod fusion;
pub mod head;
pub mod init;
pub mod norm;
pub mod pos;
pub mod vit;

pub use head::ProjectionHead;
pub use vit::{Vit, VitConfig, VitPreset};
