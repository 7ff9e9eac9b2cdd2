//! A checkpointed layer with adapter dropout recomputes with the masks its forward drew.
//!
//! Its own test binary with a single test: the CPU backend's random generator is process-wide,
//! and the check replays an exact sequence of draws that a concurrent test would disturb.

use llama::burn::module::Module;
use llama::burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use llama::config::LlamaConfig;
use llama::layer_checkpoint::dropout_seed;
use llama::lora::{LoraAdapter, ProjectionKind};
use llama::model::Llama;

const KINDS: [ProjectionKind; 3] = [ProjectionKind::Q, ProjectionKind::Up, ProjectionKind::Down];

fn adapted(dropout: f64, device: &Device) -> Llama {
    let config = LlamaConfig {
        num_hidden_layers: 1,
        ..LlamaConfig::tiny_for_tests()
    };
    let mut model = Llama::random(&config, 7, device).unwrap().no_grad();
    device.seed(11);
    for kind in KINDS {
        let [input, output] = model.projection(0, kind).dims();
        let normal = Distribution::Normal(0.0, 0.3);
        let a = Tensor::<2>::random([input, 4], normal, device).autodiff();
        let b = Tensor::<2>::random([4, output], normal, device).autodiff();
        model.projection_mut(0, kind).lora = Some(LoraAdapter::new(a, b, 2.0, dropout).unwrap());
    }
    model
}

fn values(tensor: Tensor<2>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

/// The factors' gradients of a fixed weighting of the logits.
fn factor_grads(model: &Llama) -> Vec<Vec<f32>> {
    let device = model.device();
    let tokens = Tensor::<2, Int>::from_data(
        TensorData::new((0..16).map(|i| (i * 29 % 256) as i64).collect(), [2, 8]),
        &device,
    );
    let mask = Tensor::<2, Int>::ones([2, 8], &device);
    let logits = model.forward(tokens, mask, None);
    let weights = Tensor::<3>::ones(logits.dims(), &device);
    let gradients = (logits * weights).sum().backward();
    KINDS
        .iter()
        .flat_map(|&kind| {
            let adapter = model.projection(0, kind).lora.as_ref().unwrap();
            [adapter.a.val(), adapter.b.val()]
        })
        .map(|factor| values(factor.grad(&gradients).unwrap()))
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f32, f32) {
    let flat = |x: &[Vec<f32>]| x.concat();
    let (a, b) = (flat(a), flat(b));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    (diff, scale)
}

#[test]
fn the_recompute_draws_the_forwards_dropout_masks() {
    let device = Device::flex().autodiff();
    let mut model = adapted(0.3, &device);

    model.checkpoint_layers = true;
    device.seed(9);
    let checkpointed = factor_grads(&model);

    // The plain graph drawing the same way: the layer's seed from the generator, then the
    // layer's masks after re-seeding with it.
    model.checkpoint_layers = false;
    device.seed(9);
    let seed = dropout_seed(&device);
    device.seed(seed);
    let plain = factor_grads(&model);
    let (diff, scale) = max_diff(&plain, &checkpointed);
    assert!(
        scale > 1e-3 && diff <= 1e-4 * scale,
        "{diff} against {scale}"
    );

    // Dropout changed the gradients: the check above is not trivially met.
    let without = factor_grads(&adapted(0.0, &device));
    let (diff, scale) = max_diff(&without, &checkpointed);
    assert!(
        diff > 1e-2 * scale,
        "dropout made no difference ({diff} against {scale})"
    );
}
