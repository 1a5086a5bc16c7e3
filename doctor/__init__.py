"""niah-doctor: check the machine and a planned long-context run before it fails.

Nothing heavy is imported here: `import doctor` must stay cheap and must work on a
machine whose torch or bitsandbytes is broken.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("niah-doctor")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
