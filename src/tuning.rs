//! Per-adapter tuning of the flash tiles: time a few tile configurations on the caller's own
//! inputs, remember the winner for the shape's bucket for the life of the [`Context`], and
//! optionally save the table to a file the caller names.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::context::Context;
use crate::dispatch::{
    FLASH_HEAD_DIMS, SUBGROUP_THREADS_PER_ROW, UNROLLED_ROWS_PER_THREAD, bucket, flash_variant,
};
use crate::error::{Error, InputProblem, Result, TensorRole};
use crate::options::{AttentionOptions, Backend, Tuning};
use crate::tensor::{DType, TensorView};
use crate::validate::Problem;

/// The shapes that share a tuned configuration: head-dim buckets, sequence lengths rounded
/// up to powers of two, and the storage dtype of Q.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShapeBucket {
    /// Q/K head-dim bucket.
    pub head_dim_qk: u32,
    /// V head-dim bucket.
    pub head_dim_v: u32,
    /// `ceil(log2(seq_q))`.
    pub seq_q_log2: u32,
    /// `ceil(log2(seq_k))`.
    pub seq_k_log2: u32,
    /// Q's storage dtype.
    pub dtype: DType,
}

impl ShapeBucket {
    /// The bucket of a problem.
    pub fn of(p: &Problem) -> Self {
        let b = |d: usize| bucket(&FLASH_HEAD_DIMS, d).unwrap_or(d as u32);
        ShapeBucket {
            head_dim_qk: b(p.head_dim_qk),
            head_dim_v: b(p.head_dim_v),
            seq_q_log2: p.seq_q.next_power_of_two().trailing_zeros(),
            seq_k_log2: p.seq_k.next_power_of_two().trailing_zeros(),
            dtype: p.dtype_q,
        }
    }
}

/// What a tuning run measured.
#[derive(Clone, Debug)]
pub struct TuneReport {
    /// The bucket tuned.
    pub bucket: ShapeBucket,
    /// Every configuration that ran, with its median time in milliseconds.
    pub results: Vec<(Tuning, f64)>,
    /// The fastest; now used for this bucket.
    pub best: Tuning,
}

/// The tuned table of a context.
#[derive(Debug, Default)]
pub(crate) struct TuningTable {
    map: Mutex<HashMap<ShapeBucket, Tuning>>,
}

impl TuningTable {
    pub(crate) fn get(&self, bucket: &ShapeBucket) -> Option<Tuning> {
        self.map.lock().ok()?.get(bucket).copied()
    }

    fn set(&self, bucket: ShapeBucket, t: Tuning) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(bucket, t);
        }
    }

    fn entries(&self) -> Vec<(ShapeBucket, Tuning)> {
        self.map
            .lock()
            .map(|m| m.iter().map(|(b, t)| (*b, *t)).collect())
            .unwrap_or_default()
    }
}

fn dtype_name(d: DType) -> &'static str {
    d.name()
}

fn parse_dtype(s: &str) -> Option<DType> {
    match s {
        "f32" => Some(DType::F32),
        "f16" => Some(DType::F16),
        "bf16" => Some(DType::BF16),
        _ => None,
    }
}

fn bad_file(path: &std::path::Path, what: String) -> Error {
    Error::invalid(
        TensorRole::Options,
        InputProblem::Other(format!("tuning file {}: {what}", path.display())),
    )
}

