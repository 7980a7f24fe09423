//! Tuning: time the flash tile configurations on this adapter, remember the winner per
//! shape bucket, report it in `plan`, save and load it.

mod common;

use common::*;
use wgpu_attention::error::TensorRole;
use wgpu_attention::{AttentionOptions, Backend, Context, Error, Subgroups};

#[test]
fn tune_remember_save_load() {
    let (info, device, queue) = own_device(|l| l);
    let ctx = Context::from_device(device, queue, &info);
    let shape = [1, 2, 96, 32];
    let n = 2 * 96 * 32;
    let q = ctx.upload_f32(&random(n, 1), shape).unwrap();
    let k = ctx.upload_f32(&random(n, 2), shape).unwrap();
    let v = ctx.upload_f32(&random(n, 3), shape).unwrap();
    let opts = AttentionOptions::default().subgroups(Subgroups::Off);
    let before = ctx.plan(q.view(), k.view(), v.view(), &opts).unwrap();
    assert!(!before.reason.contains("tuned"));

    let report = ctx
        .tune_blocking(q.view(), k.view(), v.view(), &opts, 1)
        .unwrap();
    assert!(report.results.len() >= 4, "{report:?}");
    let fastest = report
        .results
        .iter()
        .map(|r| r.1)
        .fold(f64::INFINITY, f64::min);
    assert!(
        report
            .results
            .iter()
            .any(|r| r.0 == report.best && r.1 == fastest)
    );

    let after = ctx.plan(q.view(), k.view(), v.view(), &opts).unwrap();
    assert_eq!(after.backend, Backend::Flash);
    assert!(after.reason.contains("tuned"), "{}", after.reason);
    assert_eq!(Some(after.variant.block_k()), report.best.flash_block_k);
    assert_eq!(
        Some(after.variant.rows_per_thread()),
        report.best.flash_rows_per_thread
    );
    assert_eq!(
        Some(after.variant.threads_per_row()),
        report.best.flash_threads_per_row
    );

    // Results with the tuned tiles are still right.
    let mut c = Case::new(1, 2, 96, 96, 32);
    c.subgroups = Subgroups::Off;
    check(&ctx, &c);

    // Save, load into a fresh context, and the plan is tuned there too.
    let path =
        std::env::temp_dir().join(format!("wgpu-attention-tuning-{}.txt", std::process::id()));
    ctx.save_tuning(&path).unwrap();
    let (info2, device2, queue2) = own_device(|l| l);
    let fresh = Context::from_device(device2, queue2, &info2);
    assert_eq!(fresh.load_tuning(&path).unwrap(), 1);
    let loaded = fresh.plan(q.view(), k.view(), v.view(), &opts).unwrap();
    assert!(loaded.reason.contains("tuned"));
    assert_eq!(loaded.variant, after.variant);

    // A table written before the threads-per-row column still loads (the dispatcher then
    // picks the threads per row).
    let legacy = format!(
        "{} {} 7 7 f32 8 1\n",
        after.variant.head_dim_qk(),
        after.variant.head_dim_v()
    );
    std::fs::write(&path, legacy).unwrap();
    assert_eq!(fresh.load_tuning(&path).unwrap(), 1);
    let old = fresh.plan(q.view(), k.view(), v.view(), &opts).unwrap();
    assert_eq!(
        (old.variant.block_k(), old.variant.rows_per_thread()),
        (8, 1)
    );

    // A malformed file is a typed error naming the line.
    std::fs::write(&path, "64 64 7 7 f32 16\n").unwrap();
    match fresh.load_tuning(&path) {
        Err(Error::InvalidInput(e)) => {
            assert_eq!(e.tensor, TensorRole::Options);
            assert!(e.to_string().contains("line 1"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_file(&path);
}
