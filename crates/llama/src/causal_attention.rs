//! Causal self-attention as one differentiable operation, for training.
//!
//! burn's autodiff records attention as its decomposed ops, so the backward keeps the
//! `[B, H, T, T]` scores and probabilities of every layer alive until it reaches them (at
//! T = 2048 and 32 heads that is about 0.5 GiB per layer in bf16, and the bulk of our memory
//! gap to HF + PEFT). Here the forward keeps only what a flash-attention backward needs —
//! the inputs, the output and the row log-sum-exp `[B, H, T]` — and the backward recomputes
//! the probabilities block by block (LibTorch on CUDA: PyTorch's flash-attention kernels) or
//! for the whole matrix at once, transiently (every other backend: [`reference_forward`] and
//! [`reference_backward`], written with the backend's own tensor ops).
//!
//! Packed rows (several examples in one row, [`Segments`]) take the same operation with
//! attention kept inside each example ([`segment_attention`]): the variable-length
//! flash-attention kernels on CUDA, the reference with a block-diagonal mask elsewhere.
//!
//! The operation is a burn backend extension: [`CausalAttentionOps`] is implemented for each
//! backend the workspace builds and for `Autodiff<B, _>`, where it registers the custom
//! backward. [`causal_attention`] is the `Tensor` front.

// burn-tch (LibTorch) is deprecated upstream; it is the backend that links LibTorch, and the
// backend_extension macro names it in generated code.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata, backend_extension};
use burn::tensor::{BoolDType, Device, FloatDType, Int, IntDType, Shape, Tensor, TensorData};

/// Causal attention `softmax(Q·Kᵀ·scale + causal) · V` over `[B, H, T, D]` queries, keys and
/// values (as many key/value heads as query heads; the caller repeats grouped heads).
#[backend_extension(Flex: cfg(feature = "flex"), LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait CausalAttentionOps: Backend {
    /// The output and the log-sum-exp of each query row's scaled, masked scores (`[B, H, T]`,
    /// f32, natural log): what the backward needs besides the inputs.
    fn causal_attention_forward(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference_forward::<Self>(query, key, value, None, scale)
    }

    /// Gradients of the query, key and value from the output's gradient.
    #[allow(clippy::too_many_arguments)]
    fn causal_attention_backward(
        grad_output: FloatTensor<Self>,
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        output: FloatTensor<Self>,
        logsumexp: FloatTensor<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        reference_backward::<Self>(
            grad_output,
            query,
            key,
            value,
            output,
            logsumexp,
            None,
            scale,
        )
    }

    /// The attention output (`[B, H, T, D]`).
    fn causal_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        Self::causal_attention_forward(query, key, value, scale).0
    }

    /// [`Self::causal_attention_forward`] over packed rows: causal within each example that
    /// `starts` marks ([`Segments::starts`]), nothing across examples; `max_len` is the
    /// longest example. The log-sum-exp's layout is the backend's own.
    fn segment_attention_forward(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        starts: IntTensor<Self>,
        max_len: usize,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _ = max_len; // the whole score matrix is masked here
        reference_forward::<Self>(query, key, value, Some(starts), scale)
    }

    /// Gradients of [`Self::segment_attention_forward`].
    #[allow(clippy::too_many_arguments)]
    fn segment_attention_backward(
        grad_output: FloatTensor<Self>,
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        output: FloatTensor<Self>,
        logsumexp: FloatTensor<Self>,
        starts: IntTensor<Self>,
        max_len: usize,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let _ = max_len;
        reference_backward::<Self>(
            grad_output,
            query,
            key,
            value,
            output,
            logsumexp,
            Some(starts),
            scale,
        )
    }

    /// The attention output over packed rows (`[B, H, T, D]`).
    fn segment_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        starts: IntTensor<Self>,
        max_len: usize,
        scale: f64,
    ) -> FloatTensor<Self> {
        Self::segment_attention_forward(query, key, value, starts, max_len, scale).0
    }
}

