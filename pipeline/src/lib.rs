//! The `pipeline` library: everything the `pipeline` binary does, testable in-process.
//!
//! Today it holds the synthetic archive generator ([`synth`]); the build stages (linkage,
//! features, image shards) follow the same pattern.
//!
//! ```no_run
//! use pipeline::synth::{self, ImageKinds, SynthConfig, mimic_iv::MimicIvVersion, studies::Syntax};
//! let cfg = SynthConfig {
//!     out: "/tmp/synthetic-mimic".into(),
//!     subjects: 50,
//!     seed: 1,
//!     mimic_iv: MimicIvVersion::parse("2.2").unwrap(),
//!     images: ImageKinds { dicom: true, jpg: true },
//!     image_size: (256, 256),
//!     from_mimic_iv: None,
//!     split_fractions: [0.8, 0.1, 0.1],
//!     syntaxes: vec![Syntax::ExplicitLittle],
//!     force: true,
//! };
//! let summary = synth::run(&cfg, &pipeline::progress::Silent).unwrap();
//! println!("{} images", summary.images);
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bench;
pub mod build;
pub mod dicom_meta;
pub mod discover;
pub mod encode;
mod error;
pub mod images;
pub mod ingest;
pub mod labels;
pub mod link;
pub mod preprocess;
pub mod progress;
pub mod report;
pub mod schema;
pub mod synth;

pub use error::{Error, Result};
