//! Data-parallel training: one process per GPU, NCCL all-reduce of the adapters' gradients.
//!
//! Every rank holds the whole model and the same adapters, runs the same schedule and reads
//! the same token cache; an optimiser step's micro-batches (W × `gradient_accumulation_steps`
//! of them on W ranks) are dealt out round-robin, every rank divides its loss by the step's
//! total target tokens (known to all: batch order is a function of the seed), and the summed
//! gradients are what one process would have accumulated. Clipping and AdamW then run
//! identically everywhere, so the adapters never diverge and only rank 0 writes files.
//!
//! Processes find each other through torchrun's variables — `RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` — so the same binary runs under [`launch`] (one
//! host) or any launcher that sets them (several hosts: docs/architecture.md). Rank 0 makes
//! the NCCL id and serves it over TCP at `MASTER_ADDR:MASTER_PORT`; NCCL then makes its own
//! connections.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

#[cfg(feature = "tch")]
use llama::burn::tensor::TensorData;
use llama::burn::tensor::{Device, Tensor};

use crate::{Error, Result};

/// This process's place in a data-parallel group (a group of one without `WORLD_SIZE`).
#[derive(Debug)]
pub struct Group {
    rank: usize,
    world_size: usize,
    #[cfg(feature = "tch")]
    communicator: Option<llama::nccl::Communicator>,
}

impl Group {
    /// A group of one: nothing to exchange.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            #[cfg(feature = "tch")]
            communicator: None,
        }
    }

    /// The group the environment describes (torchrun's variables), joined on `device`; a group
    /// of one when `WORLD_SIZE` is unset or 1.
    pub fn from_env(device: &Device) -> Result<Self> {
        let Some(world) = Rendezvous::from_env()? else {
            return Ok(Self::single());
        };
        Self::join(&world, device)
    }

    #[cfg(feature = "tch")]
    fn join(world: &Rendezvous, device: &Device) -> Result<Self> {
        let id = world.exchange_id()?;
        let communicator =
            llama::nccl::Communicator::join(&id, world.world_size, world.rank, device)?;
        Ok(Self {
            rank: world.rank,
            world_size: world.world_size,
            communicator: Some(communicator),
        })
    }

    #[cfg(not(feature = "tch"))]
    fn join(world: &Rendezvous, _device: &Device) -> Result<Self> {
        Err(Error::InvalidConfig(format!(
            "WORLD_SIZE={} asks for data-parallel training, which needs NCCL: build with the \
             `tch` feature (cargo xtask gpu-build)",
            world.world_size
        )))
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Rank 0: the one process that writes metrics, checkpoints and reports.
    pub fn is_writer(&self) -> bool {
        self.rank == 0
    }

    /// This rank's share of a step's micro-batches: items `rank`, `rank + W`, `rank + 2W`, …
    pub fn share<T: Clone>(&self, items: &[T]) -> Vec<T> {
        items
            .iter()
            .skip(self.rank)
            .step_by(self.world_size)
            .cloned()
            .collect()
    }

    /// Returns once every rank has called it (an all-reduce of one number): rank 0 builds
    /// what the others then read, such as the token cache.
    pub fn barrier(&self) {
        #[cfg(feature = "tch")]
        if let Some(communicator) = &self.communicator {
            let device = communicator.device().clone().inner();
            self.all_reduce_sum(Tensor::zeros([0], &device), &[0.0]);
        }
    }

    /// The element-wise sums over all ranks of `flat` (f32, the same length on every rank) and
    /// of `scalars`, in one all-reduce.
    pub fn all_reduce_sum(&self, flat: Tensor<1>, scalars: &[f64]) -> (Tensor<1>, Vec<f64>) {
        #[cfg(feature = "tch")]
        if let Some(communicator) = &self.communicator {
            let length = flat.dims()[0];
            let values: Vec<f32> = scalars.iter().map(|&v| v as f32).collect();
            let scalars_tensor =
                Tensor::from_data(TensorData::new(values, [scalars.len()]), &flat.device());
            let summed = communicator.all_reduce_sum(Tensor::cat(vec![flat, scalars_tensor], 0));
            let scalars = summed
                .clone()
                .slice(length..length + scalars.len())
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 scalars")
                .into_iter()
                .map(f64::from)
                .collect();
            return (summed.slice(0..length), scalars);
        }
        (flat, scalars.to_vec())
    }
}

