//! Seeded random problems, valid and invalid: shapes, GQA, layouts and offsets, dtypes,
//! every mask kind with broadcasting, scales, log-sum-exp outputs and backends. A valid
//! problem must agree with the f64 reference; an invalid one (one thing broken at random)
//! must be an `InvalidInput` naming the broken tensor; nothing may panic. Head dims stay in
//! one bucket (at most 32) so that a run compiles few pipelines (GL compiles each for
//! seconds).

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::*;
use wgpu_attention::error::TensorRole;
use wgpu_attention::{AttentionOptions, Backend, CausalAlignment, DType, Error, Tensor, Window};

/// xorshift64: the cases are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }
}

fn random_case(r: &mut Rng, seed: u64) -> Case {
    let b = r.range(1, 3);
    let hkv = r.range(1, 2);
    let hq = hkv * r.range(1, 2);
    let (sq, sk) = (r.range(1, 40), r.range(1, 40));
    let mut c = Case::new(b, hq, sq, sk, r.range(1, 32));
    c.hkv = hkv;
    c.dv = if r.chance(1, 3) { r.range(1, 32) } else { c.dk };
    c.seed = seed;
    c.dtype = [DType::F32, DType::F16, DType::BF16][r.below(3)];
    c.out_dtype = [DType::F32, c.dtype][r.below(2)];
    c.layout = [Layout::Bhsd, Layout::Bshd, Layout::Offset][r.below(3)];
    c.backend = [
        Backend::Auto,
        Backend::Flash,
        Backend::MemoryEfficient,
        Backend::Naive,
    ][r.below(4)];
    if r.chance(1, 4) {
        c.scale = Some([0.05, 0.3, 1.0][r.below(3)]);
    }
    c.lse = r.chance(1, 3);
    let m = &mut c.mask;
    if r.chance(1, 3) {
        m.causal = Some([CausalAlignment::TopLeft, CausalAlignment::BottomRight][r.below(2)]);
    }
    if r.chance(1, 3) {
        m.key_lengths = Some((0..b).map(|_| r.range(0, sk) as u32).collect());
    }
    if r.chance(1, 4) {
        m.query_lengths = Some((0..b).map(|_| r.range(0, sq) as u32).collect());
    }
    if r.chance(1, 4) {
        let side = |r: &mut Rng| r.chance(2, 3).then(|| r.range(0, 12) as u32);
        m.window = Some(Window {
            left: side(r),
            right: side(r),
        });
        m.alignment = [CausalAlignment::TopLeft, CausalAlignment::BottomRight][r.below(2)];
    }
    if r.chance(1, 4) {
        let shape = [[b, 1][r.below(2)], [hq, 1][r.below(2)], sq, sk];
        let n = shape.iter().product();
        m.bool_mask = Some((random_bool(n, seed + 5, 0.7), shape));
        m.summary = r.chance(1, 2);
    }
    if r.chance(1, 4) {
        let shape = [[b, 1][r.below(2)], [hq, 1][r.below(2)], sq, sk];
        let n = shape.iter().product();
        m.bias = Some((
            random(n, seed + 6),
            shape,
            [DType::F32, DType::F16][r.below(2)],
        ));
    }
    if r.chance(1, 5) {
        m.alibi = Some((0..hq).map(|i| 0.05 * (i + 1) as f32).collect());
    }
    c
}

