from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from config.embedded import upgrade_postgres


class Command(BaseCommand):
    help = (
        "Upgrade the embedded PostgreSQL data directory of an older AutoRet (PostgreSQL 16) to "
        "the PostgreSQL this version runs, in place with pg_upgrade; the old files are kept in "
        "<data dir>.old."
    )
    # The checks would connect to the database, which cannot start before the upgrade.
    requires_system_checks: list[str] = []

    def handle(self, *args: Any, **options: Any) -> None:
        pgdata = settings.EMBEDDED_POSTGRES_DIR
        if pgdata is None:
            raise CommandError("DATABASE_URL is set: upgrade that server with its own tools")
        # An EmbeddedServiceError (the upgrade failed) ends as one line through manage.py.
        found = upgrade_postgres(pgdata)
        if found is None:
            self.stdout.write(f"{pgdata} needs no upgrade")
        else:
            self.stdout.write(
                f"upgraded {pgdata} from PostgreSQL {found}; the old files are in {pgdata}.old "
                "(remove them once the platform runs)"
            )
