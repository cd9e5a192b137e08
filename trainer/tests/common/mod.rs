//! What the pretraining tests share: a small dataset written through the contract crate, a
//! tiny configuration, the test device and readers of a run's weights and metrics.

// Each test crate that includes this module uses part of it.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use cxr_dataset::shard::Shard;
use sha2::{Digest, Sha256};
use trainer::backend::{Backend, Precision};
use trainer::model::VitConfig;
use trainer::pretrain::PretrainConfig;
use trainer::views::ViewConfig;

/// 96 images of 32x32 in two shards: a bright disc whose position depends on the class, with
/// sex one-hots that agree with the class; splits 80/8/8.
pub fn write_dataset(dir: &Path) {
    write_dataset_with(dir, None);
}

/// [`write_dataset`], with `sex_male` NaN in image `nan_at` (of all 96) when given.
pub fn write_dataset_with(dir: &Path, nan_at: Option<usize>) {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let mut parts = Vec::new();
    for s in 0..2 {
        let mut shard = Shard::new(32, 32);
        shard.feature_names = vec!["sex_male".into(), "sex_female".into(), "label_edema".into(), "split".into()];
        for i in 0..48 {
            let k = s * 48 + i;
            let class = k % 2;
            let (cx, cy) = (if class == 0 { 10.0 } else { 22.0 }, 8.0 + (k % 5) as f32 * 4.0);
            let img: Vec<u8> = (0..1024)
                .map(|p| {
                    let (x, y) = ((p % 32) as f32, (p / 32) as f32);
                    let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
                    (40.0 + 180.0 * (-d * d / 30.0).exp() + ((p * 7 + k) % 13) as f32) as u8
                })
                .collect();
            let split = if k < 80 {
                0.0
            } else if k < 88 {
                1.0
            } else {
                2.0
            };
            let sex = if nan_at == Some(k) { f32::NAN } else { class as f32 };
            shard.push_with_features(&img, &[sex, 1.0 - class as f32, class as f32, split]).unwrap();
        }
        let mut bytes = Vec::new();
        shard.write(&mut bytes).unwrap();
        let file = format!("images/part-{s:05}.safetensors");
        std::fs::write(dir.join(&file), &bytes).unwrap();
        let sha: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        parts.push(serde_json::json!({"images": file, "images_sha256": sha, "rows": 48}));
    }
    let manifest = serde_json::json!({"dataset_version": "test0000", "parts": parts});
    std::fs::write(dir.join(cxr_dataset::files::MANIFEST), manifest.to_string()).unwrap();
}

pub fn tiny(ehr: &str) -> PretrainConfig {
    let vit = VitConfig::new(16, 2, 2, 32).with_image_size(32).with_patch_size(8);
    let mut cfg = PretrainConfig::paper(vit, ehr.parse().unwrap())
        .with_prototypes(16)
        .with_ehr_dim(8)
        .with_batch_size(8)
        .with_epochs(4)
        .with_lr(1e-3);
    cfg.views = ViewConfig::new().with_global_size(32).with_focal_size(16).with_focal_views(2);
    cfg
}

struct Flatten(Vec<f32>);
impl ModuleVisitor for Flatten {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        self.0.extend(p.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap());
    }
}
pub fn flat(m: &impl Module) -> Vec<f32> {
    let mut f = Flatten(Vec::new());
    m.visit(&mut f);
    f.0
}

/// Each line of `run`'s metrics.jsonl as the values of `keys`, space-separated.
pub fn metric_lines(run: &Path, keys: &[&str]) -> Vec<String> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            keys.iter().map(|k| v[*k].to_string()).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

/// The training device `CXR_TEST_DEVICE` names (default cpu; see `trainer::backend`).
pub fn device() -> Device {
    Backend::from_test_env().unwrap().autodiff(Precision::F32).unwrap()
}

/// The losses of a run's `metrics.jsonl`, in step order.
pub fn losses(run: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect()
}
