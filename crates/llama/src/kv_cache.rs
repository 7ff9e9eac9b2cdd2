//! Keys and values of past positions, so that decoding a token costs one position's work.
//!
//! Each layer keeps its keys and values in a buffer with room for more positions than it
//! holds; a decode step writes its position in place instead of concatenating (which would
//! copy the whole cache every step: at batch 64 and 800 positions of an 8B-shaped model that
//! is ~7 GB of traffic per step). The buffer grows by doubling when it runs out, or is sized
//! once up front with [`KvCache::with_capacity`].

use burn::tensor::{Device, Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::config::LlamaConfig;

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
    /// Keys and values in host memory, when the CPU path ([`crate::cpu`]) filled this cache
    /// (then `layers` stays empty).
    host: Option<HostKv>,
    /// Keeps the host path away: the buffers must be device tensors ([`KvCache::on_device_with_capacity`]).
    device_only: bool,
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

    /// Whether the burn path may use this cache: it holds no host keys and values.
    pub(crate) fn on_device(&self) -> bool {
        self.host.is_none()
    }

    /// Whether the host path may use this cache: nothing on the device yet, and not made
    /// for device buffers.
    pub(crate) fn host_usable(&self) -> bool {
        self.layers.is_empty() && !self.device_only
    }

    /// [`KvCache::with_capacity`] whose keys and values stay device tensors even where the
    /// host path runs: what fixed-shape decoding (CUDA graphs) takes over after the prefill.
    pub(crate) fn on_device_with_capacity(positions: usize) -> Self {
        Self {
            device_only: true,
            ..Self::with_capacity(positions)
        }
    }

    /// The host keys and values, made (empty, with room for the first forward's `seq`
    /// positions or the capacity asked for) on first use.
    pub(crate) fn host_kv_for(
        &mut self,
        batch: usize,
        config: &LlamaConfig,
        seq: usize,
    ) -> &mut HostKv {
        let capacity = self.capacity.unwrap_or(seq).max(seq);
        self.host
            .get_or_insert_with(|| HostKv::new(batch, config, capacity))
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
        if let Some(host) = &self.host {
            let host = host.repeated_prefix(prefix, rows, room);
            let device = self.key_mask.as_ref().expect("a filled cache").device();
            return KvCache {
                key_mask: Some(host.mask_tensor(&device)),
                host: Some(host),
                ..KvCache::default()
            };
        }
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
            host: None,
            device_only: self.device_only,
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
        if let Some(host) = &mut self.host {
            host.retain_rows(rows);
        }
        for kv in self.layers.iter_mut().flatten() {
            kv.keys = kv.keys.clone().select(0, indices.clone());
            kv.values = kv.values.clone().select(0, indices.clone());
        }
    }
}

/// Keys and values of every layer in host memory, for the CPU path ([`crate::cpu`]): per layer
/// `[B, kv_heads, capacity, head_dim]` f32 buffers whose first `len` positions are filled,
/// and per row the visibility (1.0 real token, 0.0 padding) of every position written.
#[derive(Debug, Clone)]
pub(crate) struct HostKv {
    batch: usize,
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    visible: Vec<Vec<f32>>,
}

impl HostKv {
    pub(crate) fn new(batch: usize, config: &LlamaConfig, capacity: usize) -> Self {
        let (kv_heads, head_dim) = (config.num_kv_heads(), config.head_dim());
        let size = batch * kv_heads * capacity * head_dim;
        Self {
            batch,
            kv_heads,
            head_dim,
            capacity,
            len: 0,
            keys: vec![vec![0.0; size]; config.num_hidden_layers],
            values: vec![vec![0.0; size]; config.num_hidden_layers],
            visible: vec![Vec::with_capacity(capacity); batch],
        }
    }

    pub(crate) fn batch(&self) -> usize {
        self.batch
    }

    /// Filled positions.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Records the mask `[B, seq]` (row-major) of the next `seq` positions, making room for
    /// them (doubling) when the buffers are full.
    pub(crate) fn extend_mask(&mut self, mask: &[i64], seq: usize) {
        assert_eq!(
            mask.len(),
            self.batch * seq,
            "mask is not [{}, {seq}]",
            self.batch
        );
        for (visible, row) in self.visible.iter_mut().zip(mask.chunks_exact(seq)) {
            visible.truncate(self.len);
            visible.extend(row.iter().map(|&m| if m == 1 { 1.0 } else { 0.0 }));
        }
        let needed = self.len + seq;
        if needed > self.capacity {
            self.resize(needed.max(2 * self.capacity));
        }
    }

    /// Moves the filled positions into buffers of `capacity` positions.
    fn resize(&mut self, capacity: usize) {
        let (old, d) = (self.capacity, self.head_dim);
        let filled = self.len * d;
        let grow = |buffer: &mut Vec<f32>| {
            let mut grown = vec![0.0; self.batch * self.kv_heads * capacity * d];
            for (to, from) in grown
                .chunks_exact_mut(capacity * d)
                .zip(buffer.chunks_exact(old * d))
            {
                to[..filled].copy_from_slice(&from[..filled]);
            }
            *buffer = grown;
        };
        self.keys.iter_mut().for_each(grow);
        self.values.iter_mut().for_each(grow);
        self.capacity = capacity;
    }

