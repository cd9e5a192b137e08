//! What a MIMIC build's version id hashes besides the images ([`crate::publish::identity`]):
//! the code, the input tables and DICOM headers read, the resolved settings, the SQL and
//! schema text.

use std::path::PathBuf;

use cxr_dataset::files::hex;
use sha2::{Digest, Sha256};

use super::BuildConfig;
use super::link::QUERIES;
use crate::Result;
use crate::publish::identity::code_id;
use crate::sources::schema::FILES;

/// The hash of a build's tables: their contents, the resolved config, the SQL and schema text
/// and the code ([`code_id`]) (the dataset version id before the images are fingerprinted).
/// Also returns the schema hash.
pub fn tables_id(tables: &[(&str, PathBuf)], dicoms: &[PathBuf], cfg: &BuildConfig) -> Result<(String, String)> {
    let mut h = Sha256::new();
    h.update(format!("{}\n", code_id()));
    // Headers read from DICOM files: their names and sizes.
    for p in dicoms {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        h.update(format!("dicom {name} {}\n", fs_err::metadata(p)?.len()));
    }
    for (role, path) in tables {
        let size = fs_err::metadata(path)?.len();
        h.update(format!("table {role} {size} {}\n", cxr_dataset::files::sha256_file(path)?));
    }
    h.update(cfg.describe());
    for q in QUERIES {
        h.update(format!("sql {}\n{}\n", q.name, q.text));
    }
    let mut sh = Sha256::new();
    for (name, text) in FILES {
        sh.update(format!("schema {name}\n{text}\n"));
    }
    let schema_hash = hex(&sh.finalize());
    h.update(&schema_hash);
    Ok((hex(&h.finalize()), schema_hash))
}
