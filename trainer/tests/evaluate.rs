//! Linear evaluation, `run` and `ablate` on small datasets written through the contract
//! crate: a results file with every field, reproducible numbers for a seed, undefined labels,
//! labels of an external dataset matched by name, and a resumable ablation with its table.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use burn::tensor::Device;
use cxr_dataset::shard::{SUBJECT_INDEX, Shard};
use sha2::{Digest, Sha256};
use trainer::backend::{Backend, Precision};
use trainer::experiment::{Arm, Grid, RunSummary, Setup, ablate};
use trainer::linear::{Baseline, LinearEvalConfig, ProbeKind, Source, linear_eval, load_encoder, random_encoder};
use trainer::metrics::BootstrapUnit;
use trainer::model::VitConfig;
use trainer::pretrain::{CheckpointChoice, PretrainConfig, pretrain};
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
/// agree with the class, splits 80/20/20, two images a patient. Labels: Edema = class;
/// Fracture = 1 on two training images only (a single class on validation and test: undefined
/// there). The manifest's task lists `labels` (names) with their columns.
fn write_dataset(dir: &Path, version: &str, labels: &[&str]) {
    write_dataset_with(dir, version, labels, true);
}

/// [`write_dataset`], with or without the patient column (`subject_index`).
fn write_dataset_with(dir: &Path, version: &str, labels: &[&str], patients: bool) {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let mut shard = Shard::new(32, 32);
    let mut names: Vec<String> = EHR.iter().map(|s| s.to_string()).collect();
    names.extend(["age", "label_edema", "label_fracture", "split"].map(String::from));
    if patients {
        names.push(SUBJECT_INDEX.into());
    }
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
        if patients {
            f.push((k / 2) as f32);
        }
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
    std::fs::write(dir.join(cxr_dataset::files::MANIFEST), manifest.to_string()).unwrap();
}

fn vit() -> VitConfig {
    VitConfig::new(16, 2, 2, 32).with_image_size(32).with_patch_size(8)
}

