//! A CPU reference of the full semantics, in f64: what every backend is tested against.
//!
//! Inputs are contiguous BHSD host arrays. Logits are rounded to f32 before the softmax,
//! as every GPU backend (and PyTorch in f32) computes them: this is what makes a row of
//! finite sentinels (`-1e10`) come out as the mean of V, exactly as in PyTorch.

use crate::data::mask::{CausalAlignment, Window};

/// `n` seeded pseudo-random values, uniform in `[-1, 1)` and never all zero (xorshift64): the
/// inputs of the tests, examples and benchmarks.
pub fn random_uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(0x1234_5678)
        | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A contiguous BHSD host tensor.
#[derive(Clone, Debug)]
pub struct HostTensor<'a> {
    /// Elements in BHSD order.
    pub data: &'a [f32],
    /// `[batch, heads, seq, dim]`; for masks and biases `[B|1, H|1, Sq, Sk]`.
    pub shape: [usize; 4],
}

/// The mask of a reference call, as host data.
#[derive(Clone, Debug, Default)]
pub struct HostMask<'a> {
    /// Causal masking.
    pub causal: bool,
    /// Diagonal alignment (causal, window, ALiBi).
    pub alignment: CausalAlignment,
    /// Per-batch key lengths.
    pub key_lengths: Option<&'a [u32]>,
    /// Per-batch query lengths.
    pub query_lengths: Option<&'a [u32]>,
    /// Sliding window.
    pub window: Option<Window>,
    /// Bool mask (true = attend) and its shape.
    pub bool_mask: Option<(&'a [bool], [usize; 4])>,
    /// Additive bias.
    pub bias: Option<HostTensor<'a>>,
    /// ALiBi slopes per query head.
    pub alibi: Option<&'a [f32]>,
}

fn bcast_index(shape: [usize; 4], b: usize, h: usize, i: usize, j: usize) -> usize {
    let bb = if shape[0] == 1 { 0 } else { b };
    let hh = if shape[1] == 1 { 0 } else { h };
    ((bb * shape[1] + hh) * shape[2] + i) * shape[3] + j
}

/// Whether key `j` is visible to query `i` of batch `b`, head `h` (structural masks only).
pub fn visible(
    m: &HostMask<'_>,
    sq: usize,
    sk: usize,
    b: usize,
    h: usize,
    i: usize,
    j: usize,
) -> bool {
    let qv = m.query_lengths.map_or(sq, |l| l[b] as usize);
    let kv = m.key_lengths.map_or(sk, |l| l[b] as usize);
    if i >= qv || j >= kv {
        return false;
    }
    let off = offset(m, qv, kv);
    let centre = i as i64 + off;
    let j = j as i64;
    if m.causal && j > centre {
        return false;
    }
    if let Some(w) = m.window {
        if let Some(r) = w.right
            && j > centre + r as i64
        {
            return false;
        }
        if let Some(l) = w.left
            && j < centre - l as i64
        {
            return false;
        }
    }
    if let Some((data, shape)) = m.bool_mask
        && !data[bcast_index(shape, b, h, i, j as usize)]
    {
        return false;
    }
    true
}

fn offset(m: &HostMask<'_>, qv: usize, kv: usize) -> i64 {
    match m.alignment {
        CausalAlignment::TopLeft => 0,
        CausalAlignment::BottomRight => kv as i64 - qv as i64,
    }
}

