//! Paged K/V (issue 25): keys and values in a shuffled pool of pages, read through a page
//! table by every backend's kernels (flash in each form the adapter runs, the
//! memory-efficient kernel, the decode path's key splits, naive), against the f64 reference
//! over the contiguous keys (`reference::gather_pages` gives them from the pool), crossed
//! with the masks, GQA, dtypes and both page layouts (head-major and vLLM's token-major),
//! with page sizes that do and do not divide the key tiles.

mod common;

use common::*;
use wgpu_attention::{Backend, DType, PagedKv};

/// (b, hq, hkv, sq, sk, d): GQA with ragged lengths, Sq > Sk, and a decode shape (one query
/// row over 1023 keys).
const SHAPES: [(usize, usize, usize, usize, usize, usize); 3] = [
    (2, 4, 2, 7, 59, 64),
    (1, 2, 1, 113, 59, 64),
    (2, 4, 1, 1, 1023, 64),
];

/// Keys per page: vLLM's default, and one that divides no tile (pages end mid-tile).
const PAGE_SIZES: [usize; 2] = [16, 7];

/// Whether the default tier runs this case (`full_tier` runs the product): every mask on
/// flash in f32, no mask and every kind combined elsewhere in f32, and every kind combined in
/// f16 and bf16 on the dispatcher's choice.
fn default_case(backend: Backend, dtype: DType, mi: usize) -> bool {
    match dtype {
        DType::F32 => backend == Backend::Flash || mi == 0 || mi == 7,
        _ => backend == Backend::Auto && mi == 7,
    }
}

#[test]
fn paged_kv_matches_the_reference_on_every_backend() {
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
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (si, &(b, hq, hkv, sq, sk, d)) in SHAPES.iter().enumerate() {
                for (mi, mask) in masks(b, hq, sq, sk, 500 + si as u64)
                    .into_iter()
                    .enumerate()
                {
                    if !full && !default_case(backend, dtype, mi) {
                        continue;
                    }
                    let mut c = Case::new(b, hq, sq, sk, d)
                        .dtype(dtype)
                        .backend(backend)
                        .mask(mask);
                    c.hkv = hkv;
                    c.layout = layouts[(si + mi + n) % 3];
                    c.seed = (si * 37 + mi * 5 + n) as u64;
                    c.paged = Some(PAGE_SIZES[(si + mi + n) % 2]);
                    c.lse = mi % 2 == 1;
                    check(ctx, &c);
                    n += 1;
                }
            }
        }
    }
    let all = 4 * 3 * SHAPES.len() * 8;
    // Default: flash f32 with every mask (3 × 8), masks 0 and 7 on the three other backends
    // in f32 (3 × 3 × 2), and mask 7 on auto in f16 and bf16 (2 × 3).
    assert_eq!(n, if full { all } else { 24 + 18 + 6 });
}

/// The decode path (one to eight queries over long paged keys, split across workgroups and
/// merged), with both page layouts, the page sizes, GQA, key lengths, sinks and the cap.
#[test]
fn the_decode_path_reads_pages() {
    let ctx = ctx();
    for (n, (sq, sk, ps, dtype)) in [
        (1, 1023, 16, DType::F32),
        (4, 4000, 7, DType::F16),
        (1, 700, 1, DType::BF16),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = Case::new(2, 4, sq, sk, 64)
            .dtype(dtype)
            .backend(Backend::Decode);
        c.hkv = 2;
        c.paged = Some(ps);
        c.layout = [Layout::Bshd, Layout::Bhsd][n % 2];
        c.mask.key_lengths = Some(vec![sk as u32 - 5, (sk / 3) as u32]);
        c.mask.causal = Some(wgpu_attention::CausalAlignment::BottomRight);
        c.sinks = Some(vec![0.5, -1.0, 2.0, 0.0]);
        c.softcap = Some(4.0);
        c.lse = true;
        let (got, want, plan) = run_plan(ctx, &c);
        assert!(plan.key_splits > 1, "{plan}");
        assert!(plan.reason.contains("page table"), "{plan}");
        assert_close(&got, &want, c.out_dtype, &c.label());
    }
}

