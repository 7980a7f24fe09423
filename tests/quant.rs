//! Quantized K/V (issue 25): GGUF's q8_0 and q4_0 blocks, i8 with per-token scales, and the
//! OCP 8-bit floats (e4m3, e5m2) with per-head scales, decoded as tiles load by every
//! backend (flash in each form the adapter runs, memory-efficient, the decode path's key
//! splits, naive), contiguous and paged, against the f64 reference over the dequantized
//! values (`quant::dequantize_rows`: the values the kernels must read, exactly). Crossed with
//! the masks, GQA, query dtypes and layouts (BHSD, vLLM's BSHD, an odd byte offset).
//!
//! Tolerance: the dequantized values are exact in f32 (an f16 scale times an integer of at
//! most 8 bits, or one f32 product), so each case is held to its output dtype's tolerance as
//! any f32 K/V is (`common::tolerance`).

mod common;

use common::*;
use wgpu_attention::{Backend, CausalAlignment, DType, KvScales, quant, wgpu};

const FORMATS: [DType; 5] = [
    DType::Q8_0,
    DType::Q4_0,
    DType::I8,
    DType::E4M3,
    DType::E5M2,
];

/// (b, hq, hkv, sq, sk, d): GQA with ragged lengths, Sq > Sk, and a decode shape.
const SHAPES: [(usize, usize, usize, usize, usize, usize); 3] = [
    (2, 4, 2, 7, 59, 64),
    (1, 2, 1, 113, 59, 64),
    (2, 4, 1, 1, 1023, 64),
];

/// Whether the default tier runs this case (`full_tier` runs the product): flash with every
/// format and no mask or every kind combined on every shape, and every mask with q8_0;
/// every format with every kind combined on the other backends, each on one shape.
fn default_case(backend: Backend, fi: usize, si: usize, mi: usize) -> bool {
    match backend {
        Backend::Flash => mi == 0 || mi == 7 || (fi == 0 && si == 0),
        _ => mi == 7 && si == fi % 3,
    }
}

#[test]
fn quantized_kv_matches_the_reference_on_every_backend() {
    let ctx = ctx();
    let full = full_tier();
    let layouts = [Layout::Bhsd, Layout::Bshd, Layout::Offset];
    let mut n = 0;
    for backend in [
        Backend::Flash,
        Backend::MemoryEfficient,
        Backend::Naive,
        Backend::Auto,
    ] {
        for (fi, &fmt) in FORMATS.iter().enumerate() {
            for (si, &(b, hq, hkv, sq, sk, d)) in SHAPES.iter().enumerate() {
                for (mi, mask) in masks(b, hq, sq, sk, 700 + si as u64)
                    .into_iter()
                    .enumerate()
                {
                    if !full && !default_case(backend, fi, si, mi) {
                        continue;
                    }
                    let dtype = [DType::F32, DType::F16, DType::BF16][(n / 3) % 3];
                    let mut c = Case::new(b, hq, sq, sk, d)
                        .dtype(dtype)
                        .backend(backend)
                        .mask(mask);
                    c.hkv = hkv;
                    c.kv = Some(fmt);
                    c.layout = layouts[(si + mi + n) % 3];
                    c.seed = (si * 41 + mi * 7 + n) as u64;
                    // Paged for q8_0, i8 and e5m2 (pages of 16, 7 and 16), contiguous for
                    // the others (the decode test below takes the other way round): each
                    // format's pipelines once, which keeps the GL pass's cold compiles few.
                    c.paged = [Some(16), None, Some(7), None, Some(16)][fi];
                    c.lse = mi % 2 == 1;
                    check(ctx, &c);
                    n += 1;
                }
            }
        }
    }
    let all = 4 * FORMATS.len() * SHAPES.len() * 8;
    // Default: flash with 5 formats × 3 shapes × masks 0 and 7, and q8_0's other 6 masks on
    // shape 0; 3 backends × 5 formats with mask 7 on one shape each.
    assert_eq!(n, if full { all } else { 30 + 6 + 15 });
}

