//! `pipeline build-eval chexpert|nih`: the real header lines and rows of DATA.md sections 3
//! and 4, each NIH quirk, label mapping by name, path safety, and synthetic trees end to end.

use std::path::{Path, PathBuf};

use cxr_dataset::Uncertain;
use pipeline::build::{MANIFEST, read_features};
use pipeline::eval::{EvalConfig, EvalKind, build_eval, nih_age};
use pipeline::images::RunOptions;
use pipeline::progress::Silent;
use pipeline::sources::paths::inside;
use polars::prelude::*;

const CHEXPERT_HEADER: &str = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices";
const CHEXPERT_ROW: &str =
    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0";
const NIH_HEADER: &str = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]";
const NIH_ROW: &str = "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143";

pub fn config(kind: EvalKind, root: &Path, out: &Path) -> EvalConfig {
    EvalConfig {
        kind,
        root: root.to_path_buf(),
        out: out.to_path_buf(),
        uncertain: Uncertain::Zeros,
        validate_fraction: 0.2,
        seed: 3,
        shard_size: 16,
        image_size: 32,
        verify_inputs_full: false,
        run: RunOptions::default(),
    }
}

/// A small gray JPG.
fn jpg(path: &Path) {
    fs_err::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::GrayImage::from_fn(40, 48, |x, y| image::Luma([((x * 5 + y * 3) % 256) as u8]));
    img.save(path).unwrap();
}

fn png(path: &Path, rgba: bool) {
    fs_err::create_dir_all(path.parent().unwrap()).unwrap();
    if rgba {
        image::RgbaImage::from_fn(32, 32, |x, y| image::Rgba([(x * 8) as u8, (y * 8) as u8, 90, 255]))
            .save(path)
            .unwrap();
    } else {
        image::GrayImage::from_fn(32, 32, |x, y| image::Luma([(x * 4 + y * 4) as u8])).save(path).unwrap();
    }
}

fn column<T: PolarsNumericType>(df: &DataFrame, name: &str) -> Vec<Option<T::Native>> {
    let c = df.column(name).unwrap().as_materialized_series().clone();
    c.unpack::<T>().unwrap_or_else(|_| panic!("{name}: {:?}", c.dtype())).iter().collect()
}

fn strings(df: &DataFrame, name: &str) -> Vec<String> {
    df.column(name).unwrap().str().unwrap().iter().map(|v| v.unwrap_or("").to_string()).collect()
}

/// A CheXpert tree with the given train and valid rows (and their images).
fn chexpert_tree(train: &[String], valid: &[String]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let base = root.join("CheXpert-v1.0-small");
    fs_err::create_dir_all(&base).unwrap();
    for (name, rows) in [("train.csv", train), ("valid.csv", valid)] {
        let mut text = format!("{CHEXPERT_HEADER}\n");
        for r in rows {
            text.push_str(r);
            text.push('\n');
            let path = r.split(',').next().unwrap();
            if path.starts_with("CheXpert-v1.0-small/") && !path.contains("..") && !path.contains("missing") {
                jpg(&root.join(path));
            }
        }
        fs_err::write(base.join(name), text).unwrap();
    }
    (dir, root)
}

