// Flash attention on cooperative matrices (tensor cores), structured like FlashAttention-2,
// for FR×FR fragments (FR = 8 or 16; the host aliases CA, CB, CC to the A, B and C
// fragment types) and subgroups of at least SGS lanes.
//
// - A workgroup owns BR query rows in NSG = BR / FR row blocks and has NSG·SGS lanes, SGS
//   the adapter's smallest subgroup size. Where the driver picks a larger size (RADV's
//   wave64 of a 32–64 range), a subgroup of RB·SGS lanes owns RB row blocks (at most RBM);
//   the driver knows the size when it compiles, so RB is a constant there. A subgroup keeps
//   its rows' Q fragments in registers for the whole key loop, so every K/V byte the
//   workgroup stages serves BR rows. Every fragment array is indexed by constants once
//   the loops unroll (their trip counts are constants): an array indexed by a variable
//   lands in scratch memory.
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
// Needs from the prelude: DKB, DVB, BR, BC, WG, FR, SGS, RBM, CA, CB, CC, SUM_BK, count_tile(),
// count_rescale(), and `enable f16; enable wgpu_cooperative_matrix;` (added by the host).

const NSG: u32 = BR / FR;
const DKF: u32 = DKB / FR;
const DVF: u32 = DVB / FR;
const BCF: u32 = BC / FR;
// The softmax's lanes: LPR lanes per row, each holding KPL of a tile's keys and CPL of an
// accumulator fragment's columns; a lane owns RPL rows, a pass of the subgroup apart. SGS is
// the adapter's smallest subgroup size, RBM the most row blocks a subgroup of its largest
// size owns.
const LPR: u32 = max(SGS / FR, 1u);
const RPL: u32 = FR * LPR / SGS;
const KPL: u32 = BC / LPR;
const CPL: u32 = FR / LPR;
const SLACK: f32 = 8.0;
const LOG2E: f32 = 1.4426950408889634;
// K's tile at 0, V's at VS; Q is staged through the same memory before the key loop.
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

// Stages rows [0, n) × dims [0, dd) of a K or V tile (or of Q) as f16 at kv[dst..], row
// width W, from element base + row·rs (+ d·sd): where the host found whole words of f16
// (F_KV_PAIRS), eight elements, four words, per load, their halves stored as they are (the f32
// round trip folds away); else one element at a time, decoded. Zero past the rows and dims that
// exist.
fn stage(lid: u32, which: u32, dst: u32, W: u32, n: u32, rows: u32, dd: u32, base: u32, rs: u32, sd: u32) {
    if (which != 0u && has(F_KV_PAIRS)) {
        for (var e = lid * 8u; e < rows * W; e += WG * 8u) {
            let j = e / W;
            let d = e % W;
            var w = vec4<u32>(0u);
            if (j < n) {
                let w0 = (base + j * rs + d) >> 1u;
                if (d + 8u <= dd) {
                    w = vec4<u32>(kv_word(which, w0), kv_word(which, w0 + 1u), kv_word(which, w0 + 2u), kv_word(which, w0 + 3u));
                } else {
                    // (dd is even under F_KV_PAIRS: words end where the dims do.)
                    for (var c = 0u; c < 4u; c++) {
                        if (d + 2u * c < dd) { w[c] = kv_word(which, w0 + c); }
                    }
                }
            }
            // f16 -> f32 -> f16 is exact, and compilers fold the pair away (naga has no
            // bitcast from u32 to vec2<f16>).
            for (var c = 0u; c < 4u; c++) {
                let p = unpack2x16float(w[c]);
                kv[dst + e + 2u * c] = f16(p.x);
                kv[dst + e + 2u * c + 1u] = f16(p.y);
            }
        }
        return;
    }
    let dt = dtype_of(select(select(DT_Q, DT_K, which == 1u), DT_V, which == 2u));
    for (var e = lid; e < rows * W; e += WG) {
        let j = e / W;
        let d = e % W;
        var x = 0.0;
        if (j < n && d < dd) {
            let el = base + j * rs + d * sd;
            x = decode(kv_word(which, word_index(el, dt)), el, dt);
        }
        kv[dst + e] = f16(x);
    }
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
    for (var t = j; t < end; t += BC) {
        let state = tile_state(b, h, qt, t);
        if (state != 0u) { return vec2<u32>(t, state); }
    }
    return vec2<u32>(end, 0u);
}

