//! CPU-only: every shader variant the crate can build parses and validates with naga, so
//! a shader error shows up in `cargo test`, not at a user's runtime.

use wgpu_attention::DType;
use wgpu_attention::dispatch::{
    FLASH_HEAD_DIMS, Family, MEMEFF_HEAD_DIMS, SUBGROUP_THREADS_PER_ROW, ShaderVariant,
    UNROLLED_MAX_HEAD_DIM, UNROLLED_ROWS_PER_THREAD, naive_variant,
};
use wgpu_attention::pipeline::all_sources_for;

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
                        });
                    }
                }
            }
        }
    }
    for &dk in &FLASH_HEAD_DIMS[..4] {
        for count in [false, true] {
            v.push(ShaderVariant {
                family: Family::FlashCoop,
                head_dim_qk: dk,
                head_dim_v: dk,
                block_q: 64,
                block_k: 16,
                threads_per_row: 2,
                rows_per_thread: 1,
                subgroups: true,
                count_tiles: count,
                bias: None,
                alibi: false,
                bool_mask: false,
                serial_loads: false,
            });
        }
    }
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
