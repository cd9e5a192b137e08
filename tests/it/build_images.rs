//! `pipeline build` image stage: shards aligned with the feature parts, rejects for bad files,
//! the manifest, and both image sources.

use std::collections::HashSet;
use std::path::Path;

use cxr_dataset::shard::{SUBJECT_INDEX, Shard};
use pipeline::build::{BuildConfig, FEATURES_DIR, MANIFEST, REJECTS, build, part_name, read_features};
use pipeline::images::{IMAGES_DIR, ImageSource, shard_name};
use pipeline::progress::Silent;
use polars::prelude::*;

use crate::build_table::{config, copy_tree};
use crate::fixture::{CXR_DCM, small};

pub fn archive_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    fs_err::create_dir_all(&root).unwrap();
    copy_tree(&small().root, &root);
    (dir, root)
}

fn images_config(root: &Path, out: &Path, source: ImageSource) -> BuildConfig {
    BuildConfig { images: source, image_size: 32, shard_size: 16, ..config(root, out) }
}

fn read_rejects(dir: &Path) -> DataFrame {
    let (f, _) = fs_err::File::open(dir.join(REJECTS)).unwrap().into_parts();
    ParquetReader::new(f).finish().unwrap()
}

#[test]
fn shards_line_up_with_feature_parts_and_bad_files_are_rejects() {
    let (_d, root) = archive_copy();
    // Damage two files: one truncated, one emptied.
    let rec = crate::fixture::Csv::read(&root.join(CXR_DCM).join("cxr-record-list.csv.gz"));
    let truncated = root.join(CXR_DCM).join(&rec.rows[3][3]);
    let bytes = fs_err::read(&truncated).unwrap();
    fs_err::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let emptied = root.join(CXR_DCM).join(&rec.rows[7][3]);
    fs_err::write(&emptied, b"").unwrap();

    let out = tempfile::tempdir().unwrap();
    let built = build(&images_config(&root, out.path(), ImageSource::Dicom), &Silent).unwrap();
    let cohort = built.cohort.clone().unwrap();
    assert_eq!(cohort.rejected_images, 2);
    let rejects = read_rejects(&built.dir);
    let ids: HashSet<&str> = rejects.column("dicom_id").unwrap().str().unwrap().iter().flatten().collect();
    assert_eq!(ids, HashSet::from([rec.rows[3][2].as_str(), rec.rows[7][2].as_str()]));
    let reasons: Vec<&str> = rejects.column("reason").unwrap().str().unwrap().iter().flatten().collect();
    assert!(reasons.iter().any(|r| r.contains("zero-size")), "{reasons:?}");

    // Every kept image is in exactly one shard, in the order of the feature rows.
    let features = read_features(&built.dir).unwrap();
    assert_eq!(features.height(), cohort.images_out);
    let feature_ids: Vec<&str> = features.column("dicom_id").unwrap().str().unwrap().iter().flatten().collect();
    assert!(!feature_ids.iter().any(|d| ids.contains(d)), "rejected images are not in the table");
    let mut total = 0;
    for i in 0.. {
        let shard_path = built.dir.join(IMAGES_DIR).join(shard_name(i));
        if !shard_path.is_file() {
            break;
        }
        let shard = Shard::read(fs_err::File::open(&shard_path).unwrap()).unwrap();
        let (part, _) = fs_err::File::open(built.dir.join(FEATURES_DIR).join(part_name(i))).unwrap().into_parts();
        let part = ParquetReader::new(part).finish().unwrap();
        assert_eq!(shard.len(), part.height(), "shard {i}");
        assert_eq!((shard.height, shard.width), (32, 32));
        assert!(shard.len() <= 16);
        // A chest film is neither blank nor saturated.
        for k in 0..shard.len() {
            let mean = shard.image(k).iter().map(|&v| f64::from(v)).sum::<f64>() / 1024.0;
            assert!((20.0..235.0).contains(&mean), "shard {i} image {k} mean {mean}");
        }
        total += shard.len();
    }
    assert_eq!(total, features.height());

    // The manifest lists every part with checksums of what is on disk.
    let manifest: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(built.dir.join(MANIFEST)).unwrap()).unwrap();
    assert_eq!(manifest["dataset_version"], built.version.as_str());
    assert_eq!(manifest["counts"]["rejected"], 2);
    for part in manifest["parts"].as_array().unwrap() {
        let file = built.dir.join(part["images"].as_str().unwrap());
        let sha: String = {
            use sha2::Digest;
            sha2::Sha256::digest(fs_err::read(&file).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
        };
        assert_eq!(part["images_sha256"], sha.as_str());
    }
    // --fail-fast stops at the first bad file instead.
    let mut strict = images_config(&root, &out.path().join("strict"), ImageSource::Dicom);
    strict.run.fail_fast = true;
    let err = build(&strict, &Silent).unwrap_err().to_string();
    assert!(err.contains("--fail-fast"), "{err}");
}

