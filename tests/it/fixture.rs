//! Generated archives, built once per test binary, and readers for their tables.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pipeline::progress::Silent;
use synth::mimic_iv::MimicIvVersion;
use synth::studies::Syntax;
use synth::{ImageKinds, SynthConfig, SynthSummary};

pub struct Archive {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub summary: SynthSummary,
}

pub fn config(out: &Path, subjects: usize, seed: u64, version: &str, images: ImageKinds) -> SynthConfig {
    SynthConfig {
        out: out.to_path_buf(),
        subjects,
        seed,
        mimic_iv: MimicIvVersion::parse(version).unwrap(),
        images,
        image_size: (64, 72),
        from_mimic_iv: None,
        split_fractions: [0.8, 0.1, 0.1],
        syntaxes: vec![Syntax::ExplicitLittle],
        force: false,
    }
}

pub const BOTH: ImageKinds = ImageKinds { dicom: true, jpg: true };
pub const NONE: ImageKinds = ImageKinds { dicom: false, jpg: false };

pub fn generate(cfg_of: impl FnOnce(&Path) -> SynthConfig) -> Archive {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("archive");
    let cfg = cfg_of(&root);
    let summary = synth::run(&cfg, &Silent).unwrap();
    Archive { _dir: dir, root, summary }
}

/// 40 subjects with DICOM (all three transfer syntaxes) and JPG images.
pub fn small() -> &'static Archive {
    static A: OnceLock<Archive> = OnceLock::new();
    A.get_or_init(|| {
        generate(|out| SynthConfig {
            syntaxes: vec![Syntax::ExplicitLittle, Syntax::ImplicitLittle, Syntax::Rle],
            ..config(out, 40, 7, "2.2", BOTH)
        })
    })
}

/// 1,500 subjects, tables only: for distributions.
pub fn large_tables() -> &'static Archive {
    static A: OnceLock<Archive> = OnceLock::new();
    A.get_or_init(|| generate(|out| config(out, 1500, 3, "2.2", NONE)))
}

/// Tables of each MIMIC-IV layout.
pub fn tables_of(version: &'static str) -> &'static Archive {
    static A: OnceLock<std::sync::Mutex<HashMap<&'static str, &'static Archive>>> = OnceLock::new();
    let map = A.get_or_init(Default::default);
    let mut map = map.lock().unwrap();
    map.entry(version).or_insert_with(|| Box::leak(Box::new(generate(|out| config(out, 60, 11, version, NONE)))))
}

pub const CXR_JPG: &str = "mimic-cxr-jpg/2.1.0";
pub const CXR_DCM: &str = "mimic-cxr/2.0.0";

/// A CSV table (gzip or plain) read as header + rows.
pub struct Csv {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Csv {
    pub fn read(path: &Path) -> Csv {
        let bytes = fs_err::read(path).unwrap();
        let text = if path.extension().is_some_and(|e| e == "gz") {
            assert_eq!(&bytes[..2], &[0x1f, 0x8b], "{} is not gzip", path.display());
            let mut s = String::new();
            flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut s).unwrap();
            s
        } else {
            String::from_utf8(bytes).unwrap()
        };
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Csv {
        let mut r = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
        let header = r.headers().unwrap().iter().map(str::to_string).collect();
        let rows = r.records().map(|rec| rec.unwrap().iter().map(str::to_string).collect()).collect();
        Csv { header, rows }
    }

    pub fn col(&self, name: &str) -> usize {
        self.header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name}"))
    }

    pub fn column<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let c = self.col(name);
        self.rows.iter().map(move |r| r[c].as_str())
    }
}

pub fn header_line(path: &Path) -> String {
    let bytes = fs_err::read(path).unwrap();
    let mut s = String::new();
    flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut s).unwrap();
    s.lines().next().unwrap().to_string()
}

/// Every file under `root`, in no particular order.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs_err::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Every file under `root`: relative path -> bytes.
pub fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    walk(root)
        .into_iter()
        .map(|p| (p.strip_prefix(root).unwrap().to_string_lossy().into_owned(), fs_err::read(&p).unwrap()))
        .collect()
}
