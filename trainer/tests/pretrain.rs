//! A short pretraining run on a small dataset written through the contract crate: the loss
//! falls, the EMA target moves but differs from the anchor, the run folder holds the config
//! and metrics, and a dataset that does not verify is refused.

#![allow(clippy::unwrap_used)]

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use cxr_dataset::features::EhrSelection;
use trainer::model::VitConfig;
use trainer::pretrain::{PretrainConfig, Schedule, StepSchedule, pretrain};

use common::{device, flat, metric_lines, tiny, write_dataset, write_dataset_with};

#[test]
fn a_short_run_lowers_the_loss_and_moves_the_ema_target() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data);
    let device = device();
    let cfg = tiny("sex");
    let initial = trainer::model::fusion::MsnNet::new(
        &cfg.vit,
        trainer::model::fusion::FusionShape { ehr_in: 2, ehr_dim: 8, prototypes: 16 },
        &device,
        &mut trainer::rng::Rng::new(cfg.seed),
    );
    let run = dir.path().join("run");
    let s = pretrain(&cfg, &data, &run, &device, false).unwrap();
    assert_eq!(s.steps, 4 * 80 / 8, "train split only, 10 batches an epoch");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), s.steps);
    let mean = |r: &[serde_json::Value]| r.iter().map(|v| v["loss"].as_f64().unwrap()).sum::<f64>() / r.len() as f64;
    let (early, late) = (mean(&lines[..5]), mean(&lines[lines.len() - 5..]));
    assert!(late < early, "loss {early} -> {late}");
    for key in ["cross_entropy", "me_max", "lr", "momentum", "images_per_second"] {
        assert!(lines[0][key].is_number(), "{key}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dataset_version"], "test0000");
    assert_eq!(config["ehr_columns"], serde_json::json!(["sex_male", "sex_female"]));
    // The target followed the anchor a little: neither frozen nor equal to it.
    let (t0, t1, a1) = (flat(&initial.target), flat(&s.net.target), flat(&s.net.anchor));
    assert_ne!(t0, t1, "the EMA target moved");
    assert_ne!(t1, a1, "the target is not the anchor");

    // The same seed gives the same run.
    let again = pretrain(&cfg, &data, &dir.path().join("run2"), &device, false).unwrap();
    assert_eq!(flat(&again.net.anchor), a1);
    // --max-steps stops part-way through an epoch (the view producer is stopped too).
    let short =
        pretrain(&cfg.clone().with_max_steps(Some(3)), &data, &dir.path().join("run3"), &device, false).unwrap();
    assert_eq!(short.steps, 3);
}

/// A run stopped part-way (here by --max-steps, as a kill would) and resumed from its
/// checkpoint ends with the same weights and metrics as an uninterrupted run.
#[test]
fn a_stopped_and_resumed_run_equals_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data);
    let device = device();
    let cfg = tiny("sex").with_epochs(2).with_checkpoint_every(4);
    let whole = pretrain(&cfg, &data, &dir.path().join("whole"), &device, false).unwrap();
    let run = dir.path().join("resumed");
    let first = pretrain(&cfg.clone().with_max_steps(Some(7)), &data, &run, &device, false).unwrap();
    assert_eq!(first.steps, 7);
    assert_eq!(trainer::pretrain::read_checkpoint(&run).unwrap().step, 7);
    let rest = pretrain(&cfg, &data, &run, &device, true).unwrap();
    assert_eq!(rest.steps, 20 - 7);
    assert_eq!(flat(&rest.net.anchor), flat(&whole.net.anchor), "anchor");
    assert_eq!(flat(&rest.net.target), flat(&whole.net.target), "target");
    assert_eq!(metric_lines(&run, &["step", "loss"]), metric_lines(&dir.path().join("whole"), &["step", "loss"]));
    // Resuming against another dataset is refused.
    let other = dir.path().join("other");
    write_dataset(&other);
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(other.join(cxr_dataset::files::MANIFEST)).unwrap()).unwrap();
    m["dataset_version"] = "other000".into();
    std::fs::write(other.join(cxr_dataset::files::MANIFEST), m.to_string()).unwrap();
    let err = pretrain(&cfg, &other, &run, &device, true).unwrap_err().to_string();
    assert!(err.contains("resume with the same dataset"), "{err}");
}

