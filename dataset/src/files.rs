//! The files of a dataset version: the manifest's name, atomic writes and sha256 digests, one
//! implementation for the pipeline (which writes versions) and the trainer (which checks them
//! and writes its runs).

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The manifest of a version folder (`OUT/<version>/manifest.json`), written last.
pub const MANIFEST: &str = "manifest.json";

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The sha256 of bytes, as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The sha256 of a file's bytes, as hex, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = fs_err::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// This machine's name, as temporary file names carry it (processes of several machines may
/// share a folder on a cluster file system).
fn host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .unwrap_or_default();
        let clean: String = name.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '.').collect();
        if clean.is_empty() { "host".into() } else { clean }
    })
}

/// The marker of a temporary file: `<name>.tmp-<host>-<pid>-<n>`.
const TMP_MARK: &str = ".tmp-";

/// Where [`write_atomic`] writes `path` first: its name with `.tmp-<host>-<pid>-<n>` added,
/// unique to this write, so two processes (or threads) writing the same file never share one.
pub fn tmp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!("{TMP_MARK}{}-{}-{n}", host(), std::process::id()));
    path.with_file_name(name)
}

/// Flushes a folder's entries (a rename or a new file in it) to the disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs_err::File::open(dir)?.sync_all()
}

/// Writes a whole file atomically and durably: to a unique [`tmp_path`], flushed to the disk,
/// renamed over `path`, then the folder flushed; readers see the old file or the new one,
/// never a part, also after a power loss. Creates the parent folders. Errors name the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs_err::create_dir_all(dir)?;
    let tmp = tmp_path(path);
    let written = (|| {
        let mut f = fs_err::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs_err::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)
}

/// Removes the temporary files that [`write_atomic`] calls of this machine left in `dir` when
/// their process died (killed, or the power lost) before renaming them; returns how many.
/// Files of live processes, and of other machines, are left alone; where process ids cannot
/// be checked (no `/proc`), nothing is removed.
pub fn remove_stale_temps(dir: &Path) -> std::io::Result<usize> {
    if !Path::new("/proc/self").exists() {
        return Ok(0);
    }
    let entries = match fs_err::read_dir(dir) {
        Ok(entries) => entries,
        // No such folder (yet): nothing was left in it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mine = format!("{TMP_MARK}{}-", host());
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(at) = name.rfind(&mine) else { continue };
        let pid = name[at + mine.len()..].split('-').next().unwrap_or("");
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() && entry.path().is_file() {
            fs_err::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_atomic_writes() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        // The sha256 of "abc" (FIPS 180-2, appendix B.1).
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let dir = std::env::temp_dir().join(format!("cxr-files-{}", std::process::id()));
        let path = dir.join("a/b.json");
        write_atomic(&path, b"abc").unwrap();
        write_atomic(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha256_hex(b"abc"));
        assert_ne!(tmp_path(&path), tmp_path(&path), "each write has its own temporary name");
        let left: Vec<_> = std::fs::read_dir(dir.join("a")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["b.json"], "no temporary file left");
        // A temporary file of a dead process of this machine is stale; a live one's is not.
        let dead = dir.join(format!("a/b.json.tmp-{}-{}-0", host(), u32::MAX - 1));
        let live = tmp_path(&path);
        std::fs::write(&dead, b"x").unwrap();
        std::fs::write(&live, b"x").unwrap();
        assert_eq!(remove_stale_temps(&dir.join("a")).unwrap(), 1);
        assert!(!dead.exists() && live.exists());
        let err = sha256_file(&dir.join("missing")).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