/// Head dims that are not a multiple of 4 (i8 and the 8-bit floats take any; the bytes past
/// a row's end are another row's, and must not count), on every backend.
#[test]
fn byte_formats_take_any_head_dim() {
    let ctx = ctx();
    for (n, fmt) in [DType::I8, DType::E4M3, DType::E5M2]
        .into_iter()
        .enumerate()
    {
        for backend in [
            Backend::Flash,
            Backend::MemoryEfficient,
            Backend::Naive,
            Backend::Decode,
        ] {
            let sq = if backend == Backend::Decode { 2 } else { 9 };
            let mut c = Case::new(2, 2, sq, 300, 37).backend(backend);
            c.kv = Some(fmt);
            c.layout = [Layout::Offset, Layout::Bshd, Layout::Bhsd][n];
            c.mask.causal = Some(CausalAlignment::BottomRight);
            check(ctx, &c);
        }
    }
}

/// The decode path (few queries over long keys, split across workgroups and merged) over
/// quantized keys, contiguous and paged, with GQA, key lengths, sinks, the cap and the
/// log-sum-exp.
#[test]
fn the_decode_path_reads_quantized_keys() {
    let ctx = ctx();
    for (n, &fmt) in FORMATS.iter().enumerate() {
        let (sq, sk) = [(1, 1023), (4, 2000)][n % 2];
        let mut c = Case::new(2, 4, sq, sk, 128)
            .dtype([DType::F16, DType::F32][n % 2])
            .backend(Backend::Decode);
        c.hkv = 2;
        c.kv = Some(fmt);
        c.paged = [None, Some(16)][n % 2];
        c.layout = [Layout::Bshd, Layout::Bhsd, Layout::Offset][n % 3];
        c.mask.key_lengths = Some(vec![sk as u32 - 5, (sk / 3) as u32]);
        c.mask.causal = Some(CausalAlignment::BottomRight);
        c.sinks = Some(vec![0.5, -1.0, 2.0, 0.0]);
        c.softcap = Some(4.0);
        c.lse = true;
        let (got, want, plan) = run_plan(ctx, &c);
        assert!(plan.key_splits > 1, "{plan}");
        assert!(
            plan.reason.contains(&format!("K and V are {fmt}")),
            "{plan}"
        );
        assert_close(&got, &want, c.out_dtype, &c.label());
    }
}

/// The checks above can fail: the same quantized K read with every key's scale taken from
/// key 0 (i8), or each head's from another head (the 8-bit floats), comes out far from the
/// reference.
#[test]
fn misread_scales_are_caught() {
    let ctx = ctx();
    for fmt in [DType::I8, DType::E4M3] {
        for backend in [Backend::Flash, Backend::MemoryEfficient, Backend::Naive] {
            let mut c = Case::new(1, 2, 7, 59, 64).backend(backend);
            c.hkv = 2;
            c.kv = Some(fmt);
            let x = Prepared::new(ctx, &c);
            let mut opts = x.opts(ctx, &c);
            opts.kv_scales = match opts.kv_scales.take() {
                // Every key reads key 0's scale.
                Some(KvScales::PerToken { mut k, v }) => {
                    k.strides[2] = 0;
                    Some(KvScales::PerToken { k, v })
                }
                // Each head reads another's.
                Some(KvScales::PerHead { mut k, v }) => {
                    k.reverse();
                    Some(KvScales::PerHead { k, v })
                }
                _ => panic!("{fmt}: no scales"),
            };
            let out = nan_output(ctx, [c.b, c.hq, c.sq, c.dv], DType::F32);
            ctx.attention_into_blocking(x.q.view(), x.k.view(), x.v.view(), out.view(), &opts)
                .expect("attention");
            let got = ctx.download_f32_blocking(out.view()).expect("download");
            let [q, k, v] = x.host();
            let want =
                wgpu_attention::reference::attention(&q, &k, &v, scale_of(&c), &x.host_mask(&c));
            let (atol, rtol) = tolerance(DType::F32);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(&g, &w)| (g as f64 - w).abs() / (atol + rtol * w.abs()))
                .fold(0.0, f64::max);
            // (i8's row scales, max |x| / 127, are alike for uniform data: key 0's is off by
            // a few percent, still 100 times the tolerance.)
            assert!(
                worst > 100.0,
                "{fmt} {backend:?}: misread scales are off by {worst}× the tolerance only"
            );
        }
    }
}

