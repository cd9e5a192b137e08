"""Read a dataset version built by `pipeline build` from Python.

A version folder `OUT/<version>/` holds `manifest.json` (every part with its sha256) and
`images/part-*.safetensors` shards: tensor `images` (u8 [N, H, W]) and tensor `features`
(f32 [N, F], the numeric columns of the same rows: EHR encodings, labels, split code 0/1/2;
NaN = null), the column names in the metadata key `feature_columns`. See the README,
"Using the dataset from PyTorch".

    from cxr_reader import CxrDataset
    ds = CxrDataset("out/demo/datasets/<version>", split="train", ehr_columns=["sex_male", "age_norm"])
    x = ds[0]            # {"image": u8 [H, W], "ehr": f32 [2], "labels": f32 [14] (NaN = blank)}
    tds = ds.torch()     # a torch.utils.data.Dataset of the same items, as tensors

The EHR columns of an `--ehr` choice are listed by `trainer ehr-columns --ehr CHOICE`, and a
pretraining run saves them in its `config.json` (`ehr_columns`).
"""

import hashlib
import json
import os

import numpy as np
from safetensors import safe_open

SPLITS = {"train": 0.0, "validate": 1.0, "test": 2.0}


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CxrDataset:
    """The rows of one split (or all) of a dataset version, with selected feature columns."""

    def __init__(self, root, split=None, ehr_columns=(), verify=True):
        self.root = root
        with open(os.path.join(root, "manifest.json")) as f:
            self.manifest = json.load(f)
        self.version = self.manifest["dataset_version"]
        task = self.manifest.get("task", {})
        self.labels = task.get("labels", [])
        self.label_columns = task.get("label_columns", [])
        self.ehr_columns = list(ehr_columns)
        if split is not None and split not in SPLITS:
            raise ValueError(f"split {split!r}: expected one of {sorted(SPLITS)}")
        images, features, columns = [], [], None
        for part in self.manifest["parts"]:
            path = os.path.join(root, part["images"])
            if verify and _sha256(path) != part["images_sha256"]:
                raise ValueError(f"{path}: sha256 differs from the manifest; the dataset does not verify")
            with safe_open(path, framework="np") as f:
                names = json.loads(f.metadata()["feature_columns"])
                if columns is not None and names != columns:
                    raise ValueError(f"{path}: feature columns differ from the first shard's")
                columns = names
                feats = f.get_tensor("features")
                keep = np.ones(len(feats), bool)
                if split is not None:
                    keep = feats[:, names.index("split")] == SPLITS[split]
                features.append(feats[keep])
                images.append(f.get_tensor("images")[keep])
        self.columns = columns or []
        self.features = np.concatenate(features) if features else np.zeros((0, 0), np.float32)
        self.images = np.concatenate(images) if images else np.zeros((0, 0, 0), np.uint8)
        missing = [c for c in self.ehr_columns + self.label_columns if c not in self.columns]
        if missing:
            raise ValueError(f"{root}: no feature column(s) {missing}; the dataset has {self.columns}")
        self._ehr = self.matrix(self.ehr_columns)
        self._labels = self.matrix(self.label_columns)

    def column(self, name):
        """One feature column, f32 [N]."""
        return self.features[:, self.columns.index(name)]

    def matrix(self, names):
        """Feature columns, f32 [N, len(names)]."""
        return self.features[:, [self.columns.index(n) for n in names]] if names else self.features[:, :0]

    def ehr(self):
        """The selected EHR vector, f32 [N, len(ehr_columns)]."""
        return self._ehr

    def label_matrix(self):
        """The task's labels as built, f32 [N, labels] (NaN = blank)."""
        return self._labels

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        return {
            "image": self.images[i],
            "ehr": self._ehr[i],
            "labels": self._labels[i],
        }

    def torch(self, transform=None):
        """A `torch.utils.data.Dataset`: items as tensors; `transform` maps the u8 [H, W] image."""
        import torch

        ds = self

        class _Torch(torch.utils.data.Dataset):
            def __len__(self):
                return len(ds)

            def __getitem__(self, i):
                item = ds[i]
                image = torch.from_numpy(np.ascontiguousarray(item["image"]))
                return {
                    "image": transform(image) if transform else image,
                    "ehr": torch.from_numpy(np.ascontiguousarray(item["ehr"])),
                    "labels": torch.from_numpy(np.ascontiguousarray(item["labels"])),
                }

        return _Torch()
