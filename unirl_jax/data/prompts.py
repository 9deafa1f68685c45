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
RL_EDIT = "\nPlease edit the image given the following instruction: {}"


def chat(user: str, pretrain: bool) -> str:
  text = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
  return text + "<|im_end|>\n" if pretrain else text


def t2i(caption: str, pretrain: bool = False) -> str:
  return chat((PRETRAIN_T2I if pretrain else RL_T2I).format(caption), pretrain)


def edit(instruction: str, pretrain: bool = False) -> str:
  """One `<|image_pad|>` placeholder: expand it with `tokenizer.expand_image_tokens` for the image's grid."""
  return chat(IMAGE_BLOCK + (PRETRAIN_EDIT if pretrain else RL_EDIT).format(instruction), pretrain)
