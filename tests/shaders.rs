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
                            // Paged with the bias alone.
                            p.paged = bias && !bool_mask;
                            let v = coop_variant(&p, &caps)
                                .unwrap_or_else(|e| panic!("{fragment} {sgs} {dk}/{dv}: {e}"));
                            // And its element-staging form, which the launch picks for views
                            // whose K/V elements do not pair up into words.
                            let ShaderVariant::FlashCoop(t) = v else {
                                panic!("{v:?}")
                            };
                            let elements = ShaderVariant::FlashCoop(CoopTile { pairs: false, ..t });
                            // And with quantized K/V (element staging), in turn.
                            let quant = ShaderVariant::FlashCoop(CoopTile {
                                pairs: false,
                                quant: Some(KV_FORMATS[(dk + dv) as usize / 32 % 5]),
                                ..t
                            });
                            for v in [v, elements, quant] {
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

/// The quantized K/V formats, which the variants take in turn.
const KV_FORMATS: [DType; 5] = [
    DType::Q8_0,
    DType::Q4_0,
    DType::I8,
    DType::E4M3,
    DType::E5M2,
];

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
                            // The paging code in the variants with the debug counters, and a
                            // quantized K/V format in turn.
                            paged: count,
                            quant: count
                                .then_some(KV_FORMATS[(dk as usize / 32 + bk as usize) % 5]),
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
                        // With every term (bias, ALiBi and the bool mask), soft-capped too.
                        softcap: bias.is_some() && alibi && bool_mask,
                        serial_loads,
                        paged: count || bool_mask,
                        quant: match (count, bool_mask, bias) {
                            (true, _, _) => Some(DType::E4M3),
                            (_, true, Some(_)) => Some(DType::Q4_0),
                            (_, true, None) => Some(DType::I8),
                            _ => None,
                        },
                    };
                    v.push((ShaderVariant::FlashUnrolled(tile), count));
                }
            }
        }
    }
    for &dk in &MEMEFF_HEAD_DIMS {
        for &dv in &MEMEFF_HEAD_DIMS {
            for paged in [false, true] {
                let config = MemEffConfig {
                    head_dim_qk: dk,
                    head_dim_v: dv,
                    paged,
                    quant: Some(KV_FORMATS[(dk as usize / 32 + dv as usize / 32) % 5])
                        .filter(|_| paged || dk == dv),
                };
                v.push((ShaderVariant::MemoryEfficient(config), false));
            }
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
    // The sources start with the block summary, merge and kv append modules.
    for (v, (name, src)) in [None, None, None]
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
            "QuantParams" => "kv_append",
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
        paged: false,
        quant: None,
    });
    let memeff = ShaderVariant::MemoryEfficient(MemEffConfig {
        head_dim_qk: 64,
        head_dim_v: 64,
        paged: false,
        quant: None,
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
        softcap: false,
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
            "kv_append" => vec!["kv_append".to_string()],
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

/// Workgroup barriers counted in naga's IR: `common` on the path every loaded tile takes,
/// `rescale` only on the cooperative-matrix kernel's lazy rescale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Barriers {
    common: u32,
    rescale: u32,
}

impl Barriers {
    fn add(self, o: Barriers) -> Barriers {
        Barriers {
            common: self.common + o.common,
            rescale: self.rescale + o.rescale,
        }
    }

    fn max(self, o: Barriers) -> Barriers {
        Barriers {
            common: self.common.max(o.common),
            rescale: self.rescale.max(o.rescale),
        }
    }
}

/// Counts the barriers of a key loop in a parsed module (see
/// `cost_barriers_per_tile_match_the_naga_ir` for the rules).
struct BarrierCounter<'a> {
    module: &'a naga::Module,
    /// The lazy rescale's flag (`sh_moved`), where the module has one.
    flag: Option<naga::Handle<naga::GlobalVariable>>,
}

