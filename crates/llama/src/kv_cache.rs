//! Keys and values of past positions, so that decoding a token costs one position's work.

use burn::tensor::{Int, Tensor, TensorData};

/// Keys and values of one layer, `[B, kv_heads, past, head_dim]`, after rotary embedding.
#[derive(Debug, Clone)]
pub struct LayerKv {
    pub keys: Tensor<4>,
    pub values: Tensor<4>,
}

/// The cache of a batch: per-layer keys/values plus the attention mask `[B, past]` of the
/// positions they hold (padding stays masked on every later step).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    key_mask: Option<Tensor<2, Int>>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached positions (including padding).
    pub fn seq_len(&self) -> usize {
        self.key_mask.as_ref().map_or(0, |m| m.dims()[1])
    }

    pub fn batch_size(&self) -> Option<usize> {
        self.key_mask.as_ref().map(|m| m.dims()[0])
    }

    pub fn is_empty(&self) -> bool {
        self.seq_len() == 0
    }

    /// The mask `[B, past]` of the cached positions (1 = real token).
    pub fn key_mask(&self) -> Option<&Tensor<2, Int>> {
        self.key_mask.as_ref()
    }

    pub(crate) fn set_key_mask(&mut self, mask: Tensor<2, Int>) {
        self.key_mask = Some(mask);
    }

    pub(crate) fn layer_slot(&mut self, index: usize) -> &mut Option<LayerKv> {
        if self.layers.len() <= index {
            self.layers.resize(index + 1, None);
        }
        &mut self.layers[index]
    }

    pub fn layer(&self, index: usize) -> Option<&LayerKv> {
        self.layers.get(index).and_then(Option::as_ref)
    }

    /// Keeps only the given batch rows, in the given order: finished sequences leave the
    /// batch so that later steps do no work for them.
    pub fn retain_rows(&mut self, rows: &[usize]) {
        let Some(mask) = &self.key_mask else {
            return;
        };
        let device = mask.device();
        let indices = Tensor::<1, Int>::from_data(
            TensorData::new(
                rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                [rows.len()],
            ),
            &device,
        );
        self.key_mask = Some(mask.clone().select(0, indices.clone()));
        for kv in self.layers.iter_mut().flatten() {
            kv.keys = kv.keys.clone().select(0, indices.clone());
            kv.values = kv.values.clone().select(0, indices.clone());
        }
    }
}