/// The logits of row `i` of batch `ib`, head `ih` (rounded to f32, as the kernels compute
/// them) into `logits`, which keys take part into `vis`; returns their maximum (-inf when
/// none does).
fn row_logits(
    q: &HostTensor<'_>,
    k: &HostTensor<'_>,
    scale: f64,
    m: &HostMask<'_>,
    [ib, ih, i]: [usize; 3],
    logits: &mut [f64],
    vis: &mut [bool],
) -> f64 {
    let [_, hq, sq, d] = q.shape;
    let [_, hkv, sk, _] = k.shape;
    let hk = ih / (hq / hkv);
    let qv = m.query_lengths.map_or(sq, |l| l[ib] as usize);
    let kv = m.key_lengths.map_or(sk, |l| l[ib] as usize);
    let off = offset(m, qv, kv);
    let qrow = &q.data[((ib * hq + ih) * sq + i) * d..][..d];
    let mut mx = f64::NEG_INFINITY;
    for j in 0..sk {
        vis[j] = visible(m, sq, sk, ib, ih, i, j);
        if !vis[j] {
            continue;
        }
        let krow = &k.data[((ib * hkv + hk) * sk + j) * d..][..d];
        let dot: f64 = qrow
            .iter()
            .zip(krow)
            .map(|(&a, &c)| a as f64 * c as f64)
            .sum();
        let mut l = (dot * scale) as f32;
        if let Some(bias) = &m.bias {
            l += bias.data[bcast_index(bias.shape, ib, ih, i, j)];
        }
        if let Some(s) = m.alibi {
            l -= s[ih] * ((j as i64 - (i as i64 + off)).abs() as f32);
        }
        // A logit that is not finite (NaN or ±inf, from Q·K, the bias or both) takes no
        // part in the softmax, as in every kernel.
        if !l.is_finite() {
            vis[j] = false;
            continue;
        }
        logits[j] = l as f64;
        mx = mx.max(l as f64);
    }
    mx
}

/// Reference gradients of attention ([`attention_backward`]), in f64.
#[derive(Clone, Debug)]
pub struct HostGradients {
    /// dQ, Q's shape.
    pub dq: Vec<f64>,
    /// dK, K's shape (summed over each KV head's group of query heads).
    pub dk: Vec<f64>,
    /// dV, V's shape.
    pub dv: Vec<f64>,
    /// The bias gradient in the bias's shape (empty without a bias).
    pub dbias: Vec<f64>,
}

/// Reference backward pass: the analytic gradients of attention with respect to Q, K, V and
/// the additive bias, given dO (`[B, Hq, Sq, Dv]`). With P the attention weights,
/// dV = Pᵀ·dO, dS = P∘(dO·Vᵀ - rowsum(P∘(dO·Vᵀ))), dQ = scale·dS·K, dK = scale·dSᵀ·Q and
/// d(bias) = dS summed over the bias's broadcast dimensions. Rows with no visible key give
/// zeros.
pub fn attention_backward(
    q: &HostTensor<'_>,
    k: &HostTensor<'_>,
    v: &HostTensor<'_>,
    d_out: &[f32],
    scale: f64,
    m: &HostMask<'_>,
) -> HostGradients {
    attention_backward_from(q, k, v, d_out, None, scale, m)
}

