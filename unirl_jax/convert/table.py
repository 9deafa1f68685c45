"""Declarative key tables: an HF key template <-> a param path, a layout transform, optionally stacked by layer."""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable, Iterable, Optional

import numpy as np


class ConversionError(ValueError):
  """A missing, unexpected or mis-shaped key; the message names the key(s) and shapes."""


@dataclasses.dataclass(frozen=True)
class Transform:
  """to_jax maps the HF tensor to the param; to_hf maps it back (given the HF shape it must produce)."""

  name: str
  to_jax: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray, tuple], np.ndarray]
  hf_shape: Callable[[tuple], Optional[tuple]]  # the HF shape of a param shape; None if it needs the config


IDENTITY = Transform("identity", lambda a: a, lambda a, shape: a.reshape(shape), lambda s: tuple(s))
# torch Linear (out, in) -> flax Dense kernel (in, out).
LINEAR = Transform("linear", lambda a: a.T, lambda a, shape: a.T.reshape(shape),
                   lambda s: tuple(reversed(s)))
# Any (out, *in) weight applied to a flattened input, e.g. Conv3d with kernel == stride -> Dense (prod(in), out).
FLATTEN_LINEAR = Transform("flatten_linear", lambda a: a.reshape(a.shape[0], -1).T,
                           lambda a, shape: a.T.reshape(shape),
                           lambda s: None)
# torch Conv2d (O, I/g, kh, kw) -> flax Conv kernel (kh, kw, I/g, O) (HWIO; depthwise keeps I/g = 1).
CONV2D = Transform("conv2d", lambda a: a.transpose(2, 3, 1, 0), lambda a, shape: a.transpose(3, 2, 0, 1).reshape(shape),
                   lambda s: (s[3], s[2], s[0], s[1]))
# A 1x1 Conv2d (O, I, 1, 1) used as a Dense: kernel (I, O).
CONV1X1_LINEAR = Transform("conv1x1_linear", lambda a: a[:, :, 0, 0].T, lambda a, shape: a.T.reshape(shape),
                           lambda s: (s[1], s[0], 1, 1))