fn tiny(ehr: &str) -> PretrainConfig {
    let mut cfg = PretrainConfig::paper(vit(), ehr.parse().unwrap())
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

    // A random encoder, logistic probe: every field, the undefined label, a macro over Edema.
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
        "probe",
        "train_rows",
        "validate_rows",
        "test_rows",
        "chosen_c",
        "regularization",
        "best_validate_macro_auroc",
        "test",
    ] {
        assert!(!json[key].is_null(), "{key} missing");
    }
    assert_eq!(json["probe"], "logistic");
    assert_eq!(json["train_rows"], 80);
    assert_eq!(json["test_rows"], 20);
    assert_eq!(json["test"]["undefined"], serde_json::json!(["Fracture"]));
    // The intervals resample the 10 test patients (two images each), named in the results.
    assert_eq!(
        (json["test"]["bootstrap_unit"].as_str(), json["test"]["bootstrap_clusters"].as_u64()),
        (Some("patient"), Some(10))
    );
    assert!(std::fs::read_to_string(out.join("results.md")).unwrap().contains("200 resamples of the 10 patients"));
    let saved = trainer::linear::TestScores::read(&out).unwrap();
    assert_eq!(saved.subjects, Some((50..60).flat_map(|p| [p, p]).collect::<Vec<u32>>()));
    let edema = json["test"]["labels"][0]["auroc"]["value"].as_f64().unwrap();
    assert_eq!(json["test"]["macro_auroc"]["value"].as_f64().unwrap(), edema);
    assert!(json["test"]["macro_auroc"]["low"].as_f64().unwrap() <= edema);
    assert!(std::fs::read_to_string(out.join("results.md")).unwrap().contains("| Fracture | 0 / 20 | undefined |"));
    let path = r.result.regularization.as_ref().unwrap();
    assert_eq!(path.len(), cfg.logistic.cs.len());
    assert_eq!(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().count(), path.len());
    assert!(path.iter().all(|p| p.converged), "{path:?}");
    assert!(out.join("probe.json").is_file());

    // The same seed gives the same numbers (the second run reads the cached features).
    let again =
        linear_eval(&cfg, random_encoder(&vit(), 3, &device), &data, &[], &out, &out.join("f"), &device, &mut |_| {})
            .unwrap();
    assert_eq!(again.result.test, r.result.test);
    let cached: Vec<_> = std::fs::read_dir(out.join("f")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(cached.iter().filter(|p| p.extension().unwrap() == "f32").count(), 3, "train, validate, test");
    let splits: Vec<String> = cached
        .iter()
        .filter(|p| p.extension().unwrap() == "json")
        .map(|p| read_json(p)["split"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(splits.len(), 3, "each cached file says what it holds");
    assert!(["train", "validate", "test"].iter().all(|s| splits.iter().any(|x| x == s)));

    // The SGD probe on the same features: epochs, early stopping, the head saved.
    let sgd_out = dir.path().join("sgd");
    let sgd_cfg = probe().with_probe(ProbeKind::Sgd).with_patience(3);
    let s = linear_eval(
        &sgd_cfg,
        random_encoder(&vit(), 3, &device),
        &data,
        &[],
        &sgd_out,
        &out.join("f"),
        &device,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!((s.result.probe, s.result.chosen_c), (ProbeKind::Sgd, None));
    let (run_epochs, best) = (s.result.epochs_run.unwrap(), s.result.best_epoch.unwrap());
    assert_eq!(std::fs::read_to_string(sgd_out.join("metrics.jsonl")).unwrap().lines().count(), s.history.len());
    assert!(sgd_out.join("probe.bpk").is_file() && sgd_out.join("probe.json").is_file(), "head and standardisation");
    assert!(run_epochs <= best + sgd_cfg.patience + 1, "early stopping");
    let best_auc = s.history.iter().filter_map(|m| m.validate_macro_auroc).fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(s.history[best].validate_macro_auroc, Some(best_auc), "the best-validation epoch is kept");

    // The pretrained encoder, with a 25% fraction, and an external dataset whose labels are
    // in another order (and one the probe lacks): matched by name.
    let ext = dir.path().join("ext");
    write_dataset(&ext, "ext00001", &["Fracture", "Edema"]);
    let enc = load_encoder(&run, CheckpointChoice::LowestLoss, &device).unwrap();
    assert!(enc.source["selected"].as_str().unwrap().starts_with("lowest-loss"), "{}", enc.source);
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

/// A dataset without the patient column cannot resample patients: the error says what to do,
/// and image-level resampling still works.
#[test]
fn patient_intervals_need_the_patient_column() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset_with(&data, "data0009", &["Edema"], false);
    let device = device();
    let out = dir.path().join("pixels");
    let eval = |cfg: &LinearEvalConfig| {
        linear_eval(cfg, Baseline::Pixels.source(), &data, &[], &out, &out.join("f"), &device, &mut |_| {})
    };
    let err = eval(&probe()).unwrap_err().to_string();
    assert!(err.contains("subject_index") && err.contains("--bootstrap-unit image"), "{err}");
    let r = eval(&probe().with_bootstrap_unit(BootstrapUnit::Image)).unwrap().result;
    assert_eq!((r.test.bootstrap_unit, r.test.bootstrap_clusters), (BootstrapUnit::Image, 20));
}

/// The logistic probe sees what the images show (the disc's side is the Edema label): far
/// above chance on a random encoder's features and on the pixels; the EHR baseline reads the
/// EHR columns (which agree with the class here). The test split is scored with the strength
/// chosen on validation, not the last one tried: refitting at the chosen strength alone gives
/// the same test scores.
#[test]
fn the_probe_sees_the_labels_and_tests_with_the_validation_choice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, "data0005", &["Edema"]);
    let device = device();
    let eval = |source: Source, cfg: &LinearEvalConfig, name: &str| {
        let out = dir.path().join(name);
        linear_eval(cfg, source, &data, &[], &out, &out.join("f"), &device, &mut |_| {}).unwrap().result
    };
    let auc = |r: &trainer::linear::LinearEvalResult| r.test.macro_auroc.unwrap().value;
    let cfg = probe();
    let random = eval(random_encoder(&vit(), 3, &device).into(), &cfg, "random");
    assert!(auc(&random) > 0.8, "{}", auc(&random));
    let pixels = eval(Baseline::Pixels.source(), &cfg, "pixels");
    assert_eq!(pixels.encoder["baseline"], "pixels");
    assert!(auc(&pixels) > 0.9, "{}", auc(&pixels));
    let ehr = eval(Baseline::EhrAlone.source(), &cfg, "ehr");
    assert!(auc(&ehr) > 0.99, "{}", auc(&ehr));
    let path = random.regularization.as_ref().unwrap();
    let chosen = random.chosen_c.unwrap();
    let best = path.iter().filter_map(|p| p.validate_macro_auroc).fold(f64::NEG_INFINITY, f64::max);
    let at = path.iter().position(|p| p.c == chosen).unwrap();
    assert_eq!(path[at].validate_macro_auroc, Some(best));
    assert_eq!(path.iter().position(|p| p.validate_macro_auroc == Some(best)), Some(at), "the smallest C of a tie");
    // Only the chosen strength: the same test scores up to the solver's tolerance; only the
    // last strength tried: other scores.
    let scores = |name: &str| trainer::linear::TestScores::read(&dir.path().join(name)).unwrap().scores;
    let gap = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let mut alone = probe();
    alone.logistic.cs = vec![chosen];
    eval(random_encoder(&vit(), 3, &device).into(), &alone, "alone");
    assert!(gap(&scores("alone"), &scores("random")) < 1e-3);
    assert!(at + 1 < path.len(), "the toy data should not choose the weakest penalty: {path:?}");
    let mut last = probe();
    last.logistic.cs = vec![*cfg.logistic.cs.last().unwrap()];
    eval(random_encoder(&vit(), 3, &device).into(), &last, "last");
    assert!(gap(&scores("last"), &scores("random")) > 1e-2);
}

/// Fine-tuning changes the encoder's weights; a frozen probe on augmented images does not.
#[test]
fn finetuning_trains_the_encoder_and_frozen_probing_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, "data0002", &["Edema"]);
    let device = device();
    let weights =
        |vit: &trainer::model::Vit| vit.patch.weight.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let initial = weights(&random_encoder(&vit(), 5, &device).vit);
    let saved = |out: &Path| {
        let mut probe = trainer::linear::sgd::Probe {
            encoder: Some(random_encoder(&vit(), 99, &device).vit),
            head: burn::nn::LinearConfig::new(16, 1).init(&device),
        };
        let record = burn::store::ModuleRecord::load(out.join("probe.bpk")).unwrap();
        probe = burn::module::Module::load_record(probe, record);
        weights(probe.encoder.as_ref().unwrap())
    };
    let out = dir.path().join("ft");
    let cfg = probe().with_finetune(true).with_epochs(2).with_bootstrap(10);
    let r =
        linear_eval(&cfg, random_encoder(&vit(), 5, &device), &data, &[], &out, &out.join("f"), &device, &mut |_| {})
            .unwrap();
    assert_eq!((r.history.len(), r.result.probe), (2, ProbeKind::Sgd));
    assert!(!out.join("f").exists(), "fine-tuning caches nothing");
    assert!(r.result.test.macro_auroc.is_some());
    assert_ne!(saved(&out), initial, "fine-tuning moved the encoder");

    let frozen = dir.path().join("frozen");
    let cfg = probe().with_cache_features(false).with_epochs(2).with_bootstrap(10);
    linear_eval(&cfg, random_encoder(&vit(), 5, &device), &data, &[], &frozen, &frozen.join("f"), &device, &mut |_| {})
        .unwrap();
    assert_eq!(saved(&frozen), initial, "a frozen probe leaves the encoder as it was");
}

