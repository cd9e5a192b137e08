//! The built `trainer` binary runs the golden cases it ships: `trainer selftest` from any
//! folder, with no file beside it.

#![allow(clippy::unwrap_used)]

#[test]
fn the_binary_passes_its_shipped_golden_cases_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["--device", "cpu", "selftest"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let ok: Vec<&str> = stdout.lines().filter(|l| l.starts_with("ok ")).collect();
    assert_eq!(ok.len(), trainer::selftest::CASES.len(), "{stdout}");
    assert!(ok.iter().all(|l| l.ends_with("[shipped]") && l.contains("max error")), "{stdout}");
    assert!(stdout.lines().last().unwrap().starts_with("all 9 cases passed"), "{stdout}");
}
