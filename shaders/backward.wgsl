// The backward pass, FlashAttention-2's algorithm: with P = exp(S - lse) recomputed from
// the forward's log-sum-exp, dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P∘(dP - D) with D = rowsum(dO∘O),
// dQ = scale·dS·K, dK = scale·dSᵀ·Q, and d(bias) = dS summed over the bias's broadcast
// dimensions. Neither P nor dS touches memory in the flash kernels:
//
// - `prep`: one thread per row writes (lse, D) to scratch; the host copies the pairs into
//   the aux words (binding 7), so that the kernels below need no binding of their own for
//   them (every kernel stays within 8 storage bindings, WebGPU's default).
// - `kv`: a workgroup owns BC keys of one (batch, KV head) and walks the query tiles of
//   every query head of its group, accumulating dK and dV in registers; f32 results go to
//   scratch (`gacc`) that `finish` stores in the caller's dtype and layout. Summing the
//   group in the loop is what makes GQA free of atomics.
// - `dq`: a workgroup owns BR query rows, walks the key tiles like the forward and
//   accumulates dQ in registers. A second pass rather than atomics: WGSL has no float
//   atomics (a compare-exchange loop per element costs more than recomputing the logits)
//   and it keeps results bit-identical from run to run.
// - `dbias`: a workgroup owns one BR x BC tile of the bias gradient and sums dS over the
//   batch items and heads the bias broadcasts over, so every element is written once.
//
// Every mask is applied as in the forward, with its tile skipping: tiles outside the
// analytic key range are never visited and block summaries skip fully masked tiles.
// `n_*` is the naive backward: P and dS materialised per chunk of rows, the reference.
//
// Needs from the prelude: DKB, DVB, BR, BC, TPR, WG, row_reduce(), count_tile() and the K/V
// tiles of shaders/flash_tiles.wgsl.

@group(0) @binding(8) var<storage, read_write> gacc: array<f32>;
@group(0) @binding(10) var<storage, read> do_buf: array<u32>;
@group(0) @binding(11) var<storage, read> o_in: array<u32>;
@group(0) @binding(12) var<storage, read> lse_in: array<u32>;
@group(0) @binding(13) var<storage, read_write> stats_out: array<u32>;
@group(0) @binding(14) var<storage, read_write> pmat: array<f32>;

// dO's storage dtype (the flags' two bits at this shift).
const DT_DO: u32 = 26u;

const DPK: u32 = DKB / TPR;
const DPV: u32 = DVB / TPR;
const PK4: u32 = DPK / 4u;
const PV4: u32 = DPV / 4u;
// A row of the Q/dO tile in workgroup memory: Q's DK4 vectors, then dO's DV4.
const QD_ROW: u32 = DK4 + DV4;

var<workgroup> qd: array<vec4<f32>, BR * QD_ROW>;
var<workgroup> qd_stats: array<vec2<f32>, BR>;

fn load_do(e: u32) -> f32 {
    let dt = dtype_of(DT_DO);
    return decode(do_buf[word_index(e, dt)], e, dt);
}

fn do_index(b: u32, h: u32, i: u32, d: u32) -> u32 {
    var base = b * P.do_sb;
    if (has(F_VARLEN)) { base = aux_buf[P.cuq_off + b] * P.do_ss; }
    return P.do_off + base + h * P.do_sh + i * P.do_ss + d * P.do_sd;
}

// Row (b, h, i) of the padded grid, as the statistics are laid out.
fn stat_row(b: u32, h: u32, i: u32) -> u32 {
    return (b * P.heads_q + h) * P.seq_q + i;
}

// (lse, D) of a row; (-inf, 0) for a row with no storage.
fn row_stats(b: u32, h: u32, i: u32, rc: RowCtx) -> vec2<f32> {
    var neg_inf = NEG_INF_BITS;
    if (!row_stored(b, i, rc)) { return vec2<f32>(bitcast<f32>(neg_inf), 0.0); }
    let w = P.stat_off + 2u * stat_row(b, h, i);
    return vec2<f32>(bitcast<f32>(aux_buf[w]), bitcast<f32>(aux_buf[w + 1u]));
}

