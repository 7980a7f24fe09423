//! Validation of a call before anything is dispatched, producing a [`Problem`]:
//! the plain-data description the dispatcher and the backends work from.

use crate::data::backward::{BackwardInputs, GradientViews};
use crate::data::options::{AttentionOptions, KvScales, PagedKv};
pub use crate::data::problem::{MAX_SCALE, MAX_SEQ, MaskKinds, Problem};
use crate::data::tensor::{DType, TensorView};
use crate::error::{Dim, Error, InputProblem, Result, TensorRole};

fn mismatch(role: TensorRole, dim: Dim, expected: impl ToString, got: usize) -> Error {
    Error::invalid(
        role,
        InputProblem::ShapeMismatch {
            dim,
            expected: expected.to_string(),
            got,
        },
    )
}

fn check_float(view: &TensorView, role: TensorRole) -> Result<()> {
    if !view.dtype.is_float() {
        return Err(Error::invalid(
            role,
            InputProblem::WrongDType {
                expected: "f32, f16 or bf16".into(),
                got: view.dtype.to_string(),
            },
        ));
    }
    Ok(())
}

/// Checks that `view` has exactly shape `want`, naming the first dimension that differs.
fn check_shape(view: &TensorView, want: [usize; 4], role: TensorRole) -> Result<()> {
    for (i, (&w, &got)) in want.iter().zip(&view.shape).enumerate() {
        if w != got {
            return Err(mismatch(role, Dim::ALL[i], w, got));
        }
    }
    Ok(())
}

fn check_nonzero(view: &TensorView, role: TensorRole) -> Result<()> {
    for (i, &n) in view.shape.iter().enumerate() {
        if n == 0 {
            return Err(Error::invalid(
                role,
                InputProblem::ZeroDim { dim: Dim::ALL[i] },
            ));
        }
    }
    Ok(())
}

/// Checks a `[B|1, H|1, Sq, Sk]` mask or bias shape.
fn check_broadcast(
    view: &TensorView,
    role: TensorRole,
    b: usize,
    h: usize,
    sq: usize,
    sk: usize,
) -> Result<()> {
    let [vb, vh, vq, vk] = view.shape;
    if vb != b && vb != 1 {
        return Err(mismatch(role, Dim::Batch, format!("{b} or 1"), vb));
    }
    if vh != h && vh != 1 {
        return Err(mismatch(role, Dim::Heads, format!("{h} or 1"), vh));
    }
    if vq != sq {
        return Err(mismatch(role, Dim::Seq, sq, vq));
    }
    if vk != sk {
        return Err(mismatch(role, Dim::HeadDim, sk, vk));
    }
    Ok(())
}

fn check_lengths(lens: &[u32], role: TensorRole, b: usize, max: usize) -> Result<()> {
    if lens.len() != b {
        return Err(Error::invalid(
            role,
            InputProblem::WrongCount {
                expected: b,
                got: lens.len(),
                per: "one per batch item",
            },
        ));
    }
    for (batch, &len) in lens.iter().enumerate() {
        if len as usize > max {
            return Err(Error::invalid(
                role,
                InputProblem::LengthTooLong { batch, len, max },
            ));
        }
    }
    Ok(())
}

/// Checks a varlen description against the views; returns (sequences, longest query,
/// longest key sequence). With paged K/V, K and V are the page pool: each sequence's keys
/// must fit the page table's key axis instead of packed rows.
fn check_varlen(
    vl: &crate::data::options::Varlen,
    [q, k, v]: [&TensorView; 3],
    rows_q: usize,
    rows_k: usize,
    mask: &crate::data::mask::Mask,
    paged: Option<&PagedKv>,
) -> Result<(usize, usize, usize)> {
    use TensorRole::*;
    let packed: &[(&TensorView, TensorRole)] = match paged {
        Some(_) => &[(q, Query)],
        None => &[(q, Query), (k, Key), (v, Value)],
    };
    for &(view, role) in packed {
        if view.shape[0] != 1 {
            return Err(mismatch(
                role,
                Dim::Batch,
                "1 (packed variable-length layout)",
                view.shape[0],
            ));
        }
    }
    let n = vl.cu_seqlens_q.len();
    if n < 2 {
        return Err(Error::invalid(
            CuSeqlensQ,
            InputProblem::WrongCount {
                expected: 2,
                got: n,
                per: "at least 2: 0, then the end of each sequence",
            },
        ));
    }
    if vl.cu_seqlens_k.len() != n {
        return Err(Error::invalid(
            CuSeqlensK,
            InputProblem::WrongCount {
                expected: n,
                got: vl.cu_seqlens_k.len(),
                per: "as many as cu_seqlens_q: 0, then the end of each sequence",
            },
        ));
    }
    for (cu, rows, role) in [
        (&vl.cu_seqlens_q, rows_q, CuSeqlensQ),
        (&vl.cu_seqlens_k, rows_k, CuSeqlensK),
    ] {
        if cu[0] != 0 || cu.windows(2).any(|w| w[1] < w[0]) {
            return Err(Error::invalid(
                role,
                InputProblem::Other(format!(
                    "{cu:?} must start at 0 and never decrease (cumulative sequence ends)"
                )),
            ));
        }
        // Query rows past the last end would be left unwritten: Q must end exactly at its
        // rows. Keys past it are never read: a packed K/V buffer may have spare rows. Paged
        // keys are not packed: their lengths are checked against the page table below.
        let end = cu[n - 1];
        let bad = match role {
            CuSeqlensQ => end as usize != rows,
            _ => paged.is_none() && end as usize > rows,
        };
        if bad {
            return Err(Error::invalid(
                role,
                InputProblem::CumulativeEnd { end, rows },
            ));
        }
    }
    if mask.key_lengths.is_some() || mask.query_lengths.is_some() {
        return Err(Error::invalid(
            Options,
            InputProblem::Other(
                "with varlen, sequence lengths come from cu_seqlens; set no key/query lengths"
                    .into(),
            ),
        ));
    }
    if let Some(pg) = paged {
        let lengths = crate::data::options::Varlen::lengths(&vl.cu_seqlens_k);
        check_lengths(&lengths, CuSeqlensK, n - 1, pg.seq_len)?;
    }
    let longest = |cu: &[u32]| {
        crate::data::options::Varlen::lengths(cu)
            .into_iter()
            .max()
            .unwrap_or(0)
            .max(1) as usize
    };
    Ok((n - 1, longest(&vl.cu_seqlens_q), longest(&vl.cu_seqlens_k)))
}

