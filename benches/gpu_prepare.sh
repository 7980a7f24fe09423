#!/usr/bin/env bash
# Here, before a lent GPU machine's first call: the Vulkan loader packages and the prebuilt
# test and bench binaries into .gl/ (git-ignored through .git/info/exclude), which the call
# carries; benches/gpu_run.sh then needs nothing built there.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >> .git/info/exclude
mkdir -p .gl/bin /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
ls .gl/libvulkan1_*.deb >/dev/null 2>&1 || {
    apt-get $o update -q
    (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
}
exe() { grep -o '"executable":"[^"]*"' | cut -d'"' -f4; }
for t in correctness semantics skipping llm coop backward; do
    cp "$(cargo test --release --test $t --no-run --message-format=json 2>/dev/null | exe)" ".gl/bin/$t"
done
cp "$(cargo build --release --bench attention --message-format=json 2>/dev/null | exe | tail -1)" .gl/bin/attention
cp "$(cargo build --release --example isa_report --message-format=json 2>/dev/null | exe | tail -1)" .gl/bin/isa_report
du -sh .gl
