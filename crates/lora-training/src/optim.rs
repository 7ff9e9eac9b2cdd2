//! AdamW (PyTorch's decoupled form) over the adapter factors, with global-norm clipping.
//!
//! Written here rather than taken from burn's optimiser so that its whole state (two moments
//! and a step count) is plain tensors we checkpoint bit-exactly and reload on any device.
//!
//! Gradients, moments and parameters are handled as one flat f32 vector ([`FlatLayout`]): at
//! the 8B shape with all seven projections there are 448 factor tensors, and a dozen
//! element-wise kernels for each (tens of milliseconds of launches per step on a GPU, most of
//! what an optimiser step cost) become a dozen kernels in all. The arithmetic per element is
//! unchanged.

use llama::burn::tensor::{Device, Tensor};

use crate::adapter::f32_values;
use crate::config::TrainConfig;

/// Where each of a list of matrices sits in one flat vector (row-major, in list order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatLayout {
    shapes: Vec<[usize; 2]>,
}

impl FlatLayout {
    /// The layout of `tensors`, in their order.
    pub fn of(tensors: &[Tensor<2>]) -> Self {
        Self {
            shapes: tensors.iter().map(Tensor::dims).collect(),
        }
    }

    /// Elements in all the matrices together.
    pub fn len(&self) -> usize {
        self.shapes.iter().map(|[rows, cols]| rows * cols).sum()
    }

    /// Whether the layout holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The matrices one after another in one vector (a copy; one kernel on a GPU).
    pub fn flatten(&self, tensors: Vec<Tensor<2>>, device: &Device) -> Tensor<1> {
        assert_eq!(
            tensors.len(),
            self.shapes.len(),
            "one tensor per layout entry"
        );
        if tensors.is_empty() {
            return Tensor::zeros([0], device);
        }
        let rows: Vec<Tensor<1>> = tensors
            .into_iter()
            .zip(&self.shapes)
            .map(|(tensor, &shape)| {
                assert_eq!(tensor.dims(), shape, "tensor shaped as its layout entry");
                tensor.reshape([shape[0] * shape[1]])
            })
            .collect();
        Tensor::cat(rows, 0)
    }

