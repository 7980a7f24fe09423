//! Host side of the backward pass (`shaders/backward.wgsl`): the row statistics, then the
//! flash kernels (dK/dV, dQ, the bias gradient) or the naive passes, and the stores of the
//! f32 gradient scratch into the caller's views.

pub(crate) mod unrolled;

use crate::data::options::AttentionOptions;
use crate::data::problem::Problem;
use crate::data::tensor::TensorView;
use crate::error::{Error, Result, TensorRole};
use crate::kernels::attention::params::{AttnParams, flags};
use crate::kernels::attention::{self, Bound, Window, strides, window};
use crate::kernels::naive;
use crate::kernels::{bindings, spec, summary};
use crate::plan::backward::BACKWARD_AUX_TILE;
use crate::plan::variant::{BackwardTile, ModuleKey, ShaderVariant};
use crate::runtime::Runtime;
use crate::runtime::arena::Range;

/// The views of one backward call (gradients already staged where they share a buffer
/// with an input).
pub(crate) struct Views<'a> {
    pub q: &'a TensorView,
    pub k: &'a TensorView,
    pub v: &'a TensorView,
    pub out: &'a TensorView,
    pub d_out: &'a TensorView,
    pub lse: &'a TensorView,
    pub dq: &'a TensorView,
    pub dk: &'a TensorView,
    pub dv: &'a TensorView,
    pub dbias: Option<&'a TensorView>,
    pub dsink: Option<&'a TensorView>,
}

/// Threads per workgroup of the passes that run one thread per element.
const AUX_WG: u64 = BACKWARD_AUX_TILE.block as u64;

/// Shared by every pass of a call: the bound views, dO's window, the scratch.
struct Call<'a> {
    rt: &'a Runtime,
    p: &'a Problem,
    tile: BackwardTile,
    bound: Bound,
    d_out: Window,
    gacc: Range,
}

/// The module an entry point of a call with this tile comes from: the flash kernels' from
/// the tile's, the rest from [`BACKWARD_AUX_TILE`]'s (compiled once for every call).
pub(crate) fn module_for(tile: BackwardTile, entry: &str) -> ModuleKey {
    match entry {
        "kv" | "dq" | "dbias" => ModuleKey::Backward(tile),
        _ => ModuleKey::Backward(BACKWARD_AUX_TILE),
    }
}

impl Call<'_> {
    fn extras(&self, more: &[(u32, Range)]) -> Vec<(u32, Range)> {
        let mut e = vec![
            (bindings::D_OUT, self.d_out.range()),
            (bindings::GACC, self.gacc.clone()),
        ];
        e.extend_from_slice(more);
        e
    }

    /// Runs `entry` over `n` workgroups with `params`, and `o` (an output window with its
    /// view) bound as the output.
    fn run(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        entry: &'static str,
        params: AttnParams,
        o: Option<(&TensorView, TensorRole)>,
        n: u64,
        more: &[(u32, Range)],
    ) -> Result<()> {
        let key = module_for(self.tile, entry);
        let compiled = self.rt.pipeline(key, entry, || spec(&key, entry))?;
        let mut bound = self.bound.clone();
        bound.params = params;
        if let Some((view, role)) = o {
            let w = window(self.rt, view, role)?;
            bound.params.o = strides(view, &w);
            bound.params.flags =
                (bound.params.flags & !(3 << flags::DT_O)) | view.dtype.code() << flags::DT_O;
            bound.o = w;
        }
        let label = "wgpu-attention backward";
        let extra = self.extras(more);
        attention::launch_grid(self.rt, encoder, label, &compiled, &bound, n, &extra)
    }

    /// Stores the f32 scratch region at `g_off`, shaped `shape`, into `view`.
    fn finish(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        view: &TensorView,
        role: TensorRole,
        g_off: u64,
        shape: [usize; 4],
        varlen_rows: bool,
    ) -> Result<()> {
        let mut params = self.bound.params;
        params.g_off = u32::try_from(g_off).map_err(|_| too_large(g_off))?;
        params.fin = shape.map(|x| x as u32);
        if !varlen_rows {
            params.flags &= !flags::VARLEN;
        }
        let n = shape.iter().product::<usize>() as u64;
        self.run(
            encoder,
            "finish",
            params,
            Some((view, role)),
            n.div_ceil(AUX_WG),
            &[],
        )
    }
}

fn too_large(n: u64) -> Error {
    Error::limit(
        "elements of the backward pass's f32 scratch",
        n,
        u32::MAX as u64,
    )
}

