// Block summary of a boolean mask (FlexAttention's BlockMask idea): for every block of
// SUM_BQ query rows x SUM_BK keys, 0 = all masked, 1 = all visible, 2 = mixed.
// One workgroup per block, one invocation per row of the block.

struct SummaryParams {
    m_off: u32, m_sb: u32, m_sh: u32, m_sq: u32,
    m_sk: u32, mb: u32, mh: u32, seq_q: u32,
    seq_k: u32, nqb: u32, nkb: u32, out_off: u32,
    wg_x: u32, n_blocks: u32, blk_base: u32, _pad0: u32,
}

@group(0) @binding(0) var<uniform> S: SummaryParams;
@group(0) @binding(1) var<storage, read> mask: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> seen_vis: atomic<u32>;
var<workgroup> seen_masked: atomic<u32>;

@compute @workgroup_size(SUM_BQ)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let blk = S.blk_base + wid.x + wid.y * S.wg_x;
    if (lid == 0u) {
        atomicStore(&seen_vis, 0u);
        atomicStore(&seen_masked, 0u);
    }
    workgroupBarrier();
    let kb = blk % S.nkb;
    let t = blk / S.nkb;
    let qb = t % S.nqb;
    let bh = t / S.nqb;
    let h = bh % S.mh;
    let b = bh / S.mh;
    let i = qb * SUM_BQ + lid;
    if (blk < S.n_blocks && i < S.seq_q) {
        var v = 0u;
        var mk = 0u;
        for (var c = 0u; c < SUM_BK; c++) {
            let j = kb * SUM_BK + c;
            if (j < S.seq_k) {
                let e = S.m_off + b * S.m_sb + h * S.m_sh + i * S.m_sq + j * S.m_sk;
                if (((mask[e >> 2u] >> ((e & 3u) * 8u)) & 0xffu) != 0u) { v = 1u; } else { mk = 1u; }
            }
        }
        if (v != 0u) { atomicOr(&seen_vis, 1u); }
        if (mk != 0u) { atomicOr(&seen_masked, 1u); }
    }
    workgroupBarrier();
    if (lid == 0u && blk < S.n_blocks) {
        let any_vis = atomicLoad(&seen_vis) != 0u;
        let any_masked = atomicLoad(&seen_masked) != 0u;
        var state = 2u;
        if (!any_vis) { state = 0u; } else if (!any_masked) { state = 1u; }
        out[S.out_off + blk] = state;
    }
}
