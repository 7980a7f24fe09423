//! The ISA report: compiles every kernel the dispatcher can pick through a GPU vendor's real
//! shader compiler and writes one JSON line per kernel with what that compiler made of it:
//! registers, spills, scratch memory, occupancy, the compiler's static cycle estimate, and
//! counts of matrix instructions, shared-memory loads and barriers read from the final
//! disassembly, for the whole kernel and for its key loop (the loop with the most matrix
//! instructions, else the most shared-memory loads), with that loop's instruction mix.
//!
//! The figures are for exactly the SPIR-V that wgpu hands the driver: the pipelines are
//! built by the crate itself (`Context::prepare`, `prepare_backward`, `merge`,
//! `block_mask`), and the driver prints its statistics while wgpu creates each one.
//!
//! Mesa's Vulkan drivers for NVIDIA (NVK, whose compiler is NAK) and AMD (RADV, whose
//! compiler is ACO) run without their GPU through Mesa's DRM shims, which fake the kernel
//! driver: pipelines compile to the real instruction set and submissions do nothing. So the
//! report runs on any Linux machine with `mesa-vulkan-drivers` and `mesa-drm-shim` from
//! Mesa 26 (`.ci/isa` runs it in a Debian trixie root):
//!
//! ```text
//! cargo run --release --example isa_report -- --gpu ampere,navi31,gfx1201 --out isa.jsonl
//! cargo run --release --example isa_report -- --gpu native    # your own NVK or RADV GPU
//! ```
//!
//! `--gpu` takes `ampere` (NVIDIA GA102 through NVK), `turing` (TU102), `navi31` (AMD RDNA3,
//! RX 7900 XTX, through RADV), `gfx1201` (RDNA4), or `native`: the Vulkan adapter wgpu
//! picks, with the debug output of whichever of NVK or RADV drives it. `--check BASELINE`
//! then fails (exit 1) when a hot kernel (forward or backward, head dim ≤ 128) uses scratch
//! memory or spills, when an f16 or bf16 forward call (paged f16 prefill and prefill over
//! quantized K/V included) on a GPU
//! with cooperative matrices does not run the cooperative-matrix kernel, or when a kernel's static cycle estimate
//! (NAK's cycle count, ACO's latency) exceeds the baseline's by more than 10%, or a
//! baseline kernel is gone. Refreshing the baseline is a deliberate commit of the new
//! report over it.
//!
//! Every line carries `"gpu"`; kernel lines have `"kernel"` (the pipeline's label),
//! `"case"` (the first call that needed it) and the figures; `"type":"case"` lines say
//! which variant each call ran.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use wgpu_attention::{
    AttentionOptions, Backend, BackwardInputs, CausalAlignment, Context, DType, GradientViews,
    KvScales, Mask, PagedKv, Tensor, TensorView,
};

/// A GPU reached through a Mesa DRM shim: the shim library and its environment.
struct Gpu {
    name: &'static str,
    /// Mesa's Vulkan driver JSON in `/usr/share/vulkan/icd.d/`.
    icd: &'static str,
    shim: &'static str,
    env: (&'static str, &'static str),
}

const SHIMMED: [Gpu; 4] = [
    Gpu {
        name: "ampere",
        icd: "nouveau_icd.json",
        shim: "libnouveau_noop_drm_shim.so",
        env: ("NOUVEAU_CHIPSET", "0x172"),
    },
    Gpu {
        name: "turing",
        icd: "nouveau_icd.json",
        shim: "libnouveau_noop_drm_shim.so",
        env: ("NOUVEAU_CHIPSET", "0x162"),
    },
    Gpu {
        name: "navi31",
        icd: "radeon_icd.json",
        shim: "libamdgpu_noop_drm_shim.so",
        env: ("AMDGPU_GPU_ID", "navi31"),
    },
    Gpu {
        name: "gfx1201",
        icd: "radeon_icd.json",
        shim: "libamdgpu_noop_drm_shim.so",
        env: ("AMDGPU_GPU_ID", "gfx1201"),
    },
];

/// Where Debian puts Mesa's libraries and driver files.
const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";
const ICD_DIR: &str = "/usr/share/vulkan/icd.d";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    if args.iter().any(|a| a == "--child") {
        std::process::exit(match child() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("@@error {e}");
                1
            }
        });
    }
    let gpus = flag("--gpu").unwrap_or_else(|| "ampere,navi31,gfx1201".into());
    let cases = flag("--cases").unwrap_or_default();
    let mut lines = Vec::new();
    for gpu in gpus.split(',') {
        match run_gpu(gpu, &cases) {
            Ok(mut l) => lines.append(&mut l),
            Err(e) => {
                eprintln!("isa_report: {gpu}: {e}");
                std::process::exit(2);
            }
        }
    }
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    match flag("--out") {
        Some(path) => {
            if let Err(e) = std::fs::write(&path, &text) {
                eprintln!("isa_report: writing {path}: {e}");
                std::process::exit(2);
            }
        }
        None => print!("{text}"),
    }
    print_table(&lines);
    if let Some(base) = flag("--check") {
        let baseline = match std::fs::read_to_string(&base) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("isa_report: reading the baseline {base}: {e}");
                std::process::exit(2);
            }
        };
        let failures = check(&lines, &parse_lines(&baseline));
        for f in &failures {
            println!("FAIL {f}");
        }
        if !failures.is_empty() {
            println!("isa_report: {} check(s) failed", failures.len());
            std::process::exit(1);
        }
        println!("isa_report: every check passed");
    }
}

// ---------------------------------------------------------------------------- the parent

