//! LLM serving's score terms (issue 25): logit soft-capping (Gemma 2: `cap · tanh(s / cap)`
//! of the scaled logit, before bias and ALiBi) and attention sinks (gpt-oss: one logit per
//! query head in every row's denominator, with no value). Every backend (flash, the
//! memory-efficient kernel, the decode path's key splits, naive) against the f64 reference,
//! crossed with the masks, GQA, dtypes and layouts, with the log-sum-exp output (which
//! includes the sink).

mod common;

use common::*;
use wgpu_attention::reference;
use wgpu_attention::{Backend, DType};

/// (b, hq, hkv, sq, sk, d): GQA with ragged lengths, Sq > Sk, and a decode shape (one query
/// row over 1023 keys: the decode path splits the keys).
const SHAPES: [(usize, usize, usize, usize, usize, usize); 3] = [
    (2, 4, 2, 7, 59, 64),
    (1, 2, 1, 113, 59, 64),
    (2, 4, 1, 1, 1023, 64),
];

/// Sink logits per head: below, inside and far above the logits' range (a sink of 9
/// outweighs every key of a row).
fn sinks(h: usize) -> Vec<f32> {
    [0.5, -2.0, 3.0, 9.0]
        .iter()
        .cycle()
        .take(h)
        .copied()
        .collect()
}

/// Which terms a case runs with: the soft cap, the sinks, or both.
#[derive(Clone, Copy, Debug)]
enum Terms {
    Softcap,
    Sinks,
    Both,
}

fn with_terms(mut c: Case, t: Terms) -> Case {
    // Q scaled up so that logits reach past the cap (|s| up to about 6 here).
    c.q_gain = 6.0;
    if matches!(t, Terms::Softcap | Terms::Both) {
        c.softcap = Some(2.5);
    }
    if matches!(t, Terms::Sinks | Terms::Both) {
        c.sinks = Some(sinks(c.hq));
    }
    c.lse = true;
    c
}

/// Whether the default tier runs this case (`full_tier` runs the product): both terms with
/// every mask on flash in f32, and elsewhere no mask and the combination of every kind.
fn default_case(backend: Backend, dtype: DType, mi: usize, t: Terms) -> bool {
    if !matches!(t, Terms::Both) {
        return mi == 0 && dtype == DType::F32;
    }
    (backend == Backend::Flash && dtype == DType::F32) || mi == 0 || mi == 7
}

#[test]
fn softcap_and_sinks_match_the_reference_on_every_backend() {
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
                for (mi, mask) in masks(b, hq, sq, sk, 300 + si as u64)
                    .into_iter()
                    .enumerate()
                {
                    for t in [Terms::Softcap, Terms::Sinks, Terms::Both] {
                        if !full && !default_case(backend, dtype, mi, t) {
                            continue;
                        }
                        let mut c = Case::new(b, hq, sq, sk, d)
                            .dtype(dtype)
                            .backend(backend)
                            .mask(mask.clone());
                        c.hkv = hkv;
                        c.layout = layouts[(si + mi + n) % 3];
                        c.seed = (si * 31 + mi * 7 + n) as u64;
                        check(ctx, &with_terms(c, t));
                        n += 1;
                    }
                }
            }
        }
    }
    let masks_n = 8;
    let all = 4 * 3 * SHAPES.len() * masks_n * 3;
    // Default: each term alone unmasked in f32 (4 backends × 3 shapes × 2), both terms with
    // every mask on flash f32 (3 × 8), and with masks 0 and 7 elsewhere (11 × 3 × 2).
    assert_eq!(n, if full { all } else { 24 + 24 + 66 });
}

/// The decode path splits a row's keys across workgroups and merges them by log-sum-exp:
/// the sink must join the row once, however many splits there are.
#[test]
fn the_decode_path_counts_each_sink_once() {
    let ctx = ctx();
    for (sk, t) in [
        (1023, Terms::Both),
        (4000, Terms::Sinks),
        (64, Terms::Sinks),
    ] {
        let mut c = Case::new(2, 4, 1, sk, 64).backend(Backend::Decode);
        c.hkv = 2;
        let c = with_terms(c, t);
        let (got, want, plan) = run_plan(ctx, &c);
        assert!(plan.key_splits > 1 || sk == 64, "{plan}");
        assert_close(&got, &want, DType::F32, &c.label());
    }
}

/// A row that sees no key gives 0 with a sink too (its weights sum to 0 of a denominator of
/// exp(sink)), and its log-sum-exp is the sink's logit.
#[test]
fn a_row_with_no_key_gives_zero_and_the_sinks_log_sum_exp() {
    let ctx = ctx();
    for backend in [Backend::Flash, Backend::MemoryEfficient, Backend::Naive] {
        let mut c = Case::new(2, 2, 5, 9, 16).backend(backend);
        c.mask.key_lengths = Some(vec![0, 9]);
        let c = with_terms(c, Terms::Both);
        let (got, want, _) = run_plan(ctx, &c);
        assert_close(&got, &want, DType::F32, &c.label());
        // Batch item 0: every element exactly 0.
        let item = 2 * 5 * 16;
        assert!(got[..item].iter().all(|&x| x == 0.0), "{}", c.label());
    }
}

