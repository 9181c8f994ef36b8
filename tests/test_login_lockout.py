"""Login brute-force protection (django-axes): wrong passwords lock a username out from one
address, the right password included, without touching other accounts or addresses."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _axes_on(settings) -> None:
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 5


def log_in(client: Client, username: str, password: str):
    return client.post("/accounts/login/", {"username": username, "password": password})


def test_after_five_wrong_passwords_the_right_one_is_refused_too(curator, password) -> None:
    client = Client()
    assert [log_in(client, "curator", f"guess-{i}").status_code for i in range(5)] == [200] * 4 + [
        429
    ]
    refused = log_in(client, "curator", password)
    assert refused.status_code == 429
    assert "Too many failed logins" in refused.content.decode()
    assert "_auth_user_id" not in client.session


def test_a_lockout_holds_only_for_that_username_and_address(curator, annotator, password) -> None:
    attacker = Client(REMOTE_ADDR="203.0.113.9")
    for i in range(5):
        log_in(attacker, "curator", f"guess-{i}")
    assert log_in(attacker, "annotator", password).status_code == 302
    assert log_in(Client(REMOTE_ADDR="198.51.100.7"), "curator", password).status_code == 302


def test_fewer_failures_than_the_limit_then_the_right_password_logs_in(curator, password) -> None:
    client = Client()
    for i in range(4):
        log_in(client, "curator", f"guess-{i}")
    assert log_in(client, "curator", password).status_code == 302
