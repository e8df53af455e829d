"""`python -m withcache.server.healthcheck`: is the cache-host on this machine up?

Exit 0 if it answers /healthz, 1 if not, with the reason on stderr. It reads
the same WITHCACHE_* variables as `withcache-server`, so it asks the address,
port and scheme the server was started with (container HEALTHCHECKs and
service probes run it beside the server). A degraded host (disk below
--min-free, a store that can't record) still serves hits: it is alive, so
exit 0, with its problems on stderr; restarting it would not free the disk.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import urllib.request

from withcache.server.cli import UsageError, settings_from

TIMEOUT = 4.0
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def main() -> None:
    try:
        settings = settings_from([], os.environ)
    except UsageError as err:
        raise SystemExit(f"unhealthy: bad setting: {err}") from None
    host = _ANY_ADDRESS.get(settings.host, settings.host)
    netloc = f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"
    context = None
    if settings.tls_cert:
        # Our own server, on this machine: its certificate names the service,
        # not the loopback address, and liveness is all that is asked here.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    scheme = "https" if settings.tls_cert else "http"
    url = f"{scheme}://{netloc}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT, context=context) as response:
            health = json.load(response)
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        if isinstance(reason, OSError) and reason.strerror:
            reason = reason.strerror
        raise SystemExit(f"unhealthy: {url}: {reason}") from None
    status = health.get("status")
    if status == "degraded":
        print(f"degraded: {'; '.join(health.get('problems') or [])}", file=sys.stderr)
    elif status != "ok":
        raise SystemExit(f"unhealthy: /healthz says {status!r}")


if __name__ == "__main__":
    main()
