//! CPU-only: every shader variant the crate can build parses and validates with naga, so
//! a shader error shows up in `cargo test`, not at a user's runtime.

use wgpu_attention::test_hooks::all_sources_for;
use wgpu_attention::test_hooks::{
    COOP_MAX_HEAD_DIM, CoopTile, DeviceCaps, FLASH_HEAD_DIMS, Family, FlashTile, MEMEFF_HEAD_DIMS,
    MemEffConfig, SUBGROUP_THREADS_PER_ROW, ShaderVariant, UNROLLED_MAX_HEAD_DIM,
    UNROLLED_ROWS_PER_THREAD, UnrolledTile, coop_variant, naive_variant,
};
use wgpu_attention::{DType, Problem};

/// A variant and whether it is built with the debug counters.
type Built = (ShaderVariant, bool);

/// Every cooperative-matrix variant `coop_variant` can return (with tile counting on and
/// off), over fragment sizes, subgroup sizes, head dims, dtypes and the mask code it carries.
pub fn coop_variants() -> Vec<Built> {
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
                    for (dt, dto) in [
                        (DType::F16, DType::F16),
                        (DType::BF16, DType::BF16),
                        (DType::BF16, DType::F32),
                    ] {
                        let p = Problem {
                            dtype_q: dt,
                            dtype_k: dt,
                            dtype_v: dt,
                            dtype_o: dto,
                            ..Problem::new(1, 1, 64, 64, dk as usize)
                        };
                        for (bias, bool_mask) in
                            [(false, false), (true, false), (false, true), (true, true)]
                        {
                            let mut p = Problem {
                                head_dim_v: dv as usize,
                                ..p.clone()
                            };
                            p.mask.bias = bias.then_some(DType::F16);
                            p.mask.bool_mask = bool_mask;
                            let v = coop_variant(&p, &caps)
                                .unwrap_or_else(|e| panic!("{fragment} {sgs} {dk}/{dv}: {e}"));
                            // And its element-staging form, which the launch picks for views
                            // whose K/V elements do not pair up into words.
                            let ShaderVariant::FlashCoop(t) = v else {
                                panic!("{v:?}")
                            };
                            let elements = ShaderVariant::FlashCoop(CoopTile { pairs: false, ..t });
                            for v in [v, elements] {
                                for count in [false, true] {
                                    if !out.contains(&(v, count)) {
                                        out.push((v, count));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

fn variants() -> Vec<Built> {
    let mut v = vec![(naive_variant(), false)];
    for &dk in &FLASH_HEAD_DIMS {
        for &dv in &[32, dk] {
            for (tpr, sg) in [(1, false), (SUBGROUP_THREADS_PER_ROW, true)] {
                for (bk, rpt) in [(4, 1), (8, 2), (16, 4), (32, 1), (32, 4)] {
                    for count in [false, true] {
                        let tile = FlashTile {
                            head_dim_qk: dk,
                            head_dim_v: dv,
                            block_q: 64,
                            block_k: bk,
                            threads_per_row: tpr,
                            rows_per_thread: rpt,
                            subgroups: sg,
                        };
                        v.push((ShaderVariant::Flash(tile), count));
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
                    let tile = UnrolledTile {
                        head_dim_qk: dk,
                        head_dim_v: dv,
                        block_q: 64,
                        block_k: bk,
                        rows_per_thread: UNROLLED_ROWS_PER_THREAD,
                        bias,
                        alibi,
                        bool_mask,
                        serial_loads,
                    };
                    v.push((ShaderVariant::FlashUnrolled(tile), count));
                }
            }
        }
    }
    for &dk in &MEMEFF_HEAD_DIMS {
        for &dv in &MEMEFF_HEAD_DIMS {
            let config = MemEffConfig {
                head_dim_qk: dk,
                head_dim_v: dv,
            };
            v.push((ShaderVariant::MemoryEfficient(config), false));
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
        .filter(|(v, _)| !v.subgroups() && v.family() != Family::FlashCoop)
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

/// Translates a module with naga's MSL and HLSL backends, with the options wgpu 30 gives
/// them (explicit binding maps, no faked bindings, bounds checks on); cooperative-matrix
/// modules go to MSL only.
fn translate(name: &str, src: &str, coop: bool) {
    use naga::back::{hlsl, msl};
    let module = naga::front::wgsl::parse_str(src).unwrap();
    let validate = |caps| {
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)))
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
    if coop {
        return;
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
}

/// Metal and DX12 cannot run here, so every variant goes through naga's MSL and HLSL
/// backends with the options wgpu 30 gives them (explicit binding maps, no faked bindings,
/// bounds checks on): a shader either backend would reject fails `cargo test`. The
/// cooperative-matrix variants go to MSL only (simdgroup matrices, MSL 2.3 and later);
/// wgpu 30 has no cooperative matrices on DX12, where the dispatcher cannot pick them.
#[test]
fn every_variant_translates_to_msl_and_hlsl() {
    let all = variants();
    let mut n_msl = 0;
    let mut n_hlsl = 0;
    for (v, (name, src)) in [None, None]
        .into_iter()
        .chain(all.iter().map(Some))
        .zip(all_sources_for(&all))
    {
        let coop = v.is_some_and(|(v, _)| v.family() == Family::FlashCoop);
        translate(&name, &src, coop);
        n_msl += 1;
        n_hlsl += usize::from(!coop);
    }
    let n_coop = all
        .iter()
        .filter(|(v, _)| v.family() == Family::FlashCoop)
        .count();
    assert!(n_coop >= 16, "{n_coop} cooperative-matrix variants");
    eprintln!("{n_msl} modules to MSL ({n_coop} cooperative-matrix), {n_hlsl} to HLSL");
}

/// The module with this label among `all_sources_for`'s, parsed and validated.
fn module_named(
    sources: &[(String, String)],
    label: &str,
) -> (naga::Module, naga::valid::ModuleInfo) {
    let (_, src) = sources
        .iter()
        .find(|(name, _)| name.starts_with(label))
        .unwrap_or_else(|| panic!("no module {label}"));
    let module = naga::front::wgsl::parse_str(src).unwrap();
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap();
    (module, info)
}

/// Every Rust parameter block matches its WGSL struct field by field: the same names, in
/// the same order, at the same byte offsets, and the same size (naga's layout).
#[test]
fn params_structs_match_the_wgsl_field_by_field() {
    use wgpu_attention::test_hooks::param_layouts;
    let sources = all_sources_for(&[(naive_variant(), false)]);
    for (name, size, fields) in param_layouts() {
        let label = match name {
            "Params" => "Attention",
            "SummaryParams" => "block_summary",
            _ => "merge",
        };
        let (module, _) = module_named(&sources, label);
        let ty = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some(name))
            .map(|(_, t)| t)
            .unwrap_or_else(|| panic!("{name} not in the WGSL"));
        let naga::TypeInner::Struct { members, span } = &ty.inner else {
            panic!("{name} is not a struct");
        };
        let wgsl: Vec<(String, usize)> = members
            .iter()
            .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
            .collect();
        assert_eq!(wgsl, fields, "{name}: WGSL (left) against Rust (right)");
        assert_eq!(*span as usize, size, "{name}: size");
    }
}

/// The binding table (`kernels::bindings`) names each binding as the WGSL declares it, with
/// the same access, and covers every binding each entry point uses.
#[test]
fn binding_table_matches_the_wgsl() {
    use wgpu_attention::test_hooks::binding_table;
    let flash = ShaderVariant::Flash(FlashTile {
        head_dim_qk: 64,
        head_dim_v: 64,
        block_q: 64,
        block_k: 16,
        threads_per_row: 1,
        rows_per_thread: 4,
        subgroups: false,
    });
    let memeff = ShaderVariant::MemoryEfficient(MemEffConfig {
        head_dim_qk: 64,
        head_dim_v: 64,
    });
    let sources = all_sources_for(&[
        (flash, false),
        (flash, true),
        (memeff, false),
        (naive_variant(), false),
    ]);
    let mut sources = sources;
    sources.extend(
        wgpu_attention::test_hooks::backward_sources()
            .into_iter()
            .map(|(n, src, _)| (n, src)),
    );
    let label = |v: ShaderVariant, counters: bool| {
        format!("Attention {{ variant: {v:?}, counters: {counters} }}")
    };
    use wgpu_attention::test_hooks::{BACKWARD_AUX_TILE, BackwardTile};
    let bwd = |t: BackwardTile| format!("Backward({t:?})");
    let simt = BackwardTile {
        head_dim_qk: 64,
        head_dim_v: 64,
        block: 32,
        threads_per_row: 1,
        per_thread: 1,
        unrolled: false,
        bias: false,
        alibi: false,
        bool_mask: false,
    };
    let unrolled = BackwardTile {
        per_thread: 4,
        unrolled: true,
        ..simt
    };
    let mut checked = 0;
    for (kind, entry, table) in binding_table() {
        let labels = match kind {
            "attention" => vec![label(flash, false), label(memeff, false)],
            "attention+counters" => vec![label(flash, true)],
            "naive" => vec![label(naive_variant(), false)],
            "summary" => vec!["block_summary".to_string()],
            "backward" if matches!(entry, "kv" | "dq" | "dbias") => {
                vec![bwd(simt), bwd(unrolled)]
            }
            "backward" => vec![bwd(BACKWARD_AUX_TILE)],
            _ => vec!["merge".to_string()],
        };
        for l in labels {
            let (module, info) = module_named(&sources, &l);
            let ep = module
                .entry_points
                .iter()
                .position(|e| e.name == entry)
                .unwrap_or_else(|| panic!("{l}: no entry point {entry}"));
            let uses = info.get_entry_point(ep);
            for (handle, g) in module.global_variables.iter() {
                let Some(rb) = g.binding else { continue };
                let name = g.name.clone().unwrap_or_default();
                let row = table.iter().find(|(n, ..)| *n == rb.binding);
                if !uses[handle].is_empty() {
                    assert!(
                        row.is_some(),
                        "{l} {entry}: {name} (binding {}) is not in the table",
                        rb.binding
                    );
                }
                if let Some((_, table_name, writes)) = row {
                    assert_eq!(*table_name, name, "{l} {entry}: binding {}", rb.binding);
                    let writable = matches!(
                        g.space,
                        naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE)
                    );
                    assert_eq!(*writes, writable, "{l} {entry}: {name}'s access");
                    checked += 1;
                }
            }
            // Every table row is declared by the module.
            for (n, table_name, _) in &table {
                assert!(
                    module
                        .global_variables
                        .iter()
                        .any(|(_, g)| g.binding.is_some_and(|b| b.binding == *n)
                            && g.name.as_deref() == Some(*table_name)),
                    "{l} {entry}: table binding {n} ({table_name}) is not declared"
                );
            }
        }
    }
    assert!(checked > 40, "{checked}");
}

/// The dispatcher's storage-buffer counts (which keep every kernel within WebGPU's default
/// of 8 per stage) are the binding table's: every entry point binds one uniform (its
/// parameter block) and the rest storage.
#[test]
fn storage_buffer_counts_match_the_binding_table() {
    use wgpu_attention::test_hooks::binding_table;
    use wgpu_attention::test_hooks::{FUSED_STORAGE_BUFFERS, NAIVE_STORAGE_BUFFERS};
    let (mut fused, mut naive) = (0, 0);
    for (kind, entry, rows) in binding_table() {
        let storage = rows.len() as u32 - 1;
        match kind {
            "attention+counters" => continue, // the test hooks' debug counters
            "naive" => naive = naive.max(storage),
            _ => fused = fused.max(storage),
        }
        assert!(storage <= 8, "{kind} {entry}: {storage} storage buffers");
    }
    assert_eq!(fused, FUSED_STORAGE_BUFFERS);
    assert_eq!(naive, NAIVE_STORAGE_BUFFERS);
}

/// Every backward module validates with naga (those of one thread per row with core
/// capabilities only) and translates to MSL and HLSL.
#[test]
fn every_backward_tile_validates_and_translates() {
    let sources = wgpu_attention::test_hooks::backward_sources();
    assert!(sources.len() > 60, "{}", sources.len());
    for (name, src, subgroups) in &sources {
        let module = naga::front::wgsl::parse_str(src)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
        let caps = if *subgroups {
            naga::valid::Capabilities::all()
        } else {
            naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32
        };
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
        translate(name, src, false);
    }
}