impl BarrierCounter<'_> {
    fn global(module: &naga::Module, name: &str) -> Option<naga::Handle<naga::GlobalVariable>> {
        module
            .global_variables
            .iter()
            .find(|(_, g)| g.name.as_deref() == Some(name))
            .map(|(h, _)| h)
    }

    /// Whether expression `e` of `fun` reads global `g` through loads, accesses and
    /// arithmetic on them (enough for a condition such as `atomicLoad(&flag[i]) != 0u`).
    fn expr_reads(
        fun: &naga::Function,
        e: naga::Handle<naga::Expression>,
        g: naga::Handle<naga::GlobalVariable>,
    ) -> bool {
        use naga::Expression as E;
        match fun.expressions[e] {
            E::GlobalVariable(h) => h == g,
            E::Load { pointer } => Self::expr_reads(fun, pointer, g),
            E::Access { base, index } => {
                Self::expr_reads(fun, base, g) || Self::expr_reads(fun, index, g)
            }
            E::AccessIndex { base, .. } => Self::expr_reads(fun, base, g),
            E::Unary { expr, .. } => Self::expr_reads(fun, expr, g),
            E::Binary { left, right, .. } => {
                Self::expr_reads(fun, left, g) || Self::expr_reads(fun, right, g)
            }
            _ => false,
        }
    }

    /// Whether `block` of `fun`, or a function it calls, indexes global `g` (reads an
    /// element of it: every buffer read starts with an emitted `Access`/`AccessIndex` of the
    /// global).
    fn block_reads(
        &self,
        fun: &naga::Function,
        block: &naga::Block,
        g: naga::Handle<naga::GlobalVariable>,
    ) -> bool {
        use naga::Statement as S;
        let is_g = |base: naga::Handle<naga::Expression>| matches!(fun.expressions[base], naga::Expression::GlobalVariable(h) if h == g);
        block.iter().any(|st| match st {
            S::Emit(range) => range.clone().any(|e| match fun.expressions[e] {
                naga::Expression::Access { base, .. }
                | naga::Expression::AccessIndex { base, .. } => is_g(base),
                naga::Expression::Load { pointer } => is_g(pointer),
                _ => false,
            }),
            S::Block(b) => self.block_reads(fun, b, g),
            S::If { accept, reject, .. } => {
                self.block_reads(fun, accept, g) || self.block_reads(fun, reject, g)
            }
            S::Switch { cases, .. } => cases.iter().any(|c| self.block_reads(fun, &c.body, g)),
            S::Loop {
                body, continuing, ..
            } => self.block_reads(fun, body, g) || self.block_reads(fun, continuing, g),
            S::Call { function, .. } => {
                let f = &self.module.functions[*function];
                self.block_reads(f, &f.body, g)
            }
            _ => false,
        })
    }

    /// The barriers one pass through `block` of `fun` takes, on the path with the most.
    fn count(&self, fun: &naga::Function, block: &naga::Block) -> Barriers {
        use naga::Statement as S;
        let mut n = Barriers::default();
        for st in block.iter() {
            let here = match st {
                // A subgroup-only barrier does not synchronise the workgroup.
                S::ControlBarrier(b) if *b != naga::Barrier::SUB_GROUP => Barriers {
                    common: 1,
                    rescale: 0,
                },
                // A barrier on each side of the load (naga's SPIR-V, MSL and HLSL backends).
                S::WorkGroupUniformLoad { .. } => Barriers {
                    common: 2,
                    rescale: 0,
                },
                S::Block(b) => self.count(fun, b),
                S::If {
                    condition,
                    accept,
                    reject,
                } => {
                    let (a, r) = (self.count(fun, accept), self.count(fun, reject));
                    if self
                        .flag
                        .is_some_and(|g| Self::expr_reads(fun, *condition, g))
                    {
                        // The lazy rescale: its barriers are the rescale path's alone.
                        assert_eq!(r, Barriers::default(), "barriers beside the rescale");
                        Barriers {
                            common: 0,
                            rescale: a.common + a.rescale,
                        }
                    } else {
                        a.max(r)
                    }
                }
                S::Switch { cases, .. } => cases
                    .iter()
                    .map(|c| self.count(fun, &c.body))
                    .fold(Barriers::default(), Barriers::max),
                S::Loop {
                    body, continuing, ..
                } => {
                    // A per-tile figure cannot count barriers a run-time trip count repeats.
                    let inner = self.count(fun, body).add(self.count(fun, continuing));
                    assert_eq!(inner, Barriers::default(), "barriers in a nested loop");
                    inner
                }
                S::Call { function, .. } => {
                    let f = &self.module.functions[*function];
                    self.count(f, &f.body)
                }
                _ => Barriers::default(),
            };
            n = n.add(here);
        }
        n
    }

    /// The outermost loops of `block` (loops not inside another loop of the same function).
    fn outer_loops<'b>(block: &'b naga::Block, out: &mut Vec<&'b naga::Statement>) {
        use naga::Statement as S;
        for st in block.iter() {
            match st {
                S::Loop { .. } => out.push(st),
                S::Block(b) => Self::outer_loops(b, out),
                S::If { accept, reject, .. } => {
                    Self::outer_loops(accept, out);
                    Self::outer_loops(reject, out);
                }
                S::Switch { cases, .. } => {
                    for c in cases {
                        Self::outer_loops(&c.body, out);
                    }
                }
                _ => {}
            }
        }
    }

    /// The barriers per key tile of `main` in the module.
    fn key_loop_barriers(module: &naga::Module) -> Barriers {
        let counter = BarrierCounter {
            module,
            flag: Self::global(module, "sh_moved"),
        };
        let k_buf = Self::global(module, "k_buf").expect("no k_buf");
        let main = &module
            .entry_points
            .iter()
            .find(|e| e.name == "main")
            .expect("no entry point main")
            .function;
        let mut loops = Vec::new();
        Self::outer_loops(&main.body, &mut loops);
        let key_loops: Vec<_> = loops
            .into_iter()
            .filter_map(|st| match st {
                naga::Statement::Loop {
                    body, continuing, ..
                } => Some((body, continuing)),
                _ => None,
            })
            .filter(|(body, continuing)| {
                counter.block_reads(main, body, k_buf)
                    || counter.block_reads(main, continuing, k_buf)
            })
            .collect();
        assert_eq!(key_loops.len(), 1, "outermost loops of main that read K");
        let (body, continuing) = key_loops[0];
        counter
            .count(main, body)
            .add(counter.count(main, continuing))
    }
}

