"""The few exceptions jfwatch raises on purpose (kept apart to avoid import loops)."""

from __future__ import annotations


class JfwatchError(Exception):
    """Base class for errors that are reported to the user without a traceback."""


class ConfigError(JfwatchError):
    """A configuration or rule file is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))
