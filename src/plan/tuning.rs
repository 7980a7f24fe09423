//! Per-adapter tuning of the flash tiles, as data: the shape buckets, the table a context
//! keeps, the tile configurations worth timing, and the table's text form. The timing runs
//! live in `ops::tune`.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::data::options::Tuning;
use crate::data::problem::Problem;
use crate::data::tensor::DType;
use crate::error::{Error, InputProblem, Result, TensorRole};
use crate::plan::dispatch::{FLASH_HEAD_DIMS, bucket};

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

    pub(crate) fn set(&self, bucket: ShapeBucket, t: Tuning) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(bucket, t);
        }
    }

    pub(crate) fn entries(&self) -> Vec<(ShapeBucket, Tuning)> {
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

fn bad_table(what: String) -> Error {
    Error::invalid(
        TensorRole::Options,
        InputProblem::Other(format!("tuning table: {what}")),
    )
}

/// The tile configurations a tuning run times (native only, as tuning is; those that do not
/// fit an adapter are skipped by the dispatcher's checks).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn candidates() -> impl Iterator<Item = Tuning> {
    use crate::plan::dispatch::{SUBGROUP_THREADS_PER_ROW, UNROLLED_ROWS_PER_THREAD};
    [1, SUBGROUP_THREADS_PER_ROW].into_iter().flat_map(|tpr| {
        [8, 16, 32].into_iter().flat_map(move |bk| {
            [1, 2, 4, UNROLLED_ROWS_PER_THREAD].map(|rpt| Tuning {
                flash_rows_per_thread: Some(rpt),
                flash_block_k: Some(bk),
                flash_threads_per_row: Some(tpr),
                coop_rescale_slack: None,
            })
        })
    })
}

impl TuningTable {
    /// The table as text, one line per bucket.
    pub(crate) fn to_text(&self) -> String {
        let mut text = String::from(
            "# wgpu-attention tuning: dk dv log2(sq) log2(sk) dtype block_k rows_per_thread threads_per_row\n",
        );
        for (b, t) in self.entries() {
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
        text
    }

    /// Reads a table written by [`TuningTable::to_text`] into this one; returns how many
    /// buckets it held.
    pub(crate) fn load_text(&self, text: &str) -> Result<usize> {
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
                        coop_rescale_slack: None,
                    },
                ))
            })();
            match parsed {
                Some((b, t)) => {
                    self.set(b, t);
                    n += 1;
                }
                _ => {
                    return Err(bad_table(format!(
                        "line {}: expected 8 fields (or 7), got {line:?}",
                        i + 1
                    )));
                }
            }
        }
        Ok(n)
    }
}
