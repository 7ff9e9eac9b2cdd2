//! Keys and values of past positions, so that decoding a token costs one position's work.
//!
//! Each layer keeps its keys and values in a buffer with room for more positions than it
//! holds; a decode step writes its position in place instead of concatenating (which would
//! copy the whole cache every step: at batch 64 and 800 positions of an 8B-shaped model that
//! is ~7 GB of traffic per step). The buffer grows by doubling when it runs out, or is sized
//! once up front with [`KvCache::with_capacity`].

use burn::tensor::{Int, Tensor, TensorData};

/// Keys and values of one layer after rotary embedding, in buffers
/// `[B, kv_heads, capacity, head_dim]` whose first `len` positions are filled.
#[derive(Debug, Clone)]
pub struct LayerKv {
    keys: Tensor<4>,
    values: Tensor<4>,
    len: usize,
}

impl LayerKv {
    /// Number of filled positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the buffers have room for.
    pub fn capacity(&self) -> usize {
        self.keys.dims()[2]
    }

    /// The filled keys `[B, kv_heads, len, head_dim]` (a view into the buffer).
    pub fn keys(&self) -> Tensor<4> {
        self.keys.clone().narrow(2, 0, self.len)
    }

    /// The filled values `[B, kv_heads, len, head_dim]` (a view into the buffer).
    pub fn values(&self) -> Tensor<4> {
        self.values.clone().narrow(2, 0, self.len)
    }
}

/// The cache of a batch: per-layer keys/values plus the attention mask `[B, past]` of the
/// positions they hold (padding stays masked on every later step).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    key_mask: Option<Tensor<2, Int>>,
    /// Positions to allocate for on the first write (more if that write is longer).
    capacity: Option<usize>,
}

impl KvCache {
    /// A cache that allocates exactly what the first forward needs and doubles when full.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache whose buffers hold `positions` positions from the first forward on (prompt
    /// plus new tokens), so decoding never reallocates.
    pub fn with_capacity(positions: usize) -> Self {
        Self {
            capacity: Some(positions),
            ..Self::default()
        }
    }

    /// An empty cache that writes into existing buffers `[B, kv_heads, capacity, head_dim]`
    /// (one pair per layer, each with no other handle so that writes land in place): a
    /// decoder that is used again keeps its buffers' addresses.
    pub(crate) fn from_buffers(keys: Vec<Tensor<4>>, values: Vec<Tensor<4>>) -> Self {
        let layers = keys
            .into_iter()
            .zip(values)
            .map(|(keys, values)| {
                Some(LayerKv {
                    keys,
                    values,
                    len: 0,
                })
            })
            .collect();
        Self {
            layers,
            ..Self::default()
        }
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

    /// Appends one forward's keys and values `[B, kv_heads, T, head_dim]` to layer `index`
    /// and returns all of that layer's keys and values so far.
    pub(crate) fn append(
        &mut self,
        index: usize,
        keys: Tensor<4>,
        values: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        if self.layers.len() <= index {
            self.layers.resize(index + 1, None);
        }
        let capacity_hint = self.capacity;
        let slot = &mut self.layers[index];
        let [batch, heads, new, head_dim] = keys.dims();
        let Some(past) = slot.take() else {
            let capacity = capacity_hint.unwrap_or(new).max(new);
            let (key_buffer, value_buffer) = if capacity == new {
                (keys.clone(), values.clone())
            } else {
                let grow = |t: Tensor<4>| {
                    let room = Tensor::<4>::zeros(
                        [batch, heads, capacity, head_dim],
                        (&t.device(), t.dtype()),
                    );
                    room.slice_assign([0..batch, 0..heads, 0..new, 0..head_dim], t)
                };
                (grow(keys.clone()), grow(values.clone()))
            };
            *slot = Some(LayerKv {
                keys: key_buffer,
                values: value_buffer,
                len: new,
            });
            // The fresh tensors are contiguous: attention reads them faster than a view.
            return (keys, values);
        };
        let len = past.len + new;
        let (mut key_buffer, mut value_buffer) = (past.keys, past.values);
        let capacity = key_buffer.dims()[2];
        if len > capacity {
            let extra = len.max(2 * capacity) - capacity;
            let grow = |t: Tensor<4>| {
                let room =
                    Tensor::<4>::zeros([batch, heads, extra, head_dim], (&t.device(), t.dtype()));
                Tensor::cat(vec![t, room], 2)
            };
            key_buffer = grow(key_buffer);
            value_buffer = grow(value_buffer);
        }
        // The first write into buffers made elsewhere (`from_buffers`): attention reads the
        // fresh contiguous tensors faster than a view of the buffer.
        let fresh = (past.len == 0).then(|| (keys.clone(), values.clone()));
        // The buffers are owned here (no other handle), so backends write in place.
        let range = [0..batch, 0..heads, past.len..len, 0..head_dim];
        let key_buffer = key_buffer.slice_assign(range.clone(), keys);
        let value_buffer = value_buffer.slice_assign(range, values);
        let layer = LayerKv {
            keys: key_buffer,
            values: value_buffer,
            len,
        };
        let out = fresh.unwrap_or_else(|| (layer.keys(), layer.values()));
        *slot = Some(layer);
        out
    }

    /// The per-layer key and value buffers `[B, kv_heads, capacity, head_dim]` (positions past
    /// the filled ones are zero when the cache was made with [`KvCache::with_capacity`]).
    pub(crate) fn into_buffers(self) -> (Vec<Tensor<4>>, Vec<Tensor<4>>) {
        self.layers
            .into_iter()
            .map(|layer| {
                let layer = layer.expect("every layer filled by the prefill");
                (layer.keys, layer.values)
            })
            .unzip()
    }

    /// A new cache for `rows` sequences that all begin with the first `prefix` positions of
    /// row 0 of this one (a shared few-shot prompt computed once), with room for `room` more
    /// positions so that the next forward writes in place.
    pub(crate) fn repeated_prefix(&self, prefix: usize, rows: usize, room: usize) -> KvCache {
        assert!(prefix <= self.seq_len(), "prefix longer than the cache");
        let repeat = |buffer: &Tensor<4>| {
            let [_, heads, _, head_dim] = buffer.dims();
            let filled = buffer
                .clone()
                .narrow(0, 0, 1)
                .narrow(2, 0, prefix)
                .repeat_dim(0, rows);
            if room == 0 {
                return filled;
            }
            let empty = Tensor::<4>::zeros(
                [rows, heads, room, head_dim],
                (&buffer.device(), buffer.dtype()),
            );
            Tensor::cat(vec![filled, empty], 2)
        };
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                layer.as_ref().map(|kv| LayerKv {
                    keys: repeat(&kv.keys),
                    values: repeat(&kv.values),
                    len: prefix,
                })
            })
            .collect();
        let key_mask = self.key_mask.as_ref().map(|mask| {
            mask.clone()
                .narrow(0, 0, 1)
                .narrow(1, 0, prefix)
                .repeat_dim(0, rows)
        });
        KvCache {
            layers,
            key_mask,
            capacity: None,
        }
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
