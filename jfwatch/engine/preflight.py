"""
The runtime checks: what a valid config names must also be usable on this host (files
that open, keys that can be read).  One list of problems, each located in the config
file, for ``check-config`` and for every command that starts on the config.
"""

from __future__ import annotations

from jfwatch.actions import apprise_file
from jfwatch.config.errors import ConfigError
from jfwatch.config.model import Config
from jfwatch.enrich.geo import GeoError, open_databases
from jfwatch.sources.jellyfin_api import ApiError, read_api_key


def runtime_problems(cfg: Config, *, keys: bool = True) -> list[str]:
    """Everything that would stop a start or lose alerts, all at once (``keys``: also the
    API and LAPI credentials, which only the daemon and check-config read)."""
    problems = []
    if cfg.notify.config_file is not None:
        problem = apprise_file.problem(cfg.notify.config_file)
        if problem:
            problems.append(f"{cfg.where('notify', 'config_file')}: {problem}")
    if cfg.geo.enabled and cfg.geo.mmdb:
        try:
            for _, reader in open_databases(cfg.geo.mmdb):
                reader.close()
        except GeoError as exc:
            problems.append(f"{cfg.where('geo', 'mmdb')}: cannot open the database: {exc}")
    if keys:
        for number, api in enumerate(cfg.jellyfin_api):
            try:
                read_api_key(str(api.api_key_file) if api.api_key_file else None,
                             api.api_key_env)
            except ApiError as exc:
                problems.append(f"{cfg.where('jellyfin_api', number)}: {exc}")
        if cfg.crowdsec.enabled:
            from jfwatch.engine.sink import bouncer, lapi_client

            try:
                lapi_client(cfg).close()
                bouncer(cfg)  # the bouncer key, if one is configured
            except ConfigError as exc:
                problems += [f"{cfg.where('crowdsec')}: {p}" for p in exc.problems]
    return problems


def check_runtime(cfg: Config, *, keys: bool = True) -> None:
    """ConfigError with every runtime problem, if there is one."""
    problems = runtime_problems(cfg, keys=keys)
    if problems:
        raise ConfigError(problems)
