"""The embedded state (SQLite): what survives a restart."""

from jfwatch.state.bans import BanRow
from jfwatch.state.database import StateUnusable
from jfwatch.state.enforcement import Enforcement
from jfwatch.state.offsets import SavedOffset
from jfwatch.state.store import StateStore

__all__ = ["BanRow", "Enforcement", "SavedOffset", "StateStore", "StateUnusable"]
