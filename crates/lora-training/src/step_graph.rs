//! A micro-batch's forward and backward, run eagerly or captured as a CUDA graph and replayed
//! (`TrainConfig::cuda_graph`, LibTorch GPUs).
//!
//! At the Llama-3.1-8B shape one micro-batch launches about 5,000 kernels, and the profile in
//! docs/benchmarks.md found the GPU idle ~20 ms of a ~177 ms step waiting for the host to launch
//! them. A replayed graph launches them all at once. A graph replays the addresses it captured,
//! so what it reads must stay put: the micro-batch's tokens, labels, target mask, loss scale
//! (and, for packed rows, positions and example starts) live in buffers of that shape written
//! in place before each replay, the rotary frequencies in one made once, and the adapter factors
//! are views of one flat vector that the optimiser's result is written into
//! ([`StepGraph::install`]). The gradients and the loss come back in the graph's own output
//! buffers.
//!
//! Each micro-batch shape gets its own graph. The very first micro-batch runs eagerly on the
//! capture stream (loading the kernels and making cuBLAS's workspace there) and the next one of its
//! shape is captured and replayed. After that a new packed shape is captured at once (packed rows
//! are padded to a width multiple, so their shapes come back; the kernels are the loaded ones at
//! other sizes), while a new padded shape runs eagerly and is captured only if it comes again
//! (length-grouped padded rows take many widths that may never repeat). Every later micro-batch of
//! a captured shape replays. An eager warm-up per packed shape was measured to cost memory: its
//! activations sat in the ordinary cache beside the graphs' pool. The shape is what a graph bakes
//! in: rows × width, and for packed rows the number of examples and the attention's longest example
//! (packed rows padded to a width multiple give the whole width as that, so they repeat; see
//! `TrainConfig::packed_width_multiple`). Graphs share one memory pool, since they never run at the
//! same time. Up to [`MAX_GRAPHS`] shapes are kept; micro-batches of further shapes and adapter
//! dropout (its masks are drawn from a seed set per step) take the eager path. A capture that fails
//! is reported once and training goes on eagerly.

use llama::Llama;
#[cfg(feature = "tch")]
use llama::burn::tensor::Int;
use llama::burn::tensor::{DType, Device, Tensor, TensorData};

use crate::optim::FlatLayout;
use crate::trainer::{Batch, BatchTensors, set_trainable, trainable};

/// Most micro-batch shapes given a graph; micro-batches of further shapes run eagerly.
pub const MAX_GRAPHS: usize = 16;

/// Most padded shapes remembered as seen once (one key each, a few bytes).
#[cfg(feature = "tch")]
const MAX_SEEN_ONCE: usize = 4096;

/// Runs micro-batches, eagerly or through captured CUDA graphs; see the module docs.
#[derive(Debug, Default)]
pub struct StepGraph {
    #[cfg(feature = "tch")]
    enabled: bool,
    /// What every graph reads, made at the first GPU micro-batch.
    #[cfg(feature = "tch")]
    shared: Option<SharedBuffers>,
    #[cfg(feature = "tch")]
    shapes: Vec<ShapeGraph>,
    /// Padded shapes run once, eagerly: captured if they come again.
    #[cfg(feature = "tch")]
    seen_once: Vec<ShapeKey>,
    /// Why the graphs were given up on, if they were.
    failure: Option<String>,
}

/// What a graph bakes in about its micro-batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "tch"), allow(dead_code))] // graphs need LibTorch; the tests use it
struct ShapeKey {
    shape: [usize; 2],
    /// Packed rows: the number of segment starts and the attention's longest segment.
    segments: Option<(usize, usize)>,
}

/// What [`StepGraph`] does with a micro-batch, from what it knows of the micro-batch's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "tch"), allow(dead_code))]
enum Plan {
    /// The very first micro-batch: eager on the capture stream, through its shape's buffers.
    WarmUp,
    /// Captured now and replayed.
    Capture,
    Replay,
    /// Eager; `remember`: a padded shape seen for the first time (captured if it comes again).
    Eager {
        remember: bool,
    },
}