/// Run by [`a_killed_run_resumes_to_the_same_weights`] in a child process: pretraining of
/// the test dataset in `CXR_TRAIN_DATA` into `CXR_TRAIN_RUN`, resuming when the run has a
/// checkpoint. Ignored so that it runs only when asked for.
#[test]
#[ignore = "child process of a_killed_run_resumes_to_the_same_weights"]
fn child_pretrain() {
    let data = std::path::PathBuf::from(std::env::var_os("CXR_TRAIN_DATA").unwrap());
    let run = std::path::PathBuf::from(std::env::var_os("CXR_TRAIN_RUN").unwrap());
    let resume = run.join(trainer::pretrain::CHECKPOINT).is_file();
    pretrain(&kill_config(), &data, &run, &device(), resume).unwrap();
}

fn kill_config() -> PretrainConfig {
    tiny("sex").with_epochs(3).with_checkpoint_every(2)
}

/// SIGKILLs a real training process once it has checkpointed, twice, then lets it finish: the
/// weights equal an uninterrupted run's.
#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data);
    let run = dir.path().join("killed");
    let spawn = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["child_pretrain", "--exact", "--ignored", "--test-threads", "1"])
            .env("CXR_TRAIN_DATA", &data)
            .env("CXR_TRAIN_RUN", &run)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let step = || trainer::pretrain::read_checkpoint(&run).map(|c| c.step).unwrap_or(0);
    let mut kills = Vec::new();
    for at_least in [2, 8] {
        let mut child = spawn();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        loop {
            if step() >= at_least {
                child.kill().unwrap();
                child.wait().unwrap();
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("training ended ({status}) before step {at_least}; nothing to resume");
            }
            assert!(std::time::Instant::now() < deadline, "no progress");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        kills.push(step());
    }
    assert!(kills[1] > kills[0] && kills[1] < 30, "killed at steps {kills:?}");
    assert!(spawn().wait().unwrap().success(), "the resumed run finishes");
    let device = device();
    let whole = pretrain(&kill_config(), &data, &dir.path().join("whole"), &device, false).unwrap();
    // The finished run's last checkpoint holds its final weights.
    let c = trainer::pretrain::read_checkpoint(&run).unwrap();
    assert_eq!(c.step, 30);
    let record = burn::store::ModuleRecord::load(run.join(&c.model)).unwrap();
    let shape = trainer::model::fusion::FusionShape { ehr_in: 2, ehr_dim: 8, prototypes: 16 };
    let loaded =
        trainer::model::fusion::MsnNet::new(&kill_config().vit, shape, &device, &mut trainer::rng::Rng::new(0))
            .try_load_record(record)
            .unwrap();
    assert_eq!(flat(&loaded.anchor), flat(&whole.net.anchor));
    assert_eq!(flat(&loaded.target), flat(&whole.net.target));
}

/// Every EHR choice of the paper trains from the one dataset (here: those its columns allow),
/// and vanilla MSN has no EHR layers.
#[test]
fn ehr_choices_select_columns_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data);
    let device = device();
    for ehr in ["none", "sex"] {
        let s = pretrain(&tiny(ehr).with_max_steps(Some(1)), &data, &dir.path().join(ehr), &device, false).unwrap();
        assert_eq!(s.steps, 1);
        assert_eq!(s.net.f_ehr.is_some(), ehr != "none", "{ehr}");
    }
}

