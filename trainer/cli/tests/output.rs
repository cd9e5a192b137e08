//! What the built `trainer` binary does when its standard output cannot be written.

#![allow(clippy::unwrap_used)]

/// A closed pipe (`trainer ... | head` once head has quit) is an I/O error, exit 5, that says
/// so; not a panic (exit 101) as with `println!`.
#[test]
fn a_closed_standard_output_is_an_io_error_not_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["ehr-columns", "--ehr", "demographics"])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("writing to standard output"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
