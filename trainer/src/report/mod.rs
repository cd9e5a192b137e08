//! Figures (SVG, drawn with plotters) and a self-contained HTML page per run: pretraining
//! curves (loss, cross-entropy, me-max, learning rate), the probe's curves, per-label AUROC
//! with confidence intervals, ROC curves, PCA and t-SNE maps of the test embeddings coloured
//! by a label, sex, view and age band, and for an ablation a bar chart of macro AUROC per EHR
//! choice.
//!
//! Here the figures; `embedding` holds the PCA and t-SNE maths, `html` the pages.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::linear::{CPoint, EpochMetrics, Scored};
use crate::metrics::{Estimate, Evaluation, roc_curve};
use crate::{Error, Result};

mod embedding;
mod html;

pub use embedding::*;
pub use html::*;

fn err<E: std::fmt::Display>(what: &Path) -> impl Fn(E) -> Error + '_ {
    move |e| Error::Report(format!("{}: {e}", what.display()))
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-6);
    (lo - pad, hi + pad)
}

/// A named line: `(legend, points)` (an empty legend draws no legend entry).
pub type Line = (String, Vec<(f64, f64)>);

/// Named series over a shared x axis, one panel each (stacked vertically).
fn panels(path: &Path, title: &str, x_desc: &str, series: &[(&str, Vec<(f64, f64)>)]) -> Result<()> {
    let overlays: Vec<(&str, Vec<Line>)> =
        series.iter().map(|(name, points)| (*name, vec![(String::new(), points.clone())])).collect();
    overlay_panels(path, title, x_desc, &overlays)
}

/// Panels stacked vertically over a shared x axis, each with one or more named lines (a
/// legend when a line has a name).
pub fn overlay_panels(path: &Path, title: &str, x_desc: &str, panels: &[(&str, Vec<Line>)]) -> Result<()> {
    let e = err(path);
    let h = 220 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (760, h)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(&e)?;
    let areas = root.split_evenly((panels.len().max(1), 1));
    for (k, (name, lines)) in panels.iter().enumerate() {
        let (x0, x1) = range(lines.iter().flat_map(|l| l.1.iter().map(|p| p.0)));
        let (y0, y1) = range(lines.iter().flat_map(|l| l.1.iter().map(|p| p.1)));
        let mut chart = ChartBuilder::on(&areas[k])
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(&e)?;
        chart.configure_mesh().x_desc(x_desc).y_desc(*name).draw().map_err(&e)?;
        for (j, (label, points)) in lines.iter().enumerate() {
            let color = Palette99::pick(if lines.len() == 1 { k } else { j });
            let drawn = chart.draw_series(LineSeries::new(points.iter().copied(), &color)).map_err(&e)?;
            if !label.is_empty() {
                drawn.label(label.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], &color));
            }
        }
        if lines.iter().any(|l| !l.0.is_empty()) {
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(&e)?;
        }
    }
    root.present().map_err(&e)?;
    Ok(())
}

/// Loss, cross-entropy, me-max and learning rate per step of a pretraining run's
/// `metrics.jsonl`.
pub fn pretrain_curves(metrics: &Path, out: &Path) -> Result<()> {
    let text = fs_err::read_to_string(metrics)?;
    let rows: Vec<serde_json::Value> = text
        .lines()
        .enumerate()
        .map(|(n, l)| serde_json::from_str(l).map_err(|e| Error::input(metrics, format!("line {}: {e}", n + 1))))
        .collect::<Result<_>>()?;
    let get = |k: &str| -> Vec<(f64, f64)> {
        rows.iter().filter_map(|r| Some((r["step"].as_f64()?, r[k].as_f64()?))).collect()
    };
    panels(
        out,
        "Pretraining",
        "step",
        &[("loss", get("loss")), ("cross-entropy", get("cross_entropy")), ("me-max", get("me_max")), ("lr", get("lr"))],
    )
}

