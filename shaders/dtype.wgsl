// Storage dtypes, shared by every shader: tensors are read and written through 32-bit
// words, so f16 and bf16 need neither SHADER_F16 nor a WGSL bf16 type.
// Codes: 0 f32, 1 f16, 2 bf16.

// Element e of a tensor of storage dtype `dt`, given the 32-bit word holding it.
fn decode(w: u32, e: u32, dt: u32) -> f32 {
    if (dt == 0u) { return bitcast<f32>(w); }
    let odd = (e & 1u) == 1u;
    if (dt == 1u) { return unpack2x16float(select(w, w >> 16u, odd)).x; }
    // bf16 is the high half of an f32.
    return bitcast<f32>(select(w << 16u, w & 0xffff0000u, odd));
}

// The index of the word holding element e.
fn word_index(e: u32, dt: u32) -> u32 {
    return select(e >> 1u, e, dt == 0u);
}

// The 16 bits of x as f16 (dt 1) or bf16 (dt 2, rounded to nearest even; NaN stays NaN).
fn encode16(x: f32, dt: u32) -> u32 {
    if (dt == 1u) { return pack2x16float(vec2<f32>(x, 0.0)) & 0xffffu; }
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) { return (b >> 16u) | 0x40u; }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}
