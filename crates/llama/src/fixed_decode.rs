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
use crate::model::{KvSlot, Llama, fused_attention_masks_true, grouped_mask};

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
    /// Takes over a prefilled cache made with [`KvCache::with_capacity`]: `prompt_mask`
    /// (`[B, W]`, 1 = real token) is what was prefilled, `first` (`[B, 1]`) the tokens chosen
    /// from the prefill's last position.
    pub(crate) fn new(
        model: &Llama,
        cache: KvCache,
        prompt_mask: Tensor<2, Int>,
        first: Tensor<2, Int>,
    ) -> Self {
        let device = first.device();
        let [batch, width] = prompt_mask.dims();
        let (keys, values) = cache.into_buffers();
        let capacity = keys[0].dims()[2];
        let dtype = keys[0].dtype();
        // HF's positions are cumsum(mask) − 1, so the next token's is the count of real ones.
        let positions = prompt_mask.clone().sum_dim(1);
        let column =
            Tensor::<2, Int>::from_data(TensorData::new(vec![width as i64], [1, 1]), &device);
        let columns = Tensor::<1, Int>::arange(0..capacity as i64, &device).reshape([1, capacity]);
        let generated_region = columns.clone().greater_equal_elem(width as i64);
        let padding = Tensor::<2, Int>::zeros([batch, capacity - width], &device);
        let prompt_keys = Tensor::cat(vec![prompt_mask, padding], 1).equal_elem(1);
        Self {
            batch,
            capacity,
            dtype,
            ids: Some(first),
            positions: Some(positions),
            column: Some(column),
            columns,
            generated_region,
            prompt_keys,
            inv_freq: model.rope.inv_freq_tensor(&device),
            keys: keys.into_iter().map(Some).collect(),
            values: values.into_iter().map(Some).collect(),
            masks_true: fused_attention_masks_true(&device),
        }
    }

    /// Positions left in the buffers.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
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
        let mask = Some(if self.masks_true {
            forbidden
        } else {
            forbidden.bool_not()
        });
        let write = self
            .columns
            .clone()
            .equal(column.clone())
            .float()
            .cast(self.dtype)
            .reshape([1, 1, capacity, 1]);

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
                write: &write,
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
        self.column = Some(column.add_scalar(1));
    }
}
