//! Finding the inputs: the PhysioNet layout under `--mimic-root`
//! (`DIR/[physionet.org/files/]{mimic-cxr,mimic-cxr-jpg,mimiciv}/<version>/`), explicit
//! per-project folders overriding it, the MIMIC-IV release told by its folders and headers,
//! and every table as `.csv.gz` or `.csv`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Where the user said to look.
#[derive(Debug, Clone, Default)]
pub struct Roots {
    pub mimic_root: Option<PathBuf>,
    pub cxr_dir: Option<PathBuf>,
    pub cxr_jpg_dir: Option<PathBuf>,
    pub mimic_iv_dir: Option<PathBuf>,
}

/// The MIMIC-CXR (DICOM) project.
#[derive(Debug, Clone)]
pub struct CxrDicom {
    pub root: PathBuf,
    pub version: String,
    pub record_list: Option<PathBuf>,
}

/// The MIMIC-CXR-JPG project's tables.
#[derive(Debug, Clone)]
pub struct CxrJpg {
    pub root: PathBuf,
    pub version: String,
    pub metadata: Option<PathBuf>,
    pub split: Option<PathBuf>,
    pub chexpert: Option<PathBuf>,
    pub negbio: Option<PathBuf>,
}

/// The MIMIC-IV tables and their release.
#[derive(Debug, Clone)]
pub struct MimicIv {
    pub root: PathBuf,
    /// `1.0`, `2.0`, `2.2`, `3.1`, ...
    pub version: String,
    pub patients: PathBuf,
    pub admissions: PathBuf,
    pub transfers: PathBuf,
    pub icustays: PathBuf,
}

/// Everything found.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub cxr_dicom: Option<CxrDicom>,
    pub cxr_jpg: Option<CxrJpg>,
    pub mimic_iv: MimicIv,
}

/// `stem.csv.gz`, else `stem.csv`, in `dir`.
pub fn table_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    ["csv.gz", "csv"].iter().map(|ext| dir.join(format!("{stem}.{ext}"))).find(|p| p.is_file())
}

/// The first line of a table (gunzipped when `.gz`).
pub fn header_of(path: &Path) -> Result<Vec<String>> {
    let file = fs_err::File::open(path)?;
    let mut line = String::new();
    let read = if path.extension().is_some_and(|e| e == "gz") {
        BufReader::new(flate2::read::MultiGzDecoder::new(file)).read_line(&mut line)
    } else {
        BufReader::new(file).read_line(&mut line)
    };
    read.map_err(|e| Error::Csv { path: path.to_path_buf(), message: format!("reading the header: {e}") })?;
    let line = line.trim_end_matches(['\n', '\r']);
    let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(line.as_bytes());
    let mut rec = csv::StringRecord::new();
    r.read_record(&mut rec).map_err(|e| Error::csv(path, e))?;
    Ok(rec.iter().map(str::to_string).collect())
}

fn version_of(name: &str) -> Option<Vec<u32>> {
    let parts: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
    parts.filter(|p| (2..=3).contains(&p.len()))
}

/// The highest `x.y[.z]` version folder in `project`.
fn latest_version(project: &Path) -> Option<(String, PathBuf)> {
    let entries = fs_err::read_dir(project).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            version_of(&name).map(|v| (v, name, e.path()))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, name, path)| (name, path))
}

/// A project folder under the root, with or without `physionet.org/files/`.
fn project_dir(root: &Path, name: &str) -> Option<(String, PathBuf)> {
    [root.join(name), root.join("physionet.org/files").join(name)].iter().find_map(|p| latest_version(p))
}

fn version_from_name(dir: &Path) -> Option<String> {
    let name = dir.file_name()?.to_string_lossy().into_owned();
    let tail = name.rsplit(['-', '_']).next().unwrap_or(&name).to_string();
    version_of(&tail).map(|_| tail)
}