/// The last, partial batch of an epoch trains (as the reference's data loader), unless
/// `drop_last` (the original MSN); the lowest-loss epoch is kept as its own checkpoint.
#[test]
fn the_last_partial_batch_trains_unless_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data);
    let device = device();
    // 80 training images in batches of 12: 6 full batches and one of 8.
    let cfg = tiny("none").with_batch_size(12).with_epochs(2);
    let run = dir.path().join("keep");
    let keep = pretrain(&cfg, &data, &run, &device, false).unwrap();
    assert_eq!((keep.steps, keep.images), (14, 160));
    let drop = pretrain(&cfg.clone().with_drop_last(true), &data, &dir.path().join("drop"), &device, false).unwrap();
    assert_eq!((drop.steps, drop.images), (12, 144));
    let best = trainer::pretrain::read_best(&run).unwrap().unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let epoch_mean = |e: u64| {
        let l: Vec<f64> = lines.iter().filter(|v| v["epoch"] == e).map(|v| v["loss"].as_f64().unwrap()).collect();
        l.iter().sum::<f64>() / l.len() as f64
    };
    let (m0, m1) = (epoch_mean(0), epoch_mean(1));
    let want = if m1 < m0 { 1 } else { 0 };
    assert_eq!(best.epoch, want, "epoch means {m0} {m1}");
    assert!((f64::from(best.mean_loss) - m0.min(m1)).abs() < 1e-4);
    assert!(run.join(trainer::pretrain::BEST_MODEL).is_file());
}

#[test]
fn an_unknown_ehr_column_and_a_changed_shard_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data);
    let device = device();
    let err = pretrain(&tiny("view"), &data, &dir.path().join("r"), &device, false).unwrap_err().to_string();
    assert!(err.contains("no column \"view_PA\"") && err.contains("sex_male"), "{err}");
    let shard = data.join("images/part-00001.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let err = pretrain(&tiny("none"), &data, &dir.path().join("r2"), &device, false).unwrap_err().to_string();
    assert!(err.contains("does not verify"), "{err}");
}

/// A NaN in a selected EHR column is an error naming the column, the shard and the row; a
/// selection without that column trains.
#[test]
fn a_non_finite_ehr_value_is_an_error_naming_column_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset_with(&data, Some(50));
    let device = device();
    let err = pretrain(&tiny("sex"), &data, &dir.path().join("r"), &device, false).unwrap_err();
    assert_eq!(err.exit_code(), 4);
    let text = err.to_string();
    assert!(text.contains("\"sex_male\" is NaN in row 2 of images/part-00001.safetensors"), "{text}");
    pretrain(&tiny("none").with_epochs(1), &data, &dir.path().join("r2"), &device, false).unwrap();
}

/// A diverging run (a huge learning rate) stops at the first non-finite loss with its own
/// exit status, keeping the checkpoint of the step before.
#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data);
    let run = dir.path().join("run");
    let cfg = tiny("none").with_lr(1e30).with_checkpoint_every(1);
    let err = pretrain(&cfg, &data, &run, &device(), false).unwrap_err();
    let trainer::Error::NonFiniteLoss { step, kept, loss, .. } = &err else { panic!("{err}") };
    assert!(!loss.is_finite() && *step >= 1, "{err}");
    assert_eq!(*kept, Some(*step), "{err}");
    assert_eq!(err.exit_code(), 8);
    assert!(err.to_string().contains(&format!("the checkpoint of step {step} is kept")), "{err}");
    assert_eq!(trainer::pretrain::read_checkpoint(&run).unwrap().step, *step);
    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), step + 1, "the diverged step's metrics are written");
}