/// Where the examples of packed rows start: a row of width T holds several examples back to
/// back, each attending causally to itself only, and its positions after the last example
/// (padding) form one more segment.
#[derive(Debug, Clone)]
pub struct Segments {
    /// `[S + 1]`: the first position of each of the S segments over the rows flattened
    /// (row · T + position), then B · T.
    pub starts: Tensor<1, Int>,
    /// The longest segment's length.
    pub max_len: usize,
}

impl Segments {
    /// Segments of rows `width` positions wide that hold examples of `row_lengths` (one list
    /// per row, in order, summing to at most `width`).
    ///
    /// # Panics
    /// If a row's examples are longer than `width` or an example is empty.
    pub fn from_row_lengths(row_lengths: &[Vec<usize>], width: usize, device: &Device) -> Self {
        let mut starts = Vec::new();
        let mut max_len = 0;
        for (row, lengths) in row_lengths.iter().enumerate() {
            let mut at = row * width;
            let end = at + width;
            for &length in lengths {
                assert!(length > 0, "row {row}: an empty example");
                starts.push(at as i64);
                at += length;
                max_len = max_len.max(length);
            }
            assert!(
                at <= end,
                "row {row}: examples longer than the width {width}"
            );
            if at < end {
                starts.push(at as i64);
                max_len = max_len.max(end - at);
            }
        }
        starts.push((row_lengths.len() * width) as i64);
        let count = starts.len();
        Self {
            starts: Tensor::from_data(TensorData::new(starts, [count]), device),
            max_len,
        }
    }

    /// The same segments without autodiff (for the operations a checkpointed layer reruns).
    pub fn inner(&self) -> Self {
        Self {
            starts: self.starts.clone().inner(),
            max_len: self.max_len,
        }
    }
}

/// Causal attention with a memory-lean backward (see the module docs). `query`, `key` and
/// `value` are `[B, H, T, D]`.
pub fn causal_attention(
    query: Tensor<4>,
    key: Tensor<4>,
    value: Tensor<4>,
    scale: f64,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CausalAttentionOps>::causal_attention(
        query.into_dispatch(),
        key.into_dispatch(),
        value.into_dispatch(),
        scale,
    ))
}

/// [`causal_attention`] over packed rows: each query attends to the keys of its own example
/// only ([`Segments`]).
pub fn segment_attention(
    query: Tensor<4>,
    key: Tensor<4>,
    value: Tensor<4>,
    segments: &Segments,
    scale: f64,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CausalAttentionOps>::segment_attention(
        query.into_dispatch(),
        key.into_dispatch(),
        value.into_dispatch(),
        segments.starts.clone().into_dispatch(),
        segments.max_len,
        scale,
    ))
}

#[cfg(feature = "flex")]
impl CausalAttentionOps for burn::backend::Flex {}

impl<B: Backend + CausalAttentionOps, C: CheckpointStrategy> CausalAttentionOps for Autodiff<B, C> {
    fn causal_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        tracked_attention::<B, C>(query, key, value, None, scale)
    }

    fn segment_attention(
        query: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        starts: IntTensor<Self>,
        max_len: usize,
        scale: f64,
    ) -> FloatTensor<Self> {
        tracked_attention::<B, C>(query, key, value, Some((starts, max_len)), scale)
    }
}