/// The bytes of a GPU buffer (the whole of it).
fn buffer_bytes(ctx: &wgpu_attention::Context, buf: &wgpu::Buffer) -> Vec<u8> {
    let words = (buf.size() / 4) as usize;
    let view = wgpu_attention::TensorView::new(
        buf.clone(),
        DType::F32,
        [1, 1, 1, words],
        [words, words, words, 1],
        0,
    );
    ctx.download_f32_blocking(&view)
        .expect("download")
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect()
}

/// The values of a quantized cache buffer's first `rows` rows of `d` (memory order), as
/// the kernels decode them: i8's scales from the buffer at `scales_at`, 1 for the 8-bit
/// floats.
fn cache_values(bytes: &[u8], fmt: DType, rows: usize, d: usize, scales_at: u64) -> Vec<f32> {
    let row_bytes = fmt.bytes(d as u64) as usize;
    let scales: Vec<f32> = match fmt {
        DType::I8 => bytes[scales_at as usize..][..rows * 4]
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        _ => vec![1.0; rows],
    };
    quant::dequantize_rows(fmt, &bytes[..rows * row_bytes], d, &scales)
}

/// How far a cache's values are from the host quantizer's (`quant::quantize_rows` of the
/// same rows): the share of values that differ, and the largest difference over the row's
/// (or block's) quantum. The GPU quantizes as the host does, up to the last bit of a
/// division (a value on a rounding edge may land one code over).
fn quantizer_gap(got: &[f32], want: &[f32], fmt: DType, d: usize) -> (f64, f64) {
    let group = if fmt.block_len() > 1 { 32 } else { d };
    let (mut differ, mut worst) = (0usize, 0f64);
    for (g, w) in got.chunks(group).zip(want.chunks(group)) {
        let amax = w.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        let quantum = match fmt {
            DType::Q4_0 => amax / 8.0,
            DType::E4M3 | DType::E5M2 => 0.25 * amax,
            _ => amax / 127.0,
        };
        for (&a, &b) in g.iter().zip(w) {
            if a != b {
                differ += 1;
                worst = worst.max((a - b).abs() as f64 / quantum.max(1e-30));
            }
        }
    }
    (differ as f64 / got.len() as f64, worst)
}