/// Checks that the product of `dims` fits a u32 (the shaders' index width).
pub(crate) fn check_count(role: TensorRole, dims: &[usize]) -> Result<()> {
    let n = crate::data::tensor::checked_product(dims);
    match n {
        Some(n) if n <= u32::MAX as u64 => Ok(()),
        _ => Err(Error::invalid(
            role,
            InputProblem::TooLarge {
                what: format!(
                    "{} elements ({dims:?} multiplied)",
                    dims.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(" x ")
                ),
            },
        )),
    }
}

/// Validates a call. `out` is the caller's output view, if any.
pub(crate) fn validate(
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    out: Option<&TensorView>,
    opts: &AttentionOptions,
) -> Result<Problem> {
    use TensorRole::*;
    check_float(q, Query)?;
    check_kv_dtypes(k, v)?;
    for (view, role) in [(q, Query), (k, Key), (v, Value)] {
        check_nonzero(view, role)?;
    }
    let [b, hq, sq, dk] = q.shape;
    let [kb, hkv, sk, kd] = k.shape;
    let [vb, vh, vs, dv] = v.shape;
    for (n, role) in [(sq, Query), (sk, Key)] {
        if n >= MAX_SEQ {
            return Err(Error::invalid(
                role,
                InputProblem::TooLarge {
                    what: format!("sequence length {n} (at most {})", MAX_SEQ - 1),
                },
            ));
        }
    }
    // Rows of the views (for varlen: all sequences' tokens) vs the problem's batch/lengths.
    let (rows_q, rows_k) = (sq, sk);
    let paged = opts.paged.as_ref();
    let varlen = match &opts.varlen {
        Some(vl) => Some(check_varlen(
            vl,
            [q, k, v],
            rows_q,
            rows_k,
            &opts.mask,
            paged,
        )?),
        None => None,
    };
    // Paged K/V: the views are the page pool, and the key axis is the table's (one row a
    // sequence of a packed batch).
    let sk = match paged {
        Some(pg) => check_paged(pg, k, v, varlen.map_or(b, |(n, _, _)| n))?,
        None => {
            if kb != b {
                return Err(mismatch(Key, Dim::Batch, b, kb));
            }
            if vb != b {
                return Err(mismatch(Value, Dim::Batch, b, vb));
            }
            if vs != sk {
                return Err(mismatch(Value, Dim::Seq, sk, vs));
            }
            sk
        }
    };
    if hq % hkv != 0 {
        return Err(mismatch(
            Key,
            Dim::Heads,
            format!("a divisor of the query heads ({hq})"),
            hkv,
        ));
    }
    if vh != hkv {
        return Err(mismatch(Value, Dim::Heads, hkv, vh));
    }
    if kd != dk {
        return Err(mismatch(Key, Dim::HeadDim, dk, kd));
    }
    // Every grid and index of the shaders is 32-bit: the rows of each tensor, and the
    // output's elements, must be countable in a u32 (wrapping counts would also make the
    // planner tile a problem of 2^64 parts).
    check_count(Query, &[b, hq, sq])?;
    check_count(Key, &[kb, hkv, k.shape[2]])?;
    // Q's rows fit (checked above), so an output that does not comes from V's head dim.
    let out_role = if out.is_some() { Output } else { Value };
    check_count(out_role, &[b, hq, sq, dv])?;
    let storage = wgpu::BufferUsages::STORAGE;
    q.check_memory(Query, storage)?;
    k.check_memory(Key, storage)?;
    v.check_memory(Value, storage)?;
    check_kv_scales(k, v, opts.kv_scales.as_ref())?;

    let dtype_o = match out {
        Some(o) => {
            check_float(o, Output)?;
            let want = [b, hq, rows_q, dv];
            for ((dim, &w), &got) in Dim::ALL.iter().zip(&want).zip(&o.shape) {
                if got != w {
                    return Err(mismatch(Output, *dim, w, got));
                }
            }
            o.check_memory(Output, storage)?;
            o.check_no_overlap(Output)?;
            o.dtype
        }
        None => {
            let d = opts.output_dtype.unwrap_or(q.dtype);
            if !d.is_float() {
                return Err(Error::invalid(
                    Options,
                    InputProblem::WrongDType {
                        expected: "f32, f16 or bf16 output".into(),
                        got: d.to_string(),
                    },
                ));
            }
            d
        }
    };

    let scale = opts.scale.unwrap_or(1.0 / (dk as f32).sqrt());
    if !scale.is_finite() {
        return Err(Error::invalid(
            Options,
            InputProblem::NonFinite {
                what: "scale",
                value: scale,
            },
        ));
    }
    if scale.abs() > MAX_SCALE {
        return Err(Error::invalid(
            Options,
            InputProblem::OutOfRange {
                what: "scale",
                value: scale,
                max: MAX_SCALE,
            },
        ));
    }

    // From here on, b/sq/sk are the problem's: for varlen the sequence count and lengths.
    let (b, sq, sk) = match &varlen {
        Some((nb, mq, mk)) => (*nb, *mq, *mk),
        None => (b, sq, sk),
    };
    let m = &opts.mask;
    if let Some(l) = &m.key_lengths {
        check_lengths(l, KeyLengths, b, sk)?;
    }
    if let Some(l) = &m.query_lengths {
        check_lengths(l, QueryLengths, b, sq)?;
    }
    if let Some(bm) = &m.bool_mask {
        if bm.view.dtype != DType::Bool {
            return Err(Error::invalid(
                BoolMask,
                InputProblem::WrongDType {
                    expected: "bool".into(),
                    got: bm.view.dtype.to_string(),
                },
            ));
        }
        check_broadcast(&bm.view, BoolMask, b, hq, sq, sk)?;
        bm.view.check_memory(BoolMask, storage)?;
        if let Some(s) = &bm.summary {
            s.check_matches(&bm.view)?;
        }
    }
    if let Some(bias) = &m.bias {
        check_float(bias, Bias)?;
        check_broadcast(bias, Bias, b, hq, sq, sk)?;
        bias.check_memory(Bias, storage)?;
    }
    if let Some(s) = &m.alibi_slopes {
        check_per_head(s, AlibiSlopes, "alibi slope", hq)?;
    }
    if let Some(s) = &opts.sinks {
        check_per_head(s, Sinks, "sink logit", hq)?;
    }
    if let Some(cap) = opts.softcap {
        check_softcap(cap)?;
    }
    if let Some(l) = &opts.lse_output {
        if l.dtype != DType::F32 {
            return Err(Error::invalid(
                Lse,
                InputProblem::WrongDType {
                    expected: "f32".into(),
                    got: l.dtype.to_string(),
                },
            ));
        }
        let want = [q.shape[0], hq, rows_q, 1];
        for ((dim, &w), &got) in Dim::ALL.iter().zip(&want).zip(&l.shape) {
            if got != w {
                return Err(mismatch(Lse, *dim, w, got));
            }
        }
        l.check_memory(Lse, storage)?;
        l.check_no_overlap(Lse)?;
        if out.is_some_and(|o| o.overlaps(l)) {
            return Err(Error::invalid(
                Lse,
                InputProblem::OutputAliasesInput { input: Output },
            ));
        }
    }
    // Outputs may share a buffer with the inputs (tensors sub-allocated from one page, as
    // Burn and cubecl do) at byte ranges that do not overlap them.
    let summary = m.bool_mask.as_ref().and_then(|x| x.summary.as_ref());
    let (k_scales, v_scales) = match &opts.kv_scales {
        Some(KvScales::PerToken { k, v }) => (Some(k), Some(v)),
        _ => (None, None),
    };
    let inputs = [
        (Some(q), Query),
        (Some(k), Key),
        (Some(v), Value),
        (m.bool_mask.as_ref().map(|x| &x.view), BoolMask),
        (m.bias.as_ref(), Bias),
        (k_scales, KeyScales),
        (v_scales, ValueScales),
    ];
    let outputs = [(out, Output), (opts.lse_output.as_ref(), Lse)];
    for (written, out_role) in outputs {
        let Some(w) = written else { continue };
        if summary.is_some_and(|s| s.buffer() == &w.buffer) {
            return Err(Error::invalid(
                out_role,
                InputProblem::OutputAliasesInput { input: BoolMask },
            ));
        }
        for (view, role) in inputs {
            if view.is_some_and(|x| x.overlaps(w)) {
                return Err(Error::invalid(
                    out_role,
                    InputProblem::OutputAliasesInput { input: role },
                ));
            }
        }
    }

    Ok(Problem {
        batch: b,
        heads_q: hq,
        heads_kv: hkv,
        seq_q: sq,
        seq_k: sk,
        head_dim_qk: dk,
        head_dim_v: dv,
        dtype_q: q.dtype,
        dtype_k: k.dtype,
        dtype_v: v.dtype,
        dtype_o,
        scale,
        varlen: varlen.is_some(),
        lse: opts.lse_output.is_some(),
        softcap: opts.softcap.is_some(),
        sinks: opts.sinks.is_some(),
        paged: opts.paged.is_some(),
        mask: MaskKinds {
            causal: m.causal,
            alignment: m.alignment,
            key_lengths: m.key_lengths.is_some() || varlen.is_some(),
            query_lengths: m.query_lengths.is_some() || varlen.is_some(),
            window: m.window,
            bool_mask: m.bool_mask.is_some(),
            bias: m.bias.as_ref().map(|b| b.dtype),
            alibi: m.alibi_slopes.is_some(),
        },
    })
}