/// Runs this program again as the child for `gpu` and parses what the driver printed.
fn run_gpu(gpu: &str, cases: &str) -> Result<Vec<Json>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // One stream, in order: the child's own markers and the driver's output interleave.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("exec \"$0\" --child 2>&1")
        .arg(&exe)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .env("MESA_SHADER_CACHE_DISABLE", "true")
        .env("NAK_DEBUG", "print")
        .env("RADV_DEBUG", "shaders,shaderstats")
        .env("WGPU_BACKEND", "vulkan")
        .env("ISA_REPORT_CASES", cases);
    if gpu != "native" {
        let g = SHIMMED.iter().find(|g| g.name == gpu).ok_or_else(|| {
            format!("unknown GPU {gpu} (ampere, turing, navi31, gfx1201, native)")
        })?;
        let shim = format!("{LIB_DIR}/{}", g.shim);
        if !std::path::Path::new(&shim).exists() {
            return Err(format!(
                "{shim} is missing: install mesa-drm-shim and mesa-vulkan-drivers from Mesa 26 (Debian trixie-backports; .ci/isa does)"
            ));
        }
        cmd.env("LD_PRELOAD", shim)
            .env("VK_DRIVER_FILES", format!("{ICD_DIR}/{}", g.icd))
            .env(g.env.0, g.env.1);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting the child: {e}"))?;
    let out = child.stdout.take().ok_or("no child stdout")?;
    let mut parser = Parser::new(gpu);
    for line in BufReader::new(out).lines() {
        let line = line.map_err(|e| e.to_string())?;
        parser.line(&line);
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!(
            "the child failed ({status}): {}",
            parser.errors.join("; ")
        ));
    }
    let lines = parser.finish();
    if !lines.iter().any(|l| l.get("kernel").is_some()) {
        return Err("the driver printed no shader statistics (is this NVK or RADV?)".into());
    }
    Ok(lines)
}

/// A JSON object as an ordered map of already-encoded values.
#[derive(Clone, Debug, Default)]
struct Json(Vec<(String, String)>);

impl Json {
    fn set(&mut self, k: &str, v: impl std::fmt::Display) {
        self.0.retain(|(key, _)| key != k);
        self.0.push((k.to_string(), v.to_string()));
    }
    fn set_str(&mut self, k: &str, v: &str) {
        self.set(
            k,
            format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")),
        );
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
    fn num(&self, k: &str) -> Option<f64> {
        self.get(k).and_then(|v| v.parse().ok())
    }
    fn str(&self, k: &str) -> Option<String> {
        self.get(k)
            .map(|v| v.trim_matches('"').replace("\\\"", "\""))
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "\"{k}\":{v}")?;
        }
        write!(f, "}}")
    }
}

/// Reads the flat JSON lines this program writes (string, number and object values).
fn parse_lines(text: &str) -> Vec<Json> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let mut j = Json::default();
            let body = &l[1..l.len().saturating_sub(1)];
            let (mut depth, mut in_str, mut start) = (0, false, 0);
            let mut fields = Vec::new();
            let bytes = body.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' if in_str => i += 1,
                    b'"' => in_str = !in_str,
                    b'{' if !in_str => depth += 1,
                    b'}' if !in_str => depth -= 1,
                    b',' if !in_str && depth == 0 => {
                        fields.push(&body[start..i]);
                        start = i + 1;
                    }
                    _ => {}
                }
                i += 1;
            }
            fields.push(&body[start..]);
            for f in fields {
                if let Some(colon) = f.find("\":") {
                    j.0.push((f[1..colon].to_string(), f[colon + 2..].to_string()));
                }
            }
            j
        })
        .collect()
}

/// Which kind of instruction a disassembly line holds, for the counts.
#[derive(Clone, Copy, PartialEq)]
enum Class {
    Matrix,
    SharedLoad,
    SharedStore,
    Barrier,
    Scratch,
    Other,
}

/// One basic block of a disassembly: its instructions' opcodes and the blocks it may branch
/// to (ACO's by label first).
#[derive(Default)]
struct Block {
    ops: Vec<String>,
    succs: Vec<usize>,
    targets: Vec<usize>,
}

/// The natural loops of a control-flow graph (blocks in listing order, block 0 the entry),
/// each as its blocks: for every branch back to a block that dominates its source, that
/// block and every block that reaches the source without passing it; loops with one header
/// merged.
fn natural_loops(blocks: &[Block]) -> Vec<Vec<usize>> {
    let n = blocks.len();
    if n == 0 {
        return Vec::new();
    }
    let mut preds = vec![Vec::new(); n];
    for (i, b) in blocks.iter().enumerate() {
        for &s in b.succs.iter().filter(|&&s| s < n) {
            preds[s].push(i);
        }
    }
    // Dominator sets as bit vectors, iterated to a fixed point.
    let words = n.div_ceil(64);
    let full = vec![u64::MAX; words];
    let mut dom: Vec<Vec<u64>> = vec![full; n];
    dom[0] = vec![0; words];
    dom[0][0] = 1;
    let mut changed = true;
    while changed {
        changed = false;
        for i in 1..n {
            let mut d = vec![u64::MAX; words];
            if preds[i].is_empty() {
                d = vec![0; words];
            }
            for &p in &preds[i] {
                for (w, x) in d.iter_mut().zip(&dom[p]) {
                    *w &= x;
                }
            }
            d[i / 64] |= 1 << (i % 64);
            if d != dom[i] {
                dom[i] = d;
                changed = true;
            }
        }
    }
    let dominates = |h: usize, u: usize| dom[u][h / 64] >> (h % 64) & 1 == 1;
    let mut loops: BTreeMap<usize, Vec<bool>> = BTreeMap::new();
    for (u, b) in blocks.iter().enumerate() {
        for &h in b.succs.iter().filter(|&&h| h < n && dominates(h, u)) {
            let body = loops.entry(h).or_insert_with(|| vec![false; n]);
            body[h] = true;
            let mut stack = vec![u];
            while let Some(x) = stack.pop() {
                if !body[x] {
                    body[x] = true;
                    stack.extend(preds[x].iter().copied());
                }
            }
        }
    }
    loops
        .into_values()
        .map(|body| (0..n).filter(|&i| body[i]).collect())
        .collect()
}

