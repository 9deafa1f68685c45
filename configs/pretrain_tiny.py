"""Flow-matching pretraining of a tiny unified model on a synthetic shapes dataset: the CPU default.

python -m unirl_jax.train --config configs/pretrain_tiny.py --workdir workdir/pretrain_tiny
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = "pretrain"
  c.seed = 0
  c.workdir = "workdir/pretrain_tiny"

  c.model = ml_collections.ConfigDict()
  c.model.init = "preset:tiny_qwen_vocab"  # or a unified checkpoint dir (python -m convert unirl ...)
  c.model.dtype = "float32"
  c.model.remat = "none"
  c.model.frozen_dtype = ml_collections.FieldReference(None, field_type=str)

  c.data = ml_collections.ConfigDict()
  c.data.sources = ()  # empty: a synthetic dataset is generated into the workdir
  c.data.synthetic_n = 512
  c.data.image_size = 32
  c.data.vit_size = 56  # 4x4 patches -> 4 LM tokens for editing prompts
  c.data.max_text_len = 64
  c.data.batch_size = 8
  c.data.task_weights = {}  # empty: proportional to the record counts
  c.data.mix = "batches"  # or "rows": every batch holds each task's share of rows
  c.data.skip_bad = False
  c.data.stream = False  # parquet sources read a row group at a time (tar shards always are)

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3
  c.optim.min_lr = 1e-4
  c.optim.warmup_steps = 10
  c.optim.schedule = "cosine"
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-8
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 1.0

  c.loss = ml_collections.ConfigDict()
  c.loss.cond_dropout = 0.05  # each of: text only, reference only, both
  c.loss.logit_normal_mean, c.loss.logit_normal_std = 0.0, 1.0  # sigma = sigmoid(N(mean, std))
  c.loss.edit_region_weight = 0.0  # extra weight on what an edit changes (run_config.FlowLossSettings)

  c.train = ml_collections.ConfigDict()
  c.train.total_steps = 300
  c.train.log_every = 10
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 2
  c.train.trainable = ("dit", "connector", "t2i_queries", "i2i_queries")

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  return c
