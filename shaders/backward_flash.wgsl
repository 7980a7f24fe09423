// The flash backward's `kv` and `dq` kernels in their SIMT form (arrays of rows or keys per
// thread, walked in loops a GPU compiler unrolls); CPU adapters get them generated with
// named variables instead (src/kernels/backward/unrolled.rs). Appended after
// shaders/backward.wgsl.

@compute @workgroup_size(WG)
fn kv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let kt = key_tile(wid);
    let b = kt.b;
    let hk = kt.hk;
    if (b >= P.batch) { return; }
    let sub = lid % TPR;
    let k0 = kt.k0;
    let rc = row_ctx(b);
    let bases = kv_bases(b, hk);

    // This thread's RPT keys (KSTRIDE apart): its slices of their K and V rows, and of their
    // gradients. Each Q and dO vector read from the tile serves all of them.
    var js: array<u32, RPT>;
    var kr: array<array<vec4<f32>, PK4>, RPT>;
    var vr: array<array<vec4<f32>, PV4>, RPT>;
    var gk: array<array<vec4<f32>, PK4>, RPT>;
    var gv: array<array<vec4<f32>, PV4>, RPT>;
    for (var k = 0u; k < RPT; k++) {
        js[k] = k0 + lid / TPR + k * STRIDE;
        for (var t = 0u; t < PK4; t++) {
            kr[k][t] = kv_vec4(false, b, bases, js[k], sub * DPK + t * 4u);
            gk[k][t] = vec4<f32>(0.0);
        }
        for (var t = 0u; t < PV4; t++) {
            vr[k][t] = kv_vec4(true, b, bases, js[k], sub * DPV + t * 4u);
            gv[k][t] = vec4<f32>(0.0);
        }
    }

    let n_qt = (P.seq_q + BR - 1u) / BR;
    for (var g = 0u; g < P.group; g++) {
        let h = hk * P.group + g;
        for (var qt = 0u; qt < n_qt; qt++) {
            let state = next_q_tile(lid, b, h, qt, k0, rc);
            if (state == 0u) { continue; }
            for (var r = 0u; r < BR; r++) {
                let i = qt * BR + r;
                var qv: array<vec4<f32>, PK4>;
                var dov: array<vec4<f32>, PV4>;
                var sp: array<f32, RPT>;
                var dpp: array<f32, RPT>;
                for (var t = 0u; t < PK4; t++) {
                    qv[t] = qd[r * QD_ROW + sub * PK4 + t];
                    for (var k = 0u; k < RPT; k++) { sp[k] += dot(qv[t], kr[k][t]); }
                }
                for (var t = 0u; t < PV4; t++) {
                    dov[t] = qd[r * QD_ROW + DK4 + sub * PV4 + t];
                    for (var k = 0u; k < RPT; k++) { dpp[k] += dot(dov[t], vr[k][t]); }
                }
                let st = qd_stats[r];
                let range = key_range(i, rc);
                for (var k = 0u; k < RPT; k++) {
                    let sdot = row_reduce(sp[k]);
                    let dp = row_reduce(dpp[k]);
                    let sv = visible_logit(b, h, i, js[k], range, state, sdot, st.x, rc);
                    if (sv.y != 0.0) {
                        let p = exp(sv.x - st.x);
                        let ds = p * (dp - st.y) * sv.z;
                        for (var t = 0u; t < PV4; t++) { gv[k][t] += p * dov[t]; }
                        for (var t = 0u; t < PK4; t++) { gk[k][t] += ds * qv[t]; }
                    }
                }
            }
        }
    }

    for (var k = 0u; k < RPT; k++) {
        if (js[k] < P.seq_k) {
            let kb = grad_base(kt, js[k], false);
            for (var t = 0u; t < PK4; t++) { store_grad4(kb, P.dk, sub * DPK + t * 4u, gk[k][t] * P.scale); }
            let vb = grad_base(kt, js[k], true);
            for (var t = 0u; t < PV4; t++) { store_grad4(vb, P.dv, sub * DPV + t * 4u, gv[k][t]); }
        }
    }
}

@compute @workgroup_size(WG)
fn dq(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = query_tile(wid);
    let b = tile.b;
    let h = tile.h;
    if (b >= P.batch) { return; }
    let sub = lid % TPR;
    let rc = row_ctx(b);
    let tiles = block_tiles(lid, tile, rc);
    // This thread's RPT rows (STRIDE apart), with their Q, dO and dQ slices.
    var rows: array<BwdRow, RPT>;
    var q: array<array<vec4<f32>, PK4>, RPT>;
    var dov: array<array<vec4<f32>, PV4>, RPT>;
    var g: array<array<vec4<f32>, PK4>, RPT>;
    for (var k = 0u; k < RPT; k++) {
        rows[k] = bwd_row(b, h, tile.qt * BR + lid / TPR + k * STRIDE, rc);
        q[k] = q_slice(b, h, rows[k], sub);
        dov[k] = do_slice(b, h, rows[k], sub);
        for (var t = 0u; t < PK4; t++) { g[k][t] = vec4<f32>(0.0); }
    }

    let bases = kv_bases(b, tile.hk);
    for (var j0 = tiles.x; j0 < tiles.y; j0 += BC) {
        let state = next_tile(lid, b, h, tile.qt, j0, bases);
        if (state == 0u) { continue; }
        for (var jj = 0u; jj < BC; jj++) {
            // Each K and V vector read from the tile serves the thread's RPT rows.
            var kvv: array<vec4<f32>, PK4>;
            var sp: array<f32, RPT>;
            var dpp: array<f32, RPT>;
            for (var t = 0u; t < PK4; t++) {
                kvv[t] = kvs[jj * DK4 + sub * PK4 + t];
                for (var k = 0u; k < RPT; k++) { sp[k] += dot(q[k][t], kvv[t]); }
            }
            for (var t = 0u; t < PV4; t++) {
                let vv = kvs[VS0 + jj * DV4 + sub * PV4 + t];
                for (var k = 0u; k < RPT; k++) { dpp[k] += dot(dov[k][t], vv); }
            }
            for (var k = 0u; k < RPT; k++) {
                let sdot = row_reduce(sp[k]);
                let dp = row_reduce(dpp[k]);
                let st = rows[k].st;
                let sv = visible_logit(b, h, rows[k].i, j0 + jj, rows[k].range, state, sdot, st.x, rc);
                if (sv.y != 0.0) {
                    let ds = exp(sv.x - st.x) * (dp - st.y) * sv.z;
                    for (var t = 0u; t < PK4; t++) { g[k][t] += ds * kvv[t]; }
                }
            }
        }
    }
    for (var k = 0u; k < RPT; k++) { store_dq(b, h, rows[k], sub, g[k]); }
}