/// Opcode prefixes of each class, NAK's and ACO's.
const CLASSES: [(Class, &[&str]); 5] = [
    (Class::Matrix, &["hmma", "imma", "v_wmma", "v_swmmac"]),
    (
        Class::SharedLoad,
        &["ldsm", "ld.shared", "lds", "ds_load", "ds_read"],
    ),
    (
        Class::SharedStore,
        &["st.shared", "sts", "ds_store", "ds_write"],
    ),
    (Class::Barrier, &["bar", "s_barrier"]),
    (Class::Scratch, &["ld.local", "st.local", "scratch_"]),
];

fn classify(op: &str) -> Class {
    CLASSES
        .iter()
        .find(|(_, prefixes)| prefixes.iter().any(|p| op.starts_with(p)))
        .map_or(Class::Other, |(c, _)| *c)
}

/// Reads the driver's output: NAK's (`NAK_DEBUG=print`) or RADV's
/// (`RADV_DEBUG=shaders,shaderstats`), delimited by the child's `@@` markers.
struct Parser {
    gpu: String,
    case: String,
    out: Vec<Json>,
    /// The kernel being compiled: its line, then its blocks as the final disassembly
    /// lists them.
    kernel: Option<Json>,
    blocks: Vec<Block>,
    /// Inside the final disassembly (NAK: after `calc_instr_deps`; ACO: `disasm:`).
    in_disasm: bool,
    /// ACO's block labels (`BB12`) to indices.
    labels: HashMap<usize, usize>,
    subgroup_size: Option<u32>,
    errors: Vec<String>,
}

impl Parser {
    fn new(gpu: &str) -> Self {
        Parser {
            gpu: gpu.into(),
            case: String::new(),
            out: Vec::new(),
            kernel: None,
            blocks: Vec::new(),
            in_disasm: false,
            labels: HashMap::new(),
            subgroup_size: None,
            errors: Vec::new(),
        }
    }

    fn line(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("@@") {
            let (tag, body) = rest.split_once(' ').unwrap_or((rest, ""));
            match tag {
                "case" => {
                    self.close();
                    self.case = body.to_string();
                }
                "plan" => {
                    self.close();
                    let mut j = Json::default();
                    j.set_str("gpu", &self.gpu);
                    j.set_str("type", "case");
                    j.set_str("case", &self.case);
                    let (variant, plan) = body.split_once(' ').unwrap_or((body, ""));
                    j.set_str("variant", variant);
                    j.set_str("plan", plan);
                    self.out.push(j);
                }
                "adapter" => {
                    let mut j = Json::default();
                    j.set_str("gpu", &self.gpu);
                    j.set_str("type", "adapter");
                    j.set_str("adapter", body);
                    self.out.push(j);
                }
                "pipeline" => {
                    self.close();
                    let mut j = Json::default();
                    j.set_str("gpu", &self.gpu);
                    j.set_str("case", &self.case);
                    j.set_str("kernel", body);
                    self.kernel = Some(j);
                    self.blocks.clear();
                    self.labels.clear();
                    self.subgroup_size = None;
                }
                "error" => self.errors.push(body.to_string()),
                _ => {}
            }
            return;
        }
        if self.kernel.is_none() {
            return;
        }
        let t = line.trim();
        // NAK.
        if t.starts_with("NAK IR after calc_instr_deps") {
            self.blocks.clear();
            self.in_disasm = true;
            return;
        }
        if t.starts_with("Stage:") || t == "Compute Shader:" {
            self.in_disasm = false;
            return;
        }
        // ACO.
        if t == "disasm:" {
            self.blocks.clear();
            self.labels.clear();
            self.in_disasm = true;
            return;
        }
        if let Some(v) = t.strip_prefix("api_subgroup_size: ") {
            self.subgroup_size = v.parse().ok();
            return;
        }
        if self.in_disasm {
            self.disasm_line(t);
            return;
        }
        if let Some((k, v)) = t.split_once(": ") {
            let key = match k {
                // NAK.
                "Instruction count" => "instructions",
                "Static cycle count" => "static_cycles",
                "Max warps/SM" => "occupancy",
                "Spills to mem" => "spills",
                "Spills to reg" => "spills_to_reg",
                "Num GPRs" => "registers",
                "SLM size" => "scratch_bytes",
                // ACO.
                "SGPRs" => "sgprs",
                "VGPRs" => "registers",
                "Spilled SGPRs" => "spilled_sgprs",
                "Spilled VGPRs" => "spills",
                "Scratch size" => "scratch_bytes",
                "Subgroups per SIMD" => "occupancy",
                "Instructions" => "instructions",
                "Latency" => "static_cycles",
                "Inverse Throughput" => "inverse_throughput",
                "LDS size" => "lds_bytes",
                _ => return,
            };
            if let (Ok(n), Some(j)) = (v.trim().parse::<u64>(), self.kernel.as_mut()) {
                j.set(key, n);
            }
        }
    }

