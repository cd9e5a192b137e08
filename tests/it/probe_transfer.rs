//! The evaluation story across both crates: a dataset built by `pipeline build` from a
//! synthetic MIMIC archive trains a linear probe (`trainer`), which is then tested on a
//! synthetic CheXpert dataset built by `pipeline build-eval` (labels matched by name); an NIH
//! dataset trains and tests its own probe on its own 14 labels.

use std::path::Path;

use burn::tensor::Device;
use pipeline::build::{BuildConfig, build};
use pipeline::eval::{EvalConfig, EvalKind, build_eval};
use pipeline::images::ImageSource;
use pipeline::progress::Silent;
use trainer::linear::{LinearEvalConfig, linear_eval, random_encoder};
use trainer::model::VitConfig;
use trainer::transform::ProbeTransform;

use crate::build_images::archive_copy;
use crate::build_table::config;

fn eval_config(kind: EvalKind, root: &Path, out: &Path) -> EvalConfig {
    EvalConfig { shard_size: 64, ..crate::eval_datasets::config(kind, root, out) }
}

#[test]
fn a_mimic_probe_is_tested_on_chexpert_and_nih_trains_its_own() {
    let (_d, root) = archive_copy();
    let out = tempfile::tempdir().unwrap();
    let mimic = build(
        &BuildConfig { images: ImageSource::Dicom, image_size: 32, shard_size: 64, ..config(&root, out.path()) },
        &Silent,
    )
    .unwrap();
    let trees = tempfile::tempdir().unwrap();
    let (cx, nih) = (trees.path().join("chexpert"), trees.path().join("nih"));
    synth::eval::write_chexpert(&cx, 30, 5, (64, 64)).unwrap();
    synth::eval::write_nih(&nih, 30, 5, (64, 64)).unwrap();
    let chexpert = build_eval(&eval_config(EvalKind::Chexpert, &cx, out.path()), &Silent).unwrap();
    let nih = build_eval(&eval_config(EvalKind::Nih, &nih, out.path()), &Silent).unwrap();

    let device = Device::flex().autodiff();
    let vit = VitConfig::new(16, 1, 2, 32).with_image_size(32).with_patch_size(8);
    let cfg = LinearEvalConfig::new(ProbeTransform::for_crop(32)).with_epochs(3).with_bootstrap(20).with_lr(1e-2);
    let runs = tempfile::tempdir().unwrap();
    let probe = runs.path().join("mimic");
    let r = linear_eval(
        &cfg,
        random_encoder(&vit, 1, &device),
        &mimic.dir,
        std::slice::from_ref(&chexpert.dir),
        &probe,
        &probe.join("features"),
        &device,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(r.result.dataset_kind, "mimic-cxr");
    assert_eq!(r.result.labels.len(), 14);
    let e = &r.result.external[0];
    assert_eq!((e.kind.as_str(), e.version.as_str()), ("chexpert", chexpert.version.as_str()));
    assert!(e.unmatched_labels.is_empty(), "CheXpert has all 14 labels: {:?}", e.unmatched_labels);
    assert_eq!(e.test.rows, chexpert.splits.iter().find(|(s, _)| s == "test").unwrap().1);
    // Labels in the probe's (MIMIC's) order, whatever CheXpert's column order.
    let names: Vec<&str> = e.test.labels.iter().map(|l| l.label.as_str()).collect();
    assert_eq!(names, cxr_dataset::LABELS);
    assert!(std::fs::read_to_string(probe.join("results.md")).unwrap().contains("## External test: chexpert"));

    let own = runs.path().join("nih");
    let n =
        linear_eval(&cfg, random_encoder(&vit, 1, &device), &nih.dir, &[], &own, &own.join("f"), &device, &mut |_| {})
            .unwrap();
    assert_eq!(n.result.dataset_kind, "nih");
    assert_eq!(n.result.labels, cxr_dataset::NIH_LABELS);
    assert!(n.result.test.labels.iter().any(|l| l.auroc.is_some()), "{:?}", n.result.test);
}
