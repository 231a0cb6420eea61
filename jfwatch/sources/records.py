"""
What an API source hands its parser: records (decoded JSON objects, the fields a
detection needs), never text to be decoded again.
"""

from __future__ import annotations

from typing import Any, Final

Record = dict[str, Any]
# Added by the Activity Log source to an entry: the name of its UserId (``Name`` is in the
# server's language, and only a template says where the name is in it).
RESOLVED_USER: Final = "jfwatch.user"
