//! A micro-batch's forward and backward, run eagerly or captured once as a CUDA graph and
//! replayed (`TrainConfig::cuda_graph`, LibTorch GPUs).
//!
//! At the Llama-3.1-8B shape one micro-batch launches about 5,000 kernels, and the profile in
//! docs/benchmarks.md found the GPU idle ~20 ms of a ~177 ms step waiting for the host to launch
//! them. A replayed graph launches them all at once. A graph replays the addresses it captured,
//! so what it reads must stay put: the micro-batch's tokens, labels, target mask and loss scale
//! live in fixed buffers written in place before each replay, the rotary frequencies in one made
//! once, and the adapter factors are views of one flat vector that the optimiser's result is
//! written into ([`StepGraph::install`]).
//! The gradients and the loss come back in the graph's own output buffers.
//!
//! The first micro-batch on a GPU sets the buffers up and runs eagerly on the capture stream
//! (loading the kernels and making cuBLAS's workspace there); the next one of the same shape is
//! captured and replayed, and every later one replays. Only that one shape is captured: a
//! micro-batch of another shape runs eagerly (rows padded to a fixed width, as in the
//! benchmark, keep one shape); so do padding-free (packed) rows, whose width is the batch's
//! token count. Adapter dropout keeps the eager path (its masks are drawn from
//! a seed set per step). A capture that fails is reported once and training goes on eagerly.

use llama::Llama;
#[cfg(feature = "tch")]
use llama::burn::tensor::Int;
use llama::burn::tensor::{DType, Device, Tensor, TensorData};

use crate::optim::FlatLayout;
use crate::trainer::{Batch, BatchTensors, set_trainable, trainable};

/// Runs micro-batches, eagerly or through a captured CUDA graph; see the module docs.
#[derive(Debug, Default)]
pub struct StepGraph {
    #[cfg(feature = "tch")]
    enabled: bool,
    #[cfg(feature = "tch")]
    fixed: Option<FixedBuffers>,
    #[cfg(feature = "tch")]
    captured: Option<Captured>,
    /// Why the graph was given up on, if it was.
    failure: Option<String>,
}

/// What a graph reads, at fixed addresses.
#[cfg(feature = "tch")]
#[derive(Debug)]
struct FixedBuffers {
    shape: [usize; 2],
    inputs: Tensor<2, Int>,
    labels: Tensor<2, Int>,
    target_mask: Tensor<2>,
    /// `[1]`: the loss scale (1 / the step's target tokens), which changes from step to step.
    scale: Tensor<1>,
    /// The adapter factors, flat in the optimiser's layout; the model's factors are views.
    factors: Tensor<1>,
    /// The rotary frequencies (the caller's copy is made anew each step).
    inv_freq: Tensor<1>,
}

#[cfg(feature = "tch")]
#[derive(Debug)]
struct Captured {
    graph: llama::cuda_graph::CudaGraph,
    loss: Tensor<1>,
    grads: Tensor<1>,
}

impl StepGraph {
    /// Eager micro-batches only.
    pub fn eager() -> Self {
        Self::default()
    }

    /// Captures micro-batches as a CUDA graph where the model is on a LibTorch GPU and
    /// `enabled` (eager everywhere else).
    pub fn new(enabled: bool) -> Self {
        #[cfg(feature = "tch")]
        return Self {
            enabled,
            ..Self::default()
        };
        #[cfg(not(feature = "tch"))]
        {
            let _ = enabled; // no graphs without LibTorch
            Self::default()
        }
    }

    /// Whether micro-batches are replayed from a captured graph now.
    pub fn is_captured(&self) -> bool {
        #[cfg(feature = "tch")]
        let captured = self.captured.is_some();
        #[cfg(not(feature = "tch"))]
        let captured = false;
        captured
    }

    /// Why capturing was given up on, if it was.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// The scaled loss (`[1]`, loss sum × `scale`) of `batch` and the gradients of the adapter
    /// factors, flat in `layout`.
    pub fn run(
        &mut self,
        model: &mut Llama,
        layout: &FlatLayout,
        batch: &Batch,
        scale: f64,
        inv_freq: &Tensor<1>,
    ) -> (Tensor<1>, Tensor<1>) {
        #[cfg(feature = "tch")]
        if let Some(gpu) = self.gpu(model, batch) {
            match self.run_on_gpu(gpu, model, layout, batch, scale) {
                Ok(result) => return result,
                Err(error) => {
                    tracing::warn!("training without a CUDA graph: {error}");
                    self.failure = Some(error.to_string());
                    self.captured = None;
                }
            }
        }
        let device = model.device();
        let scale = scale_tensor(scale, &device);
        micro_batch_gradients(model, layout, batch.tensors(), scale, inv_freq)
    }

    /// Puts the optimiser's updated factors (flat in `layout`) into `model`: written into the
    /// fixed vector a graph reads once one exists, else installed as new leaves.
    pub fn install(&mut self, model: &mut Llama, layout: &FlatLayout, updated: Tensor<1>) {
        #[cfg(feature = "tch")]
        if let Some(fixed) = self.fixed.as_mut() {
            fixed.factors = llama::overwrite::overwrite(fixed.factors.clone(), updated);
            return;
        }
        set_trainable(model, layout.split(updated));
    }

