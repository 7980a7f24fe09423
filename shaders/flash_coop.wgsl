// Flash attention on cooperative matrices (tensor cores), structured like FlashAttention-2,
// for FR×FR fragments (FR = 8 or 16; the host aliases CA, CB, CC to the A, B and C
// fragment types) and subgroups of at least SGS lanes.
//
// - A workgroup owns BR query rows in NSG = BR / FR row blocks and has NSG·SGS lanes, SGS
//   the adapter's largest subgroup size: one subgroup per row block. Where the driver picks
//   a smaller size (RADV's wave32 of a 32–64 range), WAYS = SGS / size subgroups share a row
//   block, each computing every WAYS-th score and accumulator fragment; the driver knows the
//   size when it compiles, so WAYS is a constant there. (Sized for the smallest instead, a
//   wave64 subgroup would own two row blocks' Q fragments and accumulators: RDNA3's
//   replicated fragment layout then spills.) A subgroup keeps its rows' Q fragments in
//   registers for the whole key loop, so every K/V byte the workgroup stages serves BR
//   rows. Every fragment array is indexed by constants once the loops unroll (their trip
//   counts are constants): an array indexed by a variable lands in scratch memory.
// - Key tiles of BC keys are staged in workgroup memory as f16 (16-bit inputs eight
//   elements, four words, per load). O accumulates in DVB / FR C fragments that stay in
//   registers across all key tiles.
// - Two workgroup barriers per tile, software-pipelined: S = Q·Kᵀ of tile t goes to the
//   subgroup's scratch; barrier 1 makes it readable (and agrees on the next tile, whose K
//   then loads, and V of tile t, which loads while the lanes run the masked online softmax,
//   shaders/online_softmax.wgsl, and write P as f16); barrier 2 makes P, V and the next K
//   readable; then O += P·V. (WGSL has no subgroup-scoped barrier that orders workgroup
//   memory: naga's subgroupBarrier orders none, so the lanes reading what a cooperative
//   store wrote need a workgroup barrier.)
// - Rescaling an accumulator row needs the fragment in memory. With lazy rescaling (slack
//   8) the workgroup round-trips its accumulators through the scratch only when some row's
//   max grows by more than 8 (count_rescale() counts those in debug builds): on typical
//   inputs a few of a row block's first tiles, at most.
//
// Needs from the prelude: DKB, DVB, BR, BC, WG, FR, SGS, CA, CB, CC, EXTRA_TERMS (the
// variant has the code for bias and ALiBi terms), BOOL_MASK (for a bool mask), KV_PAIRS
// (K and V staged a word pair at a time: the launch sets it as F_KV_PAIRS), DTQ, DTK, DTV,
// DTO (the dtypes' codes, as the flags carry them), SUM_BK, count_tile(),
// count_rescale(), and `enable f16; enable wgpu_cooperative_matrix;` (added by the host).

const NSG: u32 = BR / FR;
const DKF: u32 = DKB / FR;
const DVF: u32 = DVB / FR;
const BCF: u32 = BC / FR;
// The softmax's lanes: LPR lanes per row, each holding KPL of a tile's keys and CPL of an
// accumulator fragment's columns; a lane owns RPL rows, RPP apart. A lane's number among
// its row block's SGS lanes is its way's first lane plus its subgroup lane.
const LPR: u32 = max(SGS / FR, 1u);
const RPP: u32 = SGS / LPR;
const RPL: u32 = FR / RPP;
const KPL: u32 = BC / LPR;
const CPL: u32 = FR / LPR;
const LOG2E: f32 = 1.4426950408889634;
// K's tile at 0 ([key][dim], so that Kᵀ is a column-major B), V's at VS transposed
// ([dim][key], so that V is a column-major B too: a row-major B costs NVIDIA a transposing
// move per register); Q is staged through the same memory before the key loop.
const VS: u32 = BC * DKB;
const KV_LEN: u32 = max(BR * DKB, BC * (DKB + DVB));

