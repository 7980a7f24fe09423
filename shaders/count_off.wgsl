// Tile counting disabled (the normal build).
fn count_tile(state: u32) {
}