/// `--probe paper`: the Adam head on augmented images through the frozen encoder, on raw
/// features, even with the feature cache on; a baseline trains it on its raw features.
#[test]
fn the_paper_probe_trains_on_augmented_images_without_standardising() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, "data0005", &["Edema"]);
    let device = device();
    let run = |source: Source, cfg: &LinearEvalConfig, name: &str| {
        let out = dir.path().join(name);
        let mut lines = Vec::new();
        let r = linear_eval(cfg, source, &data, &[], &out, &out.join("f"), &device, &mut |l| lines.push(l.to_string()))
            .unwrap();
        (r, out, lines)
    };
    let paper = probe().with_probe(ProbeKind::Paper).with_epochs(3).with_bootstrap(10);
    assert!(paper.cache_features && paper.standardize, "the paper probe overrides both");
    let (r, out, lines) = run(random_encoder(&vit(), 5, &device).into(), &paper, "paper");
    assert_eq!(r.result.probe, ProbeKind::Paper);
    assert_eq!(r.result.epochs_run, Some(r.history.len()));
    assert!(r.result.probe_summary().contains("augmented images"), "{}", r.result.probe_summary());
    let cached_splits = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir.join("f")).map_or(Vec::new(), |d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.extension().unwrap() == "json")
                .map(|p| read_json(&p)["split"].as_str().unwrap().to_string())
                .collect()
        })
    };
    assert!(!cached_splits(&out).contains(&"train".to_string()), "trained on images, not on cached features");
    assert!(out.join("probe.bpk").is_file() && !out.join("probe.json").exists(), "no standardisation saved");
    assert!(lines.iter().any(|l| l.contains("augmented images through the frozen encoder")), "{lines:?}");
    // The same head on cached eval-transform features trains on other inputs.
    let sgd = paper.clone().with_probe(ProbeKind::Sgd).with_standardize(false);
    let (s, out_sgd, _) = run(random_encoder(&vit(), 5, &device).into(), &sgd, "sgd");
    assert!(cached_splits(&out_sgd).contains(&"train".to_string()), "the sgd probe trains on cached features");
    assert_ne!(s.history[0].train_loss, r.history[0].train_loss, "augmented inputs, another loss");
    // A baseline has no encoder: raw features, said so.
    let (b, out_b, lines) = run(Baseline::Pixels.source(), &paper, "pixels");
    assert_eq!(b.result.probe, ProbeKind::Paper);
    assert!(!out_b.join("probe.json").exists(), "raw features");
    assert!(lines.iter().any(|l| l.contains("baseline has no encoder")), "{lines:?}");
}

