//! Parity with the reference PyTorch implementation (`$CXR_GOLDEN_DIR`, see its README):
//! every test has `golden` in its name, so `cargo test -p trainer golden` runs exactly them.
//! The numbers come from the directory, so the tests pass for any golden directory of the same
//! layout (other seeds, other shapes).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use cxr_dataset::tensors::{RawTensor, read};
use serde_json::Value;
use trainer::backend::{Backend, Precision};
use trainer::model::head::ProjectionHead;
use trainer::model::{VitConfig, pos};
use trainer::msn::MsnLossConfig;
use trainer::rng::Rng;
use trainer::weights::{load_head, load_vit};

/// `$CXR_GOLDEN_DIR`, else `../shared/golden` beside the repository, else the copy vendored in
/// `trainer/tests/golden` (the same files, for clones without the shared folder).
fn golden_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CXR_GOLDEN_DIR") {
        return PathBuf::from(d);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = manifest.join("../../shared/golden");
    if shared.join("README.md").is_file() { shared } else { manifest.join("tests/golden") }
}

struct Case {
    json: Value,
    t: BTreeMap<String, RawTensor>,
}

/// The case `name` from [`golden_dir`]; a case that directory lacks is read from the vendored
/// copy (cases the trainer's own reference scripts made, e.g. `resized_crop_aa`, live only there).
fn case(name: &str) -> Case {
    let mut dir = golden_dir();
    if !dir.join(format!("{name}.json")).is_file() {
        dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    }
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let t = read(&dir.join(format!("{name}.safetensors"))).unwrap();
    Case { json, t }
}

impl Case {
    fn f32(&self, name: &str) -> Vec<f32> {
        self.t.get(name).unwrap_or_else(|| panic!("golden tensor {name} missing")).to_f32().unwrap()
    }
    fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let raw = &self.t[name];
        let shape: [usize; D] = raw.shape.clone().try_into().unwrap();
        Tensor::from_data(TensorData::new(self.f32(name), shape), device)
    }
    fn int<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D, Int> {
        let raw = &self.t[name];
        let shape: [usize; D] = raw.shape.clone().try_into().unwrap();
        Tensor::from_data(TensorData::new(raw.to_i64().unwrap(), shape), device)
    }
    fn usize(&self, key: &str) -> usize {
        self.json[key].as_u64().unwrap_or_else(|| panic!("{key} missing")) as usize
    }
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