/// The `msn` preset trains the prototypes (the `paper` preset keeps them frozen).
#[test]
fn the_msn_preset_trains_prototypes_and_the_paper_preset_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data);
    let device = device();
    let paper = tiny("sex").with_max_steps(Some(3));
    let vit = paper.vit.clone();
    let mut msn = PretrainConfig::msn(vit, "sex".parse().unwrap())
        .with_prototypes(16)
        .with_ehr_dim(8)
        .with_batch_size(8)
        .with_epochs(4)
        .with_lr(1e-3)
        .with_warmup_epochs(1)
        .with_max_steps(Some(3));
    msn.views = paper.views.clone();
    let shape = trainer::model::fusion::FusionShape { ehr_in: 2, ehr_dim: 8, prototypes: 16 };
    let initial = trainer::model::fusion::MsnNet::new(&paper.vit, shape, &device, &mut trainer::rng::Rng::new(24));
    let proto = |net: &trainer::model::fusion::MsnNet| {
        net.prototypes.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    };
    let a = pretrain(&paper, &data, &dir.path().join("paper"), &device, false).unwrap();
    let b = pretrain(&msn, &data, &dir.path().join("msn"), &device, false).unwrap();
    assert_eq!(proto(&a.net), proto(&initial), "paper: frozen");
    assert_ne!(proto(&b.net), proto(&initial), "msn: trained");
}

/// Sum of `0 * p` over every trained parameter: its gradients are all zero, so an AdamW step
/// moves a parameter by weight decay alone.
struct ZeroLoss(Option<Tensor<1>>);
impl ModuleVisitor for ZeroLoss {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        if p.is_require_grad() {
            let term = p.val().mul_scalar(0.0).sum();
            self.0 = Some(match self.0.take() {
                Some(t) => t + term,
                None => term,
            });
        }
    }
}

/// The `msn` preset exempts 1-D parameters (biases, norms) and the prototypes from weight
/// decay; the `paper` preset decays every trained parameter.
#[test]
fn the_msn_preset_exempts_norms_biases_and_prototypes_from_weight_decay() {
    use trainer::model::fusion::{FusionShape, MsnNet};
    let device = device();
    let vit = VitConfig::new(16, 1, 2, 32).with_image_size(32).with_patch_size(8);
    let (lr, wd) = (0.1, 0.5);
    for preset in ["paper", "msn"] {
        let cfg = match preset {
            "msn" => PretrainConfig::msn(vit.clone(), "sex".parse().unwrap()),
            _ => PretrainConfig::paper(vit.clone(), "sex".parse().unwrap()).with_train_prototypes(true),
        }
        .with_weight_decay(wd)
        .with_grad_clip_norm(None);
        let shape = FusionShape { ehr_in: 2, ehr_dim: 8, prototypes: 16 };
        let net = MsnNet::new(&vit, shape, &device, &mut trainer::rng::Rng::new(3));
        let mut optim = trainer::pretrain::optimizer();
        let mut zero = ZeroLoss(None);
        net.visit(&mut zero);
        let grads = burn::optim::GradientsParams::from_grads(zero.0.unwrap().backward(), &net);
        let s = StepSchedule { lr, weight_decay: wd, momentum: 0.996 };
        let after = trainer::pretrain::update(net.clone(), &mut optim, grads, &cfg, s).unwrap();
        let ratio = |before: Vec<f32>, after: Vec<f32>| {
            let (b, a): (f32, f32) = (before.iter().map(|x| x.abs()).sum(), after.iter().map(|x| x.abs()).sum());
            a / b
        };
        let (b0, a0) = (&net.anchor.blocks[0], &after.anchor.blocks[0]);
        let decayed = 1.0 - (lr * wd) as f32;
        let expect_1d = if preset == "msn" { 1.0 } else { decayed };
        let cases = [
            ("fc1.weight", flat(&b0.fc1.weight), flat(&a0.fc1.weight), decayed),
            ("norm1.gamma", flat(&b0.norm1.gamma), flat(&a0.norm1.gamma), expect_1d),
            ("attn.qkv.weight", flat(&b0.attn.qkv.weight), flat(&a0.attn.qkv.weight), decayed),
            ("fc2.bias", flat(&b0.fc2.bias), flat(&a0.fc2.bias), expect_1d),
            ("prototypes", flat(&net.prototypes), flat(&after.prototypes), expect_1d),
            ("g.weight", flat(&net.g.as_ref().unwrap().weight), flat(&after.g.as_ref().unwrap().weight), decayed),
            ("g.bias", flat(&net.g.as_ref().unwrap().bias), flat(&after.g.as_ref().unwrap().bias), expect_1d),
            ("target (not trained)", flat(&net.target), flat(&after.target), 1.0),
        ];
        for (name, before, after, want) in cases {
            let r = ratio(before, after);
            assert!((r - want).abs() < 1e-5, "{preset}: {name} scaled by {r}, expected {want}");
        }
    }
}

