//! The flash kernel for CPU adapters, generated with its per-row loops unrolled.
//!
//! `shaders/flash.wgsl` keeps a thread's rows in arrays (`q[k][t]`, `acc[k][t]`) and walks
//! them in loops. A GPU compiler unrolls those loops and keeps the arrays in registers; the
//! compiler of a CPU driver (Mesa's lavapipe) unrolls a loop only up to 32 iterations and a
//! small instruction budget, and an array indexed in a loop it keeps rolled stays in memory,
//! where every access is a loop over the SIMD lanes. So for CPU adapters this module writes
//! the kernel out with one named variable per row and head-dim vector (`q_3_7`, `acc_3_7`),
//! as CubeCL does for Burn's kernels: no per-row array is left for the driver to place.
//!
//! The variant is fixed by its [`ShaderVariant`] (rows per thread, head-dim buckets; one
//! thread per row). The mask algebra, loads and stores are the shared prelude's
//! (`shaders/common.wgsl`), so masks behave exactly as in `shaders/flash.wgsl`. Two
//! differences in structure: the online softmax runs per key, rescaling a row's
//! accumulators only when its running max grows; and Q is read, and O written, through
//! workgroup memory in `rows_per_thread` passes, so the global loads and stores stay in
//! rolled loops and the generated code stays small enough to compile in seconds.

use std::fmt::Write;

use crate::dispatch::ShaderVariant;

/// Appends one line of WGSL (writing to a `String` cannot fail).
macro_rules! w {
    ($s:expr, $($arg:tt)*) => {
        let _ = writeln!($s, $($arg)*);
    };
}

/// The WGSL `main` of an unrolled flash variant (appended after the const lines, the dtype
/// helpers, the prelude, the tile-count snippet and `shaders/flash_tiles.wgsl`).
pub(crate) fn main_source(v: &ShaderVariant) -> String {
    let rows = v.rows_per_thread.max(1);
    let dk4 = (v.head_dim_qk / 4).max(1);
    let dv4 = (v.head_dim_v / 4).max(1);
    let mut s = String::with_capacity(64 * 1024);
    s.push_str(HEADER);
    // Rows, their key ranges and Q, read through `ks` one pass of ROW_STRIDE rows at a time.
    for r in 0..rows {
        w!(s, "    let i_{r} = qt * BR + lid + {r}u * ROW_STRIDE;");
        w!(s, "    let rg_{r} = key_range(i_{r}, rc);");
        w!(s, "    var m_{r} = LOWEST;");
        w!(s, "    var l_{r} = 0.0;");
        w!(s, "    stage_q({r}u, lid, qt, b, h);");
        for t in 0..dk4 {
            w!(s, "    let q_{r}_{t} = ks[lid * DK4 + {t}u];");
        }
        w!(s, "    workgroupBarrier();");
        for t in 0..dv4 {
            w!(s, "    var acc_{r}_{t} = vec4<f32>(0.0);");
        }
    }
    s.push_str(TILE_LOOP_HEAD);
    // Scores of key j for every row: each K vector read serves all rows.
    for r in 0..rows {
        w!(s, "            var a_{r} = vec4<f32>(0.0);");
    }
    shared_vector_products(
        &mut s,
        dk4,
        rows,
        |t| format!("let k_{t} = ks[kb + {t}u];"),
        |r, t| format!("a_{r} += q_{r}_{t} * k_{t};"),
    );
    // Masks and the online softmax, per row.
    for r in 0..rows {
        w!(
            s,
            "            var s_{r} = (a_{r}.x + a_{r}.y) + (a_{r}.z + a_{r}.w);
            var vis_{r} = j >= rg_{r}.x && j < rg_{r}.y;
            if (vis_{r}) {{
                if (loads_extra) {{ s_{r} += loaded_extra(b, h, i_{r}, j, state); }}
                s_{r} += alibi_at(h, i_{r}, j, rc);
                vis_{r} = finite_logit(s_{r});
            }}
            var p_{r} = 0.0;
            if (vis_{r}) {{
                if (s_{r} > m_{r}) {{
                    let alpha = exp(m_{r} - s_{r});
                    l_{r} *= alpha;"
        );
        for t in 0..dv4 {
            w!(s, "                    acc_{r}_{t} *= alpha;");
        }
        w!(
            s,
            "                    m_{r} = s_{r};
                }}
                p_{r} = exp(s_{r} - m_{r});
                l_{r} += p_{r};
            }}"
        );
    }
    // P·V: each V vector read serves all rows.
    shared_vector_products(
        &mut s,
        dv4,
        rows,
        |t| format!("let v_{t} = vs[vb + {t}u];"),
        |r, t| format!("acc_{r}_{t} += p_{r} * v_{t};"),
    );
    s.push_str("        }\n    }\n");
    // Output, written through `vs` one pass of ROW_STRIDE rows at a time, after the barrier
    // that ends the last tile's reads (each part then ends with one of its own).
    w!(s, "    workgroupBarrier();");
    for r in 0..rows {
        w!(s, "    {{");
        w!(s, "        var inv = 0.0;");
        w!(s, "        if (l_{r} > 0.0) {{ inv = 1.0 / l_{r}; }}");
        for t in 0..dv4 {
            w!(s, "        vs[lid * DV4 + {t}u] = acc_{r}_{t} * inv;");
        }
        w!(
            s,
            "        if (row_stored(b, i_{r}, rc)) {{ store_lse(b, h, i_{r}, 0u, m_{r}, l_{r}); }}"
        );
        w!(s, "    }}");
        w!(s, "    store_o_part({r}u, lid, qt, b, h, rc);");
    }
    s.push_str("}\n");
    s
}