/// Checks the dtypes of K and V: both float, or both one quantized format (one format for
/// both: the kernels are built for one), with unit head-dim strides and, for the block
/// formats, whole blocks: head dims and the other strides multiples of 32.
fn check_kv_dtypes(k: &TensorView, v: &TensorView) -> Result<()> {
    use TensorRole::*;
    if !k.dtype.is_quantized() {
        check_float(k, Key)?;
        return check_float(v, Value);
    }
    if v.dtype != k.dtype {
        return Err(Error::invalid(
            Value,
            InputProblem::WrongDType {
                expected: format!(
                    "{}, as the key (K and V share one quantized format)",
                    k.dtype
                ),
                got: v.dtype.to_string(),
            },
        ));
    }
    for (view, role) in [(k, Key), (v, Value)] {
        let block = view.dtype.block_len() as usize;
        if !view.shape[3].is_multiple_of(block) {
            return Err(mismatch(
                role,
                Dim::HeadDim,
                format!("a multiple of {block} ({} blocks)", view.dtype),
                view.shape[3],
            ));
        }
        for (i, dim) in Dim::ALL.iter().enumerate() {
            let stride = view.strides[i];
            let (ok, expected) = if i == 3 {
                (
                    stride == 1,
                    "1 (quantized head dims are contiguous)".to_string(),
                )
            } else {
                (
                    view.shape[i] == 1 || stride.is_multiple_of(block),
                    format!("a multiple of {block} (whole {} blocks)", view.dtype),
                )
            };
            if view.shape[i] > 1 && !ok {
                return Err(Error::invalid(
                    role,
                    InputProblem::BlockStride {
                        dim: *dim,
                        stride,
                        expected,
                    },
                ));
            }
        }
    }
    Ok(())
}