/// The module docs' rules. `entry`: whether the shape has buffers (`Some`) and a captured graph
/// (`Some(true)`); `shapes`: how many shapes have buffers; `seen_once`: a padded shape that ran
/// eagerly before.
#[cfg_attr(not(feature = "tch"), allow(dead_code))]
fn plan(entry: Option<bool>, shapes: usize, key: &ShapeKey, seen_once: bool) -> Plan {
    match entry {
        Some(true) => Plan::Replay,
        Some(false) => Plan::Capture,
        None if shapes == 0 => Plan::WarmUp,
        None if shapes >= MAX_GRAPHS => Plan::Eager { remember: false },
        None if key.segments.is_some() || seen_once => Plan::Capture,
        None => Plan::Eager { remember: true },
    }
}

#[cfg_attr(not(feature = "tch"), allow(dead_code))]
impl ShapeKey {
    fn of(tensors: &BatchTensors) -> Self {
        Self {
            shape: tensors.inputs.dims(),
            segments: tensors.packed.as_ref().map(|packed| {
                let segments = &packed.segments;
                (segments.starts.dims()[0], segments.max_len)
            }),
        }
    }
}

/// Buffers every graph reads, at fixed addresses.
#[cfg(feature = "tch")]
#[derive(Debug)]
struct SharedBuffers {
    /// The adapter factors, flat in the optimiser's layout; the model's factors are views.
    factors: Tensor<1>,
    /// The rotary frequencies (the caller's copy is made anew each step).
    inv_freq: Tensor<1>,
}

/// One micro-batch shape: its input buffers and, once captured, its graph.
#[cfg(feature = "tch")]
#[derive(Debug)]
struct ShapeGraph {
    key: ShapeKey,
    /// The micro-batch's tensors, at fixed addresses, overwritten before each run.
    tensors: BatchTensors,
    /// `[1]`: the loss scale (1 / the step's target tokens), which changes from step to step.
    scale: Tensor<1>,
    captured: Option<Captured>,
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

    /// Captures micro-batches as CUDA graphs where the model is on a LibTorch GPU and
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

    /// How many micro-batch shapes are replayed from a captured graph now.
    pub fn captured_shapes(&self) -> usize {
        #[cfg(feature = "tch")]
        let captured = self.shapes.iter().filter(|s| s.captured.is_some()).count();
        #[cfg(not(feature = "tch"))]
        let captured = 0;
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
        if let Some(gpu) = self.gpu(model) {
            match self.run_on_gpu(gpu, model, layout, batch, scale) {
                Ok(Some(result)) => return result,
                Ok(None) => {} // this shape runs eagerly
                Err(error) => {
                    tracing::warn!("training without a CUDA graph: {error}");
                    self.failure = Some(error.to_string());
                    self.shapes.clear();
                }
            }
        }
        let device = model.device();
        let scale = scale_tensor(scale, &device);
        micro_batch_gradients(model, layout, batch.tensors(), scale, inv_freq)
    }

    /// Puts the optimiser's updated factors (flat in `layout`) into `model`: written into the
    /// fixed vector the graphs read once it exists, else installed as new leaves.
    pub fn install(&mut self, model: &mut Llama, layout: &FlatLayout, updated: Tensor<1>) {
        #[cfg(feature = "tch")]
        if let Some(shared) = self.shared.as_mut() {
            shared.factors = llama::overwrite::overwrite(shared.factors.clone(), updated);
            return;
        }
        set_trainable(model, layout.split(updated));
    }

    /// The GPU index when micro-batches may go through graphs.
    #[cfg(feature = "tch")]
    fn gpu(&self, model: &Llama) -> Option<usize> {
        if !self.enabled
            || self.failure.is_some()
            || model.layers.iter().any(|layer| layer.has_lora_dropout())
        {
            return None;
        }
        llama::cuda_graph::cuda_index(&model.device().inner())
    }

