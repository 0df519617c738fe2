"""raysight: train vision models with Ray Train, serve them with Ray Serve over gRPC."""

import os
import sys
from importlib.metadata import PackageNotFoundError, version

# Values already in the environment win over both defaults below.
# Ray 2.60 uses token authentication; naming the mode stops Ray's start-up warning that it
# chose it by itself. Ray reads the mode once, on import: set after that, the driver would
# speak without a token to a cluster that wants one. So only before Ray is imported (as it
# is by the raysight command, whose modules import Ray only through this package).
if "ray" not in sys.modules:
    os.environ.setdefault("RAY_AUTH_MODE", "token")
# Ray starts workers at nice 15; next to a busy driver on a small machine they starve.
os.environ.setdefault("RAY_worker_niceness", "0")

try:
    __version__ = version("raysight")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
