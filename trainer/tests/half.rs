//! Half precision (`--precision f16`): a device's float type is fixed once per process, so this
//! has its own test binary. On wgpu (`CXR_TEST_DEVICE=wgpu`) a pretraining step runs in f16
//! and stays finite; on the CPU backends f16 is refused with a message.

#![allow(clippy::unwrap_used)]

use burn::tensor::{DType, Tensor};
use trainer::backend::{Backend, Precision};
use trainer::model::VitConfig;
use trainer::rng::Rng;

#[test]
fn half_precision_runs_on_wgpu_and_is_refused_on_the_cpu() {
    let backend = Backend::from_test_env().unwrap();
    if backend != Backend::Wgpu {
        let err = backend.device(Precision::F16).unwrap_err().to_string();
        assert!(err.contains("--device wgpu"), "{err}");
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
}