/// `ShaderVariant::cost`'s barrier figures are the shaders': for every forward variant with
/// a key loop (SIMT flash, unrolled flash, cooperative-matrix flash, memory-efficient), with
/// the debug counters and without, the module is parsed with naga and its key loop's
/// workgroup barriers counted, so a shader change that adds or removes one fails here.
///
/// - The key loop is the one outermost loop of the entry point `main` whose body (calls
///   followed) reads an element of K (`k_buf`): every key tile is staged, or every key read,
///   from there. Exactly one such loop must exist.
/// - A `workgroupBarrier`/`storageBarrier` counts one (a subgroup-only barrier none), a
///   `workgroupUniformLoad` two (naga's backends put a barrier on each side of the load), a
///   call its callee's count at each call site, a branch its larger side (the path of a tile
///   that is loaded: `next_tile`'s load sits in `if (state != 0u)`), and a loop nested in the
///   key loop must have none (its trip count would multiply them).
/// - The rescale path: an `if` whose condition reads the lazy rescale's flag (`sh_moved`,
///   `shaders/flash_coop.wgsl`) puts its barriers in `Cost::rescale_barriers`, not
///   `Cost::barriers_per_tile`.
#[test]
fn cost_barriers_per_tile_match_the_naga_ir() {
    let all: Vec<Built> = variants()
        .into_iter()
        .filter(|(v, _)| v.family() != Family::Naive)
        .collect();
    let sources = all_sources_for(&all);
    // (The block summary and merge modules come first.)
    let sources = &sources[sources.len() - all.len()..];
    let mut seen = std::collections::BTreeSet::new();
    for ((v, _), (name, src)) in all.iter().zip(sources) {
        assert!(name.contains(&format!("{v:?}")), "{name}");
        let module = naga::front::wgsl::parse_str(src)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
        let ir = BarrierCounter::key_loop_barriers(&module);
        let cost = v.cost();
        assert_eq!(
            (cost.barriers_per_tile, cost.rescale_barriers),
            (ir.common, ir.rescale),
            "{name}: cost (left) against the key loop's barriers in naga's IR (right)"
        );
        seen.insert((cost.variant, ir.common, ir.rescale));
    }
    // (variant, barriers per tile, rescale barriers)
    for s in &seen {
        eprintln!("{s:?}");
    }
    for family in [
        "flash_simt",
        "flash_simt_subgroup",
        "flash_unrolled_cpu",
        "flash_coop_8x8",
        "flash_coop_16x16",
        "memeff",
    ] {
        assert!(seen.iter().any(|s| s.0 == family), "no {family} variant");
    }
    assert!(seen.iter().any(|s| s.2 > 0), "no rescale path counted");
}