/// For each of `n` head-dim vectors: one read from workgroup memory (`read(t)`), then one
/// update per row (`update(r, t)`), so every read serves all rows.
fn shared_vector_products(
    s: &mut String,
    n: u32,
    rows: u32,
    read: impl Fn(u32) -> String,
    update: impl Fn(u32, u32) -> String,
) {
    for t in 0..n {
        w!(s, "            {}", read(t));
        for r in 0..rows {
            w!(s, "            {}", update(r, t));
        }
    }
}

const HEADER: &str = r#"// Generated by src/flash_unrolled.rs: flash for CPU adapters, per-row loops unrolled.
const ROW_STRIDE: u32 = BR / RPT; // rows per staging pass; thread lid owns rows lid + r * ROW_STRIDE

// Rows part * ROW_STRIDE .. + ROW_STRIDE of the block into ks (scaled), for every thread to
// copy its own row into registers. Ends with a barrier.
fn stage_q(part: u32, lid: u32, qt: u32, b: u32, h: u32) {
    for (var e = lid; e < ROW_STRIDE * DK4; e += WG) {
        let i = qt * BR + e / DK4 + part * ROW_STRIDE;
        let d0 = (e % DK4) * 4u;
        var x = vec4<f32>(0.0);
        if (i < P.seq_q && b < P.batch) {
            for (var c = 0u; c < 4u; c++) {
                if (d0 + c < P.dk) { x[c] = load_q(q_index(b, h, i, d0 + c)) * P.scale; }
            }
        }
        ks[e] = x;
    }
    workgroupBarrier();
}

// Writes rows part * ROW_STRIDE .. + ROW_STRIDE of the block from vs to O: a barrier so that
// every thread's row is in vs, the stores, and a barrier before vs is written again.
fn store_o_part(part: u32, lid: u32, qt: u32, b: u32, h: u32, rc: RowCtx) {
    workgroupBarrier();
    for (var e = lid; e < ROW_STRIDE * DV4; e += WG) {
        let i = qt * BR + e / DV4 + part * ROW_STRIDE;
        let d0 = (e % DV4) * 4u;
        if (row_stored(b, i, rc)) {
            let x = vs[e];
            for (var c = 0u; c < 4u; c++) {
                if (d0 + c < P.dv) { store_o(o_index(b, h, i, d0 + c, 0u), x[c]); }
            }
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = query_tile(wid);
    let qt = tile.qt;
    let b = tile.b;
    let h = tile.h;
    let rc = row_ctx(b);

    // The key tiles this block of rows needs.
    let tiles = block_tiles(lid, tile, rc);
"#;

const TILE_LOOP_HEAD: &str = r#"
    let bases = kv_bases(b, tile.hk);
    for (var j0 = tiles.x; j0 < tiles.y; j0 += BC) {
        let state = next_tile(lid, b, h, qt, j0, bases);
        if (state == 0u) { continue; }

        // One key at a time: bias and bool-mask values are read once per row and key.
        let loads_extra = has(F_BIAS) || state == 2u;
        for (var jj = 0u; jj < BC; jj++) {
            let j = j0 + jj;
            let kb = jj * DK4;
            let vb = jj * DV4;
"#;