/// Checks the scales of quantized K and V ([`KvScales`]) against their format: per-token
/// f32 views of K's first three dimensions in K's (V's) buffer for [`DType::I8`], optional
/// per-head host values for the 8-bit floats, none otherwise.
fn check_kv_scales(k: &TensorView, v: &TensorView, scales: Option<&KvScales>) -> Result<()> {
    use TensorRole::*;
    let format = k.dtype;
    let refuse = |what: &str| {
        Err(Error::invalid(
            KeyScales,
            InputProblem::Other(format!(
                "{what} scales were given for {format} keys and values, which take {}",
                match format {
                    DType::I8 => "per-token scales (KvScales::PerToken)",
                    DType::E4M3 | DType::E5M2 => "per-head scales (KvScales::PerHead) or none",
                    DType::Q8_0 | DType::Q4_0 => "none (their blocks hold their scales)",
                    _ => "none (they are not quantized)",
                }
            )),
        ))
    };
    match (format, scales) {
        (DType::I8, Some(KvScales::PerToken { k: ks, v: vs })) => {
            for (s, of, role) in [(ks, k, KeyScales), (vs, v, ValueScales)] {
                if s.dtype != DType::F32 {
                    return Err(Error::invalid(
                        role,
                        InputProblem::WrongDType {
                            expected: "f32".into(),
                            got: s.dtype.to_string(),
                        },
                    ));
                }
                let want = [of.shape[0], of.shape[1], of.shape[2], 1];
                check_shape(s, want, role)?;
                s.check_memory(role, wgpu::BufferUsages::STORAGE)?;
                if s.buffer != of.buffer {
                    let of = if role == KeyScales { Key } else { Value };
                    return Err(Error::invalid(role, InputProblem::NotInBufferOf { of }));
                }
            }
            Ok(())
        }
        (DType::I8, None) => Err(Error::invalid(
            KeyScales,
            InputProblem::Other(
                "i8 keys and values need their per-token scales (KvScales::PerToken)".into(),
            ),
        )),
        (DType::E4M3 | DType::E5M2, Some(KvScales::PerHead { k: ks, v: vs })) => {
            let heads = k.shape[1];
            for (s, role) in [(ks, KeyScales), (vs, ValueScales)] {
                if s.len() != heads && s.len() != 1 {
                    return Err(Error::invalid(
                        role,
                        InputProblem::WrongCount {
                            expected: heads,
                            got: s.len(),
                            per: "one per key/value head, or one for all",
                        },
                    ));
                }
                if let Some(&x) = s.iter().find(|x| !x.is_finite()) {
                    return Err(Error::invalid(
                        role,
                        InputProblem::NonFinite {
                            what: "scale",
                            value: x,
                        },
                    ));
                }
            }
            Ok(())
        }
        (_, None) => Ok(()),
        (_, Some(KvScales::PerToken { .. })) => refuse("per-token"),
        (_, Some(KvScales::PerHead { .. })) => refuse("per-head"),
    }
}

