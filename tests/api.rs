//! The small pieces of the public API that planning and logging read: the mask builder's
//! accessors and description, and the mask kinds of a validated problem.

mod common;

use common::*;
use wgpu_attention::validate::MaskKinds;
use wgpu_attention::{CausalAlignment, DType, Mask, Window};

#[test]
fn mask_accessors_and_description() {
    let none = Mask::none();
    assert!(none.is_empty() && !none.is_causal());
    assert_eq!(none.alignment(), CausalAlignment::TopLeft);
    assert_eq!(none.describe(), "none");

    let causal = Mask::none().causal(CausalAlignment::BottomRight);
    assert!(causal.is_causal() && !causal.is_empty());
    assert_eq!(causal.alignment(), CausalAlignment::BottomRight);
    assert_eq!(causal.describe(), "causal(bottom-right)");
    assert_eq!(
        Mask::none().causal(CausalAlignment::TopLeft).describe(),
        "causal(top-left)"
    );
    // An alignment alone is not a mask.
    let aligned = Mask::none().with_alignment(CausalAlignment::BottomRight);
    assert!(aligned.is_empty() && !aligned.is_causal());
    assert_eq!(aligned.alignment(), CausalAlignment::BottomRight);

    let ctx = ctx();
    let bools = ctx.upload_bool(&[true; 4], [1, 1, 2, 2]).unwrap();
    let bias = ctx.upload_f32(&[0.0; 4], [1, 1, 2, 2]).unwrap();
    // Each kind alone makes the mask non-empty and names itself.
    let kinds: [(Mask, &str); 6] = [
        (Mask::none().key_lengths(vec![1]), "key_lengths"),
        (Mask::none().query_lengths(vec![1]), "query_lengths"),
        (Mask::none().window(Some(3), None), "window(Some(3),None)"),
        (Mask::none().bool_mask(bools.view().clone()), "bool_mask"),
        (Mask::none().bias(bias.view().clone()), "bias"),
        (Mask::none().alibi(vec![0.5]), "alibi"),
    ];
    for (m, name) in &kinds {
        assert!(!m.is_empty() && !m.is_causal(), "{name}");
        assert_eq!(m.describe(), *name);
    }
    let all = Mask::none()
        .causal(CausalAlignment::TopLeft)
        .key_lengths(vec![1])
        .query_lengths(vec![1])
        .window(None, Some(2))
        .bool_mask(bools.view().clone())
        .bias(bias.view().clone())
        .alibi(vec![0.5]);
    assert_eq!(
        all.describe(),
        "causal(top-left)+key_lengths+query_lengths+window(None,Some(2))+bool_mask+bias+alibi"
    );
}

#[test]
fn mask_kinds_any_and_score_terms() {
    let none = MaskKinds::default();
    assert!(!none.any() && !none.score_terms());
    let each = [
        MaskKinds {
            causal: true,
            ..Default::default()
        },
        MaskKinds {
            key_lengths: true,
            ..Default::default()
        },
        MaskKinds {
            query_lengths: true,
            ..Default::default()
        },
        MaskKinds {
            window: Some(Window::default()),
            ..Default::default()
        },
        MaskKinds {
            bool_mask: true,
            ..Default::default()
        },
        MaskKinds {
            bias: Some(DType::F16),
            ..Default::default()
        },
        MaskKinds {
            alibi: true,
            ..Default::default()
        },
    ];
    for (i, k) in each.iter().enumerate() {
        assert!(k.any(), "{k:?}");
        // Only a bias and ALiBi add a term read at run time to every score.
        assert_eq!(k.score_terms(), i >= 5, "{k:?}");
    }
    // The plan says where the mask goes exactly when there is one.
    let caps = wgpu_attention::dispatch::DeviceCaps::webgpu_default();
    let plain = wgpu_attention::Problem::new(1, 2, 64, 64, 64);
    let masked = wgpu_attention::Problem {
        mask: each[0].clone(),
        ..plain.clone()
    };
    let why = |p| {
        wgpu_attention::dispatch::plan(p, &caps, &Default::default())
            .unwrap()
            .reason
    };
    assert!(!why(&plain).contains("mask"), "{}", why(&plain));
    assert!(
        why(&masked).contains("mask is applied inside"),
        "{}",
        why(&masked)
    );
}
