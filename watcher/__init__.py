"""watcher: keeps machine-learning models healthy in production."""

from importlib.metadata import PackageNotFoundError, version

# The distribution's name: "watcher" on the package index is another project.
DISTRIBUTION = "watcher-drift"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["DISTRIBUTION", "__version__"]