var<workgroup> kv: array<f16, KV_LEN>;
var<workgroup> ss: array<f32, BR * BC>;
var<workgroup> ps: array<f16, BR * BC>;
var<workgroup> sh_range: vec2<u32>;
// The next tile to load and its state (two, by tile parity, like sh_moved: a plain barrier
// and read, where workgroupUniformLoad would cost a second barrier).
var<workgroup> sh_next: array<vec2<u32>, 2>;
// Whether some row of the workgroup moved its reference in the tile (two, by tile parity:
// one is cleared while the other is read).
var<workgroup> sh_moved: array<atomic<u32>, 2>;

// A tile to stage as f16 at kv[dst..]: rows [0, n) × dims [0, dd) of Q (which 0), K (1)
// or V (2), row j, dim d at dst + j·W + d, or transposed (`tr`) at dst + d·rows + j; from
// element base + row·rs + d·sd, or for paged K and V (kv_stage) from key j0 + row of batch
// item b. Zero past the rows and dims that exist.
struct Stage {
    which: u32,
    dst: u32,
    W: u32,
    n: u32,
    rows: u32,
    dd: u32,
    base: u32,
    rs: u32,
    sd: u32,
    tr: bool,
    b: u32,
    j0: u32,
    hk: u32,
}

// The K (which 1) or V (2) tile of keys [j0, j0 + n) of batch item b, from the head's base.
fn kv_stage(which: u32, dst: u32, W: u32, n: u32, dd: u32, b: u32, hk: u32, base: u32, j0: u32, rs: u32, sd: u32) -> Stage {
    let first = select(j0 * rs, 0u, paged());
    return Stage(which, dst, W, n, BC, dd, base + first, rs, sd, which == 2u, b, j0, hk);
}

// Where row j of a staged tile starts, from its base. (Rows past n are not loaded, but
// stage_pairs asks for them: they get row n - 1's, so the page table is read only for keys
// the call has.)
fn stage_row(t: Stage, j: u32) -> u32 {
    if (t.which == 0u || !paged()) { return j * t.rs; }
    let r = key_offset(t.b, t.j0 + min(j, max(t.n, 1u) - 1u));
    return select(r.x, r.y, t.which == 2u);
}

// Stages tile a, and tile b too where `with_b`. In the variant for whole words of 16-bit K
// and V elements (KV_PAIRS), eight elements, four words, per load, in loops of constant trip
// count (unrolled); else one element at a time, decoded, in one loop over both tiles'
// elements (one copy of that code).
fn stage(lid: u32, a: Stage, b: Stage, with_b: bool) {
    if (a.which != 0u && KV_PAIRS) {
        stage_pairs(lid, a);
        if (with_b) { stage_pairs(lid, b); }
        return;
    }
    let na = a.rows * a.W;
    for (var e = lid; e < na + select(0u, b.rows * b.W, with_b); e += WG) {
        let in_b = e >= na;
        let which = select(a.which, b.which, in_b);
        let W = select(a.W, b.W, in_b);
        let rows = select(a.rows, b.rows, in_b);
        let x = e - select(0u, na, in_b);
        let j = x / W;
        let d = x % W;
        let dt = select(select(DTQ, DTK, which == 1u), DTV, which == 2u);
        var v = 0.0;
        if (j < select(a.n, b.n, in_b) && d < select(a.dd, b.dd, in_b)) {
            var row: u32;
            if (in_b) { row = stage_row(b, j); } else { row = stage_row(a, j); }
            let el = select(a.base, b.base, in_b) + row + d * select(a.sd, b.sd, in_b);
            if (KVQ != 0u && which != 0u) {
                // Quantized K/V (shaders/kv_quant.wgsl), element by element.
                let key = select(a.j0, b.j0, in_b) + j;
                let sc = kv_scale(which == 2u, select(a.b, b.b, in_b), select(a.hk, b.hk, in_b), key);
                v = kvq_load(which == 2u, el) * sc;
            } else {
                v = decode(kv_word(which, word_index(el, dt)), el, dt);
            }
        }
        kv[select(x, d * rows + j, select(a.tr, b.tr, in_b)) + select(a.dst, b.dst, in_b)] = f16(v);
    }
}