/// The product above can fail: the same pool read through a table that is wrong (the pages
/// in pool order, as a kernel that ignored the table would read them) gives outputs far
/// from the reference, since the pool's pages are shuffled among pages of junk.
#[test]
fn a_wrong_page_table_is_caught() {
    let ctx = ctx();
    for backend in [Backend::Flash, Backend::MemoryEfficient, Backend::Naive] {
        let mut c = Case::new(2, 4, 7, 59, 64).backend(backend);
        c.hkv = 2;
        c.paged = Some(16);
        let x = Prepared::new(ctx, &c);
        let right = x.paged.clone().expect("paged");
        let identity: Vec<u32> = (0..right.table.len() as u32).collect();
        assert_ne!(identity, right.table, "the shuffle moved no page");
        let out = nan_output(ctx, [c.b, c.hq, c.sq, c.dv], DType::F32);
        let mut opts = x.opts(ctx, &c);
        opts.paged = Some(PagedKv::new(16, right.pages_per_seq, identity).seq_len(59));
        ctx.attention_into_blocking(x.q.view(), x.k.view(), x.v.view(), out.view(), &opts)
            .expect("attention");
        let got = ctx.download_f32_blocking(out.view()).expect("download");
        let [q, k, v] = x.host();
        let want = wgpu_attention::reference::attention(&q, &k, &v, scale_of(&c), &x.host_mask(&c));
        let (atol, rtol) = tolerance(DType::F32);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(&g, &w)| (g as f64 - w).abs() / (atol + rtol * w.abs()))
            .fold(0.0, f64::max);
        assert!(
            worst > 1e3,
            "{backend:?}: a wrong table is off by {worst}× the tolerance only"
        );
    }
}

/// Each SIMT flash form reads pages too (the default on CPU adapters is the unrolled kernel):
/// one and two rows a thread, one and four threads a row (where subgroups allow), in 16-bit
/// word pairs (f16, BSHD pages) and element by element (bf16 at an odd offset).
#[test]
fn every_flash_form_reads_pages() {
    let ctx = ctx();
    let mut n = 0;
    for (tpr, rpt, bk) in [(1, 1, 16), (1, 2, 8), (4, 1, 32), (4, 2, 16)] {
        if tpr > 1 && !ctx.caps().subgroup {
            continue;
        }
        for (dtype, layout) in [
            (DType::F32, Layout::Bhsd),
            (DType::F16, Layout::Bshd),
            (DType::BF16, Layout::Offset),
        ] {
            let mut c = Case::new(2, 4, 70, 45, 64)
                .dtype(dtype)
                .backend(Backend::Flash)
                .mask(masks(2, 4, 70, 45, 9)[7].clone());
            c.hkv = 2;
            c.layout = layout;
            c.tuning = wgpu_attention::Tuning::new(Some(rpt), Some(bk), Some(tpr));
            c.paged = Some([16, 7, 1][n % 3]);
            c.seed = n as u64;
            check(ctx, &c);
            n += 1;
        }
    }
    assert!(n >= 6, "{n} forms ran");
}

