// Quantized K and V (dtypes q8_0, q4_0, i8, e4m3, e5m2: src/data/tensor.rs), decoded as they
// load. KVQ comes from the variant: 0 none (a variant built so carries none of this code),
// 1 q8_0, 2 q4_0, 3 i8, 4 e4m3, 5 e5m2, or 255 for the call's code in P.kvq (the naive kernel
// serves every format). Element indices are the views' own (strides in elements, P.k_off and
// P.v_off 0), turned into bytes here from P.kq_byte / P.vq_byte, the first element's byte in
// its window. Row and head scales (i8, the 8-bit floats) are applied by the caller, once a
// row (kv_scale); the block formats' scales are applied here.

fn kv_format() -> u32 {
    if (KVQ == 255u) { return P.kvq; }
    return KVQ;
}

fn kv_quantized() -> bool {
    return kv_format() != 0u;
}

fn kvq_word(is_v: bool, w: u32) -> u32 {
    if (is_v) { return v_buf[w]; }
    return k_buf[w];
}

// The four bytes of K or V from byte a on (any alignment), little-endian. Branch-free: the
// next word is read even when a is aligned (robust access keeps a read past the window in
// bounds, and its bytes are not used).
fn kvq_bytes4(is_v: bool, a: u32) -> u32 {
    let w = a >> 2u;
    return kvq_join(kvq_word(is_v, w), kvq_word(is_v, w + 1u), (a & 3u) * 8u);
}

// The four bytes from bit sh (0, 8, 16 or 24) of lo on, the rest from hi.
fn kvq_join(lo: u32, hi: u32, sh: u32) -> u32 {
    return select(lo, (lo >> sh) | (hi << ((32u - sh) & 31u)), sh != 0u);
}

// The f16 at byte a (even) of K or V.
fn kvq_half(is_v: bool, a: u32) -> f32 {
    let w = kvq_word(is_v, a >> 2u);
    return unpack2x16float(select(w, w >> 16u, (a & 2u) != 0u)).x;
}

// Four unsigned bytes as floats.
fn bytes4(x: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(x & 0xffu, (x >> 8u) & 0xffu, (x >> 16u) & 0xffu, x >> 24u));
}

// Four signed bytes as floats.
fn i8x4(x: u32) -> vec4<f32> {
    return vec4<f32>(vec4<i32>(
        bitcast<i32>(x << 24u) >> 24u,
        bitcast<i32>(x << 16u) >> 24u,
        bitcast<i32>(x << 8u) >> 24u,
        bitcast<i32>(x) >> 24u,
    ));
}

// Four OCP E5M2 bytes: each is the top byte of an f16.
fn e5m2x4(x: u32) -> vec4<f32> {
    let lo = unpack2x16float(((x << 8u) & 0xff00u) | ((x << 16u) & 0xff000000u));
    let hi = unpack2x16float(((x >> 8u) & 0xff00u) | (x & 0xff000000u));
    return vec4<f32>(lo, hi);
}

// Four OCP E4M3 ("FN") bytes. Placed at bit 7 of an f16 (sign at 15), the exponent and
// mantissa read as an f16 whose bias is 8 more: times 2^8 it is the value, subnormals
// included. S.1111.111 is NaN.
fn e4m3x4(x: u32) -> vec4<f32> {
    let s = x & 0x80808080u;
    let mag = x & 0x7f7f7f7fu;
    let lo = unpack2x16float(((s & 0x80u) << 8u) | ((mag & 0x7fu) << 7u)
        | ((s & 0x8000u) << 16u) | ((mag & 0x7f00u) << 15u));
    let hi = unpack2x16float(((s >> 8u) & 0x8000u) | ((mag >> 9u) & 0x3f80u)
        | (s & 0x80000000u) | ((mag >> 1u) & 0x3f800000u));
    var v = vec4<f32>(lo, hi) * 256.0;
    // Through a variable: browsers' WGSL compilers refuse NaN as a constant expression.
    var nan_bits = 0x7fc00000u;
    let nan = bitcast<f32>(nan_bits);
    for (var c = 0u; c < 4u; c++) {
        if (((mag >> (8u * c)) & 0x7fu) == 0x7fu) { v[c] = nan; }
    }
    return v;
}

// Elements e0..e0+3 of K or V (e0 a multiple of 4, within one row: head dims are contiguous),
// with the block scale of q8_0 and q4_0 but without a row's or head's scale (kv_scale).
fn kvq_vec4(is_v: bool, e0: u32) -> vec4<f32> {
    let f = kv_format();
    let base = select(P.kq_byte, P.vq_byte, is_v);
    if (f == 1u || f == 2u) {
        // A block: an f16 scale, then 32 bytes (q8_0) or 16 bytes of nibbles (q4_0).
        let blk = base + (e0 >> 5u) * select(18u, 34u, f == 1u);
        let i = e0 & 31u;
        let d = kvq_half(is_v, blk);
        if (f == 1u) { return d * i8x4(kvq_bytes4(is_v, blk + 2u + i)); }
        let x = kvq_bytes4(is_v, blk + 2u + (i & 15u));
        let n = (x >> select(0u, 4u, i >= 16u)) & 0x0f0f0f0fu;
        return d * (bytes4(n) - 8.0);
    }
    let x = kvq_bytes4(is_v, base + e0);
    if (f == 3u) { return i8x4(x); }
    if (f == 4u) { return e4m3x4(x); }
    return e5m2x4(x);
}

// Element e of K or V, as kvq_vec4.
fn kvq_load(is_v: bool, e: u32) -> f32 {
    let f = kv_format();
    let base = select(P.kq_byte, P.vq_byte, is_v);
    var a = base + e;
    var d = 1.0;
    if (f == 1u || f == 2u) {
        let blk = base + (e >> 5u) * select(18u, 34u, f == 1u);
        d = kvq_half(is_v, blk);
        a = blk + 2u + select(e & 15u, e & 31u, f == 1u);
    }
    let x = (kvq_word(is_v, a >> 2u) >> ((a & 3u) * 8u)) & 0xffu;
    if (f == 1u || f == 3u) { return d * f32(bitcast<i32>(x << 24u) >> 24u); }
    if (f == 2u) { return d * (f32((x >> select(0u, 4u, (e & 31u) >= 16u)) & 15u) - 8.0); }
    if (f == 4u) { return e4m3x4(x).x; }
    return e5m2x4(x).x;
}

// The scale of key j's row of K or V (batch item b, KV head hk): its own for i8 (read from
// K's or V's buffer), its head's for the 8-bit floats (aux), 1 for the block formats.
fn kv_scale(is_v: bool, b: u32, hk: u32, j: u32) -> f32 {
    let f = kv_format();
    if (f == 3u) {
        var row: u32;
        var batch: u32;
        if (paged()) {
            let ps = page_slot(b, j);
            batch = ps.x;
            row = ps.y;
        } else {
            row = j;
            batch = b;
            if (has(F_VARLEN)) {
                row = j + aux_buf[P.cuk_off + b];
                batch = 0u;
            }
        }
        var w: u32;
        if (is_v) {
            w = P.vs_off + batch * P.vs_sb + hk * P.vs_sh + row * P.vs_ss;
        } else {
            w = P.ks_off + batch * P.ks_sb + hk * P.ks_sh + row * P.ks_ss;
        }
        return bitcast<f32>(kvq_word(is_v, w));
    }
    if (f >= 4u) {
        return bitcast<f32>(aux_buf[P.kvs_off + select(0u, P.heads_kv, is_v) + hk]);
    }
    return 1.0;
}