/// DICOM and JPG sources give nearly the same images (the JPG is the 8-bit rendering of the
/// same display image), and MONOCHROME1 files come out with bone bright like the others.
#[test]
fn dicom_and_jpg_sources_agree() {
    let root = &small().root;
    let out = tempfile::tempdir().unwrap();
    let d = build(&images_config(root, out.path(), ImageSource::Dicom), &Silent).unwrap();
    let j = build(&images_config(root, out.path(), ImageSource::Jpg), &Silent).unwrap();
    assert_ne!(d.version, j.version);
    let a = Shard::read(fs_err::File::open(d.dir.join(IMAGES_DIR).join(shard_name(0))).unwrap()).unwrap();
    let b = Shard::read(fs_err::File::open(j.dir.join(IMAGES_DIR).join(shard_name(0))).unwrap()).unwrap();
    assert_eq!(a.len(), b.len());
    // Different VOI (percentile window vs. the JPG's full range), so compare correlation.
    for k in 0..a.len() {
        let (x, y) = (a.image(k), b.image(k));
        let n = x.len() as f64;
        let (mx, my) =
            (x.iter().map(|&v| f64::from(v)).sum::<f64>() / n, y.iter().map(|&v| f64::from(v)).sum::<f64>() / n);
        let cov: f64 = x.iter().zip(y).map(|(&p, &q)| (f64::from(p) - mx) * (f64::from(q) - my)).sum();
        let vx: f64 = x.iter().map(|&p| (f64::from(p) - mx).powi(2)).sum();
        let vy: f64 = y.iter().map(|&q| (f64::from(q) - my).powi(2)).sum();
        let r = cov / (vx.sqrt() * vy.sqrt());
        assert!(r > 0.95, "image {k}: correlation {r}");
    }
    // Each image's intensity path is recorded next to its row: the DICOMs' window (when the
    // file has one) or the percentile range, the JPGs' values as stored.
    let voi = |dir: &Path| -> Vec<String> {
        let t = read_features(dir).unwrap();
        t.column("voi").unwrap().str().unwrap().iter().map(|v| v.expect("every kept image has a path").into()).collect()
    };
    let (dv, jv) = (voi(&d.dir), voi(&j.dir));
    assert!(jv.iter().all(|v| v == "raster values as stored"), "{jv:?}");
    let kinds: HashSet<&str> = dv.iter().map(String::as_str).collect();
    assert_eq!(kinds, HashSet::from(["window, LINEAR", "percentiles 0.5-99.5 (no window)"]), "{kinds:?}");
    // A table-only build has no images, so no such column.
    let t = build(&config(root, out.path()), &Silent).unwrap();
    assert!(read_features(&t.dir).unwrap().column("voi").is_err());
}