    /// The GPU index when this micro-batch may go through the graph.
    #[cfg(feature = "tch")]
    fn gpu(&self, model: &Llama, batch: &Batch) -> Option<usize> {
        if !self.enabled
            || self.failure.is_some()
            || batch.is_packed()
            || model.layers.iter().any(|layer| layer.has_lora_dropout())
        {
            return None;
        }
        if self
            .fixed
            .as_ref()
            .is_some_and(|fixed| fixed.shape != batch.shape())
        {
            return None;
        }
        llama::cuda_graph::cuda_index(&model.device().inner())
    }

    #[cfg(feature = "tch")]
    fn run_on_gpu(
        &mut self,
        gpu: usize,
        model: &mut Llama,
        layout: &FlatLayout,
        batch: &Batch,
        scale: f64,
    ) -> llama::Result<(Tensor<1>, Tensor<1>)> {
        use llama::cuda_graph::{CudaGraph, SideStream};
        use llama::overwrite::{overwrite, overwrite_int};

        let device = model.device();
        // An eager run on the capture stream comes first (when the buffers are made).
        let warmed = self.fixed.is_some();
        let fixed = match self.fixed.take() {
            Some(fixed) => fixed,
            None => FixedBuffers::new(model, layout, batch, &device),
        };
        let tensors = batch.tensors();
        let fixed = FixedBuffers {
            inputs: overwrite_int(fixed.inputs, tensors.inputs),
            labels: overwrite_int(fixed.labels, tensors.labels),
            target_mask: overwrite(fixed.target_mask, tensors.target_mask),
            scale: overwrite(fixed.scale, scale_tensor(scale, &device)),
            ..fixed
        };
        let _stream = SideStream::enter(gpu)?;
        let result = match &self.captured {
            Some(captured) => {
                captured.graph.replay()?;
                (captured.loss.clone(), captured.grads.clone())
            }
            None if warmed => {
                // The eager steps' cached blocks go back to the driver, and the graph's pool
                // takes plain segments (PyTorch 2.11 serves no private pool from expandable
                // ones).
                llama::cuda_memory::empty_cache()?;
                llama::cuda_memory::set_expandable_segments(&device, false)?;
                let (graph, (loss, grads)) = CudaGraph::capture(|| fixed.gradients(model, layout))?;
                graph.replay()?;
                let captured = Captured { graph, loss, grads };
                let result = (captured.loss.clone(), captured.grads.clone());
                self.captured = Some(captured);
                result
            }
            None => fixed.gradients(model, layout),
        };
        self.fixed = Some(fixed);
        Ok(result)
    }
}

#[cfg(feature = "tch")]
impl FixedBuffers {
    /// Buffers shaped as `batch`, and the model's factors moved into one flat vector.
    fn new(model: &mut Llama, layout: &FlatLayout, batch: &Batch, device: &Device) -> Self {
        let shape = batch.shape();
        let plain = layout.flatten(
            trainable(model).into_iter().map(Tensor::inner).collect(),
            &device.clone().inner(),
        );
        // A copy the optimiser's results are written into; the model's factors become views.
        let factors = plain.clone().add_scalar(0.0);
        set_trainable(model, layout.split(factors.clone()));
        Self {
            shape,
            inputs: Tensor::zeros(shape, device),
            labels: Tensor::zeros(shape, device),
            target_mask: Tensor::zeros(shape, (device, DType::F32)),
            scale: Tensor::zeros([1], (device, DType::F32)),
            factors,
            inv_freq: model.rope.inv_freq_tensor(device),
        }
    }

    /// [`micro_batch_gradients`] over these buffers.
    fn gradients(&self, model: &Llama, layout: &FlatLayout) -> (Tensor<1>, Tensor<1>) {
        let tensors = BatchTensors {
            inputs: self.inputs.clone(),
            labels: self.labels.clone(),
            target_mask: self.target_mask.clone(),
            packed: None,
        };
        micro_batch_gradients(model, layout, tensors, self.scale.clone(), &self.inv_freq)
    }
}

/// `[scale]` in f32 on `device`.
fn scale_tensor(scale: f64, device: &Device) -> Tensor<1> {
    Tensor::from_data(
        TensorData::new(vec![scale as f32], [1]),
        (device, DType::F32),
    )
}

/// The scaled loss of one micro-batch and its factor gradients, flat in `layout`: the same
/// operations whether run eagerly or captured.
fn micro_batch_gradients(
    model: &Llama,
    layout: &FlatLayout,
    batch: BatchTensors,
    scale: Tensor<1>,
    inv_freq: &Tensor<1>,
) -> (Tensor<1>, Tensor<1>) {
    let loss = crate::trainer::target_nll_sum(model, batch, inv_freq) * scale;
    let gradients = loss.backward();
    let grads: Vec<Tensor<2>> = trainable(model)
        .iter()
        .map(|param| {
            param
                .grad(&gradients)
                .unwrap_or_else(|| param.clone().inner().zeros_like())
        })
        .collect();
    let device = model.device().inner();
    (loss.inner(), layout.flatten(grads, &device))
}
