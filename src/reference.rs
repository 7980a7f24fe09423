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
    /// Logit soft cap: `cap · tanh(s / cap)` of the scaled logit, before bias and ALiBi
    /// (Gemma 2).
    pub softcap: Option<f32>,
    /// Sink logits per query head: each joins its rows' softmax denominators with no value
    /// (gpt-oss).
    pub sinks: Option<&'a [f32]>,
}

/// The soft cap of an f32 logit, in f64, rounded to f32 as the kernels keep it.
fn soft_capped(l: f32, cap: f32) -> f32 {
    let cap = cap as f64;
    (cap * (l as f64 / cap).tanh()) as f32
}

/// `d cap·tanh(s/cap) / ds` at the capped value `c`: `1 - (c / cap)²`.
fn softcap_slope(c: f64, cap: f32) -> f64 {
    let t = c / cap as f64;
    1.0 - t * t
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

/// One row's logits, soft-capped scores and visibility, reused across rows.
struct RowScratch {
    logits: Vec<f64>,
    capped: Vec<f64>,
    vis: Vec<bool>,
}

impl RowScratch {
    fn new(sk: usize) -> Self {
        RowScratch {
            logits: vec![0.0; sk],
            capped: vec![0.0; sk],
            vis: vec![false; sk],
        }
    }
}

/// The logits of row `i` of batch `ib`, head `ih` (rounded to f32, as the kernels compute
/// them) into `row.logits`, with a soft cap the capped scores before bias and ALiBi into
/// `row.capped`, which keys take part into `row.vis`; returns their maximum (-inf when none
/// does).
fn row_logits(
    q: &HostTensor<'_>,
    k: &HostTensor<'_>,
    scale: f64,
    m: &HostMask<'_>,
    [ib, ih, i]: [usize; 3],
    row: &mut RowScratch,
) -> f64 {
    let RowScratch {
        logits,
        capped,
        vis,
    } = row;
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
        if let Some(cap) = m.softcap {
            l = soft_capped(l, cap);
            capped[j] = l as f64;
        }
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
    /// The sinks' gradient, one per query head (empty without sinks).
    pub dsink: Vec<f64>,
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
        dsink: vec![0.0; m.sinks.map_or(0, |s| s.len())],
    };
    let mut row_s = RowScratch::new(sk);
    let (mut p, mut dp) = (vec![0.0f64; sk], vec![0.0f64; sk]);
    for ib in 0..b {
        for ih in 0..hq {
            let hk = ih / group;
            for i in 0..sq {
                let mx = row_logits(q, k, scale, m, [ib, ih, i], &mut row_s);
                let RowScratch {
                    logits,
                    capped,
                    vis,
                } = &row_s;
                let sink = m.sinks.map(|s| s[ih] as f64);
                if mx == f64::NEG_INFINITY {
                    // No key: output 0 whatever the sink, and no gradient reaches it.
                    continue;
                }
                let mx = sink.map_or(mx, |s| mx.max(s));
                let row = (ib * hq + ih) * sq + i;
                let dorow = &d_out[row * dv..][..dv];
                let mut sum = sink.map_or(0.0, |s| (s - mx).exp());
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
                // The sink's weight, its value 0: dS_sink = p_sink · (0 - D).
                if let Some(s) = sink {
                    g.dsink[ih] -= (s - mx).exp() / sum * dsum;
                }
                let qrow = &q.data[row * d..][..d];
                for j in 0..sk {
                    if !vis[j] {
                        continue;
                    }
                    let ds = p[j] * (dp[j] - dsum);
                    // The soft cap's slope carries dS back to the scores q·k (the bias is
                    // added after the cap: its gradient is dS).
                    let ds_qk = m
                        .softcap
                        .map_or(ds, |cap| ds * softcap_slope(capped[j], cap));
                    let kr = ((ib * hkv + hk) * sk + j) * d;
                    for (c, &qc) in qrow.iter().enumerate() {
                        g.dq[row * d + c] += scale * ds_qk * k.data[kr + c] as f64;
                        g.dk[kr + c] += scale * ds_qk * qc as f64;
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

/// The contiguous `[B, H, seq_len, D]` keys (or values) that paged attention reads
/// ([`crate::PagedKv`]): key `j` of batch item `b` from slot `j % page_size` of page
/// `table[b * pages_per_seq + j / page_size]` of `pool`, a logical
/// `[num_pages, H, page_size, D]` host tensor.
pub fn gather_pages(pool: &HostTensor<'_>, paged: &crate::data::options::PagedKv) -> Vec<f32> {
    let [_, h, ps, d] = pool.shape;
    let pps = paged.pages_per_seq;
    let b = paged.table.len() / pps.max(1);
    let sk = paged.seq_len;
    let mut out = Vec::with_capacity(b * h * sk * d);
    for ib in 0..b {
        for ih in 0..h {
            for j in 0..sk {
                let page = paged.table[ib * pps + j / ps] as usize;
                let at = ((page * h + ih) * ps + j % ps) * d;
                out.extend_from_slice(&pool.data[at..at + d]);
            }
        }
    }
    out
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
    let mut row_s = RowScratch::new(sk);
    for ib in 0..b {
        for ih in 0..hq {
            let hk = ih / group;
            for i in 0..sq {
                let mx = row_logits(q, k, scale, m, [ib, ih, i], &mut row_s);
                let RowScratch { logits, vis, .. } = &row_s;
                let o = &mut out[((ib * hq + ih) * sq + i) * dv..][..dv];
                let sink = m.sinks.map(|s| s[ih] as f64);
                if mx == f64::NEG_INFINITY {
                    // A fully masked row: zeros; its log-sum-exp is the sink's, if any.
                    if let Some(s) = sink {
                        lse[(ib * hq + ih) * sq + i] = s;
                    }
                    continue;
                }
                let mx = sink.map_or(mx, |s| mx.max(s));
                let mut sum = sink.map_or(0.0, |s| (s - mx).exp());
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