#[test]
fn verify_catches_a_changed_shard_and_list_shows_versions() {
    let root = &small().root;
    let out = tempfile::tempdir().unwrap();
    let built = build(&images_config(root, out.path(), ImageSource::Dicom), &Silent).unwrap();
    let (checked, problems) = pipeline::build::versions::verify(&built.dir).unwrap();
    assert!(checked >= 2 && problems.is_empty(), "{problems:?}");
    let other =
        build(&BuildConfig { image_size: 24, ..images_config(root, out.path(), ImageSource::Dicom) }, &Silent).unwrap();
    let lines = pipeline::build::versions::list(out.path()).unwrap();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().any(|l| l.starts_with(&built.version)) && lines.iter().any(|l| l.starts_with(&other.version)));
    // Flip one pixel byte of the first shard.
    let shard = built.dir.join(IMAGES_DIR).join(shard_name(0));
    let mut bytes = fs_err::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs_err::write(&shard, bytes).unwrap();
    let (_, problems) = pipeline::build::versions::verify(&built.dir).unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains(&shard_name(0)) && problems[0].contains("sha256"));
}

#[test]
fn a_build_where_every_image_is_rejected_fails_and_publishes_nothing() {
    // A tables-only archive: the DICOM tree holds reports but no images.
    let root = &crate::fixture::tables_of("2.2").root;
    let out = tempfile::tempdir().unwrap();
    let err = build(&images_config(root, out.path(), ImageSource::Dicom), &Silent).unwrap_err().to_string();
    assert!(err.contains("images were rejected") && err.contains(".dcm"), "{err}");
    assert!(fs_err::read_dir(out.path()).unwrap().next().is_none(), "nothing is published");
    let err = build(&images_config(root, out.path(), ImageSource::Jpg), &Silent).unwrap_err().to_string();
    assert!(err.contains("no MIMIC-CXR-JPG image tree"), "{err}");
}

/// The trainer reads only shards: each carries the numeric columns of its rows (EHR
/// encodings, labels, split code; null as NaN), equal to the Parquet part's values, and each
/// row's patient as a dense index that is equal exactly when the subject ids are, across parts.
#[test]
fn shards_carry_the_numeric_columns_of_their_rows() {
    let root = &small().root;
    let out = tempfile::tempdir().unwrap();
    let built = build(&images_config(root, out.path(), ImageSource::Dicom), &Silent).unwrap();
    let parts = cxr_dataset::manifest::Manifest::read(&built.dir).unwrap().parts.len();
    assert!(parts > 1, "the check of the subject index needs several parts");
    // subject_id -> subject_index over every part.
    let mut index_of = std::collections::HashMap::new();
    for p in 0..parts {
        let shard = Shard::read(fs_err::File::open(built.dir.join(IMAGES_DIR).join(shard_name(p))).unwrap()).unwrap();
        let (part, _) = fs_err::File::open(built.dir.join(FEATURES_DIR).join(part_name(p))).unwrap().into_parts();
        let part = ParquetReader::new(part).finish().unwrap();
        for name in ["sex_male", "age_norm", "view_AP", "icu_icu", "label_edema", "raw_label_edema", "split"] {
            assert!(shard.feature_names.iter().any(|n| n == name), "{name} in {:?}", shard.feature_names);
        }
        assert!(!shard.feature_names.iter().any(|n| n == "subject_id" || n == "dicom_id"));
        for (j, name) in shard.feature_names.iter().enumerate() {
            if name == SUBJECT_INDEX {
                let ids = part.column("subject_id").unwrap().cast(&DataType::Int64).unwrap();
                for (i, id) in ids.i64().unwrap().iter().enumerate() {
                    let got = shard.feature_row(i)[j];
                    assert_eq!(got, got.trunc(), "part {p} row {i}: {got} is not an index");
                    assert_eq!(*index_of.entry(id.unwrap()).or_insert(got), got, "part {p} row {i}, subject {id:?}");
                }
                continue;
            }
            let expected: Vec<f32> = if name == "split" {
                let s = part.column("split").unwrap().str().unwrap().clone();
                s.iter().map(|v| cxr_dataset::shard::split_code(v.unwrap()).unwrap()).collect()
            } else {
                let c = part.column(name).unwrap().cast(&DataType::Float32).unwrap();
                c.f32().unwrap().iter().map(|v| v.unwrap_or(f32::NAN)).collect()
            };
            for (i, e) in expected.iter().enumerate() {
                let got = shard.feature_row(i)[j];
                assert!(got == *e || (got.is_nan() && e.is_nan()), "part {p} row {i} {name}: {got} vs {e}");
            }
        }
    }
    // One index per subject, no two subjects sharing one, dense from 0.
    let mut indices: Vec<u32> = index_of.values().map(|&v| v as u32).collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..index_of.len() as u32).collect::<Vec<_>>(), "{index_of:?}");
    assert!(index_of.len() > 1);
}