/// The probe's training loss and validation macro AUROC: per epoch (SGD probe), or per
/// regularisation strength (logistic probe, `path`).
pub fn probe_curves(history: &[EpochMetrics], path: Option<&[CPoint]>, out: &Path) -> Result<()> {
    if let Some(path) = path {
        let loss = path.iter().map(|p| (p.c.log10(), p.train_loss)).collect();
        let auc = path.iter().filter_map(|p| Some((p.c.log10(), p.validate_macro_auroc?))).collect();
        return panels(
            out,
            "Logistic probe: regularisation path",
            "log10 C",
            &[("train BCE", loss), ("validate macro AUROC", auc)],
        );
    }
    let loss = history.iter().map(|m| (m.epoch as f64, m.train_loss)).collect();
    let auc = history.iter().filter_map(|m| Some((m.epoch as f64, m.validate_macro_auroc?))).collect();
    panels(out, "Linear probe", "epoch", &[("train BCE", loss), ("validate macro AUROC", auc)])
}

/// Horizontal bars with 95% intervals: `(name, estimate)`; undefined entries are listed but
/// drawn empty.
pub fn bars(
    path: &Path,
    title: &str,
    x_desc: &str,
    rows: &[(String, Option<Estimate>)],
    mark: Option<f64>,
) -> Result<()> {
    let e = err(path);
    let n = rows.len().max(1);
    let root = SVGBackend::new(path, (760, 80 + 26 * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let (lo, hi) = range(rows.iter().filter_map(|r| r.1).flat_map(|v| [v.low, v.high, v.value]).chain(mark));
    let lo = lo.clamp(0.0, 0.5);
    let hi = hi.max(lo + 0.05).min(1.0);
    let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(230)
        .build_cartesian_2d(lo..hi, 0f64..n as f64)
        .map_err(&e)?;
    chart.configure_mesh().disable_y_mesh().y_labels(0).x_desc(x_desc).draw().map_err(&e)?;
    // Row names, right-aligned left of the plot area.
    let font = ("sans-serif", 13).into_font().color(&BLACK);
    let style = font.pos(Pos::new(HPos::Right, VPos::Center));
    for (k, name) in names.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(lo, (n - 1 - k) as f64 + 0.5));
        root.draw(&Text::new(name.clone(), (px - 8, py), style.clone())).map_err(&e)?;
    }
    for (k, (_, est)) in rows.iter().enumerate() {
        let y = (n - 1 - k) as f64;
        if let Some(v) = est {
            chart
                .draw_series([Rectangle::new(
                    [(lo, y + 0.2), (v.value, y + 0.8)],
                    Palette99::pick(k).mix(0.7).filled(),
                )])
                .map_err(&e)?;
            chart
                .draw_series([PathElement::new(vec![(v.low, y + 0.5), (v.high, y + 0.5)], BLACK.stroke_width(2))])
                .map_err(&e)?;
        }
    }
    if let Some(m) = mark {
        chart.draw_series([PathElement::new(vec![(m, 0.0), (m, n as f64)], RED.stroke_width(1))]).map_err(&e)?;
    }
    root.present().map_err(&e)?;
    Ok(())
}

/// Per-label AUROC with intervals, and the macro mean.
pub fn auroc_bars(ev: &Evaluation, title: &str, out: &Path) -> Result<()> {
    let mut rows: Vec<(String, Option<Estimate>)> = ev.labels.iter().map(|r| (r.label.clone(), r.auroc)).collect();
    rows.push(("macro".into(), ev.macro_auroc));
    bars(out, title, "AUROC (95% bootstrap CI)", &rows, Some(0.5))
}

/// ROC curves of every defined label.
pub fn roc_curves(scored: &Scored, names: &[String], out: &Path) -> Result<()> {
    let e = err(out);
    let l = names.len();
    let rows = scored.scores.len() / l.max(1);
    let root = SVGBackend::new(out, (760, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("ROC curves (test)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(&e)?;
    chart.configure_mesh().x_desc("false positive rate").y_desc("true positive rate").draw().map_err(&e)?;
    chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3))).map_err(&e)?;
    for (k, name) in names.iter().enumerate() {
        let s: Vec<f32> = (0..rows).map(|i| scored.scores[i * l + k]).collect();
        let y: Vec<f32> = (0..rows).map(|i| scored.labels[i * l + k]).collect();
        let curve = roc_curve(&s, &y);
        if curve.is_empty() {
            continue;
        }
        let color = Palette99::pick(k);
        chart
            .draw_series(LineSeries::new(curve, color.stroke_width(2)))
            .map_err(&e)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], Palette99::pick(k).stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}

