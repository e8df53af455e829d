"""withcache: a URL-keyed artifact cache with transparent curl/wget shims."""

__version__ = "0.5.0.dev0"
