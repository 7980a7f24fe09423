//! Calls too large for the adapter's storage bindings, run as several calls over parts of
//! the batch, the query heads, the query rows and, last, the keys.
//!
//! wgpu binds at most `max_storage_buffer_binding_size` bytes of a buffer to one shader
//! binding (128 MiB in `wgpu::Limits::default()`, which many applications create their
//! device with). Q, the output, the log-sum-exp output, a bool mask and a bias are split
//! along every dimension a part can own on its own: batch items first, then whole groups of
//! query heads (each group with its key/value head), then single query heads, then query
//! rows. Only when one query row of one head still needs too large a binding (K and V of a
//! long sequence in a layout that interleaves heads, such as BSHD or packed QKV) are the keys
//! split too: each part then runs once per chunk of keys into f32 scratch with its
//! log-sum-exp, and the chunks are merged exactly (`shaders/merge.wgsl`).
//!
//! A part does not start at query row 0 or key 0, so the mask terms that depend on indices
//! (causal, window, ALiBi, query and key lengths) are rebased: each part's kernel gets its
//! own valid query and key counts and the diagonal's offset in its own indices
//! ([`PartRows`], read through `F_DIAG` in `shaders/common.wgsl`). Everything else about a
//! part is an ordinary call on narrowed views, with the plan of the whole call.

use crate::data::mask::CausalAlignment;
use crate::data::options::{AttentionOptions, KvScales, PagedKv, Varlen};
use crate::data::tensor::{DType, TensorView, end_byte};
use crate::error::{Error, Result, TensorRole};
use crate::plan::validate::Problem;

/// The start and size of the smallest binding, aligned to `align` bytes, that covers bytes
/// `offset..end` (whole 32-bit words, at least one).
pub(crate) fn binding_extent(offset: u64, end: u64, align: u64) -> (u64, u64) {
    let start = offset / align * align;
    let end = end.div_ceil(4).saturating_mul(4).max(start + 4);
    (start, end - start)
}

/// The bytes of the binding `window` makes for `view`.
pub(crate) fn binding_size(view: &TensorView, align: u64) -> u64 {
    binding_extent(view.offset, view.end_byte().unwrap_or(u64::MAX), align).1
}

/// A part of a call: batch items `b0..b0 + nb`, query heads `h0..h0 + nh` (whole GQA
/// groups, or one head), query rows `r0..r0 + nr` (all rows of a packed variable-length
/// batch) and keys `k0..k0 + nk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    pub b0: usize,
    pub nb: usize,
    pub h0: usize,
    pub nh: usize,
    pub r0: usize,
    pub nr: usize,
    pub k0: usize,
    pub nk: usize,
}

impl Part {
    /// The part over keys `k0..k0 + nk`.
    pub(crate) fn keys(self, (k0, nk): (usize, usize)) -> Part {
        Part { k0, nk, ..self }
    }
}

/// How a call runs when it does not fit one call: its parts over batch items, heads and
/// query rows (each over all keys), and the chunks of keys `(k0, nk)` every part runs over
/// (one chunk, all keys, unless even one query row of one head does not fit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Split {
    pub parts: Vec<Part>,
    pub keys: Vec<(usize, usize)>,
}

impl Split {
    /// The number of calls.
    pub(crate) fn calls(&self) -> usize {
        self.parts.len() * self.keys.len()
    }
}

/// What a part's kernel reads instead of the call's own lengths, per batch item of the part
/// and in the part's own indices: valid query rows, valid keys, and the diagonal's offset
/// (a key `j` is on row `i`'s diagonal when `j == i + diag`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PartRows {
    pub qlen: Vec<u32>,
    pub klen: Vec<u32>,
    pub diag: Vec<i32>,
}

/// Where a tensor lies in its buffer, without the buffer.
#[derive(Clone, Copy, Debug)]
struct Geom {
    offset: u64,
    dtype: DType,
    shape: [usize; 4],
    strides: [usize; 4],
}

impl Geom {
    fn of(v: &TensorView) -> Self {
        Geom {
            offset: v.offset,
            dtype: v.dtype,
            shape: v.shape,
            strides: v.strides,
        }
    }

    fn narrow(mut self, dim: usize, start: usize, count: usize) -> Self {
        self.offset += self.dtype.bytes((start * self.strides[dim]) as u64);
        self.shape[dim] = count;
        self
    }

