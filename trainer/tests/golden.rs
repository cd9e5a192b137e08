//! Parity with the reference PyTorch implementation (`$CXR_GOLDEN_DIR`, see its README):
//! every test has `golden` in its name, so `cargo test -p trainer golden` runs exactly them.
//! The numbers come from the directory, so the tests pass for any golden directory of the same
//! layout (other seeds, other shapes).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use burn::tensor::Tensor;
use trainer::backend::{Backend, Precision};
use trainer::selftest::{self, Golden};

/// `$CXR_GOLDEN_DIR`, else `../shared/golden` beside the repository, else the copy vendored in
/// `trainer/tests/golden` (the same files the binary ships, for clones without the shared
/// folder). A case the folder lacks comes from the shipped copy (cases the trainer's own
/// reference scripts made, e.g. `resized_crop_aa`, live only there).
fn golden_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CXR_GOLDEN_DIR") {
        return PathBuf::from(d);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = manifest.join("../../shared/golden");
    if shared.join("README.md").is_file() { shared } else { manifest.join("tests/golden") }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Largest difference relative to the reference's scale (max |reference|, at least 1).
fn assert_close(what: &str, ours: &[f32], reference: &[f32], tol: f32) {
    assert_eq!(ours.len(), reference.len(), "{what}: lengths");
    let scale = reference.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = ours.iter().zip(reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= tol * scale, "{what}: max difference {worst} (scale {scale}, tolerance {tol})");
}

/// Runs the selftest case `name` on the device `CXR_TEST_DEVICE` names, from [`golden_dir`],
/// and asserts every quantity is within its f32 tolerance (`trainer::selftest`).
fn golden_case(name: &str) {
    let backend = Backend::from_test_env().unwrap();
    let (plain, autodiff) = (backend.device(Precision::F32).unwrap(), backend.autodiff(Precision::F32).unwrap());
    let result = selftest::run(&Golden::Dir(golden_dir()), name, &plain, &autodiff, Precision::F32);
    for check in &result.checks {
        eprintln!(
            "{name} {}: max |error| {:.3e} = {:.2e} of {:.3e}",
            check.quantity,
            check.worst,
            check.relative(),
            check.scale
        );
    }
    assert!(result.passed(), "{}", result.line());
    assert_eq!(selftest::CASES.iter().filter(|c| **c == name).count(), 1, "{name} is a selftest case");
}

#[test]
fn golden_vit_forward() {
    golden_case("vit_forward");
}

#[test]
fn golden_bicubic_14_to_6() {
    golden_case("bicubic_14_to_6");
}

#[test]
fn golden_resized_crop_aa() {
    golden_case("resized_crop_aa");
}

#[test]
fn golden_projection_head() {
    golden_case("projection_head");
}

#[test]
fn golden_msn_loss_default() {
    golden_case("msn_loss_default");
}

#[test]
fn golden_msn_loss_no_sinkhorn() {
    golden_case("msn_loss_no_sinkhorn");
}

#[test]
fn golden_msn_loss_reg_half() {
    golden_case("msn_loss_reg_half");
}

#[test]
fn golden_msn_ehr_step() {
    golden_case("msn_ehr_step");
}

/// AUROC and average precision as scikit-learn computes them (ties, a single-class label).
#[test]
fn golden_auroc_and_average_precision() {
    golden_case("auroc");
}

/// `import-torch`: the golden ViT weights as a Lightning checkpoint (written by
/// `tests/write_ckpt.py` in torch.save's container, `backbone.*` = the encoder) and as the
/// safetensors file itself become run folders whose encoder gives the golden CLS outputs;
/// a checkpoint with a missing or an unexpected `backbone.*` tensor is refused, naming it.
#[test]
fn golden_import_torch_checkpoint() {
    let c = Golden::Dir(golden_dir()).case("vit_forward").unwrap();
    let dev = Backend::from_test_env().unwrap().device(Precision::F32).unwrap();
    let cfg = c.vit_config().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let golden = golden_dir().join("vit_forward.safetensors");
    let check = |run: &std::path::Path| {
        let enc = trainer::linear::load_encoder(run, trainer::pretrain::CheckpointChoice::LowestLoss, &dev).unwrap();
        let images: Tensor<4> = c.tensor("images", &dev).unwrap();
        assert_close("cls_full (imported)", &values(enc.vit.forward(images, None)), &c.f32("cls_full").unwrap(), 1e-4);
    };
    let run = dir.path().join("from-safetensors");
    trainer::import::import_torch(&golden, &cfg, "w.", &run, &dev).unwrap();
    check(&run);

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/write_ckpt.py");
    let write = |dst: &std::path::Path, args: &[&str]| {
        std::process::Command::new("python3")
            .arg(&script)
            .arg(&golden)
            .arg(dst)
            .args(["w.", "backbone."])
            .args(args)
            .status()
            .map(|s| s.success())
    };
    let ckpt = dir.path().join("reference.ckpt");
    match write(&ckpt, &[]) {
        Ok(true) => {}
        other => {
            eprintln!("python3 could not write a checkpoint ({other:?}); the .ckpt half of the test is skipped");
            return;
        }
    }
    let run = dir.path().join("from-ckpt");
    let imported = trainer::import::import_torch(&ckpt, &cfg, "backbone.", &run, &dev).unwrap();
    assert_eq!(imported.tensors, 6 + 12 * c.usize("num_layers").unwrap());
    assert!(imported.other > 0, "the anchor_backbone copy is not read");
    check(&run);

    let bad = dir.path().join("bad.ckpt");
    assert!(
        write(
            &bad,
            &[
                "--drop",
                "backbone.encoder.layers.encoder_layer_1.mlp.3.bias",
                "--extra",
                "backbone.encoder.extra_norm.weight"
            ]
        )
        .unwrap()
    );
    let err =
        trainer::import::import_torch(&bad, &cfg, "backbone.", &dir.path().join("bad"), &dev).unwrap_err().to_string();
    assert!(
        err.contains("missing: backbone.encoder.layers.encoder_layer_1.mlp.3.bias")
            && err.contains("unexpected: backbone.encoder.extra_norm.weight"),
        "{err}"
    );
}
