//! What `trainer selftest` compares and prints: a quantity's error against its tolerance
//! ([`Check`], measured per [`Scale`]) and a case's result and line ([`CaseResult`]).

use std::path::PathBuf;

/// How a quantity's error is measured: the largest |ours - reference| against
/// `tolerance * scale + floor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// Relative to max |reference|, at least 1 (outputs, losses).
    AtLeastOne,
    /// Relative to max |reference| itself, with an absolute floor of 1e-7 (gradients, which
    /// peak at 0.06-0.16: a tolerance relative to 1 would leave most entries unchecked).
    Reference,
}

/// One compared quantity of a case.
#[derive(Debug, Clone)]
pub struct Check {
    pub quantity: String,
    /// The largest |ours - reference|; infinite when the two disagree in kind (a length, a
    /// value defined on one side only).
    pub worst: f64,
    /// What `worst` is measured against (max |reference|, per [`Scale`]).
    pub scale: f64,
    pub tolerance: f64,
    pub floor: f64,
}

impl Check {
    pub(super) fn values(quantity: &str, ours: &[f32], reference: &[f32], tolerance: f64, scale: Scale) -> Check {
        let max_ref = reference.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
        let (scale, floor) = match scale {
            Scale::AtLeastOne => (max_ref.max(1.0), 0.0),
            Scale::Reference => (max_ref, 1e-7),
        };
        let worst = if ours.len() != reference.len() {
            f64::INFINITY
        } else {
            ours.iter()
                .zip(reference)
                .map(|(a, b)| f64::from(a - b).abs())
                .fold(0.0, |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) })
        };
        Check { quantity: quantity.to_string(), worst, scale, tolerance, floor }
    }

    pub(super) fn scalar(quantity: &str, ours: f64, reference: f64, tolerance: f64, scale: f64) -> Check {
        let worst = if (ours - reference).is_nan() { f64::INFINITY } else { (ours - reference).abs() };
        Check { quantity: quantity.to_string(), worst, scale, tolerance, floor: 0.0 }
    }

    /// Whether the error is within the tolerance.
    pub fn passed(&self) -> bool {
        self.worst <= self.tolerance * self.scale + self.floor
    }

    /// The error relative to the scale (what the tolerance bounds).
    pub fn relative(&self) -> f64 {
        if self.scale > 0.0 { self.worst / self.scale } else { self.worst }
    }

    /// How close to failing: error over allowance (above 1 fails).
    fn margin(&self) -> f64 {
        let allowed = self.tolerance * self.scale + self.floor;
        if allowed > 0.0 { self.worst / allowed } else { self.worst }
    }
}

/// One case's result.
#[derive(Debug)]
pub struct CaseResult {
    pub case: String,
    /// The folder the case came from, `None` for the shipped copy.
    pub from: Option<PathBuf>,
    /// Every compared quantity; empty when the case could not run.
    pub checks: Vec<Check>,
    /// Why the case could not run (a missing tensor, a device error).
    pub error: Option<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.error.is_none() && !self.checks.is_empty() && self.checks.iter().all(Check::passed)
    }

    /// The check nearest to (or furthest past) its tolerance.
    pub fn worst(&self) -> Option<&Check> {
        self.checks.iter().max_by(|a, b| a.margin().total_cmp(&b.margin()))
    }

    /// The line `trainer selftest` prints for it; a failed case adds one line per quantity.
    pub fn line(&self) -> String {
        let verdict = if self.passed() { "ok  " } else { "FAIL" };
        let from = match &self.from {
            Some(dir) => dir.display().to_string(),
            None => "shipped".to_string(),
        };
        let what = match (&self.error, self.worst()) {
            (Some(e), _) => format!("did not run: {e}"),
            (None, None) => "no quantity compared".to_string(),
            (None, Some(w)) => format!(
                "max error {:.2e} ({}; {} compared), tolerance {:.0e}",
                w.relative(),
                w.quantity,
                self.checks.len(),
                w.tolerance
            ),
        };
        let mut line = format!("{verdict} {:<22} {what} [{from}]", self.case);
        if self.error.is_none() && !self.passed() {
            // Every quantity of a failed case: which parts of it went wrong, and by how much.
            for c in &self.checks {
                let over = if c.passed() { "" } else { "  over" };
                line += &format!(
                    "\n     {:<40} error {:.2e}, tolerance {:.0e}{over}",
                    c.quantity,
                    c.relative(),
                    c.tolerance
                );
            }
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_fails_past_its_tolerance_and_on_a_length_or_nan() {
        assert!(Check::values("x", &[1.0, 2.0], &[1.0, 2.0001], 1e-4, Scale::AtLeastOne).passed());
        assert!(!Check::values("x", &[1.0, 2.0], &[1.0, 2.001], 1e-4, Scale::AtLeastOne).passed());
        assert!(!Check::values("x", &[1.0], &[1.0, 2.0], 1.0, Scale::AtLeastOne).passed());
        assert!(!Check::values("x", &[f32::NAN], &[1.0], 1.0, Scale::AtLeastOne).passed());
        // Gradients are measured against their own scale: 0.01 off at a peak of 0.1 is 10%.
        assert!(!Check::values("g", &[0.11], &[0.1], 1e-2, Scale::Reference).passed());
    }

    /// A passing case is one line; a failed one lists every quantity, the failing ones marked.
    #[test]
    fn a_failed_case_names_each_quantity() {
        let ok = Check::values("loss", &[1.0], &[1.0], 1e-4, Scale::AtLeastOne);
        let bad = Check::values("grad_w", &[0.11], &[0.1], 1e-4, Scale::Reference);
        let mut result = CaseResult { case: "step".into(), from: None, checks: vec![ok.clone()], error: None };
        assert_eq!(result.line().lines().count(), 1);
        result.checks.push(bad);
        let line = result.line();
        let lines: Vec<&str> = line.lines().collect();
        assert!(lines[0].starts_with("FAIL step") && lines[0].contains("(grad_w; 2 compared)"), "{line}");
        assert_eq!(lines.len(), 3, "{line}");
        assert!(lines[1].contains("loss") && !lines[1].ends_with("over"), "{line}");
        assert!(
            lines[2].contains("grad_w") && lines[2].contains("error 1.00e-1") && lines[2].ends_with("over"),
            "{line}"
        );
    }
}