/// Checks paged K/V's views and page table for `b` batch items; returns the key axis's length.
fn check_paged(pg: &PagedKv, k: &TensorView, v: &TensorView, b: usize) -> Result<usize> {
    use TensorRole::*;
    let pages = k.shape[0];
    if v.shape[0] != pages {
        return Err(mismatch(
            Value,
            Dim::Batch,
            format!("{pages} (the key pool's pages)"),
            v.shape[0],
        ));
    }
    for (view, role) in [(k, Key), (v, Value)] {
        if view.shape[2] != pg.page_size {
            return Err(mismatch(
                role,
                Dim::Seq,
                format!("{} (the page size)", pg.page_size),
                view.shape[2],
            ));
        }
    }
    if pg.pages_per_seq == 0 {
        return Err(Error::invalid(
            PageTable,
            InputProblem::Other(
                "pages_per_seq is 0, expected at least one page per batch item".into(),
            ),
        ));
    }
    let want = b.saturating_mul(pg.pages_per_seq);
    if pg.table.len() != want {
        return Err(Error::invalid(
            PageTable,
            InputProblem::WrongCount {
                expected: want,
                got: pg.table.len(),
                per: "pages_per_seq per batch item",
            },
        ));
    }
    let room = pg.page_size.saturating_mul(pg.pages_per_seq);
    if pg.seq_len == 0 || pg.seq_len > room {
        return Err(Error::invalid(
            PageTable,
            InputProblem::Other(format!(
                "seq_len is {}, expected 1 to {room} (pages_per_seq {} times page_size {})",
                pg.seq_len, pg.pages_per_seq, pg.page_size
            )),
        ));
    }
    // The pages that hold the key axis are read (past a sequence's key length too, masked).
    let used = pg.seq_len.div_ceil(pg.page_size);
    for (batch, row) in pg.table.chunks(pg.pages_per_seq).enumerate() {
        if let Some((column, &page)) = row[..used]
            .iter()
            .enumerate()
            .find(|(_, p)| **p as usize >= pages)
        {
            return Err(Error::invalid(
                PageTable,
                InputProblem::PageOutOfRange {
                    batch,
                    column,
                    page,
                    pages,
                },
            ));
        }
    }
    Ok(pg.seq_len)
}

/// One finite value per query head (ALiBi's slopes, the sinks' logits).
fn check_per_head(values: &[f32], role: TensorRole, what: &'static str, hq: usize) -> Result<()> {
    if values.len() != hq {
        return Err(Error::invalid(
            role,
            InputProblem::WrongCount {
                expected: hq,
                got: values.len(),
                per: "one per query head",
            },
        ));
    }
    if let Some(&bad) = values.iter().find(|x| !x.is_finite()) {
        return Err(Error::invalid(
            role,
            InputProblem::NonFinite { what, value: bad },
        ));
    }
    Ok(())
}

/// A soft cap must be positive and finite (`cap · tanh(s / cap)` is undefined at 0 and
/// the identity at infinity: leave the option unset for that).
fn check_softcap(cap: f32) -> Result<()> {
    if !cap.is_finite() {
        return Err(Error::invalid(
            TensorRole::Options,
            InputProblem::NonFinite {
                what: "softcap",
                value: cap,
            },
        ));
    }
    if cap <= 0.0 {
        return Err(Error::invalid(
            TensorRole::Options,
            InputProblem::NotPositive {
                what: "softcap",
                value: cap,
            },
        ));
    }
    Ok(())
}

/// Checks that `view` is a float tensor of exactly `want`'s shape.
fn check_like(view: &TensorView, role: TensorRole, want: [usize; 4]) -> Result<()> {
    check_float(view, role)?;
    for ((dim, &w), &got) in Dim::ALL.iter().zip(&want).zip(&view.shape) {
        if got != w {
            return Err(mismatch(role, *dim, w, got));
        }
    }
    view.check_memory(role, wgpu::BufferUsages::STORAGE)
}