/// The attention of plain (`segments` = `None`) or packed rows under autodiff: one node whose
/// backward is the backend's attention backward.
fn tracked_attention<B: Backend + CausalAttentionOps, C: CheckpointStrategy>(
    query: FloatTensor<Autodiff<B, C>>,
    key: FloatTensor<Autodiff<B, C>>,
    value: FloatTensor<Autodiff<B, C>>,
    segments: Option<(IntTensor<B>, usize)>,
    scale: f64,
) -> FloatTensor<Autodiff<B, C>> {
    #[derive(Debug)]
    struct AttentionBackward;

    /// The inputs, the output, the log-sum-exp, the segments and the scale.
    type Saved<B> = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        Option<(IntTensor<B>, usize)>,
        f64,
    );

    impl<B: Backend + CausalAttentionOps> Backward<B, 3> for AttentionBackward {
        type State = Saved<B>;

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            #[cfg(test)]
            crate::op_tests::count_backward("causal_attention");
            let grad_output = grads.consume::<B>(&ops.node);
            let (query, key, value, output, logsumexp, segments, scale) = ops.state;
            let (grad_query, grad_key, grad_value) = match segments {
                None => B::causal_attention_backward(
                    grad_output,
                    query,
                    key,
                    value,
                    output,
                    logsumexp,
                    scale,
                ),
                Some((starts, max_len)) => B::segment_attention_backward(
                    grad_output,
                    query,
                    key,
                    value,
                    output,
                    logsumexp,
                    starts,
                    max_len,
                    scale,
                ),
            };
            let [query_node, key_node, value_node] = ops.parents;
            for (node, grad) in [
                (query_node, grad_query),
                (key_node, grad_key),
                (value_node, grad_value),
            ] {
                if let Some(node) = node {
                    grads.register::<B>(node.id, grad);
                }
            }
        }
    }

    let forward = |query, key, value, segments: &Option<(IntTensor<B>, usize)>| match segments {
        None => B::causal_attention_forward(query, key, value, scale),
        Some((starts, max_len)) => {
            B::segment_attention_forward(query, key, value, starts.clone(), *max_len, scale)
        }
    };
    let parents = [query.node(), key.node(), value.node()];
    let (query, key, value) = (
        query.into_primitive(),
        key.into_primitive(),
        value.into_primitive(),
    );
    match AttentionBackward
        .prepare::<C>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (output, logsumexp) = forward(query.clone(), key.clone(), value.clone(), &segments);
            prep.finish(
                (
                    query,
                    key,
                    value,
                    output.clone(),
                    logsumexp,
                    segments,
                    scale,
                ),
                output,
            )
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(query, key, value, &segments).0),
    }
}

/// `true` above the causal diagonal (key after query), as `[B, H, T, T]`. Made on the device
/// from two index ranges rather than copied from the host, so that a forward on this path
/// (f32 on a GPU) can be captured as a CUDA graph.
fn future_mask<B: Backend>(shape: &Shape, device: &B::Device) -> B::BoolTensorPrimitive {
    let (seq, keys) = (shape[2], shape[3]);
    let range = |length: usize, at: [usize; 4]| {
        let indices = B::int_arange(0..length as i64, device, IntDType::I64);
        B::int_expand(
            B::int_reshape(indices, Shape::new(at)),
            Shape::new([1, 1, seq, keys]),
        )
    };
    let mask = B::int_greater(
        range(keys, [1, 1, 1, keys]),
        range(seq, [1, 1, seq, 1]),
        BoolDType::Native,
    );
    B::bool_expand(mask, shape.clone())
}

/// `[B, H, T, 1]` → `[B, H, T, S]` (a view).
fn along_keys<B: Backend>(rows: FloatTensor<B>, shape: &Shape) -> FloatTensor<B> {
    B::float_expand(rows, shape.clone())
}

/// `true` where query and key lie in different segments (`[B, 1, T, T]`), from the segment
/// starts over the flattened rows ([`Segments::starts`]), on the device.
fn other_segment<B: Backend>(
    starts: IntTensor<B>,
    shape: &Shape,
    device: &B::Device,
) -> B::BoolTensorPrimitive {
    let (rows, seq) = (shape[0], shape[2]);
    let (positions, count) = (rows * seq, starts.shape()[0]);
    let grid = Shape::new([positions, count]);
    let flat = B::int_arange(0..positions as i64, device, IntDType::I64);
    let flat = B::int_expand(
        B::int_reshape(flat, Shape::new([positions, 1])),
        grid.clone(),
    );
    let starts = B::int_cast(starts, IntDType::I64);
    let starts = B::int_expand(B::int_reshape(starts, Shape::new([1, count])), grid);
    // A position's segment is the number of starts at or before it.
    let begun = B::bool_into_int(
        B::int_greater_equal(flat, starts, BoolDType::Native),
        IntDType::I64,
    );
    let segment = B::int_sum_dim(begun, 1);
    let square = Shape::new([rows, 1, seq, seq]);
    let of_query = B::int_expand(
        B::int_reshape(segment.clone(), Shape::new([rows, 1, seq, 1])),
        square.clone(),
    );
    let of_key = B::int_expand(
        B::int_reshape(segment, Shape::new([rows, 1, 1, seq])),
        square,
    );
    B::int_not_equal(of_query, of_key, BoolDType::Native)
}

