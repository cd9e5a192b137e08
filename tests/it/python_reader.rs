//! The dataset from Python (`trainer/reference/cxr_reader.py`, README "Using the dataset from
//! PyTorch"): a version built by `pipeline build` reads in Python to the same rows, labels,
//! EHR columns and pixels as the trainer reads; the feature parts read in pandas, pyarrow
//! (with compute filters on text columns) and polars. The Python packages (numpy,
//! safetensors, pyarrow, pandas, polars) go into a virtual environment in the test cache (`CXR_TEST_DATA_DIR`, default
//! `~/.cache/cxr-test-data`), made once with `python3 -m venv` and pip; under CI a failure
//! to make it fails the test, elsewhere the test says why and returns.

use std::path::{Path, PathBuf};
use std::process::Command;

use cxr_dataset::Split;
use pipeline::build::{BuildConfig, build};
use pipeline::images::ImageSource;
use pipeline::progress::Silent;
use trainer::data::{Dataset, ImageSource as Held};

use crate::build_images::archive_copy;
use crate::build_table::config;

/// A Python with numpy, safetensors, pyarrow, pandas and polars; `None` (saying why) where there is none, except
/// under CI, where having none fails the test.
pub(crate) fn python_or_skip() -> Option<PathBuf> {
    match python() {
        Ok(p) => Some(p),
        Err(why) if std::env::var_os("CI").is_some() => panic!("no Python environment under CI: {why}"),
        Err(why) => {
            eprintln!("not checked here, no Python environment with numpy: {why}");
            None
        }
    }
}

/// A Python with numpy, safetensors, pyarrow, pandas and polars, or why there is none.
fn python() -> Result<PathBuf, String> {
    let cache = std::env::var_os("CXR_TEST_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir).join(".cache/cxr-test-data")
    });
    let venv = cache.join("venv-reader");
    let py = venv.join("bin/python");
    let ready = |py: &Path| {
        Command::new(py)
            .args(["-c", "import numpy, safetensors, pyarrow, pandas, polars"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready(&py) {
        return Ok(py);
    }
    let run = |cmd: &mut Command| -> Result<(), String> {
        let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if o.status.success() { Ok(()) } else { Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&o.stderr).trim())) }
    };
    fs_err::create_dir_all(&cache).map_err(|e| e.to_string())?;
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(&py).args(["-m", "pip", "install", "-q", "numpy", "safetensors", "pyarrow", "pandas", "polars"]))?;
    if ready(&py) {
        Ok(py)
    } else {
        Err("numpy, safetensors, pyarrow, pandas or polars did not import after installing them".into())
    }
}