/// Without the metadata table, a DICOM file whose header cannot be read is a reject (stage
/// "header", named in rejects.parquet), not the end of the build; with --fail-fast it is the
/// error, which says it was reading.
#[test]
fn an_unreadable_header_is_a_reject_when_metadata_comes_from_the_headers() {
    let (_d, root) = archive_copy();
    fs_err::remove_file(root.join(crate::fixture::CXR_JPG).join("mimic-cxr-2.0.0-metadata.csv.gz")).unwrap();
    let rec = crate::fixture::Csv::read(&root.join(CXR_DCM).join("cxr-record-list.csv.gz"));
    let broken = root.join(CXR_DCM).join(&rec.rows[5][3]);
    fs_err::write(&broken, b"DICM but not really").unwrap();
    let out = tempfile::tempdir().unwrap();
    let built = build(&images_config(&root, out.path(), ImageSource::Dicom), &Silent).unwrap();
    let c = built.cohort.as_ref().unwrap();
    assert_eq!((c.images_read, c.rejected_images), (rec.rows.len(), 1));
    let rejects = read_rejects(&built.dir);
    assert_eq!(rejects.height(), 1);
    let text = |name: &str| rejects.column(name).unwrap().str().unwrap().get(0).unwrap().to_string();
    let dicom_id = rec.rows[5][rec.col("dicom_id")].clone();
    assert_eq!((text("dicom_id"), text("stage")), (dicom_id.clone(), "header".to_string()));
    assert!(text("reason").contains("reading the DICOM header"), "{}", text("reason"));
    let mut strict = images_config(&root, out.path(), ImageSource::Dicom);
    strict.run.fail_fast = true;
    let err = build(&strict, &Silent).unwrap_err().to_string();
    assert!(err.contains(&dicom_id) && err.contains("reading the DICOM header"), "{err}");
}

/// `--geometry letterbox` keeps the whole film (black bars beside the portrait images instead
/// of cutting their top and bottom) and `--equalize` flattens each image's histogram; both are
/// part of the version.
#[test]
fn letterbox_and_equalize_change_the_images_and_the_version() {
    let root = &small().root;
    let out = tempfile::tempdir().unwrap();
    let base = images_config(root, out.path(), ImageSource::Dicom);
    let crop = build(&base, &Silent).unwrap();
    let boxed =
        build(&BuildConfig { geometry: pipeline::images::preprocess::Geometry::Letterbox, ..base.clone() }, &Silent)
            .unwrap();
    let equalized = build(&BuildConfig { equalize: true, ..base.clone() }, &Silent).unwrap();
    let versions: HashSet<&str> = [&crop, &boxed, &equalized].iter().map(|b| b.version.as_str()).collect();
    assert_eq!(versions.len(), 3);
    let shard = |b: &pipeline::build::BuildSummary| {
        Shard::read(fs_err::File::open(b.dir.join(IMAGES_DIR).join(shard_name(0))).unwrap()).unwrap()
    };
    let (c, l, e) = (shard(&crop), shard(&boxed), shard(&equalized));
    let side = base.image_size;
    // The archive's films are 64 wide and 72 tall (portable APs shorter): letterboxed, the
    // first output column (or row) is padding (4 of 72 source columns = 1.8 output columns),
    // cropped it is anatomy.
    let first_column = |img: &[u8]| (0..side).map(|r| u32::from(img[r * side])).sum::<u32>();
    let first_row = |img: &[u8]| img[..side].iter().map(|&v| u32::from(v)).sum::<u32>();
    let mut black_bars = 0;
    for k in 0..c.len() {
        let bar = first_column(l.image(k)).min(first_row(l.image(k)));
        let edge = first_column(c.image(k)).min(first_row(c.image(k)));
        assert!(bar <= edge, "image {k}: the letterboxed edge ({bar}) is padding, the cropped one ({edge}) anatomy");
        black_bars += usize::from(bar == 0);
        let mean = |img: &[u8]| img.iter().map(|&v| f64::from(v)).sum::<f64>() / img.len() as f64;
        assert!((mean(e.image(k)) - 127.5).abs() < 25.0, "image {k}: equalised mean {}", mean(e.image(k)));
        assert_ne!(e.image(k), c.image(k));
    }
    assert!(black_bars > 0, "{black_bars} of {} images with a whole black bar", c.len());
    let manifest = fs_err::read_to_string(boxed.dir.join(MANIFEST)).unwrap();
    assert!(manifest.contains("letterbox"), "the manifest says how images were made");
}

