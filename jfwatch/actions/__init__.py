"""Stage 4, actions: the ban feed, notifications and metrics."""
