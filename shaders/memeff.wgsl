// Memory-efficient attention: one workgroup of WG threads per query row. The scaled
// query lives in workgroup memory; K and V are streamed from global memory in blocks of
// WG keys (thread t scores key j0 + t), with an online softmax; each thread accumulates
// DVB / WG output columns. No score matrix, and only (DKB + 2 WG) floats of workgroup
// memory, so head dims up to 1024 fit any adapter. With n_splits > 1 (the decode path)
// each row's keys are split across workgroups, whose partial outputs and log-sum-exps go
// to scratch buffers for merge.wgsl to combine.
//
// Needs from the prelude: DKB, DVB, WG and the online softmax (shaders/online_softmax.wgsl).

const CPT: u32 = DVB / WG;   // output columns per thread (at least 1)
const NCOL: u32 = max(CPT, 1u);
// Quantized V (KVQ != 0): P·V splits a block's keys among KG key groups and V's columns
// into CG chunks of 32 (a q8_0 or q4_0 block): thread lid = kg CG + cg accumulates chunk cg
// of the keys kg, kg + KG, ..., decoding each chunk from one stream of words; the key groups'
// sums meet in workgroup memory at the end. (Every thread has work, and a chunk's words are
// read once, not once per column group.)
const CG: u32 = DVB / 32u;
const KG: u32 = WG / CG;
var<workgroup> pv_red: array<f32, select(1u, WG * 32u, KVQ != 0u)>;

var<workgroup> qs: array<f32, DKB>;
var<workgroup> ps: array<f32, WG>;
var<workgroup> vis_w: array<u32, WG>;
// Paged K/V: where each visible key of the block starts in V, found once by the thread that
// scores it (a page-table read and a division) rather than by every thread of the P·V loop
// (which reads only keys of nonzero weight).
var<workgroup> v_rows: array<u32, WG>;
// Quantized V: the scale of each visible key's V row (i8: its own; the 8-bit floats: the
// head's), found by the thread that scores it.
var<workgroup> v_scales: array<f32, WG>;
var<workgroup> sh_range: vec2<u32>;

// Quantized K: the scaled query again, as vectors (a quarter of the workgroup loads).
var<workgroup> qv: array<vec4<f32>, (DKB + 3u) / 4u>;

fn q4(e: u32) -> vec4<f32> {
    return qv[e >> 2u];
}

// The dot product of the scaled query (qs) with quantized K's row at element kr, without the
// row's scale (kv_scale). The row's bytes are read as a stream, one word a load (each group
// of four bytes from two neighbouring words): the load count is what this kernel's time
// goes by, on lavapipe above all. The block formats take their scale once a block.
fn quant_dot(kr: u32) -> f32 {
    let f = kv_format();
    var s = 0.0;
    if (f == 1u || f == 2u) {
        let bsz = select(18u, 34u, f == 1u);
        for (var blk = 0u; blk < P.dk / 32u; blk++) {
            let bb = P.kq_byte + ((kr >> 5u) + blk) * bsz;
            let a = bb + 2u;
            let sh = (a & 3u) * 8u;
            let w0 = a >> 2u;
            var w = kvq_word(false, w0);
            var t = 0.0;
            // q8_0: 8 groups of 4 values; q4_0: 4 groups of 4 bytes, each holding values
            // 4g..4g+3 in its low nibbles and 16+4g.. in its high ones.
            for (var g = 0u; g < select(4u, 8u, f == 1u); g++) {
                let nx = kvq_word(false, w0 + g + 1u);
                let x = kvq_join(w, nx, sh);
                w = nx;
                let e = blk * 32u + g * 4u;
                if (f == 1u) {
                    t += dot(q4(e), i8x4(x));
                } else {
                    t += dot(q4(e), bytes4(x & 0x0f0f0f0fu) - 8.0)
                        + dot(q4(e + 16u), bytes4((x >> 4u) & 0x0f0f0f0fu) - 8.0);
                }
            }
            s += kvq_half(false, bb) * t;
        }
        return s;
    }
    // One byte a value (i8, the 8-bit floats); the bytes past the row's end, another row's,
    // do not count (for the 8-bit floats they may be NaN).
    let a = P.kq_byte + kr;
    let sh = (a & 3u) * 8u;
    let w0 = a >> 2u;
    var w = kvq_word(false, w0);
    for (var g = 0u; g * 4u < P.dk; g++) {
        let nx = kvq_word(false, w0 + g + 1u);
        let x = kvq_join(w, nx, sh);
        w = nx;
        var v: vec4<f32>;
        if (f == 3u) { v = i8x4(x); } else if (f == 4u) { v = e4m3x4(x); } else { v = e5m2x4(x); }
        let live = vec4<u32>(g * 4u) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(P.dk);
        s += dot(q4(g * 4u), select(vec4<f32>(0.0), v, live));
    }
    return s;
}