#[test]
fn quick_ablation_completes_resumes_and_writes_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, "data0003", &["Edema", "Fracture"]);
    let choices = Grid::Quick.arms();
    let words: Vec<String> = choices.iter().map(Arm::to_string).collect();
    assert_eq!(words, ["none", "demographics", "scan", "stay", "demographics,scan,stay"]);
    assert_eq!(Grid::Paper.arms().len(), 16);
    let out = dir.path().join("ablate");
    let mut logs = Vec::new();
    let runs = tiny_ablate(&data, &out, &choices, &mut logs);
    assert_eq!(runs.len(), 5);
    let md = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    assert_eq!(md.lines().filter(|l| l.starts_with('|')).count(), 2 + 5, "header, rule, one row per choice");
    assert!(md.contains("20 resamples of the 10 patients, each with all of its images"), "{md}");
    assert!(md.lines().nth(2).unwrap().starts_with("| none |") && md.contains("| +0.000 (+0.000 to +0.000) |"), "{md}");
    let csv = std::fs::read_to_string(out.join("ablation.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6);
    assert!(csv.lines().next().unwrap().ends_with(",\"Edema\",\"Fracture\""));
    for f in ["ablation.svg", "ablation.html"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    for c in &choices {
        let r = out.join(c.run_name());
        for f in ["report.html", "pretrain-curves.svg", "linear-eval/results.json", "summary.json"] {
            assert!(r.join(f).is_file(), "{c}: {f}");
        }
        let config = read_json(&r.join("config.json"));
        assert_eq!(config["ehr"], c.to_string());
        assert_eq!(config["seed"], 24, "same seed for every choice");
    }

    // Again: every run is reused (same key), the table is the same.
    logs.clear();
    let again = tiny_ablate(&data, &out, &choices, &mut logs);
    assert_eq!(logs.iter().filter(|l| l.contains("reused")).count(), 5, "{logs:?}");
    assert!(again.iter().zip(&runs).all(|(a, r)| a.key == r.key && a.key.len() == 16), "{again:?}");
    assert_eq!(std::fs::read_to_string(out.join("ablation.md")).unwrap(), md);
    assert_eq!(again[4].macro_auroc, runs[4].macro_auroc);

    // An unfinished run (pretrained, not evaluated) redoes only the evaluation, to the same result.
    let scan = out.join("scan".parse::<Arm>().unwrap().run_name());
    std::fs::remove_file(scan.join("summary.json")).unwrap();
    assert!(scan.join("run-keys.json").is_file());
    let metrics_before = std::fs::read_to_string(scan.join("metrics.jsonl")).unwrap();
    logs.clear();
    let third = tiny_ablate(&data, &out, &choices, &mut logs);
    assert!(!logs.iter().any(|l| l.starts_with("pretraining")), "{logs:?}");
    assert_eq!(std::fs::read_to_string(scan.join("metrics.jsonl")).unwrap(), metrics_before);
    assert_eq!(third[2].macro_auroc, runs[2].macro_auroc);
}

/// A run is reused only with the settings, data and code that made it: another seed or
/// budget pretrains again (from scratch, not resuming the other run's checkpoint), another
/// probe setting evaluates again without pretraining, another dataset version redoes both.
#[test]
fn a_rerun_with_other_settings_or_data_is_redone_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, "data0007", &["Edema", "Fracture"]);
    let out = dir.path().join("runs");
    let arms = [Arm::vanilla(), Arm::RandomInit];
    let base = tiny("none").with_max_steps(Some(3));
    let eval = probe().with_epochs(3).with_bootstrap(20);
    let mut logs = Vec::new();
    let first = ablate_with(&data, &out, &arms, &base, &eval, &mut logs);
    let vanilla = out.join(Arm::vanilla().run_name());
    let metrics = || std::fs::read_to_string(vanilla.join("metrics.jsonl")).unwrap();
    let first_metrics = metrics();
    assert_eq!(first_metrics.lines().count(), 3);

    // Another seed: both arms are stale and redone; vanilla pretrains from step 0 again.
    logs.clear();
    let seeded = ablate_with(&data, &out, &arms, &base.clone().with_seed(25), &eval, &mut logs);
    assert_eq!(logs.iter().filter(|l| l.contains("results are stale")).count(), 2, "{logs:?}");
    let stale = logs.iter().find(|l| l.contains("pretraining there is stale")).expect("stale pretraining");
    assert!(stale.contains("settings seed"), "{stale}");
    assert!(!logs.iter().any(|l| l.contains("resuming")), "{logs:?}");
    assert_eq!(metrics().lines().count(), 3, "a fresh run of 3 steps, not a resumed one");
    assert_ne!(metrics(), first_metrics);
    assert_ne!(seeded[0].key, first[0].key);
    assert_ne!(read_json(&vanilla.join("config.json"))["seed"], 24);

    // Another budget: pretrained again.
    logs.clear();
    ablate_with(&data, &out, &arms[..1], &base.clone().with_seed(25).with_max_steps(Some(2)), &eval, &mut logs);
    assert!(logs.iter().any(|l| l.contains("settings max_steps")), "{logs:?}");
    assert_eq!(metrics().lines().count(), 2);

    // Another probe setting: evaluated again, the pretraining reused.
    let base = base.with_seed(25).with_max_steps(Some(2));
    logs.clear();
    let probed = ablate_with(&data, &out, &arms[..1], &base, &eval.clone().with_bootstrap(30), &mut logs);
    assert!(logs.iter().any(|l| l.contains("results are stale") && l.contains("settings")), "{logs:?}");
    assert!(!logs.iter().any(|l| l.starts_with("pretraining")), "{logs:?}");
    assert_eq!(read_json(&vanilla.join("linear-eval/results.json"))["test"]["bootstrap_resamples"], 30);

    // The same again: reused.
    logs.clear();
    let same = ablate_with(&data, &out, &arms[..1], &base, &eval.clone().with_bootstrap(30), &mut logs);
    assert!(logs.iter().any(|l| l.contains("reused")), "{logs:?}");
    assert_eq!(same[0].key, probed[0].key);

    // Another dataset version (the same images): nothing is reused.
    write_dataset(&data, "data0008", &["Edema", "Fracture"]);
    logs.clear();
    let moved = ablate_with(&data, &out, &arms[..1], &base, &eval.clone().with_bootstrap(30), &mut logs);
    let stale = logs.iter().find(|l| l.contains("pretraining there is stale")).expect("stale pretraining");
    assert!(stale.contains("dataset version \"data0007\" -> \"data0008\""), "{stale}");
    assert_eq!(moved[0].dataset_version, "data0008");
    assert_ne!(moved[0].key, same[0].key);

    // A folder that holds something else is refused, never emptied; a malformed key file is
    // an error naming it.
    let other = dir.path().join("other");
    std::fs::create_dir_all(other.join(Arm::vanilla().run_name())).unwrap();
    let notes = other.join(Arm::vanilla().run_name()).join("notes.txt");
    std::fs::write(&notes, "mine").unwrap();
    let devices = (&device()).into();
    let eval = eval.with_bootstrap(30);
    let setup = Setup { dataset: &data, eval: &eval, external: &[], devices: &devices };
    let err = ablate(&base, &arms[..1], &setup, &other, &mut |_, _| {}, &mut |_| {}).unwrap_err();
    assert!(matches!(err, trainer::Error::Config(_)) && err.to_string().contains("holds no run"), "{err}");
    assert!(notes.is_file());
    std::fs::remove_file(vanilla.join("summary.json")).unwrap();
    std::fs::write(vanilla.join("run-keys.json"), "{not json").unwrap();
    let err = ablate(&base, &arms[..1], &setup, &out, &mut |_, _| {}, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("run-keys.json"), "{err}");
}