/// [`attention_backward`] with D = rowsum(dO∘O) taken from `out` (`[B, Hq, Sq, Dv]`), the
/// forward's output as stored, when given: what a backward pass computes from a saved
/// output (FlashAttention-2's and PyTorch's take D so, and so does this crate's), where a
/// 16-bit output carries its rounding into D. The gradients of the loss are those with
/// `out` `None` (D from the exact output).
pub fn attention_backward_from(
    q: &HostTensor<'_>,
    k: &HostTensor<'_>,
    v: &HostTensor<'_>,
    d_out: &[f32],
    out: Option<&[f32]>,
    scale: f64,
    m: &HostMask<'_>,
) -> HostGradients {
    let [b, hq, sq, d] = q.shape;
    let [_, hkv, sk, _] = k.shape;
    let dv = v.shape[3];
    let group = hq / hkv;
    let mut g = HostGradients {
        dq: vec![0.0; q.data.len()],
        dk: vec![0.0; k.data.len()],
        dv: vec![0.0; v.data.len()],
        dbias: vec![0.0; m.bias.as_ref().map_or(0, |t| t.data.len())],
    };
    let (mut logits, mut vis) = (vec![0.0f64; sk], vec![false; sk]);
    let (mut p, mut dp) = (vec![0.0f64; sk], vec![0.0f64; sk]);
    for ib in 0..b {
        for ih in 0..hq {
            let hk = ih / group;
            for i in 0..sq {
                let mx = row_logits(q, k, scale, m, [ib, ih, i], &mut logits, &mut vis);
                if mx == f64::NEG_INFINITY {
                    continue;
                }
                let row = (ib * hq + ih) * sq + i;
                let dorow = &d_out[row * dv..][..dv];
                let mut sum = 0.0;
                for j in 0..sk {
                    p[j] = if vis[j] { (logits[j] - mx).exp() } else { 0.0 };
                    sum += p[j];
                }
                let mut dsum = 0.0;
                for j in 0..sk {
                    p[j] /= sum;
                    // Keys that take no part are never read (padding may hold anything).
                    if !vis[j] {
                        continue;
                    }
                    let vrow = &v.data[((ib * hkv + hk) * sk + j) * dv..][..dv];
                    dp[j] = dorow
                        .iter()
                        .zip(vrow)
                        .map(|(&a, &c)| a as f64 * c as f64)
                        .sum();
                    dsum += p[j] * dp[j];
                }
                if let Some(o) = out {
                    dsum = dorow
                        .iter()
                        .zip(&o[row * dv..][..dv])
                        .map(|(&a, &c)| a as f64 * c as f64)
                        .sum();
                }
                let qrow = &q.data[row * d..][..d];
                for j in 0..sk {
                    if !vis[j] {
                        continue;
                    }
                    let ds = p[j] * (dp[j] - dsum);
                    let kr = ((ib * hkv + hk) * sk + j) * d;
                    for (c, &qc) in qrow.iter().enumerate() {
                        g.dq[row * d + c] += scale * ds * k.data[kr + c] as f64;
                        g.dk[kr + c] += scale * ds * qc as f64;
                    }
                    let vr = ((ib * hkv + hk) * sk + j) * dv;
                    for (c, &gc) in dorow.iter().enumerate() {
                        g.dv[vr + c] += p[j] * gc as f64;
                    }
                    if let Some(bias) = &m.bias {
                        g.dbias[bcast_index(bias.shape, ib, ih, i, j)] += ds;
                    }
                }
            }
        }
    }
    g
}

/// Reference attention. `q`: `[B, Hq, Sq, D]`, `k`: `[B, Hkv, Sk, D]`, `v`: `[B, Hkv, Sk, Dv]`.
/// Returns `[B, Hq, Sq, Dv]` in f64.
pub fn attention(
    q: &HostTensor<'_>,
    k: &HostTensor<'_>,
    v: &HostTensor<'_>,
    scale: f64,
    m: &HostMask<'_>,
) -> Vec<f64> {
    attention_with_lse(q, k, v, scale, m).0
}

/// [`attention`], plus each row's log-sum-exp of its logits (`[B, Hq, Sq]`; `-inf` for a
/// row with no visible key).
pub fn attention_with_lse(
    q: &HostTensor<'_>,
    k: &HostTensor<'_>,
    v: &HostTensor<'_>,
    scale: f64,
    m: &HostMask<'_>,
) -> (Vec<f64>, Vec<f64>) {
    let [b, hq, sq, _] = q.shape;
    let [_, hkv, sk, _] = k.shape;
    let dv = v.shape[3];
    let group = hq / hkv;
    let mut out = vec![0.0f64; b * hq * sq * dv];
    let mut lse = vec![f64::NEG_INFINITY; b * hq * sq];
    let mut logits = vec![0.0f64; sk];
    let mut vis = vec![false; sk];
    for ib in 0..b {
        for ih in 0..hq {
            let hk = ih / group;
            for i in 0..sq {
                let mx = row_logits(q, k, scale, m, [ib, ih, i], &mut logits, &mut vis);
                let o = &mut out[((ib * hq + ih) * sq + i) * dv..][..dv];
                if mx == f64::NEG_INFINITY {
                    continue; // fully masked row: zeros
                }
                let mut sum = 0.0;
                for j in 0..sk {
                    if vis[j] {
                        let p = (logits[j] - mx).exp();
                        sum += p;
                        let vrow = &v.data[((ib * hkv + hk) * sk + j) * dv..][..dv];
                        for (x, &y) in o.iter_mut().zip(vrow) {
                            *x += p * y as f64;
                        }
                    }
                }
                for x in o.iter_mut() {
                    *x /= sum;
                }
                lse[(ib * hq + ih) * sq + i] = mx + sum.ln();
            }
        }
    }
    (out, lse)
}
