//! Reading the input archive: [`discover`] finds the PhysioNet layout's projects and release
//! versions, [`ingest`] reads their tables against the declared [`schema`]s, [`table`] reads
//! small CSV lists whole, and [`dicom_meta`] reads DICOM headers where the metadata table is
//! missing.

pub mod dicom_meta;
pub mod discover;
pub mod ingest;
pub mod schema;
pub mod table;
