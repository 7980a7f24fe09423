//! Evidence that tile skipping really skips: the flash shader built with a tile counter
//! reports how many key tiles it loaded and how many needed per-element mask loads.
//! Counts, not timings.

mod common;

use common::*;
use wgpu_attention::{AttentionOptions, Backend, CausalAlignment, Context, DType, Mask, Tensor};

struct Setup {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    sq: usize,
    sk: usize,
    block_k: u32,
}

fn setup(ctx: &Context, sq: usize, sk: usize) -> Setup {
    let d = 64;
    let q = ctx.upload_f32(&random(sq * d, 1), [1, 1, sq, d]).unwrap();
    let k = ctx.upload_f32(&random(sk * d, 2), [1, 1, sk, d]).unwrap();
    let v = ctx.upload_f32(&random(sk * d, 3), [1, 1, sk, d]).unwrap();
    let out = nan_output(ctx, [1, 1, sq, d], DType::F32);
    let plan = ctx
        .plan(
            &q,
            &k,
            &v,
            &AttentionOptions::default().backend(Backend::Flash),
        )
        .unwrap();
    Setup {
        q,
        k,
        v,
        out,
        sq,
        sk,
        block_k: plan.variant.block_k(),
    }
}

fn counts(ctx: &Context, s: &Setup, mask: Mask) -> (u32, u32) {
    let opts = AttentionOptions::with_mask(mask).backend(Backend::Flash);
    ctx.debug_tile_counts(&s.q, &s.k, &s.v, &s.out, &opts)
        .unwrap()
}

fn tiles(keys: usize, bk: u32) -> u32 {
    (keys as u32).div_ceil(bk)
}

#[test]
fn key_padding_skips_padded_tiles() {
    let ctx = ctx();
    let s = setup(ctx, 128, 256);
    let q_tiles = s.sq as u32 / 64;
    assert_eq!(
        counts(ctx, &s, Mask::none()),
        (q_tiles * tiles(s.sk, s.block_k), 0)
    );
    assert_eq!(
        counts(ctx, &s, Mask::none().key_lengths(vec![128])),
        (q_tiles * tiles(128, s.block_k), 0)
    );
    assert_eq!(counts(ctx, &s, Mask::none().key_lengths(vec![0])), (0, 0));
}

#[test]
fn causal_and_window_skip_tiles_outside_the_band() {
    let ctx = ctx();
    let s = setup(ctx, 256, 256);
    // Query tile t (64 rows) needs keys [0, 64 (t + 1)).
    let causal: u32 = (0..4).map(|t| tiles(64 * (t + 1), s.block_k)).sum();
    assert_eq!(
        counts(ctx, &s, Mask::none().causal(CausalAlignment::TopLeft)),
        (causal, 0)
    );
    // Window of 32 keys to the left: tile t needs keys [64 t - 32, 64 t + 64).
    let bk = s.block_k as usize;
    let window: u32 = (0..4usize)
        .map(|t| {
            let lo = (64 * t).saturating_sub(32) / bk * bk;
            tiles(64 * (t + 1) - lo, s.block_k)
        })
        .sum();
    assert_eq!(
        counts(
            ctx,
            &s,
            Mask::none()
                .causal(CausalAlignment::TopLeft)
                .window(Some(32), None)
        ),
        (window, 0)
    );
}

#[test]
fn block_summary_skips_masked_tiles_and_mask_loads() {
    let ctx = ctx();
    let s = setup(ctx, 128, 256);
    let q_tiles = s.sq as u32 / 64;
    // The last half of every row's keys masked.
    let half: Vec<bool> = (0..s.sq * s.sk).map(|e| e % s.sk < s.sk / 2).collect();
    let m = ctx.upload_bool(&half, [1, 1, s.sq, s.sk]).unwrap();
    let summary = ctx.block_mask_blocking(m.view()).unwrap();
    let with = counts(
        ctx,
        &s,
        Mask::none().bool_mask_with_summary(m.view().clone(), summary.clone()),
    );
    assert_eq!(
        with,
        (q_tiles * tiles(s.sk / 2, s.block_k), 0),
        "masked tiles skipped, visible tiles load no mask"
    );
    // Computed on the fly when no summary is given: same counts.
    assert_eq!(
        counts(ctx, &s, Mask::none().bool_mask(m.view().clone())),
        with
    );
    // And the result is right.
    let got = ctx.download_f32_blocking(&s.out).unwrap();
    let out2 = nan_output(ctx, [1, 1, s.sq, 64], DType::F32);
    ctx.attention_into_blocking(
        &s.q,
        &s.k,
        &s.v,
        &out2,
        &AttentionOptions::with_mask(Mask::none().key_lengths(vec![(s.sk / 2) as u32]))
            .backend(Backend::Naive),
    )
    .unwrap();
    let want = ctx.download_f32_blocking(&out2).unwrap();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-5, "{worst}");

    // A random mask: every tile is mixed and needs per-element loads.
    let random_mask = random_bool(s.sq * s.sk, 4, 0.5);
    let m = ctx.upload_bool(&random_mask, [1, 1, s.sq, s.sk]).unwrap();
    let full = q_tiles * tiles(s.sk, s.block_k);
    assert_eq!(
        counts(ctx, &s, Mask::none().bool_mask(m.view().clone())),
        (full, full)
    );
    // All masked: nothing is loaded.
    let m = ctx
        .upload_bool(&vec![false; s.sq * s.sk], [1, 1, s.sq, s.sk])
        .unwrap();
    assert_eq!(
        counts(ctx, &s, Mask::none().bool_mask(m.view().clone())),
        (0, 0)
    );
}
