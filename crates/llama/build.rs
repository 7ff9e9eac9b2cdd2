//! With the `tch` feature, compiles the C++ shims over libtorch — csrc/cuda_graph.cpp (CUDA graph
//! capture and replay), csrc/cuda_memory.cpp (the caching allocator's peaks and settings),
//! csrc/fused_ops.cpp (PyTorch's fused attention and RMS-norm kernels), csrc/nccl.cpp (NCCL
//! all-reduce) and csrc/profiler.cpp (PyTorch's profiler) — against the libtorch that torch-sys
//! links (`LIBTORCH`) and the CUDA runtime headers. Without it, does nothing: the default build
//! needs neither.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "tch")]
    tch_build::compile();
}

#[cfg(feature = "tch")]
mod tch_build {
    use std::path::{Path, PathBuf};

    pub fn compile() {
        println!("cargo:rerun-if-changed=csrc/cuda_graph.cpp");
        println!("cargo:rerun-if-changed=csrc/cuda_memory.cpp");
        println!("cargo:rerun-if-changed=csrc/fused_ops.cpp");
        println!("cargo:rerun-if-changed=csrc/nccl.cpp");
        println!("cargo:rerun-if-changed=csrc/profiler.cpp");
        println!("cargo:rerun-if-changed=csrc/shim.h");
        println!("cargo:rerun-if-env-changed=LIBTORCH");
        println!("cargo:rerun-if-env-changed=TUNELOOP_CUDA_INCLUDE");
        let libtorch = PathBuf::from(
            std::env::var_os("LIBTORCH")
                .expect("the tch feature needs LIBTORCH (see `cargo xtask gpu-build`)"),
        );
        let cuda_include = cuda_include(&libtorch).unwrap_or_else(|| {
            panic!(
                "no CUDA runtime headers (cuda_runtime_api.h) found: set TUNELOOP_CUDA_INCLUDE, \
                 or install the nvidia-cuda-runtime wheel next to {} (`cargo xtask gpu-build` does)",
                libtorch.display()
            )
        });
        cc::Build::new()
            .cpp(true)
            .file("csrc/cuda_graph.cpp")
            .file("csrc/cuda_memory.cpp")
            .file("csrc/fused_ops.cpp")
            .file("csrc/nccl.cpp")
            .file("csrc/profiler.cpp")
            .include(libtorch.join("include"))
            .include(libtorch.join("include/torch/csrc/api/include"))
            .include(&cuda_include)
            .flag("-std=c++17")
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            .flag("-DGLOG_USE_GLOG_EXPORT")
            .flag_if_supported("-Wno-unused-parameter")
            .warnings(false)
            .compile("tuneloop_cuda_graph");
        println!(
            "cargo:rustc-link-search=native={}",
            libtorch.join("lib").display()
        );
        for lib in ["torch_cuda", "c10_cuda", "torch_cpu", "c10", "dl"] {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }

    /// `TUNELOOP_CUDA_INCLUDE`, else the headers of the nvidia-cuda-runtime wheel that pip
    /// installs beside torch (`site-packages/nvidia/cu13/include`).
    fn cuda_include(libtorch: &Path) -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("TUNELOOP_CUDA_INCLUDE") {
            return Some(PathBuf::from(dir));
        }
        let site = libtorch.parent()?;
        [
            "nvidia/cu13/include",
            "nvidia/cuda_runtime/include",
            "nvidia/cu12/include",
        ]
        .iter()
        .map(|relative| site.join(relative))
        .find(|dir| dir.join("cuda_runtime_api.h").exists())
    }
}
