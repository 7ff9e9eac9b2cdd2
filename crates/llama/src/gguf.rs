//! GGUF (v2/v3) reader: metadata, tensor infos and dequantisation to f32, plus
//! [`GgufModel`], which presents a llama.cpp Llama GGUF as HF-named, HF-laid-out weights.
//!
//! GGUF layout (all little-endian): magic `GGUF`, version `u32`, tensor count `u64`,
//! metadata count `u64`, the metadata key/values, the tensor infos (name, dims, type,
//! offset), padding to `general.alignment` (default 32), then the tensor data.
//! A tensor's dims are listed fastest-varying first, so the HF (row-major) shape is the
//! reverse of the GGUF dims.
//!
//! ```no_run
//! use llama::{GgufModel, TensorSource};
//! let model = GgufModel::open("assets/smollm2-135m-instruct.Q4_1.gguf")?;
//! let q = model.tensor("model.layers.0.self_attn.q_proj.weight")?; // f32, HF layout
//! assert_eq!(q.shape, [576, 576]);
//! assert_eq!(model.config().num_key_value_heads, Some(3));
//! # Ok::<(), llama::Error>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use half::f16;
use memmap2::Mmap;
use rayon::prelude::*;

use crate::config::{EosTokenId, LlamaConfig, RopeScaling};
use crate::tensor_source::{HostDType, HostTensor, TensorSource};
use crate::{Error, Result};

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value. Arrays hold values of one type (GGUF forbids mixed arrays).
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetadataValue>),
}

impl MetadataValue {
    /// The value as an unsigned integer, for any integer type that holds a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetadataValue::U8(v) => Some(v.into()),
            MetadataValue::U16(v) => Some(v.into()),
            MetadataValue::U32(v) => Some(v.into()),
            MetadataValue::U64(v) => Some(v),
            MetadataValue::I8(v) => u64::try_from(v).ok(),
            MetadataValue::I16(v) => u64::try_from(v).ok(),
            MetadataValue::I32(v) => u64::try_from(v).ok(),
            MetadataValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetadataValue::I8(v) => Some(v.into()),
            MetadataValue::I16(v) => Some(v.into()),
            MetadataValue::I32(v) => Some(v.into()),
            MetadataValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::F32(v) => Some(v.into()),
            MetadataValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            MetadataValue::Array(values) => Some(values),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            MetadataValue::U8(_) => "u8",
            MetadataValue::I8(_) => "i8",
            MetadataValue::U16(_) => "u16",
            MetadataValue::I16(_) => "i16",
            MetadataValue::U32(_) => "u32",
            MetadataValue::I32(_) => "i32",
            MetadataValue::U64(_) => "u64",
            MetadataValue::I64(_) => "i64",
            MetadataValue::F32(_) => "f32",
            MetadataValue::F64(_) => "f64",
            MetadataValue::Bool(_) => "bool",
            MetadataValue::String(_) => "string",
            MetadataValue::Array(_) => "array",
        }
    }
}

/// ggml tensor element types (the numbering of `enum ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    BF16,
    /// A type this reader does not know (IQ*, TQ*, MXFP4, ...), by its ggml number.
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2_K,
            11 => GgmlType::Q3_K,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            15 => GgmlType::Q8_K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// (elements per block, bytes per block), or `None` for an unknown type.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q8_1 => (32, 36),
            GgmlType::Q2_K => (256, 84),
            GgmlType::Q3_K => (256, 110),
            GgmlType::Q4_K => (256, 144),
            GgmlType::Q5_K => (256, 176),
            GgmlType::Q6_K => (256, 210),
            GgmlType::Q8_K => (256, 292),
            GgmlType::Other(_) => return None,
        })
    }

    /// Whether [`GgufFile::dequantize`] handles this type.
    pub fn can_dequantize(self) -> bool {
        matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q8_0
                | GgmlType::Q4_K
                | GgmlType::Q6_K
        )
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgmlType::Other(id) => write!(f, "ggml type {id}"),
            known => write!(f, "{known:?}"),
        }
    }
}