/// The scaled, causally masked scores in f32 (`[B, H, T, T]`), also masked across segments
/// where `segments` (their starts) are given.
fn masked_scores<B: Backend>(
    query: &FloatTensor<B>,
    key: &FloatTensor<B>,
    segments: Option<IntTensor<B>>,
    scale: f64,
) -> FloatTensor<B> {
    let query = B::float_cast(query.clone(), FloatDType::F32);
    let key = B::float_cast(key.clone(), FloatDType::F32);
    let scores = B::float_mul_scalar(
        B::float_matmul(query, B::float_swap_dims(key, 2, 3)),
        scale.into(),
    );
    let shape = scores.shape();
    let device = scores.device();
    let mut mask = future_mask::<B>(&shape, &device);
    if let Some(starts) = segments {
        let other = B::bool_expand(other_segment::<B>(starts, &shape, &device), shape.clone());
        mask = B::bool_or(mask, other);
    }
    B::float_mask_fill(scores, mask, f64::NEG_INFINITY.into())
}

/// The attention forward with the whole score matrix, in the backend's own ops: the
/// reference the fused kernels are checked against, and the path of backends without one.
/// `segments`: the starts of packed rows' segments ([`Segments::starts`]), `None` for plain
/// rows.
pub fn reference_forward<B: Backend>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    segments: Option<IntTensor<B>>,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let dtype = FloatDType::from(query.dtype());
    let scores = masked_scores::<B>(&query, &key, segments, scale);
    let shape = scores.shape();
    let row_max = B::float_max_dim(scores.clone(), 3);
    let shifted = B::float_exp(B::float_sub(
        scores.clone(),
        along_keys::<B>(row_max.clone(), &shape),
    ));
    let logsumexp = B::float_add(row_max, B::float_log(B::float_sum_dim(shifted, 3)));
    let probabilities = B::float_exp(B::float_sub(
        scores,
        along_keys::<B>(logsumexp.clone(), &shape),
    ));
    let value = B::float_cast(value, FloatDType::F32);
    let output = B::float_cast(B::float_matmul(probabilities, value), dtype);
    let rows = Shape::from([shape[0], shape[1], shape[2]]);
    (output, B::float_reshape(logsumexp, rows))
}

/// The attention backward for [`reference_forward`]: with `P` the probabilities recomputed
/// from the saved log-sum-exp and `δ = rowsum(dO ⊙ O)`,
/// `dV = Pᵀ·dO`, `dS = P ⊙ (dO·Vᵀ − δ)`, `dQ = dS·K·scale`, `dK = dSᵀ·Q·scale`.
#[allow(clippy::too_many_arguments)] // the backward's inputs, as the trait method's
pub fn reference_backward<B: Backend>(
    grad_output: FloatTensor<B>,
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    output: FloatTensor<B>,
    logsumexp: FloatTensor<B>,
    segments: Option<IntTensor<B>>,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let dtypes = [query.dtype(), key.dtype(), value.dtype()].map(FloatDType::from);
    let scores = masked_scores::<B>(&query, &key, segments, scale);
    let shape = scores.shape();
    let rows = Shape::from([shape[0], shape[1], shape[2], 1]);
    let logsumexp = B::float_reshape(B::float_cast(logsumexp, FloatDType::F32), rows);
    let probabilities = B::float_exp(B::float_sub(scores, along_keys::<B>(logsumexp, &shape)));
    let f32 = |tensor: FloatTensor<B>| B::float_cast(tensor, FloatDType::F32);
    let (grad_output, query, key, value, output) = (
        f32(grad_output),
        f32(query),
        f32(key),
        f32(value),
        f32(output),
    );
    let grad_value = B::float_matmul(
        B::float_swap_dims(probabilities.clone(), 2, 3),
        grad_output.clone(),
    );
    let grad_probabilities = B::float_matmul(grad_output.clone(), B::float_swap_dims(value, 2, 3));
    let delta = B::float_sum_dim(B::float_mul(grad_output, output), 3);
    let grad_scores = B::float_mul(
        probabilities,
        B::float_sub(grad_probabilities, along_keys::<B>(delta, &shape)),
    );
    let grad_query = B::float_mul_scalar(B::float_matmul(grad_scores.clone(), key), scale.into());
    let grad_key = B::float_mul_scalar(
        B::float_matmul(B::float_swap_dims(grad_scores, 2, 3), query),
        scale.into(),
    );
    let [query_dtype, key_dtype, value_dtype] = dtypes;
    (
        B::float_cast(grad_query, query_dtype),
        B::float_cast(grad_key, key_dtype),
        B::float_cast(grad_value, value_dtype),
    )
}

