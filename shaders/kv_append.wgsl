// Appends rows to a quantized KV cache: new f32 / f16 / bf16 rows (one token of one head,
// D values each) quantized on the GPU into the cache's format, at the cache's rows.
// Quantizers as src/data/quant.rs (the host's, which follow ggml's reference ones): q8_0 and
// q4_0 by 32-value blocks with an f16 scale, i8 with an f32 scale per row, the 8-bit floats
// (scale 1) to nearest, ties to even, saturating. One invocation per block (block formats)
// or per row (the others). dtype.wgsl comes first.

struct QuantParams {
    seqs: u32, heads: u32, n: u32, d: u32,
    fmt: u32, src_dt: u32, wg_x: u32, head_rows: u32,
    src_off: u32, src_sb: u32, src_sh: u32, src_ss: u32,
    src_sd: u32, row_bytes: u32, scale_word: u32, _pad0: u32,
}

@group(0) @binding(0) var<uniform> Q: QuantParams;
@group(0) @binding(1) var<storage, read> src: array<u32>;
// The cache's buffer: rows of row_bytes bytes (row r at r * row_bytes), then for i8 each
// row's f32 scale at word scale_word + r. Neighbouring blocks share words: bytes are
// written with atomics.
@group(0) @binding(2) var<storage, read_write> dst: array<atomic<u32>>;
// The destination row of head 0 of token t of sequence s, at s * n + t (head h: + h *
// head_rows).
@group(0) @binding(3) var<storage, read> rows: array<u32>;

fn value(s: u32, h: u32, t: u32, e: u32) -> f32 {
    let i = Q.src_off + s * Q.src_sb + h * Q.src_sh + t * Q.src_ss + e * Q.src_sd;
    return decode(src[word_index(i, Q.src_dt)], i, Q.src_dt);
}

fn put_byte(a: u32, v: u32) {
    let sh = (a & 3u) * 8u;
    atomicAnd(&dst[a >> 2u], ~(0xffu << sh));
    atomicOr(&dst[a >> 2u], (v & 0xffu) << sh);
}

// C's roundf: halves away from zero (ggml's quantizers), not WGSL's round (to even).
fn round_away(x: f32) -> f32 {
    return sign(x) * floor(abs(x) + 0.5);
}

fn put_i8(a: u32, x: f32) {
    put_byte(a, bitcast<u32>(i32(clamp(round_away(x), -127.0, 127.0))));
}

// The 8-bit float nearest x (ties to even), saturating at max_code: the exponent of x,
// floored at the smallest normal one, sets the quantum; the code counts quanta up from the
// exponent's first code. (e4m3: bias 7, 3 mantissa bits, 0x7e; e5m2: 15, 2, 0x7b.)
fn fp8(x: f32, bias: i32, mbits: i32, max_code: u32) -> u32 {
    let sign = select(0u, 0x80u, (bitcast<u32>(x) & 0x80000000u) != 0u);
    // NaN, tested on the bits (compilers may assume floats are never NaN).
    if ((bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u) { return 0x7fu; }
    let a = abs(x);
    let e = max(i32((bitcast<u32>(a) >> 23u) & 0xffu) - 127, 1 - bias);
    let q = round(ldexp(a, mbits - e));
    let code = u32((e + bias - 1) << u32(mbits)) + u32(min(q, 512.0));
    return sign | min(code, max_code);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let block = Q.fmt == 1u || Q.fmt == 2u;
    let nblk = select(1u, Q.d / 32u, block);
    let item = gid.x + gid.y * Q.wg_x * 64u;
    if (item >= Q.seqs * Q.n * Q.heads * nblk) { return; }
    let blk = item % nblk;
    let rest = item / nblk;
    let h = rest % Q.heads;
    let st = rest / Q.heads;
    let s = st / Q.n;
    let t = st % Q.n;
    let r = rows[st] + h * Q.head_rows;
    let row = r * Q.row_bytes;
    if (block) {
        var x: array<f32, 32>;
        var amax = 0.0;
        var mx = 0.0;
        for (var i = 0u; i < 32u; i++) {
            x[i] = value(s, h, t, blk * 32u + i);
            if (amax < abs(x[i])) { amax = abs(x[i]); mx = x[i]; }
        }
        let a = row + blk * select(18u, 34u, Q.fmt == 1u);
        // q8_0: d = max|x| / 127; q4_0: d = max / -8 for the x of largest magnitude.
        let d = select(mx / -8.0, amax / 127.0, Q.fmt == 1u);
        let id = select(0.0, 1.0 / d, d != 0.0);
        let bits = pack2x16float(vec2<f32>(d, 0.0));
        put_byte(a, bits);
        put_byte(a + 1u, bits >> 8u);
        if (Q.fmt == 1u) {
            for (var i = 0u; i < 32u; i++) { put_i8(a + 2u + i, x[i] * id); }
        } else {
            for (var i = 0u; i < 16u; i++) {
                let lo = u32(min(15, i32(x[i] * id + 8.5)));
                let hi = u32(min(15, i32(x[i + 16u] * id + 8.5)));
                put_byte(a + 2u + i, lo | (hi << 4u));
            }
        }
        return;
    }
    if (Q.fmt == 3u) {
        var amax = 0.0;
        for (var e = 0u; e < Q.d; e++) { amax = max(amax, abs(value(s, h, t, e))); }
        let d = amax / 127.0;
        let id = select(0.0, 1.0 / d, d != 0.0);
        for (var e = 0u; e < Q.d; e++) { put_i8(row + e, value(s, h, t, e) * id); }
        atomicStore(&dst[Q.scale_word + r], bitcast<u32>(d));
        return;
    }
    for (var e = 0u; e < Q.d; e++) {
        let x = value(s, h, t, e);
        var c: u32;
        if (Q.fmt == 4u) { c = fp8(x, 7, 3, 0x7eu); } else { c = fp8(x, 15, 2, 0x7bu); }
        put_byte(row + e, c);
    }
}