impl Context {
    /// Times the flash tile configurations that fit this adapter on these inputs (random
    /// data of the caller's shapes, outputs discarded), remembers the fastest for the
    /// problem's [`ShapeBucket`] for the life of this context, and reports what it measured.
    /// Later calls of that bucket (and [`Context::plan`]) use the tuned tiles unless the
    /// call sets [`AttentionOptions::tuning`] itself.
    pub fn tune(
        &self,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        opts: &AttentionOptions,
        iters: usize,
    ) -> Result<TuneReport> {
        let p = crate::validate::validate(q, k, v, None, opts)?;
        let bucket = ShapeBucket::of(&p);
        let out = self.empty([p.batch, p.heads_q, p.seq_q, p.head_dim_v], p.dtype_o)?;
        let mut results = Vec::new();
        let configs = [1, SUBGROUP_THREADS_PER_ROW].into_iter().flat_map(|tpr| {
            [8, 16, 32]
                .into_iter()
                .flat_map(move |bk| [1, 2, 4, UNROLLED_ROWS_PER_THREAD].map(|rpt| (tpr, bk, rpt)))
        });
        for (tpr, bk, rpt) in configs {
            let tuning = Tuning {
                flash_rows_per_thread: Some(rpt),
                flash_block_k: Some(bk),
                flash_threads_per_row: Some(tpr),
            };
            let trial = AttentionOptions {
                tuning,
                backend: Backend::Flash,
                lse_output: None,
                ..opts.clone()
            };
            if flash_variant(&p, self.caps(), &trial).is_err() {
                continue; // does not fit this adapter
            }
            let mut times = Vec::new();
            for i in 0..=iters.max(1) {
                let t0 = Instant::now();
                self.attention_into(q, k, v, out.view(), &trial)?;
                self.wait()?;
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
        self.tuning_table().set(bucket, best);
        log::debug!("tuned {bucket:?}: {best:?} from {results:?}");
        Ok(TuneReport {
            bucket,
            results,
            best,
        })
    }

    /// The tuned tiles for a problem's bucket, if any.
    pub fn tuned(&self, problem: &Problem) -> Option<Tuning> {
        self.tuning_table().get(&ShapeBucket::of(problem))
    }

    /// Writes the tuned table to `path` (one line per bucket).
    pub fn save_tuning(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        let mut text = String::from(
            "# wgpu-attention tuning: dk dv log2(sq) log2(sk) dtype block_k rows_per_thread threads_per_row\n",
        );
        for (b, t) in self.tuning_table().entries() {
            text.push_str(&format!(
                "{} {} {} {} {} {} {} {}\n",
                b.head_dim_qk,
                b.head_dim_v,
                b.seq_q_log2,
                b.seq_k_log2,
                dtype_name(b.dtype),
                t.flash_block_k.unwrap_or(0),
                t.flash_rows_per_thread.unwrap_or(0),
                t.flash_threads_per_row.unwrap_or(0)
            ));
        }
        std::fs::write(path, text).map_err(|e| bad_file(path, e.to_string()))
    }

    /// Reads a table written by [`Context::save_tuning`] into this context; returns how many
    /// buckets it held. A table from another adapter loads, but a tile that does not fit
    /// this adapter makes its calls fail with [`Error::Unsupported`]: tune per adapter.
    pub fn load_tuning(&self, path: impl AsRef<std::path::Path>) -> Result<usize> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| bad_file(path, e.to_string()))?;
        let mut n = 0;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |j: usize| f.get(j).and_then(|s| s.parse::<u32>().ok());
            let parsed = (|| {
                Some((
                    ShapeBucket {
                        head_dim_qk: num(0)?,
                        head_dim_v: num(1)?,
                        seq_q_log2: num(2)?,
                        seq_k_log2: num(3)?,
                        dtype: parse_dtype(f.get(4)?)?,
                    },
                    Tuning {
                        flash_block_k: Some(num(5)?),
                        flash_rows_per_thread: Some(num(6)?),
                        // Tables written before this column existed leave the choice to
                        // the dispatcher.
                        flash_threads_per_row: match f.len() {
                            7 => None,
                            8 => Some(num(7)?),
                            _ => return None,
                        },
                    },
                ))
            })();
            match parsed {
                Some((b, t)) => {
                    self.tuning_table().set(b, t);
                    n += 1;
                }
                _ => {
                    return Err(bad_file(
                        path,
                        format!("line {}: expected 8 fields (or 7), got {line:?}", i + 1),
                    ));
                }
            }
        }
        Ok(n)
    }
}