fn stage_pairs(lid: u32, t: Stage) {
    let dt = select(DTK, DTV, t.which == 2u);
    for (var it = 0u; it < (t.rows * t.W + WG * 8u - 1u) / (WG * 8u); it++) {
        // Branch-free, so that the compiler can have every load in flight at once: words
        // that do not exist (rows past n, dims past dd: dd is even under F_KV_PAIRS, so words
        // end where the dims do) read word 0, which every buffer has, and count 0.
        let e = (it * WG + lid) * 8u;
        let j = e / t.W;
        let d = e % t.W;
        let row_ok = e < t.rows * t.W & j < t.n;
        let w0 = (t.base + stage_row(t, j) + d) >> 1u;
        var w: vec4<u32>;
        for (var c = 0u; c < 4u; c++) {
            let ok = row_ok & d + 2u * c < t.dd;
            w[c] = select(0u, kv_word(t.which, select(0u, w0 + c, ok)), ok);
        }
        if (e < t.rows * t.W) {
            for (var c = 0u; c < 4u; c++) {
                let p = pair16(w[c], dt);
                kv[t.dst + select(e + 2u * c, (d + 2u * c) * t.rows + j, t.tr)] = p.x;
                kv[t.dst + select(e + 2u * c + 1u, (d + 2u * c + 1u) * t.rows + j, t.tr)] = p.y;
            }
        }
    }
}

// The two 16-bit elements of a word (f16, dt 1, or bf16, dt 2) as f16. (f16 -> f32 -> f16
// is exact, and naga has no bitcast from u32 to vec2<f16>.)
fn pair16(w: u32, dt: u32) -> vec2<f16> {
    if (dt == 1u) { return vec2<f16>(unpack2x16float(w)); }
    return vec2<f16>(vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u)));
}

// Word w of Q (which 0), K (1) or V (2).
fn kv_word(which: u32, w: u32) -> u32 {
    if (which == 0u) { return q_buf[w]; }
    if (which == 1u) { return k_buf[w]; }
    return v_buf[w];
}

// The first key tile at or after j that the block summary does not mask entirely, and its
// state (1 all visible, 2 mixed); (end, 0) if none.
fn next_tile(b: u32, h: u32, qt: u32, j: u32, end: u32) -> vec2<u32> {
    if (!BOOL_MASK || !has(F_BOOL)) {
        return vec2<u32>(j, select(0u, 1u, j < end));
    }
    if (!has(F_SUMMARY)) {
        return vec2<u32>(j, select(0u, 2u, j < end));
    }
    // One loop over the summary's blocks from tile j on (tiles start at multiples of BC, so
    // a tile is BC / SUM_BK blocks), not a loop over tiles around tile_state's loop.
    let base = summary_row(b, h, qt);
    let last = min((end + SUM_BK - 1u) / SUM_BK, P.sum_nkb);
    var any_vis = false;
    var any_masked = false;
    for (var c = j / SUM_BK; c < last; c++) {
        let s = aux_buf[base + c];
        any_vis = any_vis | s != 0u;
        any_masked = any_masked | s != 1u;
        if ((c + 1u) % (BC / SUM_BK) == 0u || c + 1u == last) {
            if (any_vis) {
                let t = (c / (BC / SUM_BK)) * BC;
                return vec2<u32>(t, select(1u, 2u, any_masked));
            }
            any_masked = false;
        }
    }
    return vec2<u32>(end, 0u);
}

// A rescale round's rows: each lane scales its KPL columns of its rows in its row block's
// scratch at off (ln: the lane's number among the row block's SGS lanes).
fn rescale_round(off: u32, ln: u32, alpha: array<f32, RPL>) {
    for (var k = 0u; k < RPL; k++) {
        let row = off + (ln / LPR + k * RPP) * BC + (ln % LPR) * KPL;
        for (var c = 0u; c < KPL; c++) { ss[row + c] *= alpha[k]; }
    }
}

