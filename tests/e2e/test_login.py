from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def test_wrong_password_is_refused_in_the_browser(page, live_server, admin) -> None:
    page.goto(f"{live_server.url}/")
    assert "/accounts/login/" in page.url
    page.get_by_label("Username").fill(admin.username)
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    assert (
        page.get_by_role("alert").inner_text().startswith("Your username and password didn't match")
    )


def test_admin_logs_in_sees_status_and_logs_out(logged_in_page, live_server) -> None:
    page = logged_in_page
    assert page.get_by_text("System status").is_visible()
    assert page.evaluate("typeof window.htmx") == "object", "vendored htmx did not load"
    page.get_by_role("button", name="Log out admin").click()
    page.goto(f"{live_server.url}/")
    assert "/accounts/login/" in page.url
