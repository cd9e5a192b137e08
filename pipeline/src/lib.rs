//! The `pipeline` library: everything the `pipeline` binary does, testable in-process.
//!
//! In data-flow order: [`build`] runs the dataset build with the settings of a
//! [`config::BuildConfig`]: [`discover`] finds the inputs, [`ingest`] reads them against
//! [`schema`] (and [`table`] the CSV lists it reads whole), [`dicom_meta`] reads DICOM headers
//! when there is no metadata table, [`link`] runs the SQL linkage, [`labels`] attaches labels
//! and splits (a re-split draws from [`rng`]), [`encode`] the EHR features, [`preprocess`] and
//! [`images`] the image shards, [`report`] the cohort report, and [`versions`] publishes,
//! lists, verifies and compares built versions. [`eval`] builds CheXpert and NIH as evaluation
//! datasets. [`progress`] is how long stages report.
//!
//! Apart from the build: [`synth`], the synthetic archive generator (used by the binary's
//! `synth` and `demo` commands and by the tests, never by the build stages: a test checks the
//! module graph), and [`bench`], which times the build on a generated archive.
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
pub mod config;
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
pub mod rng;
pub mod schema;
pub mod synth;
pub mod table;
pub mod versions;

pub use error::{Error, Result};