/// The product above can fail: with these inputs the soft cap and the sinks move the
/// reference by far more than the tolerance, so a kernel that ignored either would be caught.
#[test]
fn the_terms_change_the_output_by_more_than_the_tolerance() {
    let ctx = ctx();
    let (b, hq, hkv, sq, sk, d) = SHAPES[0];
    let mut plain = Case::new(b, hq, sq, sk, d);
    plain.hkv = hkv;
    plain.q_gain = 6.0;
    let x = Prepared::new(ctx, &plain);
    let [q, k, v] = x.host();
    let scale = scale_of(&plain);
    let base = reference::attention(&q, &k, &v, scale, &x.host_mask(&plain));
    let (atol, _) = tolerance(DType::BF16);
    for t in [Terms::Softcap, Terms::Sinks] {
        let c = with_terms(plain.clone(), t);
        let moved = reference::attention(&q, &k, &v, scale, &x.host_mask(&c));
        let diff = base
            .iter()
            .zip(&moved)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            diff > 20.0 * atol,
            "{t:?} moves the output by {diff:e} only"
        );
    }
}

/// The reference's gradients of both terms (the soft cap's slope in dQ and dK, the bias's
/// gradient taken after the cap, dsink) against central differences of its f64 forward:
/// the targets their backward kernels will be held to.
#[test]
fn reference_gradients_of_both_terms_match_finite_differences() {
    use wgpu_attention::CausalAlignment;
    use wgpu_attention::reference::{HostMask, HostTensor};
    const QS: [usize; 4] = [2, 2, 5, 4];
    const KS: [usize; 4] = [2, 1, 6, 4];
    const BIAS: [usize; 4] = [1, 2, 5, 6];
    const KL: [u32; 2] = [6, 0];
    let (scale, cap) = (0.9, 1.5f32);
    /// Q, K, V, the bias and the sinks.
    fn mask<'a>(x: &'a [Vec<f32>; 5], cap: f32) -> HostMask<'a> {
        HostMask {
            causal: true,
            alignment: CausalAlignment::BottomRight,
            key_lengths: Some(&KL),
            bias: Some(HostTensor {
                data: &x[3],
                shape: BIAS,
            }),
            softcap: Some(cap),
            sinks: Some(&x[4]),
            ..Default::default()
        }
    }
    fn qkv(x: &[Vec<f32>; 5]) -> [HostTensor<'_>; 3] {
        [
            HostTensor {
                data: &x[0],
                shape: QS,
            },
            HostTensor {
                data: &x[1],
                shape: KS,
            },
            HostTensor {
                data: &x[2],
                shape: KS,
            },
        ]
    }
    let n = |s: [usize; 4]| s.iter().product::<usize>();
    // Q scaled so that the cap bends the logits.
    let base: [Vec<f32>; 5] = [
        random(n(QS), 1).iter().map(|x| x * 3.0).collect(),
        random(n(KS), 2),
        random(n(KS), 3),
        random(n(BIAS), 5),
        vec![0.3, -0.8],
    ];
    let d_out = random(n(QS), 4);
    let loss = |x: &[Vec<f32>; 5]| -> f64 {
        let [q, k, v] = qkv(x);
        let o = reference::attention(&q, &k, &v, scale, &mask(x, cap));
        o.iter().zip(&d_out).map(|(a, &g)| a * g as f64).sum()
    };
    let [q, k, v] = qkv(&base);
    let g = reference::attention_backward(&q, &k, &v, &d_out, scale, &mask(&base, cap));
    let eps = 1e-2f32;
    let mut checked = 0;
    for (which, analytic) in [&g.dq, &g.dk, &g.dv, &g.dbias, &g.dsink]
        .into_iter()
        .enumerate()
    {
        assert_eq!(analytic.len(), base[which].len());
        for e in (0..base[which].len()).step_by(if which == 4 { 1 } else { 3 }) {
            let at = |delta: f32| {
                let mut x = base.clone();
                x[which][e] += delta;
                loss(&x)
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            let a = analytic[e];
            assert!(
                (fd - a).abs() <= 2e-3 + 2e-2 * a.abs(),
                "tensor {which} element {e}: finite difference {fd}, analytic {a}"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "{checked}");
    // The sinks do get a gradient (batch item 1 sees no key, item 0 does).
    assert!(g.dsink.iter().all(|&x| x != 0.0), "{:?}", g.dsink);
}
