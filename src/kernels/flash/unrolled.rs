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
//! (`shaders/common.wgsl`), so masks behave exactly as in `shaders/flash.wgsl`. Differences
//! in structure, each measured on lavapipe (BENCHMARKS.md):
//!
//! - Keys are taken in steps of two on Mesa 22 ([`ShaderVariant::serial_loads`]) and one
//!   elsewhere: each Q vector and accumulator read serves the step's keys, and the online
//!   softmax rescales once per row and step, with no branch (a CPU runs both sides of one).
//! - Q is read, and O written, through the K/V tile array in as few passes as fit, so the
//!   global loads and stores stay in rolled loops. Every barrier costs compile time on
//!   lavapipe from Mesa 23 (a coroutine frame around every live value), and so does every
//!   written-out load from a per-thread address (a branchy loop over the lanes): there Q and
//!   O move through a local array in a rolled loop. Mesa 22 turns such an array into a branch
//!   ladder instead, so for it ([`ShaderVariant::serial_loads`]) each vector is written out.
//! - Code for per-key terms is generated only in variants that need it
//!   ([`ShaderVariant::bias`], with its storage dtype, [`ShaderVariant::alibi`],
//!   [`ShaderVariant::bool_mask`], the soft cap): lavapipe runs both sides of every branch, so a per-key
//!   test of a flag that is off still cost about 30% of the unmasked time there, and a bias
//!   read through the other terms' code and a run-time dtype cost 1.25-1.5x of the bias
//!   read alone. With a bool mask, tiles the block summary marks all visible run a key loop
//!   with no mask reads.
//! - Each thread works out a tile's state itself: two barriers per tile instead of three.

use std::fmt::Write;

use crate::data::tensor::DType;
use crate::plan::variant::UnrolledTile;

/// Appends one line of WGSL (writing to a `String` cannot fail).
macro_rules! w {
    ($s:expr, $($arg:tt)*) => {
        let _ = writeln!($s, $($arg)*);
    };
}

