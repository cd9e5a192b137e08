"""The golden cases of `shared/golden` (the layout `trainer selftest --golden DIR` and the golden
tests read), computed with the reference's own pieces: torchvision's `VisionTransformer`,
lightly 1.4.21's `MAEBackbone`, `MSNProjectionHead` and `MSNLoss`, scikit-learn's AUROC and
average precision, and the EHR fusion of `train_msn.py`'s `ReferenceMsn`.

Two uses:

    python3 golden_cases.py write OUT_DIR --seed 5   # new cases: values and shapes from the seed
    python3 golden_cases.py check DIR                # recompute DIR's outputs from its inputs

`write` draws every input (weights, images, masks, EHR vectors, scores) and the cases' sizes
(width, depth, heads, image and focal sizes, batch, focal views, prototypes) from the seed,
then writes `<case>.json` + `<case>.safetensors` for the eight cases of `shared/golden`
(`resized_crop_aa` is `golden_resized_crop.py`'s; a folder without it falls back to the copy
shipped in the trainer). `check` reads a folder of that layout, recomputes each case's outputs
from the inputs stored there and prints the largest difference per output, so it shows that
this script computes what made the folder (run it on `shared/golden`); it exits 1 above
1e-5 relative, 2 if the folder holds no case. Needs `trainer/reference/requirements.txt`.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
from lightly.loss import MSNLoss
from lightly.models import utils
from lightly.models.modules import MAEBackbone
from lightly.models.modules.heads import MSNProjectionHead
from safetensors.torch import load_file, save_file
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_msn import ReferenceMsn

LOSS_CASES = {
    "msn_loss_default": {"regularization_weight": 1.0},
    "msn_loss_no_sinkhorn": {"regularization_weight": 1.0, "sinkhorn_iterations": 0},
    "msn_loss_reg_half": {"regularization_weight": 0.5},
}
LOSS_DEFAULTS = {"temperature": 0.1, "sinkhorn_iterations": 3, "target_sharpen_temperature": 0.25}
# A new case is kept only if its float32 outputs lie within this of float64 (relative, as the
# checks measure); the shipped cases lie within 1.5e-6.
WELL_CONDITIONED = 5e-6
MAX_DRAWS = 20


# ---- the computations: inputs in, outputs out (shared by `write` and `check`) ----

def vit(cfg):
    return VisionTransformer(
        image_size=cfg["image_size"], patch_size=cfg["patch_size"], num_layers=cfg["num_layers"],
        num_heads=cfg["num_heads"], hidden_dim=cfg["hidden_dim"], mlp_dim=cfg["mlp_dim"],
    )


def weights(t, prefix):
    """The tensors under `prefix`, without it (a state_dict)."""
    return {k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)}


def backbone(cfg, t, prefix):
    v = vit(cfg)
    v.load_state_dict(weights(t, prefix))
    return MAEBackbone.from_vit(v).eval()


def head(t, prefix, dims):
    h = MSNProjectionHead(*dims)
    h.load_state_dict(weights(t, prefix))
    return h.train()  # BatchNorm in training mode, as in pretraining


def vit_forward(cfg, t):
    b = backbone(cfg, t, "w.")
    with torch.no_grad():
        focal_tokens = b.images_to_tokens(t["focal_images"], prepend_class_token=True)
        return {
            "tokens_full": b.encode(t["images"]),
            "cls_full": b(t["images"]),
            "cls_masked": b(t["images"], idx_keep=t["idx_keep"]),
            "pos_embedding_focal": b.encoder.interpolate_pos_encoding(focal_tokens),
            "cls_focal": b(t["focal_images"], idx_keep=t["idx_keep_focal"]),
        }


def bicubic(cfg, t):
    grid = t["grid"]
    _, n, dim = grid.shape
    side = math.isqrt(n)
    out_n = cfg["out_tokens"]
    x = grid.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    y = nn.functional.interpolate(x, scale_factor=math.sqrt(out_n / n), mode="bicubic", align_corners=False)
    return {"resized": y.permute(0, 2, 3, 1).reshape(1, -1, dim)}


def projection_head(cfg, t):
    h = head(t, "w.", (cfg["input_dim"], cfg["hidden_dim"], cfg["output_dim"]))
    with torch.no_grad():
        return {"output": h(t["input"])}


def loss_of(settings, anchors, targets, prototypes):
    """lightly's MSNLoss; the sharpening temperature is an argument of its forward."""
    s = {**LOSS_DEFAULTS, **settings}
    sharpen = s.pop("target_sharpen_temperature")
    return MSNLoss(**s)(anchors, targets, prototypes, target_sharpen_temperature=sharpen)