// Dims d0..d0+3 of row i of Q (is_do false) or dO (true), zero past the ends and for rows
// with no storage.
fn row_vec4(is_do: bool, b: u32, h: u32, i: u32, d0: u32, ok: bool) -> vec4<f32> {
    var x = vec4<f32>(0.0);
    let dim = select(P.dk, P.dv, is_do);
    for (var c = 0u; c < 4u; c++) {
        let d = d0 + c;
        if (ok && d < dim) {
            if (is_do) { x[c] = load_do(do_index(b, h, i, d)); } else { x[c] = load_q(q_index(b, h, i, d)); }
        }
    }
    return x;
}

// Whether logit (i, j) is visible, and its value: the analytic range `kr`, the bool mask
// where the tile is mixed (state 2), the bias and ALiBi, finiteness; and whether the row's
// log-sum-exp is finite (a row that saw no key in the forward contributes nothing).
fn visible_logit(b: u32, h: u32, i: u32, j: u32, kr: vec2<u32>, state: u32, dot: f32, lse: f32, rc: RowCtx) -> vec2<f32> {
    var vis = j >= kr.x && j < kr.y && finite_logit(lse);
    if (vis && state == 2u) { vis = bool_mask_at(b, h, i, j); }
    var s = dot * P.scale;
    if (vis) {
        s += logit_extra(b, h, i, j, rc);
        vis = finite_logit(s);
    }
    return vec2<f32>(s, select(0.0, 1.0, vis));
}

// --------------------------------------------------------------------------- prep

// One thread per row of the padded grid: (lse, D = rowsum(dO∘O)).
@compute @workgroup_size(WG)
fn prep(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = linear_wg(wid) * WG + lid;
    let i = r % P.seq_q;
    let bh = r / P.seq_q;
    let h = bh % P.heads_q;
    let b = bh / P.heads_q;
    if (b >= P.batch) { return; }
    let rc = row_ctx(b);
    var lse = NEG_INF_BITS;
    var dsum = 0.0;
    if (row_stored(b, i, rc)) {
        var row = b * P.l_sb;
        if (has(F_VARLEN)) { row = aux_buf[P.cuq_off + b] * P.l_ss; }
        lse = lse_in[P.l_off + row + h * P.l_sh + i * P.l_ss];
        if (finite_logit(bitcast<f32>(lse))) {
            for (var d = 0u; d < P.dv; d++) {
                let dt = dtype_of(DT_O);
                let e = o_index(b, h, i, d, 0u);
                dsum += load_do(do_index(b, h, i, d)) * decode(o_in[word_index(e, dt)], e, dt);
            }
        }
    }
    stats_out[2u * r] = lse;
    stats_out[2u * r + 1u] = bitcast<u32>(dsum);
}

// --------------------------------------------------------------------------- kv

// Loads rows qt*BR.. of Q and dO, and their statistics, into workgroup memory (no barrier).
fn fill_qd_tile(lid: u32, b: u32, h: u32, qt: u32, rc: RowCtx) {
    for (var e = lid; e < BR * DK4; e += WG) {
        let r = e / DK4;
        let i = qt * BR + r;
        qd[r * QD_ROW + e % DK4] = row_vec4(false, b, h, i, (e % DK4) * 4u, row_stored(b, i, rc));
    }
    for (var e = lid; e < BR * DV4; e += WG) {
        let r = e / DV4;
        let i = qt * BR + r;
        qd[r * QD_ROW + DK4 + e % DV4] = row_vec4(true, b, h, i, (e % DV4) * 4u, row_stored(b, i, rc));
    }
    for (var r = lid; r < BR; r += WG) {
        qd_stats[r] = row_stats(b, h, qt * BR + r, rc);
    }
}