    /// One line of a final disassembly.
    fn disasm_line(&mut self, t: &str) {
        // NAK: `block.u 3 L7 [1, 2] -> {` opens a block, `} -> [4, 9]` closes it.
        if t.starts_with("block") && t.ends_with('{') {
            self.blocks.push(Block::default());
            return;
        }
        if let Some(rest) = t.strip_prefix("} -> [") {
            if let Some(b) = self.blocks.last_mut() {
                b.succs = rest
                    .trim_end_matches(']')
                    .split(',')
                    .filter_map(|s| s.trim().parse().ok())
                    .collect();
            }
            return;
        }
        // ACO: `BB12:` opens a block; branches name their target.
        if let Some(n) = t.strip_prefix("BB").and_then(|r| r.strip_suffix(':')) {
            if let Ok(n) = n.parse::<usize>() {
                self.labels.insert(n, self.blocks.len());
                self.blocks.push(Block::default());
            }
            return;
        }
        let code = t
            .split("//")
            .next()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        if code.is_empty() {
            return;
        }
        let code = code
            .split_once(" = ")
            .map(|(_, r)| r)
            .unwrap_or(code)
            .trim();
        let op = code.split_whitespace().next().unwrap_or("");
        if op.is_empty() || op == "nop" {
            return;
        }
        if self.blocks.is_empty() {
            self.blocks.push(Block::default());
        }
        // (ACO's listing names its blocks; NAK's does not.)
        let aco = !self.labels.is_empty();
        let Some(b) = self.blocks.last_mut() else {
            return;
        };
        if aco
            && (op.starts_with("s_cbranch") || op == "s_branch")
            && let Some(target) = code
                .split_whitespace()
                .nth(1)
                .and_then(|l| l.strip_prefix("BB"))
                .and_then(|n| n.parse::<usize>().ok())
        {
            // A label, resolved to an index in `close`.
            b.targets.push(target);
        }
        b.ops.push(op.to_string());
    }

    /// Finishes the kernel being read: counts, its key loop and the loop's mix.
    fn close(&mut self) {
        let Some(mut j) = self.kernel.take() else {
            return;
        };
        self.in_disasm = false;
        // ACO's listing names only branch targets (by label): a block that does not end in
        // an unconditional branch (or the end) also falls through to the next.
        if !self.labels.is_empty() {
            let n = self.blocks.len();
            for i in 0..n {
                let mut succs: Vec<usize> = self.blocks[i]
                    .targets
                    .iter()
                    .filter_map(|t| self.labels.get(t).copied())
                    .collect();
                let last = self.blocks[i].ops.last().map(String::as_str).unwrap_or("");
                if i + 1 < n && last != "s_branch" && last != "s_endpgm" {
                    succs.push(i + 1);
                }
                self.blocks[i].succs = succs;
            }
        }
        if let Some(s) = self.subgroup_size {
            j.set("subgroup_size", s);
        } else if j.get("occupancy").is_some() && self.labels.is_empty() {
            j.set("subgroup_size", 32);
        }
        let count = |blocks: &[Block], class: Class| {
            blocks
                .iter()
                .flat_map(|b| &b.ops)
                .filter(|o| classify(o) == class)
                .count()
        };
        let all = &self.blocks[..];
        j.set("matrix", count(all, Class::Matrix));
        j.set("shared_loads", count(all, Class::SharedLoad));
        j.set("shared_stores", count(all, Class::SharedStore));
        j.set("barriers", count(all, Class::Barrier));
        j.set("scratch_ops", count(all, Class::Scratch));
        // The key loop: of the natural loops (a branch back to a block that dominates its
        // source, with every block that reaches the source without passing that block), the
        // one with the most matrix instructions, then shared loads, then instructions.
        let mut best: Option<(Vec<usize>, (usize, usize, usize))> = None;
        for body in natural_loops(&self.blocks) {
            let span: Vec<&Block> = body.iter().map(|&i| &self.blocks[i]).collect();
            let n: usize = span.iter().map(|b| b.ops.len()).sum();
            let c = |class| {
                span.iter()
                    .flat_map(|b| &b.ops)
                    .filter(|o| classify(o) == class)
                    .count()
            };
            let score = (c(Class::Matrix), c(Class::SharedLoad), n);
            if best.as_ref().is_none_or(|(_, b)| score > *b) {
                best = Some((body, score));
            }
        }
        if let Some((body, (_, _, n))) = best {
            let span: Vec<Block> = body
                .iter()
                .map(|&i| Block {
                    ops: self.blocks[i].ops.clone(),
                    ..Default::default()
                })
                .collect();
            let span = &span[..];
            let mut lp = Json::default();
            lp.set("blocks", span.len());
            lp.set("instructions", n);
            lp.set("matrix", count(span, Class::Matrix));
            lp.set("shared_loads", count(span, Class::SharedLoad));
            lp.set("shared_stores", count(span, Class::SharedStore));
            lp.set("barriers", count(span, Class::Barrier));
            lp.set("scratch_ops", count(span, Class::Scratch));
            let mut mix: BTreeMap<String, usize> = BTreeMap::new();
            for o in span.iter().flat_map(|b| &b.ops) {
                // The opcode's first part: `ld.shared.strong.cta.b32` -> `ld.shared`.
                let key: String = o.split('.').take(2).collect::<Vec<_>>().join(".");
                *mix.entry(key).or_default() += 1;
            }
            let mut mix: Vec<(String, usize)> = mix.into_iter().collect();
            mix.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut m = Json::default();
            for (k, v) in mix.into_iter().take(16) {
                m.set(&k, v);
            }
            lp.set("mix", m);
            j.set("loop", lp);
        }
        self.blocks.clear();
        self.out.push(j);
    }

    fn finish(mut self) -> Vec<Json> {
        self.close();
        self.out
    }
}

// ---------------------------------------------------------------------------- the checks

/// Whether a kernel line is a hot kernel: a forward or backward attention kernel (not the
/// merge, the block summary or the backward's pre- and post-passes).
fn hot(kernel: &str) -> bool {
    let entry = kernel.rsplit(' ').next().unwrap_or("");
    (kernel.contains("Attention {") && !kernel.contains("Naive"))
        || (kernel.contains("Backward(") && matches!(entry, "kv" | "dq" | "dbias"))
}