/// A config file replaces the fields it names, nested or not, over a preset; an unknown field
/// is an error naming it; a saved config.json reads back as the same config.
#[test]
fn a_config_file_overrides_the_preset_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let base = PretrainConfig::paper(VitConfig::vit_tiny(), "sex".parse().unwrap());
    let file = dir.path().join("over.json");
    std::fs::write(&file, r#"{"lr": 0.002, "views": {"focal_views": 4}, "vit": {"layers": 2}, "grad_clip_norm": 1.5}"#)
        .unwrap();
    let cfg = base.with_overrides_from(&file).unwrap();
    assert_eq!(cfg.lr, 0.002);
    assert_eq!(cfg.views.focal_views, 4);
    assert_eq!(cfg.views.global_size, base.views.global_size);
    assert_eq!((cfg.vit.layers, cfg.vit.hidden, cfg.vit.heads), (2, 192, 6));
    assert_eq!(cfg.grad_clip_norm, Some(1.5));
    assert_eq!((cfg.batch_size, cfg.seed, &cfg.preset), (base.batch_size, base.seed, &base.preset));

    std::fs::write(&file, r#"{"views": {"focal_veiws": 4}}"#).unwrap();
    let err = base.with_overrides_from(&file).unwrap_err().to_string();
    assert!(err.contains("views.focal_veiws") && err.contains("focal_views") && err.contains("over.json"), "{err}");
    std::fs::write(&file, r#"{"lr": "fast"}"#).unwrap();
    assert!(base.with_overrides_from(&file).is_err());

    // A run's saved config.json (with the fields pretrain adds) reads back unchanged.
    let data = dir.path().join("data");
    write_dataset(&data);
    let run = dir.path().join("run");
    let msn = PretrainConfig::msn(tiny("sex").vit, "sex".parse().unwrap())
        .with_batch_size(8)
        .with_prototypes(16)
        .with_max_steps(Some(1));
    let msn = PretrainConfig { views: tiny("sex").views, ..msn };
    pretrain(&msn, &data, &run, &device(), false).unwrap();
    let read = PretrainConfig::read(&run.join("config.json")).unwrap();
    assert_eq!(serde_json::to_value(&read).unwrap(), serde_json::to_value(&msn).unwrap());
}

/// Streaming the images from the shard files gives the same images, rows and features as
/// holding them in memory, and the same pretrained weights.
#[test]
fn streamed_images_train_the_same_weights_as_images_in_memory() {
    use trainer::data::{Dataset, ImageSource};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data);
    let ds = Dataset::open(&data).unwrap();
    let cols = vec!["sex_male".to_string(), "label_edema".to_string()];
    let mem = ds.load(&[cxr_dataset::Split::Train], &cols, ImageSource::Memory).unwrap();
    let streamed = ds.load(&[cxr_dataset::Split::Train], &cols, ImageSource::Stream).unwrap();
    assert!(streamed.is_streamed() && !mem.is_streamed());
    assert_eq!((mem.len(), streamed.len()), (80, 80), "both shards, training rows only");
    for i in [0, 47, 48, 79] {
        assert_eq!(mem.image(i).unwrap(), streamed.image(i).unwrap(), "image {i}");
        assert_eq!(mem.feature_row(i), streamed.feature_row(i));
    }
    let sub = streamed.subset(&[79, 3]).unwrap();
    assert!(sub.is_streamed());
    assert_eq!(sub.image(0).unwrap(), mem.image(79).unwrap());
    assert_eq!(sub.feature_row(1), mem.feature_row(3));

    let device = device();
    let run = |images: ImageSource, name: &str| {
        let cfg = tiny("sex").with_max_steps(Some(4)).with_images(images);
        pretrain(&cfg, &data, &dir.path().join(name), &device, false).unwrap()
    };
    let (a, b) = (run(ImageSource::Memory, "memory"), run(ImageSource::Stream, "stream"));
    assert_eq!(flat(&a.net), flat(&b.net));
    // A config file naming another holding is refused with the choices.
    let err = tiny("sex").with_overrides(&serde_json::json!({"images": "disk"}), "test.json").unwrap_err().to_string();
    assert!(err.contains("test.json") && err.contains("`memory`, `stream`, `auto`"), "{err}");
}

/// Every parameter of the anchor branch trains (LayerNorms included) and none of the EMA
/// target's does, also after the target was made as a frozen copy of the anchor.
#[test]
fn the_anchor_branch_trains_every_parameter_and_the_target_none() {
    use trainer::model::fusion::{FusionShape, MsnNet};
    struct RequiresGrad(Vec<bool>);
    impl ModuleVisitor for RequiresGrad {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(p.is_require_grad());
        }
    }
    let grads = |m: &dyn Fn(&mut RequiresGrad)| {
        let mut v = RequiresGrad(Vec::new());
        m(&mut v);
        v.0
    };
    let device = device();
    let vit = VitConfig::new(16, 2, 2, 32).with_image_size(32).with_patch_size(8);
    let net = MsnNet::new(
        &vit,
        FusionShape { ehr_in: 2, ehr_dim: 8, prototypes: 16 },
        &device,
        &mut trainer::rng::Rng::new(3),
    );
    let anchor = grads(&|v| {
        net.anchor.visit(v);
        net.anchor_head.visit(v);
        net.f_ehr.visit(v);
        net.g.visit(v);
    });
    // Per block: 2 LayerNorms (2 each), qkv, out, fc1, fc2 (2 each); patch (2), cls, pos, final norm (2).
    assert_eq!(anchor.iter().filter(|&&g| g).count(), anchor.len());
    assert!(anchor.len() >= 2 * 12 + 6);
    let target = grads(&|v| {
        net.target.visit(v);
        net.target_head.visit(v);
    });
    assert!(target.iter().all(|&g| !g), "the target is not trained");
    assert!(net.anchor.blocks[0].norm1.gamma.is_require_grad() && net.anchor.norm.gamma.is_require_grad());
}

