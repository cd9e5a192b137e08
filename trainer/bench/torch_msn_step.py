#!/usr/bin/env python3
"""One EHR-augmented MSN pretraining step of the reference PyTorch code, timed on the CPU
(or on a GPU with --device cuda).

The counterpart of `trainer bench`: the same model (torchvision's ViT layout: conv patch
embedding, nn.MultiheadAttention pre-norm blocks, exact GELU, LayerNorm eps 1e-6), the same
views (1 target + 1 anchor at 224, 10 focal at 96), the reference's token masking (CLS + 165
of 196 patches, CLS + 29 of 36), the EHR fusion (f_ehr, g), the projection head, the MSN loss
with sharpening, Sinkhorn and me-max, AdamW and the EMA update (METHOD.md sections 2-8).
Views are random tensors: this times the model step only, as `trainer bench` does.

It prints the median time of each part over the timed steps, images/s (batch / step time)
and peak resident memory, as text and as one JSON line.

    python3 trainer/bench/torch_msn_step.py --batch-size 8 --steps 10
    python3 trainer/bench/torch_msn_step.py --device cuda --model vit-small --batch-size 64
"""

import argparse
import json
import math
import os
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

PRESETS = {
    "vit-tiny": dict(hidden=192, layers=12, heads=6, mlp=768, image=224, patch=16),
    "vit-small": dict(hidden=384, layers=12, heads=6, mlp=1536, image=224, patch=16),
    "vit-tiny-deit": dict(hidden=192, layers=12, heads=3, mlp=768, image=224, patch=16),
    "vit-micro": dict(hidden=96, layers=4, heads=3, mlp=384, image=64, patch=8),
}