/// Gradients, relative to the reference tensor's own scale: max |ours - reference| at most
/// `rel * max |reference|` plus an absolute floor of 1e-7 (gradients of the MSN loss peak at
/// 0.06-0.16, so a tolerance relative to 1 would leave most entries unchecked). Prints the
/// measured relative error.
fn assert_grad_close(what: &str, ours: &[f32], reference: &[f32], rel: f32) {
    assert_eq!(ours.len(), reference.len(), "{what}: lengths");
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = ours.iter().zip(reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!(
        "{what}: max |error| {worst:.3e} = {:.2e} of max |reference| {scale:.3e}",
        worst / scale.max(f32::MIN_POSITIVE)
    );
    assert!(worst <= rel * scale + 1e-7, "{what}: max difference {worst} (scale {scale}, relative tolerance {rel})");
}

/// The device `CXR_TEST_DEVICE` names (default cpu; see `trainer::backend`).
fn device() -> Device {
    Backend::from_test_env().unwrap().device(Precision::F32).unwrap()
}

fn vit_from(case: &Case, prefix: &str, device: &Device) -> trainer::model::Vit {
    let cfg = VitConfig::new(
        case.usize("hidden_dim"),
        case.usize("num_layers"),
        case.usize("num_heads"),
        case.usize("mlp_dim"),
    )
    .with_image_size(case.usize("image_size"))
    .with_patch_size(case.usize("patch_size"));
    let mut vit = cfg.init(device, &mut Rng::new(0));
    load_vit(&mut vit, &case.t, prefix, device).unwrap();
    vit
}

#[test]
fn golden_vit_forward() {
    let c = case("vit_forward");
    let dev = device();
    let vit = vit_from(&c, "w.", &dev);
    let images: Tensor<4> = c.tensor("images", &dev);
    assert_close("tokens_full", &values(vit.tokens(images.clone())), &c.f32("tokens_full"), 1e-4);
    assert_close("cls_full", &values(vit.forward(images.clone(), None)), &c.f32("cls_full"), 1e-4);
    let keep = c.int::<2>("idx_keep", &dev);
    assert_close("cls_masked", &values(vit.forward(images, Some(keep))), &c.f32("cls_masked"), 1e-4);
    let focal: Tensor<4> = c.tensor("focal_images", &dev);
    let side = focal.dims()[2] / c.usize("patch_size");
    assert_close("pos_embedding_focal", &values(vit.position_embedding(side)), &c.f32("pos_embedding_focal"), 1e-4);
    let keep_focal = c.int::<2>("idx_keep_focal", &dev);
    let _ = keep_focal.clone();
    assert_close("cls_focal", &values(vit.forward(focal, Some(keep_focal))), &c.f32("cls_focal"), 1e-4);
}

#[test]
fn golden_bicubic_14_to_6() {
    let c = case("bicubic_14_to_6");
    let dev = device();
    let grid: Tensor<3> = c.tensor("grid", &dev);
    let [_, n, dim] = grid.dims();
    let out_n = c.t["resized"].shape[1];
    let side = (out_n as f64).sqrt().round() as usize;
    // `resize` keeps a leading CLS row: add a zero one and drop it again.
    let with_cls = Tensor::cat(vec![Tensor::zeros([1, 1, dim], &dev), grid], 1);
    assert_eq!(with_cls.dims()[1], n + 1);
    let out = pos::resize(with_cls, side, &dev).narrow(1, 1, out_n);
    assert_close("resized", &values(out), &c.f32("resized"), 1e-4);
}

#[test]
fn golden_resized_crop_aa() {
    let c = case("resized_crop_aa");
    let side = c.usize("side");
    let image: Vec<u8> = c.f32("image").iter().map(|&v| v as u8).collect();
    let (expected, boxes) = (c.f32("resized"), c.f32("boxes"));
    let mut at = 0;
    for b in boxes.chunks_exact(6) {
        let [top, left, h, w, out, flip] = [0, 1, 2, 3, 4, 5].map(|k| b[k] as usize);
        let ours = trainer::views::resized_crop(&image, side, (top, left, h, w), out, flip == 1);
        assert_close(&format!("box {b:?}"), &ours, &expected[at..at + out * out], 1e-5);
        at += out * out;
    }
    assert_eq!(at, expected.len(), "every golden value compared");
}

#[test]
fn golden_projection_head() {
    let c = case("projection_head");
    let dev = device();
    let (i, h, o) = (c.usize("input_dim"), c.usize("hidden_dim"), c.usize("output_dim"));
    let mut head = ProjectionHead::new(i, h, o, &dev, &mut Rng::new(0));
    load_head(&mut head, &c.t, "w.", &dev).unwrap();
    let out = head.forward(c.tensor("input", &dev));
    assert_close("output", &values(out), &c.f32("output"), 1e-4);
}

fn msn_loss_case(name: &str) {
    let c = case(name);
    let dev = device().autodiff();
    let s = &c.json["settings"];
    let cfg = MsnLossConfig::new()
        .with_temperature(s["temperature"].as_f64().unwrap())
        .with_sharpen_temperature(s["target_sharpen_temperature"].as_f64().unwrap())
        .with_sinkhorn_iterations(s["sinkhorn_iterations"].as_u64().unwrap() as usize)
        .with_me_max_weight(s["regularization_weight"].as_f64().unwrap());
    let anchors: Tensor<2> = c.tensor::<2>("anchors", &dev).require_grad();
    let prototypes: Tensor<2> = c.tensor::<2>("prototypes", &dev).require_grad();
    let targets: Tensor<2> = c.tensor("targets", &dev);
    let out = cfg.forward(anchors.clone(), targets, prototypes.clone());
    let loss = values(out.loss.clone())[0];
    let expected = c.json["loss"].as_f64().unwrap() as f32;
    assert!((loss - expected).abs() <= 1e-5 * expected.abs().max(1.0), "{name}: loss {loss}, reference {expected}");
    let grads = out.loss.backward();
    let anchors_grad = values(anchors.grad(&grads).unwrap());
    assert_grad_close(&format!("{name} grad_anchors"), &anchors_grad, &c.f32("grad_anchors"), 1e-4);
    let prototypes_grad = values(prototypes.grad(&grads).unwrap());
    assert_grad_close(&format!("{name} grad_prototypes"), &prototypes_grad, &c.f32("grad_prototypes"), 1e-4);
}

#[test]
fn golden_msn_loss_default() {
    msn_loss_case("msn_loss_default");
}

#[test]
fn golden_msn_loss_no_sinkhorn() {
    msn_loss_case("msn_loss_no_sinkhorn");
}

#[test]
fn golden_msn_loss_reg_half() {
    msn_loss_case("msn_loss_reg_half");
}

#[test]
fn golden_msn_ehr_step() {
    use trainer::model::fusion::{FusionShape, MsnNet, Views};
    use trainer::weights::load_linear;
    let c = case("msn_ehr_step");
    let dev = device().autodiff();
    let d = c.usize("hidden_dim");
    let cfg = VitConfig::new(d, c.usize("num_layers"), c.usize("num_heads"), c.usize("mlp_dim"))
        .with_image_size(c.usize("image_size"))
        .with_patch_size(c.usize("patch_size"));
    let shape =
        FusionShape { ehr_in: c.usize("ehr_in"), ehr_dim: c.usize("ehr_out"), prototypes: c.usize("num_prototypes") };
    let mut net = MsnNet::new(&cfg, shape, &dev, &mut Rng::new(0));
    load_vit(&mut net.anchor, &c.t, "w.backbone.", &dev).unwrap();
    load_vit(&mut net.target, &c.t, "w.backbone.", &dev).unwrap();
    load_head(&mut net.anchor_head, &c.t, "w.head.", &dev).unwrap();
    load_head(&mut net.target_head, &c.t, "w.head.", &dev).unwrap();
    load_linear(net.f_ehr.as_mut().unwrap(), &c.t, "w.f_ehr", &dev).unwrap();
    load_linear(net.g.as_mut().unwrap(), &c.t, "w.g", &dev).unwrap();
    net.prototypes = burn::module::Param::from_tensor(c.tensor("prototypes", &dev));
    let views = Views {
        target: c.tensor("target_view", &dev),
        anchor: c.tensor("anchor_view", &dev),
        anchor_keep: Some(c.int("idx_keep_anchor", &dev)),
        focal: Some(c.tensor("focal_views", &dev)),
        focal_keep: Some(c.int("idx_keep_focal", &dev)),
        ehr: Some(c.tensor("ehr", &dev)),
    };
    let out = net.forward(views).unwrap();
    assert_close("targets_out", &values(out.targets.clone()), &c.f32("targets_out"), 1e-4);
    assert_close("anchors_out", &values(out.anchors.clone()), &c.f32("anchors_out"), 1e-4);
    let loss = MsnLossConfig::new().forward(out.anchors, out.targets, net.prototypes.val().detach());
    let value = values(loss.loss.clone())[0];
    let expected = c.json["loss"].as_f64().unwrap() as f32;
    assert!((value - expected).abs() <= 1e-4 * expected.abs(), "loss {value}, reference {expected}");
    let grads = loss.loss.backward();
    // PyTorch layout [out, in]; burn holds [in, out].
    let grad = |w: &burn::module::Param<Tensor<2>>| values(w.val().grad(&grads).unwrap().transpose());
    let f_ehr = grad(&net.f_ehr.as_ref().unwrap().weight);
    assert_grad_close("grad f_ehr.weight", &f_ehr, &c.f32("grad_f_ehr.weight"), 1e-4);
    assert_grad_close("grad g.weight", &grad(&net.g.as_ref().unwrap().weight), &c.f32("grad_g.weight"), 1e-4);
    let head = grad(&net.anchor_head.fc1.weight);
    assert_grad_close("grad anchor head layers.0.weight", &head, &c.f32("grad_anchor_head.layers.0.weight"), 1e-4);
}

/// AUROC and average precision as scikit-learn computes them (ties, a single-class label).
#[test]
fn golden_auroc_and_average_precision() {
    let c = case("auroc");
    let shape = &c.t["scores"].shape;
    let (rows, labels) = (shape[0], shape[1]);
    let scores = c.f32("scores");
    let y = c.f32("labels");
    let names: Vec<String> = (0..labels).map(|k| format!("label{k}")).collect();
    let ev = trainer::metrics::evaluate(&scores, &y, &names, 100, 1, &trainer::metrics::Clusters::images(rows));
    assert_eq!(ev.rows, rows);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    for (k, name) in names.iter().enumerate() {
        let want_auc = c.json["auroc_per_label"][k].as_f64();
        let want_ap = c.json["average_precision_per_label"][k].as_f64();
        let got = &ev.labels[k];
        match (want_auc, got.auroc) {
            (Some(w), Some(g)) => assert!(close(g.value, w), "label {k}: AUROC {} vs {w}", g.value),
            (None, None) => assert!(ev.undefined.contains(name)),
            (w, g) => panic!("label {k}: AUROC {g:?}, golden {w:?}"),
        }
        match (want_ap, got.average_precision) {
            (Some(w), Some(g)) => assert!(close(g.value, w), "label {k}: AP {} vs {w}", g.value),
            (None, None) => {}
            (w, g) => panic!("label {k}: AP {g:?}, golden {w:?}"),
        }
    }
    let macro_auc = ev.macro_auroc.unwrap().value;
    let want = c.json["auroc_macro_defined"].as_f64().unwrap();
    assert!(close(macro_auc, want), "macro {macro_auc} vs {want}");
}

/// `import-torch`: the golden ViT weights as a Lightning checkpoint (written by
/// `tests/write_ckpt.py` in torch.save's container, `backbone.*` = the encoder) and as the
/// safetensors file itself become run folders whose encoder gives the golden CLS outputs;
/// a checkpoint with a missing or an unexpected `backbone.*` tensor is refused, naming it.
#[test]
fn golden_import_torch_checkpoint() {
    let c = case("vit_forward");
    let dev = device();
    let cfg = VitConfig::new(c.usize("hidden_dim"), c.usize("num_layers"), c.usize("num_heads"), c.usize("mlp_dim"))
        .with_image_size(c.usize("image_size"))
        .with_patch_size(c.usize("patch_size"));
    let dir = tempfile::tempdir().unwrap();
    let golden = golden_dir().join("vit_forward.safetensors");
    let check = |run: &std::path::Path| {
        let enc = trainer::linear::load_encoder(run, trainer::pretrain::CheckpointChoice::LowestLoss, &dev).unwrap();
        let images: Tensor<4> = c.tensor("images", &dev);
        assert_close("cls_full (imported)", &values(enc.vit.forward(images, None)), &c.f32("cls_full"), 1e-4);
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
    assert_eq!(imported.tensors, 6 + 12 * c.usize("num_layers"));
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