// Adds pv times 32 values of quantized V's row from element e0 on (the columns c0 ..
// c0 + 31; those past dv, for the byte formats another row's bytes, do not count) to acc,
// from one stream of words (as quant_dot reads K).
fn quant_pv(acc: ptr<function, array<vec4<f32>, 8>>, e0: u32, c0: u32, pv: f32) {
    let f = kv_format();
    var a = P.vq_byte + e0;
    var scale = pv;
    if (f == 1u || f == 2u) {
        let bb = P.vq_byte + (e0 >> 5u) * select(18u, 34u, f == 1u);
        scale = pv * kvq_half(true, bb);
        a = bb + 2u;
    }
    let sh = (a & 3u) * 8u;
    let w0 = a >> 2u;
    var w = kvq_word(true, w0);
    for (var g = 0u; g < select(8u, 4u, f == 2u); g++) {
        let nx = kvq_word(true, w0 + g + 1u);
        let x = kvq_join(w, nx, sh);
        w = nx;
        if (f == 2u) {
            (*acc)[g] += scale * (bytes4(x & 0x0f0f0f0fu) - 8.0);
            (*acc)[g + 4u] += scale * (bytes4((x >> 4u) & 0x0f0f0f0fu) - 8.0);
        } else {
            var v: vec4<f32>;
            if (f == 1u || f == 3u) { v = i8x4(x); } else if (f == 4u) { v = e4m3x4(x); } else { v = e5m2x4(x); }
            let live = vec4<u32>(c0 + g * 4u) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(P.dv);
            (*acc)[g] += scale * select(vec4<f32>(0.0), v, live);
        }
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    // Workgroup -> (key split, batch, head, query row).
    let wg = linear_wg(wid);
    let split = wg % P.n_splits;
    let row = wg / P.n_splits;
    let i = row % P.seq_q;
    let bh = row / P.seq_q;
    let h = bh % P.heads_q;
    let b = bh / P.heads_q;
    let hk = h / P.group;
    let valid = b < P.batch;
    let rc = row_ctx(min(b, P.batch - 1u));
    let range = key_range(i, rc);
    if (lid == 0u) {
        // This split's share of the row's keys.
        let lo = max(range.x, split * P.split_len);
        let hi = min(range.y, (split + 1u) * P.split_len);
        var rr = vec2<u32>(lo, hi);
        if (!valid || hi <= lo) { rr = vec2<u32>(0u, 0u); }
        sh_range = rr;
    }
    for (var d = lid; d < DKB; d += WG) {
        var x = 0.0;
        if (valid && d < P.dk) { x = load_q(q_index(b, h, i, d)) * P.scale; }
        qs[d] = x;
    }
    if (KVQ != 0u) {
        for (var d = lid; d < (DKB + 3u) / 4u; d += WG) {
            var x = vec4<f32>(0.0);
            for (var c = 0u; c < 4u; c++) {
                let e = 4u * d + c;
                if (valid && e < P.dk) { x[c] = load_q(q_index(b, h, i, e)) * P.scale; }
            }
            qv[d] = x;
        }
    }
    // Barrier: qs, qv and sh_range are ready.
    let keys = workgroupUniformLoad(&sh_range);

    var acc: array<f32, NCOL>;
    for (var c = 0u; c < NCOL; c++) { acc[c] = 0.0; }
    var accq: array<vec4<f32>, 8>;
    for (var c = 0u; c < 8u; c++) { accq[c] = vec4<f32>(0.0); }
    var st = online_init();
    let kbase = P.k_off + k_batch(b) + hk * P.k_sh;
    let vbase = P.v_off + v_batch(b) + hk * P.v_sh;

    for (var j0 = keys.x; j0 < keys.y; j0 += WG) {
        let j = j0 + lid;
        var vis = j < keys.y;
        if (vis && has(F_BOOL)) { vis = bool_mask_at(b, h, i, j); }
        var s = 0.0;
        if (vis) {
            let r = key_offset(b, j);
            if (PAGED) { v_rows[lid] = r.y; }
            let kr = kbase + r.x;
            if (KVQ != 0u) {
                s = quant_dot(kr) * kv_scale(false, b, hk, j);
                v_scales[lid] = kv_scale(true, b, hk, j);
            } else {
                for (var d = 0u; d < P.dk; d++) { s += qs[d] * load_k(kr + d * P.k_sd); }
            }
            s = softcap(s) + logit_extra(b, h, i, j, rc);
            vis = finite_logit(s);
        }
        ps[lid] = s;
        vis_w[lid] = select(0u, 1u, vis);
        workgroupBarrier();
        var bmax = LOWEST;
        var any = false;
        for (var t = 0u; t < WG; t++) {
            if (vis_w[t] != 0u) { bmax = max(bmax, ps[t]); any = true; }
        }
        workgroupBarrier();
        // Every thread folds the same block max into its copy of the row's state.
        let next = online_fold(st, bmax, 0.0);
        ps[lid] = online_weight(s, vis, next);
        workgroupBarrier();
        if (any) {
            st = next;
            for (var c = 0u; c < NCOL; c++) { acc[c] *= st.alpha; }
            let nk = min(WG, keys.y - j0);
            if (KVQ != 0u) {
                for (var c = 0u; c < 8u; c++) { accq[c] *= st.alpha; }
                for (var t = 0u; t < nk; t++) { st.l += ps[t]; }
                for (var t = lid / CG; t < nk; t += KG) {
                    let p = ps[t];
                    if (p != 0.0) {
                        var vr: u32;
                        if (PAGED) { vr = vbase + v_rows[t]; } else { vr = vbase + key_offset(b, j0 + t).y; }
                        quant_pv(&accq, vr + (lid % CG) * 32u, (lid % CG) * 32u, p * v_scales[t]);
                    }
                }
            } else {
                for (var t = 0u; t < nk; t++) {
                    let p = ps[t];
                    st.l += p;
                    if (p != 0.0) {
                        var vr: u32;
                        if (PAGED) { vr = vbase + v_rows[t]; } else { vr = vbase + key_offset(b, j0 + t).y; }
                        for (var c = 0u; c < NCOL; c++) {
                            let d = lid + c * WG;
                            if (d < P.dv) { acc[c] += p * load_v(vr + d * P.v_sd); }
                        }
                    }
                }
            }
        }
        workgroupBarrier();
    }

    if (KVQ != 0u) {
        // The key groups' sums of each column chunk, added below.
        for (var c = 0u; c < 32u; c++) { pv_red[lid * 32u + c] = accq[c / 4u][c % 4u]; }
        workgroupBarrier();
    }
    if (row_stored(b, i, rc)) {
        // The sink joins the row once: in key split 0 (merge.wgsl's weights carry it over).
        let fin = online_sink(st, select(LOWEST, sink_logit(h), split == 0u));
        let inv = online_out_scale(fin);
        if (KVQ != 0u) {
            for (var d = lid; d < P.dv; d += WG) {
                var o = 0.0;
                for (var kg = 0u; kg < KG; kg++) { o += pv_red[(kg * CG + d / 32u) * 32u + d % 32u]; }
                store_o(o_index(b, h, i, d, split), o * inv);
            }
        } else {
            for (var c = 0u; c < NCOL; c++) {
                let d = lid + c * WG;
                if (d < P.dv) { store_o(o_index(b, h, i, d, split), acc[c] * inv); }
            }
        }
        if (lid == 0u) { store_lse(b, h, i, split, fin.m, fin.l); }
    }
}