    /// The bytes of the binding that covers it (as `launch::window` binds it).
    fn binding(&self, align: u64) -> u64 {
        let end = end_byte(self.offset, self.dtype, self.shape, self.strides);
        binding_extent(self.offset, end.unwrap_or(u64::MAX), align).1
    }

    fn apply(&self, v: &TensorView) -> TensorView {
        TensorView {
            offset: self.offset,
            shape: self.shape,
            ..v.clone()
        }
    }
}

/// How a tensor's dimensions follow a part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `[B, Hq, Sq, ·]`: Q, the output, the log-sum-exp.
    Rows,
    /// `[B, Hkv, Sk, ·]`: K and V.
    Keys,
    /// `[B|1, Hq|1, Sq, Sk]`: a bool mask or a bias.
    Scores,
}

/// The tensors of a call and how each narrows to a part.
pub(crate) struct Layout<'a> {
    tensors: Vec<(TensorRole, Kind, Geom)>,
    group: usize,
    varlen: Option<&'a Varlen>,
    /// Paged K/V: the pool is bound whole (narrowed to a part's heads only), and a part's
    /// batch items get their rows of the page table.
    paged: Option<&'a PagedKv>,
    batch: usize,
    heads: usize,
    rows: usize,
    keys: usize,
    dv: usize,
    /// Key splits of the decode path, whose f32 scratch (every split's partial output)
    /// must fit a binding too.
    decode_splits: usize,
}

impl<'a> Layout<'a> {
    /// The call's tensors; `out` is `None` for the output [`crate::Context::attention`]
    /// allocates (contiguous, in the problem's output dtype).
    pub(crate) fn new(
        p: &Problem,
        [q, k, v]: [&TensorView; 3],
        out: Option<&TensorView>,
        opts: &'a AttentionOptions,
    ) -> Self {
        let out = out.map(Geom::of).unwrap_or_else(|| {
            let (hq, s, d) = (p.heads_q, q.shape[2], p.head_dim_v);
            let strides = if opts.varlen.is_some() {
                [s * hq * d, d, hq * d, 1]
            } else {
                [hq * s * d, s * d, d, 1]
            };
            Geom {
                offset: 0,
                dtype: p.dtype_o,
                shape: [q.shape[0], hq, s, d],
                strides,
            }
        });
        let m = &opts.mask;
        let mut tensors = vec![
            (TensorRole::Query, Kind::Rows, Geom::of(q)),
            (TensorRole::Key, Kind::Keys, Geom::of(k)),
            (TensorRole::Value, Kind::Keys, Geom::of(v)),
            (TensorRole::Output, Kind::Rows, out),
        ];
        if let Some(l) = &opts.lse_output {
            tensors.push((TensorRole::Lse, Kind::Rows, Geom::of(l)));
        }
        if let Some(bm) = &m.bool_mask {
            tensors.push((TensorRole::BoolMask, Kind::Scores, Geom::of(&bm.view)));
        }
        if let Some(b) = &m.bias {
            tensors.push((TensorRole::Bias, Kind::Scores, Geom::of(b)));
        }
        if let Some(KvScales::PerToken { k, v }) = &opts.kv_scales {
            tensors.push((TensorRole::KeyScales, Kind::Keys, Geom::of(k)));
            tensors.push((TensorRole::ValueScales, Kind::Keys, Geom::of(v)));
        }
        Layout {
            tensors,
            group: p.heads_q / p.heads_kv,
            varlen: opts.varlen.as_ref(),
            paged: opts.paged.as_ref(),
            batch: p.batch,
            heads: p.heads_q,
            rows: p.seq_q,
            keys: p.seq_k,
            dv: p.head_dim_v,
            decode_splits: 1,
        }
    }

    /// The layout of a call that `plan` runs: the decode path's scratch counts too.
    pub(crate) fn for_plan(mut self, plan: &crate::plan::dispatch::Plan) -> Self {
        if plan.backend == crate::data::options::Backend::Decode {
            self.decode_splits = plan.key_splits.max(1) as usize;
        }
        self
    }

    /// Key/value heads of a part: its groups', or the one its head shares.
    fn kv_heads(&self, part: &Part) -> usize {
        (part.nh / self.group).max(1)
    }