fn age_band(age: f32) -> String {
    match age {
        a if a.is_nan() => "unknown".into(),
        a if a < 40.0 => "<40".into(),
        a if a < 60.0 => "40-59".into(),
        a if a < 80.0 => "60-79".into(),
        _ => "80+".into(),
    }
}

/// PCA of the test embeddings in four panels: coloured by a label (No Finding when the task
/// has it), sex, view and age band.
pub fn embedding(scored: &Scored, names: &[String], out: &Path) -> Result<()> {
    projection(scored, names, out, Projection::Pca)
}

/// The same panels with a t-SNE map (perplexity 30) of at most 1000 test embeddings.
pub fn tsne_embedding(scored: &Scored, names: &[String], out: &Path) -> Result<()> {
    projection(scored, names, out, Projection::Tsne)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Projection {
    Pca,
    Tsne,
}

fn projection(scored: &Scored, names: &[String], out: &Path, how: Projection) -> Result<()> {
    let e = err(out);
    // At most 3000 points for PCA, 1000 for t-SNE (quadratic), evenly spaced.
    let n = scored.meta.len();
    let most = if how == Projection::Pca { 3000 } else { 1000 };
    let step = n.div_ceil(most).max(1);
    let rows: Vec<usize> = (0..n).step_by(step).collect();
    let x: Vec<f32> =
        rows.iter().flat_map(|&i| scored.features[i * scored.dim..(i + 1) * scored.dim].iter().copied()).collect();
    let (pts, title) = match how {
        Projection::Pca => (pca2(&x, scored.dim), "Test embeddings (PCA of the encoder's CLS features)"),
        Projection::Tsne => (tsne2(&x, scored.dim, 30.0, 24), "Test embeddings (t-SNE of the encoder's CLS features)"),
    };
    let l = names.len();
    let k = names.iter().position(|s| s == "No Finding").unwrap_or(0);
    let label_name = names.get(k).cloned().unwrap_or_default();
    let groups: [(String, Vec<String>); 4] = [
        (
            label_name.clone(),
            rows.iter()
                .map(|&i| match scored.labels.get(i * l + k) {
                    Some(v) if *v > 0.5 => format!("{label_name}: yes"),
                    Some(v) if *v <= 0.5 => format!("{label_name}: no"),
                    _ => "unknown".into(),
                })
                .collect(),
        ),
        (
            "sex".into(),
            rows.iter()
                .map(|&i| match scored.meta[i].0 {
                    v if v.is_nan() => "unknown".into(),
                    v if v > 0.5 => "male".into(),
                    _ => "female".into(),
                })
                .collect(),
        ),
        (
            "view".into(),
            rows.iter()
                .map(|&i| if scored.meta[i].2.is_empty() { "unknown".into() } else { scored.meta[i].2.clone() })
                .collect(),
        ),
        ("age band".into(), rows.iter().map(|&i| age_band(scored.meta[i].1)).collect()),
    ];
    let root = SVGBackend::new(out, (1000, 860)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(&e)?;
    let areas = root.split_evenly((2, 2));
    let (x0, x1) = range(pts.iter().map(|p| p.0));
    let (y0, y1) = range(pts.iter().map(|p| p.1));
    for (area, (title, classes)) in areas.iter().zip(groups.iter()) {
        let mut names: Vec<&String> = classes.iter().collect();
        names.sort();
        names.dedup();
        let mut chart = ChartBuilder::on(area)
            .caption(format!("by {title}"), ("sans-serif", 15))
            .margin(6)
            .x_label_area_size(20)
            .y_label_area_size(30)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(&e)?;
        chart.configure_mesh().disable_mesh().draw().map_err(&e)?;
        for (c, class) in names.iter().enumerate() {
            let color = Palette99::pick(c);
            let points = pts.iter().zip(classes).filter(|(_, k)| k == class).map(|(p, _)| *p);
            chart
                .draw_series(points.map(|p| Circle::new(p, 2, color.mix(0.6).filled())))
                .map_err(&e)?
                .label(class.as_str())
                .legend(move |(x, y)| Circle::new((x + 6, y), 4, Palette99::pick(c).filled()));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(&e)?;
    }
    root.present().map_err(&e)?;
    Ok(())
}
