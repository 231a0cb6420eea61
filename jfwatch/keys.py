"""Keys kept outside the config file (Jellyfin API keys, CrowdSec bouncer keys): read
from a file (its first line) or an environment variable.  Errors name where they looked,
never what they found."""

from __future__ import annotations

import os


class KeyUnreadable(ValueError):
    """The key's file or variable cannot be read, or holds nothing."""


def read_key(what: str, key_file: str | None, key_env: str | None = None) -> str:
    """The key called ``what`` ("API key", "bouncer key"): from ``key_file`` if set, else
    from the environment variable ``key_env``."""
    if key_file:
        try:
            with open(key_file, encoding="utf-8") as fh:
                key = fh.readline().strip()
        except OSError as exc:
            raise KeyUnreadable(f"cannot read the {what} file {key_file}: {exc.strerror}") \
                from None
        if not key:
            raise KeyUnreadable(f"the {what} file {key_file} is empty")
        return key
    key = os.environ.get(key_env or "", "").strip()
    if not key:
        raise KeyUnreadable(f"the environment variable {key_env} holding the {what} is not set")
    return key