    /// The matrices back out of `flat` (views into it where the backend has views).
    pub fn split(&self, flat: Tensor<1>) -> Vec<Tensor<2>> {
        assert_eq!(flat.dims(), [self.len()], "vector as long as the layout");
        let mut offset = 0;
        self.shapes
            .iter()
            .map(|&[rows, cols]| {
                let part = flat
                    .clone()
                    .slice(offset..offset + rows * cols)
                    .reshape([rows, cols]);
                offset += rows * cols;
                part
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct AdamW {
    /// Optimiser steps taken (bias correction uses it).
    pub steps: u64,
    layout: FlatLayout,
    /// First moments, flat in [`Self::layout`] order.
    exp_avg: Tensor<1>,
    /// Second moments.
    exp_avg_sq: Tensor<1>,
}

impl AdamW {
    /// Zero state for parameters shaped like `params`, on `device`.
    pub fn new(params: &[Tensor<2>], device: &Device) -> Self {
        let layout = FlatLayout::of(params);
        let zeros = Tensor::zeros([layout.len()], device);
        Self {
            steps: 0,
            layout,
            exp_avg: zeros.clone(),
            exp_avg_sq: zeros,
        }
    }

    /// How parameters, gradients and moments are laid out flat.
    pub fn layout(&self) -> &FlatLayout {
        &self.layout
    }

    /// The first and second moments, one matrix per parameter (for checkpoints).
    pub fn moments(&self) -> (Vec<Tensor<2>>, Vec<Tensor<2>>) {
        (
            self.layout.split(self.exp_avg.clone()),
            self.layout.split(self.exp_avg_sq.clone()),
        )
    }

    /// Replaces the moments (one matrix per parameter, as [`Self::moments`] gives them).
    pub fn set_moments(&mut self, exp_avg: Vec<Tensor<2>>, exp_avg_sq: Vec<Tensor<2>>) {
        let device = self.exp_avg.device();
        self.exp_avg = self.layout.flatten(exp_avg, &device);
        self.exp_avg_sq = self.layout.flatten(exp_avg_sq, &device);
    }

    /// One step over flat parameters and gradients: returns the updated parameters (plain
    /// tensors, no autodiff).
    ///
    /// `p ← p·(1 − lr·wd) − lr · m̂ / (√v̂ + ε)`, with `m̂ = m/(1−β₁ᵗ)`, `v̂ = v/(1−β₂ᵗ)`.
    pub fn step(
        &mut self,
        params: Tensor<1>,
        grads: Tensor<1>,
        learning_rate: f64,
        config: &TrainConfig,
    ) -> Tensor<1> {
        assert_eq!(params.dims(), grads.dims(), "one gradient per parameter");
        self.steps += 1;
        let (beta1, beta2) = (config.adam_beta1, config.adam_beta2);
        let bias1 = 1.0 - beta1.powi(self.steps as i32);
        let bias2 = 1.0 - beta2.powi(self.steps as i32);
        let decay = 1.0 - learning_rate * config.weight_decay;
        let m = self
            .exp_avg
            .clone()
            .mul_scalar(beta1)
            .add(grads.clone().mul_scalar(1.0 - beta1));
        let v = self
            .exp_avg_sq
            .clone()
            .mul_scalar(beta2)
            .add(grads.square().mul_scalar(1.0 - beta2));
        let denominator = v
            .clone()
            .div_scalar(bias2)
            .sqrt()
            .add_scalar(config.adam_epsilon);
        let update = m.clone().div_scalar(bias1).div(denominator);
        self.exp_avg = m;
        self.exp_avg_sq = v;
        params
            .mul_scalar(decay)
            .sub(update.mul_scalar(learning_rate))
    }
}

/// The global L2 norm of the (flat) gradients, and the gradients scaled down to `max_norm`
/// when it is exceeded (`max_norm` 0 = no clipping), as `torch.nn.utils.clip_grad_norm_` does.
pub fn clip_grad_norm(grads: Tensor<1>, max_norm: f64) -> (f64, Tensor<1>) {
    let total = f32_values(grads.clone().square().sum())[0] as f64;
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        (norm, grads.mul_scalar(factor))
    } else {
        (norm, grads)
    }
}

#[cfg(test)]
mod tests {
    use llama::burn::tensor::TensorData;

    use super::*;

    fn tensor(values: &[f32], device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(values.to_vec(), [1, values.len()]), device)
    }

    fn flat(values: &[f32], device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
    }

    /// Matrices of several shapes go into one vector in order and come back unchanged; the
    /// moments of a checkpoint round-trip through the same layout.
    #[test]
    fn flat_layout_round_trips_matrices_of_several_shapes() {
        let device = Device::flex();
        let a = Tensor::<2>::from_data([[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &device);
        let b = Tensor::<2>::from_data([[7.0f32], [8.0]], &device);
        let layout = FlatLayout::of(&[a.clone(), b.clone()]);
        assert_eq!(layout.len(), 8);
        let flat = layout.flatten(vec![a.clone(), b.clone()], &device);
        assert_eq!(
            f32_values(flat.clone()),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
        );
        let back = layout.split(flat);
        assert_eq!(back[0].to_data(), a.to_data());
        assert_eq!(back[1].to_data(), b.to_data());

        let mut adam = AdamW::new(&[a.clone(), b.clone()], &device);
        adam.set_moments(vec![a.clone(), b.clone()], vec![a.zeros_like(), b.clone()]);
        let (m, v) = adam.moments();
        assert_eq!(m[0].to_data(), a.to_data());
        assert_eq!(m[1].to_data(), b.to_data());
        assert_eq!(f32_values(v[0].clone()), vec![0.0; 6]);
        assert_eq!(v[1].to_data(), b.to_data());
        assert!(FlatLayout::of(&[]).is_empty());
        assert_eq!(FlatLayout::of(&[]).flatten(Vec::new(), &device).dims(), [0]);
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
        let mut adam = AdamW::new(&[tensor(&[0.0; 3], &device)], &device);
        let mut params = flat(&p0.map(|v| v as f32), &device);
        let (mut p, mut m, mut v) = (p0, [0.0f64; 3], [0.0f64; 3]);
        for (t, g) in grads.iter().enumerate() {
            let g_tensor = flat(&g.map(|v| v as f32), &device);
            params = adam.step(params, g_tensor, lr, &config);
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
        let ours = f32_values(params);
        for (a, b) in ours.iter().zip(p) {
            assert!((*a as f64 - b).abs() < 1e-6, "{ours:?} vs {p:?}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_leaves_small_gradients_alone() {
        let device = Device::flex();
        let grads = flat(&[3.0, 0.0, 0.0, 4.0], &device);
        let (norm, clipped) = clip_grad_norm(grads.clone(), 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        let clipped = f32_values(clipped);
        assert!((clipped[0] - 0.6).abs() < 1e-5 && (clipped[3] - 0.8).abs() < 1e-5);
        let (_, untouched) = clip_grad_norm(grads, 10.0);
        assert_eq!(f32_values(untouched), vec![3.0, 0.0, 0.0, 4.0]);
    }
}