/// One way to break a valid problem, and the tensor the error must name.
fn break_case(r: &mut Rng, ctx: &wgpu_attention::Context, c: &Case) -> (String, TensorRole, Error) {
    let seeded = |shape: [usize; 4], seed| {
        let data = random(shape.iter().product(), seed);
        upload(ctx, &data, shape, DType::F32, Layout::Bhsd)
    };
    let q = seeded([c.b, c.hq, c.sq, c.dk], 1);
    let k = seeded([c.b, c.hkv, c.sk, c.dk], 2);
    let v = seeded([c.b, c.hkv, c.sk, c.dv], 3);
    let out = nan_output(ctx, [c.b, c.hq, c.sq, c.dv], DType::F32);
    let mut opts = AttentionOptions::default().backend(c.backend);
    let grown = |t: &Tensor, dim: usize, by: usize| {
        let mut s = t.shape();
        s[dim] += by;
        t.reshaped(DType::F32, s, [0, 0, 0, 1], 0)
    };
    let (what, role, err) = match r.below(12) {
        0 => (
            "K batch",
            TensorRole::Key,
            ctx.attention_into_blocking(&q, &grown(&k, 0, 1), &v, &out, &opts),
        ),
        1 => (
            "V heads",
            TensorRole::Value,
            ctx.attention_into_blocking(&q, &k, &grown(&v, 1, 1), &out, &opts),
        ),
        2 => (
            "V seq",
            TensorRole::Value,
            ctx.attention_into_blocking(&q, &k, &grown(&v, 2, 1), &out, &opts),
        ),
        3 => (
            "K head dim",
            TensorRole::Key,
            ctx.attention_into_blocking(&q, &grown(&k, 3, 1), &v, &out, &opts),
        ),
        4 => (
            "out seq",
            TensorRole::Output,
            ctx.attention_into_blocking(&q, &k, &v, &grown(&out, 2, 1), &opts),
        ),
        5 => {
            let off = q.reshaped(DType::F32, q.shape(), q.strides, 2);
            (
                "Q misaligned",
                TensorRole::Query,
                ctx.attention_into_blocking(&off, &k, &v, &out, &opts),
            )
        }
        6 => {
            let past = k.reshaped(DType::F32, k.shape(), k.strides, 4);
            (
                "K past its buffer",
                TensorRole::Key,
                ctx.attention_into_blocking(&q, &past, &v, &out, &opts),
            )
        }
        7 => {
            opts.mask = opts.mask.key_lengths(vec![c.sk as u32 + 1; c.b]);
            (
                "key length",
                TensorRole::KeyLengths,
                ctx.attention_into_blocking(&q, &k, &v, &out, &opts),
            )
        }
        8 => {
            opts.mask = opts.mask.alibi(vec![0.1; c.hq + 1]);
            (
                "alibi count",
                TensorRole::AlibiSlopes,
                ctx.attention_into_blocking(&q, &k, &v, &out, &opts),
            )
        }
        9 => {
            let bias = nan_output(ctx, [c.b, c.hq, c.sq, c.sk + 1], DType::F32);
            opts.mask = opts.mask.bias(bias.view().clone());
            (
                "bias keys",
                TensorRole::Bias,
                ctx.attention_into_blocking(&q, &k, &v, &out, &opts),
            )
        }
        10 => {
            let lse = nan_output(ctx, [c.b, c.hq, c.sq + 1, 1], DType::F32);
            opts.lse_output = Some(lse.view().clone());
            (
                "lse rows",
                TensorRole::Lse,
                ctx.attention_into_blocking(&q, &k, &v, &out, &opts),
            )
        }
        _ => {
            opts.scale = Some(f32::NAN);
            (
                "scale",
                TensorRole::Options,
                ctx.attention_into_blocking(&q, &k, &v, &out, &opts),
            )
        }
    };
    (
        what.to_string(),
        role,
        err.expect_err("a broken problem must be rejected"),
    )
}

#[test]
fn random_problems_never_panic_and_are_right_or_rejected() {
    let ctx = ctx();
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut valid, mut invalid) = (0, 0);
    for n in 0..160u64 {
        let c = random_case(&mut r, n);
        let label = c.label();
        if r.chance(1, 3) {
            let res = catch_unwind(AssertUnwindSafe(|| break_case(&mut r, ctx, &c)));
            let (what, role, err) = res.unwrap_or_else(|_| panic!("case {n} ({label}) panicked"));
            match err {
                Error::InvalidInput(e) => assert_eq!(e.tensor, role, "case {n} {what}: {e}"),
                other => panic!("case {n} {what}: expected InvalidInput, got {other:?}"),
            }
            invalid += 1;
        } else {
            if catch_unwind(AssertUnwindSafe(|| check(ctx, &c))).is_err() {
                panic!("case {n}: {label} failed (see above)");
            }
            valid += 1;
        }
    }
    eprintln!(
        "property: {valid} valid problems agreed with the reference, {invalid} invalid ones were rejected"
    );
    assert!(valid > 50 && invalid > 30);
}