#[test]
fn the_chexpert_row_of_data_md_maps_labels_by_name() {
    let effusion_only =
        "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Male,70,Frontal,PA,,,,,,,,,,,1.0,,,";
    let lateral = "CheXpert-v1.0-small/valid/patient64541/study1/view2_lateral.jpg,Male,55,Lateral,,0.0,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0";
    let uncertain =
        "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Female,40,Frontal,AP,,,-1.0,,,,,,,,,,,";
    let (_d, root) = chexpert_tree(
        &[CHEXPERT_ROW.to_string(), effusion_only.to_string(), uncertain.to_string()],
        &[lateral.to_string()],
    );
    let out = tempfile::tempdir().unwrap();
    let built = build_eval(&config(EvalKind::Chexpert, &root, out.path()), &Silent).unwrap();
    assert_eq!((built.listed, built.images, built.rejected), (4, 4, 0));
    let df = read_features(&built.dir).unwrap();
    let ids = strings(&df, "image_id");
    let row = |id: &str| ids.iter().position(|i| i.contains(id)).unwrap();
    let (first, eff, unc, lat) = (row("patient00001"), row("patient00002"), row("patient00003"), row("patient64541"));
    let raw = |label: &str, r: usize| column::<Float64Type>(&df, &format!("raw_label_{label}"))[r];
    let res = |label: &str, r: usize| column::<Float32Type>(&df, &format!("label_{label}"))[r];
    // DATA.md's row: No Finding 1.0, Pneumothorax 0.0, Support Devices 1.0, the rest blank.
    assert_eq!(raw("no_finding", first), Some(1.0));
    assert_eq!(raw("pneumothorax", first), Some(0.0));
    assert_eq!(raw("support_devices", first), Some(1.0));
    assert_eq!(raw("cardiomegaly", first), None);
    assert_eq!(res("cardiomegaly", first), Some(0.0), "blank is negative");
    // CheXpert's 11th label column is MIMIC's Pleural Effusion, whatever the position.
    assert_eq!(res("pleural_effusion", eff), Some(1.0));
    for (i, label) in cxr_dataset::LABELS.iter().enumerate() {
        if *label != "Pleural Effusion" {
            assert_eq!(column::<Float32Type>(&df, &cxr_dataset::label_column(i))[eff], Some(0.0), "{label}");
        }
    }
    assert_eq!((raw("cardiomegaly", unc), res("cardiomegaly", unc)), (Some(-1.0), Some(0.0)), "U-zeros");
    // Metadata kept; the official valid set is the test split.
    assert_eq!(strings(&df, "sex")[first], "F");
    assert_eq!(column::<Float64Type>(&df, "age")[first], Some(68.0));
    assert_eq!(strings(&df, "view")[lat], "");
    assert_eq!(strings(&df, "frontal_lateral")[lat], "Lateral");
    assert_eq!(strings(&df, "split")[lat], "test");
    assert!(["train", "validate"].contains(&strings(&df, "split")[first].as_str()));
    // The manifest names the label columns: MIMIC's, so a MIMIC probe applies by name.
    let manifest: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(built.dir.join(MANIFEST)).unwrap()).unwrap();
    let mimic: Vec<String> = (0..14).map(cxr_dataset::label_column).collect();
    assert_eq!(manifest["task"]["label_columns"], serde_json::json!(mimic));
    assert_eq!(manifest["task"]["id_column"], "image_id");
}

#[test]
fn paths_that_escape_the_root_are_rejected_and_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("secret.jpg");
    jpg(&outside);
    let rows = [
        CHEXPERT_ROW.to_string(),
        "CheXpert-v1.0-small/../../secret.jpg,Male,50,Frontal,PA,1.0,,,,,,,,,,,,,".to_string(),
        format!("{},Male,50,Frontal,PA,1.0,,,,,,,,,,,,,", outside.display()).replace("secret", "patient77/secret"),
        "CheXpert-v1.0-small/train/patient00005/study1/view1_frontal.jpg,Male,50,Frontal,PA,1.0,,,,,,,,,,,,,".into(),
        "CheXpert-v1.0-small/train/patient00006/study1/missing.jpg,Male,50,Frontal,PA,1.0,,,,,,,,,,,,,".into(),
    ];
    let (_d, root) = chexpert_tree(&rows, &[CHEXPERT_ROW.replace("train/patient00001", "valid/patient00009")]);
    // patient00005's image is a symlink to a file outside the tree.
    let link = root.join("CheXpert-v1.0-small/train/patient00005/study1/view1_frontal.jpg");
    fs_err::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let out = tempfile::tempdir().unwrap();
    let built = build_eval(&config(EvalKind::Chexpert, &root, out.path()), &Silent).unwrap();
    assert_eq!((built.listed, built.images, built.rejected), (6, 2, 4));
    let (f, _) = fs_err::File::open(built.dir.join("rejects.parquet")).unwrap().into_parts();
    let rejects = ParquetReader::new(f).finish().unwrap();
    let reasons = strings(&rejects, "reason").join("\n");
    assert!(reasons.contains("leaves the dataset root"), "{reasons}");
    assert!(reasons.contains("is absolute"), "{reasons}");
    assert!(reasons.contains("outside the dataset root"), "{reasons}");
    assert!(reasons.contains("unreadable"), "missing file: {reasons}");
    let stages = strings(&rejects, "stage");
    assert_eq!(stages.iter().filter(|s| *s == "path").count(), 3, "{stages:?}");
    // The same checks, directly.
    assert!(inside(&root, "a/../../b.jpg").is_err());
    assert!(inside(&root, "/etc/passwd").is_err());
    assert!(inside(&root, "C:\\x.jpg").is_err());
    assert!(inside(&root, "CheXpert-v1.0-small/train.csv").is_ok());
}

