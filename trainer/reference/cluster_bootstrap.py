"""Patient-level (cluster) bootstrap of macro AUROC, computed independently of the trainer.

The trainer's intervals (trainer/src/metrics.rs) resample patients: a resample draws as many
patients as the test set holds, with replacement, and every image of a drawn patient enters
with the patient's count as its weight. This script computes the same intervals with numpy
from the same draws (SplitMix64, ported below, so both sides draw the same patients) but
with its own AUROC: the weighted Mann-Whitney statistic over all positive-negative pairs
(ties count one half), not the trainer's sweep over thresholds.

Input (a JSON file): scores and labels as [rows][labels] (null label = left out), patients
(one id per row, or null for image-level resampling), resamples, seed, and optionally
other_scores for a paired difference (other minus scores). Output (JSON on stdout): per
label AUROC with its interval, the macro AUROC with its interval, the paired delta.

    python3 cluster_bootstrap.py input.json
"""

import json
import sys

import numpy as np

MASK = (1 << 64) - 1
EVALUATE_STREAM = 0xB007
PAIRED_STREAM = 0xD17A


class SplitMix64:
    """trainer/src/rng.rs: `Rng::derive` and `below`."""

    def __init__(self, seed, stream, index):
        self.state = (seed ^ 0x9E3779B97F4A7C15) & MASK
        self.state ^= ((stream * 0xD1B54A32D192ED03) & MASK) ^ ((index * 0x8CB92BA72F3D8DD7) & MASK)
        self.next()

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        u = (self.next() >> 11) / float(1 << 53)
        return min(int(u * n), n - 1)


def clusters(patients, rows):
    """Each row's cluster, numbered by first appearance; every row its own without ids."""
    if patients is None:
        return np.arange(rows), rows
    first = {}
    of_row = np.array([first.setdefault(p, len(first)) for p in patients])
    return of_row, len(first)


def weights(of_row, count, seed, stream, b):
    """Resample b: `count` clusters drawn with replacement, each row weighted by its cluster's draws."""
    rng = SplitMix64(seed, stream, b)
    drawn = np.zeros(count)
    for _ in range(count):
        drawn[rng.below(count)] += 1
    return drawn[of_row]


def auroc(scores, labels, w):
    """Weighted Mann-Whitney AUROC of one label; None when a class has no weight."""
    keep = ~np.isnan(labels)
    s, y, w = scores[keep], labels[keep] > 0.5, w[keep]
    wp, wn = w[y], w[~y]
    if wp.sum() <= 0 or wn.sum() <= 0:
        return None
    sp, sn = s[y][:, None], s[~y][None, :]
    pairs = (sp > sn) + 0.5 * (sp == sn)
    return float((wp[:, None] * wn[None, :] * pairs).sum() / (wp.sum() * wn.sum()))


def macro(scores, labels, w, defined):
    values = [auroc(scores[:, k], labels[:, k], w) for k in defined]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def interval(value, samples):
    samples = np.array([v for v in samples if v is not None and np.isfinite(v)])
    return {"value": value, "low": float(np.percentile(samples, 2.5)), "high": float(np.percentile(samples, 97.5))}


def main(path):
    doc = json.load(open(path))
    scores = np.array(doc["scores"], dtype=np.float64)
    labels = np.array([[np.nan if v is None else v for v in r] for r in doc["labels"]], dtype=np.float64)
    rows, l = scores.shape
    of_row, count = clusters(doc.get("patients"), rows)
    seed, resamples = doc["seed"], doc["resamples"]
    ones = np.ones(rows)
    full = [auroc(scores[:, k], labels[:, k], ones) for k in range(l)]
    defined = [k for k in range(l) if full[k] is not None]
    boot = [weights(of_row, count, seed, EVALUATE_STREAM, b) for b in range(resamples)]
    out = {"clusters": count, "labels": [], "macro_auroc": None, "delta": None}
    for k in range(l):
        if full[k] is None:
            out["labels"].append(None)
        else:
            out["labels"].append(interval(full[k], [auroc(scores[:, k], labels[:, k], w) for w in boot]))
    if defined:
        out["macro_auroc"] = interval(macro(scores, labels, ones, defined), [macro(scores, labels, w, defined) for w in boot])
    if "other_scores" in doc:
        other = np.array(doc["other_scores"], dtype=np.float64)

        def delta(w):
            pairs = [(auroc(scores[:, k], labels[:, k], w), auroc(other[:, k], labels[:, k], w)) for k in defined]
            d = [b - a for a, b in pairs if a is not None and b is not None]
            return float(np.mean(d)) if d else None

        paired = [weights(of_row, count, seed, PAIRED_STREAM, b) for b in range(resamples)]
        out["delta"] = interval(delta(ones), [delta(w) for w in paired])
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
