//! The dispatcher is a pure function: tested here without any GPU.

use wgpu_attention::test_hooks::{
    CPU_BLOCK_K, CPU_ROWS_PER_THREAD, DeviceCaps, FLASH_HEAD_DIMS, Family, MEMEFF_HEAD_DIMS,
    SUBGROUP_THREADS_PER_ROW, ShaderVariant, UNROLLED_ROWS_PER_THREAD, UnrolledTile, plan,
};
use wgpu_attention::validate::MaskKinds;
use wgpu_attention::{AttentionOptions, Backend, DType, Error, Problem, Subgroups, Tuning, Window};

/// A GPU with subgroups of 8 and 32 KiB of workgroup memory.
fn subgroup_gpu() -> DeviceCaps {
    DeviceCaps {
        max_workgroup_storage: 32768,
        subgroup: true,
        subgroup_min_size: 8,
        ..DeviceCaps::webgpu_default()
    }
}

#[test]
fn auto_prefers_flash_for_every_flash_head_dim() {
    let caps = DeviceCaps::webgpu_default();
    for d in [1, 7, 32, 33, 64, 100, 128, 200, 256] {
        let p = plan(
            &Problem::new(1, 8, 128, 128, d),
            &caps,
            &AttentionOptions::default(),
        )
        .unwrap();
        assert_eq!(p.backend, Backend::Flash, "d={d}: {}", p.reason);
        let bucket = FLASH_HEAD_DIMS
            .iter()
            .copied()
            .find(|&b| b as usize >= d)
            .unwrap();
        assert_eq!(p.variant.head_dim_qk(), bucket);
        assert!(p.variant.workgroup_storage() <= caps.max_workgroup_storage);
    }
}

#[test]
fn large_head_dims_go_to_memeff_then_naive() {
    let caps = DeviceCaps::webgpu_default();
    let p = plan(
        &Problem::new(1, 8, 128, 128, 257),
        &caps,
        &AttentionOptions::default(),
    )
    .unwrap();
    assert_eq!(p.backend, Backend::MemoryEfficient);
    assert!(p.reason.contains("256"), "{}", p.reason);
    let top = *MEMEFF_HEAD_DIMS.last().unwrap() as usize;
    let p = plan(
        &Problem::new(1, 8, 128, 128, top),
        &caps,
        &AttentionOptions::default(),
    )
    .unwrap();
    assert_eq!(p.backend, Backend::MemoryEfficient);
    let p = plan(
        &Problem::new(1, 8, 128, 128, top + 1),
        &caps,
        &AttentionOptions::default(),
    )
    .unwrap();
    assert_eq!(p.backend, Backend::Naive);
}

