"""UniRL's chat formats for the image-generation conditioning path (unirl.md §1.2, §1.3).

Pretraining wraps the request in a complete chat (the queries follow `<|im_start|>assistant\\n<|im_end|>\\n`);
RL and inference end at `<|im_start|>assistant\\n`. The wording differs between the two, as in the original.
"""

from __future__ import annotations

SYSTEM = "You are a helpful assistant."
IMAGE_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"

PRETRAIN_T2I = "Please generate image based on the following caption: {}"
PRETRAIN_EDIT = "\nPlease edit the given image based on the folllowing instruction: {}."  # sic: the code's typo
RL_T2I = "Please generate the image given the following caption: {}"
RL_T2I_COT = ("Please enhance the following prompt to make it more suitable for image generation: {}. "
              "Output the final answer (entailed prompt) in <answer> </answer> tags.")
RL_EDIT = "\nPlease edit the image given the following instruction: {}"


def chat(user: str, pretrain: bool) -> str:
  text = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
  return text + "<|im_end|>\n" if pretrain else text


def t2i(caption: str, pretrain: bool = False) -> str:
  return chat((PRETRAIN_T2I if pretrain else RL_T2I).format(caption), pretrain)


def t2i_cot(caption: str) -> str:
  """The CoT task's LM prompt (the LM completes it; the whole decoded dialogue then conditions the DM)."""
  return chat(RL_T2I_COT.format(caption), pretrain=False)


def edit(instruction: str, pretrain: bool = False) -> str:
  """One `<|image_pad|>` placeholder: expand it with `tokenizer.expand_image_tokens` for the image's grid."""
  return chat(IMAGE_BLOCK + (PRETRAIN_EDIT if pretrain else RL_EDIT).format(instruction), pretrain)


def read_prompt_file(path: str) -> list[str]:
  """RL prompts: a .txt file (one caption per line, blank lines skipped, as pickscore.txt) or a .jsonl file
  whose objects hold a "prompt" (GenEval's train_metadata.jsonl) or "caption"."""
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
        out.append(text.strip())
      else:
        out.append(line)
  if not out:
    raise ValueError(f"prompt file {path!r} holds no prompts")
  return out