/// Where the ranks meet: torchrun's variables.
#[derive(Debug, Clone, PartialEq)]
struct Rendezvous {
    rank: usize,
    world_size: usize,
    address: String,
}

impl Rendezvous {
    fn from_env() -> Result<Option<Self>> {
        let var = |name: &str| std::env::var(name).ok();
        let number = |name: &str, value: String| {
            value.parse::<usize>().map_err(|_| {
                Error::InvalidConfig(format!("{name}={value:?} is not a non-negative integer"))
            })
        };
        let world_size = match var("WORLD_SIZE") {
            None => return Ok(None),
            Some(value) => number("WORLD_SIZE", value)?,
        };
        if world_size <= 1 {
            return Ok(None);
        }
        let missing = |name: &str| {
            Error::InvalidConfig(format!(
                "WORLD_SIZE={world_size} is set but {name} is not (set RANK, MASTER_ADDR and \
                 MASTER_PORT as torchrun does)"
            ))
        };
        let rank = number("RANK", var("RANK").ok_or_else(|| missing("RANK"))?)?;
        if rank >= world_size {
            return Err(Error::InvalidConfig(format!(
                "RANK={rank} is outside WORLD_SIZE={world_size}"
            )));
        }
        let host = var("MASTER_ADDR").ok_or_else(|| missing("MASTER_ADDR"))?;
        let port = var("MASTER_PORT").ok_or_else(|| missing("MASTER_PORT"))?;
        Ok(Some(Self {
            rank,
            world_size,
            address: format!("{host}:{port}"),
        }))
    }

    /// Rank 0 makes the NCCL id and sends it to every other rank; the others fetch it.
    #[cfg(feature = "tch")]
    fn exchange_id(&self) -> Result<llama::nccl::NcclId> {
        if self.rank == 0 {
            let id = llama::nccl::unique_id()?;
            serve_bytes(&self.address, &id, self.world_size - 1)?;
            Ok(id)
        } else {
            let bytes = fetch_bytes(&self.address, 128)?;
            Ok(bytes.try_into().expect("128 bytes"))
        }
    }
}

const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);

fn network_error(address: &str, what: &str, error: std::io::Error) -> Error {
    Error::InvalidConfig(format!("rendezvous at {address}: {what}: {error}"))
}

/// Sends `bytes` to each of `peers` connections on `address`.
#[cfg_attr(not(feature = "tch"), allow(dead_code))]
fn serve_bytes(address: &str, bytes: &[u8], peers: usize) -> Result<()> {
    let listener =
        TcpListener::bind(address).map_err(|e| network_error(address, "listening", e))?;
    for _ in 0..peers {
        let (mut stream, _) = listener
            .accept()
            .map_err(|e| network_error(address, "accepting a rank", e))?;
        stream
            .write_all(bytes)
            .map_err(|e| network_error(address, "sending the id", e))?;
    }
    Ok(())
}

