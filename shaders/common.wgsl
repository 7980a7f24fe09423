// Shared by the flash, memory-efficient and naive shaders: the parameter block, the
// bindings, element loads and the output store (dtype.wgsl comes first), and the mask
// algebra.
//
// The host prepends typed `const` lines generated from its ShaderVariant (DKB, DVB, BR,
// BC, TPR, WG, SUM_BQ, SUM_BK, PAGED).

struct Params {
    batch: u32, heads_q: u32, heads_kv: u32, seq_q: u32,
    seq_k: u32, dk: u32, dv: u32, flags: u32,
    scale: f32, wleft: u32, wright: u32, group: u32,
    q_off: u32, q_sb: u32, q_sh: u32, q_ss: u32,
    q_sd: u32, k_off: u32, k_sb: u32, k_sh: u32,
    k_ss: u32, k_sd: u32, v_off: u32, v_sb: u32,
    v_sh: u32, v_ss: u32, v_sd: u32, o_off: u32,
    o_sb: u32, o_sh: u32, o_ss: u32, o_sd: u32,
    m_off: u32, m_sb: u32, m_sh: u32, m_sq: u32,
    m_sk: u32, b_off: u32, b_sb: u32, b_sh: u32,
    b_sq: u32, b_sk: u32, qlen_off: u32, klen_off: u32,
    alibi_off: u32, sum_off: u32, sum_nqb: u32, sum_nkb: u32,
    sum_sb: u32, sum_sh: u32, row_start: u32, row_count: u32,
    wg_x: u32, scratch_stride: u32, l_off: u32, l_sb: u32,
    l_sh: u32, l_ss: u32, cuq_off: u32, cuk_off: u32,
    n_splits: u32, split_len: u32, o_split: u32, l_split: u32,
    diag_off: u32, do_off: u32, do_sb: u32, do_sh: u32,
    do_ss: u32, do_sd: u32, stat_off: u32, g_off: u32,
    g_dv: u32, f_n0: u32, f_n1: u32, f_n2: u32,
    f_n3: u32, bg_b: u32, bg_h: u32, softcap: f32,
    sink_off: u32, pt_off: u32, page_size: u32, pt_cols: u32,
    kq_byte: u32, vq_byte: u32, kvs_off: u32, kvq: u32,
    ks_off: u32, ks_sb: u32, ks_sh: u32, ks_ss: u32,
    vs_off: u32, vs_sb: u32, vs_sh: u32, vs_ss: u32,
}

const F_CAUSAL: u32 = 1u;
const F_BOTTOM_RIGHT: u32 = 2u;
const F_KLEN: u32 = 4u;
const F_QLEN: u32 = 8u;
const F_WLEFT: u32 = 16u;
const F_WRIGHT: u32 = 32u;
const F_BOOL: u32 = 64u;
const F_BIAS: u32 = 128u;
const F_ALIBI: u32 = 256u;
const F_SUMMARY: u32 = 512u;
const F_LSE: u32 = 1024u;
const F_VARLEN: u32 = 2048u;
// K and V are f16 with unit head-dim stride and even offsets/strides: loadable in pairs.
const F_KV_PAIRS: u32 = 4096u;
// A part of a call split to fit the storage-binding limit: the query and key lengths in aux
// are the part's own, and the diagonal's offset per batch item is at aux[P.diag_off + b].
const F_DIAG: u32 = 8192u;
// Attention sinks: a logit per query head at aux[P.sink_off + h] (f32 bits) joins each row's
// denominator (shaders/online_softmax.wgsl's online_sink).
const F_SINK: u32 = 16384u;
// Logits are soft-capped at P.softcap: cap · tanh(s / cap).
const F_SOFTCAP: u32 = 32768u;
// K and V live in pages of P.page_size keys: key j of batch item b is in page
// aux[P.pt_off + b * P.pt_cols + j / P.page_size], at slot j % P.page_size; the batch stride
// of K and V is then the page stride (key_offset). Read only by variants built with PAGED.
const F_PAGED: u32 = 268435456u;
// Storage dtypes, two bits per tensor at these shifts: 0 f32, 1 f16, 2 bf16 (the backward's
// dO at 26).
const DT_Q: u32 = 16u;
const DT_K: u32 = 18u;
const DT_V: u32 = 20u;
const DT_O: u32 = 22u;
const DT_BIAS: u32 = 24u;

