//! AdamW (PyTorch's decoupled form) over the adapter factors, with global-norm clipping.
//!
//! Written here rather than taken from burn's optimiser so that its whole state (two moments
//! and a step count) is plain tensors we checkpoint bit-exactly and reload on any device.

use llama::burn::tensor::Tensor;

use crate::adapter::f32_values;
use crate::config::TrainConfig;

#[derive(Debug, Clone)]
pub struct AdamW {
    /// Optimiser steps taken (bias correction uses it).
    pub steps: u64,
    /// First moments, one per trainable tensor (same order as the parameters).
    pub exp_avg: Vec<Tensor<2>>,
    /// Second moments.
    pub exp_avg_sq: Vec<Tensor<2>>,
}

impl AdamW {
    /// Zero state for parameters shaped like `params`.
    pub fn new(params: &[Tensor<2>]) -> Self {
        let zeros = |p: &Tensor<2>| p.zeros_like();
        Self {
            steps: 0,
            exp_avg: params.iter().map(zeros).collect(),
            exp_avg_sq: params.iter().map(zeros).collect(),
        }
    }

    /// One step: returns the updated parameters (plain tensors, no autodiff).
    ///
    /// `p ← p·(1 − lr·wd) − lr · m̂ / (√v̂ + ε)`, with `m̂ = m/(1−β₁ᵗ)`, `v̂ = v/(1−β₂ᵗ)`.
    pub fn step(
        &mut self,
        params: Vec<Tensor<2>>,
        grads: Vec<Tensor<2>>,
        learning_rate: f64,
        config: &TrainConfig,
    ) -> Vec<Tensor<2>> {
        assert_eq!(params.len(), grads.len(), "one gradient per parameter");
        self.steps += 1;
        let (beta1, beta2) = (config.adam_beta1, config.adam_beta2);
        let bias1 = 1.0 - beta1.powi(self.steps as i32);
        let bias2 = 1.0 - beta2.powi(self.steps as i32);
        let decay = 1.0 - learning_rate * config.weight_decay;
        params
            .into_iter()
            .zip(grads)
            .enumerate()
            .map(|(index, (param, grad))| {
                let m = self.exp_avg[index]
                    .clone()
                    .mul_scalar(beta1)
                    .add(grad.clone().mul_scalar(1.0 - beta1));
                let v = self.exp_avg_sq[index]
                    .clone()
                    .mul_scalar(beta2)
                    .add(grad.square().mul_scalar(1.0 - beta2));
                let denominator = v
                    .clone()
                    .div_scalar(bias2)
                    .sqrt()
                    .add_scalar(config.adam_epsilon);
                let update = m.clone().div_scalar(bias1).div(denominator);
                self.exp_avg[index] = m;
                self.exp_avg_sq[index] = v;
                param
                    .mul_scalar(decay)
                    .sub(update.mul_scalar(learning_rate))
            })
            .collect()
    }
}

/// The global L2 norm of all gradients, and the gradients scaled down to `max_norm` when it is
/// exceeded (`max_norm` 0 = no clipping), as `torch.nn.utils.clip_grad_norm_` does.
pub fn clip_grad_norm(grads: Vec<Tensor<2>>, max_norm: f64) -> (f64, Vec<Tensor<2>>) {
    let squares: Vec<Tensor<1>> = grads.iter().map(|g| g.clone().square().sum()).collect();
    let total = f32_values(Tensor::cat(squares, 0).sum())[0] as f64;
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        (
            norm,
            grads.into_iter().map(|g| g.mul_scalar(factor)).collect(),
        )
    } else {
        (norm, grads)
    }
}

#[cfg(test)]
mod tests {
    use llama::burn::tensor::{Device, TensorData};

    use super::*;

    fn tensor(values: &[f32], device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(values.to_vec(), [1, values.len()]), device)
    }

    /// Against PyTorch's `torch.optim.AdamW` update written out by hand for two steps.
    #[test]
    fn adamw_matches_the_reference_update() {
        let device = Device::flex();
        let config = TrainConfig {
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            weight_decay: 0.1,
            ..Default::default()
        };
        let p0 = [1.0f64, -2.0, 0.5];
        let grads = [[0.1f64, -0.3, 0.0], [0.2, 0.1, -0.5]];
        let lr = 0.01;
        let mut adam = AdamW::new(&[tensor(&[0.0; 3], &device)]);
        let mut params = vec![tensor(&p0.map(|v| v as f32), &device)];
        let (mut p, mut m, mut v) = (p0, [0.0f64; 3], [0.0f64; 3]);
        for (t, g) in grads.iter().enumerate() {
            let g_tensor = tensor(&g.map(|v| v as f32), &device);
            params = adam.step(params, vec![g_tensor], lr, &config);
            let t = (t + 1) as i32;
            for i in 0..3 {
                p[i] *= 1.0 - lr * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                let m_hat = m[i] / (1.0 - 0.9f64.powi(t));
                let v_hat = v[i] / (1.0 - 0.999f64.powi(t));
                p[i] -= lr * m_hat / (v_hat.sqrt() + 1e-8);
            }
        }
        let ours = f32_values(params.remove(0));
        for (a, b) in ours.iter().zip(p) {
            assert!((*a as f64 - b).abs() < 1e-6, "{ours:?} vs {p:?}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_leaves_small_gradients_alone() {
        let device = Device::flex();
        let grads = vec![tensor(&[3.0, 0.0], &device), tensor(&[0.0, 4.0], &device)];
        let (norm, clipped) = clip_grad_norm(grads.clone(), 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        let clipped: Vec<f32> = clipped.into_iter().flat_map(f32_values).collect();
        assert!((clipped[0] - 0.6).abs() < 1e-5 && (clipped[3] - 0.8).abs() < 1e-5);
        let (_, untouched) = clip_grad_norm(grads, 10.0);
        assert_eq!(f32_values(untouched[0].clone()), vec![3.0, 0.0]);
    }
}