/// Records the backward pass of a validated call (`p`) into `encoder`.
pub(crate) fn record(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    p: &Problem,
    tile: BackwardTile,
    flash: bool,
    x: &Views<'_>,
    opts: &AttentionOptions,
) -> Result<()> {
    let rows = p.batch * p.heads_q * p.seq_q;
    // (bind() names the fourth view "output": dQ's window is checked under its own name.)
    window(rt, x.dq, TensorRole::QueryGrad)?;
    let mut bound = attention::bind(rt, p, [x.q, x.k, x.v, x.dq], opts, flash, None, 2 * rows)?;
    let d_out = window(rt, x.d_out, TensorRole::OutputGrad)?;
    bound.params.d_o = strides(x.d_out, &d_out);
    bound.params.flags |= x.d_out.dtype.code() << flags::DT_DO;
    // bind() took the forward output's dtype; the kernels write dQ.
    bound.params.flags =
        (bound.params.flags & !(3 << flags::DT_O)) | x.dq.dtype.code() << flags::DT_O;
    let kv_rows = (p.batch * p.heads_kv * p.seq_k) as u64;
    let g_dv = kv_rows * p.head_dim_qk as u64;
    let mut g_words = g_dv + kv_rows * p.head_dim_v as u64;
    bound.params.g_dv = u32::try_from(g_dv).map_err(|_| too_large(g_dv))?;
    let bias_shape = opts.mask.bias.as_ref().map(|b| b.shape);
    if let Some(s) = bias_shape {
        bound.params.bg_b = s[0] as u32;
        bound.params.bg_h = s[1] as u32;
    }
    // The naive backward accumulates the bias gradient after dK and dV.
    let g_bias = g_words;
    if !flash && x.dbias.is_some() {
        g_words += bias_shape.map_or(0, |s| s.iter().product::<usize>()) as u64;
    }
    let g_bytes = g_words.max(4) * 4;
    let max = rt.caps().max_storage_binding;
    if g_bytes > max {
        return Err(Error::binding(TensorRole::KeyGrad, g_bytes, max));
    }
    let gacc = rt.scratch("wgpu-attention backward gradients", g_bytes)?;
    let call = Call {
        rt,
        p,
        tile,
        bound,
        d_out,
        gacc: (gacc.clone(), 0, g_bytes),
    };

    // The aux words (and the block summary) first: the passes read them.
    call.bound.aux.stage(encoder);
    if let (true, Some(slot), Some(bm)) = (flash, call.bound.summary, &opts.mask.bool_mask) {
        match &bm.summary {
            Some(pre) => pre.copy_into(encoder, &call.bound.aux.buffer, slot.offset),
            None => summary::record(rt, encoder, &bm.view, &call.bound.aux.buffer, slot.offset)?,
        }
    }
    prep(&call, encoder, x, rows)?;
    if let Some(ds) = x.dsink {
        // One workgroup per query head, over the row statistics `prep` left in aux.
        let params = call.bound.params;
        let role = TensorRole::SinkGrad;
        call.run(
            encoder,
            "dsink",
            params,
            Some((ds, role)),
            p.heads_q as u64,
            &[],
        )?;
    }

    if flash {
        let n_kt = p.seq_k.div_ceil(tile.block as usize) as u64;
        let n_qt = p.seq_q.div_ceil(tile.block as usize) as u64;
        let params = call.bound.params;
        let n = (p.batch * p.heads_kv) as u64 * n_kt;
        call.run(encoder, "kv", params, None, n, &[])?;
        let n = (p.batch * p.heads_q) as u64 * n_qt;
        call.run(encoder, "dq", params, None, n, &[])?;
        if let (Some(db), Some(s)) = (x.dbias, bias_shape) {
            let n = (s[0] * s[1]) as u64 * n_qt * n_kt;
            call.run(
                encoder,
                "dbias",
                params,
                Some((db, TensorRole::BiasGrad)),
                n,
                &[],
            )?;
        }
    } else {
        encoder.clear_buffer(&gacc, 0, Some(g_bytes));
        naive(&call, encoder, x, g_bias)?;
    }
    let [kb, hkv, sk] = [p.batch, p.heads_kv, p.seq_k];
    let varlen = p.varlen;
    call.finish(
        encoder,
        x.dk,
        TensorRole::KeyGrad,
        0,
        [kb, hkv, sk, p.head_dim_qk],
        varlen,
    )?;
    let dv_shape = [kb, hkv, sk, p.head_dim_v];
    call.finish(encoder, x.dv, TensorRole::ValueGrad, g_dv, dv_shape, varlen)?;
    if let (false, Some(db), Some(s)) = (flash, x.dbias, bias_shape) {
        call.finish(encoder, db, TensorRole::BiasGrad, g_bias, s, false)?;
    }
    Ok(())
}

/// The row statistics (lse, D = rowsum(dO∘O)), written to scratch and copied into the aux
/// words where the kernels read them.
fn prep(
    call: &Call<'_>,
    encoder: &mut wgpu::CommandEncoder,
    x: &Views<'_>,
    rows: usize,
) -> Result<()> {
    let rt = call.rt;
    let bytes = (rows.max(2) * 8) as u64;
    let stats = rt.scratch("wgpu-attention backward row statistics", bytes)?;
    let o = window(rt, x.out, TensorRole::Output)?;
    let l = window(rt, x.lse, TensorRole::Lse)?;
    let mut params = call.bound.params;
    params.o = strides(x.out, &o);
    params.flags = (params.flags & !(3 << flags::DT_O)) | x.out.dtype.code() << flags::DT_O;
    let ls = strides(x.lse, &l);
    params.lse = [ls[0], ls[1], ls[2], ls[3]];
    let more = [
        (bindings::O_IN, o.range()),
        (bindings::LSE_IN, l.range()),
        (bindings::STATS_OUT, (stats.clone(), 0, bytes)),
    ];
    let n = (rows as u64).div_ceil(AUX_WG);
    call.run(encoder, "prep", params, None, n, &more)?;
    let at = call.bound.params.stat_off as u64 * 4;
    encoder.copy_buffer_to_buffer(&stats, 0, &call.bound.aux.buffer, at, (rows * 8) as u64);
    Ok(())
}

