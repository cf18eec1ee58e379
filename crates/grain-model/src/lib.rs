//! Grain's model crate: the AVG-LLaVA / LLaVA-NeXT model in candle.
//!
//! - [`config`]: one typed config for both checkpoint layouts.
//! - [`weights`]: safetensors loading (single file or shards) with layout-independent names.
//! - [`image`]: decoding with limits, Pillow-exact bicubic resampling, AnyRes crops.
//! - [`vision`], [`llama`], [`router`]: the networks; [`granularity`]: pooling, merge, token counts.
//! - [`llava`]: the assembled model; [`kv_cache`]: paged KV storage; [`tiny`]: tiny checkpoints.

mod attention;
mod attention_blocks;
mod attention_device;
pub mod config;
#[cfg(feature = "cuda")]
mod cuda_ops;
pub mod error;
#[cfg(feature = "cuda")]
mod fused_cuda;
mod gelu_vote;
pub mod granularity;
mod host_dense;
mod host_ops;
pub mod image;
pub mod kv_cache;
mod layer_ops;
mod linear;
pub mod llama;
pub mod llava;
mod paged_device;
mod panel_gemm;
pub mod policy;
pub mod router;
mod router_attend;
mod router_cpu;
mod router_memo;
mod router_pool;
mod simd;
mod small_gemm;
mod test_util;
pub mod tiny;
pub mod vision;
mod vision_host;
pub mod weights;

pub use attention::set_prefill_query_block;
pub use candle_core::{DType, Device, Tensor};
pub use config::{Layout, LlavaConfig};
pub use error::{ModelError, Result};
pub use kv_cache::KvCache;
pub use layer_ops::set_fused_kernels;
pub use linear::set_gemv;
pub use llama::SeqChunk;
pub use llava::LlavaModel;
pub use paged_device::check::{check_fused_kernels, check_paged_kernels, FusedCase, KernelCase};
pub use paged_device::set_paged_partition;
pub use router::{RouterInput, RouterOutput};
