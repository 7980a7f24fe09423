// Naive attention, the exact reference: (1) scores of a chunk of query rows into a
// scratch matrix, with every mask applied (masked entries hold the NaN pattern MASKED);
// (2) a row softmax in place; (3) P·V. Rows are (batch, head, query) flattened; the host
// splits them into chunks so that the scratch fits the storage binding limit.
//
// Needs from the prelude: WG.

@group(0) @binding(8) var<storage, read_write> scratch: array<u32>;

const MASKED: u32 = 0xffffffffu;

struct RowId {
    b: u32,
    h: u32,
    i: u32,
}

fn row_id(r: u32) -> RowId {
    var id: RowId;
    id.i = r % P.seq_q;
    let bh = r / P.seq_q;
    id.h = bh % P.heads_q;
    id.b = bh / P.heads_q;
    return id;
}

// One invocation per (row in chunk, key).
@compute @workgroup_size(WG)
fn scores(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let g = (wid.x + wid.y * P.wg_x) * WG + lid;
    let local_row = g / P.seq_k;
    let j = g % P.seq_k;
    if (local_row >= P.row_count) { return; }
    let id = row_id(P.row_start + local_row);
    let rc = row_ctx(id.b);
    let range = key_range(id.i, rc);
    var out = MASKED;
    var vis = j >= range.x && j < range.y;
    if (vis && has(F_BOOL)) { vis = bool_mask_at(id.b, id.h, id.i, j); }
    if (vis) {
        let hk = id.h / P.group;
        var s = 0.0;
        let kr = P.k_off + k_batch(id.b) + hk * P.k_sh + key_offset(id.b, j).x;
        let quant = kv_quantized();
        for (var d = 0u; d < P.dk; d++) {
            var kx: f32;
            if (quant) { kx = kvq_load(false, kr + d); } else { kx = load_k(kr + d * P.k_sd); }
            s += load_q(q_index(id.b, id.h, id.i, d)) * kx;
        }
        if (quant) { s *= kv_scale(false, id.b, hk, j); }
        s = softcap(s * P.scale) + logit_extra(id.b, id.h, id.i, j, rc);
        if (finite_logit(s)) { out = bitcast<u32>(s); }
    }
    scratch[local_row * P.scratch_stride + j] = out;
}

var<workgroup> red: array<f32, WG>;

// One workgroup per row of the chunk: max, sum, normalise in place.
@compute @workgroup_size(WG)
fn softmax(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let local_row = wid.x + wid.y * P.wg_x;
    let in_range = local_row < P.row_count;
    let base = local_row * P.scratch_stride;
    var mx = LOWEST;
    var any = 0.0;
    if (in_range) {
        for (var j = lid; j < P.seq_k; j += WG) {
            let w = scratch[base + j];
            if (w != MASKED) { mx = max(mx, bitcast<f32>(w)); any = 1.0; }
        }
    }
    red[lid] = mx;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let row_max = red[0];
    workgroupBarrier();
    var sum = 0.0;
    if (in_range) {
        for (var j = lid; j < P.seq_k; j += WG) {
            let w = scratch[base + j];
            if (w != MASKED) { sum += exp(bitcast<f32>(w) - row_max); }
        }
    }
    red[lid] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let total = red[0];
    // The row's state with its sink folded in (without one, (row_max, total) as it is).
    let id = row_id(P.row_start + min(local_row, P.row_count - 1u));
    let fin = online_sink(Online(row_max, total, 1.0), sink_logit(id.h));
    if (in_range && lid == 0u) {
        if (row_stored(id.b, id.i, row_ctx(id.b))) { store_lse(id.b, id.h, id.i, 0u, fin.m, fin.l); }
    }
    if (in_range) {
        for (var j = lid; j < P.seq_k; j += WG) {
            let w = scratch[base + j];
            var p = 0.0;
            if (w != MASKED && fin.l > 0.0) { p = exp(bitcast<f32>(w) - fin.m) / fin.l; }
            scratch[base + j] = bitcast<u32>(p);
        }
    }
}

// One invocation per (row in chunk, output column).
@compute @workgroup_size(WG)
fn pv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let g = (wid.x + wid.y * P.wg_x) * WG + lid;
    let local_row = g / P.dv;
    let c = g % P.dv;
    if (local_row >= P.row_count) { return; }
    let id = row_id(P.row_start + local_row);
    let hk = id.h / P.group;
    let vb = P.v_off + v_batch(id.b) + hk * P.v_sh + c * P.v_sd;
    var acc = 0.0;
    let base = local_row * P.scratch_stride;
    let quant = kv_quantized();
    for (var j = 0u; j < P.seq_k; j++) {
        let p = bitcast<f32>(scratch[base + j]);
        if (p != 0.0) {
            let e = vb + key_offset(id.b, j).y;
            if (quant) {
                acc += p * kvq_load(true, e) * kv_scale(true, id.b, hk, j);
            } else {
                acc += p * load_v(e);
            }
        }
    }
    if (row_stored(id.b, id.i, row_ctx(id.b))) { store_o(o_index(id.b, id.h, id.i, c, 0u), acc); }
}
