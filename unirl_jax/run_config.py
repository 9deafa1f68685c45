"""Typed run configs: the ml_collections config of a run (with its `--config.x=y` overrides) becomes one frozen
dataclass tree at start, before anything is built or compiled.

Every setting is a field with a default and a comment; a config file may leave any of them out. A key that no
field names is an error that names it and the nearest known key, so a misspelling fails at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections import abc
from typing import Any, Mapping, Optional, Union

from unirl_jax import rewards
from unirl_jax.distributed import DistributedSettings
from unirl_jax.data import prompts as prompt_lib
from unirl_jax.models.layers import KERNELS, REMAT_POLICIES
from unirl_jax.rl.advantages import AdvantageConfig
from unirl_jax.rl.dm import DMConfig
from unirl_jax.rl.lm import LMConfig
from unirl_jax.sharding import MeshConfig

SUB_MODELS = ("lm", "connector", "dit")  # the layer stacks a remat policy applies to


class ConfigError(ValueError):
  """A run config that names an unknown setting or holds a bad value."""


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  init: str = "preset:tiny_qwen_vocab"  # "preset:NAME" (random init, unirl_jax.models.unified) or a unified ckpt dir
  dtype: str = "float32"  # compute dtype; trainable params stay float32 master weights
  # Activation recomputation per layer stack: one policy for all, or {"lm": ..., "connector": ..., "dit": ...}
  # with "none" | "full" | "save_dots".
  remat: Any = "none"
  scan_unroll: int = 1  # layers per scan iteration (>= depth unrolls fully, faster on XLA:CPU)
  # Kernel family of the layers: "cpu" (16-bit matmuls with a float32 result, depthwise convs as shifted adds:
  # XLA:CPU's fast paths), "accelerator" (plain matmuls and convolutions), or "auto" (the backend the run is on).
  # Set it to compile for another target than the host (python -m unirl_jax.bench --compile_only).
  kernels: str = "auto"
  frozen_dtype: Optional[str] = None  # e.g. "bfloat16": frozen weights and the reference policy stored so
  vae_fit_steps: int = 0  # fit a random preset's DC-AE to the synthetic shapes first (unirl_jax.vae_fit)
  vae_fit_data: str = "shapes"  # what it is fitted on: "shapes" (one per image) or "geneval_scenes"
  # Fit the vision tower to the shape scenes first, aligned to the LM's words (unirl_jax.vit_fit): a random
  # preset's, or a checkpoint's whose LM has not learned to read images yet (it replaces the tower).
  vit_fit_steps: int = 0
  vit_fit_size: int = 84  # the square size it sees them at (its merged tokens must tile the 3 x 3 grid)
  vit_fit_data: str = "questions"  # the reasoning questions' scenes, or "geneval_scenes" (the reflection judge's)

  def __post_init__(self):
    object.__setattr__(self, "remat", _remat(self.remat))
    if self.scan_unroll < 1:
      raise ConfigError(f"model.scan_unroll must be >= 1, got {self.scan_unroll}")
    if self.kernels not in KERNELS:
      raise ConfigError(f"model.kernels {self.kernels!r} not one of {KERNELS}")
    if self.vit_fit_steps < 0:
      raise ConfigError(f"model.vit_fit_steps must be >= 0, got {self.vit_fit_steps}")
    if self.vit_fit_data not in ("questions", "geneval_scenes"):
      raise ConfigError(f"model.vit_fit_data {self.vit_fit_data!r} not one of 'questions', 'geneval_scenes'")
    if self.vae_fit_data not in ("shapes", "geneval_scenes"):
      raise ConfigError(f"model.vae_fit_data {self.vae_fit_data!r} not one of 'shapes', 'geneval_scenes'")


def _remat(value) -> Mapping[str, str]:
  if isinstance(value, str):
    if ":" in value or "," in value:
      raise ConfigError(f"model.remat {value!r}: give one policy, or a dict per sub-model such as "
                        f"{{'dit': 'full', 'lm': 'save_dots'}}")
    value = {m: value for m in SUB_MODELS}
  value = dict(value)
  unknown = set(value) - set(SUB_MODELS)
  if unknown:
    raise ConfigError(f"model.remat: unknown sub-model(s) {sorted(unknown)}; known: {SUB_MODELS}")
  for m, p in value.items():
    if p not in REMAT_POLICIES:
      raise ConfigError(f"model.remat.{m} {p!r} not one of {REMAT_POLICIES}")
  return types.MappingProxyType(value)


@dataclasses.dataclass(frozen=True)
class OptimSettings:
  lr: float = 1e-5  # peak learning rate
  min_lr: float = 0.0  # floor of the decay (scaled with each group's peak)
  warmup_steps: int = 0
  schedule: str = "linear"  # "linear" (UniRL RL: to min_lr, no warmup) | "cosine" | "constant"
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  grad_clip: float = 0.0  # global-norm clip; 0 = off (the original RL runs have none)
  group_lr: Mapping[str, float] = dataclasses.field(default_factory=dict)  # {top-level group: peak lr}

  def __post_init__(self):
    object.__setattr__(self, "group_lr", types.MappingProxyType(dict(self.group_lr)))
    if self.schedule not in ("linear", "cosine", "constant"):
      raise ConfigError(f"optim.schedule {self.schedule!r} not one of 'linear', 'cosine', 'constant'")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  total_steps: int = 0  # optimizer steps; 0 = epochs x prompts / prompts per step (GRPO)
  epochs: float = 0.0  # passes over the prompts, when total_steps is 0 (the original: 10, editing 200)
  checkpoint_every: int = 50
  keep_checkpoints: int = 2
  sample_every: int = 0  # sample grids (GRPO); 0 = never
  log_every: int = 10  # console lines
  micro_batch: int = 0  # GRPO trajectories per backward pass; 0 = the whole step at once (same gradient)
  tensorboard: bool = True
  trainable: tuple[str, ...] = ("dit", "connector", "t2i_queries")  # param groups or paths ("lm/language_model")

  def __post_init__(self):
    if self.total_steps < 0 or self.epochs < 0:
      raise ConfigError("train.total_steps and train.epochs must be >= 0")
    if not self.trainable:
      raise ConfigError("train.trainable names no params")


@dataclasses.dataclass(frozen=True)
class EditSettings:
  """The editing task (task "i2i"; `../shared/reference/unirl.md` §3.6)."""

  vit_size: int = 56  # the source (and edited) image as the LM sees it, square (the original: 672 -> 576 tokens)
  cycle: bool = True  # reverse-edit every edited image back (the reconstruction the cycle reward scores)
  # The original RL prompt writes `<vision_end>` as plain text instead of the special `<|vision_end|>`; True
  # reproduces it (its checkpoints were trained so), False uses the real token.
  literal_vision_end: bool = False
  # Keep only the records whose "kind" field is one of these (the shapes generator's "color", "shape", "position",
  # "size"); empty: every record. A record without the field is an error naming it.
  kinds: tuple[str, ...] = ()
  # "pair": one advantage per (edit, reconstruction) pair from the total reward, on both trajectories (the
  # original's); "split": the edit trajectory keeps it, the reconstruction's is the group advantage of the reward
  # term `cycle_reward` alone, unweighted (the other terms score the edit, which the reconstruction cannot change:
  # for its gradient they are noise).
  advantage: str = "pair"
  # The reward term scoring the reconstruction (for "split"; one of the run's rewards, weight 0 allowed).
  # "clip_cycle_gain" (the reconstruction's CLIP similarity to the source minus the edit's) leaves out how far
  # the edit had moved, which the reconstruction does not choose: with "clip_image_similarity" a reconstruction
  # of an edit that copied the source is rewarded for copying its reference, one of a true edit punished.
  # "clip_reverse_direction" scores the reconstruction as an edit of its own (edit -> reconstruction against
  # the target caption -> the source caption).
  cycle_reward: str = "clip_image_similarity"

  def __post_init__(self):
    if self.vit_size < 1:
      raise ConfigError(f"edit.vit_size must be >= 1, got {self.vit_size}")
    if self.advantage not in ("pair", "split"):
      raise ConfigError(f"edit.advantage {self.advantage!r} not one of 'pair', 'split'")
    object.__setattr__(self, "kinds", (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds))


@dataclasses.dataclass(frozen=True)
class ReasonSettings:
  """The reasoning task (task "reason"; docs/scenarios.md)."""

  # The user turn; {question} is the record's question (open-r1-multimodal's template without "(number)").
  template: str = prompt_lib.REASON
  system: str = prompt_lib.SYSTEM  # the system turn (Qwen2.5-VL's default)
  vit_size: int = 56  # an image question's image as the LM sees it, square (448: 256 tokens)

  def __post_init__(self):
    if "{question}" not in self.template:
      raise ConfigError(f"reason.template {self.template!r} has no {{question}} field")
    if self.vit_size < 1:
      raise ConfigError(f"reason.vit_size must be >= 1, got {self.vit_size}")


@dataclasses.dataclass(frozen=True)
class ReflectSettings:
  """The reflection task (task "reflect"; docs/scenarios.md)."""

  # The reward that scores an image against its prompt (registered, remote or CLIP; e.g. "geneval_shapes", a
  # served GenEval, "clip_score"); the rewards reflect_final / reflect_judge / reflect_improve are built on it.
  verifier: str = "geneval_shapes"
  pass_threshold: float = 1.0  # image 1 satisfies its prompt when verifier >= this (GenEval partial credit: all)
  vit_size: int = 56  # image 1 as the LM sees it, square
  # "shared": one advantage per rollout from the total reward on image 1's trajectory, the judge's tokens and
  # image 2's trajectory; "split": the judge's tokens keep it, image 1's trajectory gets the group advantage of
  # reflect_first (v(image 1)) alone and image 2's that of reflect_final, both unweighted and both in the run's
  # rewards (weight 0 allowed). With "shared" the judge and improvement terms pay image 1 for failing (a judge that
  # says no is right, and image 2 gains, more often after a worse image 1; docs/scenarios.md).
  advantage: str = "shared"

  def __post_init__(self):
    if self.vit_size < 1:
      raise ConfigError(f"reflect.vit_size must be >= 1, got {self.vit_size}")
    if self.advantage not in ("shared", "split"):
      raise ConfigError(f"reflect.advantage {self.advantage!r} not one of 'shared', 'split'")


@dataclasses.dataclass(frozen=True)
class BenchSettings:
  repeats: int = 3  # timed repeats per phase (warm-up excluded)
  new_tokens: int = 8  # decoded tokens in the LM phases (EOS off)
  kv_cache_dtype: Optional[str] = None
  compare_lm_batch: int = 2  # rows of the torch greedy-generate comparison


@dataclasses.dataclass(frozen=True)
class GRPORun:
  """A GRPO run (python -m unirl_jax.train --config configs/t2i_jpeg_tiny.py)."""

  mode: str = "grpo"
  # the scenario (unirl_jax.scenarios): "t2i" | "t2icot" | "i2i" (editing) | "reason" | "reflect"
  task: str = "t2i"
  seed: int = 0
  workdir: str = "workdir/grpo"
  progress: bool = True  # a progress bar
  model: ModelSettings = ModelSettings()
  # .txt (one per line) or .jsonl ("prompt"/"caption"); empty: `prompts`. Editing: the edit records (.jsonl or
  # .parquet with image, prompt, reverse_prompt, caption, target_caption: unirl_jax.data.edits). Reasoning: the
  # question records (.jsonl or .parquet: unirl_jax.data.questions).
  prompt_file: str = ""
  prompts: tuple[str, ...] = ()  # empty: built-in shape prompts
  prompts_per_step: int = 1  # groups per optimizer step
  group_size: int = 8  # G samples per prompt
  max_text_len: int = 48  # prompt tokens; a longer prompt is an error naming this setting
  # "max_len": pad every prompt batch to max_text_len (one compile); "longest": to the step's longest prompt
  # rounded up to text_pad_multiple (the original pads to the longest: few pads, a compile per new length).
  text_pad: str = "max_len"
  text_pad_multiple: int = 64
  image_size: int = 32  # generated images, square pixels
  # Registered rewards and their weights in the total: "a,b" (weight 1 each, the original's sum), "a:4,b:1", or a
  # dict {"a": 4.0, "b": 1.0}. Held as a tuple of rewards.Term.
  reward: Any = "jpeg_compressibility"
  # Rewards served elsewhere (unirl_jax.rewards.remote's JSON protocol), usable in `reward` by name:
  # {"pickscore": "http://host:8000/"} or {"pickscore": {"url": ..., "timeout_s": 120, "retries": 3}}.
  remote_rewards: Any = ()
  # CLIP rewards computed here from `python -m convert clip` dirs, usable in `reward` by name (one of
  # rewards.clip.KINDS): {"clip_direction": "ckpts/clip-vit-l-14", "clip_image_similarity": "ckpts/clip-vit-l-14"}.
  # Loaded when the trainer starts.
  clip_rewards: Any = ()
  advantage: AdvantageConfig = AdvantageConfig()
  dm: DMConfig = DMConfig()
  lm: LMConfig = LMConfig()
  edit: EditSettings = EditSettings()
  reason: ReasonSettings = ReasonSettings()
  reflect: ReflectSettings = ReflectSettings()
  optim: OptimSettings = OptimSettings()
  train: TrainSettings = TrainSettings()
  mesh: MeshConfig = MeshConfig()
  distributed: DistributedSettings = DistributedSettings()  # multi-process runs (unirl_jax.distributed)
  bench: BenchSettings = BenchSettings()

  def __post_init__(self):
    try:
      object.__setattr__(self, "reward", rewards.parse(self.reward))
    except ValueError as e:
      raise ConfigError(str(e)) from None
    object.__setattr__(self, "remote_rewards", _remote_rewards(self.remote_rewards))
    object.__setattr__(self, "clip_rewards", _clip_rewards(self.clip_rewards))
    both = {n for n, _ in self.remote_rewards} & {n for n, _ in self.clip_rewards}
    if both:
      raise ConfigError(f"reward {sorted(both)[0]!r} is in both remote_rewards and clip_rewards: keep one")
    if self.text_pad not in ("max_len", "longest"):
      raise ConfigError(f"text_pad {self.text_pad!r} not 'max_len' or 'longest'")
    for name in ("prompts_per_step", "group_size", "max_text_len", "image_size", "text_pad_multiple"):
      if getattr(self, name) < 1:
        raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

  @property
  def rows(self) -> int:
    """Trajectories per step."""
    return self.prompts_per_step * self.group_size

  def total_steps(self, n_prompts: int) -> int:
    """train.total_steps, or epochs x prompts / prompts per step (rounded up) when it is 0."""
    if self.train.total_steps:
      return self.train.total_steps
    if not self.train.epochs:
      raise ConfigError("set train.total_steps or train.epochs")
    return max(1, math.ceil(self.train.epochs * n_prompts / self.prompts_per_step))


@dataclasses.dataclass(frozen=True)
class DataSettings:
  # JSONL manifests, "t2i:PATH.parquet"/"edit:PATH.parquet", or "t2i:SHARDS"/"edit:SHARDS" WebDataset tar shards
  # ("dir/{00000..00099}.tar", a glob or a dir; read as needed, never whole); empty: synthetic shapes.
  sources: tuple[str, ...] = ()
  stream: bool = False  # parquet read one row group at a time as needed instead of all at load (large files)
  synthetic_n: int = 512  # images in the generated synthetic set
  # Which synthetic set, when `sources` is empty: "shapes" (one shape per image, captions and colour edits:
  # unirl_jax.data.synthetic) or "geneval_scenes" (multi-object scenes for GenEval-format prompts:
  # unirl_jax.data.shapes; the cold start of the GenEval scenario) or "shape_edits" (edits of shape scenes both
  # ways with their captions: unirl_jax.data.shape_edits; the editing scenario's cold start and RL records).
  synthetic: str = "shapes"
  image_size: int = 32  # target images, square pixels (UniRL: 1024)
  vit_size: int = 56  # the source image as the LM sees it (UniRL: 672 -> 576 tokens)
  max_text_len: int = 64  # prompt tokens (longer ones are truncated, as the original; a longer chat is an error)
  # Chat records: the supervised tokens lie in each row's last max_target_len tokens and only those positions'
  # logits are computed (a record with an earlier target is an error naming this); 0: every position.
  max_target_len: int = 0
  batch_size: int = 8
  # Share per task, {"t2i": 0.2, "edit": 0.8, "chat": ...}; a task left out is not read; empty: the record
  # counts' shares. A task's share is split between its image and text-only chat records by their counts.
  task_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
  # "batches": every batch holds one task (each compiles once), the tasks interleaved by share; "rows": every
  # batch holds share x batch_size rows of each (whole numbers), the loss the sum of each one's mean.
  mix: str = "batches"
  skip_bad: bool = False  # skip (and count) bad records instead of stopping with file:line
  read_threads: int = 4  # batches prepared in parallel (grain reader threads)
  prefetch_batches: int = 4  # batches prepared ahead of the step (host memory: each holds the batch's images)

  def __post_init__(self):
    object.__setattr__(self, "task_weights", types.MappingProxyType(dict(self.task_weights)))
    if self.mix not in ("batches", "rows"):
      raise ConfigError(f"data.mix {self.mix!r} not one of 'batches', 'rows'")
    if self.read_threads < 1 or self.prefetch_batches < 0:
      raise ConfigError(f"data.read_threads must be >= 1 and data.prefetch_batches >= 0, got {self.read_threads} "
                        f"and {self.prefetch_batches}")
    if self.synthetic not in ("shapes", "geneval_scenes", "shape_edits"):
      raise ConfigError(f"data.synthetic {self.synthetic!r} not one of 'shapes', 'geneval_scenes', 'shape_edits'")


@dataclasses.dataclass(frozen=True)
class FlowLossSettings:
  cond_dropout: float = 0.05  # each of: text only, reference only, both (docs/algorithms.md §5)
  logit_normal_mean: float = 0.0
  logit_normal_std: float = 1.0
  # Edit batches: extra weight on the latent positions the edit changes (pretrain.edit_region_weights; 0 = the
  # plain mean, as the original). A colour edit changes ~5 % of a shapes scene, so with the plain mean the
  # DiT gains little from reading which colour the instruction asks for.
  edit_region_weight: float = 0.0


@dataclasses.dataclass(frozen=True)
class PretrainRun:
  """Flow-matching pretraining (python -m unirl_jax.train --config configs/pretrain_tiny.py)."""

  mode: str = "pretrain"
  seed: int = 0
  workdir: str = "workdir/pretrain"
  model: ModelSettings = ModelSettings()
  data: DataSettings = DataSettings()
  loss: FlowLossSettings = FlowLossSettings()
  optim: OptimSettings = OptimSettings(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="cosine", grad_clip=1.0)
  train: TrainSettings = TrainSettings(total_steps=300, checkpoint_every=100,
                                       trainable=("dit", "connector", "t2i_queries", "i2i_queries"))
  mesh: MeshConfig = MeshConfig()
  distributed: DistributedSettings = DistributedSettings()  # multi-process runs (unirl_jax.distributed)

  def total_steps(self, n_prompts: int = 0) -> int:
    if not self.train.total_steps:
      raise ConfigError("pretraining needs train.total_steps")
    return self.train.total_steps


RUNS = {"grpo": GRPORun, "pretrain": PretrainRun}


def _remote_rewards(value) -> tuple:
  """{name: url | {url, timeout_s, retries, backoff_s}} -> ((name, rewards.remote.RemoteReward), ...)."""
  from unirl_jax.rewards.remote import RemoteReward
  if isinstance(value, tuple) and all(isinstance(v, tuple) and isinstance(v[1], RemoteReward) for v in value):
    return value
  if not hasattr(value, "items"):
    raise ConfigError(f"remote_rewards must be a dict name -> url, got {value!r}")
  out = []
  for name, v in value.items():
    kw = {"url": v} if isinstance(v, str) else dict(v)
    unknown = set(kw) - {f.name for f in dataclasses.fields(RemoteReward)}
    if unknown or not isinstance(kw.get("url"), str) or not kw["url"].startswith(("http://", "https://")):
      raise ConfigError(f"remote_rewards.{name}: give an http(s) url, or a dict with url and optionally "
                        f"timeout_s, retries, backoff_s (got {v!r})")
    out.append((str(name), RemoteReward(**kw)))
  return tuple(out)


def _clip_rewards(value) -> tuple:
  """{kind: checkpoint dir} -> ((kind, dir), ...), kinds checked against rewards.clip.KINDS (nothing loaded)."""
  from unirl_jax.rewards.clip import KINDS
  if isinstance(value, tuple) and all(isinstance(v, tuple) and len(v) == 2 for v in value):
    items = value
  elif hasattr(value, "items"):
    items = tuple(value.items())
  else:
    raise ConfigError(f"clip_rewards must be a dict reward -> `python -m convert clip` dir, got {value!r}")
  for kind, path in items:
    if kind not in KINDS:
      raise ConfigError(f"clip_rewards.{kind}: not a CLIP reward; one of {sorted(KINDS)}")
    if not isinstance(path, str) or not path:
      raise ConfigError(f"clip_rewards.{kind}: give a `python -m convert clip` checkpoint dir, got {path!r}")
  return tuple((str(k), str(p)) for k, p in items)


def load(config) -> Union[GRPORun, PretrainRun]:
  """An ml_collections ConfigDict (or a plain dict) -> the typed run it describes (by its `mode`)."""
  d = _plain(config)
  mode = d.get("mode", "grpo")
  if mode not in RUNS:
    raise ConfigError(f"mode {mode!r} not one of {sorted(RUNS)}")
  return build(RUNS[mode], d)


def _plain(x):
  if hasattr(x, "to_dict"):
    x = x.to_dict()
  if isinstance(x, Mapping):
    return {k: _plain(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_plain(v) for v in x]
  return x


def build(cls, d: Mapping, path: str = ""):
  """The dataclass `cls` from a mapping; unknown keys and mistyped values are ConfigErrors naming the key."""
  hints = typing.get_type_hints(cls)
  names = [f.name for f in dataclasses.fields(cls)]
  kw = {}
  for key, value in d.items():
    full = f"{path}{key}"
    if key not in names:
      near = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
      hint = f"; did you mean '{path}{near[0]}'?" if near else ""
      raise ConfigError(f"unknown setting {full!r}{hint} (known in {path.rstrip('.') or 'the run config'}: "
                        f"{', '.join(names)})")
    kw[key] = _coerce(hints[key], value, full)
  try:
    return cls(**kw)
  except ConfigError:
    raise
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{path.rstrip('.') or 'run config'}: {e}") from None


def _coerce(hint, value, name: str):
  origin = typing.get_origin(hint)
  args = typing.get_args(hint)
  if dataclasses.is_dataclass(hint):
    if isinstance(value, hint):
      return value
    if not isinstance(value, Mapping):
      raise ConfigError(f"{name} must be a section (dict) of settings, got {value!r}")
    return build(hint, value, name + ".")
  if origin is Union:
    if value is None and type(None) in args:
      return None
    for a in args:
      if a is not type(None):
        try:
          return _coerce(a, value, name)
        except ConfigError:
          continue
    raise ConfigError(f"{name}: {value!r} is not a {hint}")
  if origin is tuple:
    if isinstance(value, str):
      return (value,)
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"{name} must be a list, got {value!r}")
    return tuple(value)
  if hint is Any or origin in (abc.Mapping, dict):
    return value
  if hint is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if hint in (int, float, str, bool) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
    raise ConfigError(f"{name} must be {hint.__name__}, got {value!r}")
  return value
