"""UniRL's chat formats for the image-generation conditioning path (UniRL's `grpo_blip3o.py` and pretraining data code).

Pretraining wraps the request in a complete chat (the queries follow `<|im_start|>assistant\\n<|im_end|>\\n`);
RL and inference end at `<|im_start|>assistant\\n`. The wording differs between the two, as in the original.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SYSTEM = "You are a helpful assistant."
IMAGE_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"

PRETRAIN_T2I = "Please generate image based on the following caption: {}"
PRETRAIN_EDIT = "\nPlease edit the given image based on the folllowing instruction: {}."  # sic: the code's typo
RL_T2I = "Please generate the image given the following caption: {}"
RL_T2I_COT = ("Please enhance the following prompt to make it more suitable for image generation: {}. "
              "Output the final answer (entailed prompt) in <answer> </answer> tags.")
RL_EDIT = "\nPlease edit the image given the following instruction: {}"
# open-r1-multimodal's question template (`../shared/reference/unirl.md` §5.7), without its "(number)": the
# answers here are also letters, words and expressions.
REASON = "{question} Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."

# Reflection (ours: the original released none, docs/scenarios.md): the LM judges image 1 against its prompt.
REFLECT = ("The image was generated for the prompt: {prompt}. Does it satisfy the prompt? Output the thinking "
           "process in <think> </think>, yes or no in <judge> </judge> and, if no, an improved prompt in <answer> "
           "</answer> tags.")


def chat(user: str, pretrain: bool, system: str = SYSTEM) -> str:
  text = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
  return text + "<|im_end|>\n" if pretrain else text


def t2i(caption: str, pretrain: bool = False) -> str:
  return chat((PRETRAIN_T2I if pretrain else RL_T2I).format(caption), pretrain)


def t2i_cot(caption: str) -> str:
  """The CoT task's LM prompt (the LM completes it; the whole decoded dialogue then conditions the DM)."""
  return chat(RL_T2I_COT.format(caption), pretrain=False)


def reflect(prompt: str) -> str:
  """The reflection judge's LM prompt: image 1 (one `<|image_pad|>`, expanded for its grid) and the prompt."""
  return chat(IMAGE_BLOCK + REFLECT.format(prompt=prompt), False)


def edit(instruction: str, pretrain: bool = False, literal_vision_end: bool = False) -> str:
  """One `<|image_pad|>` placeholder: expand it with `tokenizer.expand_image_tokens` for the image's grid.

  literal_vision_end: the original RL prompt's `<vision_end>`, plain text where the special `<|vision_end|>`
  belongs (`../shared/reference/unirl.md` §1.3); its checkpoints were trained with it."""
  block = IMAGE_BLOCK.replace("<|vision_end|>", "<vision_end>") if literal_vision_end else IMAGE_BLOCK
  return chat(block + (PRETRAIN_EDIT if pretrain else RL_EDIT).format(instruction), pretrain)


def reason(question: str, template: str = REASON, image: bool = False, system: str = SYSTEM) -> str:
  """A reasoning question's LM prompt (the LM completes it); an image question starts with the image block, whose
  one `<|image_pad|>` `tokenizer.expand_image_tokens` expands for the image's grid."""
  if "{question}" not in template:
    raise ValueError(f"reason.template {template!r} has no {{question}} field")
  return chat((IMAGE_BLOCK if image else "") + template.replace("{question}", question), False, system)


@dataclasses.dataclass(frozen=True)
class PromptRecord:
  """One RL prompt and the rest of its record, which the rewards receive as metadata (GenEval's tag/include/
  exclude, a reasoning answer, edit captions)."""

  text: str
  metadata: dict = dataclasses.field(default_factory=dict)


def read_prompt_file(path: str) -> list[PromptRecord]:
  """RL prompts: a .txt file (one caption per line, blank lines skipped, as pickscore.txt) or a .jsonl file
  whose objects hold a "prompt" (GenEval's train_metadata.jsonl) or "caption"; its other fields are kept as the
  record's metadata."""
  import json
  import os
  if not os.path.exists(path):
    raise FileNotFoundError(f"prompt file {path!r} does not exist")
  out = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      if path.endswith(".jsonl"):
        try:
          d = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        text = d.get("prompt", d.get("caption")) if isinstance(d, dict) else None
        if not isinstance(text, str) or not text.strip():
          raise ValueError(f"{path}:{n}: no non-empty 'prompt' or 'caption' field")
        out.append(PromptRecord(text.strip(), {k: v for k, v in d.items() if k not in ("prompt", "caption")}))
      else:
        out.append(PromptRecord(line))
  if not out:
    raise ValueError(f"prompt file {path!r} holds no prompts")
  return out


class PromptSource:
  """The captions of each GRPO step: a seeded permutation of the prompts per pass over them, as a pure function
  of (seed, step), so a resumed run draws exactly what an unbroken one would have."""

  def __init__(self, records, per_step: int, seed: int):
    self.records = [r if isinstance(r, PromptRecord) else PromptRecord(str(r)) for r in records]
    self.texts = [r.text for r in self.records]
    self.per_step, self.seed = per_step, seed
    if not self.records:
      raise ValueError("no prompts")

  def __len__(self) -> int:
    return len(self.texts)

  def indices(self, step: int) -> list[int]:
    n, b = len(self.texts), self.per_step
    out = []
    for j in range((step - 1) * b, step * b):
      epoch, pos = divmod(j, n)
      out.append(int(np.random.RandomState([self.seed, epoch]).permutation(n)[pos]))
    return out

  def captions(self, step: int) -> list[str]:
    return [self.texts[i] for i in self.indices(step)]

  def step_records(self, step: int) -> list[PromptRecord]:
    return [self.records[i] for i in self.indices(step)]


def encode(tok, texts, max_len: int, setting: str | None = "max_text_len", pad: str = "max_len",
           multiple: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded (B, L) int32 ids and mask, no special tokens added.

  pad "max_len": L = max_len; "longest": the longest row rounded up to `multiple` (at most max_len). A text
  longer than max_len is an error naming `setting`, or, with setting=None, keeps its last max_len tokens (the
  original truncates the CoT dialogue condition from the left).
  """
  rows = tok(list(texts), add_special_tokens=False)["input_ids"]
  n = max(len(r) for r in rows)
  if n > max_len and setting is not None:
    raise ValueError(f"a prompt has {n} tokens, more than {setting}={max_len}: raise it in the config")
  length = max_len if pad == "max_len" else min(max_len, -(-n // multiple) * multiple)
  ids = np.full((len(rows), length), tok.pad_token_id, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    r = r[-length:]
    ids[i, length - len(r):], mask[i, length - len(r):] = r, 1
  return ids, mask