    /// Position ids `[B, seq]` (row-major) of the next `seq` positions: `cumsum(mask) − 1`
    /// over the whole row, at least 0, as [`crate::Llama::forward_hidden`] computes them.
    pub(crate) fn positions(&self, past: usize, seq: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.batch * seq);
        for visible in &self.visible {
            let mut real = 0usize;
            for (j, &v) in visible[..past + seq].iter().enumerate() {
                real += v as usize;
                if j >= past {
                    out.push(real.saturating_sub(1));
                }
            }
        }
        out
    }

    /// Writes keys and values `[B·seq, kv_heads·head_dim]` of layer `layer` at positions
    /// `past..past + seq`.
    pub(crate) fn write(&mut self, layer: usize, past: usize, seq: usize, k: &[f32], v: &[f32]) {
        let (heads, d, capacity) = (self.kv_heads, self.head_dim, self.capacity);
        for (buffer, new) in [(&mut self.keys[layer], k), (&mut self.values[layer], v)] {
            for (b, rows) in new.chunks_exact(seq * heads * d).enumerate() {
                for (t, row) in rows.chunks_exact(heads * d).enumerate() {
                    for (g, head) in row.chunks_exact(d).enumerate() {
                        let at = ((b * heads + g) * capacity + past + t) * d;
                        buffer[at..at + d].copy_from_slice(head);
                    }
                }
            }
        }
    }

    /// Attention of the queries `q` `[B·seq, heads·head_dim]` of positions `past..past+seq`
    /// over layer `layer`'s keys and values (already written) into `context` (same shape);
    /// `heads / kv_heads` query heads share each key/value head. One task per (row, key/value
    /// head), on rayon's threads.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attend(
        &self,
        layer: usize,
        past: usize,
        seq: usize,
        q: &[f32],
        context: &mut [f32],
        heads: usize,
        scale: f32,
    ) {
        let (kv_heads, d, capacity) = (self.kv_heads, self.head_dim, self.capacity);
        let group = heads / kv_heads;
        let (q_width, part_width) = (heads * d, group * d);
        let keys = past + seq;
        let parts: Vec<Vec<f32>> = (0..self.batch * kv_heads)
            .into_par_iter()
            .map_init(cpu_kernels::CausalScratch::default, |scratch, task| {
                let (b, g) = (task / kv_heads, task % kv_heads);
                let at = (b * kv_heads + g) * capacity * d;
                let cache = cpu_kernels::CachedHead {
                    keys: &self.keys[layer][at..at + keys * d],
                    values: &self.values[layer][at..at + keys * d],
                    visible: &self.visible[b][..keys],
                    head_dim: d,
                };
                let mut part = vec![0.0f32; seq * part_width];
                for r in 0..group {
                    let head = g * group + r;
                    cpu_kernels::attend_causal(
                        &q[b * seq * q_width + head * d..],
                        q_width,
                        &mut part[r * d..],
                        part_width,
                        seq,
                        past,
                        cache,
                        scale,
                        scratch,
                    );
                }
                part
            })
            .collect();
        for (task, part) in parts.iter().enumerate() {
            let (b, g) = (task / kv_heads, task % kv_heads);
            for (t, row) in part.chunks_exact(part_width).enumerate() {
                let at = (b * seq + t) * q_width + g * part_width;
                context[at..at + part_width].copy_from_slice(row);
            }
        }
    }

    /// Marks the positions written by the last forward as filled.
    pub(crate) fn advance(&mut self, seq: usize) {
        self.len += seq;
    }

    /// The mask `[B, len]` as the burn path keeps it ([`KvCache::key_mask`]).
    pub(crate) fn mask_tensor(&self, device: &Device) -> Tensor<2, Int> {
        let mask: Vec<i64> = self
            .visible
            .iter()
            .flat_map(|row| row[..self.len].iter().map(|&v| v as i64))
            .collect();
        Tensor::from_data(TensorData::new(mask, [self.batch, self.len]), device)
    }

    fn retain_rows(&mut self, rows: &[usize]) {
        let block = self.kv_heads * self.capacity * self.head_dim;
        let select = |buffer: &Vec<f32>| -> Vec<f32> {
            rows.iter()
                .flat_map(|&r| buffer[r * block..(r + 1) * block].iter().copied())
                .collect()
        };
        self.keys = self.keys.iter().map(select).collect();
        self.values = self.values.iter().map(select).collect();
        self.visible = rows.iter().map(|&r| self.visible[r].clone()).collect();
        self.batch = rows.len();
    }

    /// `rows` copies of row 0's first `prefix` positions, with room for `room` more.
    fn repeated_prefix(&self, prefix: usize, rows: usize, room: usize) -> Self {
        let (heads, d) = (self.kv_heads, self.head_dim);
        let capacity = prefix + room;
        let repeat = |buffer: &Vec<f32>| -> Vec<f32> {
            let mut out = vec![0.0; rows * heads * capacity * d];
            for row in out.chunks_exact_mut(heads * capacity * d) {
                for g in 0..heads {
                    let from = &buffer[g * self.capacity * d..][..prefix * d];
                    row[g * capacity * d..][..prefix * d].copy_from_slice(from);
                }
            }
            out
        };
        Self {
            batch: rows,
            kv_heads: heads,
            head_dim: d,
            capacity,
            len: prefix,
            keys: self.keys.iter().map(repeat).collect(),
            values: self.values.iter().map(repeat).collect(),
            visible: vec![self.visible[0][..prefix].to_vec(); rows],
        }
    }
}
