// Merges partial attention results over disjoint key sets:
//   lse = log(sum_p exp(lse_p)),  O = sum_p exp(lse_p - lse) O_p
// Parts come from two inputs, A (n_a parts, a part stride apart: the decode path's key
// splits in one scratch buffer) and B (n_b parts: a second caller tensor). A part with no
// visible key has lse = -inf and weighs nothing; if every part is empty the row is zeros.
// One invocation per output element (row, column). Needs dtype.wgsl.

struct MergeParams {
    batch: u32, heads: u32, seq: u32, dv: u32,
    n_a: u32, n_b: u32, flags: u32, wg_x: u32,
    // O views: offset, part stride, strides (b, h, s, d), in elements.
    a_off: u32, a_ps: u32, a_sb: u32, a_sh: u32,
    a_ss: u32, a_sd: u32, b_off: u32, b_ps: u32,
    b_sb: u32, b_sh: u32, b_ss: u32, b_sd: u32,
    o_off: u32, o_sb: u32, o_sh: u32, o_ss: u32,
    o_sd: u32, la_off: u32, la_ps: u32, la_sb: u32,
    // LSE views: offset, part stride, strides (b, h, s), in elements (f32).
    la_sh: u32, la_ss: u32, lb_off: u32, lb_ps: u32,
    lb_sb: u32, lb_sh: u32, lb_ss: u32, lo_off: u32,
    lo_sb: u32, lo_sh: u32, lo_ss: u32, _pad0: u32,
}

// flags: dtype codes (2 bits each) of A, B and the output, and whether to write the lse.
const DT_A: u32 = 0u;
const DT_B: u32 = 2u;
const DT_OUT: u32 = 4u;
const F_LSE_OUT: u32 = 64u;
const MAX_PARTS: u32 = 64u;

@group(0) @binding(0) var<uniform> M: MergeParams;
@group(0) @binding(1) var<storage, read> oa: array<u32>;
@group(0) @binding(2) var<storage, read> la: array<u32>;
@group(0) @binding(3) var<storage, read> ob: array<u32>;
@group(0) @binding(4) var<storage, read> lb: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read_write> lse_out: array<u32>;

fn code(shift: u32) -> u32 {
    return (M.flags >> shift) & 3u;
}

// The raw bits of a part's log-sum-exp. Empty parts hold -inf; it is recognised by its
// bits, since shader compilers may assume floats are never infinite.
fn part_lse_bits(p: u32, b: u32, h: u32, i: u32) -> u32 {
    if (p < M.n_a) {
        return la[M.la_off + p * M.la_ps + b * M.la_sb + h * M.la_sh + i * M.la_ss];
    }
    let q = p - M.n_a;
    return lb[M.lb_off + q * M.lb_ps + b * M.lb_sb + h * M.lb_sh + i * M.lb_ss];
}

// Whether a part contributes: not -inf, not NaN (exponent all ones).
fn part_live(bits: u32) -> bool {
    return (bits & 0x7f800000u) != 0x7f800000u;
}

fn part_o(p: u32, b: u32, h: u32, i: u32, d: u32) -> f32 {
    if (p < M.n_a) {
        let e = M.a_off + p * M.a_ps + b * M.a_sb + h * M.a_sh + i * M.a_ss + d * M.a_sd;
        let dt = code(DT_A);
        return decode(oa[word_index(e, dt)], e, dt);
    }
    let q = p - M.n_a;
    let e = M.b_off + q * M.b_ps + b * M.b_sb + h * M.b_sh + i * M.b_ss + d * M.b_sd;
    let dt = code(DT_B);
    return decode(ob[word_index(e, dt)], e, dt);
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let g = (wid.x + wid.y * M.wg_x) * 64u + lid;
    let d = g % M.dv;
    let row = g / M.dv;
    let i = row % M.seq;
    let bh = row / M.seq;
    let h = bh % M.heads;
    let b = bh / M.heads;
    if (b >= M.batch) { return; }
    let n = min(M.n_a + M.n_b, MAX_PARTS);
    var mx = -3.4028234e38;
    var any = false;
    for (var p = 0u; p < n; p++) {
        let bits = part_lse_bits(p, b, h, i);
        if (part_live(bits)) { mx = max(mx, bitcast<f32>(bits)); any = true; }
    }
    var sum = 0.0;
    var acc = 0.0;
    if (any) {
        for (var p = 0u; p < n; p++) {
            let bits = part_lse_bits(p, b, h, i);
            if (part_live(bits)) {
                let w = exp(bitcast<f32>(bits) - mx);
                sum += w;
                acc += w * part_o(p, b, h, i, d);
            }
        }
    }
    var x = 0.0;
    if (sum > 0.0) { x = acc / sum; }
    let e = M.o_off + b * M.o_sb + h * M.o_sh + i * M.o_ss + d * M.o_sd;
    let dt = code(DT_OUT);
    if (dt == 0u) {
        atomicStore(&out[e], bitcast<u32>(x));
    } else {
        let shift = (e & 1u) * 16u;
        atomicAnd(&out[e >> 1u], ~(0xffffu << shift));
        atomicOr(&out[e >> 1u], encode16(x, dt) << shift);
    }
    if ((M.flags & F_LSE_OUT) != 0u && d == 0u) {
        var bits = 0xff800000u;
        if (sum > 0.0) { bits = bitcast<u32>(mx + log(sum)); }
        lse_out[M.lo_off + b * M.lo_sb + h * M.lo_sh + i * M.lo_ss] = bits;
    }
}
