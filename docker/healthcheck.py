"""The container's HEALTHCHECK: 0 when jfwatch's /health answers 200, else 1."""

import sys
import urllib.request

try:
    with urllib.request.urlopen("http://127.0.0.1:9725/health", timeout=4) as response:  # noqa: S310 - a fixed local URL
        sys.exit(0 if response.status == 200 else 1)
except OSError:
    sys.exit(1)