def msn_loss(cfg, t):
    anchors = t["anchors"].clone().requires_grad_(True)
    prototypes = t["prototypes"].clone().requires_grad_(True)
    loss = loss_of(cfg["settings"], anchors, t["targets"], prototypes)
    loss.backward()
    return {"loss": loss.item(), "grad_anchors": anchors.grad, "grad_prototypes": prototypes.grad}


def msn_ehr_step(cfg, t):
    """`train_msn.py`'s `ReferenceMsn` (the network `compare-reference` trains) on the case's
    weights: the target branch on the target view, the EHR-fused anchor branch on the anchor
    and focal views, the MSN loss against frozen prototypes, and its backward."""
    d = cfg["hidden_dim"]
    ref_cfg = {
        "vit": {"image_size": cfg["image_size"], "patch_size": cfg["patch_size"], "layers": cfg["num_layers"],
                "heads": cfg["num_heads"], "hidden": d, "mlp": cfg["mlp_dim"]},
        "ehr_dim": cfg["ehr_out"], "prototypes": cfg["num_prototypes"], "train_prototypes": False,
    }
    net = ReferenceMsn(ref_cfg, cfg["ehr_in"])
    for part, prefix in [("anchor", "w.backbone."), ("target", "w.backbone."), ("anchor_head", "w.head."),
                         ("target_head", "w.head."), ("f_ehr", "w.f_ehr."), ("g", "w.g.")]:
        getattr(net, part).load_state_dict(weights(t, prefix))
    with torch.no_grad():
        net.prototypes.copy_(t["prototypes"])
        targets_out = net.target_head(net.target(t["target_view"]))
    anchors_out = net(t["anchor_view"], t["focal_views"], t["idx_keep_anchor"], t["idx_keep_focal"], t["ehr"])
    loss = loss_of({}, anchors_out, targets_out, net.prototypes)
    loss.backward()
    return {
        "loss": loss.item(),
        "targets_out": targets_out,
        "anchors_out": anchors_out.detach(),
        "grad_f_ehr.weight": net.f_ehr.weight.grad,
        "grad_g.weight": net.g.weight.grad,
        "grad_anchor_head.layers.0.weight": net.anchor_head.layers[0].weight.grad,
    }


def auroc(cfg, t):
    scores, labels = t["scores"].double().numpy(), t["labels"].double().numpy()
    per_label, ap = [], []
    for k in range(labels.shape[1]):
        y, s = labels[:, k], scores[:, k]
        # AUROC needs both classes (sklearn raises); AP needs a positive (sklearn warns).
        per_label.append(float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else None)
        ap.append(float(average_precision_score(y, s)) if y.any() else None)
    defined = [a for a in per_label if a is not None]
    return {
        "auroc_per_label": per_label,
        "average_precision_per_label": ap,
        "auroc_macro_defined": float(np.mean(defined)),
    }


COMPUTE = {
    "vit_forward": vit_forward,
    "bicubic_14_to_6": bicubic,
    "projection_head": projection_head,
    "msn_loss_default": msn_loss,
    "msn_loss_no_sinkhorn": msn_loss,
    "msn_loss_reg_half": msn_loss,
    "msn_ehr_step": msn_ehr_step,
    "auroc": auroc,
}


# ---- new cases from a seed ----

def sizes(rng):
    """A ViT small enough for a test, its shape drawn from `rng`."""
    heads = int(rng.choice([1, 2, 4]))
    per_head = int(rng.choice([4, 8]))
    patch = int(rng.choice([4, 8]))
    grid = int(rng.choice([4, 6]))  # focal views at half the side: an exact bicubic scale
    return {
        "hidden_dim": heads * per_head,
        "num_heads": heads,
        "num_layers": int(rng.integers(1, 4)),
        "mlp_dim": heads * per_head * int(rng.choice([2, 4])),
        "patch_size": patch,
        "image_size": patch * grid,
        "layer_norm_eps": 1e-6,
    }


