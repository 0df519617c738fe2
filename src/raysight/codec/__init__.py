"""Codecs between wire formats and numpy arrays; numpy and Pillow only, no torch, ray or grpc.

- `raysight.codec.oip`: Open Inference Protocol tensors <-> numpy arrays.
- `raysight.codec.image`: encoded image bytes -> model pixels, with limits.
"""
