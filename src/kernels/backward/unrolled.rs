//! The flash backward's `kv` and `dq` kernels for CPU adapters, generated with one named
//! variable per key (or row) and head-dim vector.
//!
//! `shaders/backward_flash.wgsl` keeps a thread's keys in arrays (`kr[k][t]`, `gk[k][t]`)
//! walked in loops. A GPU compiler unrolls them into registers; lavapipe's unrolls a loop
//! only up to a small budget and keeps an array indexed in a rolled loop in memory, where
//! every access is a loop over the SIMD lanes (measured: the array form ran 12x the
//! forward's time there). Written out as `kr_2_7`, `gk_2_7`, the driver has no array left to
//! place, as in the forward's unrolled kernel (`src/kernels/flash/unrolled.rs`). The loops
//! over rows (`kv`) and keys (`dq`) stay rolled; the mask terms are the shared
//! `visible_logit`'s.

use std::fmt::Write;

use crate::plan::variant::BackwardTile;

macro_rules! w {
    ($s:expr, $($arg:tt)*) => {
        let _ = writeln!($s, $($arg)*);
    };
}

/// `a_0 + a_1 + ...` of `dot(x_{t}, y_{t})` over `n` vectors.
fn dots(n: u32, x: impl Fn(u32) -> String, y: impl Fn(u32) -> String) -> String {
    (0..n)
        .map(|t| format!("dot({}, {})", x(t), y(t)))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// `logit_u`: `visible_logit` (shaders/backward.wgsl) with only the tile's mask terms.
fn logit_fn(s: &mut String, t: &BackwardTile) {
    w!(
        s,
        "fn logit_u(b: u32, h: u32, i: u32, j: u32, kr: vec2<u32>, state: u32, dot: f32, lse: f32, rc: RowCtx) -> vec3<f32> {{"
    );
    w!(
        s,
        "    var vis = j >= kr.x && j < kr.y && finite_logit(lse);"
    );
    if t.bool_mask {
        w!(
            s,
            "    if (vis && state == 2u) {{ vis = bool_mask_at(b, h, i, j); }}"
        );
    }
    // With the soft cap: the capped score, and its slope for dS (see `visible_logit`).
    let (mut s_expr, slope) = if t.softcap {
        w!(s, "    let c = softcap(dot * P.scale);");
        ("c".to_string(), "softcap_slope(c)")
    } else {
        ("dot * P.scale".to_string(), "1.0")
    };
    if t.bias {
        s_expr.push_str(" + bias_at(b, h, i, j)");
    }
    if t.alibi {
        s_expr.push_str(" + alibi_at(h, i, j, rc)");
    }
    w!(s, "    let s = {s_expr};");
    w!(
        s,
        "    return vec3<f32>(s, select(0.0, 1.0, vis && finite_logit(s)), {slope});"
    );
    w!(s, "}}");
    w!(s, "");
}

/// The `kv` and `dq` entry points of an unrolled tile (one thread per row, `per_thread`
/// keys or rows each), appended after `shaders/backward.wgsl`.
pub(crate) fn source(t: &BackwardTile) -> String {
    let n = t.per_thread;
    let (dk4, dv4) = (t.head_dim_qk / 4, t.head_dim_v / 4);
    let mut s = String::with_capacity(32 * 1024);
    logit_fn(&mut s, t);

    // ---- kv: n keys per thread, the query rows of each tile in a rolled loop.
    w!(s, "@compute @workgroup_size(WG)");
    w!(
        s,
        "fn kv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {{"
    );
    w!(s, "    let kt = key_tile(wid);");
    w!(s, "    let b = kt.b;");
    w!(s, "    if (b >= P.batch) {{ return; }}");
    w!(s, "    let rc = row_ctx(b);");
    w!(s, "    let bases = kv_bases(b, kt.hk);");
    w!(s, "    stage_keys(lid, b, kt.k0, bases);");
    for k in 0..n {
        w!(s, "    let j_{k} = kt.k0 + lid + {k}u * STRIDE;");
        for d in 0..dk4 {
            w!(
                s,
                "    let kr_{k}_{d} = qd[(lid + {k}u * STRIDE) * QD_ROW + {d}u];"
            );
            w!(s, "    var gk_{k}_{d} = vec4<f32>(0.0);");
        }
        for d in 0..dv4 {
            w!(
                s,
                "    let vr_{k}_{d} = qd[(lid + {k}u * STRIDE) * QD_ROW + DK4 + {d}u];"
            );
            w!(s, "    var gv_{k}_{d} = vec4<f32>(0.0);");
        }
    }
    w!(s, "    let n_qt = (P.seq_q + BR - 1u) / BR;");
    w!(s, "    for (var g = 0u; g < P.group; g++) {{");
    w!(s, "        let h = kt.hk * P.group + g;");
    w!(s, "        for (var qt = 0u; qt < n_qt; qt++) {{");
    w!(
        s,
        "            let state = next_q_tile(lid, b, h, qt, kt.k0, rc);"
    );
    w!(s, "            if (state == 0u) {{ continue; }}");
    w!(s, "            for (var r = 0u; r < BR; r++) {{");
    w!(s, "                let i = qt * BR + r;");
    w!(s, "                let st = qd_stats[r];");
    w!(s, "                let range = key_range(i, rc);");
    for d in 0..dk4 {
        w!(s, "                let q_{d} = qd[r * QD_ROW + {d}u];");
    }
    for d in 0..dv4 {
        w!(
            s,
            "                let o_{d} = qd[r * QD_ROW + DK4 + {d}u];"
        );
    }
    for k in 0..n {
        let sp = dots(dk4, |d| format!("q_{d}"), |d| format!("kr_{k}_{d}"));
        let dp = dots(dv4, |d| format!("o_{d}"), |d| format!("vr_{k}_{d}"));
        w!(
            s,
            "                let sv_{k} = logit_u(b, h, i, j_{k}, range, state, {sp}, st.x, rc);"
        );
        w!(s, "                if (sv_{k}.y != 0.0) {{");
        w!(s, "                    let p = exp(sv_{k}.x - st.x);");
        w!(
            s,
            "                    let ds = p * ({dp} - st.y) * sv_{k}.z;"
        );
        for d in 0..dv4 {
            w!(s, "                    gv_{k}_{d} += p * o_{d};");
        }
        for d in 0..dk4 {
            w!(s, "                    gk_{k}_{d} += ds * q_{d};");
        }
        w!(s, "                }}");
    }
    w!(s, "            }}");
    w!(s, "        }}");
    w!(s, "    }}");
    // The keys' dK and dV through qd (the last query tile's reads end at the barrier that
    // begins the store).
    w!(s, "    workgroupBarrier();");
    for k in 0..n {
        for d in 0..dk4 {
            w!(
                s,
                "    qd[(lid + {k}u * STRIDE) * QD_ROW + {d}u] = gk_{k}_{d} * P.scale;"
            );
        }
        for d in 0..dv4 {
            w!(
                s,
                "    qd[(lid + {k}u * STRIDE) * QD_ROW + DK4 + {d}u] = gv_{k}_{d};"
            );
        }
    }
    w!(s, "    store_staged_kv(lid, kt);");
    w!(s, "}}");
    w!(s, "");

    // ---- dq: n rows per thread, the keys of each K/V tile in a rolled loop.
    w!(s, "@compute @workgroup_size(WG)");
    w!(
        s,
        "fn dq(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {{"
    );
    w!(s, "    let tile = query_tile(wid);");
    w!(s, "    let b = tile.b;");
    w!(s, "    let h = tile.h;");
    w!(s, "    if (b >= P.batch) {{ return; }}");
    w!(s, "    let rc = row_ctx(b);");
    w!(s, "    let tiles = block_tiles(lid, tile, rc);");
    w!(s, "    stage_rows(lid, b, h, tile.qt, rc);");
    for k in 0..n {
        w!(
            s,
            "    let r_{k} = bwd_row(b, h, tile.qt * BR + lid + {k}u * STRIDE, rc);"
        );
        for d in 0..dk4 {
            w!(
                s,
                "    let q_{k}_{d} = kvs[(lid + {k}u * STRIDE) * DK4 + {d}u];"
            );
            w!(s, "    var g_{k}_{d} = vec4<f32>(0.0);");
        }
        for d in 0..dv4 {
            w!(
                s,
                "    let o_{k}_{d} = kvs[VS0 + (lid + {k}u * STRIDE) * DV4 + {d}u];"
            );
        }
    }
    w!(s, "    let bases = kv_bases(b, tile.hk);");
    w!(s, "    for (var j0 = tiles.x; j0 < tiles.y; j0 += BC) {{");
    w!(
        s,
        "        let state = next_tile(lid, b, h, tile.qt, j0, bases);"
    );
    w!(s, "        if (state == 0u) {{ continue; }}");
    w!(s, "        for (var jj = 0u; jj < BC; jj++) {{");
    for d in 0..dk4 {
        w!(s, "            let k_{d} = kvs[jj * DK4 + {d}u];");
    }
    for d in 0..dv4 {
        w!(s, "            let v_{d} = kvs[VS0 + jj * DV4 + {d}u];");
    }
    for k in 0..n {
        let sp = dots(dk4, |d| format!("q_{k}_{d}"), |d| format!("k_{d}"));
        let dp = dots(dv4, |d| format!("o_{k}_{d}"), |d| format!("v_{d}"));
        w!(
            s,
            "            let sv_{k} = logit_u(b, h, r_{k}.i, j0 + jj, r_{k}.range, state, {sp}, r_{k}.st.x, rc);"
        );
        w!(s, "            if (sv_{k}.y != 0.0) {{");
        w!(
            s,
            "                let ds = exp(sv_{k}.x - r_{k}.st.x) * ({dp} - r_{k}.st.y) * sv_{k}.z;"
        );
        for d in 0..dk4 {
            w!(s, "                g_{k}_{d} += ds * k_{d};");
        }
        w!(s, "            }}");
    }
    w!(s, "        }}");
    w!(s, "    }}");
    // The rows' dQ through kvs (the last tile's reads end at the barrier that begins the
    // store).
    w!(s, "    workgroupBarrier();");
    for k in 0..n {
        for d in 0..dk4 {
            w!(
                s,
                "    kvs[(lid + {k}u * STRIDE) * DK4 + {d}u] = g_{k}_{d} * P.scale;"
            );
        }
    }
    w!(s, "    store_staged_dq(lid, b, h, tile.qt, rc);");
    w!(s, "}}");
    s
}