/// The schedules at chosen steps equal their formulas: the reference's per-epoch cosine, and
/// the original MSN's per-step warmup, cosine lr and weight decay over 1.25 times the run,
/// and the EMA ramp.
#[test]
fn the_schedules_follow_their_formulas() {
    let vit = VitConfig::vit_micro();
    let pi = std::f64::consts::PI;
    // Reference: 10 epochs of 5 steps, lr 1e-4, no warmup; constant wd and EMA.
    let paper = PretrainConfig::paper(vit.clone(), EhrSelection::none()).with_epochs(10);
    assert_eq!(paper.schedule, Schedule::Epoch);
    let s = paper.schedule_at(3, 17, 5);
    assert!((s.lr - 0.5 * 1e-4 * (1.0 + (pi * 0.3).cos())).abs() < 1e-15, "{s:?}");
    assert_eq!(paper.schedule_at(3, 15, 5).lr, s.lr, "constant within an epoch");
    assert_eq!((s.weight_decay, s.momentum), (1e-3, 0.996));
    // Original MSN: 20 epochs of 10 steps; warmup 15 epochs; everything over 1.25 * 200 = 250.
    let msn = PretrainConfig::msn(vit, EhrSelection::none()).with_epochs(20);
    assert_eq!(msn.schedule, Schedule::Step);
    let at = |step: usize| msn.schedule_at(step / 10, step, 10);
    let (warm, span) = (150.0, 250.0);
    // Step k uses the scheduler's k + 1.
    assert!((at(49).lr - (2e-4 + 50.0 / warm * (1e-3 - 2e-4))).abs() < 1e-15, "{:?}", at(49));
    let t = (180.0 - warm) / (span - warm);
    assert!((at(179).lr - (1e-6 + (1e-3 - 1e-6) * 0.5 * (1.0 + (pi * t).cos()))).abs() < 1e-15);
    assert!((at(179).weight_decay - (0.4 + (0.04 - 0.4) * 0.5 * (1.0 + (pi * 180.0 / span).cos()))).abs() < 1e-15);
    assert!((at(100).momentum - (0.996 + 0.004 * 100.0 / span)).abs() < 1e-15);
    assert!(at(199).momentum < 1.0 && at(199).weight_decay < 0.4 && at(199).lr > 1e-6, "never reach their ends");
}

