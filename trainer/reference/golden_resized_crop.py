"""Golden case `resized_crop_aa`: the MSN views' resampling (trainer/src/views.rs) against
torchvision's `resized_crop(..., antialias=True)`, the filter of the reference's
`RandomResizedCrop` (train_msn.py).

A u8 image with fine structure (stripes, a checkerboard, noise, a disc) is cropped and resized
by boxes that downscale up to 4.7x, keep the size, and upscale, square and not, at the edges
and inside, some flipped. The expected outputs are torchvision's on the image as float in
[0, 1] (`resized` rows, one per box); `resized_u8` is the same through the u8 path the
reference's pipeline takes (resized as u8, rounded to gray levels, then scaled), kept to show
how far the two differ. Writes `<out>/resized_crop_aa.{json,safetensors}`.

    python3 golden_resized_crop.py OUT_DIR
"""

import json
import os
import sys

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.transforms.v2 import functional as F

SIDE = 96
# (top, left, height, width, out, flip)
BOXES = [
    (0, 0, 96, 96, 24, 0),  # whole image, 4x down
    (0, 0, 96, 96, 32, 1),  # 3x down, flipped
    (10, 3, 71, 80, 17, 0),  # 4.2x / 4.7x, not square
    (50, 60, 46, 36, 20, 1),  # at the bottom-right edge
    (7, 11, 40, 40, 40, 0),  # same size
    (20, 30, 13, 19, 24, 0),  # upscale
    (0, 40, 96, 30, 28, 1),  # down in rows, barely in columns
    (33, 0, 25, 96, 25, 0),  # 1x rows, 3.84x columns
]


def image():
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    rng = np.random.default_rng(7)
    img = 128 + 100 * np.sin(x * 2.7) * (y < 48)  # near-Nyquist stripes, top half
    img += 90 * ((x // 2 + y // 2) % 2 - 0.5) * (y >= 48)  # 2-px checkerboard, bottom half
    img += 40 * (((x - 60) ** 2 + (y - 30) ** 2) < 300)  # a disc
    img += rng.normal(0, 12, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    img = torch.from_numpy(image())[None]  # [1, H, W] u8
    as_float = img.to(torch.float32) / 255.0
    rows, rows_u8 = [], []
    for top, left, h, w, size, flip in BOXES:
        f = F.resized_crop(as_float, top, left, h, w, [size, size], antialias=True)
        u = F.resized_crop(img, top, left, h, w, [size, size], antialias=True).to(torch.float32) / 255.0
        if flip:
            f, u = F.horizontal_flip(f), F.horizontal_flip(u)
        rows.append(f.reshape(-1))
        rows_u8.append(u.reshape(-1))
    tensors = {
        "image": img[0].to(torch.float32),
        "boxes": torch.tensor(BOXES, dtype=torch.float32),
        "resized": torch.cat(rows),
        "resized_u8": torch.cat(rows_u8),
    }
    save_file(tensors, os.path.join(out, "resized_crop_aa.safetensors"))
    worst_u8 = float((tensors["resized"] - tensors["resized_u8"]).abs().max())
    doc = {
        "case": "resized_crop_aa",
        "what": "torchvision.transforms.v2.functional.resized_crop(img, top, left, height, width, "
        "[out, out], antialias=True), then horizontal_flip where flip is 1",
        "image": "u8 values stored as float32, [side, side]",
        "boxes": "rows of (top, left, height, width, out, flip)",
        "resized": "the outputs on the image as float32 / 255, each box's out x out row-major, concatenated",
        "resized_u8": "the same through the u8 path (rounded to gray levels) / 255",
        "max_float_vs_u8": worst_u8,
        "side": SIDE,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
    }
    with open(os.path.join(out, "resized_crop_aa.json"), "w") as fh:
        json.dump(doc, fh, indent=2)
    print(f"wrote {out}/resized_crop_aa.*; float vs u8 path: max {worst_u8:.5f} ({worst_u8 * 255:.2f} gray levels)")


if __name__ == "__main__":
    main()