@compute @workgroup_size(WG)
fn kv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let n_kt = (P.seq_k + BC - 1u) / BC;
    let wg = linear_wg(wid);
    let kt = wg % n_kt;
    let bh = wg / n_kt;
    let hk = bh % P.heads_kv;
    let b = bh / P.heads_kv;
    if (b >= P.batch) { return; }
    let sub = lid % TPR;
    let k0 = kt * BC;
    let j = k0 + lid / TPR;
    let rc = row_ctx(b);
    let bases = kv_bases(b, hk);

    // This thread's slice of key j's K and V rows, and of their gradients.
    var kr: array<vec4<f32>, PK4>;
    var vr: array<vec4<f32>, PV4>;
    var gk: array<vec4<f32>, PK4>;
    var gv: array<vec4<f32>, PV4>;
    for (var t = 0u; t < PK4; t++) {
        kr[t] = kv_vec4(false, bases.x, j, sub * DPK + t * 4u);
        gk[t] = vec4<f32>(0.0);
    }
    for (var t = 0u; t < PV4; t++) {
        vr[t] = kv_vec4(true, bases.y, j, sub * DPV + t * 4u);
        gv[t] = vec4<f32>(0.0);
    }

    let n_qt = (P.seq_q + BR - 1u) / BR;
    for (var g = 0u; g < P.group; g++) {
        let h = hk * P.group + g;
        for (var qt = 0u; qt < n_qt; qt++) {
            // Query tiles whose rows see none of these keys are never loaded.
            let tr = tile_key_range(qt * BR, qt * BR + BR, rc);
            if (tr.y <= k0 || tr.x >= k0 + BC) { continue; }
            let state = tile_state(b, h, qt, k0);
            if (state == 0u) { continue; }
            if (lid == 0u) { count_tile(state); }
            workgroupBarrier();
            fill_qd_tile(lid, b, h, qt, rc);
            workgroupBarrier();
            for (var r = 0u; r < BR; r++) {
                let i = qt * BR + r;
                let qb = r * QD_ROW + sub * PK4;
                let ob = r * QD_ROW + DK4 + sub * PV4;
                var sp = 0.0;
                for (var t = 0u; t < PK4; t++) { sp += dot(qd[qb + t], kr[t]); }
                var dpp = 0.0;
                for (var t = 0u; t < PV4; t++) { dpp += dot(qd[ob + t], vr[t]); }
                let sdot = row_reduce(sp);
                let dp = row_reduce(dpp);
                let st = qd_stats[r];
                let sv = visible_logit(b, h, i, j, key_range(i, rc), state, sdot, st.x, rc);
                if (sv.y != 0.0) {
                    let p = exp(sv.x - st.x);
                    let ds = p * (dp - st.y);
                    for (var t = 0u; t < PV4; t++) { gv[t] += p * qd[ob + t]; }
                    for (var t = 0u; t < PK4; t++) { gk[t] += ds * qd[qb + t]; }
                }
            }
        }
    }

    if (j < P.seq_k) {
        let kbase = ((b * P.heads_kv + hk) * P.seq_k + j) * P.dk;
        for (var t = 0u; t < PK4; t++) {
            for (var c = 0u; c < 4u; c++) {
                let d = sub * DPK + t * 4u + c;
                if (d < P.dk) { gacc[kbase + d] = gk[t][c] * P.scale; }
            }
        }
        let vbase = P.g_dv + ((b * P.heads_kv + hk) * P.seq_k + j) * P.dv;
        for (var t = 0u; t < PV4; t++) {
            for (var c = 0u; c < 4u; c++) {
                let d = sub * DPV + t * 4u + c;
                if (d < P.dv) { gacc[vbase + d] = gv[t][c]; }
            }
        }
    }
}

// --------------------------------------------------------------------------- dq

