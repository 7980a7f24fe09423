//! Tuning runs: time the flash tile configurations that fit an adapter on the caller's
//! inputs and remember the fastest (native only: it reads the wall clock).

use std::time::Instant;

use crate::data::options::{AttentionOptions, Backend};
use crate::data::tensor::TensorView;
use crate::error::{Error, Result};
use crate::ops::attention::{self, call_buffers};
use crate::plan::dispatch::flash_variant;
use crate::plan::tuning::{ShapeBucket, TuneReport, candidates};
use crate::plan::validate;
use crate::runtime::Runtime;
use crate::runtime::submit::Waiting;

/// Times every candidate tile configuration (median of `iters` runs after one warm-up),
/// stores the fastest for the problem's bucket, and reports what it measured.
pub(crate) async fn tune(
    rt: &Runtime,
    [q, k, v]: [&TensorView; 3],
    opts: &AttentionOptions,
    iters: usize,
    how: Waiting,
) -> Result<TuneReport> {
    let p = validate::validate(q, k, v, None, opts)?;
    let bucket = ShapeBucket::of(&p);
    let out = rt.empty([p.batch, p.heads_q, p.seq_q, p.head_dim_v], p.dtype_o)?;
    let mut results = Vec::new();
    for tuning in candidates() {
        let trial = AttentionOptions {
            tuning,
            backend: Backend::Flash,
            lse_output: None,
            ..opts.clone()
        };
        if flash_variant(&p, rt.caps(), &trial).is_err() {
            continue; // does not fit this adapter
        }
        let mut times = Vec::new();
        for i in 0..=iters.max(1) {
            let t0 = Instant::now();
            let buffers = || call_buffers(q, k, v, Some(out.view()), &trial);
            rt.submit_scoped("tuning attention", buffers, |rt, enc| {
                attention::record(rt, enc, q, k, v, out.view(), &trial, None)
            })
            .await?;
            rt.wait(how).await?;
            if i > 0 {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        results.push((tuning, times[times.len() / 2]));
    }
    let best = results
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|r| r.0)
        .ok_or_else(|| Error::backend("no flash tile configuration fits this adapter"))?;
    rt.tuning().set(bucket, best);
    log::debug!("tuned {bucket:?}: {best:?} from {results:?}");
    Ok(TuneReport {
        bucket,
        results,
        best,
    })
}