/// The host mirror of one sequence of a paged cache: its K and V tokens, `[hkv, d]` each.
#[derive(Clone, Default)]
struct Mirror {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

/// `n` new tokens of each of `seqs` sequences, token-major (`[seqs, n, hkv, d]`), rounded to
/// `dtype`; the tensor is the `[seqs, hkv, n, d]` view appends take.
fn new_tokens(
    ctx: &wgpu_attention::Context,
    seqs: usize,
    n: usize,
    hkv: usize,
    d: usize,
    dtype: DType,
    seed: u64,
) -> (Vec<f32>, wgpu_attention::Tensor) {
    let data = round_to(dtype, &random(seqs * n * hkv * d, seed));
    let t = buffer_of(ctx, &data, dtype);
    let v = wgpu_attention::TensorView::bshd(t.buffer().clone(), dtype, [seqs, n, hkv, d]);
    (data, t.reshaped(dtype, v.shape, v.strides, 0))
}

/// A paged cache driven as a server drives it: prompts of different lengths, a fork that
/// shares a prompt's pages (its partly filled last page copied on the first write), decode
/// steps over all sequences in one batch, a chunk of three tokens appended and attended
/// bottom-right causally, a sequence removed and its pages reused. Every attention call is
/// checked against the f64 reference over each sequence's own tokens (GQA, f32 and f16).
#[test]
fn a_paged_cache_appends_forks_and_frees() {
    use wgpu_attention::reference::{self, HostMask, HostTensor};
    use wgpu_attention::{CausalAlignment, PagedKvCache};
    let ctx = ctx();
    let (hq, hkv, d, ps, pages) = (4, 2, 16, 4, 24);
    for dtype in [DType::F32, DType::F16] {
        let mut cache = PagedKvCache::new(ctx, pages, ps, hkv, d, dtype).expect("cache");
        let mut seed = 100;
        let mut mirrors: Vec<Mirror> = Vec::new();
        let mut ids = Vec::new();
        let mut append = |cache: &mut PagedKvCache,
                          mirrors: &mut Vec<Mirror>,
                          who: &[usize],
                          ids: &[wgpu_attention::SeqId],
                          n: usize| {
            seed += 2;
            let (kd, kt) = new_tokens(ctx, who.len(), n, hkv, d, dtype, seed);
            let (vd, vt) = new_tokens(ctx, who.len(), n, hkv, d, dtype, seed + 1);
            let seqs: Vec<_> = who.iter().map(|&i| ids[i]).collect();
            cache
                .append_blocking(ctx, &seqs, kt.view(), vt.view())
                .expect("append");
            for (s, &i) in who.iter().enumerate() {
                for t in 0..n {
                    let at = (s * n + t) * hkv * d;
                    mirrors[i].k.push(kd[at..at + hkv * d].to_vec());
                    mirrors[i].v.push(vd[at..at + hkv * d].to_vec());
                }
            }
        };
        // Checks attention of `sq` new queries per sequence over `who`'s caches.
        let check_all = |cache: &PagedKvCache,
                         mirrors: &[Mirror],
                         who: &[usize],
                         ids: &[wgpu_attention::SeqId],
                         sq: usize,
                         seed: u64| {
            let seqs: Vec<_> = who.iter().map(|&i| ids[i]).collect();
            let qd = round_to(dtype, &random(who.len() * hq * sq * d, seed));
            let q = upload(ctx, &qd, [who.len(), hq, sq, d], dtype, Layout::Bhsd);
            let opts = cache.options(&seqs).expect("options");
            let out = ctx
                .attention_blocking(q.view(), &cache.keys(), &cache.values(), &opts)
                .expect("attention");
            let got = ctx.download_f32_blocking(out.view()).expect("download");
            for (s, &i) in who.iter().enumerate() {
                let m = &mirrors[i];
                let len = m.k.len();
                assert_eq!(cache.len(ids[i]).unwrap(), len);
                // [1, hkv, len, d] from the mirror's tokens.
                let gather = |x: &Vec<Vec<f32>>| -> Vec<f32> {
                    (0..hkv)
                        .flat_map(|h| x.iter().flat_map(move |t| t[h * d..(h + 1) * d].to_vec()))
                        .collect()
                };
                let (kh, vh) = (gather(&m.k), gather(&m.v));
                let qs = &qd[s * hq * sq * d..(s + 1) * hq * sq * d];
                let host = |data, shape| HostTensor { data, shape };
                let want = reference::attention(
                    &host(qs, [1, hq, sq, d]),
                    &host(&kh, [1, hkv, len, d]),
                    &host(&vh, [1, hkv, len, d]),
                    1.0 / (d as f64).sqrt(),
                    &HostMask {
                        causal: true,
                        alignment: CausalAlignment::BottomRight,
                        ..Default::default()
                    },
                );
                let mine = &got[s * hq * sq * d..(s + 1) * hq * sq * d];
                assert_close(
                    mine,
                    &want,
                    dtype,
                    &format!("{dtype:?} sequence {i} of {who:?}, {len} tokens"),
                );
            }
        };
        for _ in 0..2 {
            ids.push(cache.add_sequence());
            mirrors.push(Mirror::default());
        }
        append(&mut cache, &mut mirrors, &[0], &ids, 7);
        append(&mut cache, &mut mirrors, &[1], &ids, 3);
        assert_eq!(cache.free_pages(), pages - 3);
        check_all(&cache, &mirrors, &[0, 1], &ids, 1, 1);
        // Sequence 2 shares sequence 0's two pages; its first append copies the second.
        ids.push(cache.fork(ids[0]).expect("fork"));
        mirrors.push(mirrors[0].clone());
        assert_eq!(cache.pages(ids[2]).unwrap(), cache.pages(ids[0]).unwrap());
        assert_eq!(cache.free_pages(), pages - 3);
        for step in 0..6 {
            append(&mut cache, &mut mirrors, &[0, 1, 2], &ids, 1);
            if step == 0 {
                let (a, c) = (cache.pages(ids[0]).unwrap(), cache.pages(ids[2]).unwrap());
                assert_eq!(a[0], c[0], "the full first page stays shared");
                assert_ne!(a[1], c[1], "the page being filled was copied");
            }
            check_all(&cache, &mirrors, &[0, 1, 2], &ids, 1, 10 + step);
        }
        // A chunk of three new queries per sequence, appended first.
        append(&mut cache, &mut mirrors, &[2, 1], &ids, 3);
        check_all(&cache, &mirrors, &[2, 1], &ids, 3, 20);
        // Removing sequence 0 frees the pages only it held.
        let before = cache.free_pages();
        let only_0 = cache
            .pages(ids[0])
            .unwrap()
            .iter()
            .filter(|p| !cache.pages(ids[2]).unwrap().contains(p))
            .count();
        cache.remove(ids[0]).expect("remove");
        assert_eq!(cache.free_pages(), before + only_0);
        assert!(cache.len(ids[0]).is_err());
        // New sequences reuse them.
        ids.push(cache.add_sequence());
        mirrors.push(Mirror::default());
        append(&mut cache, &mut mirrors, &[3], &ids, 9);
        check_all(&cache, &mirrors, &[1, 3, 2], &ids, 2, 30);
    }
}

/// Packed variable-length queries (FlashInfer's ragged Q) over paged keys: sequences of
/// different lengths, each with its own pages, checked per sequence against the reference
/// over its own keys; causal bottom-right (each chunk of new queries sees its prefix and
/// itself), GQA, on every backend that takes varlen, f32 and f16.
#[test]
fn packed_queries_over_paged_keys() {
    use wgpu_attention::reference::HostMask;
    use wgpu_attention::{AttentionOptions, CausalAlignment, Mask, TensorView, Varlen};
    let ctx = ctx();
    let (hq, hkv, d, ps) = (4, 2, 32, 16);
    let (ql, kl) = ([3u32, 1, 7], [40u32, 17, 7]);
    let vl = Varlen::from_lengths(&ql, &kl);
    let (tq, tk) = (11, 64);
    let pps = 3; // the longest sequence's 40 keys
    for (n, backend) in [Backend::Flash, Backend::MemoryEfficient, Backend::Naive]
        .into_iter()
        .enumerate()
    {
        let dtype = [DType::F32, DType::F16, DType::F32][n];
        // Packed host data, [tokens, heads, d].
        let qh = round_to(dtype, &random(tq * hq * d, 70 + n as u64));
        let kh = round_to(dtype, &random(tk * hkv * d, 71 + n as u64));
        let vh = round_to(dtype, &random(tk * hkv * d, 72 + n as u64));
        // Pages, token-major, in reverse order behind a spare page of junk.
        let pages = vl.batch() * pps + 1;
        let table: Vec<u32> = (0..(vl.batch() * pps) as u32)
            .map(|i| pages as u32 - 1 - i)
            .collect();
        let pool = |x: &[f32]| {
            let mut m = vec![300.0f32; pages * ps * hkv * d];
            for s in 0..vl.batch() {
                let k0 = vl.cu_seqlens_k[s] as usize;
                for j in 0..kl[s] as usize {
                    let at = (table[s * pps + j / ps] as usize * ps + j % ps) * hkv * d;
                    let from = (k0 + j) * hkv * d;
                    m[at..at + hkv * d].copy_from_slice(&x[from..from + hkv * d]);
                }
            }
            let t = buffer_of(ctx, &m, dtype);
            let v = TensorView::bshd(t.buffer().clone(), dtype, [pages, ps, hkv, d]);
            t.reshaped(dtype, v.shape, v.strides, 0)
        };
        let (k, v) = (pool(&kh), pool(&vh));
        let qt = buffer_of(ctx, &qh, dtype);
        let qv = TensorView::packed_varlen(qt.buffer().clone(), dtype, tq, hq, d);
        let q = qt.reshaped(dtype, qv.shape, qv.strides, 0);
        let out = nan_output(ctx, [1, hq, tq, d], DType::F32);
        let opts = AttentionOptions::with_mask(Mask::none().causal(CausalAlignment::BottomRight))
            .backend(backend)
            .varlen(vl.clone())
            .paged(PagedKv::new(ps, pps, table.clone()));
        ctx.attention_into_blocking(q.view(), k.view(), v.view(), out.view(), &opts)
            .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
        let got = ctx.download_f32_blocking(out.view()).expect("download");
        let host = HostMask {
            causal: true,
            alignment: CausalAlignment::BottomRight,
            ..Default::default()
        };
        let want = varlen_reference(&vl, (hq, hkv, d), [&qh, &kh, &vh], &host);
        assert_close(&got, &want, DType::F32, &format!("{backend:?} {dtype:?}"));
    }
}