#[test]
fn the_baseline_choices_evaluate_without_pretraining_against_vanilla() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, "data0004", &["Edema", "Fracture"]);
    let choices: Vec<Arm> = ["none", "random-init", "pixels", "ehr-alone"].map(|c| c.parse().unwrap()).into();
    assert_eq!(choices[..2], [Arm::vanilla(), Arm::RandomInit]);
    assert!("demographics,nonsense".parse::<Arm>().unwrap_err().to_string().contains("random-init, pixels, ehr-alone"));
    let out = dir.path().join("ablate");
    let mut logs = Vec::new();
    let runs = tiny_ablate(&data, &out, &choices, &mut logs);
    let random = &runs[1];
    assert_eq!((random.ehr.as_str(), random.pretrain_steps), ("random-init", 0));
    let r = out.join(Arm::RandomInit.run_name());
    assert_eq!(r.file_name().unwrap(), "random-init");
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
    // The pixel and EHR baselines: their own folders, no pretraining, a paired delta.
    for (k, name) in [(2, "baseline-pixels"), (3, "baseline-ehr-alone")] {
        assert_eq!(choices[k].run_name(), name);
        let r = out.join(name);
        assert!(!r.join("config.json").exists() && r.join("summary.json").is_file(), "{name}");
        assert_eq!(runs[k].pretrain_steps, 0);
        assert!(runs[k].delta_vs_vanilla.is_some(), "{name}");
    }
    assert_eq!(read_json(&out.join("baseline-ehr-alone/linear-eval/results.json"))["encoder"]["baseline"], "ehr");
    let md = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    assert!(md.contains("| pixels |") && md.contains("| ehr-alone |"), "{md}");
}

