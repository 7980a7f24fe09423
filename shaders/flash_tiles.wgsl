// K/V tiles of the SIMT flash kernels (shaders/flash.wgsl and the unrolled kernel generated
// by src/kernels/flash/unrolled.rs): BC keys of K and of V in workgroup memory, loaded by the whole
// workgroup, and the per-tile state the workgroup agrees on.
// Needs from the prelude: DKB, DVB, BC, WG, count_tile().

const DK4: u32 = DKB / 4u;
const DV4: u32 = DVB / 4u;
// One array: K's tile at 0, V's at VS0 (the unrolled kernel stages Q and O through all of it).
const VS0: u32 = BC * DK4;
var<workgroup> kvs: array<vec4<f32>, BC * (DK4 + DV4)>;
var<workgroup> sh_range: vec2<u32>;

fn kv_word(is_v: bool, w: u32) -> u32 {
    if (is_v) { return v_buf[w]; }
    return k_buf[w];
}

// Head dims d0..d0+3 of key j of batch item b of K (is_v false) or V (is_v true), from the
// bases of kv_bases; zero past the ends. With 16-bit storage and contiguous head dims, two
// words hold the four values; quantized K/V are decoded (shaders/kv_quant.wgsl).
fn kv_vec4(is_v: bool, b: u32, bases: vec3<u32>, j: u32, d0: u32) -> vec4<f32> {
    var x = vec4<f32>(0.0);
    if (j >= P.seq_k) { return x; }
    let dim = select(P.dk, P.dv, is_v);
    let sd = select(P.k_sd, P.v_sd, is_v);
    let row = key_offset(b, j);
    let e0 = select(bases.x, bases.y, is_v) + select(row.x, row.y, is_v) + d0 * sd;
    if (KVQ != 0u) {
        // Head dims are contiguous; the bytes past a row's end are another row's.
        let q = kvq_vec4(is_v, e0) * kv_scale(is_v, b, bases.z, j);
        return select(x, q, vec4<u32>(d0) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(dim));
    }
    let dt = dtype_of(select(DT_K, DT_V, is_v));
    if (dt != 0u && sd == 1u && (e0 & 1u) == 0u && d0 + 4u <= dim) {
        let w0 = kv_word(is_v, e0 >> 1u);
        let w1 = kv_word(is_v, (e0 >> 1u) + 1u);
        return vec4<f32>(decode(w0, 0u, dt), decode(w0, 1u, dt), decode(w1, 0u, dt), decode(w1, 1u, dt));
    }
    for (var c = 0u; c < 4u; c++) {
        if (d0 + c < dim) {
            let e = e0 + c * sd;
            x[c] = decode(kv_word(is_v, word_index(e, dt)), e, dt);
        }
    }
    return x;
}

// Starts the key tile at j0 with two barriers: the first ends every read of the previous
// tile; then each thread works out the tile's state (0 all masked: skip it, 1 all visible,
// 2 mixed) for itself, the same for all (no third barrier to agree on it), and unless it is
// skipped the workgroup loads its K and V (bases from kv_bases), readable after the second.
fn next_tile(lid: u32, b: u32, h: u32, qt: u32, j0: u32, bases: vec3<u32>) -> u32 {
    workgroupBarrier();
    let state = tile_state(b, h, qt, j0);
    if (state != 0u) {
        if (lid == 0u) { count_tile(state); }
        load_kv_tile(lid, b, j0, bases);
    }
    return state;
}

// The key tiles a block of query rows needs, agreed by the workgroup.
fn block_tiles(lid: u32, tile: QueryTile, rc: RowCtx) -> vec2<u32> {
    if (lid == 0u) { sh_range = tile_keys(tile, rc); }
    return workgroupUniformLoad(&sh_range);
}

// Where batch item b's KV head hk starts in K (x) and in V (y); z is hk (for the scales of
// quantized K/V).
fn kv_bases(b: u32, hk: u32) -> vec3<u32> {
    return vec3<u32>(P.k_off + k_batch(b) + hk * P.k_sh, P.v_off + v_batch(b) + hk * P.v_sh, hk);
}

// Loads the K and V tile at j0 (bases from kv_bases). Ends with the barrier after which
// every thread may read them.
fn load_kv_tile(lid: u32, b: u32, j0: u32, bases: vec3<u32>) {
    fill_kv_tile(lid, b, j0, bases);
    workgroupBarrier();
}

// Writes the K and V tile at j0 into kvs, with no barrier.
fn fill_kv_tile(lid: u32, b: u32, j0: u32, bases: vec3<u32>) {
    for (var e = lid; e < BC * DK4; e += WG) {
        kvs[e] = kv_vec4(false, b, bases, j0 + e / DK4, (e % DK4) * 4u);
    }
    for (var e = lid; e < BC * DV4; e += WG) {
        kvs[VS0 + e] = kv_vec4(true, b, bases, j0 + e / DV4, (e % DV4) * 4u);
    }
}
