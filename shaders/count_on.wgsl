// Debug build: count the key tiles each workgroup loads, how many of them needed
// per-element bool-mask loads, and (cooperative-matrix kernel) how many times a subgroup
// round-tripped its accumulators to rescale them. Evidence, in tests, that skipping really
// skips and that lazy rescaling is rare.
@group(0) @binding(8) var<storage, read_write> tile_counts: array<atomic<u32>>;

fn count_tile(state: u32) {
    atomicAdd(&tile_counts[0], 1u);
    if (state == 2u) { atomicAdd(&tile_counts[1], 1u); }
}

fn count_rescale() {
    atomicAdd(&tile_counts[2], 1u);
}
