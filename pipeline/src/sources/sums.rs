//! `SHA256SUMS.txt`, the checksum list PhysioNet ships at the top of each project version
//! (`<sha256>  <path relative to the project folder>`, one line per file, as `sha256sum`
//! writes it). Image fingerprints use it instead of reading the files, so a copy of the
//! archive (new modification times, another disk) is the same version; the synthetic
//! generator writes one for each project it makes.

use std::collections::HashMap;
use std::path::Path;

use crate::{Error, Result};

/// The checksum list's file name, at the top of a project version folder.
pub const SUMS_FILE: &str = "SHA256SUMS.txt";

/// A project's checksum list: relative path -> lowercase hex sha256.
#[derive(Debug, Clone, Default)]
pub struct Sums {
    pub by_path: HashMap<String, String>,
}

impl Sums {
    /// The list at `root/SHA256SUMS.txt`, or none when there is no such file. A malformed
    /// line is an error naming the file and line.
    pub fn read(root: &Path) -> Result<Option<Self>> {
        let path = root.join(SUMS_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = fs_err::read_to_string(&path)?;
        let mut by_path = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = || Error::BadValue {
                path: path.clone(),
                line: i + 1,
                column: "sha256  path".into(),
                value: line.to_string(),
                expected: "64 hex digits, a space, then a path (as sha256sum writes)".into(),
            };
            let (sum, rest) = line.split_once(' ').ok_or_else(bad)?;
            // `sha256sum` marks text mode with a second space, binary mode with `*`.
            let file = rest.strip_prefix([' ', '*']).unwrap_or(rest);
            if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) || file.is_empty() {
                return Err(bad());
            }
            by_path.insert(file.strip_prefix("./").unwrap_or(file).to_string(), sum.to_ascii_lowercase());
        }
        Ok(Some(Self { by_path }))
    }

    /// The listed sha256 of `rel`.
    pub fn get(&self, rel: &str) -> Option<&str> {
        self.by_path.get(rel).map(String::as_str)
    }
}

/// Writes `root/SHA256SUMS.txt` for every file under `root` (but itself), sorted by path.
pub fn write(root: &Path) -> Result<()> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs_err::read_dir(&dir)? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(root)
                && rel != Path::new(SUMS_FILE)
            {
                files.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    files.sort();
    let mut text = String::with_capacity(files.len() * 120);
    for rel in &files {
        let sum = cxr_dataset::files::sha256_file(&root.join(rel))?;
        text.push_str(&format!("{sum}  {rel}\n"));
    }
    cxr_dataset::files::write_atomic(&root.join(SUMS_FILE), text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_sha256sum_writes() {
        let dir = std::env::temp_dir().join(format!("cxr-sums-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("files")).unwrap();
        std::fs::write(dir.join("files/a.jpg"), b"abc").unwrap();
        std::fs::write(dir.join("LICENSE.txt"), b"").unwrap();
        write(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(SUMS_FILE)).unwrap();
        // sha256sum's output for these two files.
        assert_eq!(
            text,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  LICENSE.txt\n\
             ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  files/a.jpg\n"
        );
        let sums = Sums::read(&dir).unwrap().unwrap();
        assert_eq!(sums.get("files/a.jpg"), Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
        std::fs::write(dir.join(SUMS_FILE), "abc files/a.jpg\n").unwrap();
        let err = Sums::read(&dir).unwrap_err().to_string();
        assert!(err.contains("SHA256SUMS.txt, line 1"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(Sums::read(&dir).unwrap().is_none());
    }
}