    fn narrow(&self, kind: Kind, g: Geom, part: &Part) -> Geom {
        let mut g = g;
        if kind == Kind::Keys && self.paged.is_some() {
            // The page pool: every part may read any page; only its heads are its own.
            return g.narrow(1, part.h0 / self.group, self.kv_heads(part));
        }
        match (self.varlen, kind) {
            // Packed sequences: a part's batch items are a range of tokens.
            (Some(vl), Kind::Rows | Kind::Keys) => {
                let cu = if kind == Kind::Rows {
                    &vl.cu_seqlens_q
                } else {
                    &vl.cu_seqlens_k
                };
                let (t0, t1) = (cu[part.b0] as usize, cu[part.b0 + part.nb] as usize);
                g = g.narrow(2, t0, t1 - t0);
            }
            (_, Kind::Scores) if g.shape[0] == 1 => {}
            _ => g = g.narrow(0, part.b0, part.nb),
        }
        match kind {
            Kind::Keys => g = g.narrow(1, part.h0 / self.group, self.kv_heads(part)),
            Kind::Scores if g.shape[1] == 1 => {}
            _ => g = g.narrow(1, part.h0, part.nh),
        }
        if kind != Kind::Keys && self.varlen.is_none() {
            g = g.narrow(2, part.r0, part.nr);
        }
        if self.varlen.is_none() {
            match kind {
                Kind::Keys => g = g.narrow(2, part.k0, part.nk),
                Kind::Scores => g = g.narrow(3, part.k0, part.nk),
                Kind::Rows => {}
            }
        }
        g
    }

    /// The first tensor whose binding for `part` over each chunk of `keys` exceeds `max`,
    /// with the bytes it needs; the f32 scratch of key chunks and of the decode path counts
    /// too (as the output).
    fn too_large(
        &self,
        part: &Part,
        keys: &[(usize, usize)],
        max: u64,
        align: u64,
    ) -> Option<(TensorRole, u64)> {
        // f32 scratch: a key chunk's output, or every decode split's partial output.
        let copies = match (self.decode_splits, keys.len()) {
            (1, 1) => 0,
            (1, _) => 1,
            (splits, _) => splits as u64,
        };
        let scratch = (part.nb * part.nh * part.nr * self.dv) as u64 * 4 * copies;
        if scratch > max {
            return Some((TensorRole::Output, scratch));
        }
        keys.iter().find_map(|&chunk| {
            let part = part.keys(chunk);
            self.tensors.iter().find_map(|&(role, kind, g)| {
                let size = self.narrow(kind, g, &part).binding(align);
                (size > max).then_some((role, size))
            })
        })
    }

    /// How the call runs: `None` when every tensor fits one binding, else parts as large
    /// as fit, in order (batch items, then groups of heads, single heads, query rows), over
    /// chunks of keys as long as fit.
    pub(crate) fn split(&self, max: u64, align: u64) -> Result<Option<Split>> {
        let all_keys = [(0, self.keys)];
        let whole = Part {
            b0: 0,
            nb: self.batch,
            h0: 0,
            nh: self.heads,
            r0: 0,
            nr: self.rows,
            k0: 0,
            nk: self.keys,
        };
        if self.too_large(&whole, &all_keys, max, align).is_none() {
            return Ok(None);
        }
        // The smallest part: one query row of one head (all rows of one sequence, varlen).
        let smallest = Part {
            nb: 1,
            nh: 1,
            nr: if self.varlen.is_some() { self.rows } else { 1 },
            ..whole
        };
        let keys = if self.too_large(&smallest, &all_keys, max, align).is_none() {
            all_keys.to_vec()
        } else {
            // Chunks of keys as long as fit; never for packed sequences.
            let chunks = |n: usize| -> Vec<(usize, usize)> {
                (0..self.keys)
                    .step_by(n)
                    .map(|k0| (k0, n.min(self.keys - k0)))
                    .collect()
            };
            let fits = |n: usize| self.too_large(&smallest, &chunks(n), max, align).is_none();
            match largest(self.keys, fits) {
                // (Not for packed sequences, nor for paged keys: the pool is bound whole.)
                Some(n) if self.varlen.is_none() && self.paged.is_none() => chunks(n),
                _ => {
                    let (role, size) = self
                        .too_large(&smallest.keys((0, 1)), &[(0, 1)], max, align)
                        .or(self.too_large(&smallest, &all_keys, max, align))
                        .unwrap_or((TensorRole::Query, 0));
                    return Err(Error::binding(role, size, max));
                }
            }
        };
        let fits = |p: &Part| self.too_large(p, &keys, max, align).is_none();
        let fail = |p: &Part| match self.too_large(p, &keys, max, align) {
            Some((role, size)) => Error::binding(role, size, max),
            None => Error::binding(TensorRole::Query, 0, max),
        };
        let parts = tile(whole, self.group, self.varlen.is_none(), fits).map_err(|p| fail(&p))?;
        Ok(Some(Split { parts, keys }))
    }