#[test]
fn small_workgroup_memory_falls_back_to_memeff() {
    let caps = DeviceCaps {
        max_workgroup_storage: 4096,
        ..DeviceCaps::webgpu_default()
    };
    let p = plan(
        &Problem::new(1, 8, 128, 128, 128),
        &caps,
        &AttentionOptions::default(),
    )
    .unwrap();
    assert_eq!(p.backend, Backend::MemoryEfficient, "{}", p.reason);
    assert!(p.reason.contains("workgroup memory"), "{}", p.reason);
    let err = plan(
        &Problem::new(1, 8, 128, 128, 128),
        &caps,
        &AttentionOptions::default().backend(Backend::Flash),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
}

#[test]
fn a_mask_never_changes_the_backend() {
    let caps = subgroup_gpu();
    let base = Problem::new(2, 8, 300, 500, 64);
    let unmasked = plan(&base, &caps, &AttentionOptions::default()).unwrap();
    let masks = [
        MaskKinds {
            causal: true,
            ..Default::default()
        },
        MaskKinds {
            key_lengths: true,
            query_lengths: true,
            ..Default::default()
        },
        MaskKinds {
            window: Some(Window {
                left: Some(3),
                right: None,
            }),
            ..Default::default()
        },
        MaskKinds {
            bool_mask: true,
            ..Default::default()
        },
        MaskKinds {
            bias: Some(DType::F16),
            alibi: true,
            ..Default::default()
        },
    ];
    for m in masks {
        let p = Problem {
            mask: m.clone(),
            ..base.clone()
        };
        let masked = plan(&p, &caps, &AttentionOptions::default()).unwrap();
        assert_eq!(masked.backend, unmasked.backend, "{m:?}");
        assert_eq!(masked.variant, unmasked.variant, "{m:?}");
    }
}

/// lavapipe on Mesa 22 as the context sees it: the same limits, on a CPU adapter that
/// loads memory one lane at a time.
fn lavapipe() -> DeviceCaps {
    DeviceCaps {
        cpu: true,
        cpu_serial_loads: true,
        ..subgroup_gpu()
    }
}

/// lavapipe on Mesa 23 or later.
fn lavapipe_new() -> DeviceCaps {
    DeviceCaps {
        cpu_serial_loads: false,
        ..lavapipe()
    }
}

#[test]
fn mesa_versions_are_read_from_driver_info() {
    use wgpu_attention::test_hooks::mesa_major;
    assert_eq!(mesa_major("Mesa 22.3.6 (LLVM 15.0.6)"), Some(22));
    assert_eq!(mesa_major("Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)"), Some(25));
    assert_eq!(mesa_major("4.5 (Core Profile)"), None);
    assert_eq!(mesa_major("Mesa "), None);
    assert_eq!(mesa_major(""), None);
}

#[test]
fn lavapipe_runs_the_unrolled_kernel() {
    let opts = AttentionOptions::default();
    let p = Problem::new(1, 8, 1024, 1024, 64);
    // Lavapipe, old and new: one thread per row, 8 rows in named registers; Q and O move
    // through written-out loads only where the driver loads one lane at a time.
    for (caps, serial) in [(lavapipe(), true), (lavapipe_new(), false)] {
        let pl = plan(&p, &caps, &opts).unwrap();
        let t = unrolled(pl.variant);
        assert_eq!(
            (
                pl.variant.threads_per_row(),
                t.rows_per_thread,
                t.block_k,
                pl.variant.subgroups(),
                t.serial_loads,
                t.bias.is_some() || t.alibi || t.bool_mask
            ),
            (
                1,
                UNROLLED_ROWS_PER_THREAD,
                CPU_BLOCK_K,
                false,
                serial,
                false
            )
        );
        assert!(pl.reason.contains("unrolled"), "{}", pl.reason);
    }
    // A GPU with the same limits keeps the subgroup variant.
    let gpu = plan(&p, &subgroup_gpu(), &opts).unwrap();
    assert_eq!(gpu.variant.family(), Family::Flash);
    assert!(gpu.variant.subgroups() && gpu.variant.threads_per_row() > 1);
    assert!(matches!(gpu.variant, ShaderVariant::Flash(_)));
    // d=128: 32-key tiles do not fit 32 KiB, so the tile halves.
    let big = plan(&Problem::new(1, 8, 1024, 1024, 128), &lavapipe(), &opts).unwrap();
    assert_eq!(big.variant.family(), Family::FlashUnrolled);
    assert_eq!(big.variant.block_k(), CPU_BLOCK_K / 2);
    assert!(big.variant.workgroup_storage() <= 32768);
}

#[test]
fn only_per_key_mask_terms_get_the_unrolled_kernel_that_reads_them() {
    let opts = AttentionOptions::default();
    let base = Problem::new(2, 8, 256, 256, 64);
    let with = |f: &dyn Fn(&mut MaskKinds)| {
        let mut p = base.clone();
        f(&mut p.mask);
        p
    };
    // (mask, bias dtype, alibi, bool mask)
    let cases = [
        (with(&|m| m.causal = true), None, false, false),
        (with(&|m| m.key_lengths = true), None, false, false),
        (with(&|m| m.query_lengths = true), None, false, false),
        (with(&|m| m.bool_mask = true), None, false, true),
        (
            with(&|m| m.bias = Some(DType::F32)),
            Some(DType::F32),
            false,
            false,
        ),
        (with(&|m| m.alibi = true), None, true, false),
        (
            with(&|m| {
                m.causal = true;
                m.bias = Some(DType::F16);
                m.bool_mask = true;
            }),
            Some(DType::F16),
            false,
            true,
        ),
    ];
    for caps in [lavapipe(), lavapipe_new()] {
        for (p, bias, alibi, bool_mask) in &cases {
            let v = unrolled(plan(p, &caps, &opts).unwrap().variant);
            assert_eq!(
                (v.bias, v.alibi, v.bool_mask),
                (*bias, *alibi, *bool_mask),
                "{:?}",
                p.mask
            );
        }
    }
    // The rolled kernel reads the mask flags at run time: one variant for every mask.
    let first = plan(&cases[0].0, &subgroup_gpu(), &opts).unwrap().variant;
    assert!(matches!(first, ShaderVariant::Flash(_)));
    for (p, ..) in &cases {
        let v = plan(p, &subgroup_gpu(), &opts).unwrap().variant;
        assert_eq!(v, first, "{:?}", p.mask);
    }
}

#[test]
fn cpu_adapters_above_the_unrolled_head_dims_get_wide_rows() {
    let opts = AttentionOptions::default();
    let p = Problem::new(1, 8, 1024, 1024, 256);
    // Mesa 22 loads one lane at a time: one thread per row.
    let old = plan(&p, &lavapipe(), &opts).unwrap().variant;
    assert_eq!(old.family(), Family::Flash);
    assert_eq!(
        (
            old.threads_per_row(),
            old.rows_per_thread(),
            old.subgroups()
        ),
        (1, CPU_ROWS_PER_THREAD, false)
    );
    // Newer lavapipe keeps the subgroup split.
    let new = plan(&p, &lavapipe_new(), &opts).unwrap();
    assert_eq!(
        (
            new.variant.threads_per_row(),
            new.variant.rows_per_thread(),
            new.variant.subgroups()
        ),
        (SUBGROUP_THREADS_PER_ROW, CPU_ROWS_PER_THREAD, true)
    );
    assert!(new.reason.contains("CPU adapter"), "{}", new.reason);
}

#[test]
fn unrolled_kernel_on_request_and_its_limits() {
    let with = |rpt, tpr, bk| AttentionOptions::default().tuning(Tuning::new(Some(rpt), bk, tpr));
    let p = Problem::new(1, 8, 256, 256, 64);
    // Asked for on a GPU, with one thread per row.
    let v = plan(
        &p,
        &subgroup_gpu(),
        &with(UNROLLED_ROWS_PER_THREAD, Some(1), None),
    )
    .unwrap()
    .variant;
    assert_eq!(v.family(), Family::FlashUnrolled);
    // It needs one thread per row, head dims it is generated for, and 8-key tiles or wider.
    for (opts, words) in [
        (
            with(
                UNROLLED_ROWS_PER_THREAD,
                Some(SUBGROUP_THREADS_PER_ROW),
                None,
            ),
            "one thread per row",
        ),
        (
            with(UNROLLED_ROWS_PER_THREAD, Some(1), Some(4)),
            "key tiles of at least 8",
        ),
    ] {
        match plan(&p, &subgroup_gpu(), &opts) {
            Err(Error::Unsupported(m)) => assert!(m.to_string().contains(words), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    let wide = Problem::new(1, 8, 256, 256, 256);
    match plan(
        &wide,
        &lavapipe(),
        &with(UNROLLED_ROWS_PER_THREAD, Some(1), None),
    ) {
        Err(Error::Unsupported(m)) => assert!(m.to_string().contains("head dims up to 128"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Rows per thread other than 1, 2, 4 and 8 are refused.
    match plan(&p, &lavapipe(), &with(3, None, None)) {
        Err(Error::Unsupported(m)) => assert!(m.to_string().contains("1, 2, 4 or 8"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn threads_per_row_override() {
    let p = Problem::new(1, 8, 256, 256, 64);
    let with = |tpr| AttentionOptions::default().tuning(Tuning::new(None, None, Some(tpr)));
    // The subgroup split can be asked for on a CPU adapter, and declined on a GPU.
    let sg = plan(&p, &lavapipe(), &with(SUBGROUP_THREADS_PER_ROW)).unwrap();
    assert_eq!(sg.variant.threads_per_row(), SUBGROUP_THREADS_PER_ROW);
    assert!(sg.variant.subgroups());
    let one = plan(&p, &subgroup_gpu(), &with(1)).unwrap();
    assert_eq!(one.variant.threads_per_row(), 1);
    assert!(!one.variant.subgroups());
    // Without subgroups, or with a count the shader does not have: Unsupported, saying why.
    match plan(
        &p,
        &DeviceCaps::webgpu_default(),
        &with(SUBGROUP_THREADS_PER_ROW),
    ) {
        Err(Error::Unsupported(m)) => assert!(m.to_string().contains("no subgroups"), "{m}"),
        other => panic!("{other:?}"),
    }
    match plan(&p, &lavapipe(), &with(3)) {
        Err(Error::Unsupported(m)) => assert!(m.to_string().contains("1 or 4"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn subgroup_variant_only_with_subgroups() {
    let p = Problem::new(1, 8, 128, 128, 64);
    let with = plan(&p, &subgroup_gpu(), &AttentionOptions::default()).unwrap();
    assert!(with.variant.subgroups() && with.variant.threads_per_row() > 1);
    assert!(with.reason.contains("subgroup"));
    let off = AttentionOptions::default().subgroups(Subgroups::Off);
    let without = plan(&p, &subgroup_gpu(), &off).unwrap();
    assert!(!without.variant.subgroups() && without.variant.threads_per_row() == 1);
    let plain = plan(
        &p,
        &DeviceCaps::webgpu_default(),
        &AttentionOptions::default(),
    )
    .unwrap();
    assert!(!plain.variant.subgroups());
    let tiny_sg = DeviceCaps {
        subgroup_min_size: 2,
        ..subgroup_gpu()
    };
    assert!(
        !plan(&p, &tiny_sg, &AttentionOptions::default())
            .unwrap()
            .variant
            .subgroups()
    );
}

#[test]
fn forced_backends_are_honoured() {
    let caps = DeviceCaps::webgpu_default();
    let p = Problem::new(1, 2, 16, 16, 64);
    for (b, fam) in [
        (Backend::Flash, Family::Flash),
        (Backend::MemoryEfficient, Family::MemoryEfficient),
        (Backend::Naive, Family::Naive),
    ] {
        let pl = plan(&p, &caps, &AttentionOptions::default().backend(b)).unwrap();
        assert_eq!(pl.backend, b);
        assert_eq!(pl.variant.family(), fam);
        assert!(pl.reason.contains("forced"), "{}", pl.reason);
    }
}

#[test]
fn key_tile_grows_with_workgroup_memory() {
    let p = Problem::new(1, 2, 16, 16, 128);
    let small = plan(
        &p,
        &DeviceCaps::webgpu_default(),
        &AttentionOptions::default(),
    )
    .unwrap();
    let big = plan(
        &p,
        &DeviceCaps {
            max_workgroup_storage: 49152,
            ..DeviceCaps::webgpu_default()
        },
        &AttentionOptions::default(),
    )
    .unwrap();
    assert!(big.variant.block_k() > small.variant.block_k());
    assert_eq!(
        big.variant.block_k(),
        wgpu_attention::test_hooks::FLASH_DEFAULT_BLOCK_K
    );
}

#[test]
fn plan_display_is_informative() {
    let p = plan(
        &Problem::new(1, 2, 16, 16, 40),
        &DeviceCaps::webgpu_default(),
        &AttentionOptions::default(),
    )
    .unwrap();
    let s = p.to_string();
    assert!(
        s.starts_with("flash") && s.contains("d_qk bucket 64"),
        "{s}"
    );
}

#[test]
fn flops_count() {
    let p = Problem::new(1, 8, 1024, 1024, 64);
    assert_eq!(p.flops(), 4.0 * 8.0 * 1024.0 * 1024.0 * 64.0);
}

/// The unrolled kernel's configuration of a variant that must be one.
fn unrolled(v: ShaderVariant) -> UnrolledTile {
    match v {
        ShaderVariant::FlashUnrolled(t) => t,
        other => panic!("expected the unrolled kernel, got {other:?}"),
    }
}

/// WebGPU's default limits allow exactly the 8 storage buffers a fused kernel binds; a device
/// that allows fewer gets the naive kernel (6), with the reason, and below that a limit error.
#[test]
fn storage_buffer_limits_route_to_naive_then_refuse() {
    use wgpu_attention::test_hooks::{FUSED_STORAGE_BUFFERS, NAIVE_STORAGE_BUFFERS};
    let p = Problem::new(1, 8, 128, 128, 64);
    let opts = AttentionOptions::default();
    let webgpu = DeviceCaps::webgpu_default();
    assert_eq!(webgpu.max_storage_buffers, FUSED_STORAGE_BUFFERS);
    assert_eq!(plan(&p, &webgpu, &opts).unwrap().backend, Backend::Flash);
    let seven = DeviceCaps {
        max_storage_buffers: FUSED_STORAGE_BUFFERS - 1,
        ..webgpu.clone()
    };
    let naive = plan(&p, &seven, &opts).unwrap();
    assert_eq!(naive.backend, Backend::Naive);
    assert!(
        naive
            .reason
            .contains("8 storage buffers per stage; the device allows 7"),
        "{}",
        naive.reason
    );
    for forced in [Backend::Flash, Backend::MemoryEfficient, Backend::Decode] {
        let e = plan(&p, &seven, &AttentionOptions::default().backend(forced)).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{forced:?}: {e}");
        assert!(e.to_string().contains("storage buffers"), "{forced:?}: {e}");
    }
    let too_few = DeviceCaps {
        max_storage_buffers: NAIVE_STORAGE_BUFFERS - 1,
        ..webgpu
    };
    let e = plan(&p, &too_few, &opts).unwrap_err();
    assert!(
        e.to_string()
            .contains("max_storage_buffers_per_shader_stage"),
        "{e}"
    );
}

/// On a browser's WebGPU without subgroups the reason says why rows are not split.
#[test]
fn the_reason_speaks_of_webgpu_in_the_browser() {
    let caps = DeviceCaps {
        browser: true,
        ..DeviceCaps::webgpu_default()
    };
    let p = plan(
        &Problem::new(1, 8, 128, 128, 64),
        &caps,
        &AttentionOptions::default(),
    )
    .unwrap();
    assert_eq!(p.backend, Backend::Flash);
    assert!(p.reason.contains("no subgroups"), "{}", p.reason);
}

/// The backward dispatcher: flash wherever its tiles fit, with the tile the device gets
/// (CPU adapters: unrolled, several keys per thread, the mask terms the call has; GPUs with
/// subgroups: four threads per row), naive with the reason where they do not.
#[test]
fn backward_plans_flash_where_its_tiles_fit_and_says_why_not() {
    use wgpu_attention::dispatch::plan_backward;
    use wgpu_attention::test_hooks::{BACKWARD_AUX_TILE, CPU_PER_THREAD};
    let opts = AttentionOptions::default();
    // WebGPU's defaults: 8 storage buffers, 16 KiB of workgroup memory, no subgroups.
    let web = DeviceCaps::webgpu_default();
    let p = plan_backward(&Problem::new(1, 8, 128, 128, 64), &web, &opts).unwrap();
    assert_eq!(p.backend, Backend::Flash, "{}", p.reason);
    assert_eq!(p.tile.threads_per_row, 1);
    assert!(!p.tile.unrolled);
    assert!(p.tile.workgroup_storage() <= web.max_workgroup_storage);
    assert!(p.reason.contains("deterministic"), "{}", p.reason);
    // A GPU with subgroups: four threads per row from head dim 64.
    let p = plan_backward(&Problem::new(1, 8, 128, 128, 64), &subgroup_gpu(), &opts).unwrap();
    assert_eq!(p.tile.threads_per_row, SUBGROUP_THREADS_PER_ROW);
    // lavapipe: unrolled, several keys per thread, the mask terms if the call has any.
    let mut masked = Problem::new(1, 8, 128, 128, 64);
    masked.mask = MaskKinds {
        bias: Some(DType::F32),
        causal: true,
        ..Default::default()
    };
    let p = plan_backward(&masked, &lavapipe(), &opts).unwrap();
    assert!(p.tile.unrolled && p.tile.bias && p.tile.alibi && p.tile.bool_mask);
    assert_eq!(p.tile.per_thread, CPU_PER_THREAD);
    assert!(p.reason.contains("inside the kernels"), "{}", p.reason);
    let p = plan_backward(&Problem::new(1, 8, 128, 128, 64), &lavapipe(), &opts).unwrap();
    assert!(p.tile.unrolled && !p.tile.bias && !p.tile.alibi && !p.tile.bool_mask);
    // Head dims past the flash buckets: naive, with the reason.
    let p = plan_backward(&Problem::new(1, 8, 128, 128, 300), &web, &opts).unwrap();
    assert_eq!(p.backend, Backend::Naive);
    assert_eq!(p.tile, BACKWARD_AUX_TILE);
    assert!(
        p.reason.contains("256") && p.reason.contains("300"),
        "{}",
        p.reason
    );
    // ... and forcing flash there is an error that says so.
    let e = plan_backward(
        &Problem::new(1, 8, 128, 128, 300),
        &web,
        &AttentionOptions::default().backend(Backend::Flash),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
    assert!(e.to_string().contains("256"), "{e}");
    // Fewer than 8 storage buffers: naive; fewer than 6: a limit error.
    let seven = DeviceCaps {
        max_storage_buffers: 7,
        ..web.clone()
    };
    let p = plan_backward(&Problem::new(1, 8, 128, 128, 64), &seven, &opts).unwrap();
    assert_eq!(p.backend, Backend::Naive);
    assert!(p.reason.contains("8 storage buffers"), "{}", p.reason);
    let five = DeviceCaps {
        max_storage_buffers: 5,
        ..web.clone()
    };
    let e = plan_backward(&Problem::new(1, 8, 128, 128, 64), &five, &opts).unwrap_err();
    assert!(
        e.to_string()
            .contains("max_storage_buffers_per_shader_stage"),
        "{e}"
    );
    // Forward-only backends run the backward's own choice and say so; naive when asked.
    let p = plan_backward(
        &Problem::new(1, 8, 4, 4096, 64),
        &web,
        &AttentionOptions::default().backend(Backend::Decode),
    )
    .unwrap();
    assert_eq!(p.backend, Backend::Flash);
    assert!(
        p.reason.starts_with("decode has no backward"),
        "{}",
        p.reason
    );
    let p = plan_backward(
        &Problem::new(1, 8, 4, 64, 64),
        &web,
        &AttentionOptions::default().backend(Backend::Naive),
    )
    .unwrap();
    assert_eq!(p.backend, Backend::Naive);
    assert!(p.to_string().contains("naive"), "{p}");
}

/// Workgroup memory picks the backward tile: the largest whose Q/dO (or K/V) tile fits.
#[test]
fn backward_tile_shrinks_with_workgroup_memory() {
    use wgpu_attention::test_hooks::backward_tile;
    let opts = AttentionOptions::default();
    for (mem, d, block) in [
        (49152, 64, 32),
        (16384, 64, 16),
        (32768, 128, 16),
        (32768, 256, 8),
    ] {
        let caps = DeviceCaps {
            max_workgroup_storage: mem,
            ..DeviceCaps::webgpu_default()
        };
        let t = backward_tile(&Problem::new(1, 1, 64, 64, d), &caps, &opts).unwrap();
        assert_eq!(t.block, block, "{mem} bytes, d={d}");
        assert!(t.workgroup_storage() <= mem);
    }
    let tiny = DeviceCaps {
        max_workgroup_storage: 4096,
        ..DeviceCaps::webgpu_default()
    };
    let why = backward_tile(&Problem::new(1, 1, 64, 64, 128), &tiny, &opts).unwrap_err();
    assert!(why.contains("4096"), "{why}");
}

/// A GPU with 16x16x16 f16 cooperative matrices and subgroups of 32.
fn coop_gpu() -> DeviceCaps {
    DeviceCaps {
        max_workgroup_storage: 49152,
        subgroup: true,
        subgroup_min_size: 32,
        subgroup_max_size: 32,
        shader_f16: true,
        coop_matrix: true,
        coop_fragment: 16,
        ..DeviceCaps::webgpu_default()
    }
}

/// The rescale slack reaches the cooperative-matrix variant (8 by default, 0 on request)
/// without turning it off, as the SIMT tile overrides do; past 8 it is refused.
#[test]
fn rescale_slack_is_the_coop_variants() {
    let mut p = Problem::new(1, 8, 256, 256, 128);
    (p.dtype_q, p.dtype_k, p.dtype_v, p.dtype_o) = (DType::F16, DType::F16, DType::F16, DType::F16);
    let slack_of = |t: Tuning| {
        let pl = plan(&p, &coop_gpu(), &AttentionOptions::default().tuning(t)).unwrap();
        match pl.variant {
            ShaderVariant::FlashCoop(c) => c.slack,
            v => panic!("{v:?}: {}", pl.reason),
        }
    };
    assert_eq!(slack_of(Tuning::default()), 8);
    assert_eq!(slack_of(Tuning::default().rescale_slack(0)), 0);
    assert_eq!(slack_of(Tuning::default().rescale_slack(3)), 3);
    let tiles = Tuning::default().block_k(16);
    let pl = plan(&p, &coop_gpu(), &AttentionOptions::default().tuning(tiles)).unwrap();
    assert_ne!(pl.variant.family(), Family::FlashCoop, "{}", pl.reason);
    let opts = AttentionOptions::default().tuning(Tuning::default().rescale_slack(9));
    match plan(&p, &coop_gpu(), &opts) {
        Err(Error::InvalidInput(e)) => {
            assert_eq!(e.tensor, wgpu_attention::error::TensorRole::Options);
            assert!(e.to_string().contains("coop_rescale_slack"), "{e}");
        }
        other => panic!("slack 9: {other:?}"),
    }
}
