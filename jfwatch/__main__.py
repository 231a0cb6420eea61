"""Allow ``python -m jfwatch``."""

from jfwatch.cli import main

raise SystemExit(main())