/// Validates a backward call: the forward's checks (with `x.out` as its output and `x.lse`
/// as its log-sum-exp output), then dO like the output, and each gradient like its input.
/// Gradients may share a buffer with the inputs and with each other at byte ranges that
/// overlap none of them.
pub(crate) fn validate_backward(
    x: &BackwardInputs<'_>,
    g: &GradientViews,
    opts: &AttentionOptions,
) -> Result<Problem> {
    use TensorRole::*;
    if opts.paged.is_some() {
        return Err(Error::backend(
            "the backward pass with paged K/V (gather the pages into contiguous K and V)",
        ));
    }
    // (A quantized V beside a float K is a mix of formats, refused below.)
    if x.k.dtype.is_quantized() {
        return Err(Error::backend(format!(
            "the backward pass with quantized K/V ({}; train with f32, f16 or bf16 K and V)",
            x.k.dtype
        )));
    }
    let fwd = AttentionOptions {
        lse_output: Some(x.lse.clone()),
        ..opts.clone()
    };
    let p = validate(x.q, x.k, x.v, Some(x.out), &fwd)?;
    check_like(x.d_out, OutputGrad, x.out.shape)?;
    check_like(&g.dq, QueryGrad, x.q.shape)?;
    check_like(&g.dk, KeyGrad, x.k.shape)?;
    check_like(&g.dv, ValueGrad, x.v.shape)?;
    let bias = opts.mask.bias.as_ref();
    match (&g.dbias, bias) {
        (Some(db), Some(b)) => check_like(db, BiasGrad, b.shape)?,
        (Some(_), None) => {
            return Err(Error::invalid(
                BiasGrad,
                InputProblem::Other(
                    "a bias gradient was asked for, but the mask has no additive bias".into(),
                ),
            ));
        }
        (None, _) => {}
    }
    match (&g.dsink, &opts.sinks) {
        (Some(ds), Some(s)) => check_like(ds, SinkGrad, [1, s.len(), 1, 1])?,
        (Some(_), None) => {
            return Err(Error::invalid(
                SinkGrad,
                InputProblem::Other(
                    "a sink gradient was asked for, but the call has no sinks".into(),
                ),
            ));
        }
        (None, _) => {}
    }
    let m = &opts.mask;
    let inputs = [
        (Some(x.q), Query),
        (Some(x.k), Key),
        (Some(x.v), Value),
        (Some(x.out), Output),
        (Some(x.d_out), OutputGrad),
        (Some(x.lse), Lse),
        (m.bool_mask.as_ref().map(|b| &b.view), BoolMask),
        (bias, Bias),
    ];
    let summary = m.bool_mask.as_ref().and_then(|b| b.summary.as_ref());
    let grads = [
        (Some(&g.dq), QueryGrad),
        (Some(&g.dk), KeyGrad),
        (Some(&g.dv), ValueGrad),
        (g.dbias.as_ref(), BiasGrad),
        (g.dsink.as_ref(), SinkGrad),
    ];
    for (n, (written, role)) in grads.iter().enumerate() {
        let Some(w) = written else { continue };
        w.check_no_overlap(*role)?;
        if summary.is_some_and(|s| s.buffer() == &w.buffer) {
            return Err(Error::invalid(
                *role,
                InputProblem::OutputAliasesInput { input: BoolMask },
            ));
        }
        let others = grads[..n].iter().map(|(v, r)| (*v, *r));
        for (view, input) in inputs.iter().copied().chain(others) {
            if view.is_some_and(|x| x.overlaps(w)) {
                return Err(Error::invalid(
                    *role,
                    InputProblem::OutputAliasesInput { input },
                ));
            }
        }
    }
    Ok(p)
}

// ------------------------------------------------ merges, KV caches, summaries, downloads

/// Checks the views of a user merge: every O has `out`'s shape, every LSE is f32
/// `[B, H, S, 1]`, and the outputs alias no input.
pub(crate) fn merge(
    parts: &[(&TensorView, &TensorView)],
    out: &TensorView,
    lse_out: Option<&TensorView>,
) -> Result<()> {
    if parts.is_empty() {
        return Err(Error::invalid(
            TensorRole::Lse,
            InputProblem::WrongCount {
                expected: 1,
                got: 0,
                per: "at least one partial result",
            },
        ));
    }
    let [b, h, s, _] = out.shape;
    let storage = wgpu::BufferUsages::STORAGE;
    check_nonzero(out, TensorRole::Output)?;
    let check_lse = |l: &TensorView| -> Result<()> {
        if l.dtype != DType::F32 {
            return Err(Error::invalid(
                TensorRole::Lse,
                InputProblem::WrongDType {
                    expected: "f32".into(),
                    got: l.dtype.to_string(),
                },
            ));
        }
        check_shape(l, [b, h, s, 1], TensorRole::Lse)?;
        l.check_memory(TensorRole::Lse, storage)
    };
    check_float(out, TensorRole::Output)?;
    out.check_memory(TensorRole::Output, storage)?;
    out.check_no_overlap(TensorRole::Output)?;
    if let Some(l) = lse_out {
        check_lse(l)?;
        l.check_no_overlap(TensorRole::Lse)?;
    }
    for (o, l) in parts {
        check_float(o, TensorRole::Output)?;
        check_shape(o, out.shape, TensorRole::Output)?;
        o.check_memory(TensorRole::Output, storage)?;
        check_lse(l)?;
        for written in std::iter::once(out).chain(lse_out) {
            for (input, role) in [(o, TensorRole::Output), (l, TensorRole::Lse)] {
                if written.overlaps(input) {
                    return Err(Error::invalid(
                        TensorRole::Output,
                        InputProblem::OutputAliasesInput { input: role },
                    ));
                }
            }
        }
    }
    if let Some(l) = lse_out
        && l.overlaps(out)
    {
        return Err(Error::invalid(
            TensorRole::Lse,
            InputProblem::OutputAliasesInput {
                input: TensorRole::Output,
            },
        ));
    }
    Ok(())
}