/// Reads the MIMIC-IV folder: `core/` is v1.0; under `hosp/`, `admit_provider_id` means v2.2
/// or later (the folder name tells which), `race` without it v2.0/2.1.
pub fn mimic_iv(dir: &Path) -> Result<MimicIv> {
    let (hosp, core) = (dir.join("hosp"), dir.join("core"));
    let tables = if hosp.is_dir() {
        hosp
    } else if core.is_dir() {
        core
    } else {
        return Err(Error::input(dir, "no hosp/ or core/ folder: not a MIMIC-IV release"));
    };
    let need = |d: &Path, stem: &str| {
        table_file(d, stem).ok_or_else(|| Error::MissingTable { dir: d.to_path_buf(), stem: stem.to_string() })
    };
    let admissions = need(&tables, "admissions")?;
    let header = header_of(&admissions)?;
    let named = version_from_name(dir);
    let has = |c: &str| header.iter().any(|h| h == c);
    let version = if tables.ends_with("core") || has("ethnicity") {
        "1.0".to_string()
    } else if has("admit_provider_id") {
        named.filter(|v| version_of(v) >= Some(vec![2, 2])).unwrap_or_else(|| "2.2".into())
    } else {
        named.filter(|v| matches!(v.as_str(), "2.0" | "2.1")).unwrap_or_else(|| "2.0".into())
    };
    Ok(MimicIv {
        root: dir.to_path_buf(),
        version,
        patients: need(&tables, "patients")?,
        admissions,
        transfers: need(&tables, "transfers")?,
        icustays: need(&dir.join("icu"), "icustays")?,
    })
}

fn cxr_jpg(root: &Path, version: String) -> CxrJpg {
    let t = |stem: &str| table_file(root, stem);
    CxrJpg {
        root: root.to_path_buf(),
        version,
        metadata: t("mimic-cxr-2.0.0-metadata"),
        split: t("mimic-cxr-2.0.0-split"),
        chexpert: t("mimic-cxr-2.0.0-chexpert"),
        negbio: t("mimic-cxr-2.0.0-negbio"),
    }
}

fn cxr_dicom(root: &Path, version: String) -> CxrDicom {
    CxrDicom { root: root.to_path_buf(), version, record_list: table_file(root, "cxr-record-list") }
}

fn explicit(dir: &Path, flag: &str) -> Result<(String, PathBuf)> {
    if !dir.is_dir() {
        return Err(Error::input(dir, format!("no such folder ({flag})")));
    }
    Ok((version_from_name(dir).unwrap_or_default(), dir.to_path_buf()))
}

/// Finds every input; explicit folders win over the layout under `mimic_root`.
pub fn discover(roots: &Roots) -> Result<Inputs> {
    let under = |name: &str| roots.mimic_root.as_deref().and_then(|r| project_dir(r, name));
    let dicom = match &roots.cxr_dir {
        Some(d) => Some(explicit(d, "--cxr-dir")?),
        None => under("mimic-cxr"),
    };
    let jpg = match &roots.cxr_jpg_dir {
        Some(d) => Some(explicit(d, "--cxr-jpg-dir")?),
        None => under("mimic-cxr-jpg"),
    };
    let iv = match &roots.mimic_iv_dir {
        Some(d) => explicit(d, "--mimic-iv-dir")?.1,
        None => under("mimiciv").map(|(_, p)| p).ok_or_else(|| {
            Error::input(
                roots.mimic_root.as_deref().unwrap_or(Path::new("--mimic-root")),
                "no MIMIC-IV found: expected [physionet.org/files/]mimiciv/<version>/ here, or give --mimic-iv-dir",
            )
        })?,
    };
    if dicom.is_none() && jpg.is_none() {
        return Err(Error::input(
            roots.mimic_root.as_deref().unwrap_or(Path::new("--mimic-root")),
            "no MIMIC-CXR found: expected mimic-cxr/<version>/ or mimic-cxr-jpg/<version>/ here, or give --cxr-dir / \
             --cxr-jpg-dir",
        ));
    }
    Ok(Inputs {
        cxr_dicom: dicom.map(|(v, p)| cxr_dicom(&p, v)),
        cxr_jpg: jpg.map(|(v, p)| cxr_jpg(&p, v)),
        mimic_iv: mimic_iv(&iv)?,
    })
}
