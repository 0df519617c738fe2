"""Distributed training with Ray Train: the per-worker loop and the driver that starts it."""