// An output round's rows: each lane writes its KPL columns (dims d0 + column) of its rows
// (row0 + its row in the block), divided by l: two 16-bit elements a word where the output's
// dims are contiguous and the round's columns all exist, else one element at a time. (A
// loop of constant trip count: it unrolls, and the round's code runs straight, once.)
fn output_round(off: u32, d0: u32, b: u32, h: u32, qt: u32, row0: u32, ln: u32, inv: array<f32, RPL>, stored: array<bool, RPL>) {
    let n = min(BC, P.dv - min(P.dv, d0));
    let dt = DTO;
    let part = ln % LPR;
    for (var k = 0u; k < RPL; k++) {
        let rr = ln / LPR + k * RPP;
        if (stored[k]) {
            let i = qt * BR + row0 + rr;
            let row = off + rr * BC + part * KPL;
            let e0 = o_index(b, h, i, d0 + part * KPL, 0u);
            let words = dt != 0u && P.o_sd == 1u && (e0 & 1u) == 0u && part * KPL + KPL <= n;
            for (var c = 0u; c < KPL; c += 2u) {
                let x = vec2<f32>(ss[row + c], ss[row + c + 1u]) * inv[k];
                if (words) {
                    atomicStore(&o_buf[(e0 + c) >> 1u], encode16(x.x, dt) | (encode16(x.y, dt) << 16u));
                } else {
                    if (part * KPL + c < n) { store_o_as(e0 + c * P.o_sd, x.x, dt); }
                    if (part * KPL + c + 1u < n) { store_o_as(e0 + (c + 1u) * P.o_sd, x.y, dt); }
                }
            }
        }
    }
}

