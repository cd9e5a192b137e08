//! Half precision (`--precision f16`): a device's float type is fixed once per process, so this
//! has its own test binary. On a GPU (`CXR_TEST_DEVICE=wgpu` or `cuda`) a ViT forward and backward, and a
//! whole pretraining step (EHR-fused network, MSN loss, AdamW update), run in f16 and stay
//! finite; on the CPU backends f16 is refused with a message.

#![allow(clippy::unwrap_used)]

use burn::tensor::{DType, Tensor};
use trainer::backend::{Backend, Precision};
use trainer::model::VitConfig;
use trainer::rng::Rng;

#[test]
fn half_precision_runs_on_wgpu_and_is_refused_on_the_cpu() {
    let backend = Backend::from_test_env().unwrap();
    if !matches!(backend, Backend::Wgpu | Backend::Cuda(_)) {
        let err = backend.device(Precision::F16).unwrap_err().to_string();
        assert!(err.contains("--device wgpu or cuda"), "{err}");
        return;
    }
    let device = backend.autodiff(Precision::F16).unwrap();
    let cfg = VitConfig::new(32, 2, 2, 64).with_image_size(32).with_patch_size(8);
    let vit = cfg.init(&device, &mut Rng::new(24));
    let x = Tensor::<4>::ones([2, 3, 32, 32], &device).mul_scalar(0.5);
    let cls = vit.forward(x, None);
    assert_eq!(cls.dtype(), DType::F16);
    let loss = cls.powi_scalar(2).mean();
    let grads = loss.backward();
    let value = loss.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0];
    assert!(value.is_finite() && value > 0.0, "loss {value}");
    let g = vit.patch.weight.grad(&grads).expect("the patch embedding has a gradient");
    let g = g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    assert!(g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0));

    // A whole step: views, the fused network, the MSN loss (me-max included), the update.
    use trainer::model::fusion::{FusionShape, MsnNet, Views};
    use trainer::pretrain::{PretrainConfig, StepSchedule, train_step};
    let p = PretrainConfig::paper(cfg.clone(), "sex".parse().unwrap()).with_prototypes(16).with_ehr_dim(8);
    let shape = FusionShape { ehr_in: 2, ehr_dim: 8, prototypes: 16 };
    let net = MsnNet::new(&cfg, shape, &device, &mut Rng::new(24));
    let before = net.anchor.patch.weight.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let mut rng = Rng::new(1);
    let mut t = |shape: [usize; 4]| {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::<4>::from_data(burn::tensor::TensorData::new(v, shape), &device)
    };
    let views = Views {
        target: t([4, 3, 32, 32]),
        anchor: t([4, 3, 32, 32]),
        anchor_keep: None,
        focal: Some(t([8, 3, 16, 16])),
        focal_keep: None,
        ehr: Some(Tensor::<2>::ones([4, 2], &device)),
    };
    let mut optim = trainer::pretrain::optimizer();
    let s = StepSchedule { lr: 1e-3, weight_decay: 1e-3, momentum: 0.996 };
    let (net, loss, _) = train_step(net, &mut optim, views, &p, s).unwrap();
    assert_eq!(loss.loss.dtype(), DType::F16);
    let value = loss.loss.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0];
    assert!(value.is_finite(), "MSN loss {value}");
    let after = net.anchor.patch.weight.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    assert!(after.iter().all(|v| v.is_finite()), "finite weights after the update");
    assert_ne!(after, before, "the update moved the weights");
}
