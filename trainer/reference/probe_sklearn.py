"""scikit-learn's logistic-regression probe on the same features as `trainer linear-eval`.

An independent check of the trainer's default probe: for each feature source, features are
standardised on the training split, one `LogisticRegression` (L-BFGS, L2) per label is fitted
at each C of the trainer's grid (1e-4 to 10 in half decades), the C with the best validation
macro AUROC is kept, and the test split is scored with it. Sources: a run's cached encoder
features (`RUN/features`, written by `linear-eval`), the pixels area-downsampled (`pixels`), or
the EHR vector of a pretraining run (`ehr=RUN`: the `ehr_columns` of its `config.json`). The table gives each source's test macro AUROC with a 95% bootstrap
interval and its paired difference against the first source on the same resamples.

    python trainer/reference/probe_sklearn.py --dataset OUT/<version> \\
        --source random=out/demo/runs/random-init/features \\
        --source vanilla=out/demo/runs/vanilla-msn/features --source pixels \\
        --source ehr=out/demo/runs/ehr-demographics+scan+stay

Labels as built (the `dataset` uncertainty policy); blank (NaN) entries are left out of that
label's fit and metric, as in the trainer.
"""

import argparse
import glob
import json
import os
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cxr_reader import CxrDataset  # noqa: E402

CS = [10 ** (-4 + 0.5 * k) for k in range(11)]


def cached(folder, version, split):
    """The cached encoder features of `split` of `version` in a run's features folder."""
    for meta in glob.glob(os.path.join(folder, "*.json")):
        with open(meta) as f:
            about = json.load(f)
        if about.get("split") == split and about.get("dataset_version") == version:
            x = np.fromfile(meta[:-5] + ".f32", dtype="<f4")
            return x.reshape(about["rows"], about["dim"])
    raise SystemExit(f"{folder}: no cached {split} features of dataset {version}; run `trainer linear-eval` first")


def downsample(images, side):
    n, s, _ = images.shape
    out = np.empty((n, side, side), np.float32)
    for oy in range(side):
        y0, y1 = oy * s // side, max(-(-(oy + 1) * s // side), oy * s // side + 1)
        for ox in range(side):
            x0, x1 = ox * s // side, max(-(-(ox + 1) * s // side), ox * s // side + 1)
            out[:, oy, ox] = images[:, y0:y1, x0:x1].reshape(n, -1).mean(1) / 255.0
    return out.reshape(n, -1)


def macro_auroc(y, p):
    aucs = []
    for k in range(y.shape[1]):
        keep = ~np.isnan(y[:, k])
        yk = y[keep, k]
        if yk.min() != yk.max():
            aucs.append(roc_auc_score(yk, p[keep, k]))
    return float(np.mean(aucs)) if aucs else float("nan")


def probe(x, y, xv, yv, xt):
    scaler = StandardScaler().fit(x)
    x, xv, xt = scaler.transform(x), scaler.transform(xv), scaler.transform(xt)
    best = (-np.inf, None, None)
    for c in CS:
        pv, pt = np.zeros((len(xv), y.shape[1])), np.zeros((len(xt), y.shape[1]))
        for k in range(y.shape[1]):
            keep = ~np.isnan(y[:, k])
            if len(np.unique(y[keep, k])) < 2:
                pv[:, k] = pt[:, k] = y[keep, k].mean() if keep.any() else 0.0
                continue
            m = LogisticRegression(C=c, max_iter=10000, tol=1e-8).fit(x[keep], y[keep, k])
            pv[:, k], pt[:, k] = m.predict_proba(xv)[:, 1], m.predict_proba(xt)[:, 1]
        auc = macro_auroc(yv, pv)
        if auc > best[0]:
            best = (auc, c, pt)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--source", action="append", required=True, help="NAME=RUN/features, pixels or ehr=RUN")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=24)
    a = ap.parse_args()
    ehr = []
    for spec in a.source:
        name, _, folder = spec.partition("=")
        if name == "ehr":
            with open(os.path.join(folder, "config.json")) as f:
                ehr = json.load(f)["ehr_columns"]
    splits = {s: CxrDataset(a.dataset, split=s, ehr_columns=ehr) for s in ("train", "validate", "test")}
    version = splits["train"].version
    y, yv, yt = (splits[s].label_matrix() for s in ("train", "validate", "test"))
    scores = []
    for spec in a.source:
        name, _, folder = spec.partition("=")
        if name == "pixels":
            x, xv, xt = (downsample(splits[s].images, 32) for s in ("train", "validate", "test"))
        elif name == "ehr":
            x, xv, xt = (splits[s].ehr() for s in ("train", "validate", "test"))
        else:
            x, xv, xt = (cached(folder, version, s) for s in ("train", "validate", "test"))
        auc_v, c, pt = probe(x, y, xv, yv, xt)
        scores.append((name, c, auc_v, pt))
    rng = np.random.default_rng(a.seed)
    draws = [rng.integers(0, len(yt), len(yt)) for _ in range(a.bootstrap)]
    base = scores[0][3]
    print("| source | C | validate macro AUROC | test macro AUROC (95% CI) | vs first (paired 95% CI) |")
    print("|---|---|---|---|---|")
    for name, c, auc_v, pt in scores:
        value = macro_auroc(yt, pt)
        boot = np.array([macro_auroc(yt[d], pt[d]) for d in draws])
        delta = value - macro_auroc(yt, base)
        dboot = np.array([macro_auroc(yt[d], pt[d]) - macro_auroc(yt[d], base[d]) for d in draws])
        lo, hi = np.nanpercentile(boot, [2.5, 97.5])
        dlo, dhi = np.nanpercentile(dboot, [2.5, 97.5])
        print(f"| {name} | {c:.0e} | {auc_v:.3f} | {value:.3f} ({lo:.3f}-{hi:.3f}) | {delta:+.3f} ({dlo:+.3f} to {dhi:+.3f}) |")


if __name__ == "__main__":
    main()
