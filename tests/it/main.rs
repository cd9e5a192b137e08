//! End-to-end and format-conformance tests. One binary; fixtures are generated archives
//! shared between tests (see `fixture`).

#![allow(clippy::unwrap_used)]

mod build_images;
mod build_table;
mod cxr_format;
mod dicom_files;
mod eval_datasets;
mod fixture;
mod from_demo;
mod input_keys;
mod layout;
mod mimic_iv_format;
mod patient_bootstrap;
mod probe_transfer;
mod python_reader;
mod real_dicom;
mod reference_code;
mod reproducible;
mod resume;
mod schemas;