    /// The views, options, problem and rebased rows of one part.
    pub(crate) fn part_call(
        &self,
        p: &Problem,
        views: [&TensorView; 4],
        opts: &AttentionOptions,
        part: &Part,
    ) -> PartCall {
        let [q, k, v, o] = views;
        let at = |kind, view: &TensorView| self.narrow(kind, Geom::of(view), part).apply(view);
        let mut opts = opts.clone();
        let m = &mut opts.mask;
        if let Some(bm) = &mut m.bool_mask {
            bm.view = at(Kind::Scores, &bm.view);
            // The summary was made for the whole mask; the part's is computed on the fly.
            bm.summary = None;
        }
        if let Some(b) = &mut m.bias {
            *b = at(Kind::Scores, b);
        }
        if let Some(s) = &mut m.alibi_slopes {
            *s = s[part.h0..part.h0 + part.nh].to_vec();
        }
        // A sink joins a row's denominator once: in the first chunk of its keys only (the
        // chunks' log-sum-exps carry it into the merge).
        opts.sinks = match opts.sinks.take() {
            Some(s) if part.k0 == 0 => Some(s[part.h0..part.h0 + part.nh].to_vec()),
            _ => None,
        };
        if let Some(l) = &mut opts.lse_output {
            *l = at(Kind::Rows, l);
        }
        // Per-token scales narrow as K and V do; per-head ones to the part's K/V heads.
        let kv_heads = part.h0 / self.group..part.h0 / self.group + self.kv_heads(part);
        match &mut opts.kv_scales {
            Some(KvScales::PerToken { k, v }) => {
                *k = at(Kind::Keys, k);
                *v = at(Kind::Keys, v);
            }
            Some(KvScales::PerHead { k, v }) => {
                for s in [k, v] {
                    if s.len() > 1 {
                        *s = s[kv_heads.clone()].to_vec();
                    }
                }
            }
            None => {}
        }
        // A part's batch items read their own rows of the page table.
        if let Some(pg) = &mut opts.paged {
            let cols = pg.pages_per_seq;
            pg.table = pg.table[part.b0 * cols..(part.b0 + part.nb) * cols].to_vec();
        }
        let mut problem = p.clone();
        problem.sinks = opts.sinks.is_some();
        problem.batch = part.nb;
        problem.heads_q = part.nh;
        problem.heads_kv = self.kv_heads(part);
        let rows = match &mut opts.varlen {
            Some(vl) => {
                let rebase = |cu: &[u32]| -> Vec<u32> {
                    let c = &cu[part.b0..=part.b0 + part.nb];
                    c.iter().map(|x| x - c[0]).collect()
                };
                vl.cu_seqlens_q = rebase(&vl.cu_seqlens_q);
                vl.cu_seqlens_k = rebase(&vl.cu_seqlens_k);
                None
            }
            None => {
                problem.seq_q = part.nr;
                problem.seq_k = part.nk;
                problem.mask.query_lengths = true;
                problem.mask.key_lengths = true;
                let m = &mut opts.mask;
                let rows = part_rows(p, m.alignment, &m.query_lengths, &m.key_lengths, part);
                m.query_lengths = None;
                m.key_lengths = None;
                Some(rows)
            }
        };
        PartCall {
            q: at(Kind::Rows, q),
            k: at(Kind::Keys, k),
            v: at(Kind::Keys, v),
            o: at(Kind::Rows, o),
            opts,
            problem,
            rows,
        }
    }
}

/// One part, ready to record.
pub(crate) struct PartCall {
    pub q: TensorView,
    pub k: TensorView,
    pub v: TensorView,
    pub o: TensorView,
    pub opts: AttentionOptions,
    pub problem: Problem,
    pub rows: Option<PartRows>,
}

