//! Patient-level intervals against an independent computation: the trainer's bootstrap
//! (`trainer::metrics`) and `trainer/reference/cluster_bootstrap.py` (numpy, the same draws,
//! its own weighted Mann-Whitney AUROC) agree on a fixture whose patients hold several
//! correlated images, and on it patient-level intervals are wider than image-level ones.

use std::path::PathBuf;
use std::process::Command;

use trainer::metrics::{Clusters, Estimate, Evaluation, evaluate, paired_macro_auroc_delta};
use trainer::rng::Rng;

use crate::python_reader::python_or_skip;

const LABELS: usize = 3;

/// Rows of 120 patients with 1 to 7 images each, interleaved (a patient's rows are not
/// contiguous), patient ids far apart. A patient's labels and each model's score offsets are
/// shared by its images, so its images are correlated. The third label is left out (NaN) on some rows.
struct Fixture {
    scores: Vec<f32>,
    other: Vec<f32>,
    labels: Vec<f32>,
    patients: Vec<u32>,
}

fn fixture() -> Fixture {
    let mut rng = Rng::new(77);
    // (patient, scores, other scores, labels) per image.
    type Row = (u32, [f32; LABELS], [f32; LABELS], [f32; LABELS]);
    let mut rows: Vec<Row> = Vec::new();
    for p in 0..120u32 {
        let id = 10_000_000 + p * 7919;
        let y: Vec<f32> = (0..LABELS).map(|k| if rng.f64() < 0.3 + 0.1 * k as f64 { 1.0 } else { 0.0 }).collect();
        // Each model's own patient effect, so the paired difference is correlated within a
        // patient too.
        let offset: Vec<f64> = (0..LABELS).map(|_| rng.normal()).collect();
        let other_offset: Vec<f64> = (0..LABELS).map(|_| rng.normal()).collect();
        for _ in 0..1 + rng.below(7) {
            let mut s = [0.0; LABELS];
            let mut o = [0.0; LABELS];
            let mut l = [0.0; LABELS];
            for k in 0..LABELS {
                s[k] = (f64::from(y[k]) + offset[k] + 0.3 * rng.normal()) as f32;
                o[k] = (1.2 * f64::from(y[k]) + other_offset[k] + 0.3 * rng.normal()) as f32;
                l[k] = if k == 2 && rng.f64() < 0.15 { f32::NAN } else { y[k] };
            }
            rows.push((id, s, o, l));
        }
    }
    // Interleave the patients' rows.
    let order = rng.permutation(rows.len());
    let mut f = Fixture { scores: Vec::new(), other: Vec::new(), labels: Vec::new(), patients: Vec::new() };
    for i in order {
        let (id, s, o, l) = rows[i];
        f.patients.push(id);
        f.scores.extend(s);
        f.other.extend(o);
        f.labels.extend(l);
    }
    f
}

fn numpy(py: &PathBuf, f: &Fixture, patients: bool, resamples: usize, seed: u64) -> serde_json::Value {
    let matrix = |v: &[f32]| -> Vec<Vec<Option<f32>>> {
        v.chunks(LABELS).map(|r| r.iter().map(|x| (!x.is_nan()).then_some(*x)).collect()).collect()
    };
    let doc = serde_json::json!({
        "scores": matrix(&f.scores),
        "other_scores": matrix(&f.other),
        "labels": matrix(&f.labels),
        "patients": patients.then_some(&f.patients),
        "resamples": resamples,
        "seed": seed,
    });
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    fs_err::write(&input, doc.to_string()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../trainer/reference/cluster_bootstrap.py");
    let o = Command::new(py).arg(&script).arg(&input).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn same(rust: &Estimate, numpy: &serde_json::Value, what: &str) {
    for (name, r) in [("value", rust.value), ("low", rust.low), ("high", rust.high)] {
        let n = numpy[name].as_f64().unwrap();
        assert!((r - n).abs() < 1e-9, "{what} {name}: trainer {r} vs numpy {n}");
    }
}

fn check(ev: &Evaluation, delta: &Estimate, np: &serde_json::Value) {
    assert_eq!(ev.bootstrap_clusters as u64, np["clusters"].as_u64().unwrap());
    same(ev.macro_auroc.as_ref().unwrap(), &np["macro_auroc"], "macro AUROC");
    for (k, label) in ev.labels.iter().enumerate() {
        same(label.auroc.as_ref().unwrap(), &np["labels"][k], &format!("label {k}"));
    }
    same(delta, &np["delta"], "paired delta");
}

#[test]
fn patient_level_intervals_match_an_independent_numpy_computation() {
    let Some(py) = python_or_skip() else { return };
    let f = fixture();
    let rows = f.patients.len();
    let names: Vec<String> = (0..LABELS).map(|k| format!("label{k}")).collect();
    let (resamples, seed) = (300, 5);
    let by_patient = Clusters::patients(&f.patients);
    assert_eq!(by_patient.count(), 120);
    let by_image = Clusters::images(rows);
    let mut widths = Vec::new();
    for (clusters, patients) in [(&by_patient, true), (&by_image, false)] {
        let ev = evaluate(&f.scores, &f.labels, &names, resamples, seed, clusters);
        let delta =
            paired_macro_auroc_delta(&f.scores, &f.other, &f.labels, LABELS, resamples, seed, clusters).unwrap();
        check(&ev, &delta, &numpy(&py, &f, patients, resamples, seed));
        let m = ev.macro_auroc.unwrap();
        widths.push((m.high - m.low, delta.high - delta.low));
    }
    // About 4 correlated images a patient: resampling images understates the uncertainty.
    let ((patient, patient_delta), (image, image_delta)) = (widths[0], widths[1]);
    assert!(patient > 1.3 * image, "macro AUROC interval widths: patients {patient}, images {image}");
    assert!(patient_delta > 1.3 * image_delta, "paired delta widths: patients {patient_delta}, images {image_delta}");
}