def vit_weights(cfg, prefix):
    """torchvision's initialisation, but the class token and the biases drawn at the position
    embedding's scale (torchvision starts them at zero, which would hide a missing one). Larger
    makes every image's class token alike, and the head's BatchNorm over a few rows then
    amplifies float32 rounding: with a token at 0.5, PyTorch's own float32 step differed from
    float64 by 4e-5 of its gradients' peak."""
    v = vit(cfg)
    sd = {k: t.clone() for k, t in v.state_dict().items()}
    sd["class_token"] = torch.randn_like(sd["class_token"]) * 0.02
    for k, t in sd.items():
        if k.endswith("bias") and "ln" not in k:
            sd[k] = torch.randn_like(t) * 0.02
    return {prefix + k: t for k, t in sd.items()}


def head_weights(dims, prefix, rng_torch):
    h = MSNProjectionHead(*dims)
    sd = h.state_dict()
    for k in list(sd):
        if k.endswith("running_var"):
            sd[k] = torch.rand(sd[k].shape, generator=rng_torch) + 0.5
        elif k.endswith("running_mean") or (k.endswith("bias") and sd[k].dtype.is_floating_point):
            sd[k] = torch.randn(sd[k].shape, generator=rng_torch) * 0.1
    return {prefix + k: t.clone() for k, t in sd.items()}


def keep(rows, tokens, ratio):
    """Kept token indices into [CLS, patches...], CLS first (lightly's `random_token_mask`)."""
    idx, _ = utils.random_token_mask(size=(rows, tokens), mask_ratio=ratio, mask_class_token=False)
    return idx


