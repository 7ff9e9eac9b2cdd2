//! Greedy decoding whose every step runs the same tensor ops on the same buffers, so that a
//! GPU can capture one step as a CUDA graph and replay it (see [`crate::cuda_graph`]).
//!
//! What changes from step to step lives in device tensors updated in place: the input token
//! ids, their rotary positions, and the cache column being written. Keys and values go into
//! buffers sized for the whole generation; attention reads all of them under a mask that
//! admits the prompt's real tokens and the generated positions so far. The arithmetic is the
//! same as [`Llama::forward_hidden`] with a growing cache (the masked keys add exact zeros).

use burn::tensor::{Bool, DType, Int, Tensor, TensorData};

use crate::kv_cache::KvCache;
use crate::model::{AttentionMask, KvSlot, Llama, fused_attention_masks_true, grouped_mask};

#[cfg_attr(not(any(feature = "tch", test)), allow(dead_code))]
pub(crate) struct FixedDecoder {
    batch: usize,
    capacity: usize,
    dtype: DType,
    /// `[B, 1]`: the token each row feeds in this step (the previous step's argmax).
    ids: Option<Tensor<2, Int>>,
    /// `[B, 1]`: rotary position of that token.
    positions: Option<Tensor<2, Int>>,
    /// `[1, 1]`: cache column its key and value go to (the same for every row: rows are
    /// left-padded to one width).
    column: Option<Tensor<2, Int>>,
    /// `[1, C]`: 0..C.
    columns: Tensor<2, Int>,
    /// `[1, C]`: columns at or past the prompt width.
    generated_region: Tensor<2, Bool>,
    /// `[B, C]`: the prompt's real tokens.
    prompt_keys: Tensor<2, Bool>,
    inv_freq: Tensor<1>,
    keys: Vec<Option<Tensor<4>>>,
    values: Vec<Option<Tensor<4>>>,
    masks_true: bool,
}

#[cfg_attr(not(any(feature = "tch", test)), allow(dead_code))]
impl FixedDecoder {
    /// Takes over a prefilled cache made with `KvCache::on_device_with_capacity`: `prompt_mask`
    /// (`[B, W]`, 1 = real token) is what was prefilled, `first` (`[B, 1]`) the tokens chosen
    /// from the prefill's last position.
    pub(crate) fn new(
        model: &Llama,
        cache: KvCache,
        prompt_mask: Tensor<2, Int>,
        first: Tensor<2, Int>,
    ) -> Self {
        let device = first.device();
        let batch = prompt_mask.dims()[0];
        let (keys, values) = cache.into_buffers();
        let capacity = keys[0].dims()[2];
        let dtype = keys[0].dtype();
        let columns = Tensor::<1, Int>::arange(0..capacity as i64, &device).reshape([1, capacity]);
        let prompt = PromptState::new(prompt_mask, &columns);
        Self {
            batch,
            capacity,
            dtype,
            ids: Some(first),
            positions: Some(prompt.positions),
            column: Some(prompt.column),
            columns,
            generated_region: prompt.generated_region,
            prompt_keys: prompt.prompt_keys,
            inv_freq: model.rope.inv_freq_tensor(&device),
            keys: keys.into_iter().map(Some).collect(),
            values: values.into_iter().map(Some).collect(),
            masks_true: fused_attention_masks_true(&device),
        }
    }

    /// Lends the key and value buffers to a cache for the next prompt's prefill; give them
    /// back with [`FixedDecoder::restart`].
    pub(crate) fn take_cache(&mut self) -> KvCache {
        let take = |buffers: &mut Vec<Option<Tensor<4>>>| {
            buffers
                .iter_mut()
                .map(|buffer| buffer.take().expect("buffers present between calls"))
                .collect()
        };
        KvCache::from_buffers(take(&mut self.keys), take(&mut self.values))
    }

    /// Starts decoding another prompt of the same batch size and capacity: `cache` is the one
    /// [`FixedDecoder::take_cache`] lent, prefilled. Every tensor a step reads is overwritten in
    /// place, so a graph captured from an earlier prompt replays this one. Positions past the
    /// prompt keep the earlier prompt's keys: they stay masked until a step writes them.
    pub(crate) fn restart(
        &mut self,
        cache: KvCache,
        prompt_mask: Tensor<2, Int>,
        first: Tensor<2, Int>,
    ) {
        let (keys, values) = cache.into_buffers();
        assert_eq!(keys[0].dims()[2], self.capacity, "cache from take_cache");
        assert_eq!(first.dims()[0], self.batch, "same batch size");
        self.keys = keys.into_iter().map(Some).collect();
        self.values = values.into_iter().map(Some).collect();
        let prompt = PromptState::new(prompt_mask, &self.columns);
        let present = "present between steps";
        overwrite(self.ids.as_mut().expect(present), first);
        overwrite(self.positions.as_mut().expect(present), prompt.positions);
        overwrite(self.column.as_mut().expect(present), prompt.column);
        overwrite(&mut self.generated_region, prompt.generated_region);
        overwrite(&mut self.prompt_keys, prompt.prompt_keys);
    }

