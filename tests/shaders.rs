//! CPU-only: every shader variant the crate can build parses and validates with naga, so
//! a shader error shows up in `cargo test`, not at a user's runtime.

use wgpu_attention::dispatch::{
    COOP_MAX_HEAD_DIM, DeviceCaps, FLASH_HEAD_DIMS, Family, MEMEFF_HEAD_DIMS,
    SUBGROUP_THREADS_PER_ROW, ShaderVariant, UNROLLED_MAX_HEAD_DIM, UNROLLED_ROWS_PER_THREAD,
    coop_variant, naive_variant,
};
use wgpu_attention::pipeline::all_sources_for;
use wgpu_attention::{DType, Problem};

/// Every cooperative-matrix variant `coop_variant` can return (with tile counting on and
/// off), over fragment sizes, subgroup sizes, head dims and dtypes.
pub fn coop_variants() -> Vec<ShaderVariant> {
    let mut out = Vec::new();
    for fragment in [8, 16] {
        for sgs in [8, 32, 64] {
            let mut caps = DeviceCaps::from_limits(
                &wgpu::Limits {
                    max_compute_workgroup_storage_size: 49152,
                    max_compute_invocations_per_workgroup: 1024,
                    ..Default::default()
                },
                wgpu::Features::SUBGROUP
                    | wgpu::Features::SHADER_F16
                    | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
                sgs,
            );
            caps.coop_fragment = fragment;
            for &dk in FLASH_HEAD_DIMS.iter().filter(|&&d| d <= COOP_MAX_HEAD_DIM) {
                for dv in [32, dk] {
                    for dt in [DType::F16, DType::BF16] {
                        let p = Problem {
                            dtype_q: dt,
                            dtype_k: dt,
                            dtype_v: dt,
                            dtype_o: dt,
                            ..Problem::new(1, 1, 64, 64, dk as usize)
                        };
                        let p = Problem {
                            head_dim_v: dv as usize,
                            ..p
                        };
                        let v = coop_variant(&p, &caps)
                            .unwrap_or_else(|e| panic!("{fragment} {sgs} {dk}/{dv}: {e}"));
                        for count in [false, true] {
                            let v = ShaderVariant {
                                count_tiles: count,
                                ..v
                            };
                            if !out.contains(&v) {
                                out.push(v);
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

fn variants() -> Vec<ShaderVariant> {
    let mut v = vec![naive_variant()];
    for &dk in &FLASH_HEAD_DIMS {
        for &dv in &[32, dk] {
            for (tpr, sg) in [(1, false), (SUBGROUP_THREADS_PER_ROW, true)] {
                for (bk, rpt) in [(4, 1), (8, 2), (16, 4), (32, 1), (32, 4)] {
                    for count in [false, true] {
                        v.push(ShaderVariant {
                            family: Family::Flash,
                            head_dim_qk: dk,
                            head_dim_v: dv,
                            block_q: 64,
                            block_k: bk,
                            threads_per_row: tpr,
                            rows_per_thread: rpt,
                            subgroups: sg,
                            count_tiles: count,
                            bias: None,
                            alibi: false,
                            bool_mask: false,
                            serial_loads: false,
                            fragment: 0,
                            subgroup_size: 0,
                        });
                    }
                }
            }
        }
    }
    // The cooperative-matrix kernel as the dispatcher builds it, for both fragment sizes
    // and the subgroup sizes of lavapipe (8), NVIDIA and Apple (32) and AMD's wave64.
    v.extend(coop_variants());
    // The unrolled flash kernel, generated per variant.
    for &dk in FLASH_HEAD_DIMS
        .iter()
        .filter(|&&d| d <= UNROLLED_MAX_HEAD_DIM)
    {
        for &dv in &[32, dk] {
            for bk in [8, 16, 32] {
                let (f32, f16, bf16) = (Some(DType::F32), Some(DType::F16), Some(DType::BF16));
                for (count, bias, alibi, bool_mask, serial_loads) in [
                    (false, None, false, false, false),
                    (true, None, false, false, true),
                    (false, f32, false, false, false),
                    (false, f16, true, false, true),
                    (false, None, true, false, false),
                    (false, None, false, true, true),
                    (false, bf16, false, true, true),
                    (false, f32, true, true, false),
                    (false, None, false, true, false),
                ] {
                    v.push(ShaderVariant {
                        family: Family::FlashUnrolled,
                        head_dim_qk: dk,
                        head_dim_v: dv,
                        block_q: 64,
                        block_k: bk,
                        threads_per_row: 1,
                        rows_per_thread: UNROLLED_ROWS_PER_THREAD,
                        subgroups: false,
                        count_tiles: count,
                        bias,
                        alibi,
                        bool_mask,
                        serial_loads,
                        fragment: 0,
                        subgroup_size: 0,
                    });
                }
            }
        }
    }
    for &dk in &MEMEFF_HEAD_DIMS {
        for &dv in &MEMEFF_HEAD_DIMS {
            v.push(ShaderVariant {
                family: Family::MemoryEfficient,
                head_dim_qk: dk,
                head_dim_v: dv,
                block_q: 1,
                block_k: 64,
                threads_per_row: 64,
                rows_per_thread: 1,
                subgroups: false,
                count_tiles: false,
                bias: None,
                alibi: false,
                bool_mask: false,
                serial_loads: false,
                fragment: 0,
                subgroup_size: 0,
            });
        }
    }
    v
}

#[test]
fn every_variant_validates_with_naga() {
    let sources = all_sources_for(&variants());
    assert!(sources.len() > 100);
    for (name, src) in sources {
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
    }
}

#[test]
fn plain_variants_need_only_core_capabilities() {
    let plain: Vec<_> = variants()
        .into_iter()
        .filter(|v| !v.subgroups && v.family != Family::FlashCoop)
        .collect();
    for (name, src) in all_sources_for(&plain) {
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        // pack/unpack2x16float are core WGSL; naga files them under this capability.
        let core = naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), core)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name} needs a capability: {}", e.emit_to_string(&src)));
    }
}

/// The buffer bindings of a module's globals, as wgpu's pipeline layout would map them.
fn bindings(module: &naga::Module) -> Vec<naga::ResourceBinding> {
    module
        .global_variables
        .iter()
        .filter_map(|(_, g)| g.binding)
        .collect()
}

/// Metal and DX12 cannot run here, so every variant goes through naga's MSL and HLSL
/// backends with the options wgpu 30 gives them (explicit binding maps, no faked bindings,
/// bounds checks on): a shader either backend would reject fails `cargo test`. The
/// cooperative-matrix variants go to MSL only (simdgroup matrices, MSL 2.3 and later);
/// wgpu 30 has no cooperative matrices on DX12, where the dispatcher cannot pick them.
#[test]
fn every_variant_translates_to_msl_and_hlsl() {
    use naga::back::{hlsl, msl};
    let all = variants();
    let mut n_msl = 0;
    let mut n_hlsl = 0;
    for (v, (name, src)) in std::iter::once(None)
        .chain(all.iter().map(Some))
        .zip(all_sources_for(&all))
    {
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        let coop = v.is_some_and(|v| v.family == Family::FlashCoop);
        let validate = |caps| {
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)))
        };
        let restrict = naga::proc::BoundsCheckPolicies {
            index: naga::proc::BoundsCheckPolicy::Restrict,
            buffer: naga::proc::BoundsCheckPolicy::Restrict,
            image_load: naga::proc::BoundsCheckPolicy::Restrict,
            binding_array: naga::proc::BoundsCheckPolicy::Unchecked,
        };

        // Metal: one buffer slot per binding, plus the sizes buffer for runtime arrays.
        let info = validate(msl::supported_capabilities());
        let resources = msl::EntryPointResources {
            resources: bindings(&module)
                .into_iter()
                .map(|rb| {
                    let target = msl::BindTarget {
                        buffer: Some(rb.binding as u8),
                        mutable: true,
                        ..Default::default()
                    };
                    (rb, target)
                })
                .collect(),
            immediates_buffer: None,
            sizes_buffer: Some(24),
        };
        let options = msl::Options {
            lang_version: (2, 4),
            per_entry_point_map: module
                .entry_points
                .iter()
                .map(|ep| (ep.name.clone(), resources.clone()))
                .collect(),
            fake_missing_bindings: false,
            bounds_check_policies: restrict,
            zero_initialize_workgroup_memory: false,
            force_loop_bounding: false,
            emit_int_div_checks: false,
            ..Default::default()
        };
        msl::write_string(&module, &info, &options, &msl::PipelineOptions::default())
            .unwrap_or_else(|e| panic!("{name}: MSL: {e:?}"));
        n_msl += 1;
        if coop {
            continue;
        }

        // DX12: shader model 6 (wave intrinsics), register n in space 0 per binding.
        let info = validate(hlsl::supported_capabilities());
        let options = hlsl::Options {
            shader_model: hlsl::ShaderModel::V6_0,
            binding_map: bindings(&module)
                .into_iter()
                .map(|rb| {
                    let target = hlsl::BindTarget {
                        space: 0,
                        register: rb.binding,
                        ..Default::default()
                    };
                    (rb, target)
                })
                .collect(),
            fake_missing_bindings: false,
            zero_initialize_workgroup_memory: false,
            restrict_indexing: true,
            force_loop_bounding: false,
            ..Default::default()
        };
        let mut out = String::new();
        hlsl::Writer::new(&mut out, &options, &hlsl::PipelineOptions::default())
            .write(&module, &info, None)
            .unwrap_or_else(|e| panic!("{name}: HLSL: {e:?}"));
        n_hlsl += 1;
    }
    let n_coop = all.iter().filter(|v| v.family == Family::FlashCoop).count();
    assert!(n_coop >= 16, "{n_coop} cooperative-matrix variants");
    eprintln!("{n_msl} modules to MSL ({n_coop} cooperative-matrix), {n_hlsl} to HLSL");
}
