"""`python -m convert KIND --src DIR --dst DIR [--dtype]` and `python -m convert export KIND --src --dst`.

`unirl` has its own flags (see `python -m convert unirl --help`): a UniRL folder, or parts to assemble.
"""

from __future__ import annotations

import argparse
import sys

from unirl_jax.convert.pipeline import export_kind, import_kind, kinds
from unirl_jax.convert.table import ConversionError


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  export = bool(argv) and argv[0] == "export"
  if export:
    argv = argv[1:]
  if argv and argv[0] == "unirl":
    from unirl_jax.convert import unirl
    return unirl.main(argv[1:], export=export)
  p = argparse.ArgumentParser(prog="python -m convert" + (" export" if export else ""),
                              description="Export an Orbax checkpoint to HF safetensors." if export else
                              "Convert HF/diffusers safetensors to a self-contained Orbax checkpoint.")
  p.add_argument("kind", choices=kinds() + ["unirl"])
  p.add_argument("--src", required=True)
  p.add_argument("--dst", required=True)
  p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None if export else "float32")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty destination")
  if not export:
    p.add_argument("--variant", help="weights variant to read, e.g. bf16 for diffusion_pytorch_model.bf16.safetensors")
  a = p.parse_args(argv)
  try:
    kw = {} if a.dtype is None else {"dtype": a.dtype}
    if getattr(a, "variant", None):
      kw["variant"] = a.variant
    out = (export_kind if export else import_kind)(a.kind, a.src, a.dst, overwrite=a.overwrite, **kw)
  except (ConversionError, FileExistsError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
