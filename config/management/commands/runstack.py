from __future__ import annotations

import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from config.stack import StackOptions, run_stack


class Command(BaseCommand):
    help = (
        "Run the whole platform on this machine: embedded PostgreSQL and Redis, a Celery worker "
        "and gunicorn. Ctrl-C or SIGTERM stops everything."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)"
        )
        parser.add_argument("--port", type=int, default=None, help="port (default: PORT or 8000)")
        parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes")

    def handle(self, *args: Any, **options: Any) -> None:
        code = run_stack(
            StackOptions(
                host=options["host"],
                port=options["port"] or settings.PORT,
                web_workers=options["web_workers"],
                out=self.stdout,
            )
        )
        sys.exit(code)