class Block(nn.Module):
    """torchvision's EncoderBlock without dropout."""

    def __init__(self, d, heads, mlp):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(d, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(d, mlp), nn.GELU(), nn.Linear(mlp, d))

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    """torchvision's VisionTransformer with lightly's masked forward (kept-token indices)."""

    def __init__(self, hidden, layers, heads, mlp, image, patch):
        super().__init__()
        self.patch, self.grid = patch, image // patch
        self.conv_proj = nn.Conv2d(3, hidden, patch, patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.pos_embedding = nn.Parameter(torch.randn(1, 1 + self.grid**2, hidden) * 0.02)
        self.layers = nn.Sequential(*[Block(hidden, heads, mlp) for _ in range(layers)])
        self.ln = nn.LayerNorm(hidden, eps=1e-6)

    def pos(self, side):
        if side == self.grid:
            return self.pos_embedding
        d = self.pos_embedding.shape[-1]
        cls, grid = self.pos_embedding[:, :1], self.pos_embedding[:, 1:]
        grid = grid.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
        return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, side * side, d)], 1)

    def forward(self, x, keep=None):
        t = self.conv_proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.class_token.expand(len(t), -1, -1), t], 1)
        t = t + self.pos(x.shape[-1] // self.patch)
        if keep is not None:
            t = torch.gather(t, 1, keep[..., None].expand(-1, -1, t.shape[-1]))
        return self.ln(self.layers(t))[:, 0]


def head(d):
    """METHOD.md section 6."""
    return nn.Sequential(
        nn.Linear(d, 4 * d, bias=False),
        nn.BatchNorm1d(4 * d),
        nn.GELU(),
        nn.Linear(4 * d, 4 * d, bias=False),
        nn.BatchNorm1d(4 * d),
        nn.GELU(),
        nn.Linear(4 * d, d),
    )


def msn_loss(anchors, targets, prototypes, tau=0.1, sharpen=0.25, iters=3):
    """METHOD.md section 7."""
    a, t, q = F.normalize(anchors, dim=1), F.normalize(targets, dim=1), F.normalize(prototypes, dim=1)
    log_pa = F.log_softmax(a @ q.T / tau, dim=1)
    with torch.no_grad():
        pt = F.softmax(t @ q.T / (tau * sharpen), dim=1)
        b, k = pt.shape
        p = pt.T
        p = p / p.sum()
        for _ in range(iters):
            p = p / p.sum(dim=1, keepdim=True) / k
            p = p / p.sum(dim=0, keepdim=True) / b
        pt = (p * b).T.repeat(len(anchors) // b, 1)
    ce = -(pt * log_pa).sum(dim=1).mean()
    pbar = log_pa.exp().mean(dim=0)
    reg = (pbar * torch.log(pbar)).sum() + math.log(len(prototypes))
    return ce + reg


def keep_indices(rows, patches, ratio=0.15):
    """The reference's masking: int(P * 0.85) tokens counting CLS, among 0..P-1, CLS forced."""
    kept = int(patches * (1 - ratio))
    idx = torch.argsort(torch.rand(rows, patches - 1), dim=1)[:, : kept - 1] + 1
    return torch.cat([torch.zeros(rows, 1, dtype=torch.long), idx.sort(dim=1).values], 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit-tiny", choices=sorted(PRESETS))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--focal-views", type=int, default=10)
    ap.add_argument("--global-size", type=int, default=None, help="default: the model's image size")
    ap.add_argument("--focal-size", type=int, default=None, help="default: 96 at 224, 3/7 of it otherwise")
    ap.add_argument("--ehr-width", type=int, default=30, help="EHR vector width (0: vanilla MSN)")
    ap.add_argument("--prototypes", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=24)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument(
        "--amp",
        default="off",
        choices=["off", "bf16", "f16"],
        help="automatic mixed precision: the forward under torch.autocast in that type (f32 weights, "
        "optimizer and EMA; f16 with a GradScaler), as PyTorch users train on a GPU",
    )
    args = ap.parse_args()
    dev = torch.device(args.device)
    # GPU kernels run asynchronously: wait for them before reading the clock.
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    p = PRESETS[args.model]
    d, patch = p["hidden"], p["patch"]
    g = args.global_size or p["image"]
    f = args.focal_size or (96 if g == 224 else max(patch, round(g * 3 / 7 / patch) * patch))
    b, nf = args.batch_size, args.focal_views

    torch.set_default_device(dev)
    anchor, target = ViT(**p), ViT(**p)
    target.load_state_dict(anchor.state_dict())
    anchor_head, target_head = head(d), head(d)
    target_head.load_state_dict(anchor_head.state_dict())
    for m in (target, target_head):
        m.requires_grad_(False)
    f_ehr = nn.Linear(args.ehr_width, 128) if args.ehr_width else None
    fuse = nn.Linear(d + 128, d) if args.ehr_width else None
    # Frozen prototypes, as the reference passes them detached.
    prototypes = torch.empty(args.prototypes, d).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d))
    trained = [*anchor.parameters(), *anchor_head.parameters()]
    if f_ehr is not None:
        trained += [*f_ehr.parameters(), *fuse.parameters()]
    opt = torch.optim.AdamW(trained, lr=1e-4, weight_decay=1e-3, eps=1e-8)
    ema_src = [*anchor.parameters(), *anchor_head.parameters()]
    ema_dst = [*target.parameters(), *target_head.parameters()]

    amp_dtype = {"off": None, "bf16": torch.bfloat16, "f16": torch.float16}[args.amp]
    autocast = lambda: torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None)  # noqa: E731
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16)

    gp, fp = (g // patch) ** 2, (f // patch) ** 2
    parts = {k: [] for k in ("ema", "forward", "backward", "optimizer", "step")}
    for step in range(args.warmup + args.steps):
        views_t = torch.randn(b, 3, g, g)
        views_a = torch.randn(b, 3, g, g)
        views_f = torch.randn(nf * b, 3, f, f)
        keep_a, keep_f = keep_indices(b, gp).to(dev), keep_indices(nf * b, fp).to(dev)
        ehr = torch.rand(b, args.ehr_width)

        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            torch._foreach_lerp_(ema_dst, ema_src, 1 - 0.996)
        sync()
        t1 = time.perf_counter()
        with autocast():
            h = torch.cat([anchor(views_a, keep_a), anchor(views_f, keep_f)], 0)
            if f_ehr is not None:
                e = f_ehr(ehr).repeat(1 + nf, 1)
                h = fuse(torch.cat([h, e], 1))
            z_a = anchor_head(h)
            with torch.no_grad():
                z_t = target_head(target(views_t))
        # The loss (softmax, Sinkhorn, entropy) in f32, as autocast users do.
        loss = msn_loss(z_a.float(), z_t.float(), prototypes)
        loss.detach().item()
        sync()
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        sync()
        t3 = time.perf_counter()
        scaler.step(opt)
        scaler.update()
        sync()
        t4 = time.perf_counter()
        if step >= args.warmup:
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                parts[k].append(v)

    med = {k: statistics.median(v) for k, v in parts.items()}
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ips = b / med["step"]
    print(
        f"pytorch {torch.__version__}, {args.threads} threads, {args.model}, batch {b}, "
        f"views 2x{g} + {nf}x{f}, EHR width {args.ehr_width}, amp {args.amp}"
    )
    print("median seconds: " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
    gpu_mb = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    gpu = f", peak GPU memory allocated {gpu_mb:.0f} MiB" if gpu_mb is not None else ""
    print(f"{ips:.2f} images/s, peak RSS {rss_mb:.0f} MB{gpu}")
    print(
        json.dumps(
            {
                "impl": "pytorch",
                "version": torch.__version__,
                "threads": args.threads,
                "model": args.model,
                "batch_size": b,
                "seconds": med,
                "images_per_second": ips,
                "peak_rss_mb": rss_mb,
                "device": args.device,
                "peak_gpu_mb": gpu_mb,
            }
        )
    )


if __name__ == "__main__":
    main()