@compute @workgroup_size(WG)
fn dq(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = query_tile(wid);
    let b = tile.b;
    let h = tile.h;
    if (b >= P.batch) { return; }
    let sub = lid % TPR;
    let rc = row_ctx(b);
    let tiles = block_tiles(lid, tile, rc);
    let i = tile.qt * BR + lid / TPR;
    let ok = row_stored(b, i, rc);
    let kr = key_range(i, rc);
    let st = row_stats(b, h, i, rc);
    var q: array<vec4<f32>, PK4>;
    var dov: array<vec4<f32>, PV4>;
    var g: array<vec4<f32>, PK4>;
    for (var t = 0u; t < PK4; t++) {
        q[t] = row_vec4(false, b, h, i, sub * DPK + t * 4u, ok);
        g[t] = vec4<f32>(0.0);
    }
    for (var t = 0u; t < PV4; t++) { dov[t] = row_vec4(true, b, h, i, sub * DPV + t * 4u, ok); }

    let bases = kv_bases(b, tile.hk);
    for (var j0 = tiles.x; j0 < tiles.y; j0 += BC) {
        let state = next_tile(lid, b, h, tile.qt, j0, bases);
        if (state == 0u) { continue; }
        for (var jj = 0u; jj < BC; jj++) {
            let kb = jj * DK4 + sub * PK4;
            let vb = VS0 + jj * DV4 + sub * PV4;
            var sp = 0.0;
            for (var t = 0u; t < PK4; t++) { sp += dot(q[t], kvs[kb + t]); }
            var dpp = 0.0;
            for (var t = 0u; t < PV4; t++) { dpp += dot(dov[t], kvs[vb + t]); }
            let sdot = row_reduce(sp);
            let dp = row_reduce(dpp);
            let sv = visible_logit(b, h, i, j0 + jj, kr, state, sdot, st.x, rc);
            if (sv.y != 0.0) {
                let ds = exp(sv.x - st.x) * (dp - st.y);
                for (var t = 0u; t < PK4; t++) { g[t] += ds * kvs[kb + t]; }
            }
        }
    }
    if (ok) {
        for (var t = 0u; t < PK4; t++) {
            for (var c = 0u; c < 4u; c++) {
                let d = sub * DPK + t * 4u + c;
                if (d < P.dk) { store_o(o_index(b, h, i, d, 0u), g[t][c] * P.scale); }
            }
        }
    }
}

// --------------------------------------------------------------------------- dbias

// The bias gradient's element (bb, hb, i, j), through the output strides.
fn dbias_index(bb: u32, hb: u32, i: u32, j: u32) -> u32 {
    return P.o_off + bb * P.o_sb + hb * P.o_sh + i * P.o_ss + j * P.o_sd;
}

