//! Linear evaluation, `run` and `ablate` on small datasets written through the contract
//! crate: a results file with every field, reproducible numbers for a seed, undefined labels,
//! labels of an external dataset matched by name, and a resumable ablation with its table.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use burn::tensor::Device;
use cxr_dataset::shard::Shard;
use sha2::{Digest, Sha256};
use trainer::backend::{Backend, Precision};
use trainer::experiment::{RANDOM_INIT, RunSummary, ablate, grid, run_name};
use trainer::linear::{LinearEvalConfig, linear_eval, load_encoder, random_encoder};
use trainer::model::VitConfig;
use trainer::pretrain::{PretrainConfig, pretrain};
use trainer::transform::ProbeTransform;
use trainer::views::ViewConfig;

const EHR: [&str; 13] = [
    "sex_male",
    "sex_female",
    "age_norm",
    "view_PA",
    "view_LATERAL",
    "view_AP",
    "view_LL",
    "orientation_Erect",
    "orientation_Recumbent",
    "mortality_alive",
    "mortality_died",
    "icu_icu",
    "icu_not_icu",
];

/// 120 images of 32x32: a bright disc left (class 0) or right (class 1), EHR columns that
/// agree with the class, splits 80/20/20. Labels: Edema = class; Fracture = 1 on two training
/// images only (a single class on validation and test: undefined there). The manifest's task
/// lists `labels` (names) with their columns.
fn write_dataset(dir: &Path, version: &str, labels: &[&str]) {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let mut shard = Shard::new(32, 32);
    let mut names: Vec<String> = EHR.iter().map(|s| s.to_string()).collect();
    names.extend(["age", "label_edema", "label_fracture", "split"].map(String::from));
    shard.feature_names = names;
    for k in 0..120usize {
        let class = (k * 7 % 11) % 2;
        let (cx, cy) = (if class == 0 { 10.0 } else { 22.0 }, 8.0 + (k % 5) as f32 * 4.0);
        let img: Vec<u8> = (0..1024)
            .map(|p| {
                let (x, y) = ((p % 32) as f32, (p / 32) as f32);
                let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
                (40.0 + 180.0 * (-d * d / 30.0).exp() + ((p * 7 + k) % 13) as f32) as u8
            })
            .collect();
        let c = class as f32;
        let split = if k < 80 {
            0.0
        } else if k < 100 {
            1.0
        } else {
            2.0
        };
        let mut f = vec![c, 1.0 - c, c - 0.5, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0 - c, c, c, 1.0 - c];
        f.extend([40.0 + 30.0 * c, c, if k == 3 || k == 5 { 1.0 } else { 0.0 }, split]);
        shard.push_with_features(&img, &f).unwrap();
    }
    let mut bytes = Vec::new();
    shard.write(&mut bytes).unwrap();
    let file = "images/part-00000.safetensors";
    std::fs::write(dir.join(file), &bytes).unwrap();
    let sha: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let columns: Vec<String> =
        labels.iter().map(|l| if *l == "Edema" { "label_edema".into() } else { "label_fracture".into() }).collect();
    let manifest = serde_json::json!({
        "dataset_version": version,
        "parts": [{"images": file, "images_sha256": sha, "rows": 120}],
        "task": {"dataset": "test", "labels": labels, "label_columns": columns},
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
}

fn vit() -> VitConfig {
    VitConfig::new(16, 2, 2, 32).with_image_size(32).with_patch_size(8)
}

fn tiny(ehr: &str) -> PretrainConfig {
    let mut cfg = PretrainConfig::paper(vit(), ehr)
        .with_prototypes(16)
        .with_ehr_dim(8)
        .with_batch_size(16)
        .with_epochs(2)
        .with_lr(1e-3);
    cfg.views = ViewConfig::new().with_global_size(32).with_focal_size(16).with_focal_views(2);
    cfg
}

fn probe() -> LinearEvalConfig {
    LinearEvalConfig::new(ProbeTransform::for_crop(32)).with_lr(1e-2).with_epochs(30).with_bootstrap(200)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn linear_eval_of_random_and_pretrained_encoders() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, "data0001", &["Edema", "Fracture"]);
    let device = device();
    let run = dir.path().join("run");
    pretrain(&tiny("sex"), &data, &run, &device, false).unwrap();

    // A random encoder: every field, the undefined label, a macro over Edema only.
    let out = dir.path().join("random");
    let cfg = probe();
    let r =
        linear_eval(&cfg, random_encoder(&vit(), 3, &device), &data, &[], &out, &out.join("f"), &device, &mut |_| {})
            .unwrap();
    let json = read_json(&out.join("results.json"));
    for key in [
        "encoder",
        "dataset_version",
        "config",
        "labels",
        "train_rows",
        "validate_rows",
        "test_rows",
        "epochs_run",
        "best_epoch",
        "best_validate_macro_auroc",
        "test",
    ] {
        assert!(!json[key].is_null(), "{key} missing");
    }
    assert_eq!(json["train_rows"], 80);
    assert_eq!(json["test_rows"], 20);
    assert_eq!(json["test"]["undefined"], serde_json::json!(["Fracture"]));
    let edema = json["test"]["labels"][0]["auroc"]["value"].as_f64().unwrap();
    assert_eq!(json["test"]["macro_auroc"]["value"].as_f64().unwrap(), edema);
    assert!(json["test"]["macro_auroc"]["low"].as_f64().unwrap() <= edema);
    assert!(std::fs::read_to_string(out.join("results.md")).unwrap().contains("| Fracture | 0 / 20 | undefined |"));
    assert_eq!(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().count(), r.history.len());
    assert!(out.join("probe.bpk").is_file());
    // Early stopping: at most best + patience + 1 epochs.
    assert!(r.result.epochs_run <= r.result.best_epoch + cfg.patience + 1);

    // The same seed gives the same numbers (the second run reads the cached features).
    let again =
        linear_eval(&cfg, random_encoder(&vit(), 3, &device), &data, &[], &out, &out.join("f"), &device, &mut |_| {})
            .unwrap();
    assert_eq!(again.result.test, r.result.test);
    assert_eq!(std::fs::read_dir(out.join("f")).unwrap().count(), 3, "train, validate, test features cached");

    // The pretrained encoder, with a 25% fraction, and an external dataset whose labels are
    // in another order (and one the probe lacks): matched by name.
    let ext = dir.path().join("ext");
    write_dataset(&ext, "ext00001", &["Fracture", "Edema"]);
    let enc = load_encoder(&run, &device).unwrap();
    let out2 = dir.path().join("pre");
    let cfg2 = probe().with_fraction(0.25);
    let p =
        linear_eval(&cfg2, enc, &data, std::slice::from_ref(&ext), &out2, &run.join("features"), &device, &mut |_| {})
            .unwrap();
    assert_eq!(p.result.train_rows, 20);
    assert_eq!(p.result.encoder["pretraining_dataset"], "data0001");
    let e = &p.result.external[0];
    assert_eq!(e.version, "ext00001");
    assert_eq!(e.test.labels[0].label, "Edema", "results follow the probe's label order");
    // Same images and labels as the in-domain test split, so the same Edema AUROC.
    assert_eq!(e.test.labels[0].auroc.unwrap().value, p.result.test.labels[0].auroc.unwrap().value);

    // Reports: every figure is written.
    trainer::report::linear_eval_report(&out2, &p.result, &p.history, &p.test).unwrap();
    for f in ["probe-curves.svg", "auroc.svg", "roc.svg", "embedding.svg", "tsne.svg", "external-0-auroc.svg"] {
        let svg = std::fs::read_to_string(out2.join(f)).unwrap();
        assert!(svg.starts_with("<svg") && svg.len() > 1000, "{f}");
    }
}

#[test]
fn finetuning_trains_the_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, "data0002", &["Edema"]);
    let device = device();
    let enc = random_encoder(&vit(), 5, &device);
    let out = dir.path().join("ft");
    let cfg = probe().with_finetune(true).with_epochs(2).with_bootstrap(10);
    let r = linear_eval(&cfg, enc, &data, &[], &out, &out.join("f"), &device, &mut |_| {}).unwrap();
    assert_eq!(r.history.len(), 2);
    assert!(!out.join("f").exists(), "fine-tuning caches nothing");
    assert!(r.result.test.macro_auroc.is_some());
}