// The most negative finite f32: logits below it (-inf) count as masked. Written with the
// fewest digits that round to it: browsers' WGSL compilers refuse a literal past f32's range
// (-3.40282347e38 is one, by a hair) where naga rounds it.
const LOWEST: f32 = -3.4028234e38;
// The bits of -inf (WGSL has no infinite literals).
const NEG_INF_BITS: u32 = 0xff800000u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> q_buf: array<u32>;
@group(0) @binding(2) var<storage, read> k_buf: array<u32>;
@group(0) @binding(3) var<storage, read> v_buf: array<u32>;
@group(0) @binding(4) var<storage, read_write> o_buf: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read> m_buf: array<u32>;
@group(0) @binding(6) var<storage, read> bias_buf: array<u32>;
@group(0) @binding(7) var<storage, read> aux_buf: array<u32>;
@group(0) @binding(9) var<storage, read_write> lse_buf: array<u32>;

// Whether a logit takes part in the softmax: -inf (a bias that masks) and NaN do not. Tested
// on the bits, since shader compilers may assume floats are never infinite.
fn finite_logit(s: f32) -> bool {
    return (bitcast<u32>(s) & 0x7f800000u) != 0x7f800000u;
}

fn has(f: u32) -> bool {
    return (P.flags & f) != 0u;
}

// Whether K and V are read through a page table: a variant built without the paging code
// (PAGED false) leaves it out, so unpaged calls do not pay for it.
fn paged() -> bool {
    return PAGED && has(F_PAGED);
}

fn dtype_of(shift: u32) -> u32 {
    return (P.flags >> shift) & 3u;
}

fn load_q(e: u32) -> f32 {
    let dt = dtype_of(DT_Q);
    return decode(q_buf[word_index(e, dt)], e, dt);
}

fn load_k(e: u32) -> f32 {
    let dt = dtype_of(DT_K);
    return decode(k_buf[word_index(e, dt)], e, dt);
}

fn load_v(e: u32) -> f32 {
    let dt = dtype_of(DT_V);
    return decode(v_buf[word_index(e, dt)], e, dt);
}

fn load_bias(e: u32) -> f32 {
    let dt = dtype_of(DT_BIAS);
    return decode(bias_buf[word_index(e, dt)], e, dt);
}

// Writes one output element. 16-bit outputs share a word with a neighbour that another
// invocation may write: clear and set only our half, atomically.
fn store_o(e: u32, x: f32) {
    store_o_as(e, x, dtype_of(DT_O));
}

// store_o for an output of dtype dt (a kernel built for one dtype passes a constant).
fn store_o_as(e: u32, x: f32, dt: u32) {
    if (dt == 0u) {
        atomicStore(&o_buf[e], bitcast<u32>(x));
        return;
    }
    let shift = (e & 1u) * 16u;
    atomicAnd(&o_buf[e >> 1u], ~(0xffffu << shift));
    atomicOr(&o_buf[e >> 1u], encode16(x, dt) << shift);
}

// Where batch item b starts in Q/O (rows) and K/V (keys): its stride times b, or for
// packed variable-length batches its cumulative offset times the row stride (paged K/V: 0,
// key_offset finds each key's page).
fn q_batch(b: u32) -> u32 {
    if (has(F_VARLEN)) { return aux_buf[P.cuq_off + b] * P.q_ss; }
    return b * P.q_sb;
}

fn o_batch(b: u32) -> u32 {
    if (has(F_VARLEN)) { return aux_buf[P.cuq_off + b] * P.o_ss; }
    return b * P.o_sb;
}