/// Where a tensor lives in the file and how it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// The llama.cpp name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dims as GGUF stores them: fastest-varying first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    pub fn num_elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }

    /// Row-major shape (HF/numpy order): the GGUF dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Bytes the tensor occupies, or `None` for an unknown type or a partial block.
    pub fn size_in_bytes(&self) -> Option<usize> {
        let (block_elements, block_bytes) = self.ggml_type.block_layout()?;
        let elements = self.num_elements();
        elements
            .is_multiple_of(block_elements)
            .then_some(elements / block_elements * block_bytes)
    }
}

/// A memory-mapped GGUF file with its metadata parsed.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    metadata: BTreeMap<String, MetadataValue>,
    tensors: Vec<GgufTensorInfo>,
    data_offset: usize,
    alignment: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`, checking that every tensor lies inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let mmap = crate::tensor_source::map_read_only(path)?;
        let header = parse_header(&mmap).map_err(|message| gguf_error(path, message))?;
        let file = GgufFile {
            path: path.to_path_buf(),
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            data_offset: header.data_offset,
            alignment: header.alignment,
            mmap,
        };
        file.check_tensor_bounds()?;
        Ok(file)
    }

    fn check_tensor_bounds(&self) -> Result<()> {
        let data_len = self.mmap.len().saturating_sub(self.data_offset) as u64;
        if self.data_offset > self.mmap.len() && !self.tensors.is_empty() {
            return Err(self.error(format!(
                "truncated file: tensor data should start at byte {} but the file has {} bytes",
                self.data_offset,
                self.mmap.len()
            )));
        }
        for info in &self.tensors {
            // Unknown types have unknown sizes; they fail when read, naming the tensor.
            if info.ggml_type.block_layout().is_none() {
                continue;
            }
            let size = info.size_in_bytes().ok_or_else(|| {
                self.error(format!(
                    "tensor `{}` has {} elements, not a whole number of {} blocks",
                    info.name,
                    info.num_elements(),
                    info.ggml_type
                ))
            })?;
            if info.offset % self.alignment != 0 {
                return Err(self.error(format!(
                    "tensor `{}` starts at data offset {}, not a multiple of the alignment {}",
                    info.name, info.offset, self.alignment
                )));
            }
            let end = info.offset.checked_add(size as u64);
            if end.is_none_or(|end| end > data_len) {
                return Err(self.error(format!(
                    "truncated file: tensor `{}` needs data bytes {}..{} but only {} are present",
                    info.name,
                    info.offset,
                    info.offset as u128 + size as u128,
                    data_len
                )));
            }
        }
        Ok(())
    }

    fn error(&self, message: String) -> Error {
        gguf_error(&self.path, message)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetadataValue> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.get(key)
    }

    /// A required metadata value; the error names the file and the key.
    pub fn require(&self, key: &str) -> Result<&MetadataValue> {
        self.get(key)
            .ok_or_else(|| self.error(format!("missing metadata key `{key}`")))
    }

    pub fn require_u64(&self, key: &str) -> Result<u64> {
        let value = self.require(key)?;
        value
            .as_u64()
            .ok_or_else(|| self.wrong_type(key, value, "a non-negative integer"))
    }

    pub fn require_str(&self, key: &str) -> Result<&str> {
        let value = self.require(key)?;
        value
            .as_str()
            .ok_or_else(|| self.wrong_type(key, value, "a string"))
    }

    pub fn optional_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key)
            .map(|value| {
                value
                    .as_u64()
                    .ok_or_else(|| self.wrong_type(key, value, "a non-negative integer"))
            })
            .transpose()
    }

    pub fn optional_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|value| {
                value
                    .as_f64()
                    .ok_or_else(|| self.wrong_type(key, value, "a number"))
            })
            .transpose()
    }

    pub fn optional_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|value| {
                value
                    .as_bool()
                    .ok_or_else(|| self.wrong_type(key, value, "a bool"))
            })
            .transpose()
    }

    pub fn optional_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key)
            .map(|value| {
                value
                    .as_str()
                    .ok_or_else(|| self.wrong_type(key, value, "a string"))
            })
            .transpose()
    }

    /// A metadata array of strings (`tokenizer.ggml.tokens`, `tokenizer.ggml.merges`).
    pub fn optional_string_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let items = value
            .as_array()
            .ok_or_else(|| self.wrong_type(key, value, "an array of strings"))?;
        items
            .iter()
            .map(|item| {
                item.as_str()
                    .ok_or_else(|| self.wrong_type(key, item, "an array of strings"))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// A metadata array of integers (`tokenizer.ggml.token_type`).
    pub fn optional_int_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let items = value
            .as_array()
            .ok_or_else(|| self.wrong_type(key, value, "an array of integers"))?;
        items
            .iter()
            .map(|item| {
                item.as_i64()
                    .ok_or_else(|| self.wrong_type(key, item, "an array of integers"))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn wrong_type(&self, key: &str, value: &MetadataValue, expected: &str) -> Error {
        self.error(format!(
            "metadata key `{key}` holds a {}, expected {expected}",
            value.type_name()
        ))
    }

    /// Tensor infos in file order.
    pub fn tensor_infos(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|info| info.name == name)
    }

    /// The raw (possibly quantised) bytes of a tensor.
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> Result<&[u8]> {
        let size = info
            .size_in_bytes()
            .ok_or_else(|| self.unsupported_type(info))?;
        let start = self.data_offset + info.offset as usize;
        // Bounds were checked at open.
        Ok(&self.mmap[start..start + size])
    }

    fn unsupported_type(&self, info: &GgufTensorInfo) -> Error {
        self.error(format!(
            "tensor `{}` has type {}, which this reader cannot dequantise \
             (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)",
            info.name, info.ggml_type
        ))
    }

    /// The tensor's values as f32, in GGUF element order (which is row-major in the reversed dims).
    pub fn dequantize(&self, info: &GgufTensorInfo) -> Result<Vec<f32>> {
        if !info.ggml_type.can_dequantize() {
            return Err(self.unsupported_type(info));
        }
        let bytes = self.tensor_bytes(info)?;
        let mut out = vec![0f32; info.num_elements()];
        dequantize_into(info.ggml_type, bytes, &mut out);
        Ok(out)
    }
}

fn gguf_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Gguf {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

struct Header {
    version: u32,
    metadata: BTreeMap<String, MetadataValue>,
    tensors: Vec<GgufTensorInfo>,
    data_offset: usize,
    alignment: u64,
}

/// A bounds-checked little-endian reader over the file bytes.
struct ByteReader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> ByteReader<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let end = self
            .position
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        match end {
            Some(end) => {
                let slice = &self.bytes[self.position..end];
                self.position = end;
                Ok(slice)
            }
            None => Err(format!(
                "truncated file: reading {what} needs {n} bytes at offset {}, but the file has {} bytes",
                self.position,
                self.bytes.len()
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .map_err(|_| format!("{what}: string length {len} is too large"))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
    }

    /// A count that promises at least `min_item_bytes` per item: refuse counts that cannot
    /// fit in what is left of the file rather than trying to allocate them.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> std::result::Result<usize, String> {
        let count = self.u64(what)?;
        let remaining = (self.bytes.len() - self.position) as u64;
        if count.saturating_mul(min_item_bytes as u64) > remaining {
            return Err(format!(
                "truncated file: {what} is {count}, more than the {remaining} remaining bytes can hold"
            ));
        }
        Ok(count as usize)
    }

    fn value(&mut self, value_type: u32, key: &str) -> std::result::Result<MetadataValue, String> {
        let what = &format!("metadata value of `{key}`");
        Ok(match value_type {
            0 => MetadataValue::U8(self.array::<1>(what)?[0]),
            1 => MetadataValue::I8(self.array::<1>(what)?[0] as i8),
            2 => MetadataValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetadataValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetadataValue::U32(self.u32(what)?),
            5 => MetadataValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetadataValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => MetadataValue::Bool(false),
                1 => MetadataValue::Bool(true),
                other => return Err(format!("metadata key `{key}`: invalid bool byte {other}")),
            },
            8 => MetadataValue::String(self.string(what)?),
            9 => {
                let element_type = self.u32(what)?;
                if element_type == 9 {
                    // Nested arrays are legal GGUF but no Llama file uses them.
                    let count = self.count(what, 12)?;
                    let mut items = Vec::with_capacity(count);
                    for _ in 0..count {
                        let inner_type = self.u32(what)?;
                        items.push(self.value_array(inner_type, key)?);
                    }
                    MetadataValue::Array(items)
                } else {
                    self.value_array(element_type, key)?
                }
            }
            10 => MetadataValue::U64(self.u64(what)?),
            11 => MetadataValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetadataValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(format!(
                    "metadata key `{key}` has unknown value type {other}"
                ));
            }
        })
    }

    fn value_array(
        &mut self,
        element_type: u32,
        key: &str,
    ) -> std::result::Result<MetadataValue, String> {
        let min_size = match element_type {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            other => {
                return Err(format!(
                    "metadata key `{key}`: array of unknown value type {other}"
                ));
            }
        };
        let count = self.count(&format!("array length of `{key}`"), min_size)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(self.value(element_type, key)?);
        }
        Ok(MetadataValue::Array(items))
    }
}

fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    let mut reader = ByteReader { bytes, position: 0 };
    let magic = reader.array::<4>("the magic number")?;
    if &magic != GGUF_MAGIC {
        return Err(format!(
            "bad magic {:?} (expected \"GGUF\"): not a GGUF file",
            String::from_utf8_lossy(&magic)
        ));
    }
    let version = reader.u32("the version")?;
    if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
        return Err("big-endian GGUF files are not supported".into());
    }
    if !(2..=3).contains(&version) {
        return Err(format!(
            "unsupported GGUF version {version} (supported: 2, 3)"
        ));
    }
    // A tensor info is at least 8 (name length) + 4 + 4 + 8 bytes; a key/value at least 8 + 4 + 1.
    let tensor_count = reader.count("the tensor count", 24)?;
    let kv_count = reader.count("the metadata count", 13)?;

    let mut metadata = BTreeMap::new();
    for index in 0..kv_count {
        let key = reader.string(&format!("metadata key #{index}"))?;
        let value_type = reader.u32(&format!("value type of `{key}`"))?;
        let value = reader.value(value_type, &key)?;
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(value) => match value.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(format!(
                    "general.alignment must be a power of two, got {value:?}"
                ));
            }
        },
    };

    let mut tensors = Vec::with_capacity(tensor_count);
    for index in 0..tensor_count {
        let name = reader.string(&format!("name of tensor #{index}"))?;
        let n_dims = reader.u32(&format!("dimension count of tensor `{name}`"))?;
        if n_dims > 4 {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (GGUF allows at most 4)"
            ));
        }
        let dims = (0..n_dims)
            .map(|_| reader.u64(&format!("dims of tensor `{name}`")))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .is_none()
        {
            return Err(format!("tensor `{name}` dims {dims:?} overflow"));
        }
        let ggml_type = GgmlType::from_id(reader.u32(&format!("type of tensor `{name}`"))?);
        let offset = reader.u64(&format!("offset of tensor `{name}`"))?;
        tensors.push(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    let data_offset = (reader.position as u64).div_ceil(alignment) * alignment;
    Ok(Header {
        version,
        metadata,
        tensors,
        data_offset: data_offset as usize,
        alignment,
    })
}

// ---------------------------------------------------------------------------------------------
// Dequantisation. Formats follow ggml-quants.c (`dequantize_row_*`).

fn read_f16(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Dequantises whole blocks of `ggml_type` from `bytes` into `out`, in parallel over chunks of blocks.
fn dequantize_into(ggml_type: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (block_elements, block_bytes) = ggml_type.block_layout().expect("known type");
    // Chunks of about 64K elements: big enough to amortise rayon, small enough to balance.
    let blocks_per_chunk = (65_536 / block_elements).max(1);
    out.par_chunks_mut(blocks_per_chunk * block_elements)
        .zip(bytes.par_chunks(blocks_per_chunk * block_bytes))
        .for_each(|(out, bytes)| {
            for (y, block) in out
                .chunks_exact_mut(block_elements)
                .zip(bytes.chunks_exact(block_bytes))
            {
                dequantize_block(ggml_type, block, y);
            }
        });
}

fn dequantize_block(ggml_type: GgmlType, block: &[u8], y: &mut [f32]) {
    match ggml_type {
        GgmlType::F32 => y[0] = f32::from_le_bytes([block[0], block[1], block[2], block[3]]),
        GgmlType::F16 => y[0] = read_f16(block, 0),
        GgmlType::BF16 => y[0] = half::bf16::from_le_bytes([block[0], block[1]]).to_f32(),
        GgmlType::Q8_0 => {
            let d = read_f16(block, 0);
            for (y, &q) in y.iter_mut().zip(&block[2..34]) {
                *y = f32::from(q as i8) * d;
            }
        }
        GgmlType::Q4_0 => {
            let d = read_f16(block, 0);
            let qs = &block[2..18];
            for (j, &q) in qs.iter().enumerate() {
                y[j] = (i32::from(q & 0x0F) - 8) as f32 * d;
                y[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
            }
        }
        GgmlType::Q4_1 => {
            let d = read_f16(block, 0);
            let m = read_f16(block, 2);
            let qs = &block[4..20];
            for (j, &q) in qs.iter().enumerate() {
                y[j] = f32::from(q & 0x0F) * d + m;
                y[j + 16] = f32::from(q >> 4) * d + m;
            }
        }
        GgmlType::Q4_K => dequantize_q4_k(block, y),
        GgmlType::Q6_K => dequantize_q6_k(block, y),
        other => unreachable!("dequantize_block called for {other}"),
    }
}

/// The 6-bit scale and min of sub-block `j` packed in Q4_K's 12 scale bytes.
fn q4_k_scale_min(j: usize, scales: &[u8]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// block_q4_K: f16 d, f16 dmin, u8 scales[12], u8 qs[128]; 8 sub-blocks of 32.
fn dequantize_q4_k(block: &[u8], y: &mut [f32]) {
    let d = read_f16(block, 0);
    let dmin = read_f16(block, 2);
    let scales = &block[4..16];
    let qs = &block[16..144];
    for chunk in 0..4 {
        let (sc1, m1) = q4_k_scale_min(2 * chunk, scales);
        let (sc2, m2) = q4_k_scale_min(2 * chunk + 1, scales);
        let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, min2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let q = &qs[chunk * 32..chunk * 32 + 32];
        let out = &mut y[chunk * 64..chunk * 64 + 64];
        for l in 0..32 {
            out[l] = d1 * f32::from(q[l] & 0x0F) - min1;
            out[l + 32] = d2 * f32::from(q[l] >> 4) - min2;
        }
    }
}

/// block_q6_K: u8 ql[128], u8 qh[64], i8 scales[16], f16 d; 16 sub-blocks of 16.
fn dequantize_q6_k(block: &[u8], y: &mut [f32]) {
    let d = read_f16(block, 208);
    for half_block in 0..2 {
        let ql = &block[half_block * 64..half_block * 64 + 64];
        let qh = &block[128 + half_block * 32..128 + half_block * 32 + 32];
        let sc = &block[192 + half_block * 8..192 + half_block * 8 + 8];
        let out = &mut y[half_block * 128..half_block * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * f32::from(sc[is] as i8) * q1 as f32;
            out[l + 32] = d * f32::from(sc[is + 2] as i8) * q2 as f32;
            out[l + 64] = d * f32::from(sc[is + 4] as i8) * q3 as f32;
            out[l + 96] = d * f32::from(sc[is + 6] as i8) * q4 as f32;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Llama view: HF names, HF layout, HF config.

/// What an HF tensor needs beyond dequantisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowOrder {
    AsStored,
    /// llama.cpp interleaved the two rotary halves of each head; undo it with this many heads.
    UnpermuteRotary {
        heads: usize,
    },
}

#[derive(Debug, Clone)]
struct MappedTensor {
    gguf_index: usize,
    row_order: RowOrder,
}

/// A llama.cpp Llama GGUF seen as an HF model: [`LlamaConfig`], HF-named f32 tensors in HF
/// layout (Q/K permutation undone), and the tokenizer and chat template from the metadata.
#[derive(Debug)]
pub struct GgufModel {
    file: GgufFile,
    config: LlamaConfig,
    /// HF name -> how to produce it, in a stable (HF) order.
    tensors: BTreeMap<String, MappedTensor>,
}

/// HF name for a llama.cpp tensor name, or `None` when it has no HF counterpart.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    let top = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = top {
        return Some(name.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf_suffix = match suffix {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_suffix}"))
}

/// Reorders the rows of a `[rows, columns]` matrix from llama.cpp's rotary layout back to HF's.
///
/// convert_hf_to_gguf.py's `permute` reshapes W to (heads, 2, head_dim/2, columns) and swaps
/// axes 1 and 2, so stored row `h*d + j*2 + i` is HF row `h*d + i*(d/2) + j`.
pub fn unpermute_rotary_rows(
    values: &[f32],
    rows: usize,
    columns: usize,
    heads: usize,
) -> Vec<f32> {
    assert_eq!(values.len(), rows * columns);
    assert_eq!(
        rows % (2 * heads),
        0,
        "rows must split into heads of even size"
    );
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for j in 0..half {
            for i in 0..2 {
                let stored = h * head_dim + j * 2 + i;
                let hf = h * head_dim + i * half + j;
                out[hf * columns..(hf + 1) * columns]
                    .copy_from_slice(&values[stored * columns..(stored + 1) * columns]);
            }
        }
    }
    out
}

impl GgufModel {
    /// Opens a Llama GGUF and builds its config; fails (naming the file and key or tensor) when
    /// the architecture is not `llama`, a required key is missing, or a tensor has no HF name.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let file = GgufFile::open(path.as_ref())?;
        let arch = file.require_str("general.architecture")?;
        if arch != "llama" {
            return Err(file.error(format!(
                "general.architecture is `{arch}`; only `llama` is supported"
            )));
        }
        let mut config = config_from_metadata(&file)?;

        let mut tensors = BTreeMap::new();
        let mut has_output = false;
        for (index, info) in file.tensor_infos().iter().enumerate() {
            if info.name == "rope_freqs.weight" {
                // Llama 3.1's rope scaling, stored as per-frequency divisors: read into the config.
                config.rope_scaling = Some(llama3_rope_scaling(&file, info)?);
                continue;
            }
            let hf_name = hf_tensor_name(&info.name).ok_or_else(|| {
                file.error(format!("tensor `{}` has no HF Llama equivalent", info.name))
            })?;
            let row_order = if hf_name.ends_with("q_proj.weight") {
                RowOrder::UnpermuteRotary {
                    heads: config.num_attention_heads,
                }
            } else if hf_name.ends_with("k_proj.weight") {
                RowOrder::UnpermuteRotary {
                    heads: config.num_kv_heads(),
                }
            } else {
                RowOrder::AsStored
            };
            has_output |= hf_name == "lm_head.weight";
            tensors.insert(
                hf_name,
                MappedTensor {
                    gguf_index: index,
                    row_order,
                },
            );
        }
        config.tie_word_embeddings = !has_output;
        config.validate().map_err(|message| {
            file.error(format!("metadata gives an invalid config: {message}"))
        })?;
        let model = GgufModel {
            file,
            config,
            tensors,
        };
        model.check_shapes()?;
        Ok(model)
    }

    /// Every tensor's shape against the config, so a mislabelled file fails at open.
    fn check_shapes(&self) -> Result<()> {
        let c = &self.config;
        let (hidden, head_dim) = (c.hidden_size, c.head_dim());
        let mut expected: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        expected.insert(
            "model.embed_tokens.weight".into(),
            vec![c.vocab_size, hidden],
        );
        expected.insert("model.norm.weight".into(), vec![hidden]);
        if !c.tie_word_embeddings {
            expected.insert("lm_head.weight".into(), vec![c.vocab_size, hidden]);
        }
        for layer in 0..c.num_hidden_layers {
            let p = format!("model.layers.{layer}.");
            let q_rows = c.num_attention_heads * head_dim;
            let kv_rows = c.num_kv_heads() * head_dim;
            for (name, shape) in [
                ("self_attn.q_proj.weight", vec![q_rows, hidden]),
                ("self_attn.k_proj.weight", vec![kv_rows, hidden]),
                ("self_attn.v_proj.weight", vec![kv_rows, hidden]),
                ("self_attn.o_proj.weight", vec![hidden, q_rows]),
                ("mlp.gate_proj.weight", vec![c.intermediate_size, hidden]),
                ("mlp.up_proj.weight", vec![c.intermediate_size, hidden]),
                ("mlp.down_proj.weight", vec![hidden, c.intermediate_size]),
                ("input_layernorm.weight", vec![hidden]),
                ("post_attention_layernorm.weight", vec![hidden]),
            ] {
                expected.insert(format!("{p}{name}"), shape);
            }
        }
        for (name, shape) in &expected {
            let mapped = self
                .tensors
                .get(name)
                .ok_or_else(|| self.file.error(format!("tensor for `{name}` is missing")))?;
            let actual = self.file.tensor_infos()[mapped.gguf_index].shape();
            if &actual != shape {
                return Err(Error::ShapeMismatch {
                    name: name.clone(),
                    expected: shape.clone(),
                    actual,
                });
            }
        }
        if let Some(extra) = self
            .tensors
            .keys()
            .find(|name| !expected.contains_key(*name))
        {
            return Err(self.file.error(format!(
                "tensor `{extra}` is beyond what the config's {} layers use",
                c.num_hidden_layers
            )));
        }
        Ok(())
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The HF config implied by the `llama.*` and `tokenizer.ggml.*` metadata.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// `tokenizer.chat_template`, if the file has one.
    pub fn chat_template(&self) -> Result<Option<&str>> {
        self.file.optional_str("tokenizer.chat_template")
    }

    /// `tokenizer.ggml.tokens`: the vocabulary, index = token id.
    pub fn tokens(&self) -> Result<Vec<&str>> {
        self.file
            .optional_string_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| {
                self.file
                    .error("missing metadata key `tokenizer.ggml.tokens`".into())
            })
    }

    /// `tokenizer.ggml.merges` (BPE merges as "left right"); empty when absent.
    pub fn merges(&self) -> Result<Vec<&str>> {
        Ok(self
            .file
            .optional_string_array("tokenizer.ggml.merges")?
            .unwrap_or_default())
    }

    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    pub fn token_types(&self) -> Result<Option<Vec<i64>>> {
        self.file.optional_int_array("tokenizer.ggml.token_type")
    }

    /// The tensor under its HF name, dequantised to f32, Q/K permutation undone.
    fn load(&self, name: &str) -> Result<Vec<f32>> {
        let mapped = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            source_description: self.file.path().display().to_string(),
        })?;
        let info = &self.file.tensor_infos()[mapped.gguf_index];
        let values = self.file.dequantize(info)?;
        Ok(match mapped.row_order {
            RowOrder::AsStored => values,
            RowOrder::UnpermuteRotary { heads } => {
                let shape = info.shape();
                unpermute_rotary_rows(&values, shape[0], shape[1], heads)
            }
        })
    }
}

impl TensorSource for GgufModel {
    fn tensor_names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn tensor(&self, name: &str) -> Result<HostTensor<'_>> {
        let values = self.load(name)?;
        let info = &self.file.tensor_infos()[self.tensors[name].gguf_index];
        Ok(HostTensor {
            shape: info.shape(),
            dtype: HostDType::F32,
            bytes: Cow::Owned(bytemuck::cast_slice(&values).to_vec()),
        })
    }
}

fn config_from_metadata(file: &GgufFile) -> Result<LlamaConfig> {
    let key = |name: &str| format!("llama.{name}");
    let usize_key = |name: &str| -> Result<usize> { Ok(file.require_u64(&key(name))? as usize) };
    let num_attention_heads = usize_key("attention.head_count")?;
    let hidden_size = usize_key("embedding_length")?;
    let vocab_size = match file.optional_u64(&key("vocab_size"))? {
        Some(v) => v as usize,
        None => file
            .optional_string_array("tokenizer.ggml.tokens")?
            .map(|tokens| tokens.len())
            .ok_or_else(|| {
                file.error(
                    "missing metadata key `llama.vocab_size` (and no tokenizer.ggml.tokens)".into(),
                )
            })?,
    };
    let head_dim = file
        .optional_u64(&key("attention.key_length"))?
        .map(|d| d as usize)
        .filter(|&d| d != hidden_size / num_attention_heads);
    let rope_scaling = match file.optional_str(&key("rope.scaling.type"))? {
        None | Some("none") => None,
        Some(kind) => Some(RopeScaling {
            rope_type: kind.to_string(),
            factor: file
                .optional_f64(&key("rope.scaling.factor"))?
                .ok_or_else(|| {
                    file.error("missing metadata key `llama.rope.scaling.factor`".into())
                })?,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: file
                .optional_u64(&key("rope.scaling.original_context_length"))?
                .map_or(8192, |v| v as usize),
        }),
    };
    let token_id = |name: &str| -> Result<Option<u32>> {
        Ok(file
            .optional_u64(&format!("tokenizer.ggml.{name}"))?
            .map(|v| v as u32))
    };
    Ok(LlamaConfig {
        vocab_size,
        hidden_size,
        intermediate_size: usize_key("feed_forward_length")?,
        num_hidden_layers: usize_key("block_count")?,
        num_attention_heads,
        num_key_value_heads: Some(
            file.optional_u64(&key("attention.head_count_kv"))?
                .map_or(num_attention_heads, |v| v as usize),
        ),
        head_dim,
        // Stored as f32: round to the shortest decimal that gives the same f32 (1e-5, not 9.99999974e-6).
        rms_norm_eps: shortest_f32(
            file.optional_f64(&key("attention.layer_norm_rms_epsilon"))?
                .ok_or_else(|| {
                    file.error(
                        "missing metadata key `llama.attention.layer_norm_rms_epsilon`".into(),
                    )
                })?,
        ),
        rope_theta: shortest_f32(
            file.optional_f64(&key("rope.freq_base"))?
                .unwrap_or(10_000.0),
        ),
        rope_scaling,
        max_position_embeddings: usize_key("context_length")?,
        tie_word_embeddings: false,
        bos_token_id: token_id("bos_token_id")?,
        eos_token_id: token_id("eos_token_id")?.map(EosTokenId::One),
        pad_token_id: token_id("padding_token_id")?,
        torch_dtype: None,
    })
}

/// `value` (read from an f32) as the f64 of its shortest round-tripping f32 decimal.
fn shortest_f32(value: f64) -> f64 {
    (value as f32)
        .to_string()
        .parse()
        .expect("f32 display parses")
}

/// Llama 3.1 RoPE scaling from the `rope_freqs.weight` divisors: the largest divisor is the factor;
/// the remaining parameters are those Llama 3.1 uses (and llama.cpp assumes).
fn llama3_rope_scaling(file: &GgufFile, info: &GgufTensorInfo) -> Result<RopeScaling> {
    let divisors = file.dequantize(info)?;
    let factor = divisors.iter().copied().fold(1.0f32, f32::max);
    Ok(RopeScaling {
        rope_type: "llama3".into(),
        factor: shortest_f32(factor.into()),
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: file
            .optional_u64("llama.rope.scaling.original_context_length")?
            .map_or(8192, |v| v as usize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // Forward permute as convert_hf_to_gguf.py writes it, on a tiny [heads*d, cols] matrix.
        let (heads, head_dim, cols) = (3, 4, 2);
        let rows = heads * head_dim;
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut stored = vec![0f32; hf.len()];
        for h in 0..heads {
            for i in 0..2 {
                for j in 0..head_dim / 2 {
                    let src = h * head_dim + i * (head_dim / 2) + j;
                    let dst = h * head_dim + j * 2 + i;
                    stored[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(stored, hf);
        assert_eq!(unpermute_rotary_rows(&stored, rows, cols, heads), hf);
    }

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_tensor_name("blk.12.attn_output.weight").unwrap(),
            "model.layers.12.self_attn.o_proj.weight"
        );
        assert_eq!(
            hf_tensor_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(hf_tensor_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_tensor_name("blk.0.attn_q_norm.weight"), None);
    }

    #[test]
    fn q4_k_scale_unpacking_matches_ggml() {
        // Sub-blocks 4..8 take their high bits from the top two bits of bytes 0..8.
        let scales = [
            0xC1, 0x02, 0x03, 0x04, 0x45, 0x06, 0x07, 0x08, 0x9A, 0x0B, 0x0C, 0x0D,
        ];
        assert_eq!(q4_k_scale_min(0, &scales), (0x01, 0x05));
        assert_eq!(
            q4_k_scale_min(4, &scales),
            (0x0A | (3 << 4), 0x09 | (1 << 4))
        );
    }
}
