"""jfwatch: a security log monitor and alerting daemon for Jellyfin servers."""

__version__ = "0.1.0"
