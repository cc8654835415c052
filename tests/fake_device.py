"""A pretend accelerator for machines without a GPU: `with FakeDevice() as dev:` gives a device
(`torch.device("meta")` by name) whose tensors live in CPU memory but obey CUDA's rules.

- A factory call or `.to()` with `device=dev` makes a device tensor; results of operations on
  device tensors are device tensors, and `t.device` reports `dev`.
- An operation that mixes a device tensor with a host tensor of one or more dimensions raises
  (CUDA raises "Expected all tensors to be on the same device"); 0-dim host tensors are allowed,
  as CUDA allows them, and so is indexing a device tensor with host indices.
- `.numpy()` of a device tensor raises (CUDA: "can't convert cuda tensor to numpy"); `.cpu()` and
  `.to("cpu")` give host tensors.
- Reading a device value on the host (`.item()`, `.tolist()`, `int()`, `float()`, `bool()`,
  `.cpu()`) is a host synchronisation on a GPU: `syncs` counts them.

So a code path that runs under it keeps every tensor of the computation on the device it was
given, which is what `--device cuda` needs, and the count shows where it waits for the device.
"""

from __future__ import annotations

import weakref

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map

FAKE = torch.device("meta")
_SYNC = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu"}
_INDEXING = {"__getitem__", "__setitem__", "index_select"}


class DeviceTensor(torch.Tensor):
    """A CPU tensor that pretends to live on FAKE."""


def _is_fake(d) -> bool:
    return isinstance(d, (str, torch.device)) and torch.device(d) == FAKE


def _is_host(d) -> bool:
    return isinstance(d, (str, torch.device)) and torch.device(d).type == "cpu"


def _plain(t):
    return t.as_subclass(torch.Tensor) if isinstance(t, DeviceTensor) else t


_SPARSE_ON_DEVICE: dict[int, weakref.ref] = {}  # sparse tensors cannot be subclassed: known by identity


def _on_device(t):
    if not isinstance(t, torch.Tensor) or isinstance(t, DeviceTensor):
        return t
    if t.layout != torch.strided:
        _SPARSE_ON_DEVICE[id(t)] = weakref.ref(t)
        return t
    return t.as_subclass(DeviceTensor)


def _fake(t: torch.Tensor) -> bool:
    if isinstance(t, DeviceTensor):
        return True
    ref = _SPARSE_ON_DEVICE.get(id(t)) if t.layout != torch.strided else None
    return ref is not None and ref() is t


class FakeDevice(TorchFunctionMode):
    """The mode; `syncs` counts host reads of device values by the name of the call, `device_ops`
    the operations that ran on the device."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: dict[str, int] = {}
        self.device_ops = 0  # operations whose result is a device tensor

    def __enter__(self) -> torch.device:
        super().__enter__()
        return FAKE

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        owner = getattr(func, "__self__", None)
        if owner is torch.Tensor.device:
            return FAKE if _fake(args[0]) else torch.device("cpu")
        if owner is torch.Tensor.is_cuda:
            return _fake(args[0])
        name = getattr(func, "__name__", "")
        to_device = _is_fake(kwargs.get("device"))
        to_host = _is_host(kwargs.get("device")) or name == "cpu"
        if to_device:
            kwargs["device"] = "cpu"
        if name == "to":
            places = [a for a in args[1:] if isinstance(a, (str, torch.device))]
            to_device = to_device or any(_is_fake(a) for a in places)
            to_host = to_host or any(_is_host(a) for a in places)
            args = tuple("cpu" if _is_fake(a) else a for a in args)
            if not to_device and not to_host and _fake(args[0]):
                to_device = True  # .to(dtype) keeps the device
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        fake = [_fake(t) for t in tensors]
        if fake and fake[0] and name == "numpy":
            raise TypeError("can't convert a device tensor to numpy: use .cpu() first (FakeDevice)")
        if fake and fake[0] and name in _SYNC:
            self.syncs[name] = self.syncs.get(name, 0) + 1
        if any(fake) and not all(fake) and name not in _INDEXING and name != "to":
            hosts = [t for t, f in zip(tensors, fake, strict=True) if not f and t.dim() > 0]
            if hosts:
                shapes = [tuple(t.shape) for t in hosts]
                raise RuntimeError(f"FakeDevice: {name} mixes device tensors with host tensors of shapes {shapes}")
        if name in _INDEXING and fake and not fake[0] and any(fake[1:]):
            raise RuntimeError(f"FakeDevice: {name} indexes a host tensor with device indices")
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        if to_host:
            return tree_map(_plain, out)
        if to_device or (fake and fake[0]) or (any(fake) and name not in _INDEXING):
            self.device_ops += 1
            return tree_map(_on_device, out)
        return out
