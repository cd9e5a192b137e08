//! Mixed precision (`--precision bf16`, and f16 with a loss scale): the networks compute in
//! the half type while parameters, gradients, the optimizer's state and the EMA target stay f32. On the device
//! `CXR_TEST_DEVICE` names (burn-flex by default, which computes bf16 through f32; wgpu with
//! `--features vulkan`, cuda), a whole step keeps every parameter f32 and moves it, and a
//! pretraining run in bf16 tracks the same run in f32.

#![allow(clippy::unwrap_used)]

use burn::tensor::{DType, Tensor};
use trainer::backend::{Backend, Precision};
use trainer::model::VitConfig;
use trainer::model::fusion::{FusionShape, MsnNet, Views};
use trainer::parallel::Local;
use trainer::pretrain::{PretrainConfig, StepSchedule, train_step, train_step_with};
use trainer::rng::Rng;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn a_bf16_step_computes_in_bf16_and_keeps_f32_parameters() {
    let device = match Backend::from_test_env().unwrap().autodiff(Precision::Bf16) {
        Ok(device) => device,
        // An adapter without bf16 (lavapipe; wgpu's WGSL compiler) is refused by the device
        // check, with the reason, never by a panic inside a step.
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("cannot compute in BF16"), "{msg}");
            return;
        }
    };
    let cfg = VitConfig::new(32, 2, 2, 64).with_image_size(32).with_patch_size(8);
    let p = PretrainConfig::paper(cfg.clone(), "sex".parse().unwrap()).with_prototypes(16).with_ehr_dim(8);
    let shape = FusionShape { ehr_in: 2, ehr_dim: 8, prototypes: 16 };
    let net = MsnNet::new(&cfg, shape, &device, &mut Rng::new(24));
    assert_eq!(net.anchor.patch.weight.val().dtype(), DType::F32);
    let mut rng = Rng::new(1);
    let mut t = |shape: [usize; 4]| {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::<4>::from_data(burn::tensor::TensorData::new(v, shape), &device).cast(DType::BF16)
    };
    let views = Views {
        target: t([4, 3, 32, 32]),
        anchor: t([4, 3, 32, 32]),
        anchor_keep: None,
        focal: Some(t([8, 3, 16, 16])),
        focal_keep: None,
        ehr: Some(Tensor::<2>::ones([4, 2], &device).cast(DType::BF16)),
    };
    // The encoder computes in its input's type; its output is bf16, its parameters are not.
    assert_eq!(net.anchor.forward(views.anchor.clone(), None).dtype(), DType::BF16);
    let before = values(net.anchor.patch.weight.val());
    let mut optim = trainer::pretrain::optimizer();
    let s = StepSchedule { lr: 1e-3, weight_decay: 1e-3, momentum: 0.996 };
    let (net, loss, _) = train_step(net, &mut optim, views, &p, s).unwrap();
    // The MSN loss in f32, its value finite.
    assert_eq!(loss.loss.dtype(), DType::F32);
    assert!(values(loss.loss)[0].is_finite());
    for (name, w) in [("anchor", net.anchor.patch.weight.val()), ("target", net.target.patch.weight.val())] {
        assert_eq!(w.dtype(), DType::F32, "{name} patch weight stays f32");
    }
    let after = values(net.anchor.patch.weight.val());
    assert!(after.iter().all(|v| v.is_finite()));
    assert_ne!(after, before, "the update moved the weights");
}

/// f16 trains with a loss scale: a scale that overflows f16 in the backward pass skips the
/// update (the weights stay as they were), and a sane one trains like f32 where plain f16 loses
/// the small gradients: Adam's first step moves each weight by about lr whatever its gradient's
/// size, unless the gradient flushed to zero, so the weights that moved say whose gradients
/// survived.
#[test]
fn an_f16_step_skips_an_overflowing_loss_scale_and_keeps_the_gradients_plain_f16_loses() {
    let device = match Backend::from_test_env().unwrap().autodiff(Precision::F16) {
        Ok(device) => device,
        Err(e) => {
            assert!(e.to_string().contains("cannot compute in F16"), "{e}");
            return;
        }
    };
    let cfg = VitConfig::new(32, 2, 2, 64).with_image_size(32).with_patch_size(8);
    let p = PretrainConfig::paper(cfg.clone(), "sex".parse().unwrap()).with_prototypes(16).with_ehr_dim(8);
    let shape = FusionShape { ehr_in: 2, ehr_dim: 8, prototypes: 16 };
    let views = |dtype: DType| {
        let mut rng = Rng::new(1);
        let mut t = |shape: [usize; 4]| {
            let n = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            Tensor::<4>::from_data(burn::tensor::TensorData::new(v, shape), &device).cast(dtype)
        };
        Views {
            target: t([4, 3, 32, 32]),
            anchor: t([4, 3, 32, 32]),
            anchor_keep: None,
            focal: Some(t([8, 3, 16, 16])),
            focal_keep: None,
            ehr: Some(Tensor::<2>::ones([4, 2], &device).cast(dtype)),
        }
    };
    let s = StepSchedule { lr: 1e-3, weight_decay: 0.0, momentum: 0.996 };
    let fresh = || MsnNet::new(&cfg, shape, &device, &mut Rng::new(24));
    let before = values(fresh().anchor.patch.weight.val());
    // Which of the patch embedding's weights a step moved (by about lr; less than lr/2 is still).
    let step = |dtype: DType, scale: Option<f64>| {
        let mut optim = trainer::pretrain::optimizer();
        let out = train_step_with(fresh(), &mut optim, views(dtype), &p, s, &Local, scale).unwrap();
        assert!(values(out.loss.loss)[0].is_finite(), "the loss itself is f32 and finite");
        let after = values(out.net.anchor.patch.weight.val());
        assert!(after.iter().all(|v| v.is_finite()));
        let moved: Vec<bool> = after.iter().zip(&before).map(|(a, b)| (a - b).abs() > 5e-4).collect();
        (out.applied, after, moved)
    };
    let (applied, weights, _) = step(DType::F16, Some(2f64.powi(60)));
    assert!(!applied, "2^60 times the loss overflows f16's 65,504 in the backward pass");
    assert_eq!(weights, before, "a skipped step leaves the anchor alone");
    let (_, _, f32_moved) = step(DType::F32, None);
    let (applied, _, scaled) = step(DType::F16, Some(1024.0));
    assert!(applied);
    let (_, _, plain) = step(DType::F16, None);
    let lost = |m: &[bool]| m.iter().zip(&f32_moved).filter(|(a, b)| a != b).count();
    let (lost_scaled, lost_plain) = (lost(&scaled), lost(&plain));
    assert!(
        lost_scaled * 10 <= lost_plain && lost_scaled * 100 <= before.len(),
        "weights moved unlike f32: {lost_scaled} with the scale, {lost_plain} without, of {}",
        before.len()
    );
}
