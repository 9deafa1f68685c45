"""UniRL-Zero CoT-enhanced generation at the real size (the original's train_blip3o_t2icot.sh):
G=8 completions (T=1, top-k 50, 512 new tokens) -> 8 images, reward GenEval + format, DiT group lr 3e-6 and
LLM lr 5e-7, DM beta 4e-3, LM k3 KL 0.01. Starts from the CoT cold-start checkpoint (its SFT recipe is not
released); "gen_eval" is the GenEval detector service of configs/t2i_unirl_zero.py.
"""

from configs import t2i_unirl_zero, t2icot_tiny


def get_config():
  c = t2i_unirl_zero.get_config()
  cot = t2icot_tiny.get_config()
  c.task = "t2icot"
  c.workdir = "workdir/t2icot_unirl_zero"
  c.model.init = "ckpt/cot_cold_start"
  c.reward = "gen_eval,format"
  c.lm = cot.lm
  c.lm.max_new_tokens = 512
  c.lm.max_cond_len = 768
  c.train.trainable = cot.train.trainable
  c.optim.lr = 3e-6
  c.optim.group_lr = {"lm": 5e-7}
  return c