/// Parts of `whole` as large as `fits` allows, in order: runs of batch items, then within
/// one item runs of whole groups of `group` heads, then single heads, then (with `rows_too`)
/// runs of query rows, in whole tiles of 64 where more fit. `Err` holds a smallest part that
/// does not fit.
pub(crate) fn tile(
    whole: Part,
    group: usize,
    rows_too: bool,
    fits: impl Fn(&Part) -> bool,
) -> std::result::Result<Vec<Part>, Part> {
    let mut parts = Vec::new();
    let mut b0 = 0;
    while b0 < whole.nb {
        let at = |nb| Part { b0, nb, ..whole };
        if let Some(nb) = largest(whole.nb - b0, |n| fits(&at(n))) {
            parts.push(at(nb));
            b0 += nb;
            continue;
        }
        // One batch item: whole groups of heads.
        let item = at(1);
        let mut h0 = 0;
        while h0 < whole.nh {
            let at = |groups: usize| Part {
                h0,
                nh: groups * group,
                ..item
            };
            if let Some(n) = largest((whole.nh - h0) / group, |n| fits(&at(n))) {
                parts.push(at(n));
                h0 += n * group;
                continue;
            }
            // One head at a time (each with its group's key/value head), then rows.
            for h in h0..h0 + group {
                let head = Part {
                    h0: h,
                    nh: 1,
                    ..item
                };
                if fits(&head) {
                    parts.push(head);
                    continue;
                }
                if !rows_too {
                    return Err(head);
                }
                // Query rows, in whole tiles of 64 where more fit.
                let mut r0 = 0;
                while r0 < whole.nr {
                    let at = |nr| Part { r0, nr, ..head };
                    let left = whole.nr - r0;
                    let Some(mut nr) = largest(left, |n| fits(&at(n))) else {
                        return Err(at(1));
                    };
                    if nr < left && nr > 64 {
                        nr = nr / 64 * 64;
                    }
                    parts.push(at(nr));
                    r0 += nr;
                }
            }
            h0 += group;
        }
        b0 += 1;
    }
    Ok(parts)
}

/// Valid rows, valid keys and the diagonal of each batch item of `part`, in its indices.
fn part_rows(
    p: &Problem,
    alignment: CausalAlignment,
    qlens: &Option<Vec<u32>>,
    klens: &Option<Vec<u32>>,
    part: &Part,
) -> PartRows {
    let mut rows = PartRows {
        qlen: Vec::new(),
        klen: Vec::new(),
        diag: Vec::new(),
    };
    for b in part.b0..part.b0 + part.nb {
        let len = |l: &Option<Vec<u32>>, n: usize| l.as_ref().map_or(n, |l| l[b] as usize).min(n);
        let (qv, kv) = (len(qlens, p.seq_q), len(klens, p.seq_k));
        let off = match alignment {
            CausalAlignment::TopLeft => 0,
            CausalAlignment::BottomRight => kv as i64 - qv as i64,
        };
        rows.qlen
            .push(qv.saturating_sub(part.r0).min(part.nr) as u32);
        rows.klen
            .push(kv.saturating_sub(part.k0).min(part.nk) as u32);
        rows.diag
            .push((off + part.r0 as i64 - part.k0 as i64) as i32);
    }
    rows
}

