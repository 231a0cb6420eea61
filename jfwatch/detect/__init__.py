"""Stage 3, detection: rules, the detector that applies them, and the state it keeps."""