// The rescale branch and the key loop are uniform across the workgroup by construction
// (their conditions are workgroup variables every invocation reads after the barrier that
// follows their last write); naga's uniformity analysis counts such reads as non-uniform and
// files its check of cooperative operations under this rule.
@diagnostic(off, derivative_uniformity)
@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) sl: u32,
    @builtin(subgroup_size) sgsz: u32,
) {
    let tile = query_tile(wid);
    let qt = tile.qt;
    let b = tile.b;
    let h = tile.h;
    let rc = row_ctx(b);
    // The driver picks the subgroup size within the adapter's range (RADV: 32 or 64) and
    // knows it when it compiles, so `ways` folds to a constant there: WAYS subgroups share
    // row block rb, way `way` computing every WAYS-th fragment; ln is the lane's number among
    // the row block's SGS lanes.
    let ways = SGS / sgsz;
    let rb = sg / ways;
    let way = sg % ways;
    let ln = way * sgsz + sl;
    let part = ln % LPR;
    let row0 = rb * FR;

    if (lid == 0u) {
        sh_range = tile_keys(tile, rc);
        atomicStore(&sh_moved[0], 0u);
        atomicStore(&sh_moved[1], 0u);
    }
    // Q, unscaled (the scale is applied to the f32 scores).
    var qrows = 0u;
    if (b < P.batch) { qrows = min(BR, rc.qvalid - min(rc.qvalid, qt * BR)); }
    let q_tile = Stage(0u, 0u, DKB, qrows, BR, P.dk, P.q_off + q_batch(b) + h * P.q_sh + qt * BR * P.q_ss, P.q_ss, P.q_sd, false, b, 0u, 0u);
    stage(lid, q_tile, q_tile, false);
    let tiles = workgroupUniformLoad(&sh_range);
    var qf: array<CA, DKF>;
    for (var dc = 0u; dc < DKF; dc++) {
        qf[dc] = coopLoadT<CA>(&kv[row0 * DKB + dc * FR], DKB);
    }
    if (lid == 0u) { sh_next[1] = next_tile(b, h, qt, tiles.x, tiles.y); }
    // (Also: every subgroup has its Q fragments, so K may overwrite them.)
    workgroupBarrier();
    var cur = sh_next[1];

    // (A way uses every WAYS-th accumulator; the loops over fragments run to constants with
    // a guard, so they unroll and the fragments are indexed by constants.)
    var acc: array<CC, DVF>;
    for (var f = 0u; f < DVF; f++) { acc[f] = CC(); }
    var st: array<Online, RPL>;
    var ranges: array<vec2<u32>, RPL>;
    for (var k = 0u; k < RPL; k++) {
        st[k] = online_init();
        ranges[k] = key_range(qt * BR + row0 + ln / LPR + k * RPP, rc);
    }
    let kbase = P.k_off + k_batch(b) + tile.hk * P.k_sh;
    let vbase = P.v_off + v_batch(b) + tile.hk * P.v_sh;
    // Whether logits get terms beyond the scaled score (bias, ALiBi, the soft cap): those (and
    // a mixed tile's bool mask) are applied in a loop over the lane's visible keys, which writes the logits back.
    let extra = EXTRA_TERMS && (has(F_BIAS) || has(F_ALIBI) || has(F_SOFTCAP));
    // exp(x) is exp2(x·log2 e) on every GPU: the scale and log2 e fold into one factor.
    let scale2 = P.scale * LOG2E;
    if (cur.x < tiles.y) {
        let k_tile = kv_stage(1u, 0u, DKB, min(BC, rc.kvalid - cur.x), P.dk, b, tile.hk, kbase, cur.x, P.k_ss, P.k_sd);
        stage(lid, k_tile, k_tile, false);
    }
    workgroupBarrier();

    var par = 0u;
    while (cur.x < tiles.y) {
        let j0 = cur.x;
        let state = cur.y;
        if (lid == 0u) { count_tile(state); }

        // S = Q·Kᵀ: A = Q (row-major), B = Kᵀ (K read column-major).
        for (var kc = 0u; kc < BCF; kc++) {
            if (kc % ways == way) {
                var s = CC();
                for (var dc = 0u; dc < DKF; dc++) {
                    s = coopMultiplyAdd(qf[dc], coopLoad<CB>(&kv[kc * FR * DKB + dc * FR], DKB), s);
                }
                coopStoreT(s, &ss[row0 * BC + kc * FR], BC);
            }
        }
        if (lid == 0u) { sh_next[par] = next_tile(b, h, qt, j0 + BC, tiles.y); }
        // Barrier 1: S is readable, K and the previous V are read, the next tile is agreed.
        workgroupBarrier();
        let nxt = sh_next[par];
        // Keys past the valid ones are staged as zeros: masked keys get weight 0, and 0 times
        // whatever padding holds (NaN) would not be 0.
        // (And the next tile's K, if there is one.)
        let v_tile = kv_stage(2u, VS, DVB, min(BC, rc.kvalid - j0), P.dv, b, tile.hk, vbase, j0, P.v_ss, P.v_sd);
        let kn = min(nxt.x, tiles.y);
        let k_tile = kv_stage(1u, 0u, DKB, min(BC, rc.kvalid - min(rc.kvalid, kn)), P.dk, b, tile.hk, kbase, kn, P.k_ss, P.k_sd);
        stage(lid, v_tile, k_tile, nxt.x < tiles.y);
        if (lid == 0u) { atomicStore(&sh_moved[1u - par], 0u); }

        // The masked online softmax, LPR lanes per row, in passes over the lane's KPL scores
        // in workgroup memory (a per-lane array, indexed in a loop, would land in scratch).
        var alpha: array<f32, RPL>;
        var moved = false;
        for (var k = 0u; k < RPL; k++) {
            let r = row0 + ln / LPR + k * RPP;
            let i = qt * BR + r;
            let sb = r * BC + part * KPL;
            let jb = j0 + part * KPL;
            // Keys [lo, hi) of the lane's KPL are inside the row's analytic range.
            let lo = min(max(ranges[k].x, jb), jb + KPL) - jb;
            let hi = max(min(ranges[k].y, jb + KPL), jb) - jb;
            var bits = select((1u << hi) - 1u, 0xffffffffu, hi >= 32u) & ~select((1u << lo) - 1u, 0xffffffffu, lo >= 32u);
            if ((BOOL_MASK && state == 2u) || extra) {
                // The bool mask and the extra terms, over the visible keys only (a loop with
                // bounds known only at run time: one copy of this code).
                for (var c = lo; c < hi; c++) {
                    let j = jb + c;
                    var s = ss[sb + c] * P.scale;
                    if (state == 2u && !bool_mask_at(b, h, i, j)) { bits &= ~(1u << c); }
                    if (extra) {
                        s = softcap(s) + logit_extra(b, h, i, j, rc);
                        ss[sb + c] = s;
                    }
                }
            }
            // (With extra terms the scores in memory are the logits themselves.)
            let f = select(P.scale, 1.0, extra);
            var tmax = LOWEST;
            for (var c = 0u; c < KPL; c++) {
                let s = ss[sb + c] * f;
                // (`&`, not `&&`: no branch per key.)
                let vis = (bits & (1u << c)) != 0u & finite_logit(s);
                bits = select(bits & ~(1u << c), bits, vis);
                tmax = select(tmax, max(tmax, s), vis);
            }
            for (var x = 1u; x < LPR; x <<= 1u) { tmax = max(tmax, subgroupShuffleXor(tmax, x)); }
            let before = st[k];
            st[k] = online_fold(before, tmax, SLACK);
            alpha[k] = st[k].alpha;
            moved = moved || online_moved(before, st[k]);
            let m2 = st[k].m * LOG2E;
            let f2 = f * LOG2E;
            var lsum = 0.0;
            for (var c = 0u; c < KPL; c++) {
                let p = select(0.0, exp2(ss[sb + c] * f2 - m2), (bits & (1u << c)) != 0u);
                lsum += p;
                ps[sb + c] = f16(p);
            }
            for (var x = 1u; x < LPR; x <<= 1u) { lsum += subgroupShuffleXor(lsum, x); }
            st[k].l += lsum;
        }
        if (moved) { atomicOr(&sh_moved[par], 1u); }
        // Barrier 2: P, this tile's V and the next tile's K are readable; the scores are read.
        workgroupBarrier();

        // Lazy rescaling: when some row's reference moved, every subgroup's accumulators make
        // a round trip through its scratch, BCF fragments side by side a round (the rounds
        // written out by the host, src/kernels/flash/coop.rs, so that every fragment is named
        // by a constant). The condition is the same for the whole workgroup: it was set
        // before barrier 2 and is cleared after the next barrier 1.
        if (atomicLoad(&sh_moved[par]) != 0u) {
            if (lid == 0u) { count_rescale(); }
            //@RESCALE
        }

        // O += P·V: A = P (row-major), B = V (read column-major from Vᵀ).
        var pa: array<CA, BCF>;
        for (var kc = 0u; kc < BCF; kc++) { pa[kc] = coopLoadT<CA>(&ps[row0 * BC + kc * FR], BC); }
        for (var vc = 0u; vc < DVF; vc++) {
            if (vc % ways == way) {
                var a = acc[vc];
                for (var kc = 0u; kc < BCF; kc++) {
                    a = coopMultiplyAdd(pa[kc], coopLoad<CB>(&kv[VS + vc * FR * BC + kc * FR], BC), a);
                }
                acc[vc] = a;
            }
        }
        cur = nxt;
        par = 1u - par;
    }

    // The output: BCF fragments a round through the scratch (rounds as in the rescale),
    // divided by l, two elements a store.
    var inv: array<f32, RPL>;
    var stored: array<bool, RPL>;
    let sink = sink_logit(h);
    for (var k = 0u; k < RPL; k++) {
        st[k] = online_sink(st[k], sink);
        inv[k] = online_out_scale(st[k]);
        stored[k] = row_stored(b, qt * BR + row0 + ln / LPR + k * RPP, rc);
    }
    //@OUTPUT
    for (var k = 0u; k < RPL; k++) {
        let i = qt * BR + row0 + ln / LPR + k * RPP;
        if (part == 0u && stored[k]) { store_lse(b, h, i, 0u, st[k].m, st[k].l); }
    }
}
