//! The `pipeline` library: everything the `pipeline` binary does, testable in-process.
//!
//! In data-flow order: [`synth`] writes a synthetic archive; [`build`] runs the dataset build:
//! [`discover`] finds the inputs, [`ingest`] reads them against [`schema`], [`link`] runs the
//! SQL linkage, [`labels`] attaches labels and splits, [`encode`] the EHR features,
//! [`preprocess`] and [`images`] the image shards, [`report`] the cohort report; [`bench`]
//! times the table stage.
//!
//! ```no_run
//! use pipeline::synth::{self, SynthConfig};
//! let cfg = SynthConfig { image_size: (256, 256), ..SynthConfig::new("/tmp/synthetic-mimic".into(), 50, 1) };
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
pub mod eval;
pub mod images;
pub mod ingest;
pub mod labels;
pub mod link;
pub mod preprocess;
pub mod progress;
pub mod report;
pub mod schema;
pub mod synth;
pub mod versions;

pub use error::{Error, Result};
