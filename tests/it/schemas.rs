//! The declared schemas (`schemas/`) against what the generator writes, the real demo tables
//! and the real metadata rows quoted in DATA.md.

use std::path::Path;

use pipeline::sources::schema::Schema;

use crate::fixture::{CXR_DCM, CXR_JPG, Csv, large_tables, tables_of};

/// Asserts header and every cell of `path` against schema `name` for release `version`.
fn conforms(path: &Path, name: &str, version: &str) {
    let schema = Schema::get(name).unwrap();
    conforms_csv(&Csv::read(path), &schema, version, &path.display().to_string());
}

fn conforms_csv(t: &Csv, schema: &Schema, version: &str, what: &str) {
    let cols = schema.columns_for(version);
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(t.header, names, "{what}: header vs {schema}");
    for (i, row) in t.rows.iter().enumerate() {
        for (cell, col) in row.iter().zip(&cols) {
            assert!(col.accepts(cell), "{what} line {}: column {} = {cell:?} violates {schema}", i + 2, col.name);
        }
    }
}

#[test]
fn generated_mimic_iv_tables_match_the_declared_schemas_in_every_release() {
    for version in ["1.0", "2.0", "2.2", "3.1"] {
        let root = tables_of(version).root.join("mimiciv").join(version);
        let hosp = if version == "1.0" { "core" } else { "hosp" };
        for table in ["patients", "admissions", "transfers"] {
            conforms(&root.join(hosp).join(format!("{table}.csv.gz")), &format!("mimic-iv/{table}"), version);
        }
        conforms(&root.join("icu/icustays.csv.gz"), "mimic-iv/icustays", version);
    }
}

#[test]
fn generated_cxr_tables_match_the_declared_schemas() {
    let a = large_tables();
    let jpg = a.root.join(CXR_JPG);
    for (file, schema) in [
        ("mimic-cxr-2.0.0-metadata.csv.gz", "metadata"),
        ("mimic-cxr-2.0.0-split.csv.gz", "split"),
        ("mimic-cxr-2.0.0-chexpert.csv.gz", "chexpert"),
        ("mimic-cxr-2.0.0-negbio.csv.gz", "negbio"),
    ] {
        conforms(&jpg.join(file), &format!("mimic-cxr/{schema}"), "2.0.0");
    }
    let dcm = a.root.join(CXR_DCM);
    conforms(&dcm.join("cxr-record-list.csv.gz"), "mimic-cxr/record-list", "2.0.0");
    conforms(&dcm.join("cxr-study-list.csv.gz"), "mimic-cxr/study-list", "2.0.0");
}

#[test]
fn real_demo_tables_match_the_declared_schemas() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mimic-iv-demo-2.2");
    for table in ["patients", "admissions", "transfers"] {
        conforms(&demo.join(format!("hosp/{table}.csv.gz")), &format!("mimic-iv/{table}"), "2.2");
    }
    conforms(&demo.join("icu/icustays.csv.gz"), "mimic-iv/icustays", "2.2");
}

#[test]
fn real_metadata_rows_match_the_declared_schema() {
    let t = Csv::parse(crate::cxr_format::REAL_METADATA);
    conforms_csv(&t, &Schema::get("mimic-cxr/metadata").unwrap(), "2.0.0", "DATA.md rows");
}