def new_case(name, rng):
    seed = int(rng.integers(2**31))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if name == "vit_forward":
        cfg = sizes(rng)
        b, side, patch = int(rng.integers(2, 4)), cfg["image_size"], cfg["patch_size"]
        focal = side // 2
        t = vit_weights(cfg, "w.")
        t["images"] = torch.randn(b, 3, side, side)
        t["focal_images"] = torch.randn(b, 3, focal, focal)
        t["idx_keep"] = keep(b, (side // patch) ** 2 + 1, 0.3)
        t["idx_keep_focal"] = keep(b, (focal // patch) ** 2 + 1, 0.4)
        cfg.update({"weights_prefix": "w.", "weight_names": "torchvision VisionTransformer state_dict",
                    "idx_keep": "token indices into [CLS, patches...] after pos-emb, per sample"})
    elif name == "bicubic_14_to_6":
        dim = int(rng.integers(4, 17))
        cfg = {"out_tokens": 36, "layout": "[1, tokens(row-major), dim]",
               "mode": "bicubic, align_corners=False, scale_factor=sqrt(36/196)"}
        t = {"grid": torch.randn(1, 196, dim)}
    elif name == "projection_head":
        i, h, o = (int(x) for x in rng.integers(4, 40, size=3))
        cfg = {"input_dim": i, "hidden_dim": h, "output_dim": o, "weights_prefix": "w.",
               "batchnorm": "training mode, eps 1e-5",
               "weight_names": "lightly MSNProjectionHead state_dict (layers.0 Linear no bias, layers.1 BN, ...)"}
        t = head_weights((i, h, o), "w.", gen)
        t["input"] = torch.randn(int(rng.integers(4, 30)), i)
    elif name in LOSS_CASES:
        b, m, d, k = int(rng.integers(2, 6)), int(rng.integers(1, 12)), int(rng.integers(4, 33)), int(rng.integers(8, 65))
        cfg = {"B": b, "M": m, "D": d, "K": k, "settings": {**LOSS_DEFAULTS, **LOSS_CASES[name]}}
        t = {"anchors": torch.randn(b * m, d), "targets": torch.randn(b, d), "prototypes": torch.randn(k, d)}
    elif name == "msn_ehr_step":
        cfg = sizes(rng)
        b, side, patch = int(rng.integers(2, 5)), cfg["image_size"], cfg["patch_size"]
        focal = side // 2
        views = int(rng.integers(1, 11))
        d = cfg["hidden_dim"]
        cfg.update({"B": b, "focal_size": focal, "ehr_in": int(rng.integers(1, 14)), "ehr_out": int(rng.integers(2, 17)),
                    "num_prototypes": int(rng.integers(8, 65)),
                    "note": "anchor and target encoders/heads start identical (w.backbone., w.head.); "
                            "prototypes frozen; anchors_out rows are view-major: anchor rows 0..B-1, "
                            "then focal view 1 rows, ..."})
        t = vit_weights(cfg, "w.backbone.")
        t.update(head_weights((d, 4 * d, d), "w.head.", gen))
        f_ehr, g = nn.Linear(cfg["ehr_in"], cfg["ehr_out"]), nn.Linear(d + cfg["ehr_out"], d)
        t.update({"w.f_ehr." + k: v.clone() for k, v in f_ehr.state_dict().items()})
        t.update({"w.g." + k: v.clone() for k, v in g.state_dict().items()})
        t["target_view"] = torch.randn(b, 3, side, side)
        t["anchor_view"] = torch.randn(b, 3, side, side)
        t["focal_views"] = torch.randn(b * views, 3, focal, focal)
        t["idx_keep_anchor"] = keep(b, (side // patch) ** 2 + 1, 0.25)
        t["idx_keep_focal"] = keep(b * views, (focal // patch) ** 2 + 1, 0.4)
        t["ehr"] = torch.randn(b, cfg["ehr_in"])
        t["prototypes"] = torch.randn(cfg["num_prototypes"], d)
    elif name == "auroc":
        rows, labels = int(rng.integers(20, 80)), int(rng.integers(2, 7))
        y = (rng.random((rows, labels)) < 0.4).astype(np.float32)
        y[:, -1] = 1.0 if rng.random() < 0.5 else 0.0  # one class only: undefined
        s = np.round(rng.random((rows, labels)) * 8) / 8 + 0.2 * y  # ties on purpose
        cfg = {"note": f"label {labels - 1} has one class: AUROC undefined (sklearn raises), and AP too "
                       "if that class is negative; macro is over defined labels"}
        t = {"scores": torch.from_numpy(s.astype(np.float32)), "labels": torch.from_numpy(y)}
    else:
        raise ValueError(name)
    return cfg, t


# ---- reading and writing the layout ----

SCALARS = {"loss", "auroc_per_label", "average_precision_per_label", "auroc_macro_defined"}


def write_case(out, name, cfg, inputs, outputs):
    tensors = {k: v.detach().contiguous() for k, v in {**inputs, **outputs}.items() if torch.is_tensor(v)}
    tensors = {k: v if k.startswith("idx_") or not v.dtype.is_floating_point else v.float() for k, v in tensors.items()}
    doc = {"case": name, **cfg, **{k: v for k, v in outputs.items() if k in SCALARS}}
    doc["tensors"] = {k: list(v.shape) for k, v in sorted(tensors.items())}
    save_file(tensors, os.path.join(out, name + ".safetensors"))
    with open(os.path.join(out, name + ".json"), "w") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)


def read_case(folder, name):
    with open(os.path.join(folder, name + ".json")) as fh:
        cfg = json.load(fh)
    return cfg, load_file(os.path.join(folder, name + ".safetensors"))


def outputs_of(name, cfg, t):
    """The case's inputs from `t` (everything but its outputs) through the computation."""
    if name == "bicubic_14_to_6":
        cfg = {"out_tokens": t["resized"].shape[1], **cfg} if "resized" in t else cfg
    inputs = {k: v for k, v in t.items() if not (k.startswith("grad_") or k in OUTPUT_TENSORS.get(name, ()))}
    return COMPUTE[name](cfg, inputs)


OUTPUT_TENSORS = {
    "vit_forward": ("tokens_full", "cls_full", "cls_masked", "pos_embedding_focal", "cls_focal"),
    "bicubic_14_to_6": ("resized",),
    "projection_head": ("output",),
    "msn_ehr_step": ("targets_out", "anchors_out"),
}


def gap(key, value, want):
    """The largest |value - want| and that relative to the scale the trainer's checks use:
    gradients against their own peak (they peak far below 1), the rest against at least 1."""
    if torch.is_tensor(value):
        value, want = value.double(), want.double()
        diff = float((value - want).abs().max()) if value.numel() else 0.0
        peak = float(want.abs().max()) if want.numel() else 0.0
        scale = max(peak, 1e-7) if key.startswith("grad_") else max(1.0, peak)
    elif isinstance(value, list):
        if any((a is None) != (b is None) for a, b in zip(value, want)):
            return math.inf, math.inf
        diff, scale = max([abs(a - b) for a, b in zip(value, want) if a is not None] or [0.0]), 1.0
    else:
        diff, scale = abs(value - want), max(1.0, abs(want))
    return diff, diff / scale


def compare(name, cfg, t, got):
    worst = 0.0
    for key, value in got.items():
        diff, rel = gap(key, value, t[key] if torch.is_tensor(value) else cfg[key])
        worst = max(worst, rel)
        print(f"  {name}: {key}: largest difference {diff:.3g} ({rel:.3g} relative)")
    return worst


def float32_error(name, cfg, inputs, outputs):
    """How far a case's float32 outputs lie from the same computation in float64. Some draws
    are ill-conditioned (MSN's sharpened targets are a softmax at temperature 0.025, BatchNorm
    runs over a few rows): PyTorch's own float32 step then differs from float64 by up to 8e-5
    of its gradients' peak, most of a 1e-4 tolerance, so such a case tests nothing."""
    if name == "auroc":  # float64 already
        return 0.0
    torch.set_default_dtype(torch.float64)
    try:
        wide = {k: v.double() if v.dtype.is_floating_point else v for k, v in inputs.items()}
        exact = COMPUTE[name](cfg, wide)
    finally:
        torch.set_default_dtype(torch.float32)
    return max(gap(k, v, exact[k])[1] for k, v in outputs.items())


def main():
    ap = argparse.ArgumentParser(
        description="Golden cases of the shared/golden layout from the reference's pieces: write new ones from "
                    "a seed, or check a folder's outputs against its inputs.")
    sub = ap.add_subparsers(dest="what", required=True)
    w = sub.add_parser("write", help="write new cases drawn from --seed into OUT_DIR")
    w.add_argument("out")
    w.add_argument("--seed", type=int, required=True)
    c = sub.add_parser("check", help="recompute a folder's outputs from its inputs")
    c.add_argument("folder")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.what == "write":
        os.makedirs(args.out, exist_ok=True)
        rng = np.random.default_rng(args.seed)
        for name, compute in COMPUTE.items():
            for draw in range(1, MAX_DRAWS + 1):
                cfg, inputs = new_case(name, rng)
                outputs = compute(cfg, inputs)
                error = float32_error(name, cfg, inputs, outputs)
                if error <= WELL_CONDITIONED:
                    break
                print(f"  {name}: draw {draw} is ill-conditioned (float32 {error:.2g} from float64); drawing again")
            else:
                print(f"error: no well-conditioned draw of {name} in {MAX_DRAWS}", file=sys.stderr)
                return 1
            cfg = {k: v for k, v in cfg.items() if k != "out_tokens"}
            cfg.update({"seed": args.seed, "float32_vs_float64": error})
            write_case(args.out, name, cfg, inputs, outputs)
            print(f"wrote {args.out}/{name}.* ({', '.join(f'{k} {v}' for k, v in cfg.items() if isinstance(v, int))}; "
                  f"float32 {error:.2g} from float64)")
        return 0
    worst, found = 0.0, 0
    for name in COMPUTE:
        if not os.path.exists(os.path.join(args.folder, name + ".json")):
            print(f"  {name}: not in {args.folder}")
            continue
        cfg, t = read_case(args.folder, name)
        worst = max(worst, compare(name, cfg, t, outputs_of(name, cfg, t)))
        found += 1
    if not found:
        print(f"error: no golden case (<case>.json + <case>.safetensors) in {args.folder}", file=sys.stderr)
        return 2
    print(f"largest relative difference {worst:.3g} over {found} cases")
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
