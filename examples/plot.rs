//! Draws the benchmark harness's JSON lines: time and GFLOP/s against sequence length,
//! one line per backend, mask kind and dtype. PNG output, no network.
//!
//! ```sh
//! cargo bench --bench attention -- --grid sweep > bench.jsonl
//! cargo run --release --example plot -- bench.jsonl docs/lavapipe.png
//! ```
//!
//! Text is drawn with a TrueType font read from the system (DejaVu Sans by default;
//! `--font PATH` picks another).

use std::collections::BTreeMap;

use plotters::prelude::*;

/// One benchmark record (the fields the plot needs).
#[derive(Debug, Clone)]
struct Record {
    series: String,
    seq: f64,
    ms: f64,
    gflops: f64,
}

/// Reads `"key":value` pairs of a flat JSON object (the harness's own output format).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().trim_matches('"'))
}

fn parse(text: &str) -> Vec<Record> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| {
            let num = |k: &str| field(l, k)?.parse::<f64>().ok();
            Some(Record {
                series: format!(
                    "{} {} {}",
                    field(l, "ran").or(field(l, "backend"))?,
                    field(l, "mask")?,
                    field(l, "dtype")?
                ),
                seq: num("sk")?,
                ms: num("median_ms")?,
                gflops: num("gflops")?,
            })
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let font_path = args
        .iter()
        .position(|a| a == "--font")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into());
    let files: Vec<&String> = args
        .iter()
        .filter(|a| !a.starts_with("--") && **a != font_path)
        .collect();
    let (input, output) = match files.as_slice() {
        [i, o] => (i.as_str(), o.as_str()),
        _ => return Err("usage: plot INPUT.jsonl OUTPUT.png [--font PATH]".into()),
    };
    let font = std::fs::read(&font_path).map_err(|e| format!("reading font {font_path}: {e}"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| format!("{font_path} is not a usable TrueType font"))?;

    let records = parse(&std::fs::read_to_string(input)?);
    if records.is_empty() {
        return Err(format!("no benchmark lines in {input}").into());
    }
    let mut series: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for r in records {
        series.entry(r.series.clone()).or_default().push(r);
    }
    for v in series.values_mut() {
        v.sort_by(|a, b| a.seq.total_cmp(&b.seq));
    }
    let all: Vec<&Record> = series.values().flatten().collect();
    let (smin, smax) = all
        .iter()
        .fold((f64::MAX, 0f64), |(a, b), r| (a.min(r.seq), b.max(r.seq)));
    let (tmin, tmax) = all
        .iter()
        .fold((f64::MAX, 0f64), |(a, b), r| (a.min(r.ms), b.max(r.ms)));
    let gmax = all.iter().fold(0f64, |a, r| a.max(r.gflops));

    let root = BitMapBackend::new(output, (1400, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(700);
    let mut time = ChartBuilder::on(&left)
        .caption("median time (ms), log-log", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (smin * 0.9..smax * 1.1).log_scale(),
            (tmin * 0.8..tmax * 1.25).log_scale(),
        )?;
    time.configure_mesh()
        .x_desc("sequence length (Sq = Sk)")
        .y_desc("ms")
        .draw()?;
    let mut rate = ChartBuilder::on(&right)
        .caption("GFLOP/s (4·b·h·s²·d / time)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((smin * 0.9..smax * 1.1).log_scale(), 0.0..gmax * 1.15)?;
    rate.configure_mesh()
        .x_desc("sequence length (Sq = Sk)")
        .y_desc("GFLOP/s")
        .draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        time.draw_series(LineSeries::new(
            pts.iter().map(|r| (r.seq, r.ms)),
            color.stroke_width(2),
        ))?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        time.draw_series(
            pts.iter()
                .map(|r| Circle::new((r.seq, r.ms), 3, color.filled())),
        )?;
        rate.draw_series(LineSeries::new(
            pts.iter().map(|r| (r.seq, r.gflops)),
            color.stroke_width(2),
        ))?;
        rate.draw_series(
            pts.iter()
                .map(|r| Circle::new((r.seq, r.gflops), 3, color.filled())),
        )?;
    }
    time.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    println!("wrote {output} ({} series)", series.len());
    Ok(())
}