/// A quantized `KvCache`: a prompt in f32 and three decode steps in f16 rows, quantized on the
/// GPU as they are appended; the cache holds what the host quantizer makes of them, and
/// attention over it (with `KvCache::options`) matches the reference over those values.
#[test]
fn kv_cache_quantizes_on_append() {
    let ctx = ctx();
    let (b, h, cap, d) = (2, 2, 40, 64);
    for (n, &fmt) in FORMATS.iter().enumerate() {
        let mut cache = wgpu_attention::KvCache::new(ctx, b, h, cap, d, fmt).expect("cache");
        let mut host_k = vec![Vec::new(); b * h];
        let mut host_v = vec![Vec::new(); b * h];
        for (step, (len, dt)) in [
            (5, DType::F32),
            (1, DType::F16),
            (1, DType::BF16),
            (1, DType::F16),
        ]
        .into_iter()
        .enumerate()
        {
            let seed = (n * 10 + step) as u64;
            let k = round_to(
                dt,
                &random(b * h * len * d, seed)
                    .iter()
                    .map(|x| 3.0 * x)
                    .collect::<Vec<_>>(),
            );
            let v = round_to(dt, &random(b * h * len * d, seed + 100));
            for (i, rows) in host_k.iter_mut().enumerate() {
                rows.extend_from_slice(&k[i * len * d..][..len * d]);
            }
            for (i, rows) in host_v.iter_mut().enumerate() {
                rows.extend_from_slice(&v[i * len * d..][..len * d]);
            }
            let kt = upload(ctx, &k, [b, h, len, d], dt, Layout::Bhsd);
            let vt = upload(ctx, &v, [b, h, len, d], dt, Layout::Bhsd);
            cache
                .append_blocking(ctx, kt.view(), vt.view())
                .expect("append");
        }
        let len = 8;
        assert_eq!(cache.lengths(), &[len as u32, len as u32]);
        let scales_at = match cache.kv_scales() {
            Some(wgpu_attention::KvScales::PerToken { k, .. }) => k.offset,
            _ => 0,
        };
        // The cache's rows (b, h, position), dequantized; the valid ones against the host's.
        let mut deq = Vec::new();
        for (t, host) in [(cache.keys(), &host_k), (cache.values(), &host_v)] {
            let all = cache_values(
                &buffer_bytes(ctx, &t.buffer),
                fmt,
                b * h * cap,
                d,
                scales_at,
            );
            let valid: Vec<f32> = (0..b * h)
                .flat_map(|r| all[r * cap * d..][..len * d].to_vec())
                .collect();
            let flat: Vec<f32> = host.iter().flatten().copied().collect();
            let scales: Vec<f32> = vec![1.0; b * h * len];
            let (bytes, s) = quant::quantize_rows(fmt, &flat, d, Some(&scales));
            let want = quant::dequantize_rows(fmt, &bytes, d, &s);
            let (share, worst) = quantizer_gap(&valid, &want, fmt, d);
            assert!(
                share < 0.01 && worst <= 1.01,
                "{fmt}: {share} of values differ, by up to {worst} quanta"
            );
            deq.push(valid);
        }
        // Attention over the cache: two new queries per batch item, bottom-right causal.
        let sq = 2;
        let qh = random(b * h * sq * d, 77 + n as u64);
        let q = upload(ctx, &qh, [b, h, sq, d], DType::F32, Layout::Bhsd);
        let out = nan_output(ctx, [b, h, sq, d], DType::F32);
        let mut opts = cache.options();
        // The cache holds `len` rows: the queries are its last two.
        opts.mask = opts.mask.clone();
        ctx.attention_into_blocking(q.view(), &cache.keys(), &cache.values(), out.view(), &opts)
            .expect("attention");
        let got = ctx.download_f32_blocking(out.view()).expect("download");
        let hk = wgpu_attention::reference::HostTensor {
            data: &deq[0],
            shape: [b, h, len, d],
        };
        let hv = wgpu_attention::reference::HostTensor {
            data: &deq[1],
            shape: [b, h, len, d],
        };
        let hq = wgpu_attention::reference::HostTensor {
            data: &qh,
            shape: [b, h, sq, d],
        };
        let mask = wgpu_attention::reference::HostMask {
            causal: true,
            alignment: CausalAlignment::BottomRight,
            ..Default::default()
        };
        let want =
            wgpu_attention::reference::attention(&hq, &hk, &hv, 1.0 / (d as f64).sqrt(), &mask);
        assert_close(&got, &want, DType::F32, &format!("{fmt} cache"));
    }
}