/// Checks a KV cache's shape before its buffers are made: a float dtype, no zero size, rows
/// whose bytes are a multiple of 4 (appends are buffer copies), and a buffer the device
/// allows.
pub(crate) fn kv_cache(
    [batch, heads, capacity, head_dim]: [usize; 4],
    dtype: DType,
    max_buffer_size: u64,
) -> Result<u64> {
    cache_bytes(
        [batch, heads, capacity, head_dim],
        head_dim,
        dtype,
        max_buffer_size,
        || {
            format!(
                "a cache needs non-zero sizes and head_dim * {} bytes a multiple of 4 (got batch {batch}, heads {heads}, capacity {capacity}, head_dim {head_dim})",
                dtype.size()
            )
        },
    )
}

/// The bytes of a cache buffer of `dims` elements of `dtype` (checked: a float dtype, no
/// zero size, `row` elements copied at a time a multiple of 4 bytes, within the device's
/// largest buffer); `why` says what a bad size breaks.
fn cache_bytes(
    dims: [usize; 4],
    row: usize,
    dtype: DType,
    max_buffer_size: u64,
    why: impl Fn() -> String,
) -> Result<u64> {
    let role = TensorRole::KvCache;
    if !dtype.is_float() {
        return Err(Error::invalid(
            role,
            InputProblem::WrongDType {
                expected: "f32, f16 or bf16".into(),
                got: dtype.to_string(),
            },
        ));
    }
    let elements = crate::data::tensor::checked_product(&dims);
    if !(row as u64 * dtype.size()).is_multiple_of(4) || elements == Some(0) {
        return Err(Error::invalid(role, InputProblem::Other(why())));
    }
    let bytes = elements
        .and_then(|n| n.checked_mul(dtype.size()))
        .unwrap_or(u64::MAX);
    if bytes > max_buffer_size {
        return Err(Error::limit("max_buffer_size", bytes, max_buffer_size));
    }
    Ok(bytes)
}

/// The layout of a quantized cache buffer of `rows` rows of `head_dim` values in `dtype`
/// (a quantized format): the rows' bytes (rounded up to a word), where i8's per-row f32
/// scales follow; returns (bytes of the rows, bytes in all). Checked: no zero size, whole
/// blocks, within the device's largest buffer and 32-bit shader indices.
pub(crate) fn quant_cache_bytes(
    rows: usize,
    head_dim: usize,
    dtype: DType,
    max_buffer_size: u64,
) -> Result<(u64, u64)> {
    let role = TensorRole::KvCache;
    let block = dtype.block_len() as usize;
    if rows == 0 || head_dim == 0 || !head_dim.is_multiple_of(block) {
        return Err(Error::invalid(
            role,
            InputProblem::Other(format!(
                "a {dtype} cache needs non-zero sizes and a head dim that is a multiple of {block} (got {rows} rows of head_dim {head_dim})"
            )),
        ));
    }
    let data = (rows as u64)
        .checked_mul(dtype.bytes(head_dim as u64))
        .map(|b| b.div_ceil(4) * 4);
    let scales = if dtype == DType::I8 {
        rows as u64 * 4
    } else {
        0
    };
    let total = data.and_then(|d| d.checked_add(scales)).unwrap_or(u64::MAX);
    if total > max_buffer_size {
        return Err(Error::limit("max_buffer_size", total, max_buffer_size));
    }
    if total > u32::MAX as u64 {
        return Err(Error::invalid(
            role,
            InputProblem::TooLarge {
                what: format!("a quantized cache of {total} bytes"),
            },
        ));
    }
    Ok((data.unwrap_or(0), total))
}

/// Checks new rows for a quantized cache: a float dtype (they are quantized on the GPU),
/// shape `want`, any strides, readable as storage.
pub(crate) fn quant_rows(view: &TensorView, want: [usize; 4]) -> Result<()> {
    let role = TensorRole::KvCache;
    check_float(view, role)?;
    check_shape(view, want, role)?;
    check_count(role, &want)?;
    view.check_memory(role, wgpu::BufferUsages::STORAGE)
}

