"""The cache-host: `withcache-server`."""