/// A quantized `PagedKvCache`: a prompt of 20 tokens (pages of 16), a fork sharing it, one
/// token appended to each (the shared, partly filled page is copied first, i8's scales with
/// it), then attention over both sequences against the reference over the pool's values,
/// gathered through the page table.
#[test]
fn paged_cache_quantizes_on_append_and_fork() {
    let ctx = ctx();
    let (pages, ps, h, d) = (8, 16, 2, 64);
    for (n, &fmt) in FORMATS.iter().enumerate() {
        let mut cache =
            wgpu_attention::PagedKvCache::new(ctx, pages, ps, h, d, fmt).expect("cache");
        let a = cache.add_sequence();
        let tokens = |len: usize, seed: u64| {
            let data = random(len * h * d, seed);
            let t = buffer_of(ctx, &data, DType::F32);
            let v =
                wgpu_attention::TensorView::bshd(t.buffer().clone(), DType::F32, [1, len, h, d]);
            (t, v)
        };
        let (_k, kv) = tokens(20, 300 + n as u64);
        let (_v, vv) = tokens(20, 400 + n as u64);
        cache.append_blocking(ctx, &[a], &kv, &vv).expect("prompt");
        let bseq = cache.fork(a).expect("fork");
        let one = |seed: u64| {
            let data = random(2 * h * d, seed);
            let t = buffer_of(ctx, &data, DType::F32);
            let v = wgpu_attention::TensorView::bshd(t.buffer().clone(), DType::F32, [2, 1, h, d]);
            (t, v)
        };
        let (_k1, k1) = one(500 + n as u64);
        let (_v1, v1) = one(600 + n as u64);
        cache
            .append_blocking(ctx, &[a, bseq], &k1, &v1)
            .expect("step");
        assert_ne!(
            cache.pages(a).expect("a")[1],
            cache.pages(bseq).expect("b")[1],
            "copy on write"
        );
        let opts = cache.options(&[a, bseq]).expect("options");
        let scales_at = match &opts.kv_scales {
            Some(wgpu_attention::KvScales::PerToken { k, .. }) => k.offset,
            _ => 0,
        };
        let table = opts.paged.clone().expect("paged");
        let pool = |buf: &wgpu::Buffer| {
            // Token-major rows (page, slot, head) as the logical [pages, h, ps, d] pool.
            let rows = cache_values(&buffer_bytes(ctx, buf), fmt, pages * ps * h, d, scales_at);
            let mut logical = vec![0f32; rows.len()];
            for p in 0..pages {
                for s in 0..ps {
                    for hh in 0..h {
                        let from = ((p * ps + s) * h + hh) * d;
                        let to = ((p * h + hh) * ps + s) * d;
                        logical[to..to + d].copy_from_slice(&rows[from..from + d]);
                    }
                }
            }
            let host = wgpu_attention::reference::HostTensor {
                data: &logical,
                shape: [pages, h, ps, d],
            };
            wgpu_attention::reference::gather_pages(&host, &table)
        };
        let kg = pool(&cache.keys().buffer);
        let vg = pool(&cache.values().buffer);
        let sk = table.seq_len;
        let qh = random(2 * h * d, 700 + n as u64);
        let q = upload(ctx, &qh, [2, h, 1, d], DType::F32, Layout::Bhsd);
        let out = nan_output(ctx, [2, h, 1, d], DType::F32);
        ctx.attention_into_blocking(q.view(), &cache.keys(), &cache.values(), out.view(), &opts)
            .expect("attention");
        let got = ctx.download_f32_blocking(out.view()).expect("download");
        let lens = [21u32, 21];
        let mask = wgpu_attention::reference::HostMask {
            causal: true,
            alignment: CausalAlignment::BottomRight,
            key_lengths: Some(&lens),
            ..Default::default()
        };
        let hq = wgpu_attention::reference::HostTensor {
            data: &qh,
            shape: [2, h, 1, d],
        };
        let hk = wgpu_attention::reference::HostTensor {
            data: &kg,
            shape: [2, h, sk, d],
        };
        let hv = wgpu_attention::reference::HostTensor {
            data: &vg,
            shape: [2, h, sk, d],
        };
        let want =
            wgpu_attention::reference::attention(&hq, &hk, &hv, 1.0 / (d as f64).sqrt(), &mask);
        assert_close(&got, &want, DType::F32, &format!("{fmt} paged cache"));
        // The shared prompt's pages hold the host quantizer's values (page 0: tokens 0..16).
        let (host_bytes, s) = quant::quantize_rows(
            fmt,
            &random(20 * h * d, 300 + n as u64)[..16 * h * d],
            d,
            None,
        );
        let want0 = quant::dequantize_rows(fmt, &host_bytes, d, &s);
        let page0 = cache.pages(a).expect("a")[0] as usize;
        let rows = cache_values(
            &buffer_bytes(ctx, &cache.keys().buffer),
            fmt,
            pages * ps * h,
            d,
            scales_at,
        );
        let got0 = &rows[page0 * ps * h * d..][..ps * h * d];
        let (share, worst) = quantizer_gap(got0, &want0, fmt, d);
        assert!(
            share < 0.01 && worst <= 1.01,
            "{fmt}: {share} of values differ, by up to {worst} quanta"
        );
    }
}
