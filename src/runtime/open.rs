//! Opening an adapter and a device for a [`Runtime`].

use crate::error::{Error, Result};
use crate::gate;
use crate::plan::dispatch;
use crate::runtime::Runtime;

/// Optional features this crate uses when the adapter has them: subgroups (reductions and
/// the cooperative-matrix kernel), f16 arithmetic (the cooperative-matrix kernel), and a
/// driver pipeline cache ([`Context::use_pipeline_cache`](crate::Context::use_pipeline_cache)).
pub const OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::SUBGROUP
    .union(wgpu::Features::SHADER_F16)
    .union(wgpu::Features::PIPELINE_CACHE);

pub(crate) fn backends_from_env() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())
}

/// Opens the adapter wgpu's environment variables choose (`WGPU_ADAPTER_NAME`,
/// `WGPU_POWER_PREF`) on `backends`, and a device on it with the adapter's full limits and
/// [`OPTIONAL_FEATURES`] (and `extra` features where the adapter has them), cooperative
/// matrices with `experimental`.
// The adapter is dropped explicitly, under the gate (native GL objects must be); on the web
// wgpu's adapter has no drop glue, which clippy reports there.
#[cfg_attr(target_arch = "wasm32", allow(clippy::drop_non_drop))]
pub(crate) async fn open(
    backends: wgpu::Backends,
    experimental: bool,
    checks: Option<wgpu::ShaderRuntimeChecks>,
    extra: wgpu::Features,
) -> Result<Runtime> {
    let (instance, gate) = gate::shared_instance(backends);
    // The instance's GL adapters share one EGL context: creating one makes that context
    // current on this thread, which must not happen while another context of this instance
    // works on it. wgpu does this work when each call is made (the futures come back ready),
    // so the gate is held for the calls and released before each await.
    let held = || gate::hold(Some(&gate));
    let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
        Ok(name) => {
            let name = name.to_lowercase();
            let adapters = {
                let _held = held();
                instance.enumerate_adapters(backends)
            }
            .await;
            let _held = held();
            let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
            adapters
                .into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&name))
                .ok_or_else(|| {
                    Error::device_msg(
                        "choosing an adapter",
                        format!("WGPU_ADAPTER_NAME={name:?} matches none of {names:?}"),
                    )
                })?
        }
        Err(_) => {
            let _held = held();
            instance.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::from_env().unwrap_or_default(),
                compatible_surface: None,
                ..Default::default()
            })
        }
        .await
        .map_err(|e| Error::device(format!("requesting a wgpu adapter on {backends:?}"), e))?,
    };
    let mut features = adapter.features() & (OPTIONAL_FEATURES | extra);
    let coop = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
    let coop_props = adapter.cooperative_matrix_properties();
    if experimental && adapter.features().contains(coop) && dispatch::coop_fragment(&coop_props) > 0
    {
        features |= coop;
    }
    let requested = {
        let _held = held();
        adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgpu-attention"),
            required_features: features,
            required_limits: adapter.limits(),
            experimental_features: if features.contains(coop) {
                // SAFETY: the caller of `new_experimental` accepted wgpu's experimental features.
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        })
    }
    .await;
    let _held = held();
    let (device, queue) = match requested {
        Ok(x) => x,
        Err(e) => {
            drop(adapter); // under the gate, like every GL object
            return Err(Error::device("requesting a wgpu device", e));
        }
    };
    let info = adapter.get_info();
    let rt_gate = (info.backend == wgpu::Backend::Gl)
        .then(|| gate::device_gate_or(&device, Some(gate.clone())));
    let rt = Runtime::new(device, queue, &info, checks, rt_gate, &coop_props);
    drop(adapter);
    Ok(rt)
}