/// The demo's verdicts: a difference pooled over seeds is the mean of the per-seed paired
/// differences (each equal to that seed's ablation delta), on the same resampled patients;
/// runs tested on other rows are refused.
#[test]
fn seed_pooled_deltas_average_the_per_seed_paired_deltas() {
    use trainer::experiment::{PairedBootstrap, pooled_delta};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, "data0008", &["Edema", "Fracture"]);
    let arms = [Arm::vanilla(), Arm::RandomInit];
    let eval = probe().with_epochs(3).with_bootstrap(50);
    let mut deltas = Vec::new();
    let mut pairs = Vec::new();
    for seed in [24u64, 25] {
        let out = dir.path().join(format!("seed-{seed}"));
        let base = tiny("none").with_max_steps(Some(3)).with_seed(seed);
        let runs = ablate_with(&data, &out, &arms, &base, &eval, &mut Vec::new());
        deltas.push(runs[1].delta_vs_vanilla.unwrap());
        let probe_of = |arm: &Arm| out.join(arm.run_name()).join("linear-eval");
        pairs.push((format!("seed {seed}"), probe_of(&arms[0]), probe_of(&arms[1])));
    }
    assert_ne!(deltas[0].value, deltas[1].value, "two seeds, two random encoders");
    let bootstrap = PairedBootstrap::of(&eval, 0.01);
    let p = pooled_delta(&pairs, bootstrap).unwrap();
    assert_eq!(p.pairs, ["seed 24", "seed 25"]);
    assert_eq!(p.per_pair, deltas.iter().map(|d| Some(*d)).collect::<Vec<_>>(), "each seed's ablation delta");
    let q = p.pooled.unwrap();
    assert!((q.delta.value - (deltas[0].value + deltas[1].value) / 2.0).abs() < 1e-12, "{q:?}");
    assert!(
        q.delta.low <= q.low90 && q.low90 <= q.delta.value && q.delta.value <= q.high90 && q.high90 <= q.delta.high
    );
    assert_eq!(q.margin, 0.01);
    assert!(p.intervals.contains("50 resamples of the 10 test patients"), "{}", p.intervals);
    // One probe on another dataset (another label set): refused, naming its scores.
    let other = dir.path().join("other");
    write_dataset(&other, "data0009", &["Edema"]);
    let out = dir.path().join("other-runs");
    ablate_with(&other, &out, &arms[1..], &tiny("none"), &eval, &mut Vec::new());
    pairs[1].2 = out.join(arms[1].run_name()).join("linear-eval");
    let err = pooled_delta(&pairs, bootstrap).unwrap_err().to_string();
    assert!(err.contains("other-runs/random-init/linear-eval/test-scores.json") && err.contains("other rows"), "{err}");
}