/// One EMA update: target = m * target + (1 - m) * anchor, for every parameter.
#[test]
fn one_ema_update_is_the_weighted_mean() {
    use trainer::model::fusion::{FusionShape, MsnNet};
    let device = device();
    let vit = VitConfig::new(16, 1, 2, 32).with_image_size(32).with_patch_size(8);
    let shape = FusionShape { ehr_in: 0, ehr_dim: 8, prototypes: 16 };
    let mut net = MsnNet::new(&vit, shape, &device, &mut trainer::rng::Rng::new(5));
    // Make the anchor differ from the target.
    net.anchor = MsnNet::new(&vit, shape, &device, &mut trainer::rng::Rng::new(6)).anchor;
    let (t0, a0) = (flat(&net.target), flat(&net.anchor));
    assert_ne!(t0, a0);
    let m = 0.9;
    let after = trainer::pretrain::ema_update(net, m);
    let t1 = flat(&after.target);
    for ((t, a), got) in t0.iter().zip(&a0).zip(&t1) {
        let want = m as f32 * t + (1.0 - m as f32) * a;
        assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "{got} vs {want}");
    }
    assert_eq!(flat(&after.anchor), a0, "the anchor is untouched");
}

/// Global gradient-norm clipping scales the anchor branch's gradients together so their
/// joint norm is the limit (not each tensor's), and leaves the prototypes' alone.
#[test]
fn gradient_clipping_is_global_over_the_anchor_branch() {
    use trainer::model::fusion::{FusionShape, MsnNet};
    let device = device();
    let vit = VitConfig::new(16, 1, 2, 32).with_image_size(32).with_patch_size(8);
    let shape = FusionShape { ehr_in: 0, ehr_dim: 8, prototypes: 16 };
    let net = MsnNet::new(&vit, shape, &device, &mut trainer::rng::Rng::new(5));
    // Loss = sum of 10 * p over the trained parameters: every gradient entry is 10.
    struct Linear(Option<Tensor<1>>);
    impl ModuleVisitor for Linear {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if p.is_require_grad() {
                let term = p.val().mul_scalar(10.0).sum();
                self.0 = Some(match self.0.take() {
                    Some(t) => t + term,
                    None => term,
                });
            }
        }
    }
    let net = MsnNet { prototypes: net.prototypes.clone().set_require_grad(true), ..net };
    let mut loss = Linear(None);
    net.visit(&mut loss);
    let grads = burn::optim::GradientsParams::from_grads(loss.0.unwrap().backward(), &net);
    let clipped = trainer::pretrain::clip_global_norm(grads, &net, 3.0).unwrap();
    struct Sq<'a>(&'a burn::optim::GradientsParams, f64, usize);
    impl ModuleVisitor for Sq<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(p.id) {
                let v = g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
                self.1 += v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>();
                self.2 += v.len();
            }
        }
    }
    let mut anchor = Sq(&clipped, 0.0, 0);
    net.anchor.visit(&mut anchor);
    net.anchor_head.visit(&mut anchor);
    assert!((anchor.1.sqrt() - 3.0).abs() < 1e-3, "global norm {}", anchor.1.sqrt());
    let mut proto = Sq(&clipped, 0.0, 0);
    proto.visit_float(&net.prototypes);
    assert!((proto.1 - 100.0 * proto.2 as f64).abs() < 1e-3 * proto.1, "prototypes unclipped");
}
