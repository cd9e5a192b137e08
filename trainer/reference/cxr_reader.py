"""Read a dataset version built by `pipeline build` from Python.

A version folder `OUT/<version>/` holds `manifest.json` (every part with its sha256), the
feature parts `features/part-*.parquet` (one row per image: ids, split, raw variables, EHR
encodings, labels) and, unless the build was table-only, the image shards
`images/part-*.safetensors` (tensor `images`, u8 [N, H, W], the same rows in the same order).
See the README, "Using the dataset from PyTorch".

    from cxr_reader import CxrDataset
    ds = CxrDataset("out/demo/datasets/<version>", split="train", ehr_columns=["sex_male", "age_norm"])
    x = ds[0]   # {"image": u8 [H, W] (None for a table-only build), "ehr": f32 [2],
                #  "labels": f32 [14], "raw_labels": f32 [14], "dicom_id": str, "split": str}
    tds = ds.torch()     # a torch.utils.data.Dataset of the same items, as tensors

- "labels" are the targets as built: 1 positive, 0 negative or blank (not mentioned, as the
  reference reads it), uncertain as the build's `--uncertain` policy says; NaN only for an
  uncertain label under `--uncertain ignore` or a study without labels (`--keep-unlabeled`).
  "raw_labels" are the report labeller's values: 1, 0, -1, NaN = blank.
- The id is under the task's id column (`dicom_id` for MIMIC-CXR; `ds.id_column`).
- Images are read from memory-mapped shards, one shard mapped at a time, so memory stays
  about one shard whatever the dataset's size. Each file is checked once against the
  manifest's sha256; the result is cached (`~/.cache/cxr-reader/verified.json`, or
  `$CXR_READER_CACHE`) by path, size and modification time, so opening again reads nothing.

Needs numpy and pyarrow. The EHR columns of an `--ehr` choice are listed by
`trainer ehr-columns --ehr CHOICE [--dataset DIR]`, and a pretraining run saves them in its
`config.json` (`ehr_columns`).
"""

import hashlib
import json
import os
import struct

import numpy as np
import pyarrow.parquet as pq

SPLITS = ("train", "validate", "test")


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Verified:
    """sha256 checks of files, remembered by (path, size, mtime) across processes."""

    def __init__(self, cache_dir=None):
        cache_dir = cache_dir or os.environ.get("CXR_READER_CACHE") or os.path.expanduser("~/.cache/cxr-reader")
        self.path = os.path.join(cache_dir, "verified.json")
        try:
            with open(self.path) as f:
                self.known = json.load(f)
        except (OSError, ValueError):
            self.known = {}
        self.changed = False

    def check(self, path, sha256):
        real = os.path.realpath(path)
        st = os.stat(real)
        stamp = [st.st_size, st.st_mtime_ns, sha256]
        if self.known.get(real) == stamp:
            return
        actual = _sha256(real)
        if actual != sha256:
            raise ValueError(f"{path}: sha256 {actual} differs from the manifest's {sha256}; the dataset does not verify")
        self.known[real] = stamp
        self.changed = True

    def save(self):
        if not self.changed:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.known, f)
        os.replace(tmp, self.path)


