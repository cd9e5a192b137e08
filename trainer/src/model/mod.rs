//! The networks: the ViT backbone, its position-embedding resize, the MSN projection head and
//! their initialisation.

pub mod fused;
pub mod fusion;
pub mod head;
pub mod init;
pub mod norm;
pub mod pos;
pub mod vit;

pub use head::ProjectionHead;
pub use vit::{Vit, VitConfig};
