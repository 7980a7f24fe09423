// Flash attention on cooperative matrices (tensor cores): the same algorithm, masks and
// tile skipping as flash.wgsl, with Q·Kᵀ and P·V as 16×16×16 f16 multiply-adds into f32.
// A workgroup holds NSG subgroups of 32; subgroup g owns query rows 16g..16g+16 of the
// workgroup's BR = 16·NSG rows. Q, the K/V tile and P sit in workgroup memory as f16; the
// scores of a tile come back to workgroup memory as f32 for the masked online softmax; the
// output accumulates in registers, two threads per row, 8 columns of every 16 each.
//
// The module starts with `enable f16; enable wgpu_cooperative_matrix;` (added by the host).
// Needs from the prelude: DKB, DVB, BR, BC (= 16), WG (= 32·NSG), SUM_BK, count_tile().

const NSG: u32 = WG / 32u;
const DK16: u32 = DKB / 16u;
const DV16: u32 = DVB / 16u;

var<workgroup> qs: array<f16, BR * DKB>;
var<workgroup> ks: array<f16, BC * DKB>;
var<workgroup> vs: array<f16, BC * DVB>;
var<workgroup> ss: array<f32, BR * BC>;
var<workgroup> ps: array<f16, BR * BC>;
var<workgroup> ot: array<f32, NSG * 256u>;
var<workgroup> sh_range: vec2<u32>;
var<workgroup> sh_state: u32;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = query_tile(wid);
    let qt = tile.qt;
    let b = tile.b;
    let h = tile.h;
    let hk = tile.hk;
    let sg = lid / 32u;          // this thread's subgroup
    let t = lid % 32u;
    let r = t / 2u;              // row within the subgroup's 16
    let half_ = t % 2u;          // which 8 of every 16 columns
    let row = sg * 16u + r;      // row within the workgroup's BR
    let i = qt * BR + row;
    let rc = row_ctx(b);
    let range = key_range(i, rc);

    if (lid == 0u) { sh_range = tile_keys(tile, rc); }
    // Q tile, unscaled f16 (the scale is applied to the f32 scores).
    for (var e = lid; e < BR * DKB; e += WG) {
        let qi = qt * BR + e / DKB;
        let d = e % DKB;
        var x = 0.0;
        if (qi < P.seq_q && b < P.batch && d < P.dk) { x = load_q(q_index(b, h, qi, d)); }
        qs[e] = f16(x);
    }
    let tiles = workgroupUniformLoad(&sh_range);
    // This subgroup's Q fragments stay in registers for the whole key loop.
    var qf: array<coop_mat16x16<f16, A>, DK16>;
    for (var dc = 0u; dc < DK16; dc++) {
        qf[dc] = coopLoadT<coop_mat16x16<f16, A>>(&qs[sg * 16u * DKB + dc * 16u], DKB);
    }

    var o: array<f32, DVB / 2u>;
    for (var c = 0u; c < DVB / 2u; c++) { o[c] = 0.0; }
    var m = LOWEST;
    var l = 0.0;
    let kbase = P.k_off + k_batch(b) + hk * P.k_sh;
    let vbase = P.v_off + v_batch(b) + hk * P.v_sh;

    for (var j0 = tiles.x; j0 < tiles.y; j0 += BC) {
        if (lid == 0u) { sh_state = tile_state(b, h, qt, j0); }
        let state = workgroupUniformLoad(&sh_state);
        if (state == 0u) { continue; }
        if (lid == 0u) { count_tile(state); }
        if (has(F_KV_PAIRS)) {
            // f16 K/V with unit head-dim stride at even offsets: one 32-bit word per two
            // elements (the host checked the alignment; head dims are even).
            for (var e = lid * 2u; e < BC * DKB; e += WG * 2u) {
                let j = j0 + e / DKB;
                let d = e % DKB;
                var x = vec2<f32>(0.0);
                if (j < P.seq_k && d < P.dk) { x = unpack2x16float(k_buf[(kbase + j * P.k_ss + d) >> 1u]); }
                ks[e] = f16(x.x);
                ks[e + 1u] = f16(x.y);
            }
            for (var e = lid * 2u; e < BC * DVB; e += WG * 2u) {
                let j = j0 + e / DVB;
                let d = e % DVB;
                var x = vec2<f32>(0.0);
                if (j < P.seq_k && d < P.dv) { x = unpack2x16float(v_buf[(vbase + j * P.v_ss + d) >> 1u]); }
                vs[e] = f16(x.x);
                vs[e + 1u] = f16(x.y);
            }
        } else {
            for (var e = lid; e < BC * DKB; e += WG) {
                let j = j0 + e / DKB;
                let d = e % DKB;
                var x = 0.0;
                if (j < P.seq_k && d < P.dk) { x = load_k(kbase + j * P.k_ss + d * P.k_sd); }
                ks[e] = f16(x);
            }
            for (var e = lid; e < BC * DVB; e += WG) {
                let j = j0 + e / DVB;
                let d = e % DVB;
                var x = 0.0;
                if (j < P.seq_k && d < P.dv) { x = load_v(vbase + j * P.v_ss + d * P.v_sd); }
                vs[e] = f16(x);
            }
        }
        workgroupBarrier();

        // S = Q Kᵀ for this subgroup's 16 rows: A = Q (row-major), B = Kᵀ (K column-major).
        var acc = coop_mat16x16<f32, C>();
        for (var dc = 0u; dc < DK16; dc++) {
            let kb = coopLoad<coop_mat16x16<f16, B>>(&ks[dc * 16u], DKB);
            acc = coopMultiplyAdd(qf[dc], kb, acc);
        }
        coopStoreT(acc, &ss[sg * 16u * BC], BC);
        workgroupBarrier();

        // Masked online softmax: two threads per row, 8 scores each.
        var sv: array<f32, 8>;
        var local_max = LOWEST;
        var vis_bits = 0u;
        for (var c = 0u; c < 8u; c++) {
            let jj = half_ * 8u + c;
            let j = j0 + jj;
            var s = ss[row * BC + jj] * P.scale;
            var vis = j >= range.x && j < range.y;
            if (vis && state == 2u) { vis = bool_mask_at(b, h, i, j); }
            if (vis) {
                s += logit_extra(b, h, i, j, rc);
                vis = finite_logit(s);
            }
            sv[c] = s;
            if (vis) {
                vis_bits |= 1u << c;
                local_max = max(local_max, s);
            }
        }
        let any_row = (vis_bits | subgroupShuffleXor(vis_bits, 1u)) != 0u;
        let tmax = max(m, max(local_max, subgroupShuffleXor(local_max, 1u)));
        var alpha = 1.0;
        var lsum = 0.0;
        if (any_row) {
            alpha = exp(m - tmax);
            m = tmax;
        }
        for (var c = 0u; c < 8u; c++) {
            var p = 0.0;
            if ((vis_bits & (1u << c)) != 0u) { p = exp(sv[c] - m); }
            lsum += p;
            ps[row * BC + half_ * 8u + c] = f16(p);
        }
        l = l * alpha + lsum + subgroupShuffleXor(lsum, 1u);
        for (var c = 0u; c < DVB / 2u; c++) { o[c] *= alpha; }
        workgroupBarrier();

        // O += P V, 16 output columns at a time through a 16x16 scratch per subgroup.
        let pa = coopLoadT<coop_mat16x16<f16, A>>(&ps[sg * 16u * BC], BC);
        for (var vc = 0u; vc < DV16; vc++) {
            let vb = coopLoadT<coop_mat16x16<f16, B>>(&vs[vc * 16u], DVB);
            let pv = coopMultiplyAdd(pa, vb, coop_mat16x16<f32, C>());
            coopStoreT(pv, &ot[sg * 256u], 16u);
            workgroupBarrier();
            for (var c = 0u; c < 8u; c++) {
                o[vc * 8u + c] += ot[sg * 256u + r * 16u + half_ * 8u + c];
            }
            workgroupBarrier();
        }
    }

    if (row_stored(b, i, rc)) {
        var inv = 0.0;
        if (l > 0.0) { inv = 1.0 / l; }
        for (var vc = 0u; vc < DV16; vc++) {
            for (var c = 0u; c < 8u; c++) {
                let d = vc * 16u + half_ * 8u + c;
                if (d < P.dv) { store_o(o_index(b, h, i, d, 0u), o[vc * 8u + c] * inv); }
            }
        }
        if (half_ == 0u) { store_lse(b, h, i, 0u, m, l); }
    }
}
