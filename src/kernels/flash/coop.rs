//! The cooperative-matrix kernel's rounds through workgroup memory, written out per variant.
//!
//! Rescaling the accumulators and writing the output both take each accumulator fragment
//! through the subgroup's score scratch, `BC / FR` fragments a round. A loop over the rounds
//! would index the fragment array by a variable (which puts it in scratch memory) unless the
//! driver unrolls it, and drivers do not unroll a loop body as large as the output's stores.
//! So the rounds are written out here, every fragment named by a constant; the per-row work of
//! a round is a WGSL function (`rescale_round`, `output_round` in `shaders/flash_coop.wgsl`)
//! whose small loops the driver does unroll.

use std::fmt::Write;

use crate::plan::variant::CoopTile;

/// The rounds' first fragments, and the fragments a round holds.
fn rounds(t: &CoopTile) -> (Vec<u32>, u32) {
    let fr = t.fragment.max(1);
    let per_round = (t.block_k / fr).max(1);
    let dvf = t.head_dim_v / fr;
    ((0..dvf).step_by(per_round as usize).collect(), per_round)
}

/// A round's stores of its fragments into the row block's scratch (each by the way that
/// holds it).
fn store_round(s: &mut String, f0: u32, per: u32, indent: &str) {
    for x in 0..per {
        let f = f0 + x;
        let _ = writeln!(
            s,
            "{indent}if ({f}u % ways == way) {{ coopStoreT(acc[{f}], &ss[off + {x}u * FR], BC); }}"
        );
    }
}

/// The statements of the lazy rescale (inside `if (rescale) { ... }`).
pub(crate) fn rescale_source(t: &CoopTile) -> String {
    let (rounds, per) = rounds(t);
    let mut s = String::new();
    let ind = "            ";
    let _ = writeln!(s, "{ind}let off = row0 * BC;");
    for f0 in rounds {
        let _ = writeln!(s, "{ind}{{");
        store_round(&mut s, f0, per, "                ");
        let _ = writeln!(s, "{ind}    workgroupBarrier();");
        let _ = writeln!(s, "{ind}    rescale_round(off, ln, alpha);");
        let _ = writeln!(s, "{ind}    workgroupBarrier();");
        for x in 0..per {
            let f = f0 + x;
            let _ = writeln!(
                s,
                "{ind}    if ({f}u % ways == way) {{ acc[{f}] = coopLoadT<CC>(&ss[off + {x}u * FR], BC); }}"
            );
        }
        // Every load is done before the next round's stores (or the next tile's scores)
        // overwrite the scratch.
        let _ = writeln!(s, "{ind}    workgroupBarrier();");
        let _ = writeln!(s, "{ind}}}");
    }
    s
}

/// The statements that write the output.
pub(crate) fn output_source(t: &CoopTile) -> String {
    let (rounds, per) = rounds(t);
    let mut s = String::new();
    let _ = writeln!(s, "    let off = row0 * BC;");
    for f0 in rounds {
        let _ = writeln!(s, "    {{");
        let _ = writeln!(s, "        workgroupBarrier();");
        store_round(&mut s, f0, per, "        ");
        let _ = writeln!(s, "        workgroupBarrier();");
        let _ = writeln!(
            s,
            "        output_round(off, {}u, b, h, qt, row0, ln, inv, stored);",
            f0 * t.fragment
        );
        let _ = writeln!(s, "    }}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fragment_takes_one_round_trip() {
        for (fr, dv, ways) in [(16, 128, 1), (16, 64, 2), (8, 32, 1), (8, 128, 2)] {
            let t = CoopTile {
                head_dim_qk: dv,
                head_dim_v: dv,
                block_q: 64,
                block_k: 32,
                fragment: fr,
                subgroup_size: 32,
                ways,
                extra: false,
                bool_mask: false,
                pairs: true,
                dtypes: [crate::data::tensor::DType::F16; 4],
                paged: false,
                quant: None,
                slack: 8,
            };
            let n = dv / fr;
            for src in [rescale_source(&t), output_source(&t)] {
                for f in 0..n {
                    assert_eq!(
                        src.matches(&format!("coopStoreT(acc[{f}],")).count(),
                        1,
                        "fragment {f} of {t:?}:\n{src}"
                    );
                }
                assert!(!src.contains(&format!("acc[{n}]")), "{src}");
            }
        }
    }
}