/// The largest `n` in `1..=max` with `fits(n)`, for `fits` true up to some `n` and false
/// after; `None` if not even 1 fits.
pub(crate) fn largest(max: usize, fits: impl Fn(usize) -> bool) -> Option<usize> {
    if max == 0 || !fits(1) {
        return None;
    }
    let (mut lo, mut hi) = (1, max);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contiguous(shape: [usize; 4]) -> Geom {
        let [_, h, s, d] = shape;
        Geom {
            offset: 0,
            dtype: DType::F32,
            shape,
            strides: [h * s * d, s * d, d, 1],
        }
    }

    /// A layout of `tensors` for `b` items of `hq` query heads in groups of `group`, `sq`
    /// rows, `sk` keys, head dim `d`.
    fn layout(
        tensors: Vec<(TensorRole, Kind, Geom)>,
        (b, hq, group, sq, sk, d): (usize, usize, usize, usize, usize, usize),
        decode_splits: usize,
    ) -> Layout<'static> {
        Layout {
            tensors,
            group,
            varlen: None,
            paged: None,
            batch: b,
            heads: hq,
            rows: sq,
            keys: sk,
            dv: d,
            decode_splits,
        }
    }

    /// GQA decode: 4 query rows of 8 heads over 256 keys of one head; 16 key splits.
    fn decode_layout(decode_splits: usize) -> Layout<'static> {
        let (b, hq, sq, sk, d) = (2, 8, 4, 256, 16);
        let tensors = vec![
            (TensorRole::Query, Kind::Rows, contiguous([b, hq, sq, d])),
            (TensorRole::Key, Kind::Keys, contiguous([b, 1, sk, d])),
            (TensorRole::Value, Kind::Keys, contiguous([b, 1, sk, d])),
            (TensorRole::Output, Kind::Rows, contiguous([b, hq, sq, d])),
        ];
        layout(tensors, (b, hq, hq, sq, sk, d), decode_splits)
    }

    /// Whatever the limit, the parts cover every (batch, head, row) exactly once, their
    /// key chunks every key, and every part fits.
    #[test]
    fn parts_tile_the_problem() {
        let (b, hq, hkv, sq, sk, d) = (3, 6, 2, 70, 90, 8);
        let bshd = |shape: [usize; 4]| {
            let [_, h, s, d] = shape;
            Geom {
                strides: [s * h * d, d, h * d, 1],
                ..contiguous(shape)
            }
        };
        for layout in [contiguous, bshd] {
            for max in [1 << 20, 40_000, 9_000, 3_000, 1_000, 300] {
                let tensors = vec![
                    (TensorRole::Query, Kind::Rows, layout([b, hq, sq, d])),
                    (TensorRole::Key, Kind::Keys, layout([b, hkv, sk, d])),
                    (TensorRole::Value, Kind::Keys, layout([b, hkv, sk, d])),
                    (TensorRole::Output, Kind::Rows, contiguous([b, hq, sq, d])),
                    (TensorRole::Bias, Kind::Scores, contiguous([1, hq, sq, sk])),
                ];
                let l = self::layout(tensors, (b, hq, hq / hkv, sq, sk, d), 1);
                let Some(split) = l.split(max, 16).unwrap() else {
                    assert_eq!(max, 1 << 20);
                    continue;
                };
                let mut seen = vec![0; b * hq * sq];
                for p in &split.parts {
                    assert!(
                        l.too_large(p, &split.keys, max, 16).is_none(),
                        "{max}: {p:?}"
                    );
                    assert!(p.nh % l.group == 0 || p.nh == 1, "{p:?}");
                    for bi in p.b0..p.b0 + p.nb {
                        for h in p.h0..p.h0 + p.nh {
                            for r in p.r0..p.r0 + p.nr {
                                seen[(bi * hq + h) * sq + r] += 1;
                            }
                        }
                    }
                }
                assert!(seen.iter().all(|&n| n == 1), "{max}: {seen:?}");
                let mut next = 0;
                for &(k0, nk) in &split.keys {
                    assert_eq!(k0, next);
                    next += nk;
                }
                assert_eq!(next, sk);
            }
        }
    }

    #[test]
    fn the_decode_scratch_must_fit_too() {
        // Every tensor fits 32 KiB; 16 splits' partial outputs (32 KiB each) do not.
        let max = 32 * 1024;
        assert_eq!(decode_layout(1).split(max, 256).unwrap(), None);
        let split = decode_layout(16).split(max, 256).unwrap().expect("split");
        assert_eq!(split.keys, vec![(0, 256)]);
        for p in &split.parts {
            assert!((p.nb * p.nh * p.nr * 16 * 4 * 16) as u64 <= max, "{p:?}");
        }
        assert_eq!(
            split
                .parts
                .iter()
                .map(|p| p.nb * p.nh * p.nr)
                .sum::<usize>(),
            2 * 8 * 4
        );
    }

    #[test]
    fn largest_finds_the_boundary() {
        for max in 1..40 {
            for limit in 0..45 {
                let got = largest(max, |n| n <= limit);
                let want = (limit >= 1).then_some(limit.min(max));
                assert_eq!(got, want, "max {max} limit {limit}");
            }
        }
    }
}
