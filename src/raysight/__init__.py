"""raysight: train vision models with Ray Train, serve them with Ray Serve over gRPC."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("raysight")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