#[cfg(feature = "tch")]
mod libtorch {
    //! PyTorch's flash-attention kernels (bf16/f16 on CUDA, head size ≤ 256 and a multiple
    //! of 8), plain or variable-length for packed rows, called through csrc/fused_ops.cpp
    //! because tch does not bind the forwards (they return integers beside tensors).
    //! Everything else takes the reference path.
    #![allow(deprecated)] // burn-tch is deprecated upstream; it is the backend that links LibTorch

    use super::{CausalAttentionOps, reference_backward, reference_forward};
    use crate::torch_shim::{call, owned, raw};
    use burn::backend::LibTorch;
    use burn::backend::libtorch::TchTensor;
    use std::ffi::{c_char, c_int, c_void};

    unsafe extern "C" {
        #[allow(clippy::too_many_arguments)]
        fn tl_flash_attention_forward(
            query: *const c_void,
            key: *const c_void,
            value: *const c_void,
            cu_seqlens: *const c_void,
            max_len: i64,
            scale: f64,
            output: *mut *mut c_void,
            logsumexp: *mut *mut c_void,
            error: *mut *mut c_char,
        ) -> c_int;
        #[allow(clippy::too_many_arguments)]
        fn tl_flash_attention_backward(
            grad_output: *const c_void,
            query: *const c_void,
            key: *const c_void,
            value: *const c_void,
            output: *const c_void,
            logsumexp: *const c_void,
            cu_seqlens: *const c_void,
            max_len: i64,
            scale: f64,
            grad_query: *mut *mut c_void,
            grad_key: *mut *mut c_void,
            grad_value: *mut *mut c_void,
            error: *mut *mut c_char,
        ) -> c_int;
    }

    fn flash_eligible(query: &TchTensor) -> bool {
        let head_dim = query.tensor.size().last().copied().unwrap_or(0);
        query.tensor.device().is_cuda()
            && matches!(query.tensor.kind(), tch::Kind::BFloat16 | tch::Kind::Half)
            && head_dim % 8 == 0
            && head_dim <= 256
    }

    /// The C API's view of the segments: null for plain rows.
    fn segments_raw(segments: &Option<(TchTensor, usize)>) -> (*const c_void, i64) {
        segments
            .as_ref()
            .map_or((std::ptr::null(), 0), |(starts, max_len)| {
                (raw(starts), *max_len as i64)
            })
    }

    /// The forward on the flash kernels where eligible, else the reference; `segments`: the
    /// starts and longest example of packed rows, `None` for plain rows.
    fn forward(
        [query, key, value]: [TchTensor; 3],
        segments: Option<(TchTensor, usize)>,
        scale: f64,
    ) -> (TchTensor, TchTensor) {
        if !flash_eligible(&query) {
            let starts = segments.map(|(starts, _)| starts);
            return reference_forward::<LibTorch>(query, key, value, starts, scale);
        }
        let (starts, max_len) = segments_raw(&segments);
        let (mut output, mut logsumexp) = (std::ptr::null_mut(), std::ptr::null_mut());
        call("flash attention forward", |error| unsafe {
            // SAFETY: valid tensors (or a null `starts`) in, fresh tensors out (or an error
            // message); `segments` outlives the call.
            tl_flash_attention_forward(
                raw(&query),
                raw(&key),
                raw(&value),
                starts,
                max_len,
                scale,
                &mut output,
                &mut logsumexp,
                error,
            )
        });
        (owned(output), owned(logsumexp))
    }