/// The WGSL `main` of an unrolled flash variant (appended after the const lines, the dtype
/// helpers, the prelude, the tile-count snippet and `shaders/flash_tiles.wgsl`).
pub(crate) fn main_source(v: &UnrolledTile) -> String {
    let rows = v.rows_per_thread.max(1);
    let dk4 = (v.head_dim_qk / 4).max(1);
    let dv4 = (v.head_dim_v / 4).max(1);
    // Q is read, and O written, through the K/V tile array in passes of `ROW_STRIDE` rows
    // per row group (thread lid's row r is row lid + r * ROW_STRIDE of the block), as many
    // row groups per pass as fit: every barrier in the straight-line code costs compile time
    // (lavapipe from Mesa 23 builds a coroutine frame for each, around every live value).
    let tile_vec4s = v.block_k * (dk4 + dv4);
    let q_groups = groups_per_pass(tile_vec4s, dk4, rows);
    let o_groups = groups_per_pass(tile_vec4s, dv4, rows);
    let mut s = String::with_capacity(64 * 1024);
    w!(s, "const Q_PASS_ROWS: u32 = {}u * ROW_STRIDE;", q_groups);
    w!(s, "const O_PASS_ROWS: u32 = {}u * ROW_STRIDE;", o_groups);
    s.push_str(HEADER);
    if v.alibi {
        w!(s, "    let slope = bitcast<f32>(aux_buf[P.alibi_off + h]);");
    }
    for r in 0..rows {
        w!(s, "    let i_{r} = qt * BR + lid + {r}u * ROW_STRIDE;");
        w!(s, "    let rg_{r} = key_range(i_{r}, rc);");
        if v.bias.is_some() {
            // Row r's bias starts here (element index); key j is P.b_sk further.
            w!(
                s,
                "    let bb_{r} = P.b_off + b * P.b_sb + h * P.b_sh + i_{r} * P.b_sq;"
            );
        }
        if v.alibi {
            // Row r's diagonal: ALiBi's term of key j is -slope * |j - ac_r|.
            w!(s, "    let ac_{r} = i32(i_{r}) + rc.off;");
        }
        w!(s, "    var st_{r} = online_init();");
        for t in 0..dv4 {
            w!(s, "    var acc_{r}_{t} = vec4<f32>(0.0);");
        }
    }
    for pass in 0..rows / q_groups {
        // A barrier between passes, so the previous one has been read. After the last, the
        // first K/V tile is loaded only after the barrier that opens each tile.
        if pass > 0 {
            w!(s, "    workgroupBarrier();");
        }
        w!(s, "    stage_q({pass}u, lid, qt, b, h);");
        if !v.serial_loads {
            // Through a local array, filled in a loop the driver keeps rolled.
            w!(
                s,
                "    var qa_{pass}: array<vec4<f32>, {}>;",
                q_groups * dk4
            );
            w!(
                s,
                "    for (var e = 0u; e < rolled({}u); e++) {{ qa_{pass}[e] = kvs[(lid + e / DK4 * ROW_STRIDE) * DK4 + e % DK4]; }}",
                q_groups * dk4
            );
        }
        for g in 0..q_groups {
            let r = pass * q_groups + g;
            for t in 0..dk4 {
                if v.serial_loads {
                    // One load per vector, written out.
                    w!(
                        s,
                        "    let q_{r}_{t} = kvs[(lid + {g}u * ROW_STRIDE) * DK4 + {t}u];"
                    );
                } else {
                    w!(s, "    let q_{r}_{t} = qa_{pass}[{}u];", g * dk4 + t);
                }
            }
        }
    }
    s.push_str(TILE_LOOP_HEAD);
    // Keys per step: two on Mesa 22 (1.14x faster there, measured), one elsewhere (as fast on
    // Mesa 25, and it compiles 1.5x faster at d=128).
    let g = if v.serial_loads { 2 } else { 1 };
    let mut keys = |count: &str, terms| key_loop(&mut s, rows, dk4, dv4, count, terms, g);
    let terms = Terms {
        bool_mask: false,
        bias: v.bias,
        alibi: v.alibi,
        softcap: v.softcap,
    };
    if v.bool_mask {
        // Tiles the block summary marks all visible need no bool-mask reads: a loop of their
        // own (a loop with no iteration costs one masked pass on a CPU, a branch both sides).
        keys("select(0u, BC, state == 1u)", terms);
        let bool_mask = true;
        keys("select(0u, BC, state == 2u)", Terms { bool_mask, ..terms });
    } else {
        keys("BC", terms);
    }
    s.push_str("        }\n    }\n");
    // Output, after the barrier that ends the last tile's reads.
    w!(s, "    let sink = sink_logit(h);");
    for pass in 0..rows / o_groups {
        w!(s, "    workgroupBarrier();");
        if !v.serial_loads {
            w!(
                s,
                "    var oa_{pass}: array<vec4<f32>, {}>;",
                o_groups * dv4
            );
        }
        for g in 0..o_groups {
            let r = pass * o_groups + g;
            w!(s, "    {{");
            w!(s, "        st_{r} = online_sink(st_{r}, sink);");
            w!(s, "        let inv = online_out_scale(st_{r});");
            for t in 0..dv4 {
                if v.serial_loads {
                    w!(
                        s,
                        "        kvs[(lid + {g}u * ROW_STRIDE) * DV4 + {t}u] = acc_{r}_{t} * inv;"
                    );
                } else {
                    w!(
                        s,
                        "        oa_{pass}[{}u] = acc_{r}_{t} * inv;",
                        g * dv4 + t
                    );
                }
            }
            w!(
                s,
                "        if (row_stored(b, i_{r}, rc)) {{ store_lse(b, h, i_{r}, 0u, st_{r}.m, st_{r}.l); }}"
            );
            w!(s, "    }}");
        }
        if !v.serial_loads {
            w!(
                s,
                "    for (var e = 0u; e < rolled({}u); e++) {{ kvs[(lid + e / DV4 * ROW_STRIDE) * DV4 + e % DV4] = oa_{pass}[e]; }}",
                o_groups * dv4
            );
        }
        w!(s, "    store_o_part({pass}u, lid, qt, b, h, rc);");
    }
    s.push_str("}\n");
    s
}

