//! Reading the input archive: [`discover`] finds the PhysioNet layout's projects and release
//! versions, [`ingest`] reads their tables against the declared [`schema`]s, [`table`] reads
//! small CSV lists whole, [`dicom_meta`] reads DICOM headers where the metadata table is
//! missing, [`paths`] checks the identifiers and paths made from input cells, and [`sums`]
//! reads (and the generator writes) PhysioNet's `SHA256SUMS.txt`.

pub mod dicom_meta;
pub mod discover;
pub mod ingest;
pub mod paths;
pub mod schema;
pub mod sums;
pub mod table;