def _images_tensor(path):
    """(offset, shape) of the u8 tensor `images` in a safetensors file, from its header."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    info = header["images"]
    if info["dtype"] != "U8" or len(info["shape"]) != 3:
        raise ValueError(f"{path}: tensor images is {info['dtype']} {info['shape']}, expected U8 [N, H, W]")
    return 8 + n + info["data_offsets"][0], tuple(info["shape"])


class CxrDataset:
    """The rows of one split (or all) of a dataset version, with selected EHR columns."""

    def __init__(self, root, split=None, ehr_columns=(), verify=True, cache_dir=None):
        self.root = root
        with open(os.path.join(root, "manifest.json")) as f:
            self.manifest = json.load(f)
        self.version = self.manifest["dataset_version"]
        task = self.manifest.get("task") or {}
        self.labels = task.get("labels", [])
        self.label_columns = task.get("label_columns", [])
        self.raw_label_columns = task.get("raw_label_columns", [])
        self.id_column = task.get("id_column") or "dicom_id"
        self.ehr_columns = list(ehr_columns)
        if split is not None and split not in SPLITS:
            raise ValueError(f"split {split!r}: expected one of {list(SPLITS)}")
        verified = _Verified(cache_dir) if verify else None
        wanted = [self.id_column, "split"] + self.ehr_columns + self.label_columns + self.raw_label_columns
        ids, splits, ehr, labels, raw = [], [], [], [], []
        # Per kept row: its shard (index into self._shards) and its row in that shard.
        shard_of, row_in = [], []
        self._shards = []
        for part in self.manifest["parts"]:
            features = os.path.join(root, part["features"])
            if verified:
                verified.check(features, part["features_sha256"])
            names = pq.read_schema(features).names
            missing = [c for c in wanted if c not in names]
            if missing:
                raise ValueError(f"{features}: no column(s) {missing}; the dataset has {names}")
            t = pq.read_table(features, columns=wanted)
            part_split = np.asarray(t.column("split").to_pylist(), dtype=object)
            keep = np.flatnonzero(part_split == split) if split is not None else np.arange(t.num_rows)
            t = t.take(keep)
            ids.extend(t.column(self.id_column).to_pylist())
            splits.extend(t.column("split").to_pylist())
            ehr.append(self._floats(t, self.ehr_columns))
            labels.append(self._floats(t, self.label_columns))
            raw.append(self._floats(t, self.raw_label_columns))
            if part.get("images"):
                path = os.path.join(root, part["images"])
                if verified:
                    verified.check(path, part["images_sha256"])
                offset, shape = _images_tensor(path)
                if shape[0] != part["rows"]:
                    raise ValueError(f"{path}: {shape[0]} images for {part['rows']} rows in the manifest")
                shard_of.append(np.full(len(keep), len(self._shards), np.int32))
                row_in.append(keep.astype(np.int64))
                self._shards.append((path, offset, shape))
        if verified:
            verified.save()
        self.ids = ids
        self.splits = splits
        self._ehr = np.concatenate(ehr) if ehr else np.zeros((0, len(self.ehr_columns)), np.float32)
        self._labels = np.concatenate(labels) if labels else np.zeros((0, len(self.label_columns)), np.float32)
        self._raw = np.concatenate(raw) if raw else np.zeros((0, len(self.raw_label_columns)), np.float32)
        self.has_images = bool(self._shards) and len(np.concatenate(shard_of)) == len(ids)
        self._shard_of = np.concatenate(shard_of) if self.has_images else None
        self._row_in = np.concatenate(row_in) if self.has_images else None
        self._mapped = (None, None)

    @staticmethod
    def _floats(table, names):
        """Columns as f32 [rows, len(names)], null as NaN."""
        if not names:
            return np.zeros((table.num_rows, 0), np.float32)
        cols = [table.column(n).to_numpy(zero_copy_only=False).astype(np.float32) for n in names]
        return np.stack(cols, axis=1)

    def _image(self, i):
        if not self.has_images:
            return None
        s = int(self._shard_of[i])
        index, mapped = self._mapped
        if index != s:
            path, offset, shape = self._shards[s]
            # One shard mapped at a time: the previous mapping is dropped with its pages.
            self._mapped = (None, None)
            mapped = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=shape)
            self._mapped = (s, mapped)
        return np.array(mapped[self._row_in[i]])

    def ehr(self):
        """The selected EHR vector, f32 [N, len(ehr_columns)]."""
        return self._ehr

    def label_matrix(self):
        """The task's targets as built, f32 [N, labels] (module docs)."""
        return self._labels

    def raw_label_matrix(self):
        """The labeller's raw values, f32 [N, labels] (NaN = blank)."""
        return self._raw

    def images(self):
        """Every image of the selection, u8 [N, H, W], read shard by shard (N x H x W bytes)."""
        if not self.has_images:
            raise ValueError(f"{self.root}: a table-only build has no images")
        return np.stack([self._image(i) for i in range(len(self))]) if len(self) else np.zeros((0, 0, 0), np.uint8)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {
            "image": self._image(i),
            "ehr": self._ehr[i],
            "labels": self._labels[i],
            "raw_labels": self._raw[i],
            self.id_column: self.ids[i],
            "split": self.splits[i],
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
                image = item["image"]
                if image is not None:
                    image = torch.from_numpy(np.ascontiguousarray(image))
                    image = transform(image) if transform else image
                return {
                    "image": image,
                    "ehr": torch.from_numpy(np.ascontiguousarray(item["ehr"])),
                    "labels": torch.from_numpy(np.ascontiguousarray(item["labels"])),
                    "raw_labels": torch.from_numpy(np.ascontiguousarray(item["raw_labels"])),
                    ds.id_column: item[ds.id_column],
                    "split": item["split"],
                }

        return _Torch()
