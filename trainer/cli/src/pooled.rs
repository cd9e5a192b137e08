//! Lines and tables of differences pooled over pairs of probes (`demo`, `paired-delta`).

use trainer::experiment::PooledDelta;
use trainer::metrics::{Estimate, Verdict};

/// Each pair's paired difference of each comparison, and the pooled one, as a Markdown table.
pub(crate) fn per_pair_table(rows: &[(&str, &PooledDelta)]) -> String {
    let Some((_, first)) = rows.first() else { return String::new() };
    let mut s = String::from("| difference in macro AUROC |");
    for name in &first.pairs {
        s += &format!(" {name} |");
    }
    s += " pooled (95% CI) | pooled 90% CI |\n|---|";
    s += &"---|".repeat(first.pairs.len() + 2);
    s += "\n";
    let signed = |e: &Estimate| format!("{:+.3} ({:+.3} to {:+.3})", e.value, e.low, e.high);
    for (what, p) in rows {
        s += &format!("| {what} |");
        for e in &p.per_pair {
            s += &format!(" {} |", e.as_ref().map_or("undefined".into(), signed));
        }
        match &p.pooled {
            Some(q) => s += &format!(" {} | {:+.3} to {:+.3} |\n", signed(&q.delta), q.low90, q.high90),
            None => s += " undefined | |\n",
        }
    }
    s
}

/// One line on a pooled difference (a mean over `over`, e.g. "seeds"): its value and
/// intervals, and what the equivalence test says of `what`.
pub(crate) fn verdict(p: &PooledDelta, what: &str, over: &str) -> String {
    let Some(q) = &p.pooled else { return "undefined (no label has both classes in the test set)".into() };
    let d = &q.delta;
    let v = match q.verdict {
        Verdict::Different if d.value > 0.0 => format!("{what} is measurably better"),
        Verdict::Different => format!("{what} is measurably worse"),
        Verdict::Equivalent => format!("equivalent within +-{} (the 90% interval lies inside it)", q.margin),
        Verdict::Undecided => format!(
            "no measurable difference, nor shown to be within +-{} (the 95% interval includes 0 and the 90% one \
             crosses the margin)",
            q.margin
        ),
    };
    format!(
        "{:+.3} macro AUROC, mean of {} {over} (paired 95% CI {:+.3} to {:+.3}; 90% CI {:+.3} to {:+.3}): {v}",
        d.value,
        p.pairs.len(),
        d.low,
        d.high,
        q.low90,
        q.high90
    )
}

#[cfg(test)]
mod tests {
    use trainer::experiment::PooledDelta;
    use trainer::metrics::{Equivalence, Estimate, Verdict};

    fn pooled(value: f64, low: f64, high: f64, low90: f64, high90: f64, verdict: Verdict) -> PooledDelta {
        let delta = Estimate { value, low, high };
        PooledDelta {
            pairs: ["seed 24", "seed 25", "seed 26"].map(String::from).into(),
            per_pair: vec![Some(delta); 3],
            pooled: Some(Equivalence { delta, low90, high90, margin: 0.01, verdict }),
            intervals: String::new(),
        }
    }

    #[test]
    fn verdict_lines_say_what_the_equivalence_test_found() {
        let v = |p: &PooledDelta| super::verdict(p, "pretraining", "seeds");
        let better = v(&pooled(0.02, 0.01, 0.03, 0.012, 0.028, Verdict::Different));
        assert!(better.starts_with("+0.020 macro AUROC, mean of 3 seeds") && better.ends_with("measurably better"));
        assert!(v(&pooled(-0.02, -0.03, -0.01, -0.028, -0.012, Verdict::Different)).ends_with("measurably worse"));
        let same = v(&pooled(0.001, -0.006, 0.008, -0.005, 0.007, Verdict::Equivalent));
        assert!(same.contains("90% CI -0.005 to +0.007") && same.contains("equivalent within +-0.01"), "{same}");
        assert!(v(&pooled(0.004, -0.01, 0.02, -0.008, 0.016, Verdict::Undecided)).contains("no measurable difference"));
        let table =
            super::per_pair_table(&[("b minus a", &pooled(0.02, 0.01, 0.03, 0.012, 0.028, Verdict::Different))]);
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(table.contains("| seed 26 |") && table.contains("| +0.020 (+0.010 to +0.030) | +0.012 to +0.028 |"));
    }
}