/// Which per-key mask terms a key loop reads (none: each row's key range is the whole mask).
#[derive(Clone, Copy)]
struct Terms {
    /// The bool mask (in tiles the block summary marks mixed).
    bool_mask: bool,
    /// The additive bias, stored in this dtype.
    bias: Option<DType>,
    /// ALiBi's distance term.
    alibi: bool,
    /// The soft cap, applied to every score before the other terms.
    softcap: bool,
}

impl Terms {
    /// WGSL for the bias of row `r`, key `j + k`: its element index is `e`.
    fn bias_load(dtype: DType) -> String {
        match dtype {
            DType::F32 => "bitcast<f32>(bias_buf[e])".into(),
            dt => format!(
                "decode(bias_buf[word_index(e, {c}u)], e, {c}u)",
                c = dt.code()
            ),
        }
    }
}

/// One tile's key loop over `count` keys (a WGSL expression) in steps of `g` keys: the
/// scores of the step's keys for every row (each K vector read serves all rows, each Q
/// vector read all `g` keys), the masks per row and key, one online-softmax rescale per row
/// and step with no branch, then P·V (each V vector read serves all rows, each accumulator
/// read all `g` keys).
fn key_loop(s: &mut String, rows: u32, dk4: u32, dv4: u32, count: &str, terms: Terms, g: u32) {
    w!(
        s,
        "        for (var jj = 0u; jj < {count}; jj += {g}u) {{
            let j = j0 + jj;"
    );
    for r in 0..rows {
        for k in 0..g {
            w!(s, "            var a_{r}_{k} = vec4<f32>(0.0);");
        }
    }
    for t in 0..dk4 {
        for k in 0..g {
            w!(
                s,
                "            let k_{t}_{k} = kvs[(jj + {k}u) * DK4 + {t}u];"
            );
        }
        for r in 0..rows {
            for k in 0..g {
                w!(
                    s,
                    "            a_{r}_{k} = fma(q_{r}_{t}, k_{t}_{k}, a_{r}_{k});"
                );
            }
        }
    }
    for r in 0..rows {
        w!(s, "            var mx_{r} = LOWEST;");
        for k in 0..g {
            w!(
                s,
                "            var s_{r}_{k} = (a_{r}_{k}.x + a_{r}_{k}.y) + (a_{r}_{k}.z + a_{r}_{k}.w);"
            );
            if terms.softcap {
                w!(
                    s,
                    "            s_{r}_{k} = softcap_at(s_{r}_{k}, P.softcap);"
                );
            }
            w!(
                s,
                "            var vis_{r}_{k} = j + {k}u >= rg_{r}.x && j + {k}u < rg_{r}.y && finite_logit(s_{r}_{k});"
            );
            if terms.bool_mask || terms.bias.is_some() || terms.alibi {
                w!(s, "            if (vis_{r}_{k}) {{");
                if terms.bool_mask {
                    w!(
                        s,
                        "                vis_{r}_{k} = bool_mask_at(b, h, i_{r}, j + {k}u);"
                    );
                }
                if let Some(dt) = terms.bias {
                    // A bias of -inf (or NaN) masks the key.
                    w!(
                        s,
                        "                let e = bb_{r} + (j + {k}u) * P.b_sk;
                s_{r}_{k} += {};
                vis_{r}_{k} = vis_{r}_{k} && finite_logit(s_{r}_{k});",
                        Terms::bias_load(dt)
                    );
                }
                if terms.alibi {
                    w!(
                        s,
                        "                s_{r}_{k} -= slope * abs(f32(i32(j + {k}u) - ac_{r}));"
                    );
                }
                w!(s, "            }}");
            }
            w!(
                s,
                "            if (vis_{r}_{k}) {{ mx_{r} = max(mx_{r}, s_{r}_{k}); }}"
            );
        }
        w!(s, "            st_{r} = online_fold(st_{r}, mx_{r}, 0.0);");
        w!(s, "            let al_{r} = st_{r}.alpha;");
        for k in 0..g {
            w!(
                s,
                "            let p_{r}_{k} = online_weight(s_{r}_{k}, vis_{r}_{k}, st_{r});"
            );
        }
        let sum: Vec<String> = (0..g).map(|k| format!("p_{r}_{k}")).collect();
        w!(s, "            st_{r}.l += {};", sum.join(" + "));
    }
    for t in 0..dv4 {
        for k in 0..g {
            w!(
                s,
                "            let v_{t}_{k} = kvs[VS0 + (jj + {k}u) * DV4 + {t}u];"
            );
        }
        for r in 0..rows {
            let mut e = format!("acc_{r}_{t} * al_{r}");
            for k in 0..g {
                e = format!("fma(vec4<f32>(p_{r}_{k}), v_{t}_{k}, {e})");
            }
            w!(s, "            acc_{r}_{t} = {e};");
        }
    }
    s.push_str("        }\n");
}

