"""
The names of the log formats, for the config's ``format:`` and the CLI's ``--format``.
The parser registry (``jfwatch.parsers``) implements exactly these, and checks so at
import: the config names a format without importing the parsers.
"""

from __future__ import annotations

from typing import Final

# Order matters for auto-detection: Traefik CLF is nginx combined plus a tail.
PARSER_NAMES: Final = ("jellyfin", "jellyfin_activity", "authelia", "authentik", "caddy",
                       "traefik", "nginx")
FORMATS: Final = ("auto", *PARSER_NAMES)