    /// The backward of [`forward`], on the same path.
    fn backward(
        [grad_output, query, key, value, output, logsumexp]: [TchTensor; 6],
        segments: Option<(TchTensor, usize)>,
        scale: f64,
    ) -> (TchTensor, TchTensor, TchTensor) {
        if !flash_eligible(&query) {
            let starts = segments.map(|(starts, _)| starts);
            return reference_backward::<LibTorch>(
                grad_output,
                query,
                key,
                value,
                output,
                logsumexp,
                starts,
                scale,
            );
        }
        let (starts, max_len) = segments_raw(&segments);
        let mut grads = [std::ptr::null_mut(); 3];
        let [grad_query, grad_key, grad_value] = &mut grads;
        call("flash attention backward", |error| unsafe {
            // SAFETY: as in the forward.
            tl_flash_attention_backward(
                raw(&grad_output),
                raw(&query),
                raw(&key),
                raw(&value),
                raw(&output),
                raw(&logsumexp),
                starts,
                max_len,
                scale,
                grad_query,
                grad_key,
                grad_value,
                error,
            )
        });
        let [grad_query, grad_key, grad_value] = grads.map(owned);
        (grad_query, grad_key, grad_value)
    }

    impl CausalAttentionOps for LibTorch {
        fn causal_attention_forward(
            query: TchTensor,
            key: TchTensor,
            value: TchTensor,
            scale: f64,
        ) -> (TchTensor, TchTensor) {
            forward([query, key, value], None, scale)
        }

        fn causal_attention_backward(
            grad_output: TchTensor,
            query: TchTensor,
            key: TchTensor,
            value: TchTensor,
            output: TchTensor,
            logsumexp: TchTensor,
            scale: f64,
        ) -> (TchTensor, TchTensor, TchTensor) {
            let all = [grad_output, query, key, value, output, logsumexp];
            backward(all, None, scale)
        }

        fn segment_attention_forward(
            query: TchTensor,
            key: TchTensor,
            value: TchTensor,
            starts: TchTensor,
            max_len: usize,
            scale: f64,
        ) -> (TchTensor, TchTensor) {
            forward([query, key, value], Some((starts, max_len)), scale)
        }

