"""The engine that wires every stage together, and the commands built on it (daemon, CLI)."""
