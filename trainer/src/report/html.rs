//! The HTML pages: a self-contained page of figures and tables, an evaluation's table, the
//! linear evaluation's sections.

use std::path::Path;

use super::{auroc_bars, embedding, probe_curves, roc_curves, tsne_embedding};
use crate::Result;
use crate::linear::{EpochMetrics, LinearEvalResult, Scored};
use crate::metrics::{Estimate, Evaluation};

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn cell(e: &Option<Estimate>) -> String {
    e.map_or("undefined".into(), |v| format!("{:.3} ({:.3}&ndash;{:.3})", v.value, v.low, v.high))
}

/// An evaluation as an HTML table.
pub fn evaluation_table(ev: &Evaluation) -> String {
    let mut s = String::from(
        "<table><tr><th>label</th><th>positives / rows</th><th>AUROC (95% CI)</th><th>AP (95% CI)</th></tr>\n",
    );
    for r in &ev.labels {
        s += &format!(
            "<tr><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&r.label),
            r.positives,
            r.rows,
            cell(&r.auroc),
            cell(&r.average_precision)
        );
    }
    s += &format!(
        "<tr class=\"macro\"><td>macro</td><td>{} defined</td><td>{}</td><td>{}</td></tr></table>\n",
        ev.labels.len() - ev.undefined.len(),
        cell(&ev.macro_auroc),
        cell(&ev.macro_average_precision)
    );
    if !ev.undefined.is_empty() {
        s += &format!(
            "<p>Undefined (one class), left out of the macro means: {}.</p>\n",
            escape(&ev.undefined.join(", "))
        );
    }
    s
}

/// A self-contained page: `title`, a preamble (HTML), sections of HTML, and figures (file names
/// relative to the page, shown if they exist in `dir`).
pub fn page(
    dir: &Path,
    file: &str,
    title: &str,
    sections: &[(String, String)],
    figures: &[(&str, &str)],
) -> Result<()> {
    let mut s = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;max-width:1040px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}\
         tr.macro{{font-weight:bold}}img{{max-width:100%;border:1px solid #eee;margin:0.5em 0}}\
         pre{{background:#f6f6f6;padding:0.6em;overflow-x:auto}}</style></head><body>\n<h1>{t}</h1>\n",
        t = escape(title)
    );
    for (h, body) in sections {
        s += &format!("<h2>{}</h2>\n{body}\n", escape(h));
    }
    for (name, caption) in figures {
        if dir.join(name).is_file() {
            s += &format!(
                "<h2>{}</h2>\n<a href=\"{name}\"><img src=\"{name}\" alt=\"{}\"></a>\n",
                escape(caption),
                escape(caption)
            );
        }
    }
    s += "</body></html>\n";
    fs_err::write(dir.join(file), s)?;
    Ok(())
}

/// The figures and page of one linear evaluation in `dir` (its output folder).
pub fn linear_eval_report(
    dir: &Path,
    result: &LinearEvalResult,
    history: &[EpochMetrics],
    test: &Scored,
) -> Result<()> {
    probe_curves(history, result.regularization.as_deref(), &dir.join("probe-curves.svg"))?;
    auroc_bars(&result.test, "Test AUROC per label", &dir.join("auroc.svg"))?;
    roc_curves(test, &result.labels, &dir.join("roc.svg"))?;
    embedding(test, &result.labels, &dir.join("embedding.svg"))?;
    tsne_embedding(test, &result.labels, &dir.join("tsne.svg"))?;
    for (k, e) in result.external.iter().enumerate() {
        auroc_bars(
            &e.test,
            &format!("External test ({}) AUROC per label", e.kind),
            &dir.join(format!("external-{k}-auroc.svg")),
        )?;
    }
    Ok(())
}

/// The sections of a linear evaluation for a page.
pub fn linear_eval_sections(result: &LinearEvalResult) -> Vec<(String, String)> {
    let mut v = vec![
        (
            "Linear evaluation".to_string(),
            format!(
                "<p>Dataset {} ({}); probe trained on {} images, {} validation, {} test; {}.</p><pre>{}</pre>",
                escape(&result.dataset_version),
                escape(&result.dataset_kind),
                result.train_rows,
                result.validate_rows,
                result.test_rows,
                escape(&result.probe_summary()),
                escape(&serde_json::to_string_pretty(&result.encoder).unwrap_or_default())
            ),
        ),
        ("Test".to_string(), evaluation_table(&result.test)),
    ];
    for e in &result.external {
        v.push((format!("External test: {} ({})", e.kind, e.version), evaluation_table(&e.test)));
    }
    v
}