/// The head dim of a case named `...-d128-...`.
fn case_dim(case: &str) -> Option<u32> {
    case.split('-')
        .find_map(|p| p.strip_prefix('d').and_then(|n| n.parse().ok()))
}

/// The checks of `--check`: what fails.
fn check(lines: &[Json], baseline: &[Json]) -> Vec<String> {
    let mut fails = Vec::new();
    let key = |j: &Json| {
        (
            j.str("gpu").unwrap_or_default(),
            j.str("kernel").unwrap_or_default(),
        )
    };
    for j in lines.iter().filter(|j| j.get("kernel").is_some()) {
        let (gpu, case, kernel) = (
            j.str("gpu").unwrap_or_default(),
            j.str("case").unwrap_or_default(),
            j.str("kernel").unwrap_or_default(),
        );
        if hot(&kernel) && case_dim(&case).is_some_and(|d| d <= 128) {
            let scratch = j.num("scratch_bytes").unwrap_or(0.0);
            let spills = j.num("spills").unwrap_or(0.0) + j.num("spilled_sgprs").unwrap_or(0.0);
            if scratch > 0.0 || spills > 0.0 {
                fails.push(format!(
                    "{gpu} {case}: {} uses {scratch} bytes of scratch and {spills} spills",
                    short_kernel(&kernel)
                ));
            }
        }
    }
    for j in lines
        .iter()
        .filter(|j| j.str("type").as_deref() == Some("case"))
    {
        let (gpu, case) = (
            j.str("gpu").unwrap_or_default(),
            j.str("case").unwrap_or_default(),
        );
        let coop = j
            .str("variant")
            .is_some_and(|v| v.starts_with("flash_coop"));
        let sixteen = case.starts_with("fwd-f16")
            || case.starts_with("fwd-bf16")
            || case.starts_with("paged-prefill-f16")
            || case.starts_with("quant-prefill");
        if sixteen && case_dim(&case).is_some_and(|d| d <= 128) && !coop {
            fails.push(format!(
                "{gpu} {case}: ran {} rather than the cooperative-matrix kernel",
                j.str("variant").unwrap_or_default()
            ));
        }
    }
    let now: HashMap<_, _> = lines
        .iter()
        .filter(|j| j.get("kernel").is_some())
        .map(|j| (key(j), j))
        .collect();
    let gpus: Vec<String> = lines.iter().filter_map(|j| j.str("gpu")).collect();
    for b in baseline.iter().filter(|j| j.get("kernel").is_some()) {
        let k = key(b);
        if !gpus.contains(&k.0) {
            continue;
        }
        let Some(j) = now.get(&k) else {
            fails.push(format!(
                "{} {}: in the baseline but not compiled now (refresh the baseline if it was retired)",
                k.0, k.1
            ));
            continue;
        };
        if let (Some(was), Some(is)) = (b.num("static_cycles"), j.num("static_cycles"))
            && is > was * 1.10
        {
            fails.push(format!(
                "{} {}: static cycle estimate {is} is more than 10% above the baseline's {was}",
                k.0, k.1
            ));
        }
    }
    fails
}

/// A short table of the hot kernels on standard output.
fn print_table(lines: &[Json]) {
    println!(
        "{:<8} {:<26} {:<40} {:>5} {:>6} {:>7} {:>4} {:>9} {:>6} {:>9}",
        "gpu",
        "case",
        "kernel",
        "regs",
        "spills",
        "scratch",
        "occ",
        "cycles",
        "matrix",
        "loop mma%"
    );
    for j in lines.iter().filter(|j| j.get("kernel").is_some()) {
        let kernel = j.str("kernel").unwrap_or_default();
        let short: String = short_kernel(&kernel);
        let lp = j
            .get("loop")
            .map(|l| parse_lines(l).pop().unwrap_or_default())
            .unwrap_or_default();
        let pct = match (lp.num("matrix"), lp.num("instructions")) {
            (Some(m), Some(n)) if n > 0.0 => format!("{:.1}", 100.0 * m / n),
            _ => "-".into(),
        };
        let n = |k: &str| j.num(k).map(|v| format!("{v}")).unwrap_or("-".into());
        println!(
            "{:<8} {:<26} {:<40} {:>5} {:>6} {:>7} {:>4} {:>9} {:>6} {:>9}",
            j.str("gpu").unwrap_or_default(),
            j.str("case").unwrap_or_default(),
            short,
            n("registers"),
            n("spills"),
            n("scratch_bytes"),
            n("occupancy"),
            n("static_cycles"),
            n("matrix"),
            pct
        );
    }
}

