"""GRPO: group advantages, the DM (Flow-GRPO) and LM (token GRPO) surrogate losses as (sum, denominator)."""
