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
