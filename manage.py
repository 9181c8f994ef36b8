#!/usr/bin/env python
"""Django's command-line utility; configuration errors end in one line, not a traceback."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    from config.embedded import EmbeddedServiceError

    try:
        execute_from_command_line(sys.argv)
    except (ImproperlyConfigured, EmbeddedServiceError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
