"""The typed pytrees a GRPO step moves around: conditions, trajectories, completions, and the step's experience.

Every array field of a row struct has the trajectories on axis 0, so a step splits into micro-batches (and
shards over the mesh's batch axes) along that axis; what all rows share (the denoising schedule) lives apart.
"""

from __future__ import annotations

from typing import Optional

import jax
from flax import struct

from unirl_jax.diffusion.sde import Schedule, Trajectory


@struct.dataclass
class Condition:
  """The chat-templated prompt the LM + queries + connector turn into the DM's caption input."""

  ids: jax.Array  # (B, T) int32, left-padded
  mask: jax.Array  # (B, T) int32
  query_shift: Optional[jax.Array] = None  # (B,) int32: empty positions before the queries (right padding)
  pixel_values: Optional[jax.Array] = None  # (B, patches, C·T·P·P): an edit source's ViT patches, per row


@struct.dataclass
class DMRows:
  """One DM trajectory per row and the condition it was sampled under."""

  condition: Condition
  trajectory: Trajectory
  ref: Optional[jax.Array] = None  # (B, h, w, c): an edit's noisy reference latents, shared by the row's steps
  row_mask: Optional[jax.Array] = None  # (B,) float32: 0 for a row whose trajectory is not trained (None: all)
  # (B,) this trajectory's own advantages (editing's edit.advantage="split"); None: the Experience's, shared
  advantages: Optional[jax.Array] = None


@struct.dataclass
class Completions:
  """One LM completion per row: its prompt (left-padded) and the sampled tokens."""

  prompt_ids: jax.Array  # (B, P) int32
  prompt_mask: jax.Array  # (B, P) int32
  tokens: jax.Array  # (B, N) int32, pad after EOS
  mask: jax.Array  # (B, N) float32: tokens up to and including the first EOS
  pixel_values: Optional[jax.Array] = None  # (B, patches, C·T·P·P): the prompt's image (one per row), or None


@struct.dataclass
class Experience:
  """A step's rollouts, ready for the loss. Which fields are set is the task's structure (static), not data:
  t2i fills `dm`, CoT `dm` and `lm`; a task with a second trajectory per row (editing's cycle) adds its own."""

  advantages: jax.Array  # (B,) one per row, shared by every loss part of the row
  schedule: Optional[Schedule] = None  # shared by all rows (not split or sharded)
  dm: Optional[DMRows] = None
  lm: Optional[Completions] = None
  cycle: Optional[DMRows] = None  # editing: each row's reconstruction (the reverse edit of its edited image)
  revision: Optional[DMRows] = None  # reflection: image 2, from the LM's revised prompt (row_mask: only after a no)

  @property
  def rows(self) -> int:
    return self.advantages.shape[0]

  def row_part(self) -> "Experience":
    """Everything with the rows on axis 0 (the schedule removed)."""
    return self.replace(schedule=None)