fn nih_tree(entries: &str, train_val: &[&str], test: &[&str], images: &[(&str, bool)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("nih");
    fs_err::create_dir_all(&root).unwrap();
    fs_err::write(root.join("Data_Entry_2017.csv"), entries).unwrap();
    fs_err::write(root.join("train_val_list.txt"), train_val.join("\n")).unwrap();
    fs_err::write(root.join("test_list.txt"), test.join("\n")).unwrap();
    for (rel, rgba) in images {
        png(&root.join(rel), *rgba);
    }
    (dir, root)
}

#[test]
fn nih_quirks_each_parse() {
    // The 2017 file: CRLF, a trailing header comma, zero-padded ids, `058Y` and `412Y` ages.
    let entries = [
        format!("{NIH_HEADER},"),
        NIH_ROW.to_string(),
        "00000002_000.png,No Finding,0,00002,058Y,F,AP,2048,2500,0.168,0.168".into(),
        "00000002_001.png,Effusion|Hernia,1,00002,412Y,F,AP,2048,2500,0.168,0.168".into(),
        "00000003_000.png,Mass,0,00003,002M,M,PA,2048,2500,0.168,0.168,".into(),
        "00000004_000.png,Nodule,0,00004,30,M,PA,2048,2500,0.168,0.168".into(),
    ]
    .join("\r\n")
        + "\r\n";
    let (_d, root) = nih_tree(
        &entries,
        &["00000001_000.png", "00000002_000.png", "00000002_001.png", "00000003_000.png"],
        &[],
        &[
            ("images/00000001_000.png", false),
            ("images_001/images/00000002_000.png", true),
            ("images_002/images/00000002_001.png", false),
            ("images_002/images/00000003_000.png", false),
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let built = build_eval(&config(EvalKind::Nih, &root, out.path()), &Silent).unwrap();
    assert_eq!((built.listed, built.images, built.rejected, built.unlisted), (4, 4, 0, 1), "{built:?}");
    assert_eq!(built.invalid_ages, 1);
    let df = read_features(&built.dir).unwrap();
    let ids = strings(&df, "image_id");
    let row = |id: &str| ids.iter().position(|i| i == id).unwrap();
    let subjects = column::<Int64Type>(&df, "subject_id");
    assert_eq!(subjects[row("00000002_000.png")], Some(2), "zero-padded id");
    let ages = column::<Float64Type>(&df, "age");
    assert_eq!(ages[row("00000001_000.png")], Some(57.0));
    assert_eq!(ages[row("00000002_000.png")], Some(58.0));
    assert_eq!(ages[row("00000002_001.png")], None, "412Y is not an age");
    let label = |name: &str, id: &str| column::<Float32Type>(&df, &format!("label_{name}"))[row(id)];
    assert_eq!(label("cardiomegaly", "00000001_000.png"), Some(1.0));
    assert_eq!((label("effusion", "00000002_001.png"), label("hernia", "00000002_001.png")), (Some(1.0), Some(1.0)));
    for l in cxr_dataset::NIH_LABELS {
        assert_eq!(
            column::<Float32Type>(&df, &cxr_dataset::label_column_of(l))[row("00000002_000.png")],
            Some(0.0),
            "No Finding: {l}"
        );
    }
    assert_eq!(strings(&df, "view")[row("00000002_000.png")], "AP");
    let manifest: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(built.dir.join(MANIFEST)).unwrap()).unwrap();
    assert_eq!(manifest["task"]["labels"], serde_json::json!(cxr_dataset::NIH_LABELS));
    assert_eq!(nih_age("010M"), Some(10.0 / 12.0));
    assert_eq!(nih_age("abc"), None);

    // A row with too few fields, and an unknown finding, name the line.
    let short = format!("{NIH_HEADER}\r\n{NIH_ROW}\r\n00000009_000.png,Mass,0,9,40,M,PA,1,2,3\r\n");
    let (_d2, root2) = nih_tree(&short, &["00000001_000.png"], &[], &[("images/00000001_000.png", false)]);
    let err = build_eval(&config(EvalKind::Nih, &root2, out.path()), &Silent).unwrap_err().to_string();
    assert!(err.contains("line 3") && err.contains("11 fields (found 10)"), "{err}");
    let unknown = format!("{NIH_HEADER}\r\n{}\r\n", NIH_ROW.replace("Cardiomegaly", "Cardiomegaly|Dragons"));
    let (_d3, root3) = nih_tree(&unknown, &["00000001_000.png"], &[], &[("images/00000001_000.png", false)]);
    let err = build_eval(&config(EvalKind::Nih, &root3, out.path()), &Silent).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("Finding Labels") && err.contains("Dragons"), "{err}");
}

#[test]
fn a_missing_nih_image_is_a_reject_and_a_leaky_split_fails() {
    let entries = format!("{NIH_HEADER},\r\n{NIH_ROW}\r\n00000001_001.png,Mass,1,1,57,M,PA,1,2,3,4\r\n");
    let (_d, root) =
        nih_tree(&entries, &["00000001_000.png"], &["00000001_001.png"], &[("images/00000001_000.png", false)]);
    let out = tempfile::tempdir().unwrap();
    // Patient 1 is in both lists: the official split would leak.
    let err = build_eval(&config(EvalKind::Nih, &root, out.path()), &Silent).unwrap_err().to_string();
    assert!(err.contains("split leakage: 1 subject(s) have images in more than one split (e.g. 1)"), "{err}");
    assert!(fs_err::read_dir(out.path()).unwrap().next().is_none(), "nothing is published");
    fs_err::write(root.join("test_list.txt"), "").unwrap();
    fs_err::write(root.join("train_val_list.txt"), "00000001_000.png\n00000001_001.png\n").unwrap();
    let built = build_eval(&config(EvalKind::Nih, &root, out.path()), &Silent).unwrap();
    assert_eq!((built.images, built.rejected), (1, 1));
}

#[test]
fn synthetic_trees_build_verify_and_rebuild_to_the_same_version() {
    let dir = tempfile::tempdir().unwrap();
    let (cx, nih) = (dir.path().join("chexpert"), dir.path().join("nih"));
    synth::eval::write_chexpert(&cx, 30, 5, (64, 72)).unwrap();
    synth::eval::write_nih(&nih, 30, 5, (64, 64)).unwrap();
    let out = dir.path().join("out");
    for (kind, root) in [(EvalKind::Chexpert, &cx), (EvalKind::Nih, &nih)] {
        let cfg = config(kind, root, &out);
        let built = build_eval(&cfg, &Silent).unwrap();
        assert!(built.images > 30 && built.rejected == 0, "{built:?}");
        let names: Vec<&str> = built.splits.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names, ["test", "train", "validate"], "{kind:?}");
        let (checked, problems) = pipeline::build::versions::verify(&built.dir).unwrap();
        assert!(checked >= 2 && problems.is_empty(), "{problems:?}");
        let again = build_eval(&cfg, &Silent).unwrap();
        assert!(again.reused && again.version == built.version);
    }
    // The NIH tree has the 2017 quirks the reader handles.
    let text = fs_err::read_to_string(nih.join("Data_Entry_2017.csv")).unwrap();
    assert!(text.starts_with(&format!("{NIH_HEADER},\r\n")) && text.contains("Y,"));
}
