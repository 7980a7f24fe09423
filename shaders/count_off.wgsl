// Counting disabled (the normal build).
fn count_tile(state: u32) {
}

fn count_rescale() {
}