/// Checks that new cache rows have the cache's dtype and shape `want`.
fn cache_rows_like(view: &TensorView, want: [usize; 4], dtype: DType) -> Result<()> {
    if view.dtype != dtype {
        return Err(Error::invalid(
            TensorRole::KvCache,
            InputProblem::WrongDType {
                expected: dtype.to_string(),
                got: view.dtype.to_string(),
            },
        ));
    }
    check_shape(view, want, TensorRole::KvCache)
}

/// Checks `n` new rows for a KV cache of shape `[batch, heads, _, head_dim]` and `dtype`:
/// the same dtype, shape `[batch, heads, n, head_dim]`, a contiguous view at a 4-byte
/// aligned offset that can be copied from.
pub(crate) fn kv_rows(view: &TensorView, want: [usize; 4], dtype: DType) -> Result<()> {
    let role = TensorRole::KvCache;
    cache_rows_like(view, want, dtype)?;
    if !view.is_contiguous() || !view.offset.is_multiple_of(4) {
        return Err(Error::invalid(
            role,
            InputProblem::Other(
                "new rows must be a contiguous BHSD view at a 4-byte aligned offset".into(),
            ),
        ));
    }
    view.check_memory(role, wgpu::BufferUsages::COPY_SRC)
}

/// Checks a paged KV pool of `pages` pages of `page_size` tokens of `heads` vectors of
/// `head_dim`, token-major (a token's heads together, so that appends are copies of whole
/// tokens); returns its bytes.
pub(crate) fn paged_kv_pool(
    [pages, page_size, heads, head_dim]: [usize; 4],
    dtype: DType,
    max_buffer_size: u64,
) -> Result<u64> {
    let bytes = cache_bytes(
        [pages, page_size, heads, head_dim],
        heads * head_dim,
        dtype,
        max_buffer_size,
        || {
            format!(
                "a paged cache needs non-zero sizes and heads * head_dim * {} bytes a multiple of 4 (got pages {pages}, page_size {page_size}, heads {heads}, head_dim {head_dim})",
                dtype.size()
            )
        },
    )?;
    // The attention kernels index the pool in 32 bits.
    check_count(TensorRole::KvCache, &[pages, page_size, heads, head_dim])?;
    Ok(bytes)
}

/// Checks new tokens for a paged KV cache: `dtype`, shape `want` (`[sequences, heads, n,
/// head_dim]`), token-major and contiguous (`[sequences, n, heads, head_dim]` memory, which
/// for one token is also BHSD's), at a 4-byte aligned offset, copyable.
pub(crate) fn paged_rows(view: &TensorView, want: [usize; 4], dtype: DType) -> Result<()> {
    let role = TensorRole::KvCache;
    cache_rows_like(view, want, dtype)?;
    let [b, h, n, d] = view.shape;
    let s = view.strides;
    let token_major = s[3] == 1
        && (h == 1 || s[1] == d)
        && (n == 1 || s[2] == h * d)
        && (b == 1 || s[0] == n * h * d);
    if !token_major || !view.offset.is_multiple_of(4) {
        return Err(Error::invalid(
            role,
            InputProblem::Other(format!(
                "new tokens must be contiguous [sequences, tokens, heads, head_dim] memory (TensorView::bshd; for one token, BHSD) at a 4-byte aligned offset; got strides {s:?} at byte {}",
                view.offset
            )),
        ));
    }
    view.check_memory(role, wgpu::BufferUsages::COPY_SRC)
}

/// Checks that `n` more rows fit behind each batch item's length.
pub(crate) fn kv_room(lengths: &[u32], n: usize, capacity: usize) -> Result<()> {
    for (batch, &len) in lengths.iter().enumerate() {
        if len as usize + n > capacity {
            return Err(Error::invalid(
                TensorRole::KvCache,
                InputProblem::LengthTooLong {
                    batch,
                    len: (len as usize + n).min(u32::MAX as usize) as u32,
                    max: capacity,
                },
            ));
        }
    }
    Ok(())
}

/// Checks a boolean mask handed to [`crate::Context::block_mask`]: bool, no zero size,
/// a buffer the kernel can read.
pub(crate) fn block_mask(view: &TensorView) -> Result<()> {
    if view.dtype != DType::Bool {
        return Err(Error::invalid(
            TensorRole::BoolMask,
            InputProblem::WrongDType {
                expected: "bool".into(),
                got: view.dtype.to_string(),
            },
        ));
    }
    check_nonzero(view, TensorRole::BoolMask)?;
    view.check_memory(TensorRole::BoolMask, wgpu::BufferUsages::STORAGE)
}

/// Checks a view to download as f32 values: f32, f16 or bf16.
pub(crate) fn download(view: &TensorView) -> Result<()> {
    check_float(view, TensorRole::Download)
}
