"""Allow ``python -m jfwatch``."""

from jfwatch.engine.cli import main

raise SystemExit(main())
