//! The `pipeline` library: everything the `pipeline` binary does, testable in-process.
//!
//! Folders by purpose, in data-flow order: [`sources`] reads the input archive
//! ([`sources::discover`] finds it, [`sources::ingest`] reads its tables against
//! [`sources::schema`], [`sources::table`] the CSV lists read whole, [`sources::dicom_meta`]
//! DICOM headers when there is no metadata table); [`build`] runs the stages with the settings
//! of a [`build::config::BuildConfig`]: [`build::link`] (the SQL linkage), [`build::labels`]
//! (labels and splits; a re-split draws from [`rng`]), [`build::encode`] (the EHR features),
//! the image stage in [`images`] (decoding and preprocessing in [`images::preprocess`], the
//! shards), [`build::report`] (the cohort report) and [`build::versions`] (publishing, listing,
//! verifying and comparing built versions); [`build::identity`] is what a version id hashes.
//! [`eval`] builds CheXpert and NIH as evaluation
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
mod error;
pub mod eval;
pub mod images;
pub mod progress;
pub mod rng;
pub mod sources;
pub mod synth;

pub use error::{Error, Result};