fn k_batch(b: u32) -> u32 {
    if (paged()) { return 0u; }
    if (has(F_VARLEN)) { return aux_buf[P.cuk_off + b] * P.k_ss; }
    return b * P.k_sb;
}

fn v_batch(b: u32) -> u32 {
    if (paged()) { return 0u; }
    if (has(F_VARLEN)) { return aux_buf[P.cuk_off + b] * P.v_ss; }
    return b * P.v_sb;
}

// Where key j of batch item b starts in K (x) and V (y), from its batch item's base
// (k_batch, v_batch): j rows in, or under F_PAGED in its page (the batch stride is then the
// page stride, and the batch item's base 0).
fn key_offset(b: u32, j: u32) -> vec2<u32> {
    if (paged()) {
        let ps = page_slot(b, j);
        return vec2<u32>(ps.x * P.k_sb + ps.y * P.k_ss, ps.x * P.v_sb + ps.y * P.v_ss);
    }
    return vec2<u32>(j * P.k_ss, j * P.v_ss);
}

// The page (x) holding key j of batch item b, and its slot there (y).
fn page_slot(b: u32, j: u32) -> vec2<u32> {
    // Page sizes are powers of two in practice (vLLM's 16, FlashInfer's): a shift and a mask
    // then, not an integer division (tens of instructions on GPUs).
    let ps = P.page_size;
    var col: u32;
    var slot: u32;
    if ((ps & (ps - 1u)) == 0u) {
        col = j >> firstTrailingBit(ps);
        slot = j & (ps - 1u);
    } else {
        col = j / ps;
        slot = j % ps;
    }
    return vec2<u32>(aux_buf[P.pt_off + b * P.pt_cols + col], slot);
}

fn q_index(b: u32, h: u32, i: u32, d: u32) -> u32 {
    return P.q_off + q_batch(b) + h * P.q_sh + i * P.q_ss + d * P.q_sd;
}

// Output element (b, h, i, d) of key split `split` (split outputs go to a scratch buffer).
fn o_index(b: u32, h: u32, i: u32, d: u32, split: u32) -> u32 {
    return P.o_off + split * P.o_split + o_batch(b) + h * P.o_sh + i * P.o_ss + d * P.o_sd;
}

// Writes the row's log-sum-exp of its logits (-inf for a row with no visible key).
fn store_lse(b: u32, h: u32, i: u32, split: u32, m: f32, l: f32) {
    if (!has(F_LSE)) { return; }
    var bits = NEG_INF_BITS;
    if (l > 0.0) { bits = bitcast<u32>(m + log(l)); }
    var row = b * P.l_sb;
    if (has(F_VARLEN)) { row = aux_buf[P.cuq_off + b] * P.l_ss; }
    lse_buf[P.l_off + split * P.l_split + row + h * P.l_sh + i * P.l_ss] = bits;
}

// Whether row i of batch b is stored: every row of the padded grid, except that packed
// variable-length outputs have no room for rows past a sequence's length.
fn row_stored(b: u32, i: u32, rc: RowCtx) -> bool {
    if (b >= P.batch || i >= P.seq_q) { return false; }
    return !has(F_VARLEN) || i < rc.qvalid;
}

// Per batch item: valid queries, valid keys, and the diagonal's offset.
struct RowCtx {
    qvalid: u32,
    kvalid: u32,
    off: i32,
}

fn row_ctx(b: u32) -> RowCtx {
    var rc: RowCtx;
    rc.qvalid = P.seq_q;
    rc.kvalid = P.seq_k;
    if (has(F_QLEN)) { rc.qvalid = min(aux_buf[P.qlen_off + b], P.seq_q); }
    if (has(F_KLEN)) { rc.kvalid = min(aux_buf[P.klen_off + b], P.seq_k); }
    rc.off = 0;
    if (has(F_DIAG)) {
        rc.off = bitcast<i32>(aux_buf[P.diag_off + b]);
    } else if (has(F_BOTTOM_RIGHT)) {
        rc.off = i32(rc.kvalid) - i32(rc.qvalid);
    }
    return rc;
}

