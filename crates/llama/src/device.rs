//! Choosing the compute device at run time (`--device cpu|cuda:N`), so model code never
//! names a backend.

use burn::tensor::{Device, FloatDType};

use crate::{Error, Result};

/// Float precision of a device's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(Error::InvalidArgument(format!(
                "unknown precision `{other}` (expected f32 or bf16)"
            ))),
        }
    }
}

/// [`select_device`] with the precision as a config file writes it (`f32`, `bf16` or absent).
pub fn select_device_named(spec: &str, precision: Option<&str>) -> Result<Device> {
    let precision = precision.map(str::parse::<Precision>).transpose()?;
    select_device(spec, precision)
}

/// Parses `cpu` or `cuda[:N]` and configures the float dtype: `precision`, or by default
/// f32 on the CPU and bf16 on a GPU. Call before creating any tensor on that device.
pub fn select_device(spec: &str, precision: Option<Precision>) -> Result<Device> {
    let (mut device, default_precision) = match spec {
        "cpu" => (Device::flex(), Precision::F32),
        cuda if cuda == "cuda" || cuda.starts_with("cuda:") => {
            (cuda_device(cuda)?, Precision::Bf16)
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "unknown device `{other}` (expected cpu, cuda or cuda:N)"
            )));
        }
    };
    let dtype = match precision.unwrap_or(default_precision) {
        Precision::F32 => FloatDType::F32,
        Precision::Bf16 => FloatDType::BF16,
    };
    // A device that already holds tensors keeps its dtype; that is only an error if it differs.
    if let Err(error) = device.configure(dtype)
        && device.settings().float_dtype != dtype
    {
        return Err(Error::InvalidArgument(format!(
            "cannot use {dtype:?} on device `{spec}`: {error:?}"
        )));
    }
    Ok(device)
}

#[cfg(feature = "tch")]
fn cuda_device(spec: &str) -> Result<Device> {
    let index = match spec.strip_prefix("cuda:") {
        None => 0,
        Some(n) => n
            .parse::<usize>()
            .map_err(|_| Error::InvalidArgument(format!("bad GPU index in `{spec}`")))?,
    };
    #[allow(deprecated)]
    // burn-tch is deprecated upstream but is the backend that reaches cuBLAS here
    Ok(Device::libtorch_cuda(index))
}

#[cfg(not(feature = "tch"))]
fn cuda_device(spec: &str) -> Result<Device> {
    Err(Error::InvalidArgument(format!(
        "device `{spec}` needs a build with the `tch` feature (see README: GPU)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selecting_the_same_device_twice_is_fine_and_a_different_precision_is_named() {
        // A process that runs several phases (the loop) selects the CPU once per phase.
        select_device("cpu", None).unwrap();
        select_device_named("cpu", Some("f32")).unwrap();
        let error = select_device("cpu", Some(Precision::Bf16))
            .unwrap_err()
            .to_string();
        assert!(error.contains("BF16") && error.contains("cpu"), "{error}");
    }
}
