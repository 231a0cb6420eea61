"""An Apprise config file (``notify.config_file``): its URLs, read the way Apprise reads
them, each checked as the config checks a URL."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from jfwatch.config.model import apprise_loadable
from jfwatch.config.yaml_lines import YamlRefused, guard_yaml, load_yaml


def entries(path: Path) -> list[str]:
    """The URLs of an Apprise config file: YAML (``urls:``, each a URL or a URL with its
    options) or text (``[tags=]URL`` lines)."""
    guard_yaml(path)  # before Apprise or anyone else parses it
    text = path.read_text(encoding="utf-8")
    data = load_yaml(path)[0] if path.suffix in (".yml", ".yaml") else None
    if isinstance(data, dict):
        urls = data.get("urls") or []
        return [str(next(iter(e))) if isinstance(e, dict) and e else str(e) for e in urls if e]
    lines = [line.strip() for line in text.splitlines()]
    return [line.split("=", 1)[1].strip() if "=" in line.split("://", 1)[0] else line
            for line in lines if line and not line.startswith(("#", ";"))]


def problem(path: Path) -> str | None:
    """Why the file cannot serve as notification targets (every entry must load), or None.
    Never quotes a URL: they hold tokens."""
    try:
        urls = entries(path)
    except YamlRefused as exc:
        return f"refused the Apprise config file: {exc}"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"cannot read the Apprise config file: {exc}"
    bad = []
    for number, url in enumerate(urls, 1):
        try:
            apprise_loadable(SecretStr(url))
        except ValueError:
            scheme = url.split("://", 1)[0] if "://" in url else "?"
            bad.append(f"entry {number} ({scheme}://)" if scheme.isalnum() else f"entry {number}")
    if bad:
        return (f"Apprise cannot load {', '.join(bad)} of {path}: an unknown service, or a "
                "token or field in the wrong form (URLs are not shown)")
    return None
