//! The `pipeline` library: the dataset build and everything around it that the `pipeline`
//! binary does, testable in-process.
//!
//! Folders by purpose, in data-flow order: [`sources`] reads the input archive
//! ([`sources::discover`] finds it, [`sources::ingest`] reads its tables against
//! [`sources::schema`], [`sources::table`] the CSV lists read whole, [`sources::dicom_meta`]
//! DICOM headers when there is no metadata table); [`build`] runs the stages with the settings
//! of a [`build::config::BuildConfig`]: [`build::link`] (the SQL linkage), [`build::labels`]
//! (labels and splits; a re-split draws from [`rng`]), [`build::encode`] (the EHR features),
//! the image stage in [`images`] (DICOM decoding in [`images::dicom`], raster decoding and the
//! preprocessing in [`images::preprocess`], the shards), [`build::report`] (the cohort report)
//! and [`build::identity`] (what a MIMIC version id hashes). [`publish`] writes a version
//! (parts, shards, manifest, the durable rename; [`publish::identity`] the code digest and the
//! version id, [`publish::versions`] the index, listing, verifying and comparing built
//! versions), for the MIMIC build and for [`eval`], which builds CheXpert and NIH as
//! evaluation datasets. [`progress`] is how long stages report.
//!
//! The `pipeline` binary (its own package, `pipeline/cli/`) parses the arguments and calls
//! this library; the synthetic archive generator is the `synth` crate (`synth/`), which uses
//! this library's readers and which this library cannot use.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod build;
mod error;
pub mod eval;
pub mod images;
pub mod progress;
pub mod publish;
pub mod rng;
pub mod sources;

pub use error::{Error, Result};