/// `wgpu-attention Attention { variant: FlashCoop(CoopTile { head_dim_qk: 128, ...` ->
/// `FlashCoop qk128 v128 main`.
fn short_kernel(kernel: &str) -> String {
    let entry = kernel.rsplit(' ').next().unwrap_or("");
    let family = [
        "FlashCoop",
        "FlashUnrolled",
        "Flash(",
        "MemoryEfficient",
        "Naive",
        "Backward",
        "Merge",
        "Summary",
    ]
    .iter()
    .find(|f| kernel.contains(*f))
    .map(|f| f.trim_end_matches('('))
    .unwrap_or("?");
    let num = |k: &str| {
        kernel
            .find(k)
            .map(|i| {
                kernel[i + k.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<String>()
            })
            .unwrap_or_default()
    };
    let sg = if kernel.contains("subgroups: true") {
        " sg"
    } else {
        ""
    };
    format!(
        "{family} {}/{}{sg} {entry}",
        num("head_dim_qk: "),
        num("head_dim_v: ")
    )
}

// ---------------------------------------------------------------------------- the child

/// Prints `@@pipeline LABEL` when the crate compiles a pipeline, before the driver does.
struct Marker;

impl log::Log for Marker {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target().starts_with("wgpu_attention")
    }
    fn log(&self, r: &log::Record) {
        let msg = r.args().to_string();
        if let Some(label) = msg.strip_prefix("compiling pipeline ") {
            eprintln!("@@pipeline {label}");
        }
    }
    fn flush(&self) {}
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Whether the case is among those `--cases` names (comma-separated prefixes; all if none).
fn wanted(case: &str) -> bool {
    let only = std::env::var("ISA_REPORT_CASES").unwrap_or_default();
    only.is_empty() || only.split(',').any(|p| case.starts_with(p))
}

fn child() -> Res<()> {
    log::set_logger(&Marker)?;
    log::set_max_level(log::LevelFilter::Debug);
    // SAFETY: the report only compiles pipelines and records no-op submissions.
    let ctx = unsafe { Context::new_experimental_blocking()? };
    let info = ctx.adapter_info();
    eprintln!("@@adapter {} ({})", info.name, info.driver_info);
    let (b, h, s) = (1, 2, 256);
    for dtype in [DType::F16, DType::BF16, DType::F32] {
        for d in [64, 128, 256] {
            // ("serving": causal with Gemma 2's soft cap and gpt-oss's sinks.)
            for mask in ["none", "causal", "bias", "serving"] {
                if mask == "serving" && d > 128 {
                    continue;
                }
                let name = format!("fwd-{}-d{d}-{mask}", dtype.name());
                if !wanted(&name) {
                    continue;
                }
                eprintln!("@@case {name}");
                let t = Io::new(&ctx, dtype, [b, h, s, d], [b, h, s, d])?;
                let opts = t.options(&ctx, mask, dtype)?;
                let plan = ctx.prepare_blocking(t.q.view(), t.k.view(), t.v.view(), &opts)?;
                eprintln!("@@plan {} {}", plan.variant.cost().variant, one_line(&plan));
            }
        }
    }
    for dtype in [DType::F16, DType::F32] {
        for d in [64, 128] {
            let name = format!("memeff-{}-d{d}", dtype.name());
            if !wanted(&name) {
                continue;
            }
            eprintln!("@@case {name}");
            let t = Io::new(&ctx, dtype, [b, h, s, d], [b, h, s, d])?;
            let opts = AttentionOptions::default().backend(Backend::MemoryEfficient);
            let plan = ctx.prepare_blocking(t.q.view(), t.k.view(), t.v.view(), &opts)?;
            eprintln!("@@plan {} {}", plan.variant.cost().variant, one_line(&plan));
            let name = format!("decode-{}-d{d}", dtype.name());
            eprintln!("@@case {name}");
            let t = Io::new(&ctx, dtype, [1, 8, 1, d], [1, 8, 8192, d])?;
            let opts = AttentionOptions::default();
            let plan = ctx.prepare_blocking(t.q.view(), t.k.view(), t.v.view(), &opts)?;
            eprintln!("@@plan decode {}", one_line(&plan));
        }
    }
    // Paged K/V (pages of 16 keys, token-major as vLLM's, key lengths, bottom-right causal):
    // a prefill chunk (flash) and a decode step (the decode path).
    for dtype in [DType::F16, DType::F32] {
        for d in [64, 128] {
            for (kind, sq, sk) in [("prefill", s, s), ("decode", 1, 8192)] {
                let name = format!("paged-{kind}-{}-d{d}", dtype.name());
                if !wanted(&name) {
                    continue;
                }
                eprintln!("@@case {name}");
                let pages = sk / 16;
                let q = ctx.empty([b, h, sq, d], dtype)?;
                let pool = ctx.empty([1, 1, 1, pages * 16 * h * d], dtype)?;
                let kv = TensorView::bshd(pool.buffer().clone(), dtype, [pages, 16, h, d]);
                let mask = Mask::none()
                    .causal(CausalAlignment::BottomRight)
                    .key_lengths(vec![sk as u32 - 3; b]);
                let opts = AttentionOptions::with_mask(mask).paged(PagedKv::new(
                    16,
                    pages,
                    (0..pages as u32).collect(),
                ));
                let plan = ctx.prepare_blocking(q.view(), &kv, &kv, &opts)?;
                eprintln!("@@plan {} {}", plan.variant.cost().variant, one_line(&plan));
            }
        }
    }
    // Quantized K/V (Q f16, d 128, bottom-right causal): a prefill chunk (flash) and a
    // decode step (the decode path), i8's scales behind its rows.
    for fmt in [DType::Q8_0, DType::Q4_0, DType::I8, DType::E4M3] {
        for (kind, sq, sk) in [("prefill", s, s), ("decode", 1, 8192)] {
            let name = format!("quant-{kind}-{}-d128", fmt.name());
            if !wanted(&name) {
                continue;
            }
            eprintln!("@@case {name}");
            let d = 128;
            let rows = b * h * sk;
            let data = (rows as u64 * fmt.bytes(d as u64)).div_ceil(4) * 4;
            let words = (data / 4) as usize + rows;
            let buf = ctx.empty([1, 1, 1, words], DType::F32)?;
            let kv = TensorView::new(
                buf.buffer().clone(),
                fmt,
                [b, h, sk, d],
                [h * sk * d, sk * d, d, 1],
                0,
            );
            let q = ctx.empty([b, h, sq, d], DType::F16)?;
            let mut opts =
                AttentionOptions::with_mask(Mask::none().causal(CausalAlignment::BottomRight));
            if fmt == DType::I8 {
                let sv = TensorView::new(
                    buf.buffer().clone(),
                    DType::F32,
                    [b, h, sk, 1],
                    [h * sk, sk, 1, 1],
                    data,
                );
                opts.kv_scales = Some(KvScales::PerToken {
                    k: sv.clone(),
                    v: sv,
                });
            }
            let plan = ctx.prepare_blocking(q.view(), &kv, &kv, &opts)?;
            eprintln!("@@plan {} {}", plan.variant.cost().variant, one_line(&plan));
        }
    }
    if wanted("merge") {
        eprintln!("@@case merge-d128");
        let parts: Vec<(Tensor, Tensor)> = (0..2)
            .map(|_| -> Res<(Tensor, Tensor)> {
                Ok((
                    ctx.empty([b, h, s, 128], DType::F32)?,
                    ctx.empty([b, h, s, 1], DType::F32)?,
                ))
            })
            .collect::<Res<_>>()?;
        let pairs: Vec<_> = parts.iter().map(|(o, l)| (o.view(), l.view())).collect();
        let merged = ctx.empty([b, h, s, 128], DType::F32)?;
        ctx.merge_blocking(&pairs, merged.view(), None)?;
    }
    if wanted("summary") {
        eprintln!("@@case summary");
        let m = ctx.upload_bool(&vec![true; s * s], [1, 1, s, s])?;
        ctx.block_mask_blocking(m.view())?;
    }
    for dtype in [DType::F16, DType::BF16, DType::F32] {
        for d in [64, 128] {
            for mask in ["none", "causal", "bias", "serving"] {
                let name = format!("bwd-{}-d{d}-{mask}", dtype.name());
                if !wanted(&name) {
                    continue;
                }
                eprintln!("@@case {name}");
                let t = Io::new(&ctx, dtype, [b, h, s, d], [b, h, s, d])?;
                let lse = ctx.empty([b, h, s, 1], DType::F32)?;
                let opts = t.options(&ctx, mask, dtype)?.lse_output(lse.view().clone());
                let grads = GradientViews {
                    dq: ctx.empty([b, h, s, d], dtype)?.view().clone(),
                    dk: ctx.empty([b, h, s, d], dtype)?.view().clone(),
                    dv: ctx.empty([b, h, s, d], dtype)?.view().clone(),
                    dbias: match mask {
                        "bias" => Some(ctx.empty([1, h, s, s], dtype)?.view().clone()),
                        _ => None,
                    },
                    dsink: match mask {
                        "serving" => Some(ctx.empty([1, h, 1, 1], DType::F32)?.view().clone()),
                        _ => None,
                    },
                };
                let inputs = BackwardInputs {
                    q: t.q.view(),
                    k: t.k.view(),
                    v: t.v.view(),
                    out: t.o.view(),
                    d_out: t.o.view(),
                    lse: lse.view(),
                };
                let plan = ctx.prepare_backward_blocking(&inputs, &grads, &opts)?;
                eprintln!(
                    "@@plan backward-{:?} {}",
                    plan.backend,
                    plan.to_string().replace('\n', " ")
                );
            }
        }
    }
    Ok(())
}

fn one_line(plan: &wgpu_attention::dispatch::Plan) -> String {
    plan.to_string().replace('\n', " ")
}

/// One call's tensors (their contents do not matter: nothing runs).
struct Io {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
}

impl Io {
    fn new(ctx: &Context, dtype: DType, qs: [usize; 4], ks: [usize; 4]) -> Res<Io> {
        Ok(Io {
            q: ctx.empty(qs, dtype)?,
            k: ctx.empty(ks, dtype)?,
            v: ctx.empty(ks, dtype)?,
            o: ctx.empty(qs, dtype)?,
        })
    }

    fn options(&self, ctx: &Context, mask: &str, dtype: DType) -> Res<AttentionOptions> {
        let [_, h, s, _] = self.q.view().shape;
        let m = match mask {
            "causal" | "serving" => Mask::none().causal(CausalAlignment::TopLeft),
            "bias" => {
                let bias = ctx.empty(
                    [1, h, s, s],
                    if dtype == DType::F32 {
                        DType::F32
                    } else {
                        DType::F16
                    },
                )?;
                Mask::none().bias(bias.view().clone())
            }
            _ => Mask::none(),
        };
        let opts = AttentionOptions::with_mask(m);
        Ok(match mask {
            "serving" => opts.softcap(30.0).sinks(vec![0.5; h]),
            _ => opts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(gpu: &str, text: &str) -> Vec<Json> {
        let mut p = Parser::new(gpu);
        for line in text.lines() {
            p.line(line);
        }
        p.finish()
    }

    /// NAK's print: the passes before the last are ignored, the final listing's blocks give
    /// the loop (block 1 branches back to itself), the statistics block gives the figures.
    const NAK: &str = "@@case fwd-f16-d128-none
@@plan flash_coop_16x16 flash (...)
@@pipeline wgpu-attention Attention { variant: FlashCoop(CoopTile { head_dim_qk: 128 }), counters: false } main
NAK IR after opt_dce:
block.u 0 L0 [] -> {
      r0 = hmma.m16n8k16.f32 r1 r2 r3 // delay=1
} -> [1]
NAK IR after calc_instr_deps:
block.u 0 L0 [] -> {
      r0       = mov rZ                                           // delay=1
} -> [1]
block.u 1 L1 [0, 1] -> {
      r4..8    = hmma.m16n8k16.f32 r0..4 r4..6 r8..12             // delay=1
      r4..8    = hmma.m16n8k16.f32 r0..4 r4..6 r8..12             // delay=1
      r9       = ld.shared.strong.cta.b32 [r1]                    // delay=1
                 bar.sync 0x0                                     // delay=1
                 nop                                              // delay=1
                 bra pT L1                                        // delay=1
} -> [1, 2]
block.u 2 L2 [1] -> {
                 st.local.strong.cta.b32 [rZ] r0                  // delay=1
} -> []

Stage: compute
Instruction count: 9
Static cycle count: 1234
Max warps/SM: 20
Spills to mem: 0
Spills to reg: 0
Num GPRs: 96
SLM size: 16
Encoded shader:
";

    /// RADV's: the NIR header's subgroup size, the `disasm:` listing (labels, a conditional
    /// branch back to BB1, fall-through edges), the statistics.
    const ACO: &str = "@@case bwd-f16-d64-none
@@pipeline wgpu-attention Backward(BackwardTile { head_dim_qk: 64 }) kv
shader: MESA_SHADER_COMPUTE
api_subgroup_size: 64
disasm:
BB0:
\ts_mov_b32 s0, s3                                            ; be800003
BB1:
\tv_wmma_f32_16x16x16_f16 v[0:7], v[8:15], v[16:23], v[0:7] ; 00000000
\tds_load_b128 v[0:3], v4                                      ; 00000000
\ts_barrier                                                    ; 00000000
\ts_cbranch_scc1 BB1                                           ; 00000000
BB2:
\ts_endpgm                                                     ; bfb00000

Compute Shader:
*** SHADER STATS ***
SGPRs: 108
VGPRs: 120
Spilled SGPRs: 3
Spilled VGPRs: 0
Scratch size: 0
Subgroups per SIMD: 6
Latency: 50240
Inverse Throughput: 10000
";

    #[test]
    fn nak_figures_and_the_key_loop() {
        let out = parse("ampere", NAK);
        let plan = out
            .iter()
            .find(|j| j.str("type").as_deref() == Some("case"));
        assert_eq!(
            plan.and_then(|j| j.str("variant")).as_deref(),
            Some("flash_coop_16x16")
        );
        let k = out
            .iter()
            .find(|j| j.get("kernel").is_some())
            .expect("a kernel line");
        assert_eq!(k.num("registers"), Some(96.0));
        assert_eq!(k.num("scratch_bytes"), Some(16.0));
        assert_eq!(k.num("static_cycles"), Some(1234.0));
        assert_eq!(k.num("occupancy"), Some(20.0));
        // Counted from the final listing only (the earlier pass's hmma does not count).
        assert_eq!(k.num("matrix"), Some(2.0));
        assert_eq!(k.num("shared_loads"), Some(1.0));
        assert_eq!(k.num("barriers"), Some(1.0));
        assert_eq!(k.num("scratch_ops"), Some(1.0));
        let lp = parse_lines(k.get("loop").expect("a key loop"))
            .pop()
            .expect("loop");
        assert_eq!(lp.num("blocks"), Some(1.0));
        assert_eq!(lp.num("matrix"), Some(2.0));
        // mov, 2 hmma, ld, bar, bra (nop is not counted).
        assert_eq!(lp.num("instructions"), Some(5.0));
    }

    #[test]
    fn aco_figures_and_the_key_loop() {
        let out = parse("navi31", ACO);
        let k = out
            .iter()
            .find(|j| j.get("kernel").is_some())
            .expect("a kernel line");
        assert_eq!(k.num("registers"), Some(120.0));
        assert_eq!(k.num("spilled_sgprs"), Some(3.0));
        assert_eq!(k.num("subgroup_size"), Some(64.0));
        assert_eq!(k.num("static_cycles"), Some(50240.0));
        assert_eq!(k.num("matrix"), Some(1.0));
        let lp = parse_lines(k.get("loop").expect("a key loop"))
            .pop()
            .expect("loop");
        assert_eq!(lp.num("blocks"), Some(1.0));
        assert_eq!(lp.num("instructions"), Some(4.0));
        assert_eq!(lp.num("shared_loads"), Some(1.0));
    }

    #[test]
    fn the_checks_fail_on_scratch_spills_fallbacks_and_slower_kernels() {
        let nak = parse("ampere", NAK);
        let aco = parse("navi31", ACO);
        let mut all = nak.clone();
        all.extend(aco.clone());
        let fails = check(&all, &all);
        // The NAK kernel's 16 bytes of scratch, the ACO kernel's SGPR spills.
        assert_eq!(fails.len(), 2, "{fails:?}");
        assert!(fails[0].contains("16 bytes of scratch"), "{fails:?}");
        assert!(fails[1].contains("3 spills"), "{fails:?}");
        // Clean kernels against a baseline whose estimate was lower by more than 10%, one
        // kernel the baseline has that is gone, and an f16 call off the tensor cores.
        let clean = |mut j: Json| {
            j.set("scratch_bytes", 0);
            j.set("spilled_sgprs", 0);
            j
        };
        let now: Vec<Json> = all.iter().cloned().map(clean).collect();
        assert!(check(&now, &now).is_empty());
        let mut base = now.clone();
        for j in base.iter_mut().filter(|j| j.get("kernel").is_some()) {
            j.set("static_cycles", 1000);
        }
        let mut gone = now[0].clone();
        gone.set_str("kernel", "a retired kernel");
        gone.set_str("type", "kernel");
        base.push(gone);
        let mut simt = now.clone();
        for j in simt
            .iter_mut()
            .filter(|j| j.str("type").as_deref() == Some("case"))
        {
            j.set_str("variant", "flash_simt_subgroup");
        }
        let fails = check(&simt, &base);
        assert!(
            fails.iter().any(|f| f.contains("more than 10% above")),
            "{fails:?}"
        );
        assert!(
            fails.iter().any(|f| f.contains("retired kernel")),
            "{fails:?}"
        );
        assert!(
            fails
                .iter()
                .any(|f| f.contains("rather than the cooperative-matrix")),
            "{fails:?}"
        );
    }
}
