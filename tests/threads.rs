//! One context shared by eight threads at once, each running its own shapes, masks and
//! backends, checked against the reference: on the default adapter and on wgpu's GL backend,
//! whose driver context wgpu-hal locks for at most 6 s before panicking (llvmpipe compiles a
//! flash pipeline for longer than that with a cold shader cache).

mod common;

use common::*;
use wgpu_attention::{Backend, CausalAlignment, Context, DType, Window};

/// The eight threads' cases: different shapes, GQA, masks and backends.
fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for t in 0..8usize {
        let (sq, sk) = (
            [7, 59, 33, 113, 1, 64, 20, 41][t],
            [9, 59, 70, 100, 300, 64, 20, 17][t],
        );
        // Head dim 64: llvmpipe compiles this flash variant for about 20 s, far past the 6 s
        // that wgpu-hal waits for its GL context lock.
        let mut c = Case::new(2, 4, sq, sk, 64).backend(
            [
                Backend::Auto,
                Backend::Naive,
                Backend::MemoryEfficient,
                Backend::Flash,
            ][t % 4],
        );
        c.hkv = [4, 2, 1, 4][t % 4];
        c.seed = t as u64;
        c.mask = match t % 4 {
            0 => MaskSpec::default(),
            1 => MaskSpec {
                causal: Some(CausalAlignment::BottomRight),
                key_lengths: Some(vec![sk as u32, (sk / 2) as u32]),
                ..Default::default()
            },
            2 => MaskSpec {
                window: Some(Window {
                    left: Some(5),
                    right: Some(2),
                }),
                bias: Some((
                    random(4 * sq * sk, 40 + t as u64),
                    [1, 4, sq, sk],
                    DType::F32,
                )),
                ..Default::default()
            },
            _ => MaskSpec {
                bool_mask: Some((random_bool(2 * sq * sk, t as u64, 0.6), [2, 1, sq, sk])),
                alibi: Some(vec![0.1, 0.2, 0.3, 0.4]),
                ..Default::default()
            },
        };
        out.push(c);
    }
    out
}

/// Thread `t` uses context `t % contexts.len()`.
fn eight_threads(contexts: &[&Context]) {
    std::thread::scope(|s| {
        for (t, c) in cases().into_iter().enumerate() {
            let ctx = contexts[t % contexts.len()];
            s.spawn(move || check(ctx, &c));
        }
    });
}

#[test]
fn eight_threads_share_the_default_context() {
    eight_threads(&[ctx()]);
}

#[test]
fn eight_threads_share_a_gl_context() {
    match Context::with_backends_blocking(wgpu::Backends::GL) {
        Ok(gl) => {
            assert_eq!(gl.adapter_info().backend, wgpu::Backend::Gl);
            eight_threads(&[&gl]);
        }
        Err(e) => {
            if std::env::var("WGPU_ATTENTION_REQUIRE_GL").is_ok_and(|v| v == "1") {
                panic!("WGPU_ATTENTION_REQUIRE_GL=1 but no GL adapter: {e}");
            }
            eprintln!("no GL adapter ({e}); the GL half of this test did not run");
        }
    }
}

/// The async entry points stay `Send` (the GL lock is never held across an await), so they
/// can be spawned on a multi-threaded executor.
#[test]
fn async_entry_points_are_send() {
    fn send<T: Send>(_: &T) {}
    let ctx = ctx();
    let opening = Context::new();
    send(&opening);
    drop(opening);
    let t = ctx.upload_f32(&[1.0; 4], [1, 1, 1, 4]).unwrap();
    let download = ctx.download_f32(&t);
    send(&download);
    assert_eq!(pollster::block_on(download).unwrap(), vec![1.0; 4]);
}

/// Two contexts over one GL device of the caller's (`from_device`) share its lock too.
#[test]
fn two_contexts_over_one_gl_device() {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = wgpu::Backends::GL;
    let instance = wgpu::Instance::new(desc);
    let adapter = match pollster::block_on(instance.request_adapter(&Default::default())) {
        Ok(a) => a,
        Err(e) => {
            if std::env::var("WGPU_ATTENTION_REQUIRE_GL").is_ok_and(|v| v == "1") {
                panic!("WGPU_ATTENTION_REQUIRE_GL=1 but no GL adapter: {e}");
            }
            eprintln!("no GL adapter ({e}); this test did not run");
            return;
        }
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .expect("a GL device");
    let info = adapter.get_info();
    let a = Context::from_device(device.clone(), queue.clone(), &info);
    let b = Context::from_device(device, queue, &info);
    eight_threads(&[&a, &b]);
    drop((a, b));
    // The caller's adapter is the caller's to drop: no context is at work any more.
    drop(adapter);
}
