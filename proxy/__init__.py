"""gini-auth-proxy: an authenticating reverse proxy and token vendor for the Gini Pay API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gini-auth-proxy")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