@compute @workgroup_size(WG)
fn dbias(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let n_qt = (P.seq_q + BR - 1u) / BR;
    let n_kt = (P.seq_k + BC - 1u) / BC;
    let wg = linear_wg(wid);
    let kt = wg % n_kt;
    let rest = wg / n_kt;
    let qt = rest % n_qt;
    let bh = rest / n_qt;
    let hb = bh % P.bg_h;
    let bb = bh / P.bg_h;
    if (bb >= P.bg_b) { return; }
    let sub = lid % TPR;
    let i = qt * BR + lid / TPR;
    let j0 = kt * BC;
    var acc: array<f32, BC>;
    for (var jj = 0u; jj < BC; jj++) { acc[jj] = 0.0; }
    // The batch items and heads that share this bias element.
    let nb = select(1u, P.batch, P.bg_b == 1u);
    let nh = select(1u, P.heads_q, P.bg_h == 1u);
    for (var x = 0u; x < nb; x++) {
        let b = select(bb, x, P.bg_b == 1u);
        let rc = row_ctx(b);
        let tr = tile_key_range(qt * BR, qt * BR + BR, rc);
        if (tr.y <= j0 || tr.x >= j0 + BC) { continue; }
        let ok = row_stored(b, i, rc);
        let kr = key_range(i, rc);
        for (var y = 0u; y < nh; y++) {
            let h = select(hb, y, P.bg_h == 1u);
            let state = next_tile(lid, b, h, qt, j0, kv_bases(b, h / P.group));
            if (state == 0u) { continue; }
            let st = row_stats(b, h, i, rc);
            var q: array<vec4<f32>, PK4>;
            var dov: array<vec4<f32>, PV4>;
            for (var t = 0u; t < PK4; t++) { q[t] = row_vec4(false, b, h, i, sub * DPK + t * 4u, ok); }
            for (var t = 0u; t < PV4; t++) { dov[t] = row_vec4(true, b, h, i, sub * DPV + t * 4u, ok); }
            for (var jj = 0u; jj < BC; jj++) {
                let kb = jj * DK4 + sub * PK4;
                let vb = VS0 + jj * DV4 + sub * PV4;
                var sp = 0.0;
                for (var t = 0u; t < PK4; t++) { sp += dot(q[t], kvs[kb + t]); }
                var dpp = 0.0;
                for (var t = 0u; t < PV4; t++) { dpp += dot(dov[t], kvs[vb + t]); }
                let sdot = row_reduce(sp);
                let dp = row_reduce(dpp);
                let sv = visible_logit(b, h, i, j0 + jj, kr, state, sdot, st.x, rc);
                if (sv.y != 0.0) { acc[jj] += exp(sv.x - st.x) * (dp - st.y); }
            }
        }
    }
    if (i < P.seq_q && sub == 0u) {
        for (var jj = 0u; jj < BC; jj++) {
            if (j0 + jj < P.seq_k) { store_o(dbias_index(bb, hb, i, j0 + jj), acc[jj]); }
        }
    }
}

// --------------------------------------------------------------------------- finish

// One thread per element of the f32 scratch region at g_off, shaped [f_n0, f_n1, f_n2,
// f_n3] (batch, heads, rows, columns), stored through the output strides in the output's
// dtype. With F_VARLEN the rows are keys of packed sequences: those past a sequence's
// length have no storage.
@compute @workgroup_size(WG)
fn finish(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let e = linear_wg(wid) * WG + lid;
    if (e >= P.f_n0 * P.f_n1 * P.f_n2 * P.f_n3) { return; }
    let d = e % P.f_n3;
    let rest = e / P.f_n3;
    let j = rest % P.f_n2;
    let bh = rest / P.f_n2;
    let h = bh % P.f_n1;
    let b = bh / P.f_n1;
    var base = b * P.o_sb;
    if (has(F_VARLEN)) {
        if (j >= row_ctx(b).kvalid) { return; }
        base = aux_buf[P.cuk_off + b] * P.o_ss;
    }
    store_o(P.o_off + base + h * P.o_sh + j * P.o_ss + d * P.o_sd, gacc[P.g_off + e]);
}

// --------------------------------------------------------------------------- naive

// The naive backward runs per chunk of rows [row_start, row_start + row_count) of the
// (batch, head, query) grid, after the forward's naive `scores` and `softmax` passes left P
// in `pmat` (row stride scratch_stride). Accumulators in `gacc` are added to, chunk after
// chunk (the host clears them first).

fn naive_index(lid: u32, wid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * P.wg_x) * WG + lid;
}

// The chunk's P (or dS) at row (b, h, i), key j; 0 for a row outside the chunk.
fn chunk_at(b: u32, h: u32, i: u32, j: u32) -> f32 {
    let r = stat_row(b, h, i);
    if (r < P.row_start || r >= P.row_start + P.row_count) { return 0.0; }
    return pmat[(r - P.row_start) * P.scratch_stride + j];
}