// Bounds [x, y) that causal, window and key lengths put on the keys of query row i,
// before emptiness is decided. Both are non-decreasing in i, so the bounds of the first
// and last rows of a tile bound the keys of every row between them.
fn key_bounds(i: u32, rc: RowCtx) -> vec2<i32> {
    var lo: i32 = 0;
    var hi: i32 = i32(rc.kvalid);
    let centre = i32(i) + rc.off;
    if (has(F_CAUSAL) || has(F_WRIGHT)) {
        var right: i32 = 0;
        if (has(F_WRIGHT)) { right = i32(P.wright); }
        if (has(F_CAUSAL)) { right = min(right, 0); }
        hi = min(hi, centre + right + 1);
    }
    if (has(F_WLEFT)) { lo = max(lo, centre - i32(P.wleft)); }
    return vec2<i32>(lo, hi);
}

fn as_range(r: vec2<i32>) -> vec2<u32> {
    if (r.y <= r.x) { return vec2<u32>(0u, 0u); }
    return vec2<u32>(u32(r.x), u32(r.y));
}

// The keys [x, y) visible to query row i through lengths, causal and window
// (empty for rows past the valid queries).
fn key_range(i: u32, rc: RowCtx) -> vec2<u32> {
    if (i >= rc.qvalid) { return vec2<u32>(0u, 0u); }
    return as_range(key_bounds(i, rc));
}

// The keys any of the rows [i0, i1) may see.
fn tile_key_range(i0: u32, i1: u32, rc: RowCtx) -> vec2<u32> {
    let last = min(i1, rc.qvalid);
    if (last <= i0) { return vec2<u32>(0u, 0u); }
    return as_range(vec2<i32>(key_bounds(i0, rc).x, key_bounds(last - 1u, rc).y));
}

fn bool_mask_at(b: u32, h: u32, i: u32, j: u32) -> bool {
    let e = P.m_off + b * P.m_sb + h * P.m_sh + i * P.m_sq + j * P.m_sk;
    return ((m_buf[e >> 2u] >> ((e & 3u) * 8u)) & 0xffu) != 0u;
}

// tanh to within a few ulps. Shader compilers lower tanh as (e^2x - 1) / (e^2x + 1), which
// loses the digits of small values (a relative error of 1e-4 near 1e-3): below 0.625 this is
// the odd polynomial of Cephes' tanhf instead. Past 15, tanh is 1 in f32, and the clamp keeps
// the exponential finite. Branch-free: CPU drivers run both sides of a branch.
fn tanh_exact(x: f32) -> f32 {
    let z = x * x;
    let small = ((((-5.70498872745e-3 * z + 2.06390887954e-2) * z - 5.37397155531e-2) * z
        + 1.33314422036e-1) * z - 3.33332819422e-1) * z * x + x;
    let e = exp(2.0 * min(abs(x), 15.0));
    let large = sign(x) * (1.0 - 2.0 / (e + 1.0));
    return select(large, small, abs(x) < 0.625);
}

// Gemma 2's soft cap of a scaled logit, cap · tanh(s / cap), applied before the mask terms.
// A logit that is not finite (NaN) stays as it is, so that it stays masked.
fn softcap_at(s: f32, cap: f32) -> f32 {
    return select(s, cap * tanh_exact(s / cap), finite_logit(s));
}

// The soft cap where the call asks for it (the identity without).
fn softcap(s: f32) -> f32 {
    if (!has(F_SOFTCAP)) { return s; }
    return softcap_at(s, P.softcap);
}

// d softcap(s) / ds at the capped value c: 1 - (c / cap)² (1 without the cap).
fn softcap_slope(c: f32) -> f32 {
    if (!has(F_SOFTCAP)) { return 1.0; }
    let t = c / P.softcap;
    return 1.0 - t * t;
}

// The sink logit of query head h (LOWEST without sinks: no sink).
fn sink_logit(h: u32) -> f32 {
    if (!has(F_SINK)) { return LOWEST; }
    return bitcast<f32>(aux_buf[P.sink_off + h]);
}

