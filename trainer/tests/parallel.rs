//! Data-parallel pretraining on several devices (threads with a host all-reduce on the CPU):
//! the steps, the replicas, resuming, and which partial batches train.

#![allow(clippy::unwrap_used)]

mod common;

use burn::tensor::Tensor;
use trainer::pretrain::{PretrainConfig, pretrain};

use common::{device, flat, tiny, write_dataset};

/// A batch of `n` samples of `cfg`'s views with random pixels and sex one-hots (no masks).
fn random_batch(cfg: &PretrainConfig, n: usize, seed: u64) -> trainer::views::Batch {
    let mut rng = trainer::rng::Rng::new(seed);
    let v = &cfg.views;
    let (g, f) = (v.channels * v.global_size.pow(2), v.channels * v.focal_size.pow(2));
    let mut draw = |len: usize| (0..len).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
    trainer::views::Batch {
        size: n,
        target: draw(n * g),
        anchor: draw(n * g),
        focal: draw(v.focal_views * n * f),
        anchor_keep: Vec::new(),
        anchor_kept: 0,
        focal_keep: Vec::new(),
        focal_kept: 0,
        ehr: (0..n).flat_map(|i| [(i % 2) as f32, 1.0 - (i % 2) as f32]).collect(),
    }
}

/// `k` copies of `b` one after the other (focal views stay view-major).
fn repeat(b: &trainer::views::Batch, k: usize, focal_views: usize) -> trainer::views::Batch {
    let per_view = |x: &[f32], views: usize| -> Vec<f32> {
        let w = x.len() / views;
        (0..views).flat_map(|v| (0..k).flat_map(move |_| x[v * w..(v + 1) * w].iter().copied())).collect()
    };
    trainer::views::Batch {
        size: b.size * k,
        target: per_view(&b.target, 1),
        anchor: per_view(&b.anchor, 1),
        focal: per_view(&b.focal, focal_views),
        ehr: per_view(&b.ehr, 1),
        ..b.clone()
    }
}

fn replicas(cfg: &PretrainConfig, devices: usize) -> trainer::pretrain::Replicas {
    let device = device();
    let shape = trainer::model::fusion::FusionShape { ehr_in: 2, ehr_dim: 8, prototypes: 16 };
    let mut net = trainer::model::fusion::MsnNet::new(&cfg.vit, shape, &device, &mut trainer::rng::Rng::new(cfg.seed));
    net.prototypes = net.prototypes.set_require_grad(false);
    let list = trainer::parallel::Devices::new(vec![device; devices], trainer::parallel::AllReduce::Host).unwrap();
    trainer::pretrain::Replicas::new(net, &list)
}

/// Data parallelism on k = 2 and 3 devices (threads with a host all-reduce): with every
/// device's shard holding the same samples, the per-shard BatchNorm statistics are the whole
/// batch's, so three steps give the losses and head weights of one device on the concatenated batch;
/// with different shards the replicas stay exactly equal (their gradients are summed before
/// the same update).
#[test]
fn data_parallel_steps_equal_one_device_and_keep_the_replicas_equal() {
    let cfg = tiny("sex").with_batch_size(12);
    let fv = cfg.views.focal_views;
    for k in [2, 3] {
        let (mut one, mut many, mut mixed) = (replicas(&cfg, 1), replicas(&cfg, k), replicas(&cfg, k));
        for step in 0..3 {
            let s = cfg.schedule_at(0, step, 10);
            let same = repeat(&random_batch(&cfg, 4, step as u64), k, fv);
            let (a, _) = one.step(&same, &cfg, s).unwrap();
            let (b, _) = many.step(&same, &cfg, s).unwrap();
            let value = |t: Tensor<1>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0];
            let (a, b) = (value(a.loss), value(b.loss));
            assert!((a - b).abs() < 1e-5 * a.abs(), "{k} devices, step {step}: loss {b} vs {a}");
            mixed.step(&random_batch(&cfg, 4 * k + 1, 100 + step as u64), &cfg, s).unwrap();
        }
        // The projection heads: every weight. Not the encoder's or EHR layers' biases that
        // only shift the head's input, which its BatchNorm removes: their gradient is zero up
        // to rounding, and Adam turns the sign of that rounding into a step of the full lr.
        for (name, want, got) in [
            ("anchor head", flat(&one.net().anchor_head), flat(&many.net().anchor_head)),
            ("target head", flat(&one.net().target_head), flat(&many.net().target_head)),
        ] {
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = want.iter().zip(&got).fold(0f32, |m, (w, g)| m.max((w - g).abs()));
            assert!(worst < 1e-5 * scale, "{k} devices, {name}: weights differ by {worst} (scale {scale})");
        }
        let first = flat(mixed.net());
        assert!(first != flat(replicas(&cfg, 1).net()), "the weights moved");
        for (i, net) in mixed.nets().enumerate() {
            assert!(flat(net) == first, "{k} devices: replica {i} left replica 0");
        }
    }
}

/// `pretrain` on two devices: checkpoints hold the replicas' weights, and a stopped run
/// resumed on two devices ends where an uninterrupted one does.
#[test]
fn a_data_parallel_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data);
    let two = trainer::parallel::Devices::new(vec![device(); 2], trainer::parallel::AllReduce::Host).unwrap();
    let cfg = tiny("sex").with_epochs(1).with_checkpoint_every(3);
    let whole = pretrain(&cfg, &data, &dir.path().join("whole"), &two, false).unwrap();
    assert_eq!(whole.steps, 10);
    let run = dir.path().join("resumed");
    pretrain(&cfg.clone().with_max_steps(Some(4)), &data, &run, &two, false).unwrap();
    let rest = pretrain(&cfg, &data, &run, &two, true).unwrap();
    assert_eq!(rest.steps, 6);
    assert!(flat(&rest.net) == flat(&whole.net), "resumed on two devices");
    // Not the one-device run: each device's BatchNorm sees its own shard.
    let one = pretrain(&cfg, &data, &dir.path().join("one"), &device(), false).unwrap();
    assert!(flat(&one.net) != flat(&whole.net));
}

#[test]
fn a_partial_batch_trains_only_when_every_device_gets_a_sample() {
    use trainer::pretrain::batches_per_epoch;
    assert_eq!(batches_per_epoch(80, 7, false, 1), 12);
    assert_eq!(batches_per_epoch(80, 7, false, 3), 12, "3 left over, 3 devices");
    assert_eq!(batches_per_epoch(80, 7, false, 4), 11, "3 left over, 4 devices");
    assert_eq!(batches_per_epoch(80, 7, true, 1), 11);
    assert_eq!(batches_per_epoch(80, 8, false, 4), 10);
}