// dV (is_k false: P·dO) or dK (true: scale·dS·Q) accumulated for the chunk: one thread per
// (KV row f_n0 + x of the chunk's f_n1, key, dim).
fn naive_kv(lid: u32, wid: vec3<u32>, is_k: bool) {
    let dim = select(P.dv, P.dk, is_k);
    let g = naive_index(lid, wid);
    let d = g % dim;
    let rest = g / dim;
    let j = rest % P.seq_k;
    let x = rest / P.seq_k;
    if (x >= P.f_n1) { return; }
    let bkv = P.f_n0 + x;
    let hk = bkv % P.heads_kv;
    let b = bkv / P.heads_kv;
    var acc = 0.0;
    for (var h = hk * P.group; h < hk * P.group + P.group; h++) {
        for (var i = 0u; i < P.seq_q; i++) {
            let w = chunk_at(b, h, i, j);
            if (w != 0.0) {
                if (is_k) { acc += w * load_q(q_index(b, h, i, d)); } else { acc += w * load_do(do_index(b, h, i, d)); }
            }
        }
    }
    let at = (bkv * P.seq_k + j) * dim + d;
    if (is_k) { gacc[at] += acc * P.scale; } else { gacc[P.g_dv + at] += acc; }
}

@compute @workgroup_size(WG)
fn n_dv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    naive_kv(lid, wid, false);
}

@compute @workgroup_size(WG)
fn n_dk(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    naive_kv(lid, wid, true);
}

// P to dS in place: one thread per (row of the chunk, key).
@compute @workgroup_size(WG)
fn n_ds(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let g = naive_index(lid, wid);
    let local_row = g / P.seq_k;
    let j = g % P.seq_k;
    if (local_row >= P.row_count) { return; }
    let r = P.row_start + local_row;
    let i = r % P.seq_q;
    let bh = r / P.seq_q;
    let h = bh % P.heads_q;
    let b = bh / P.heads_q;
    let at = local_row * P.scratch_stride + j;
    let p = pmat[at];
    if (p == 0.0) { return; }
    let vb = P.v_off + v_batch(b) + (h / P.group) * P.v_sh + j * P.v_ss;
    var dp = 0.0;
    for (var d = 0u; d < P.dv; d++) { dp += load_do(do_index(b, h, i, d)) * load_v(vb + d * P.v_sd); }
    pmat[at] = p * (dp - row_stats(b, h, i, row_ctx(b)).y);
}

// dQ rows of the chunk: one thread per (row, dim).
@compute @workgroup_size(WG)
fn n_dq(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let g = naive_index(lid, wid);
    let local_row = g / P.dk;
    let d = g % P.dk;
    if (local_row >= P.row_count) { return; }
    let r = P.row_start + local_row;
    let i = r % P.seq_q;
    let bh = r / P.seq_q;
    let h = bh % P.heads_q;
    let b = bh / P.heads_q;
    if (!row_stored(b, i, row_ctx(b))) { return; }
    let kb = P.k_off + k_batch(b) + (h / P.group) * P.k_sh + d * P.k_sd;
    var acc = 0.0;
    for (var j = 0u; j < P.seq_k; j++) {
        let w = pmat[local_row * P.scratch_stride + j];
        if (w != 0.0) { acc += w * load_k(kb + j * P.k_ss); }
    }
    store_o(o_index(b, h, i, d, 0u), acc * P.scale);
}

// The bias gradient accumulated for the chunk (at g_off): one thread per element of the
// bias's shape [bg_b, bg_h, seq_q, seq_k], summing the rows that share it.
@compute @workgroup_size(WG)
fn n_dbias(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let e = naive_index(lid, wid);
    if (e >= P.bg_b * P.bg_h * P.seq_q * P.seq_k) { return; }
    let j = e % P.seq_k;
    let i = (e / P.seq_k) % P.seq_q;
    let bh = e / (P.seq_k * P.seq_q);
    let hb = bh % P.bg_h;
    let bb = bh / P.bg_h;
    let nb = select(1u, P.batch, P.bg_b == 1u);
    let nh = select(1u, P.heads_q, P.bg_h == 1u);
    var acc = 0.0;
    for (var x = 0u; x < nb; x++) {
        for (var y = 0u; y < nh; y++) {
            acc += chunk_at(select(bb, x, P.bg_b == 1u), select(hb, y, P.bg_h == 1u), i, j);
        }
    }
    gacc[P.g_off + e] += acc;
}