// One output element pair, as one word where both halves are this lane's and 16 bits wide
// (the common case: contiguous head dims), else element by element.
fn store_o_pair(e: u32, x0: f32, x1: f32, both: bool) {
    let dt = dtype_of(DT_O);
    if (both && dt != 0u && P.o_sd == 1u && (e & 1u) == 0u) {
        atomicStore(&o_buf[e >> 1u], encode16(x0, dt) | (encode16(x1, dt) << 16u));
        return;
    }
    store_o(e, x0);
    if (both) { store_o(e + P.o_sd, x1); }
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
    let part = sl % LPR;
    // The driver picks the subgroup size within the adapter's range (RADV: 32 or 64) and
    // knows it when it compiles, so these fold to constants there: a subgroup of RB·SGS
    // lanes owns RB row blocks of FR rows, its lanes a pass of RPP rows at a time.
    let rb_n = sgsz / SGS;
    let rpp = sgsz / LPR;
    let row0 = sg * rb_n * FR;

    if (lid == 0u) {
        sh_range = tile_keys(tile, rc);
        atomicStore(&sh_moved[0], 0u);
        atomicStore(&sh_moved[1], 0u);
    }
    // Q, unscaled (the scale is applied to the f32 scores).
    var qrows = 0u;
    if (b < P.batch) { qrows = min(BR, rc.qvalid - min(rc.qvalid, qt * BR)); }
    stage(lid, 0u, 0u, DKB, qrows, BR, P.dk, P.q_off + q_batch(b) + h * P.q_sh + qt * BR * P.q_ss, P.q_ss, P.q_sd);
    let tiles = workgroupUniformLoad(&sh_range);
    var qf: array<CA, DKF * RBM>;
    // (Loops over RBM with a guard, not up to rb_n: a constant trip count unrolls, so the
    // fragment arrays are indexed by constants and stay in registers.)
    for (var rb = 0u; rb < RBM; rb++) {
        if (rb < rb_n) {
            for (var dc = 0u; dc < DKF; dc++) {
                qf[rb * DKF + dc] = coopLoadT<CA>(&kv[(row0 + rb * FR) * DKB + dc * FR], DKB);
            }
        }
    }
    if (lid == 0u) { sh_next[1] = next_tile(b, h, qt, tiles.x, tiles.y); }
    // (Also: every subgroup has its Q fragments, so K may overwrite them.)
    workgroupBarrier();
    var cur = sh_next[1];

    var acc: array<CC, DVF * RBM>;
    for (var f = 0u; f < DVF * RBM; f++) { acc[f] = CC(); }
    var st: array<Online, RPL>;
    var ranges: array<vec2<u32>, RPL>;
    for (var k = 0u; k < RPL; k++) {
        st[k] = online_init();
        ranges[k] = key_range(qt * BR + row0 + sl / LPR + k * rpp, rc);
    }
    let kbase = P.k_off + k_batch(b) + tile.hk * P.k_sh;
    let vbase = P.v_off + v_batch(b) + tile.hk * P.v_sh;
    // Whether logits get terms beyond the scaled score (then the softmax's first pass writes
    // them back for its second).
    let extra = has(F_BIAS) || has(F_ALIBI);
    // exp(x) is exp2(x·log2 e) on every GPU: the scale and log2 e fold into one factor.
    let scale2 = P.scale * LOG2E;
    if (cur.x < tiles.y) {
        stage(lid, 1u, 0u, DKB, min(BC, rc.kvalid - cur.x), BC, P.dk, kbase + cur.x * P.k_ss, P.k_ss, P.k_sd);
    }
    workgroupBarrier();

    var par = 0u;
    while (cur.x < tiles.y) {
        let j0 = cur.x;
        let state = cur.y;
        if (lid == 0u) { count_tile(state); }

        // S = Q·Kᵀ: A = Q (row-major), B = Kᵀ (K read column-major).
        for (var rb = 0u; rb < RBM; rb++) {
            if (rb < rb_n) {
                for (var kc = 0u; kc < BCF; kc++) {
                    var s = CC();
                    for (var dc = 0u; dc < DKF; dc++) {
                        s = coopMultiplyAdd(qf[rb * DKF + dc], coopLoad<CB>(&kv[kc * FR * DKB + dc * FR], DKB), s);
                    }
                    coopStoreT(s, &ss[(row0 + rb * FR) * BC + kc * FR], BC);
                }
            }
        }
        if (lid == 0u) { sh_next[par] = next_tile(b, h, qt, j0 + BC, tiles.y); }
        // Barrier 1: S is readable, K and the previous V are read, the next tile is agreed.
        workgroupBarrier();
        let nxt = sh_next[par];
        // Keys past the valid ones are staged as zeros: masked keys get weight 0, and 0 times
        // whatever padding holds (NaN) would not be 0.
        stage(lid, 2u, VS, DVB, min(BC, rc.kvalid - j0), BC, P.dv, vbase + j0 * P.v_ss, P.v_ss, P.v_sd);
        if (nxt.x < tiles.y) {
            stage(lid, 1u, 0u, DKB, min(BC, rc.kvalid - nxt.x), BC, P.dk, kbase + nxt.x * P.k_ss, P.k_ss, P.k_sd);
        }
        if (lid == 0u) { atomicStore(&sh_moved[1u - par], 0u); }

        // The masked online softmax, LPR lanes per row, in two passes over the lane's KPL
        // scores (no per-lane array: indexed in a loop, one lands in scratch memory). Pass 1
        // finds the visible keys and their max; pass 2 writes the weights as f16.
        var alpha: array<f32, RPL>;
        var moved = false;
        for (var k = 0u; k < RPL; k++) {
            let r = row0 + sl / LPR + k * rpp;
            let i = qt * BR + r;
            let sb = r * BC + part * KPL;
            let jb = j0 + part * KPL;
            // Keys [lo, hi) of the lane's KPL are inside the row's analytic range.
            let lo = min(max(ranges[k].x, jb), jb + KPL) - jb;
            let hi = max(min(ranges[k].y, jb + KPL), jb) - jb;
            var bits = 0u;
            var tmax = LOWEST;
            for (var c = 0u; c < KPL; c++) {
                let j = jb + c;
                var s = ss[sb + c] * P.scale;
                var vis = c >= lo && c < hi;
                if (vis && state == 2u) { vis = bool_mask_at(b, h, i, j); }
                if (vis && extra) { s += logit_extra(b, h, i, j, rc); }
                if (vis && finite_logit(s)) {
                    bits |= 1u << c;
                    tmax = max(tmax, s);
                }
                if (extra) { ss[sb + c] = s; }
            }
            for (var x = 1u; x < LPR; x <<= 1u) { tmax = max(tmax, subgroupShuffleXor(tmax, x)); }
            let before = st[k];
            st[k] = online_fold(before, tmax, SLACK);
            alpha[k] = st[k].alpha;
            moved = moved || online_moved(before, st[k]);
            var lsum = 0.0;
            // (ss holds raw scores, or with extra terms the logits themselves.)
            let m2 = st[k].m * LOG2E;
            let f = select(scale2, LOG2E, extra);
            for (var c = 0u; c < KPL; c++) {
                let p = select(0.0, exp2(ss[sb + c] * f - m2), (bits & (1u << c)) != 0u);
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
        // a round trip through its scratch (two halves of FR columns, alternating, so a
        // fragment's store never overtakes the previous one's load). The condition is the
        // same for the whole workgroup: it was set before barrier 2 and is cleared after the
        // next barrier 1.
        if (atomicLoad(&sh_moved[par]) != 0u) {
            if (lid == 0u) { count_rescale(); }
            for (var f = 0u; f < DVF * RBM; f++) {
                let rb = f / DVF;
                if (rb < rb_n) {
                    let off = (row0 + rb * FR) * BC + (f % 2u) * FR;
                    coopStoreT(acc[f], &ss[off], BC);
                    workgroupBarrier();
                    for (var k = 0u; k < RPL; k++) {
                        let rr = sl / LPR + k * rpp;
                        if (rr / FR == rb) {
                            for (var c = 0u; c < CPL; c++) {
                                ss[off + (rr % FR) * BC + part * CPL + c] *= alpha[k];
                            }
                        }
                    }
                    workgroupBarrier();
                    acc[f] = coopLoadT<CC>(&ss[off], BC);
                }
            }
            // Every load is done before the next tile's scores overwrite the scratch.
            workgroupBarrier();
        }

        // O += P·V: A = P (row-major), B = V (row-major).
        for (var rb = 0u; rb < RBM; rb++) {
            if (rb < rb_n) {
                var pa: array<CA, BCF>;
                for (var kc = 0u; kc < BCF; kc++) { pa[kc] = coopLoadT<CA>(&ps[(row0 + rb * FR) * BC + kc * FR], BC); }
                for (var vc = 0u; vc < DVF; vc++) {
                    var a = acc[rb * DVF + vc];
                    for (var kc = 0u; kc < BCF; kc++) {
                        a = coopMultiplyAdd(pa[kc], coopLoadT<CB>(&kv[VS + kc * FR * DVB + vc * FR], DVB), a);
                    }
                    acc[rb * DVF + vc] = a;
                }
            }
        }
        cur = nxt;
        par = 1u - par;
    }

    // The output: each fragment through the scratch, divided by l, two elements a store.
    var inv: array<f32, RPL>;
    var stored: array<bool, RPL>;
    for (var k = 0u; k < RPL; k++) {
        inv[k] = online_inv(st[k]);
        stored[k] = row_stored(b, qt * BR + row0 + sl / LPR + k * rpp, rc);
    }
    // This loop's body is too large to unroll; the fragment it stores is picked out of the
    // accumulators by a small loop that does unroll, so they are never indexed by a variable
    // (which would put them in scratch memory).
    for (var f = 0u; f < DVF * rb_n; f++) {
        let rb = f / DVF;
        let vc = f % DVF;
        var frag = acc[0];
        for (var x = 1u; x < DVF * RBM; x++) {
            if (x == f) { frag = acc[x]; }
        }
        let off = (row0 + rb * FR) * BC + (vc % 2u) * FR;
        workgroupBarrier();
        coopStoreT(frag, &ss[off], BC);
        workgroupBarrier();
        for (var k = 0u; k < RPL; k++) {
            let rr = sl / LPR + k * rpp;
            if (rr / FR == rb && stored[k]) {
                let i = qt * BR + row0 + rr;
                for (var c = 0u; c < CPL; c += 2u) {
                    let d = vc * FR + part * CPL + c;
                    let o = ss[off + (rr % FR) * BC + part * CPL + c];
                    let o1 = ss[off + (rr % FR) * BC + part * CPL + c + 1u];
                    if (d < P.dv) { store_o_pair(o_index(b, h, i, d, 0u), o * inv[k], o1 * inv[k], d + 1u < P.dv); }
                }
            }
        }
    }
    for (var k = 0u; k < RPL; k++) {
        let i = qt * BR + row0 + sl / LPR + k * rpp;
        if (part == 0u && stored[k]) { store_lse(b, h, i, 0u, st[k].m, st[k].l); }
    }
}