/// `compare-reference` with burn itself as the "reference" (its own snapshots exported under
/// torchvision's names, its own metrics): every checkpoint is trained, snapshotted, exported,
/// imported and probed, and the comparison finds exactly no difference; a second call
/// redoes nothing.
#[test]
fn compare_reference_against_itself_finds_no_difference() {
    use trainer::parity::{CompareConfig, compare_reference};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data, "data0006", &["Edema"]);
    let device = device();
    let cfg = CompareConfig {
        pretrain: tiny("none"),
        eval: probe().with_bootstrap(50),
        seeds: vec![24, 25],
        fractions: CompareConfig::FRACTIONS.to_vec(),
        margin: CompareConfig::MARGIN,
    };
    let calls = std::cell::Cell::new(0);
    let mut itself = |config: &Path, out: &Path, steps: &[usize]| -> trainer::Result<()> {
        calls.set(calls.get() + 1);
        let burn = config.parent().unwrap();
        std::fs::copy(burn.join("metrics.jsonl"), out.join("metrics.jsonl")).unwrap();
        for &s in steps {
            let enc = load_encoder(&burn.join(format!("step-{s:08}")), CheckpointChoice::Last, &device).unwrap();
            let sd = trainer::weights::vit_state_dict(&enc.vit, "backbone.").unwrap();
            let bytes = cxr_dataset::tensors::to_bytes(&sd).unwrap();
            std::fs::write(out.join(format!("step-{s:08}.safetensors")), bytes).unwrap();
        }
        Ok(())
    };
    let out = dir.path().join("compare");
    let mut logs = Vec::new();
    let c =
        compare_reference(&cfg, &data, &out, &mut itself, &device, &mut |_, _| {}, &mut |l| logs.push(l.to_string()))
            .unwrap();
    // 80 training images, batches of 16, 2 epochs: 10 steps; checkpoints 0, 1, 2, 5, 10.
    assert_eq!(c.steps, 10);
    assert_eq!(c.rows.iter().map(|r| r.step).collect::<Vec<_>>(), [0, 1, 2, 5, 10]);
    for r in &c.rows {
        let e = r.equivalence.unwrap();
        let d = e.delta;
        assert_eq!((d.value, d.low, d.high, e.low90, e.high90), (0.0, 0.0, 0.0, 0.0, 0.0), "step {}", r.step);
        assert_eq!(e.verdict, trainer::metrics::Verdict::Equivalent);
        assert_eq!(r.burn, r.reference);
    }
    // The 10 test patients (two images each) are what the paired bootstrap resampled.
    assert_eq!((c.bootstrap_unit, c.bootstrap_clusters), (BootstrapUnit::Patient, 10));
    assert_eq!(c.probes.len(), 2 * 2 * 5);
    assert_eq!(c.loss_epochs_within_spread, 2);
    assert!(c.loss_gap.iter().all(|(gap, _)| *gap == 0.0));
    assert_eq!(trainer::pretrain::read_checkpoint(&out.join("burn-seed24/step-00000000")).unwrap().step, 0);
    for f in ["comparison.md", "comparison.json", "probe-auroc.svg", "loss-curves.svg"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let md = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    assert!(
        md.contains("| 1/8 | 1 |") && md.contains("| +0.000 (+0.000 to +0.000) | +0.000 to +0.000 | equivalent |"),
        "{md}"
    );
    // Everything is there: nothing is trained or probed again.
    logs.clear();
    compare_reference(&cfg, &data, &out, &mut itself, &device, &mut |_, _| {}, &mut |l| logs.push(l.to_string()))
        .unwrap();
    assert!(logs.is_empty(), "{logs:?}");
    assert_eq!(calls.get(), 2, "the reference ran once per seed");
    // Other probe settings: the probes are redone, the pretrainings reused.
    let reprobe = CompareConfig { eval: probe().with_bootstrap(60), ..cfg.clone() };
    logs.clear();
    compare_reference(&reprobe, &data, &out, &mut itself, &device, &mut |_, _| {}, &mut |l| logs.push(l.to_string()))
        .unwrap();
    assert!(logs.iter().any(|l| l.contains("stale (settings eval), probing again")), "{logs:?}");
    assert!(!logs.iter().any(|l| l.contains("training and probing again")), "{logs:?}");
    assert_eq!(calls.get(), 2);
    // Another pretraining budget: both seeds train again.
    let longer = CompareConfig { pretrain: tiny("none").with_epochs(3), ..reprobe };
    logs.clear();
    let c = compare_reference(&longer, &data, &out, &mut itself, &device, &mut |_, _| {}, &mut |l| {
        logs.push(l.to_string())
    })
    .unwrap();
    assert_eq!(logs.iter().filter(|l| l.contains("stale (settings checkpoints, pretrain)")).count(), 2, "{logs:?}");
    assert_eq!((calls.get(), c.steps), (4, 15));
}

/// `ablate` of `choices` with a 3-step pretraining and a 3-epoch probe, logging into `logs`.
fn tiny_ablate(data: &Path, out: &Path, choices: &[Arm], logs: &mut Vec<String>) -> Vec<RunSummary> {
    let base = tiny("none").with_max_steps(Some(3));
    ablate_with(data, out, choices, &base, &probe().with_epochs(3).with_bootstrap(20), logs)
}

fn ablate_with(
    data: &Path,
    out: &Path,
    choices: &[Arm],
    base: &PretrainConfig,
    eval: &LinearEvalConfig,
    logs: &mut Vec<String>,
) -> Vec<RunSummary> {
    let devices = (&device()).into();
    let setup = Setup { dataset: data, eval, external: &[], devices: &devices };
    ablate(base, choices, &setup, out, &mut |_, _| {}, &mut |l| logs.push(l.to_string())).unwrap()
}

/// The training device `CXR_TEST_DEVICE` names (default cpu; see `trainer::backend`).
fn device() -> Device {
    Backend::from_test_env().unwrap().autodiff(Precision::F32).unwrap()
}
