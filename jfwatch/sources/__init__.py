"""Stage 1, sources: finding log files, following them through rotation, reading bounded blocks of lines."""