/// Every written EHR column reaches the model through `--ehr`: `race` is a variable of its
/// own (one-hot, unknown when no admission is linked), and the `*_unknown` / `view_other`
/// columns a build makes join their variable, so a scan with a blank view is not an all-zero
/// vector.
#[test]
fn every_written_ehr_column_is_selectable() {
    use cxr_dataset::features::EhrSelection;
    use trainer::data::{Dataset, ImageSource as Held};
    let out = tempfile::tempdir().unwrap();
    let cfg = BuildConfig {
        missing: pipeline::build::encode::MissingPolicy::Unknown,
        drop_rare_views: false,
        ..images_config(&small().root, out.path(), ImageSource::Jpg)
    };
    let built = build(&cfg, &Silent).unwrap();
    let ds = Dataset::open(&built.dir).unwrap();
    let scan: EhrSelection = "scan".parse().unwrap();
    let columns = ds.ehr_columns(&scan).unwrap();
    assert_eq!(
        columns,
        [
            "view_PA",
            "view_LATERAL",
            "view_AP",
            "view_LL",
            "view_unknown",
            "view_other",
            "orientation_Erect",
            "orientation_Recumbent",
            "orientation_unknown"
        ]
    );
    let rows = ds.load(&[cxr_dataset::Split::Train], &columns, Held::Memory).unwrap();
    let table = read_features(&built.dir).unwrap();
    let blank_views = table.column("view").unwrap().null_count();
    assert!(blank_views > 0, "the fixture has images without a view");
    // Every image has exactly one view column and one orientation column set.
    for i in 0..rows.len() {
        let r = rows.feature_row(i);
        assert_eq!(r[..6].iter().sum::<f32>(), 1.0, "row {i}: {r:?}");
        assert_eq!(r[6..].iter().sum::<f32>(), 1.0, "row {i}: {r:?}");
    }
    let race: EhrSelection = "race".parse().unwrap();
    let race_columns = ds.ehr_columns(&race).unwrap();
    assert_eq!(race_columns.len(), 7);
    let rows = ds.load(&[cxr_dataset::Split::Train], &race_columns, Held::Memory).unwrap();
    for i in 0..rows.len() {
        assert_eq!(rows.feature_row(i).iter().sum::<f32>(), 1.0, "row {i}");
    }
    // The raw value next to its encoding: an image linked to no admission is unknown.
    let raw = table.column("race").unwrap().str().unwrap().clone();
    let unknown = table.column("race_unknown").unwrap().f32().unwrap().clone();
    for (r, u) in raw.iter().zip(unknown.iter()) {
        if r.is_none() {
            assert_eq!(u, Some(1.0));
        }
    }
    assert!(unknown.iter().any(|u| u == Some(0.0)), "most images have a recorded race");
}
