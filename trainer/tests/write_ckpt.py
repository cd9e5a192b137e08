"""Writes a PyTorch Lightning-style checkpoint (torch.save's ZIP container, pickle protocol 2)
from the float32 tensors of a safetensors file, without PyTorch: the pickle names torch's
classes through stand-in modules, exactly as torch.save writes them.

usage: write_ckpt.py SRC.safetensors DST.ckpt FROM_PREFIX TO_PREFIX [--drop NAME] [--extra NAME]
Tensors named FROM_PREFIX* are renamed TO_PREFIX*; the state dict also gets a copy of each
under `anchor_backbone.` (another module of the Lightning model, to be ignored).
"""
import collections
import io
import json
import pickle
import struct
import sys
import types
import zipfile

src, dst, from_prefix, to_prefix = sys.argv[1:5]
rest = sys.argv[5:]
drop = [rest[i + 1] for i, a in enumerate(rest) if a == "--drop"]
extra = [rest[i + 1] for i, a in enumerate(rest) if a == "--extra"]

raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8 : 8 + n])
data = raw[8 + n :]

torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")


class FloatStorage:
    pass


def _rebuild_tensor_v2(*args):
    raise RuntimeError("stand-in")


FloatStorage.__module__ = "torch"
_rebuild_tensor_v2.__module__ = "torch._utils"
torch.FloatStorage = FloatStorage
utils._rebuild_tensor_v2 = _rebuild_tensor_v2
torch._utils = utils
sys.modules["torch"] = torch
sys.modules["torch._utils"] = utils


class Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, list(shape)

    def __reduce__(self):
        stride, s = [], 1
        for d in reversed(self.shape):
            stride.insert(0, s)
            s *= d
        args = (self.storage, 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict())
        return (_rebuild_tensor_v2, args)


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
        return None


blobs = {}
state = collections.OrderedDict()


def add(name, blob, shape):
    key = str(len(blobs))
    blobs[key] = blob
    state[name] = Tensor(Storage(key, len(blob) // 4), shape)


for name in sorted(k for k in header if k != "__metadata__"):
    info = header[name]
    if info["dtype"] != "F32" or not name.startswith(from_prefix):
        continue
    a, b = info["data_offsets"]
    new = to_prefix + name[len(from_prefix) :]
    if new in drop:
        continue
    add(new, data[a:b], info["shape"])
    add("anchor_backbone." + name[len(from_prefix) :], data[a:b], info["shape"])
for name in extra:
    add(name, struct.pack("<4f", 1, 2, 3, 4), [4])

ckpt = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.1.0", "state_dict": state}
buf = io.BytesIO()
Pickler(buf, protocol=2).dump(ckpt)
with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", buf.getvalue())
    z.writestr("archive/byteorder", "little")
    for key, blob in blobs.items():
        z.writestr("archive/data/" + key, blob)
    z.writestr("archive/version", "3\n")
