"""Pretrain the reference MSN (PyTorch: torchvision's ViT, lightly 1.4.21's MSN parts) on a
dataset version built by `pipeline build`, from a `config.json` written by `trainer pretrain`.

The model, views, masking, EHR fusion, loss, optimiser and schedules follow the config field
by field (METHOD.md sections 2-8, as the reference code runs them): torchvision's
`VisionTransformer` wrapped by lightly's `MAEBackbone` (masked forward, bicubic position
embedding resize), lightly's `MSNProjectionHead`, `MSNLoss`, `random_token_mask` and
`update_momentum`, torchvision's `RandomResizedCrop` and flip, AdamW. The target (EMA)
encoder is saved at the requested steps as safetensors with torchvision's names under
`backbone.`, which `trainer import-torch` reads; every step's loss, cross-entropy and me-max
go to `metrics.jsonl`.

    python trainer/reference/train_msn.py --dataset OUT/<version> --config RUN/config.json \\
        --out runs/torch --save-steps 0,10,20,40,80

Requirements: trainer/reference/requirements.txt.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from lightly.loss import MSNLoss
from lightly.models import utils
from lightly.models.modules import MAEBackbone
from lightly.models.modules.heads import MSNProjectionHead
from safetensors.torch import save_file
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer
from torchvision.transforms import v2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cxr_reader import CxrDataset  # noqa: E402


class Views:
    """METHOD.md section 3: target and anchor crops at the global size, focal crops."""

    def __init__(self, v):
        def crop(size, scale):
            return v2.Compose([
                v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(v["ratio"]), antialias=True),
                v2.RandomHorizontalFlip(v["flip"]),
                v2.ToDtype(torch.float32, scale=True),
            ])

        self.channels = v["channels"]
        self.global_crop = crop(v["global_size"], v["global_scale"])
        self.focal_crop = crop(v["focal_size"], v["focal_scale"])
        self.focal_views = v["focal_views"]
        self.mean = torch.tensor(v["mean"][: self.channels]).view(-1, 1, 1)
        self.std = torch.tensor(v["std"][: self.channels]).view(-1, 1, 1)

    def _norm(self, x):
        return (x.expand(self.channels, -1, -1) - self.mean) / self.std

    def __call__(self, image):
        x = torch.from_numpy(np.ascontiguousarray(image))[None]
        target, anchor = self._norm(self.global_crop(x)), self._norm(self.global_crop(x))
        focal = [self._norm(self.focal_crop(x)) for _ in range(self.focal_views)]
        return target, anchor, focal


class Pretraining(torch.utils.data.Dataset):
    def __init__(self, ds, views):
        self.ds, self.views = ds, views

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        item = self.ds[i]
        target, anchor, focal = self.views(item["image"])
        return target, anchor, torch.stack(focal) if focal else torch.zeros(0), torch.from_numpy(item["ehr"].copy())


class ReferenceMsn(nn.Module):
    """The reference network: anchor backbone + head, EHR fusion, EMA target, prototypes."""

    def __init__(self, cfg, ehr_in):
        super().__init__()
        v = cfg["vit"]
        d = v["hidden"]
        vit = VisionTransformer(
            image_size=v["image_size"], patch_size=v["patch_size"], num_layers=v["layers"],
            num_heads=v["heads"], hidden_dim=d, mlp_dim=v["mlp"],
        )
        self.anchor = MAEBackbone.from_vit(vit)
        self.anchor_head = MSNProjectionHead(d, 4 * d, d)
        self.target = MAEBackbone.from_vit(VisionTransformer(
            image_size=v["image_size"], patch_size=v["patch_size"], num_layers=v["layers"],
            num_heads=v["heads"], hidden_dim=d, mlp_dim=v["mlp"],
        ))
        self.target_head = MSNProjectionHead(d, 4 * d, d)
        self.target.load_state_dict(self.anchor.state_dict())
        self.target_head.load_state_dict(self.anchor_head.state_dict())
        for m in (self.target, self.target_head):
            m.requires_grad_(False)
        self.f_ehr = nn.Linear(ehr_in, cfg["ehr_dim"]) if ehr_in else None
        self.g = nn.Linear(d + cfg["ehr_dim"], d) if ehr_in else None
        self.prototypes = nn.Linear(d, cfg["prototypes"], bias=False).weight
        self.prototypes.requires_grad_(cfg["train_prototypes"])
        self.patch = v["patch_size"]

    def forward(self, anchor, focal, keep_anchor, keep_focal, ehr):
        h_a = self.anchor(anchor, idx_keep=keep_anchor)
        h_f = self.anchor(focal, idx_keep=keep_focal) if focal is not None else None
        if self.f_ehr is not None:
            h = torch.cat([h_a] + ([h_f] if h_f is not None else []), 0)
            e = self.f_ehr(ehr).repeat(len(h) // len(ehr), 1)
            return self.anchor_head(self.g(torch.cat([h, e], 1)))
        # Vanilla MSN: the head on the anchors and on the focal rows separately.
        out = [self.anchor_head(h_a)] + ([self.anchor_head(h_f)] if h_f is not None else [])
        return torch.cat(out, 0)


def keep_indices(masking, rows, side, patch, ratio, anchor):
    """METHOD.md section 4: `paper` = lightly's random_token_mask over P (its off-by-one);
    `msn` = int(P * (1 - r)) of all P patches plus CLS, one draw per batch, anchor only."""
    patches = (side // patch) ** 2
    if masking == "Paper":
        keep, _ = utils.random_token_mask(size=(rows, patches), mask_ratio=ratio)
        return keep
    if masking == "Msn" and anchor:
        kept = int(patches * (1 - ratio))
        idx = torch.randperm(patches)[:kept] + 1
        idx = torch.cat([torch.zeros(1, dtype=torch.long), idx.sort().values])
        return idx[None].expand(rows, -1)
    return None


def schedule(cfg, epoch, step, per_epoch):
    """The learning rate, weight decay and EMA momentum of a step (as `trainer`'s schedule_at)."""
    total = max(per_epoch * cfg["epochs"], 1)
    span = cfg.get("schedule_scale", 1.0) * total
    momentum = cfg["ema_start"] + (cfg["ema_end"] - cfg["ema_start"]) * step / span

    def cosine(a, b, t):
        return b + (a - b) * 0.5 * (1 + math.cos(math.pi * t))

    lr, wd, warm_epochs = cfg["lr"], cfg["weight_decay"], cfg["warmup_epochs"]
    if cfg.get("schedule", "epoch") == "epoch":
        if epoch < warm_epochs:
            return lr * (epoch + 1) / warm_epochs, wd, momentum
        return cosine(lr, 0.0, (epoch - warm_epochs) / max(cfg["epochs"] - warm_epochs, 1)), wd, momentum
    s, warm = step + 1, warm_epochs * per_epoch
    if s < warm:
        lr_s = cfg["start_lr"] + s / warm * (lr - cfg["start_lr"])
    else:
        lr_s = max(cosine(lr, cfg["final_lr"], (s - warm) / max(span - warm, 1)), cfg["final_lr"])
    end = cfg.get("weight_decay_end")
    if end is not None:
        w = cosine(wd, end, s / span)
        wd = max(w, end) if end <= wd else min(w, end)
    return lr_s, wd, momentum


def param_groups(net, cfg):
    trained = [net.anchor, net.anchor_head] + [m for m in (net.f_ehr, net.g) if m is not None]
    params = [p for m in trained for p in m.parameters()]
    if cfg["train_prototypes"]:
        params.append(net.prototypes)
    if cfg["decay_exempt_norms_biases"]:
        decay = [p for p in params if p.ndim > 1 and p is not net.prototypes]
        exempt = [p for p in params if p.ndim <= 1 or p is net.prototypes]
        return [{"params": decay}, {"params": exempt, "exempt": True}]
    return [{"params": params}]


def save_target(net, path):
    sd = {f"backbone.{k}": v.detach().contiguous().clone() for k, v in net.target.state_dict().items()
          if not k.startswith("heads")}
    save_file(sd, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="OUT/<version>, as built by pipeline build")
    ap.add_argument("--config", required=True, help="a config.json written by trainer pretrain")
    ap.add_argument("--out", required=True)
    ap.add_argument("--save-steps", default="", help="comma-separated step counts to save the target at")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    with open(a.config) as f:
        cfg = json.load(f)
    for key, supported in (("masking", ("Paper", "Msn", "None")),):
        if cfg[key] not in supported:
            raise SystemExit(f"{a.config}: {key} {cfg[key]!r} is not supported here ({supported})")
    torch.set_num_threads(a.threads)
    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"] % 2**32)
    split = "train" if cfg["pretrain_split"] == "train" else None
    ds = CxrDataset(a.dataset, split=split, ehr_columns=cfg.get("ehr_columns", []))
    if cfg.get("dataset_version") not in (None, ds.version):
        print(f"note: the config was written for dataset {cfg['dataset_version']}, this is {ds.version}")
    views = Views(cfg["views"])
    loader = torch.utils.data.DataLoader(
        Pretraining(ds, views), batch_size=cfg["batch_size"], shuffle=True, drop_last=cfg.get("drop_last", False),
        generator=torch.Generator().manual_seed(cfg["seed"]),
    )
    net = ReferenceMsn(cfg, len(cfg.get("ehr_columns", [])))
    groups = param_groups(net, cfg)
    opt = torch.optim.AdamW(groups, lr=cfg["lr"], weight_decay=cfg["weight_decay"], eps=1e-8)
    loss_cfg = cfg["loss"]
    criterion = MSNLoss(temperature=loss_cfg["temperature"], sinkhorn_iterations=loss_cfg["sinkhorn_iterations"],
                        regularization_weight=loss_cfg["me_max_weight"])
    per_epoch = len(loader)
    total = per_epoch * cfg["epochs"]
    stop = min(x for x in (total, a.max_steps, cfg.get("max_steps")) if x is not None)
    saves = sorted({int(s) for s in a.save_steps.split(",") if s.strip()})
    os.makedirs(a.out, exist_ok=True)
    metrics = open(os.path.join(a.out, "metrics.jsonl"), "w")
    vcfg, patch, ratio = cfg["views"], cfg["vit"]["patch_size"], cfg["mask_ratio"]
    step, started = 0, time.time()
    if 0 in saves:
        save_target(net, os.path.join(a.out, f"step-{0:08}.safetensors"))
    for epoch in range(cfg["epochs"]):
        net.train()
        for target, anchor, focal, ehr in loader:
            if step >= stop:
                break
            lr, wd, m = schedule(cfg, epoch, step, per_epoch)
            for g in opt.param_groups:
                g["lr"], g["weight_decay"] = lr, 0.0 if g.get("exempt") else wd
            b = len(anchor)
            utils.update_momentum(net.anchor, net.target, m)
            utils.update_momentum(net.anchor_head, net.target_head, m)
            nf = vcfg["focal_views"]
            focal = focal.transpose(0, 1).reshape(nf * b, *focal.shape[2:]) if nf else None
            keep_a = keep_indices(cfg["masking"], b, vcfg["global_size"], patch, ratio, True)
            keep_f = keep_indices(cfg["masking"], nf * b, vcfg["focal_size"], patch, ratio, False) if nf else None
            z_a = net(anchor, focal, keep_a, keep_f, ehr if net.f_ehr is not None else None)
            with torch.no_grad():
                z_t = net.target_head(net.target(target))
            protos = net.prototypes if cfg["train_prototypes"] else net.prototypes.data
            loss = criterion(z_a, z_t, protos, target_sharpen_temperature=loss_cfg["sharpen_temperature"])
            with torch.no_grad():
                probs = torch.softmax(nn.functional.normalize(z_a, dim=1)
                                      @ nn.functional.normalize(protos, dim=1).T / loss_cfg["temperature"], dim=1)
                me_max = float(criterion.regularization_loss(probs.mean(0)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.get("grad_clip_norm"):
                clipped = [p for m in (net.anchor, net.anchor_head, net.f_ehr, net.g) if m is not None
                           for p in m.parameters()]
                torch.nn.utils.clip_grad_norm_(clipped, cfg["grad_clip_norm"])
            opt.step()
            value = float(loss.detach())
            metrics.write(json.dumps({
                "epoch": epoch, "step": step, "loss": value,
                "cross_entropy": value - loss_cfg["me_max_weight"] * me_max, "me_max": me_max,
                "lr": lr, "weight_decay": wd, "momentum": m,
            }) + "\n")
            step += 1
            if step in saves:
                metrics.flush()
                save_target(net, os.path.join(a.out, f"step-{step:08}.safetensors"))
            if step % 50 == 0 or step == stop:
                rate = step * cfg["batch_size"] / (time.time() - started)
                print(f"step {step}/{stop} epoch {epoch} loss {value:.4f} {rate:.1f} images/s", flush=True)
        if step >= stop:
            break
    metrics.close()
    print(json.dumps({"steps": step, "seconds": time.time() - started, "out": a.out}))


if __name__ == "__main__":
    main()
