"""The editing scenario's RL records (UniRL's edit parquet, `../shared/reference/unirl.md` §1.3): a source image,
the instruction (`prompt`), the instruction that undoes it (`reverse_prompt`), the source image's caption
(`caption`) and the edited image's (`target_caption`), from parquet or JSONL, with errors naming file and row.

Images are paths (relative to the file), encoded bytes, or {"bytes", "path"} (the HF datasets layout); each
record is a `prompts.PromptRecord` whose text is the instruction and whose metadata holds the rest (what the
CLIP direction reward reads), plus "image" (the reference) and "origin" ("file:line" or "file: row N").
"""

from __future__ import annotations

import os

from unirl_jax.data.prompts import PromptRecord
from unirl_jax.data.records import DataError, image_field, iter_file_rows, open_image

TEXT_FIELDS = ("prompt", "reverse_prompt", "caption", "target_caption")


def make_record(d: dict, origin: str, base: str) -> PromptRecord:
  if not isinstance(d, dict):
    raise DataError(f"{origin}: expected an object with fields image, {', '.join(TEXT_FIELDS)}")
  for k in ("image",) + TEXT_FIELDS:
    if d.get(k) is None:
      raise DataError(f"{origin}: missing field {k!r} (an edit record needs image, {', '.join(TEXT_FIELDS)})")
  for k in TEXT_FIELDS:
    if not isinstance(d[k], str) or not d[k].strip():
      raise DataError(f"{origin}: field {k!r} must be non-empty text, got {d[k]!r}")
  meta = {k: v for k, v in d.items() if k not in ("prompt", "image")}
  meta.update({k: d[k].strip() for k in TEXT_FIELDS[1:]}, origin=origin,
              image=image_field(d["image"], origin, base, check=False))  # decoded in read_edit_file
  return PromptRecord(d["prompt"].strip(), meta)


def read_edit_file(path: str, check_images: bool = True) -> list[PromptRecord]:
  """Edit records of a .jsonl or .parquet file; with `check_images` every image is decoded once up front, so a
  bad one fails here naming its record rather than mid-run."""
  base = os.path.dirname(os.path.abspath(path))
  out = [make_record(d, origin, base) for origin, d in iter_file_rows(path, "edit")]
  if not out:
    raise DataError(f"edit file {path!r} holds no records")
  if check_images:
    for r in out:
      open_image(r.metadata["image"], r.metadata["origin"])
  return out


def select_kinds(records: list[PromptRecord], kinds, path: str) -> list[PromptRecord]:
  """The records whose "kind" metadata is in `kinds` (the `edit.kinds` setting), in file order."""
  for r in records:
    if "kind" not in r.metadata:
      raise DataError(f"{r.metadata['origin']}: edit.kinds {tuple(kinds)} is set but the record has no 'kind' field")
  out = [r for r in records if r.metadata["kind"] in kinds]
  if not out:
    found = sorted({str(r.metadata["kind"]) for r in records})
    raise DataError(f"edit file {path!r}: no record of edit.kinds {tuple(kinds)} (its kinds: {', '.join(found)})")
  return out