// The additive bias of logit (i, j) (0 without one).
fn bias_at(b: u32, h: u32, i: u32, j: u32) -> f32 {
    if (!has(F_BIAS)) { return 0.0; }
    return load_bias(P.b_off + b * P.b_sb + h * P.b_sh + i * P.b_sq + j * P.b_sk);
}

// The ALiBi term of logit (i, j) (0 without ALiBi).
fn alibi_at(h: u32, i: u32, j: u32, rc: RowCtx) -> f32 {
    if (!has(F_ALIBI)) { return 0.0; }
    let slope = bitcast<f32>(aux_buf[P.alibi_off + h]);
    return -slope * abs(f32(i32(j) - (i32(i) + rc.off)));
}

// Bias and ALiBi terms of a visible logit.
fn logit_extra(b: u32, h: u32, i: u32, j: u32, rc: RowCtx) -> f32 {
    return bias_at(b, h, i, j) + alibi_at(h, i, j, rc);
}

// The terms of logit (i, j) that are read from memory, for a key inside the row's analytic
// range: the bias, or -inf where the bool mask (tile state 2: mixed) hides the key.
fn loaded_extra(b: u32, h: u32, i: u32, j: u32, state: u32) -> f32 {
    if (state == 2u && !bool_mask_at(b, h, i, j)) {
        // Through a variable: browsers' WGSL compilers refuse -inf as a constant expression.
        var neg_inf = NEG_INF_BITS;
        return bitcast<f32>(neg_inf);
    }
    return bias_at(b, h, i, j);
}

// Where the block summary's row block holding query tile qt's rows starts in the aux words
// (the flash shaders' BR divides SUM_BQ).
fn summary_row(b: u32, h: u32, qt: u32) -> u32 {
    return P.sum_off + b * P.sum_sb + h * P.sum_sh + (qt * BR / SUM_BQ) * P.sum_nkb;
}

// (Used by the flash shaders, whose BR divides SUM_BQ.)
// Tile state from the block summary: 0 all masked, 1 all visible, 2 mixed.
fn tile_state(b: u32, h: u32, qt: u32, j0: u32) -> u32 {
    if (!has(F_BOOL)) { return 1u; }
    if (!has(F_SUMMARY)) { return 2u; }
    let base = summary_row(b, h, qt);
    var any_vis = false;
    var any_masked = false;
    let c0 = j0 / SUM_BK;
    let c1 = min((j0 + BC - 1u) / SUM_BK + 1u, P.sum_nkb);
    for (var c = c0; c < c1; c++) {
        let s = aux_buf[base + c];
        any_vis = any_vis || s != 0u;
        any_masked = any_masked || s != 1u;
    }
    if (!any_vis) { return 0u; }
    if (!any_masked) { return 1u; }
    return 2u;
}

// A flash workgroup's block of BR query rows: (query tile, batch, head, key/value head).
struct QueryTile {
    qt: u32,
    b: u32,
    h: u32,
    hk: u32,
}

fn query_tile(wid: vec3<u32>) -> QueryTile {
    let n_qt = (P.seq_q + BR - 1u) / BR;
    let wg = linear_wg(wid);
    var t: QueryTile;
    t.qt = wg % n_qt;
    let bh = wg / n_qt;
    t.h = bh % P.heads_q;
    t.b = bh / P.heads_q;
    t.hk = t.h / P.group;
    return t;
}

// The BC-aligned key range a flash workgroup's rows need (empty past the batch).
fn tile_keys(t: QueryTile, rc: RowCtx) -> vec2<u32> {
    var tr = tile_key_range(t.qt * BR, t.qt * BR + BR, rc);
    tr.x = (tr.x / BC) * BC;
    if (t.b >= P.batch || tr.y <= tr.x) { tr = vec2<u32>(0u, 0u); }
    return tr;
}

// Linear workgroup index of a 2-D dispatch, plus this chunk's base.
fn linear_wg(wid: vec3<u32>) -> u32 {
    return P.row_start + wid.x + wid.y * P.wg_x;
}
