// Flash attention: a workgroup owns BR query rows (TPR threads per row) and walks the
// key sequence in tiles of BC keys that it loads cooperatively into workgroup memory.
// Online softmax (running max and sum, rescaled accumulators); the output is kept in
// registers and written once; the score matrix never touches memory.
//
// Masks are applied in-kernel. Tiles outside the analytic key range (lengths, causal,
// window) are never visited; with a block summary of the bool mask, fully masked tiles
// are skipped and fully visible tiles skip the per-element mask loads.
//
// Needs from the prelude: DKB, DVB, BR, BC, TPR, WG, SUM_BK, row_reduce(), count_tile(), the
// online softmax (shaders/online_softmax.wgsl) and the K/V tiles of shaders/flash_tiles.wgsl.

const DPK: u32 = DKB / TPR;   // Q/K dims per thread
const ROW_STRIDE: u32 = BR / RPT; // distance between a thread's rows
const DPV: u32 = DVB / TPR;   // V dims per thread

const PK4: u32 = DPK / 4u;
const PV4: u32 = DPV / 4u;
// Vectors of a thread's extra terms per row (BC / TPR of them).
const PENDV: u32 = (BC / TPR + 3u) / 4u;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = query_tile(wid);
    let qt = tile.qt;
    let b = tile.b;
    let h = tile.h;
    let sub = lid % TPR;
    let rc = row_ctx(b);

    // The key tiles this block of rows needs.
    let tiles = block_tiles(lid, tile, rc);

    // This thread's RPT rows are interleaved: row k is qt * BR + lid / TPR + k * ROW_STRIDE.
    var rows: array<u32, RPT>;
    var ranges: array<vec2<u32>, RPT>;
    var q: array<array<vec4<f32>, PK4>, RPT>;
    var acc: array<array<vec4<f32>, PV4>, RPT>;
    var sc: array<array<f32, BC>, RPT>;
    var st: array<Online, RPT>;
    for (var k = 0u; k < RPT; k++) {
        let i = qt * BR + lid / TPR + k * ROW_STRIDE;
        rows[k] = i;
        ranges[k] = key_range(i, rc);
        let row_ok = i < P.seq_q && b < P.batch;
        // (Components outermost: the dims loop, unrolled, indexes the array by constants,
        // the component loop indexes a vector, which needs no memory.)
        for (var t = 0u; t < PK4; t++) { q[k][t] = vec4<f32>(0.0); }
        for (var c = 0u; c < 4u; c++) {
            for (var t = 0u; t < PK4; t++) {
                let d = sub * DPK + t * 4u + c;
                let ok = row_ok && d < P.dk;
                q[k][t][c] = select(0.0, load_q(q_index(select(0u, b, ok), h, select(0u, i, ok), select(0u, d, ok))) * P.scale, ok);
            }
        }
        for (var t = 0u; t < PV4; t++) { acc[k][t] = vec4<f32>(0.0); }
        st[k] = online_init();
    }

    let bases = kv_bases(b, tile.hk);
    for (var j0 = tiles.x; j0 < tiles.y; j0 += BC) {
        let state = next_tile(lid, b, h, qt, j0, bases);
        if (state == 0u) { continue; }

        // Scores: each K vector loaded from workgroup memory serves RPT rows. The terms read
        // from memory (bias, bool mask) are loaded once per key: at the start of every group
        // of TPR keys, thread `sub` of a row loads key `sub` of the group (all threads load,
        // none idles), and adds it to its partial sum when that key comes, so it rides along
        // in the row reduction.
        let loads_extra = has(F_BIAS) || state == 2u;
        // The extra terms first, each thread those of keys sub, sub + TPR, ... of its rows (in
        // vectors: the score loop below, free of these loads, unrolls and indexes its arrays
        // by constants).
        var pend: array<array<vec4<f32>, PENDV>, RPT>;
        for (var k = 0u; k < RPT; k++) {
            for (var g = 0u; g < PENDV; g++) { pend[k][g] = vec4<f32>(0.0); }
        }
        if (loads_extra) {
            for (var g = 0u; g < BC / TPR; g++) {
                let jl = j0 + g * TPR + sub;
                for (var k = 0u; k < RPT; k++) {
                    if (jl >= ranges[k].x && jl < ranges[k].y) {
                        pend[k][g / 4u][g % 4u] = loaded_extra(b, h, rows[k], jl, state);
                    }
                }
            }
        }
        for (var jj = 0u; jj < BC; jj++) {
            let kb = jj * DK4 + sub * PK4;
            var s4: array<vec4<f32>, RPT>;
            for (var k = 0u; k < RPT; k++) { s4[k] = vec4<f32>(0.0); }
            for (var t = 0u; t < PK4; t++) {
                let kv = kvs[kb + t];
                for (var k = 0u; k < RPT; k++) { s4[k] += q[k][t] * kv; }
            }
            for (var k = 0u; k < RPT; k++) {
                var part = s4[k].x + s4[k].y + s4[k].z + s4[k].w;
                if (jj % TPR == sub) { part += pend[k][jj / TPR / 4u][(jj / TPR) % 4u]; }
                sc[k][jj] = row_reduce(part);
            }
        }
        var vis_bits: array<u32, RPT>;
        for (var k = 0u; k < RPT; k++) {
            let i = rows[k];
            var tmax = LOWEST;
            var bits = 0u;
            for (var jj = 0u; jj < BC; jj++) {
                let j = j0 + jj;
                var s = sc[k][jj];
                var vis = j >= ranges[k].x && j < ranges[k].y;
                if (vis) {
                    s += alibi_at(h, i, j, rc);
                    vis = finite_logit(s);
                }
                if (vis) {
                    bits |= 1u << jj;
                    tmax = max(tmax, s);
                }
                sc[k][jj] = s;
            }
            vis_bits[k] = bits;
            if (bits != 0u) {
                st[k] = online_fold(st[k], tmax, 0.0);
                for (var t = 0u; t < PV4; t++) { acc[k][t] *= st[k].alpha; }
                var lsum = 0.0;
                for (var jj = 0u; jj < BC; jj++) {
                    let p = online_weight(sc[k][jj], (bits & (1u << jj)) != 0u, st[k]);
                    sc[k][jj] = p;
                    lsum += p;
                }
                st[k].l += lsum;
            }
        }
        // P·V: each V vector loaded from workgroup memory serves RPT rows.
        for (var jj = 0u; jj < BC; jj++) {
            let vb = jj * DV4 + sub * PV4;
            for (var t = 0u; t < PV4; t++) {
                let vv = kvs[VS0 + vb + t];
                for (var k = 0u; k < RPT; k++) {
                    if (vis_bits[k] != 0u) { acc[k][t] += sc[k][jj] * vv; }
                }
            }
        }
    }

    for (var k = 0u; k < RPT; k++) {
        let i = rows[k];
        if (row_stored(b, i, rc)) {
            let inv = online_inv(st[k]);
            for (var c = 0u; c < 4u; c++) {
                for (var t = 0u; t < PV4; t++) {
                    let d = sub * DPV + t * 4u + c;
                    if (d < P.dv) { store_o(o_index(b, h, i, d, 0u), acc[k][t][c] * inv); }
                }
            }
            if (sub == 0u) { store_lse(b, h, i, 0u, st[k].m, st[k].l); }
        }
    }
}