    /// Positions left in the buffers.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The cache column the next step writes (read back from the device): `width + steps`.
    pub(crate) fn column(&self) -> usize {
        let column = self.column.clone().expect("column present between steps");
        column
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .expect("int column")[0] as usize
    }

    /// The tokens the last step chose (`[B, 1]`; before any step, the prefill's).
    pub(crate) fn ids(&self) -> Tensor<2, Int> {
        self.ids.clone().expect("ids present between steps")
    }

    /// Feeds `ids`, writes their keys and values at `column`, and replaces `ids` with the
    /// argmax of the logits; then advances `positions` and `column`. Device work only: no
    /// host synchronisation, no host-to-device copy.
    pub(crate) fn step(&mut self, model: &Llama) {
        let config = model.config();
        let repeats = config.num_attention_heads / config.num_kv_heads();
        let (batch, capacity) = (self.batch, self.capacity);
        let column = self.column.take().expect("column");
        let visible_generated = self
            .generated_region
            .clone()
            .bool_and(self.columns.clone().lower_equal(column.clone()));
        let allowed = self.prompt_keys.clone().bool_or(visible_generated);
        let forbidden = grouped_mask(allowed.bool_not().reshape([batch, 1, 1, capacity]), repeats);
        let mask = AttentionMask::Explicit(if self.masks_true {
            forbidden
        } else {
            forbidden.bool_not()
        });
        let position = column.clone().reshape([1]);

        let ids = self.ids.take().expect("ids");
        let positions = self.positions.take().expect("positions");
        let mut x = model.embed_tokens.forward(ids.clone());
        let (cos, sin) = model
            .rope
            .cos_sin_with(positions.clone(), &self.inv_freq, self.dtype);
        for (index, layer) in model.layers.iter().enumerate() {
            let slot = KvSlot::Fixed {
                keys: &mut self.keys[index],
                values: &mut self.values[index],
                position: &position,
            };
            x = layer.forward(x, &cos, &sin, &mask, slot);
        }
        let next = model
            .logits(model.norm.forward(x))
            .argmax(2)
            .reshape([batch, 1]);
        // In place (each handle is the only one), so the buffers keep their addresses.
        self.ids = Some(ids.slice_assign([0..batch, 0..1], next));
        self.positions = Some(positions.add_scalar(1));
        // `position` views `column`: dropped first, so the add below is in place (a replayed
        // graph reads the column from the address it captured).
        drop(position);
        self.column = Some(column.add_scalar(1));
    }
}

/// Copies `new` into the tensor in `slot`, in place (the slot holds its only handle), so that
/// the address a captured graph reads stays the same.
fn overwrite<const D: usize, K>(slot: &mut Tensor<D, K>, new: Tensor<D, K>)
where
    K: burn::tensor::kind::Basic,
{
    let held = std::mem::replace(slot, new.clone());
    let ranges = held.dims().map(|n| 0..n);
    *slot = held.slice_assign(ranges, new);
}

/// What a decode step reads about the prompt, from its mask `[B, W]` (1 = real token).
struct PromptState {
    /// `[B, 1]`: HF's positions are cumsum(mask) − 1, so the next token's is the count of
    /// real ones.
    positions: Tensor<2, Int>,
    /// `[1, 1]`: the first column after the prompt.
    column: Tensor<2, Int>,
    /// `[1, C]`: columns at or past the prompt width.
    generated_region: Tensor<2, Bool>,
    /// `[B, C]`: the prompt's real tokens.
    prompt_keys: Tensor<2, Bool>,
}

impl PromptState {
    fn new(prompt_mask: Tensor<2, Int>, columns: &Tensor<2, Int>) -> Self {
        let device = prompt_mask.device();
        let [batch, width] = prompt_mask.dims();
        let capacity = columns.dims()[1];
        let padding = Tensor::<2, Int>::zeros([batch, capacity - width], &device);
        Self {
            positions: prompt_mask.clone().sum_dim(1),
            column: Tensor::from_data(TensorData::new(vec![width as i64], [1, 1]), &device),
            generated_region: columns.clone().greater_equal_elem(width as i64),
            prompt_keys: Tensor::cat(vec![prompt_mask, padding], 1).equal_elem(1),
        }
    }
}
