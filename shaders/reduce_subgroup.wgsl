// TPR consecutive invocations share a query row: sum their partial dot products with
// butterfly shuffles inside the subgroup (needs subgroup size >= TPR).
fn row_reduce(x: f32) -> f32 {
    var s = x;
    for (var m = 1u; m < TPR; m = m << 1u) {
        s += subgroupShuffleXor(s, m);
    }
    return s;
}

fn row_max(x: f32) -> f32 {
    var s = x;
    for (var m = 1u; m < TPR; m = m << 1u) {
        s = max(s, subgroupShuffleXor(s, m));
    }
    return s;
}

// A row's values from its TPR (at most 4) threads: component m holds thread (sub ^ m)'s.
fn row_gather(x: f32) -> vec4<f32> {
    var v = vec4<f32>(x, 0.0, 0.0, 0.0);
    for (var m = 1u; m < min(TPR, 4u); m++) {
        v[m] = subgroupShuffleXor(x, m);
    }
    return v;
}
