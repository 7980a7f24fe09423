#!/usr/bin/env bash
# Builds the browser example and serves it: open the printed address in a browser with
# WebGPU (Chrome or Edge 113+, Safari 26, Firefox 141+ on Windows).
# Needs the wasm32 target (`rustup target add wasm32-unknown-unknown`), wasm-bindgen's CLI at
# the version in Cargo.toml (`cargo install wasm-bindgen-cli --version 0.2.130`) and python3.
# Usage: bash examples/web/serve.sh [port]   (BUILD_ONLY=1: build, don't serve)
set -euo pipefail
cd "$(dirname "$0")"
port=${1:-8000}
cargo build --release --target wasm32-unknown-unknown
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
wasm-bindgen --target web --no-typescript --out-dir pkg \
    "$target/wasm32-unknown-unknown/release/wgpu_attention_web_example.wasm"
[ -n "${BUILD_ONLY:-}" ] && exit 0
echo "serving http://localhost:$port/ (Ctrl-C to stop)"
exec python3 -m http.server "$port" --bind 127.0.0.1