#[test]
fn quick_ablation_completes_resumes_and_writes_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, "data0003", &["Edema", "Fracture"]);
    let choices = grid("quick").unwrap();
    assert_eq!(choices, ["none", "demographics", "scan", "stay", "demographics,scan,stay"]);
    assert_eq!(grid("paper").unwrap().len(), 16);
    let out = dir.path().join("ablate");
    let mut logs = Vec::new();
    let runs = tiny_ablate(&data, &out, &choices, &mut logs);
    assert_eq!(runs.len(), 5);
    let md = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    assert_eq!(md.lines().count(), 2 + 5, "header, rule, one row per choice");
    assert!(md.lines().nth(2).unwrap().starts_with("| none |") && md.contains("| +0.000 (+0.000 to +0.000) |"), "{md}");
    let csv = std::fs::read_to_string(out.join("ablation.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6);
    assert!(csv.lines().next().unwrap().ends_with(",\"Edema\",\"Fracture\""));
    for f in ["ablation.svg", "ablation.html"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    for c in &choices {
        let r = out.join(run_name(c));
        for f in ["report.html", "pretrain-curves.svg", "linear-eval/results.json", "summary.json"] {
            assert!(r.join(f).is_file(), "{c}: {f}");
        }
        let config = read_json(&r.join("config.json"));
        assert_eq!(config["ehr"], c.as_str());
        assert_eq!(config["seed"], 24, "same seed for every choice");
    }

    // Again: every run is skipped, the table is the same.
    logs.clear();
    let again = tiny_ablate(&data, &out, &choices, &mut logs);
    assert_eq!(logs.iter().filter(|l| l.contains("skipped")).count(), 5, "{logs:?}");
    assert_eq!(std::fs::read_to_string(out.join("ablation.md")).unwrap(), md);
    assert_eq!(again[4].macro_auroc, runs[4].macro_auroc);

    // An unfinished run (pretrained, not evaluated) redoes only the evaluation, to the same result.
    let scan = out.join(run_name("scan"));
    std::fs::remove_file(scan.join("summary.json")).unwrap();
    let metrics_before = std::fs::read_to_string(scan.join("metrics.jsonl")).unwrap();
    logs.clear();
    let third = tiny_ablate(&data, &out, &choices, &mut logs);
    assert!(!logs.iter().any(|l| l.starts_with("pretraining")), "{logs:?}");
    assert_eq!(std::fs::read_to_string(scan.join("metrics.jsonl")).unwrap(), metrics_before);
    assert_eq!(third[2].macro_auroc, runs[2].macro_auroc);
}

#[test]
fn the_random_init_choice_evaluates_an_unpretrained_encoder_against_vanilla() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, "data0004", &["Edema", "Fracture"]);
    let choices = ["none".to_string(), RANDOM_INIT.to_string()];
    let out = dir.path().join("ablate");
    let mut logs = Vec::new();
    let runs = tiny_ablate(&data, &out, &choices, &mut logs);
    let random = &runs[1];
    assert_eq!((random.ehr.as_str(), random.pretrain_steps), (RANDOM_INIT, 0));
    let r = out.join(run_name(RANDOM_INIT));
    assert_eq!(r.file_name().unwrap(), RANDOM_INIT);
    assert!(!r.join("config.json").exists() && !r.join("pretrain-curves.svg").exists(), "nothing pretrained");
    assert!(r.join("report.html").is_file() && r.join("summary.json").is_file());
    assert_eq!(logs.iter().filter(|l| l.starts_with("pretraining")).count(), 1, "{logs:?}");
    let results = read_json(&r.join("linear-eval/results.json"));
    assert_eq!(results["encoder"]["random_init"], true, "{results}");
    // The paired delta against vanilla MSN is there, and the random encoder is a different model.
    let d = random.delta_vs_vanilla.expect("paired delta vs vanilla");
    assert!(d.low <= d.value && d.value <= d.high);
    let vanilla = read_json(&out.join("vanilla-msn/linear-eval/results.json"));
    assert_ne!(vanilla["encoder"], results["encoder"]);
}

/// `ablate` of `choices` with a 3-step pretraining and a 3-epoch probe, logging into `logs`.
fn tiny_ablate(data: &Path, out: &Path, choices: &[String], logs: &mut Vec<String>) -> Vec<RunSummary> {
    let base = tiny("none").with_max_steps(Some(3));
    let eval = probe().with_epochs(3).with_bootstrap(20);
    ablate(&base, &eval, choices, data, &[], out, &device(), &mut |_, _| {}, &mut |l| logs.push(l.to_string())).unwrap()
}

/// The training device `CXR_TEST_DEVICE` names (default cpu; see `trainer::backend`).
fn device() -> Device {
    Backend::from_test_env().unwrap().autodiff(Precision::F32).unwrap()
}