@dataclasses.dataclass(frozen=True)
class Rule:
  """`hf` is a key template; `{i}` marks the layer index, which selects a row of a stacked (scanned) param."""

  hf: str
  path: str  # "/"-separated param path
  transform: Transform = IDENTITY

  @property
  def stacked(self) -> bool:
    return "{i}" in self.hf

  @property
  def regex(self) -> re.Pattern:
    return re.compile("^" + re.escape(self.hf).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


def default_hf_shape(rule: Rule, row_shape: tuple) -> tuple:
  shape = rule.transform.hf_shape(tuple(row_shape))
  if shape is None:
    raise ValueError(f"{rule.hf}: the {rule.transform.name} transform needs the HF shape from the config")
  return shape


def _get(tree: dict, path: str):
  for p in path.split("/"):
    tree = tree[p]
  return tree


def _set(tree: dict, path: str, value) -> None:
  parts = path.split("/")
  for p in parts[:-1]:
    tree = tree.setdefault(p, {})
  tree[parts[-1]] = value


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
  out = {}
  for k, v in tree.items():
    p = f"{prefix}/{k}" if prefix else k
    out.update(flatten(v, p) if isinstance(v, dict) else {p: v})
  return out


def to_params(keys: Iterable[str], get: Callable[[str], np.ndarray], rules: list[Rule], expected: dict,
              dtype, skip: Callable[[str], bool] = lambda k: False, rename: Callable[[str], str] = lambda k: k):
  """Builds the param tree tensor by tensor.

  expected: flat {path: shape} of the model's params (from `jax.eval_shape`); every path must be filled
  exactly once, every key must match a rule, every shape must agree.
  """
  compiled = [(r, r.regex) for r in rules]
  out: dict = {}
  filled: dict[str, set] = {}
  unexpected = []
  for key in keys:
    name = rename(key)
    if skip(name):
      continue
    for rule, rx in compiled:
      m = rx.match(name)
      if m:
        break
    else:
      unexpected.append(key)
      continue
    if rule.path not in expected:
      unexpected.append(key)
      continue
    want = tuple(expected[rule.path])
    arr = get(key)
    if arr.dtype.kind in "biu" and np.dtype(dtype).kind not in "biu":  # an integer or bool tensor for a weight
      raise ConversionError(f"key {key!r}: dtype {arr.dtype} where a floating-point weight belongs ({rule.path})")
    value = rule.transform.to_jax(arr)
    row_shape = want[1:] if rule.stacked else want
    if tuple(value.shape) != row_shape:
      hf_want = rule.transform.hf_shape(row_shape) or f"({row_shape[1]}, ...) with {row_shape[0]} inputs per output"
      raise ConversionError(f"key {key!r}: checkpoint shape {tuple(arr.shape)} but the model expects "
                            f"{hf_want} (param {rule.path}, shape {row_shape})")
    if rule.stacked:
      i = int(m.group("i"))
      if i >= want[0]:
        raise ConversionError(f"key {key!r}: layer {i} but the model has {want[0]} layers ({rule.path})")
      if rule.path not in filled:
        _set(out, rule.path, np.empty(want, dtype))
        filled[rule.path] = set()
      if i in filled[rule.path]:
        raise ConversionError(f"key {key!r} given twice")
      _get(out, rule.path)[i] = value  # casts in place
      filled[rule.path].add(i)
    else:
      if rule.path in filled:
        raise ConversionError(f"key {key!r} given twice (param {rule.path})")
      _set(out, rule.path, np.asarray(value, dtype=dtype, order="C"))  # (ascontiguousarray makes 0-d 1-d)
      filled[rule.path] = {0}
  if unexpected:
    raise ConversionError("unexpected keys (no param for them): " + ", ".join(repr(k) for k in unexpected[:20]) +
                          (f" and {len(unexpected) - 20} more" if len(unexpected) > 20 else ""))
  missing = []
  by_path = {r.path: r for r in rules}
  for path, shape in expected.items():
    rule = by_path.get(path)
    if rule is None:
      raise ConversionError(f"no conversion rule for param {path}")
    need = set(range(shape[0])) if rule.stacked else {0}
    for i in sorted(need - filled.get(path, set())):
      missing.append(rule.hf.format(i=i))
  if missing:
    raise ConversionError("missing keys: " + ", ".join(repr(k) for k in missing[:20]) +
                          (f" and {len(missing) - 20} more" if len(missing) > 20 else ""))
  return out


@dataclasses.dataclass(frozen=True)
class LazyTensor:
  """An export tensor described by shape and dtype, computed only when written (one at a time)."""

  shape: tuple
  dtype: np.dtype
  compute: Callable[[], np.ndarray]

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

  def __array__(self, dtype=None, copy=None):
    a = self.compute()
    return a if dtype is None else a.astype(dtype)


def to_hf(params: dict, rules: list[Rule], hf_shapes: Callable[[Rule, tuple], tuple],
          dtype: Optional[np.dtype] = None) -> dict[str, LazyTensor]:
  """The reverse direction, reading the same table. hf_shapes(rule, param_row_shape) gives the HF shape."""
  flat = flatten(params)
  out = {}
  for rule in rules:
    if rule.path not in flat:
      continue
    arr = flat[rule.path]
    rows = [(rule.hf.format(i=i), i) for i in range(arr.shape[0])] if rule.stacked else [(rule.hf, None)]
    row_shape = arr.shape[1:] if rule.stacked else arr.shape
    shape = tuple(hf_shapes(rule, row_shape))
    out_dtype = np.dtype(dtype or arr.dtype)

    def compute(arr=arr, i=None, rule=rule, shape=shape, out_dtype=out_dtype):
      row = np.asarray(arr if i is None else arr[i])
      return np.asarray(rule.transform.to_hf(row, shape), dtype=out_dtype, order="C")

    for key, i in rows:
      out[key] = LazyTensor(shape, out_dtype, functools.partial(compute, i=i))
  unused = set(flat) - {r.path for r in rules}
  if unused:
    raise ConversionError(f"params with no export rule: {sorted(unused)}")
  return out
