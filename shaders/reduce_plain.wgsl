// One thread per query row: nothing to reduce.
fn row_reduce(x: f32) -> f32 {
    return x;
}

fn row_max(x: f32) -> f32 {
    return x;
}

// A row's values from its TPR threads: component m holds thread (sub ^ m)'s (only itself).
fn row_gather(x: f32) -> vec4<f32> {
    return vec4<f32>(x, 0.0, 0.0, 0.0);
}