    /// [`StepGraph::run`] through this shape's graph; `None` where the shape runs eagerly.
    #[cfg(feature = "tch")]
    fn run_on_gpu(
        &mut self,
        gpu: usize,
        model: &mut Llama,
        layout: &FlatLayout,
        batch: &Batch,
        scale: f64,
    ) -> llama::Result<Option<(Tensor<1>, Tensor<1>)>> {
        use llama::cuda_graph::{CudaGraph, SideStream};

        let device = model.device();
        if self.shared.is_none() {
            self.shared = Some(SharedBuffers::new(model, layout, &device));
        }
        let tensors = batch.tensors();
        let key = ShapeKey::of(&tensors);
        let index = self.shapes.iter().position(|s| s.key == key);
        let plan = plan(
            index.map(|i| self.shapes[i].captured.is_some()),
            self.shapes.len(),
            &key,
            self.seen_once.contains(&key),
        );
        if let Plan::Eager { remember } = plan {
            if remember && self.seen_once.len() < MAX_SEEN_ONCE {
                self.seen_once.push(key);
            }
            return Ok(None);
        }
        // Taken out while it runs, so that another shape's graph can lend it its pool.
        let mut entry = match index {
            Some(index) => self.shapes.swap_remove(index),
            None => ShapeGraph::new(key, &tensors, &device),
        };
        entry.write(tensors, scale_tensor(scale, &device));
        let shared = self.shared.as_ref().expect("made above");
        let _stream = SideStream::enter(gpu)?;
        let outcome = match &entry.captured {
            Some(captured) => captured
                .graph
                .replay()
                .map(|()| (captured.loss.clone(), captured.grads.clone())),
            None if plan == Plan::WarmUp => Ok(entry.gradients(model, layout, shared)),
            None => {
                // The eager runs' cached blocks go back to the driver, and the graphs' pool
                // takes plain segments (PyTorch 2.11 serves no private pool from expandable
                // ones).
                let pool = self.shapes.iter().find_map(|s| s.captured.as_ref());
                llama::cuda_memory::empty_cache()
                    .and_then(|()| llama::cuda_memory::set_expandable_segments(&device, false))
                    .and_then(|()| {
                        CudaGraph::capture_in_pool(pool.map(|c| &c.graph), || {
                            entry.gradients(model, layout, shared)
                        })
                    })
                    .and_then(|(graph, (loss, grads))| {
                        graph.replay()?;
                        let result = (loss.clone(), grads.clone());
                        entry.captured = Some(Captured { graph, loss, grads });
                        Ok(result)
                    })
            }
        };
        self.shapes.push(entry);
        outcome.map(Some)
    }
}

#[cfg(feature = "tch")]
impl SharedBuffers {
    /// Moves the model's factors into one flat vector (the model's factors become views).
    fn new(model: &mut Llama, layout: &FlatLayout, device: &Device) -> Self {
        let plain = layout.flatten(
            trainable(model).into_iter().map(Tensor::inner).collect(),
            &device.clone().inner(),
        );
        // A copy the optimiser's results are written into.
        let factors = plain.clone().add_scalar(0.0);
        set_trainable(model, layout.split(factors.clone()));
        Self {
            factors,
            inv_freq: model.rope.inv_freq_tensor(device),
        }
    }
}

#[cfg(feature = "tch")]
impl ShapeGraph {
    /// Buffers shaped as `tensors` (zeros until [`ShapeGraph::write`]).
    fn new(key: ShapeKey, tensors: &BatchTensors, device: &Device) -> Self {
        let zeros_int = |t: &Tensor<2, Int>| Tensor::<2, Int>::zeros(t.dims(), device);
        let packed = tensors.packed.as_ref().map(|packed| {
            let mut fixed = packed.clone();
            fixed.positions = zeros_int(&packed.positions);
            fixed.segments.starts = Tensor::zeros(packed.segments.starts.dims(), device);
            fixed
        });
        Self {
            key,
            tensors: BatchTensors {
                inputs: zeros_int(&tensors.inputs),
                labels: zeros_int(&tensors.labels),
                target_mask: Tensor::zeros(tensors.target_mask.dims(), (device, DType::F32)),
                packed,
            },
            scale: Tensor::zeros([1], (device, DType::F32)),
            captured: None,
        }
    }

