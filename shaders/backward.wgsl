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
// Needs from the prelude: DKB, DVB, BR (= BC), BC, TPR, RPT, WG, row_reduce(), count_tile() and the K/V
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
// The distance between a thread's RPT rows (dq, dbias) or keys (kv).
const STRIDE: u32 = BR / RPT;
// A row of the Q/dO tile in workgroup memory: Q's DK4 vectors, then dO's DV4.
const QD_ROW: u32 = DK4 + DV4;

var<workgroup> qd: array<vec4<f32>, BR * QD_ROW>;
var<workgroup> qd_stats: array<vec2<f32>, BR>;
// `dbias`'s sums of dS over its BR × BC block.
var<workgroup> dbacc: array<f32, BR * BC>;

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

// Row r of the padded (batch, head, query) grid.
struct GridRow {
    b: u32,
    h: u32,
    i: u32,
}

fn grid_row(r: u32) -> GridRow {
    let bh = r / P.seq_q;
    return GridRow(bh / P.heads_q, bh % P.heads_q, r % P.seq_q);
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
// Dim d of row i of dO (is_do) or Q, 0 past the row's dims or where !ok. Branch-free (an
// element that does not exist reads element 0), so that loops of these unroll.
fn row_elem(is_do: bool, b: u32, h: u32, i: u32, d: u32, ok: bool) -> f32 {
    let on = ok && d < select(P.dk, P.dv, is_do);
    let bb = select(0u, b, on);
    let ii = select(0u, i, on);
    let dd = select(0u, d, on);
    var x = 0.0;
    if (is_do) { x = load_do(do_index(bb, h, ii, dd)); } else { x = load_q(q_index(bb, h, ii, dd)); }
    return select(0.0, x, on);
}

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

// Row r's slices of Q and dO (this thread's dims), components outermost: the dims loops
// unroll and index the arrays by constants (indexed by a variable, they land in scratch
// memory); the component index of a vector needs no memory.
fn q_slice(b: u32, h: u32, r: BwdRow, sub: u32) -> array<vec4<f32>, PK4> {
    var q: array<vec4<f32>, PK4>;
    for (var c = 0u; c < 4u; c++) {
        for (var t = 0u; t < PK4; t++) { q[t][c] = row_elem(false, b, h, r.i, sub * DPK + t * 4u + c, r.ok); }
    }
    return q;
}

fn do_slice(b: u32, h: u32, r: BwdRow, sub: u32) -> array<vec4<f32>, PV4> {
    var o: array<vec4<f32>, PV4>;
    for (var c = 0u; c < 4u; c++) {
        for (var t = 0u; t < PV4; t++) { o[t][c] = row_elem(true, b, h, r.i, sub * DPV + t * 4u + c, r.ok); }
    }
    return o;
}

// Whether logit (i, j) is visible, and its value: the analytic range `kr`, the bool mask
// where the tile is mixed (state 2), the soft cap, the bias and ALiBi, finiteness; and
// whether the row's log-sum-exp is finite (a row that saw no key in the forward contributes
// nothing). Returns (logit, visible 0/1, the soft cap's slope): dS reaches the scores q·k
// times the slope 1 - (c / cap)² at the capped score c (1 without a cap), the bias as it is.
fn visible_logit(b: u32, h: u32, i: u32, j: u32, kr: vec2<u32>, state: u32, dot: f32, lse: f32, rc: RowCtx) -> vec3<f32> {
    var vis = j >= kr.x && j < kr.y && finite_logit(lse);
    if (vis && state == 2u) { vis = bool_mask_at(b, h, i, j); }
    let s0 = dot * P.scale;
    var s = softcap(s0);
    let slope = softcap_slope(s);
    if (vis) {
        s += logit_extra(b, h, i, j, rc);
        vis = finite_logit(s);
    }
    return vec3<f32>(s, select(0.0, 1.0, vis), slope);
}

// --------------------------------------------------------------------------- prep

// One thread per row of the padded grid: (lse, D = rowsum(dO∘O)).
@compute @workgroup_size(WG)
fn prep(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = linear_wg(wid) * WG + lid;
    let row = grid_row(r);
    let b = row.b;
    let h = row.h;
    let i = row.i;
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

// --------------------------------------------------------------------------- dsink

var<workgroup> dsink_sum: array<f32, WG>;

// The sinks' gradient, one workgroup per query head h: a sink is a logit whose value is 0,
// so dS_sink = P_sink · (0 − D) in each row, and dsink[h] = −Σ exp(sink − lse) · D over the
// rows of head h whose log-sum-exp (which includes the sink) is finite: rows without storage
// have none, rows that saw no key have D = 0. Summed in a fixed order (deterministic).
@compute @workgroup_size(WG)
fn dsink(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = linear_wg(wid);
    let sink = sink_logit(h);
    var acc = 0.0;
    for (var r = lid; r < P.batch * P.seq_q; r += WG) {
        let b = r / P.seq_q;
        let st = row_stats(b, h, r % P.seq_q, row_ctx(b));
        if (finite_logit(st.x)) { acc += exp(sink - st.x) * st.y; }
    }
    dsink_sum[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) { dsink_sum[lid] += dsink_sum[lid + s]; }
        workgroupBarrier();
    }
    if (lid == 0u && h < P.heads_q) { store_o(o_index(0u, h, 0u, 0u, 0u), -dsink_sum[0]); }
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

// The unrolled kernels' (src/kernels/backward/unrolled.rs) loads and stores: global memory
// only in rolled loops, through workgroup memory, so that a thread's written-out vectors are
// workgroup reads and writes. On lavapipe a written-out global load or store (its address
// per thread, its dtype decoded) is a branchy loop over the SIMD lanes: the 128 loads a `dq`
// thread wrote out took its pipeline minutes to compile.

// K and V of a `kv` workgroup's BC keys into qd (key j's K at j * QD_ROW, its V after it),
// zero past the keys; readable after the barrier. (qd, not kvs: with both, the kernel's
// workgroup memory would pass 32 KiB.)
fn stage_keys(lid: u32, b: u32, k0: u32, bases: vec3<u32>) {
    for (var e = lid; e < BC * DK4; e += WG) {
        qd[e / DK4 * QD_ROW + e % DK4] = kv_vec4(false, b, bases, k0 + e / DK4, (e % DK4) * 4u);
    }
    for (var e = lid; e < BC * DV4; e += WG) {
        qd[e / DV4 * QD_ROW + DK4 + e % DV4] = kv_vec4(true, b, bases, k0 + e / DV4, (e % DV4) * 4u);
    }
    workgroupBarrier();
}

// Stores the f32 dK and dV of a `kv` workgroup's keys that its threads wrote into qd (as
// stage_keys placed K and V), after the barrier that ends those writes.
fn store_staged_kv(lid: u32, kt: KeyTile) {
    workgroupBarrier();
    for (var e = lid; e < BC * DK4; e += WG) {
        let j = kt.k0 + e / DK4;
        if (j < P.seq_k) {
            store_grad4(grad_base(kt, j, false), P.dk, (e % DK4) * 4u, qd[e / DK4 * QD_ROW + e % DK4]);
        }
    }
    for (var e = lid; e < BC * DV4; e += WG) {
        let j = kt.k0 + e / DV4;
        if (j < P.seq_k) {
            store_grad4(grad_base(kt, j, true), P.dv, (e % DV4) * 4u, qd[e / DV4 * QD_ROW + DK4 + e % DV4]);
        }
    }
}

// Q and dO of a `dq` workgroup's BR rows into kvs (BR = BC: row r's Q at r * DK4, its dO at
// VS0 + r * DV4), zero where a row is not stored; readable after the barrier.
fn stage_rows(lid: u32, b: u32, h: u32, qt: u32, rc: RowCtx) {
    for (var e = lid; e < BR * DK4; e += WG) {
        let i = qt * BR + e / DK4;
        kvs[e] = row_vec4(false, b, h, i, (e % DK4) * 4u, row_stored(b, i, rc));
    }
    for (var e = lid; e < BR * DV4; e += WG) {
        let i = qt * BR + e / DV4;
        kvs[VS0 + e] = row_vec4(true, b, h, i, (e % DV4) * 4u, row_stored(b, i, rc));
    }
    workgroupBarrier();
}

// Stores the block's dQ rows (scaled) that its threads wrote into kvs (row r at r * DK4),
// after the barrier that ends those writes.
fn store_staged_dq(lid: u32, b: u32, h: u32, qt: u32, rc: RowCtx) {
    workgroupBarrier();
    for (var e = lid; e < BR * DK4; e += WG) {
        let i = qt * BR + e / DK4;
        if (row_stored(b, i, rc)) {
            let x = kvs[e];
            let d0 = (e % DK4) * 4u;
            for (var c = 0u; c < 4u; c++) {
                if (d0 + c < P.dk) { store_o(o_index(b, h, i, d0 + c, 0u), x[c]); }
            }
        }
    }
}

// One row of a `dq` or `dbias` thread: where it is, what it sees, and its Q and dO slices.
struct BwdRow {
    i: u32,
    ok: bool,
    range: vec2<u32>,
    st: vec2<f32>,
}

fn bwd_row(b: u32, h: u32, i: u32, rc: RowCtx) -> BwdRow {
    return BwdRow(i, row_stored(b, i, rc), key_range(i, rc), row_stats(b, h, i, rc));
}

// A `kv` workgroup's keys: BC of batch item b's KV head hk, from k0.
struct KeyTile {
    b: u32,
    hk: u32,
    k0: u32,
}

fn key_tile(wid: vec3<u32>) -> KeyTile {
    let n_kt = (P.seq_k + BC - 1u) / BC;
    let wg = linear_wg(wid);
    let bh = wg / n_kt;
    return KeyTile(bh / P.heads_kv, bh % P.heads_kv, (wg % n_kt) * BC);
}

// Starts query tile qt of head h for the keys from k0: 0 when none of its rows sees any of
// them (nothing is loaded), else its state (1 all visible, 2 mixed) with its Q/dO tile
// loaded (two barriers: the previous tile's reads end, this one's loads are seen).
fn next_q_tile(lid: u32, b: u32, h: u32, qt: u32, k0: u32, rc: RowCtx) -> u32 {
    let tr = tile_key_range(qt * BR, qt * BR + BR, rc);
    if (tr.y <= k0 || tr.x >= k0 + BC) { return 0u; }
    let state = tile_state(b, h, qt, k0);
    if (state == 0u) { return 0u; }
    if (lid == 0u) { count_tile(state); }
    workgroupBarrier();
    fill_qd_tile(lid, b, h, qt, rc);
    workgroupBarrier();
    return state;
}

// Stores dims d0..d0+3 of a gradient row into the f32 scratch from `base` (dK scaled).
fn store_grad4(base: u32, dim: u32, d0: u32, x: vec4<f32>) {
    for (var c = 0u; c < 4u; c++) {
        if (d0 + c < dim) { gacc[base + d0 + c] = x[c]; }
    }
}

// Where key j's dK (is_v false) or dV row starts in the f32 scratch.
fn grad_base(t: KeyTile, j: u32, is_v: bool) -> u32 {
    let row = (t.b * P.heads_kv + t.hk) * P.seq_k + j;
    if (is_v) { return P.g_dv + row * P.dv; }
    return row * P.dk;
}

// Stores dims d0..d0+3 of row r's dQ (already scaled).
fn store_dq4(b: u32, h: u32, r: BwdRow, d0: u32, x: vec4<f32>) {
    if (!r.ok) { return; }
    for (var c = 0u; c < 4u; c++) {
        if (d0 + c < P.dk) { store_o(o_index(b, h, r.i, d0 + c, 0u), x[c]); }
    }
}

// Row r's dQ slice (this thread's dims, already scaled), components outermost (see q_slice).
fn store_dq(b: u32, h: u32, r: BwdRow, sub: u32, g: array<vec4<f32>, PK4>) {
    if (!r.ok) { return; }
    for (var c = 0u; c < 4u; c++) {
        for (var t = 0u; t < PK4; t++) {
            let d = sub * DPK + t * 4u + c;
            if (d < P.dk) { store_o(o_index(b, h, r.i, d, 0u), g[t][c] * P.scale); }
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
    let j0 = kt * BC;
    // Each row's sums live in workgroup memory (dbacc), touched only by the row's first
    // thread: indexed in the key loop, which does not unroll, a register array would land in
    // scratch memory.
    for (var k = 0u; k < RPT; k++) {
        if (sub == 0u) {
            for (var jj = 0u; jj < BC; jj++) { dbacc[(lid / TPR + k * STRIDE) * BC + jj] = 0.0; }
        }
    }
    // The batch items and heads that share this bias element.
    let nb = select(1u, P.batch, P.bg_b == 1u);
    let nh = select(1u, P.heads_q, P.bg_h == 1u);
    for (var x = 0u; x < nb; x++) {
        let b = select(bb, x, P.bg_b == 1u);
        let rc = row_ctx(b);
        let tr = tile_key_range(qt * BR, qt * BR + BR, rc);
        if (tr.y <= j0 || tr.x >= j0 + BC) { continue; }
        for (var y = 0u; y < nh; y++) {
            let h = select(hb, y, P.bg_h == 1u);
            let state = next_tile(lid, b, h, qt, j0, kv_bases(b, h / P.group));
            if (state == 0u) { continue; }
            var rows: array<BwdRow, RPT>;
            var q: array<array<vec4<f32>, PK4>, RPT>;
            var dov: array<array<vec4<f32>, PV4>, RPT>;
            for (var k = 0u; k < RPT; k++) {
                rows[k] = bwd_row(b, h, qt * BR + lid / TPR + k * STRIDE, rc);
                q[k] = q_slice(b, h, rows[k], sub);
                dov[k] = do_slice(b, h, rows[k], sub);
            }
            for (var jj = 0u; jj < BC; jj++) {
                var sp: array<f32, RPT>;
                var dpp: array<f32, RPT>;
                for (var t = 0u; t < PK4; t++) {
                    let kv = kvs[jj * DK4 + sub * PK4 + t];
                    for (var k = 0u; k < RPT; k++) { sp[k] += dot(q[k][t], kv); }
                }
                for (var t = 0u; t < PV4; t++) {
                    let vv = kvs[VS0 + jj * DV4 + sub * PV4 + t];
                    for (var k = 0u; k < RPT; k++) { dpp[k] += dot(dov[k][t], vv); }
                }
                for (var k = 0u; k < RPT; k++) {
                    let sdot = row_reduce(sp[k]);
                    let dp = row_reduce(dpp[k]);
                    let st = rows[k].st;
                    // (dbias is dS itself: the bias is added after the cap.)
                    let sv = visible_logit(b, h, rows[k].i, j0 + jj, rows[k].range, state, sdot, st.x, rc);
                    if (sv.y != 0.0 && sub == 0u) {
                        dbacc[(lid / TPR + k * STRIDE) * BC + jj] += exp(sv.x - st.x) * (dp - st.y);
                    }
                }
            }
        }
    }
    if (sub == 0u) {
        for (var k = 0u; k < RPT; k++) {
            let i = qt * BR + lid / TPR + k * STRIDE;
            if (i < P.seq_q) {
                for (var jj = 0u; jj < BC; jj++) {
                    if (j0 + jj < P.seq_k) { store_o(dbias_index(bb, hb, i, j0 + jj), dbacc[(lid / TPR + k * STRIDE) * BC + jj]); }
                }
            }
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
    let row = grid_row(P.row_start + local_row);
    let b = row.b;
    let h = row.h;
    let i = row.i;
    let at = local_row * P.scratch_stride + j;
    let p = pmat[at];
    if (p == 0.0) { return; }
    let vb = P.v_off + v_batch(b) + (h / P.group) * P.v_sh + j * P.v_ss;
    var dp = 0.0;
    for (var d = 0u; d < P.dv; d++) { dp += load_do(do_index(b, h, i, d)) * load_v(vb + d * P.v_sd); }
    pmat[at] = p * (dp - row_stats(b, h, i, row_ctx(b)).y);
}

// With the soft cap, dS to dS times the cap's slope in place (what the scores q·k get; the
// bias gradient, taken before, is dS itself): one thread per (row of the chunk, key), each
// score recomputed as the forward's naive `scores` computes it.
@compute @workgroup_size(WG)
fn n_slope(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let g = naive_index(lid, wid);
    let local_row = g / P.seq_k;
    let j = g % P.seq_k;
    if (local_row >= P.row_count) { return; }
    let at = local_row * P.scratch_stride + j;
    let ds = pmat[at];
    if (ds == 0.0) { return; }
    let row = grid_row(P.row_start + local_row);
    let kr = P.k_off + k_batch(row.b) + (row.h / P.group) * P.k_sh + j * P.k_ss;
    var s = 0.0;
    for (var d = 0u; d < P.dk; d++) {
        s += load_q(q_index(row.b, row.h, row.i, d)) * load_k(kr + d * P.k_sd);
    }
    pmat[at] = ds * softcap_slope(softcap(s * P.scale));
}

// dQ rows of the chunk: one thread per (row, dim).
@compute @workgroup_size(WG)
fn n_dq(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let g = naive_index(lid, wid);
    let local_row = g / P.dk;
    let d = g % P.dk;
    if (local_row >= P.row_count) { return; }
    let row = grid_row(P.row_start + local_row);
    let b = row.b;
    let h = row.h;
    let i = row.i;
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