/// The naive backward: per chunk of rows, P through the forward's naive `scores` and
/// `softmax` passes, then dV, dS in place, dK, dQ and the bias gradient.
fn naive(
    call: &Call<'_>,
    encoder: &mut wgpu::CommandEncoder,
    x: &Views<'_>,
    g_bias: u64,
) -> Result<()> {
    let (rt, p) = (call.rt, call.p);
    let caps = rt.caps();
    let (limit, row_bytes) = naive::score_rows(rt, p)?;
    let total_rows = (p.batch * p.heads_q * p.seq_q) as u64;
    let rows_per_chunk = (limit / row_bytes).min(total_rows).max(1);
    let bytes = rows_per_chunk * row_bytes;
    let pmat = rt.scratch("wgpu-attention naive backward scores", bytes)?;
    let pm = (pmat.clone(), 0, bytes);
    let fwd = ModuleKey::Attention {
        variant: ShaderVariant::Naive,
        counters: false,
    };
    let scores = rt.pipeline(fwd, "scores", || spec(&fwd, "scores"))?;
    let softmax = rt.pipeline(fwd, "softmax", || spec(&fwd, "softmax"))?;
    const NAIVE_WG: u64 = 64;
    let per = |n: u64, w: u64| -> Result<(u32, u32)> {
        let c = attention::split_grid(n.div_ceil(w), caps.max_workgroups_per_dim)?;
        match c.as_slice() {
            [one] => Ok((one.x, one.y)),
            _ => Err(Error::limit(
                "workgroups of one naive backward pass",
                n.div_ceil(w),
                (caps.max_workgroups_per_dim as u64).pow(2),
            )),
        }
    };
    let mut row = 0u64;
    while row < total_rows {
        let rows = rows_per_chunk.min(total_rows - row);
        let mut params = call.bound.params;
        params.row_start = row as u32;
        params.row_count = rows as u32;
        params.scratch_stride = p.seq_k as u32;
        let sk = p.seq_k as u64;
        let fwd_scratch = [(bindings::SCRATCH, pm.clone())];
        for (comp, n) in [(&scores, rows * sk), (&softmax, rows * NAIVE_WG)] {
            let (gx, gy) = per(n, NAIVE_WG)?;
            params.wg_x = gx;
            let label = "wgpu-attention naive backward";
            attention::launch(
                rt,
                encoder,
                label,
                comp,
                &call.bound,
                &params,
                &fwd_scratch,
                (gx, gy),
            )?;
        }
        // The KV rows (b * heads_kv + hk) this chunk's rows belong to.
        let seq_q = p.seq_q as u64;
        let kv_row = |r: u64| {
            let bh = r / seq_q;
            let (b, h) = (bh / p.heads_q as u64, bh % p.heads_q as u64);
            b * p.heads_kv as u64 + h / (p.heads_q / p.heads_kv) as u64
        };
        let (kv0, kv1) = (kv_row(row), kv_row(row + rows - 1));
        params.fin = [kv0 as u32, (kv1 - kv0 + 1) as u32, 0, 0];
        params.g_off = g_bias as u32;
        let n_kv = (kv1 - kv0 + 1) * sk;
        let bias_elems = x.dbias.map_or(0, |_| {
            (params.bg_b as u64) * (params.bg_h as u64) * seq_q * sk
        });
        // dS in place of P, then the bias gradient (dS itself), then with the soft cap dS
        // times the cap's slope (what the scores q·k get), then dK and dQ from it.
        let mut passes = vec![("n_dv", n_kv * p.head_dim_v as u64), ("n_ds", rows * sk)];
        if bias_elems > 0 {
            passes.push(("n_dbias", bias_elems));
        }
        if p.softcap {
            passes.push(("n_slope", rows * sk));
        }
        passes.extend([
            ("n_dk", n_kv * p.head_dim_qk as u64),
            ("n_dq", rows * p.head_dim_qk as u64),
        ]);
        for (entry, n) in passes {
            let key = module_for(call.tile, entry);
            let compiled = rt.pipeline(key, entry, || spec(&key, entry))?;
            let (gx, gy) = per(n, AUX_WG)?;
            params.wg_x = gx;
            let extra = call.extras(&[(bindings::PMAT, pm.clone())]);
            let label = "wgpu-attention naive backward";
            attention::launch(
                rt,
                encoder,
                label,
                &compiled,
                &call.bound,
                &params,
                &extra,
                (gx, gy),
            )?;
        }
        row += rows;
    }
    Ok(())
}
