"""Model ports: each a pure Flax linen module mirroring one PyTorch reference."""
