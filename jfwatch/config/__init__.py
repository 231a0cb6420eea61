"""Stage 0, configuration: the YAML file, its validation and its line-numbered errors."""
