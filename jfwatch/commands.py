"""Sub-commands that need the whole pipeline (filled in as stages land)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the pipeline sub-commands to the CLI."""
