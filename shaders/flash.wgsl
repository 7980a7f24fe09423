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
// A thread keeps the scores of its own keys, g·TPR + sub: OWN of them a row, in OWNV
// vectors (loops over keys that do not unroll then index them as vector components, which
// need no memory, where an array of BC scores would land in scratch).
const OWN: u32 = BC / TPR;
const OWNV: u32 = (OWN + 3u) / 4u;

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
        // Scores: each K vector loaded from workgroup memory serves RPT rows; the thread that
        // owns a key keeps its score.
        var own: array<array<vec4<f32>, OWNV>, RPT>;
        for (var k = 0u; k < RPT; k++) {
            for (var v = 0u; v < OWNV; v++) { own[k][v] = vec4<f32>(0.0); }
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
                let s = row_reduce(s4[k].x + s4[k].y + s4[k].z + s4[k].w);
                if (jj % TPR == sub) { own[k][jj / TPR / 4u][(jj / TPR) % 4u] = s; }
            }
        }
        // The masked online softmax over each thread's own keys, the terms read from memory
        // (bias, bool mask) loaded once per key by its owner; the row's max and sum across
        // its TPR threads.
        var vis_rows = 0u;
        for (var k = 0u; k < RPT; k++) {
            let i = rows[k];
            var tmax = LOWEST;
            var bits = 0u;
            for (var g = 0u; g < OWN; g++) {
                let j = j0 + g * TPR + sub;
                var s = softcap(own[k][g / 4u][g % 4u]);
                var vis = j >= ranges[k].x && j < ranges[k].y;
                if (vis && loads_extra) { s += loaded_extra(b, h, i, j, state); }
                if (vis) {
                    s += alibi_at(h, i, j, rc);
                    vis = finite_logit(s);
                }
                if (vis) {
                    bits |= 1u << g;
                    tmax = max(tmax, s);
                }
                own[k][g / 4u][g % 4u] = s;
            }
            tmax = row_max(tmax);
            // (Whether any thread of the row sees a key: the same branch for all of them.)
            if (row_reduce(f32(countOneBits(bits))) > 0.0) {
                vis_rows |= 1u << k;
                st[k] = online_fold(st[k], tmax, 0.0);
                for (var t = 0u; t < PV4; t++) { acc[k][t] *= st[k].alpha; }
                var lsum = 0.0;
                for (var g = 0u; g < OWN; g++) {
                    let p = online_weight(own[k][g / 4u][g % 4u], (bits & (1u << g)) != 0u, st[k]);
                    own[k][g / 4u][g % 4u] = p;
                    lsum += p;
                }
                st[k].l += row_reduce(lsum);
            }
        }
        // P·V: each V vector loaded from workgroup memory serves RPT rows; the weights of a
        // group of TPR keys come from their owners.
        for (var g = 0u; g < OWN; g++) {
            var pw: array<vec4<f32>, RPT>;
            for (var k = 0u; k < RPT; k++) { pw[k] = row_gather(own[k][g / 4u][g % 4u]); }
            for (var x = 0u; x < TPR; x++) {
                let vb = (g * TPR + x) * DV4 + sub * PV4;
                for (var t = 0u; t < PV4; t++) {
                    let vv = kvs[VS0 + vb + t];
                    for (var k = 0u; k < RPT; k++) {
                        if ((vis_rows & (1u << k)) != 0u) { acc[k][t] += pw[k][x ^ sub] * vv; }
                    }
                }
            }
        }
    }

    for (var k = 0u; k < RPT; k++) {
        let i = rows[k];
        if (row_stored(b, i, rc)) {
            let fin = online_sink(st[k], sink_logit(h));
            let inv = online_out_scale(fin);
            for (var c = 0u; c < 4u; c++) {
                for (var t = 0u; t < PV4; t++) {
                    let d = sub * DPV + t * 4u + c;
                    if (d < P.dv) { store_o(o_index(b, h, i, d, 0u), acc[k][t][c] * inv); }
                }
            }
            if (sub == 0u) { store_lse(b, h, i, 0u, fin.m, fin.l); }
        }
    }
}
