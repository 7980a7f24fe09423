// The masked online softmax, written once for every flash family, the memory-efficient
// kernel and the decode split. A row's state is (m, l): m the reference its exponentials
// are taken against, l the sum of exp(s - m) over the logits folded in so far; the row's
// accumulators hold the sum of exp(s - m)·v. A logit takes part only where the mask shows
// its key and it is finite (`finite_logit`): -inf from a bias, and NaN, mask it.
//
// The output acc / l and the log-sum-exp m + log(l) do not depend on the reference, so m
// need not be the running maximum: it only has to keep the exponentials in range. The
// SIMT kernels keep the exact running max (slack 0: every weight ≤ 1); the
// cooperative-matrix kernel, whose accumulators are opaque fragments that cost a round trip
// through workgroup memory to rescale by row, moves m only when a tile's max exceeds it by
// more than a slack of 8 (FlashAttention-4's lazy rescaling: weights ≤ e^8, in range for
// the f16 P that feeds the tensor cores).

struct Online {
    m: f32,
    l: f32,
    // The factor that moved l, and must move the accumulators, to the new m (1: unmoved).
    alpha: f32,
}

fn online_init() -> Online {
    return Online(LOWEST, 0.0, 1.0);
}

// Folds in a tile whose visible logits have the maximum `tile_max` (LOWEST where none is
// visible, which leaves the state as it is). Branch-free: CPU drivers run both sides of a
// branch.
fn online_fold(st: Online, tile_max: f32, slack: f32) -> Online {
    var r: Online;
    // (The difference, not st.m + slack, which rounds away the slack where |m| is large.)
    r.m = select(st.m, tile_max, tile_max - st.m > slack);
    r.alpha = exp(st.m - r.m);
    r.l = st.l * r.alpha;
    return r;
}

// Whether a fold moved a reference that accumulators depend on (l > 0), so that they must
// be rescaled.
fn online_moved(before: Online, after: Online) -> bool {
    return before.l > 0.0 && after.m != before.m;
}

// The weight of a logit against the state's reference (0 for one that is not visible).
fn online_weight(s: f32, vis: bool, st: Online) -> f32 {
    return select(0.0, exp(s - st.m), vis);
}

// Folds a logit that has no value (an attention sink) into a row's finished state: it joins
// the denominator l only. `alpha` is then the factor the accumulators need (applied with
// 1 / l: see online_out_scale). A sink of LOWEST is no sink: the state stays as it is. A
// row that saw no key (l = 0) gets l = 1 and alpha = 0: output 0, log-sum-exp the sink.
fn online_sink(st: Online, sink: f32) -> Online {
    let on = sink > LOWEST;
    var r: Online;
    r.m = select(st.m, max(st.m, sink), on);
    r.alpha = exp(st.m - r.m);
    r.l = st.l * r.alpha + select(0.0, exp(sink - r.m), on);
    return r;
}

// The factor that turns a row's accumulators into its output, a sink folded in: alpha / l
// (0 for a row whose l is 0).
fn online_out_scale(st: Online) -> f32 {
    if (st.l > 0.0) { return st.alpha / st.l; }
    return 0.0;
}

// 1 / l: the factor that turns a row's accumulators into its output (0 for a row that saw
// no key, whose output is 0).
fn online_inv(st: Online) -> f32 {
    if (st.l > 0.0) { return 1.0 / st.l; }
    return 0.0;
}
