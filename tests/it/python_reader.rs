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
                  \x20       pixels=int(d.images.astype('int64').sum()), first=[int(x['image'].sum()), x['ehr'].tolist()],\n\
                  \x20       version=d.version, label_names=d.labels)\n\
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
    }
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