    /// Writes a micro-batch of this shape and its loss scale into the buffers, in place.
    fn write(&mut self, tensors: BatchTensors, scale: Tensor<1>) {
        use llama::overwrite::{overwrite, overwrite_int};
        let fixed = &mut self.tensors;
        fixed.inputs = overwrite_int(fixed.inputs.clone(), tensors.inputs);
        fixed.labels = overwrite_int(fixed.labels.clone(), tensors.labels);
        fixed.target_mask = overwrite(fixed.target_mask.clone(), tensors.target_mask);
        if let (Some(fixed), Some(values)) = (fixed.packed.as_mut(), tensors.packed) {
            fixed.positions = overwrite_int(fixed.positions.clone(), values.positions);
            let starts = fixed.segments.starts.clone();
            fixed.segments.starts = overwrite_int(starts, values.segments.starts);
        }
        self.scale = overwrite(self.scale.clone(), scale);
    }

    /// [`micro_batch_gradients`] over these buffers.
    fn gradients(
        &self,
        model: &Llama,
        layout: &FlatLayout,
        shared: &SharedBuffers,
    ) -> (Tensor<1>, Tensor<1>) {
        let tensors = self.tensors.clone();
        micro_batch_gradients(model, layout, tensors, self.scale.clone(), &shared.inv_freq)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(lengths: &[usize]) -> Vec<(Vec<u32>, Vec<bool>)> {
        lengths
            .iter()
            .map(|&n| ((0..n as u32).collect(), vec![true; n]))
            .collect()
    }

    fn key(batch: &Batch) -> ShapeKey {
        ShapeKey::of(&batch.tensors())
    }

    /// Packed micro-batches of different lengths but one width bucket and example count share a
    /// key (so they replay one graph); another bucket, example count or padded width does not.
    #[test]
    fn shape_keys_repeat_within_a_width_bucket() {
        let device = Device::flex();
        let packed =
            |lengths: &[usize]| key(&Batch::packed_from_rows(&rows(lengths), 128, &device));
        let a = packed(&[40, 50, 20]);
        assert_eq!(a.shape, [1, 128]);
        // 3 examples and the padding segment: 5 starts; the whole width as the longest.
        assert_eq!(a.segments, Some((5, 128)));
        assert_eq!(a, packed(&[60, 30, 31]));
        assert_ne!(a, packed(&[60, 60, 31]), "the next bucket");
        assert_ne!(a, packed(&[40, 50]), "one example fewer");
        // Exact packed rows carry their own longest example: no repeat to count on.
        let exact = key(&Batch::packed_from_rows(&rows(&[40, 50, 20]), 1, &device));
        assert_eq!(exact.segments, Some((4, 49)));
        let padded = |lengths: &[usize]| key(&Batch::from_rows(&rows(lengths), 0, &device));
        assert_eq!(padded(&[40, 50]).segments, None);
        assert_eq!(padded(&[40, 50]), padded(&[50, 12]));
        assert_ne!(padded(&[40, 50]), padded(&[40, 51]));
    }

    /// The first micro-batch warms up; then packed shapes are captured at once, padded ones when
    /// they come again; captured shapes replay; past the cap new shapes stay eager.
    #[test]
    fn the_plan_warms_up_once_and_captures_what_repeats() {
        let device = Device::flex();
        let packed = key(&Batch::packed_from_rows(&rows(&[40, 50]), 128, &device));
        let padded = key(&Batch::from_rows(&rows(&[40, 50]), 0, &device));
        for first in [&packed, &padded] {
            assert_eq!(plan(None, 0, first, false), Plan::WarmUp);
        }
        assert_eq!(plan(Some(false), 1, &padded, false), Plan::Capture);
        assert_eq!(plan(Some(true), 1, &padded, false), Plan::Replay);
        assert_eq!(plan(None, 1, &packed, false), Plan::Capture);
        assert_eq!(
            plan(None, 1, &padded, false),
            Plan::Eager { remember: true }
        );
        assert_eq!(plan(None, 1, &padded, true), Plan::Capture);
        let full = MAX_GRAPHS;
        assert_eq!(
            plan(None, full, &packed, false),
            Plan::Eager { remember: false }
        );
        assert_eq!(
            plan(None, full, &padded, true),
            Plan::Eager { remember: false }
        );
        assert_eq!(plan(Some(true), full, &packed, false), Plan::Replay);
    }
}