/// Row groups (of `ROW_STRIDE` rows, one per thread) per staging pass of Q or O: the most,
/// a power of two dividing `rows`, whose `vec4s` per row fit the K/V tile array.
fn groups_per_pass(tile_vec4s: u32, vec4s: u32, rows: u32) -> u32 {
    let stride = crate::plan::dispatch::FLASH_BLOCK_Q / rows.max(1);
    let mut g = rows.max(1);
    while g > 1 && g * stride * vec4s > tile_vec4s {
        g /= 2;
    }
    g
}

const HEADER: &str = r#"// Generated by src/kernels/flash/unrolled.rs: flash for CPU adapters, per-row loops unrolled.
const ROW_STRIDE: u32 = BR / RPT; // threads; thread lid owns rows lid + r * ROW_STRIDE

// Rows part * Q_PASS_ROWS .. + Q_PASS_ROWS of the block into kvs (scaled), for every thread
// to copy its own rows into registers. Ends with a barrier.
fn stage_q(part: u32, lid: u32, qt: u32, b: u32, h: u32) {
    for (var e = lid; e < Q_PASS_ROWS * DK4; e += WG) {
        let i = qt * BR + part * Q_PASS_ROWS + e / DK4;
        let d0 = (e % DK4) * 4u;
        var x = vec4<f32>(0.0);
        if (i < P.seq_q && b < P.batch) {
            for (var c = 0u; c < 4u; c++) {
                if (d0 + c < P.dk) { x[c] = load_q(q_index(b, h, i, d0 + c)) * P.scale; }
            }
        }
        kvs[e] = x;
    }
    workgroupBarrier();
}

// Writes rows part * O_PASS_ROWS .. + O_PASS_ROWS of the block from kvs to O, after the
// barrier that makes every thread's rows visible.
fn store_o_part(part: u32, lid: u32, qt: u32, b: u32, h: u32, rc: RowCtx) {
    workgroupBarrier();
    for (var e = lid; e < O_PASS_ROWS * DV4; e += WG) {
        let i = qt * BR + part * O_PASS_ROWS + e / DV4;
        let d0 = (e % DV4) * 4u;
        if (row_stored(b, i, rc)) {
            let x = kvs[e];
            for (var c = 0u; c < 4u; c++) {
                if (d0 + c < P.dv) { store_o(o_index(b, h, i, d0 + c, 0u), x[c]); }
            }
        }
    }
}

// n, in a form the driver's compiler cannot evaluate, so that a loop up to it stays rolled
// (P.seq_q is a run-time value).
fn rolled(n: u32) -> u32 {
    return n + min(P.seq_q, 0u);
}

// Starts the key tile at j0 with two barriers: the first ends every read of the previous tile
// (or of the staged Q), then each thread works out the tile's state (0 all masked: skip it,
// 1 all visible, 2 mixed) for itself, and unless it is skipped the workgroup loads its K and V
// (bases from kv_bases), readable after the second.
fn start_tile(lid: u32, b: u32, h: u32, qt: u32, j0: u32, bases: vec3<u32>) -> u32 {
    workgroupBarrier();
    let state = tile_state(b, h, qt, j0);
    if (state != 0u) {
        if (lid == 0u) { count_tile(state); }
        fill_kv_tile(lid, b, j0, bases);
    }
    workgroupBarrier();
    return state;
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
        let state = start_tile(lid, b, h, qt, j0, bases);
        if (state != 0u) {
"#;
