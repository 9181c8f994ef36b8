from __future__ import annotations

from retrieval.autoret.cli import main

raise SystemExit(main())