/// Connects to `address` (retrying while rank 0 starts) and reads `len` bytes.
#[cfg_attr(not(feature = "tch"), allow(dead_code))]
fn fetch_bytes(address: &str, len: usize) -> Result<Vec<u8>> {
    let started = Instant::now();
    let mut stream = loop {
        match TcpStream::connect(address) {
            Ok(stream) => break stream,
            Err(error) if started.elapsed() < RENDEZVOUS_TIMEOUT => {
                tracing::debug!("waiting for rank 0 at {address}: {error}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => return Err(network_error(address, "connecting to rank 0", error)),
        }
    };
    let mut bytes = vec![0u8; len];
    stream
        .read_exact(&mut bytes)
        .map_err(|e| network_error(address, "reading the id", e))?;
    Ok(bytes)
}

/// `cuda` → `cuda:LOCAL_RANK` under a launcher (one GPU per process); anything else unchanged.
pub fn rank_device(spec: &str) -> String {
    match std::env::var("LOCAL_RANK") {
        Ok(local) if spec == "cuda" => format!("cuda:{local}"),
        _ => spec.to_string(),
    }
}

/// Runs this executable `world_size` times on this host with torchrun's variables set (rank
/// `r` on GPU `r` through [`rank_device`]), passing `args`; waits for all, and stops the
/// others as soon as one fails. NVLink multicast stays off (`NCCL_NVLS_ENABLE=0`).
pub fn launch(world_size: usize, args: &[OsString]) -> Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::InvalidConfig(format!("locating this executable: {e}")))?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| Error::InvalidConfig(format!("finding a free port: {e}")))?
        .port();
    let mut children: Vec<Child> = Vec::with_capacity(world_size);
    for rank in 0..world_size {
        let child = Command::new(&exe)
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", world_size.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("NCCL_NVLS_ENABLE", "0")
            .spawn()
            .map_err(|e| Error::InvalidConfig(format!("starting rank {rank}: {e}")))?;
        children.push(child);
    }
    let mut failed: Option<String> = None;
    let mut running: Vec<(usize, Child)> = children.into_iter().enumerate().collect();
    while !running.is_empty() {
        let mut still = Vec::new();
        for (rank, mut child) in running {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => {
                    failed.get_or_insert(format!("rank {rank} exited with {status}"));
                }
                Ok(None) if failed.is_some() => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                Ok(None) => still.push((rank, child)),
                Err(error) => {
                    failed.get_or_insert(format!("waiting for rank {rank}: {error}"));
                }
            }
        }
        running = still;
        std::thread::sleep(Duration::from_millis(100));
    }
    match failed {
        Some(message) => Err(Error::InvalidConfig(message)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_deal_micro_batches_round_robin() {
        let items: Vec<usize> = (0..5).collect();
        let group = |rank, world_size| Group {
            rank,
            world_size,
            #[cfg(feature = "tch")]
            communicator: None,
        };
        assert_eq!(group(0, 2).share(&items), vec![0, 2, 4]);
        assert_eq!(group(1, 2).share(&items), vec![1, 3]);
        assert_eq!(group(2, 3).share(&items), vec![2]);
        assert_eq!(Group::single().share(&items), items);
        // Every item goes to exactly one rank.
        let mut all: Vec<usize> = (0..3).flat_map(|r| group(r, 3).share(&items)).collect();
        all.sort();
        assert_eq!(all, items);
    }

    #[test]
    fn a_group_of_one_sums_nothing() {
        let device = Device::default();
        let tensor = Tensor::<1>::from_data([1.0f32, 2.0, 3.0, 4.0], &device);
        let (summed, scalars) = Group::single().all_reduce_sum(tensor.clone(), &[1.5]);
        assert_eq!(summed.to_data(), tensor.to_data());
        assert_eq!(scalars, vec![1.5]);
    }

    /// The id exchange over loopback: rank 0 serves, two ranks fetch the same bytes.
    #[test]
    fn rendezvous_hands_the_same_bytes_to_every_rank() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let id: Vec<u8> = (0..128u8).collect();
        let server = {
            let (address, id) = (address.clone(), id.clone());
            std::thread::spawn(move || serve_bytes(&address, &id, 2))
        };
        let fetched: Vec<Vec<u8>> = (0..2)
            .map(|_| {
                let address = address.clone();
                std::thread::spawn(move || fetch_bytes(&address, 128).unwrap())
            })
            .map(|t| t.join().unwrap())
            .collect();
        server.join().unwrap().unwrap();
        assert!(fetched.iter().all(|bytes| *bytes == id));
    }
}