        fn segment_attention_backward(
            grad_output: TchTensor,
            query: TchTensor,
            key: TchTensor,
            value: TchTensor,
            output: TchTensor,
            logsumexp: TchTensor,
            starts: TchTensor,
            max_len: usize,
            scale: f64,
        ) -> (TchTensor, TchTensor, TchTensor) {
            let all = [grad_output, query, key, value, output, logsumexp];
            backward(all, Some((starts, max_len)), scale)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op_tests::{backward_calls, max_abs_diff};
    use burn::tensor::{Device, Distribution};

    fn inputs(device: &Device, heads: usize, seq: usize) -> [Tensor<4>; 3] {
        device.seed(7);
        [0, 1, 2]
            .map(|_| Tensor::random([2, heads, seq, 8], Distribution::Normal(0.0, 1.0), device))
    }

    /// burn's own attention (decomposed, differentiated by burn's autodiff) is the reference
    /// for both the output and the three gradients of the custom operation.
    #[test]
    fn matches_burn_attention_and_its_gradients() {
        use burn::tensor::module::attention;
        use burn::tensor::ops::AttentionModuleOptions;
        let device = Device::default().autodiff();
        let (heads, seq) = (3, 11);
        let scale = 1.0 / (8f64).sqrt();
        let weights = Tensor::<4>::random([2, heads, seq, 8], Distribution::Default, &device);
        // Drawn once: burn's CPU RNG is process-wide, and other tests draw from it too.
        let drawn = inputs(&device, heads, seq);
        let run = |fused: bool| {
            let [q, k, v] = drawn.clone().map(|t| t.require_grad());
            let out = if fused {
                causal_attention(q.clone(), k.clone(), v.clone(), scale)
            } else {
                let options = AttentionModuleOptions {
                    is_causal: true,
                    ..Default::default()
                };
                attention(q.clone(), k.clone(), v.clone(), None, None, options)
            };
            // A loss that weights every output element differently.
            let grads = (out.clone() * weights.clone()).sum().backward();
            let grad = |t: &Tensor<4>| t.grad(&grads).expect("gradient");
            [out.inner(), grad(&q), grad(&k), grad(&v)]
        };
        let before = backward_calls("causal_attention");
        let fused = run(true);
        assert_eq!(
            backward_calls("causal_attention"),
            before + 1,
            "custom backward ran"
        );
        let plain = run(false);
        for (name, (a, b)) in ["output", "dQ", "dK", "dV"]
            .iter()
            .zip(fused.into_iter().zip(plain))
        {
            let scale = b.clone().abs().max().into_scalar::<f32>();
            let diff = max_abs_diff(a, b);
            assert!(diff <= 1e-5 * scale.max(1.0), "{name}: max |diff| {diff}");
        }
    }

    /// Packed rows: every example's output and gradients equal burn's causal attention over
    /// that example alone, and the padding after a row's examples does not leak into them.
    #[test]
    fn packed_rows_attend_within_each_example() {
        use burn::tensor::module::attention;
        use burn::tensor::ops::AttentionModuleOptions;
        let device = Device::default().autodiff();
        let (heads, width) = (2, 7);
        let scale = 1.0 / (8f64).sqrt();
        // Row 0: examples of 3 and 4 positions; row 1: one of 5, then 2 of padding.
        let rows = vec![vec![3, 4], vec![5]];
        let examples = [(0, 0..3), (0, 3..7), (1, 0..5)];
        let segments = Segments::from_row_lengths(&rows, width, &device);
        assert_eq!(
            segments.starts.to_data().iter::<i64>().collect::<Vec<_>>(),
            vec![0, 3, 7, 12, 14]
        );
        assert_eq!(segments.max_len, 5);
        let weights = Tensor::<4>::random([2, heads, width, 8], Distribution::Default, &device);
        let drawn = inputs(&device, heads, width);

        let [q, k, v] = drawn.clone().map(|t| t.require_grad());
        let before = backward_calls("causal_attention");
        let out = segment_attention(q.clone(), k.clone(), v.clone(), &segments, scale);
        let grads = (out.clone() * weights.clone()).sum().backward();
        assert_eq!(backward_calls("causal_attention"), before + 1);
        let packed = [
            out.inner(),
            q.grad(&grads).unwrap(),
            k.grad(&grads).unwrap(),
            v.grad(&grads).unwrap(),
        ];

        let options = AttentionModuleOptions {
            is_causal: true,
            ..Default::default()
        };
        for (row, span) in examples {
            let part = |t: &Tensor<4>| {
                t.clone()
                    .slice([row..row + 1, 0..heads, span.clone(), 0..8])
            };
            let [q, k, v] = drawn.clone().map(|t| part(&t).require_grad());
            let out = attention(q.clone(), k.clone(), v.clone(), None, None, options);
            let grads = (out.clone() * part(&weights)).sum().backward();
            let alone = [
                out.inner(),
                q.grad(&grads).unwrap(),
                k.grad(&grads).unwrap(),
                v.grad(&grads).unwrap(),
            ];
            for (name, (a, b)) in ["output", "dQ", "dK", "dV"]
                .iter()
                .zip(packed.iter().zip(alone))
            {
                let diff = max_abs_diff(part(a), b);
                assert!(diff < 1e-5, "row {row} {span:?} {name}: max |diff| {diff}");
            }
        }
    }

    /// Without autodiff only the forward runs; it equals burn's attention, and a row attends
    /// to no later key (the first output row is the first value).
    #[test]
    fn forward_without_autodiff() {
        use burn::tensor::module::attention;
        use burn::tensor::ops::AttentionModuleOptions;
        let device = Device::default();
        let [q, k, v] = inputs(&device, 2, 5);
        let out = causal_attention(q.clone(), k.clone(), v.clone(), 1.0 / (8f64).sqrt());
        let options = AttentionModuleOptions {
            is_causal: true,
            ..Default::default()
        };
        let plain = attention(q, k, v.clone(), None, None, options);
        assert!(max_abs_diff(out.clone(), plain) < 1e-5);
        let first = out.slice([0..2, 0..2, 0..1, 0..8]);
        assert!(max_abs_diff(first, v.slice([0..2, 0..2, 0..1, 0..8])) < 1e-6);
    }
}
