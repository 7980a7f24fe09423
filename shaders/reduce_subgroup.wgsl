// TPR consecutive invocations share a query row: sum their partial dot products with
// butterfly shuffles inside the subgroup (needs subgroup size >= TPR).
fn row_reduce(x: f32) -> f32 {
    var s = x;
    for (var m = 1u; m < TPR; m = m << 1u) {
        s += subgroupShuffleXor(s, m);
    }
    return s;
}