#[test]
fn the_python_reader_reads_what_the_trainer_reads() {
    let Some(py) = python_or_skip() else { return };
    let (_d, root) = archive_copy();
    let out = tempfile::tempdir().unwrap();
    let built = build(
        &BuildConfig { images: ImageSource::Dicom, image_size: 32, shard_size: 16, ..config(&root, out.path()) },
        &Silent,
    )
    .unwrap();
    let ds = Dataset::open(&built.dir).unwrap();
    let ehr = ["sex_male", "age_norm", "view_PA", "icu_icu"].map(String::from);
    let reader = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../trainer/reference");
    let script = "import json, sys\n\
                  sys.path.insert(0, sys.argv[1])\n\
                  from cxr_reader import CxrDataset\n\
                  clean = lambda m: [[None if v != v else v for v in r] for r in m.tolist()]\n\
                  out = {}\n\
                  for split in ('train', 'validate', 'test'):\n\
                  \x20   d = CxrDataset(sys.argv[2], split=split, ehr_columns=sys.argv[3].split(','))\n\
                  \x20   x = d[0]\n\
                  \x20   out[split] = dict(rows=len(d), labels=clean(d.label_matrix()), ehr=clean(d.ehr()),\n\
                  \x20       pixels=int(d.images().astype('int64').sum()), first=[int(x['image'].sum()), x['ehr'].tolist()],\n\
                  \x20       version=d.version, label_names=d.labels, ids=d.ids, splits=sorted(set(d.splits)),\n\
                  \x20       raw=clean(d.raw_label_matrix()), first_id=x['dicom_id'])\n\
                  print(json.dumps(out))\n";
    let o = Command::new(&py).arg("-c").arg(script).arg(&reader).arg(&built.dir).arg(ehr.join(",")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for split in [Split::Train, Split::Validate, Split::Test] {
        let p = &got[split.as_str()];
        let mut columns = ds.label_columns.clone();
        columns.extend(ehr.iter().cloned());
        let rust = ds.load(&[split], &columns, Held::Memory).unwrap();
        assert_eq!(p["rows"].as_u64().unwrap() as usize, rust.len(), "{split:?}");
        assert_eq!(p["version"], ds.version.as_str());
        assert_eq!(p["label_names"], serde_json::json!(ds.labels));
        let l = ds.label_columns.len();
        for i in 0..rust.len() {
            let row = rust.feature_row(i);
            let same = |a: &serde_json::Value, b: f32| match a.as_f64() {
                Some(v) => v as f32 == b,
                None => b.is_nan(),
            };
            for (k, &v) in row[..l].iter().enumerate() {
                assert!(same(&p["labels"][i][k], v), "{split:?} row {i} label {k}");
            }
            for (k, name) in ehr.iter().enumerate() {
                assert!(same(&p["ehr"][i][k], row[l + k]), "{split:?} row {i} {name}");
            }
        }
        let pixels: u64 =
            (0..rust.len()).map(|i| rust.image(i).unwrap().iter().map(|&v| u64::from(v)).sum::<u64>()).sum();
        assert_eq!(p["pixels"].as_u64().unwrap(), pixels, "{split:?} pixels");
        let first: u64 = rust.image(0).unwrap().iter().map(|&v| u64::from(v)).sum();
        assert_eq!(p["first"][0].as_u64().unwrap(), first);
        // Ids, the split and the raw labels, against the feature table.
        let table = crate::build_table::read_table(&built.dir);
        let in_split = table.column("split").unwrap().str().unwrap().clone();
        let ids: Vec<&str> = table
            .column("dicom_id")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .zip(in_split.iter())
            .filter(|(_, s)| *s == Some(split.as_str()))
            .map(|(d, _)| d.unwrap())
            .collect();
        assert_eq!(p["ids"], serde_json::json!(ids), "{split:?}");
        assert_eq!(p["first_id"], ids[0]);
        assert_eq!(p["splits"], serde_json::json!([split.as_str()]));
        let raw = table.column("raw_label_edema").unwrap().f64().unwrap().clone();
        let raw: Vec<Option<f64>> =
            raw.iter().zip(in_split.iter()).filter(|(_, s)| *s == Some(split.as_str())).map(|(r, _)| r).collect();
        let k = ds.labels.iter().position(|l| l == "Edema").unwrap();
        for (i, r) in raw.iter().enumerate() {
            assert_eq!(p["raw"][i][k].as_f64(), *r, "{split:?} row {i}: blank is NaN (null here), not 0");
        }
        assert!(raw.iter().any(Option::is_none), "the fixture has blank Edema labels");
    }
}

/// A table-only build reads too (no images); the reader verifies each file once and
/// remembers it; on a 10,000-image version its memory stays under twice one shard while
/// every image is read (measured from after a first Parquet read, which maps about 65 MB of
/// pyarrow's own code and thread pool whatever the data).
#[test]
fn the_python_reader_reads_table_only_builds_and_maps_shards_lazily() {
    let Some(py) = python_or_skip() else { return };
    let reader = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../trainer/reference");
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let table_only = build(&config(&crate::fixture::tables_of("2.2").root, out.path()), &Silent).unwrap();
    let rows = crate::build_table::read_table(&table_only.dir).height();
    let script = "import json, sys\n\
                  sys.path.insert(0, sys.argv[1])\n\
                  from cxr_reader import CxrDataset\n\
                  d = CxrDataset(sys.argv[2], ehr_columns=['sex_male'])\n\
                  x = d[0]\n\
                  print(json.dumps(dict(rows=len(d), image=x['image'] is None, has=d.has_images, id=x['dicom_id'])))\n";
    let run = |script: &str, dir: &Path| {
        let o = Command::new(&py)
            .arg("-c")
            .arg(script)
            .arg(&reader)
            .arg(dir)
            .env("CXR_READER_CACHE", cache.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let got = run(script, &table_only.dir);
    assert_eq!(got["rows"].as_u64().unwrap() as usize, rows, "{got}");
    assert_eq!((got["image"].as_bool(), got["has"].as_bool()), (Some(true), Some(false)), "{got}");
    assert!(got["id"].as_str().unwrap().len() == 44, "{got}");
    let verified = fs_err::read_to_string(cache.path().join("verified.json")).unwrap();
    assert!(verified.contains("part-00000.parquet"), "{verified}");

    // 10,000 images of 128 x 128 in four shards of 2,500 (41 MB each).
    let big = large_version(tempfile::tempdir().unwrap(), 10_000, 2_500, 128);
    let script = "import json, sys\n\
                  sys.path.insert(0, sys.argv[1])\n\
                  def rss(key):\n\
                  \x20   return [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key)][0] * 1024\n\
                  import glob, os, numpy, pyarrow.parquet\n\
                  from cxr_reader import CxrDataset\n\
                  pyarrow.parquet.read_table(sorted(glob.glob(os.path.join(sys.argv[2], 'features', '*')))[0])\n\
                  before = rss('VmRSS:')\n\
                  d = CxrDataset(sys.argv[2], ehr_columns=['age_norm'])\n\
                  total = 0\n\
                  for i in range(len(d)):\n\
                  \x20   total += int(d[i]['image'][0, 0])\n\
                  print(json.dumps(dict(rows=len(d), total=total, grew=rss('VmHWM:') - before)))\n";
    let got = run(script, &big.1);
    assert_eq!(got["rows"], 10_000, "{got}");
    let expected: u64 = (0..10_000u64).map(|i| i % 251).sum();
    assert_eq!(got["total"].as_u64().unwrap(), expected, "every image read, in order: {got}");
    let shard = 2_500 * 128 * 128;
    let grew = got["grew"].as_u64().unwrap();
    assert!(grew < 2 * shard, "the reader grew by {grew} bytes, more than two shards of {shard}");
    eprintln!(
        "reader memory on 10,000 images of 128x128: grew {:.1} MB (one shard {:.1} MB)",
        grew as f64 / 1e6,
        shard as f64 / 1e6
    );
}

/// A version folder of `rows` images (`side` x `side`, pixel value `row % 251`) in shards of
/// `per_shard`, with feature parts holding the ids, the split, an EHR column and the labels,
/// and a manifest: what `pipeline build` writes, made directly (building 10,000 images takes
/// minutes in a debug build).
fn large_version(dir: tempfile::TempDir, rows: usize, per_shard: usize, side: usize) -> (tempfile::TempDir, PathBuf) {
    use cxr_dataset::manifest::{Counts, Manifest, Part, Task};
    use cxr_dataset::shard::Shard;
    use polars::prelude::*;
    let root = dir.path().join("v");
    let task = Task::new("mimic-cxr", "dicom_id", &cxr_dataset::LABELS);
    let mut parts = Vec::new();
    for (i, first) in (0..rows).step_by(per_shard).enumerate() {
        let n = per_shard.min(rows - first);
        let mut shard = Shard::new(side, side);
        for r in first..first + n {
            shard.push(&vec![(r % 251) as u8; side * side]).unwrap();
        }
        let mut bytes = Vec::new();
        shard.write(&mut bytes).unwrap();
        let images = format!("images/part-{i:05}.safetensors");
        cxr_dataset::files::write_atomic(&root.join(&images), &bytes).unwrap();
        let mut columns = vec![
            Column::new("dicom_id".into(), (first..first + n).map(|r| format!("{r:08x}-0-0-0-0")).collect::<Vec<_>>()),
            Column::new("split".into(), vec!["train"; n]),
            Column::new("age_norm".into(), vec![0.5f32; n]),
        ];
        for c in task.label_columns.iter().chain(&task.raw_label_columns) {
            columns.push(Column::new(c.as_str().into(), vec![0.0f32; n]));
        }
        let df = DataFrame::new(n, columns).unwrap();
        let features = format!("features/part-{i:05}.parquet");
        let sha = pipeline::build::write_parquet(&df, &root.join(&features), "v", "none").unwrap();
        parts.push(Part {
            features,
            features_sha256: sha,
            rows: n,
            images: Some(images),
            images_sha256: Some(cxr_dataset::files::sha256_hex(&bytes)),
            images_bytes: Some(bytes.len() as u64),
        });
    }
    let manifest = Manifest {
        dataset_version: "v".into(),
        schema_hash: String::new(),
        pipeline_version: String::new(),
        code_digest: String::new(),
        config: String::new(),
        task: Some(task),
        images: None,
        counts: Counts { images_read: rows, rows, rejected: 0 },
        rejects: String::new(),
        parts,
    };
    fs_err::write(root.join("manifest.json"), manifest.to_json().unwrap()).unwrap();
    (dir, root)
}

/// Every feature part and the rejects file of a build read in pyarrow, pandas and polars to
/// the same rows; text columns are `large_string` (not `string_view`), so pyarrow's compute
/// functions and pandas' read filters work on `split`.
#[test]
fn feature_parts_read_in_pyarrow_pandas_and_polars() {
    let Some(py) = python_or_skip() else { return };
    let out = tempfile::tempdir().unwrap();
    let built = build(&config(&crate::fixture::tables_of("2.2").root, out.path()), &Silent).unwrap();
    let table = crate::build_table::read_table(&built.dir);
    let split = table.column("split").unwrap().str().unwrap().clone();
    let tests = split.iter().filter(|s| *s == Some("test")).count();
    let script = "import glob, json, os, sys\n\
                  import pyarrow, pyarrow.compute as pc, pyarrow.parquet as pq, pandas as pd, polars as pl\n\
                  parts = sorted(glob.glob(os.path.join(sys.argv[1], 'features', '*.parquet')))\n\
                  t = pyarrow.concat_tables([pq.read_table(p) for p in parts])\n\
                  test = sum(len(pd.read_parquet(p, filters=[('split', '==', 'test')])) for p in parts)\n\
                  rejects = pq.read_table(os.path.join(sys.argv[1], 'rejects.parquet'))\n\
                  print(json.dumps(dict(rows=t.num_rows, split_type=str(t.schema.field('split').type),\n\
                  \x20   dicom_type=str(t.schema.field('dicom_id').type),\n\
                  \x20   compute=pc.sum(pc.equal(t['split'], 'test')).as_py(),\n\
                  \x20   filtered=t.filter(pc.field('split') == 'test').num_rows, pandas=test,\n\
                  \x20   pandas_rows=sum(len(pd.read_parquet(p)) for p in parts),\n\
                  \x20   polars=sum(pl.read_parquet(p).filter(pl.col('split') == 'test').height for p in parts),\n\
                  \x20   rejects_type=str(rejects.schema.field('reason').type))))\n";
    let o = Command::new(&py).arg("-c").arg(script).arg(&built.dir).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got["rows"].as_u64().unwrap() as usize, table.height(), "{got}");
    assert_eq!(got["pandas_rows"].as_u64().unwrap() as usize, table.height(), "{got}");
    for k in ["split_type", "dicom_type", "rejects_type"] {
        assert_eq!(got[k], "large_string", "{k}: {got}");
    }
    assert!(tests > 0);
    for k in ["compute", "filtered", "pandas", "polars"] {
        assert_eq!(got[k].as_u64().unwrap() as usize, tests, "{k}: {got}");
    }
}
