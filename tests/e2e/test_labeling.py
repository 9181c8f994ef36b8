"""Labeling in a real browser: keyboard answers, undo, counters, instructions and examples."""

from __future__ import annotations

import re

import pytest

from labeling import instructions
from labeling.models import Constraint, ExamplePair, Pair
from tests.labeling.conftest import add_images, add_version

# Mining requests go to the test Redis.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("live_redis")]

ANSWER_URL = re.compile(r"/api/v1/pairs/\d+/answer/(\?|$)")


def test_answer_pairs_with_the_keyboard_undo_one_and_see_counters(
    logged_in_page, live_server, collection
):
    from playwright.sync_api import expect

    images = add_images(collection, 16)
    add_version(collection, images, number=1, seed=3)
    page = logged_in_page
    page.goto(f"{live_server.url}/collections/{collection.pk}/label/")
    mine = page.locator('[data-counter="mine"]')
    expect(mine).to_have_text("0")
    expect(page.locator("#label-status")).to_have_text(re.compile(r"^Pair \d+"))
    first = page.locator("#labeler").get_attribute("data-pair-id")

    page.keyboard.press("j")
    expect(page.locator("#labeler")).not_to_have_attribute("data-pair-id", first or "")
    second = page.locator("#labeler").get_attribute("data-pair-id")
    page.keyboard.press("k")
    expect(page.locator("#labeler")).not_to_have_attribute("data-pair-id", second or "")
    third = page.locator("#labeler").get_attribute("data-pair-id")
    page.keyboard.press("s")
    expect(mine).to_have_text("3")

    page.keyboard.press("u")
    expect(mine).to_have_text("2")
    # Undo brings the last answered pair back on screen.
    expect(page.locator("#labeler")).to_have_attribute("data-pair-id", third or "")
    page.get_by_role("button", name="Same").click()
    expect(mine).to_have_text("3")
    answers = sorted(Constraint.objects.values_list("answer", flat=True))
    assert answers == ["different", "same", "same"]


def test_an_answer_whose_request_fails_is_retried_and_stored_once(
    logged_in_page, live_server, collection
):
    from playwright.sync_api import expect

    images = add_images(collection, 12)
    add_version(collection, images, number=1, seed=4)
    page = logged_in_page
    failures = {"left": 2}

    def flaky(route) -> None:
        # The network drops the first two attempts; the page must keep the answer and retry.
        if failures["left"]:
            failures["left"] -= 1
            route.abort()
        else:
            route.continue_()

    # An answer's request may carry ?next=1 (its response brings the pair after the next).
    page.route(ANSWER_URL, flaky)
    page.goto(f"{live_server.url}/collections/{collection.pk}/label/")
    expect(page.locator("#label-status")).to_have_text(re.compile(r"^Pair \d+"))
    page.get_by_role("button", name="Different").click()
    expect(page.locator('[data-counter="mine"]')).to_have_text("1")
    assert failures["left"] == 0
    assert list(Constraint.objects.values_list("answer", flat=True)) == ["different"]


def test_a_slow_server_never_holds_back_the_preloaded_pair(logged_in_page, live_server, collection):
    from playwright.sync_api import expect

    images = add_images(collection, 16)
    add_version(collection, images, number=1, seed=7)
    page = logged_in_page
    held = []

    def hold(route) -> None:
        # The server takes its time with answers: they stay in flight until the test lets go.
        held.append(route)

    page.route(ANSWER_URL, hold)
    page.goto(f"{live_server.url}/collections/{collection.pk}/label/")
    labeler = page.locator("#labeler")
    expect(page.locator("#label-status")).to_have_text(re.compile(r"^Pair \d+"))
    page.wait_for_load_state("networkidle")  # the next pair is preloaded
    first = labeler.get_attribute("data-pair-id")

    page.keyboard.press("j")
    # The preloaded pair is on screen while the answer is still on its way.
    expect(labeler).not_to_have_attribute("data-pair-id", first or "")
    second = labeler.get_attribute("data-pair-id")
    assert len(held) == 1
    assert "next=1" in held[0].request.url  # the answer also asks for the pair after this one
    # The answer has not arrived yet: the page says so, and keeps it.
    expect(page.locator("#pending")).to_have_text(re.compile(r"^1 answer\(s\) waiting"))
    assert not Constraint.objects.exists()

    held[0].continue_()
    page.unroute(ANSWER_URL)
    expect(page.locator("#pending")).to_be_hidden()
    assert list(Constraint.objects.values_list("pair_id", flat=True)) == [int(first or 0)]
    # The answer's response brought the pair after the one on screen: answering goes on.
    page.keyboard.press("k")
    expect(labeler).not_to_have_attribute("data-pair-id", second or "")
    expect(page.locator('[data-counter="mine"]')).to_have_text("2")


def test_answers_queued_while_signed_out_arrive_after_logging_in_again(
    logged_in_page, live_server, collection, admin, password
):
    from django.contrib.sessions.models import Session
    from playwright.sync_api import expect

    images = add_images(collection, 12)
    add_version(collection, images, number=1, seed=5)
    page = logged_in_page
    page.goto(f"{live_server.url}/collections/{collection.pk}/label/")
    expect(page.locator("#label-status")).to_have_text(re.compile(r"^Pair \d+"))
    first = page.locator("#labeler").get_attribute("data-pair-id")
    # The session expires (here: is deleted) with the page open; two answers are given.
    Session.objects.all().delete()
    page.keyboard.press("j")
    expect(page.locator("#labeler")).not_to_have_attribute("data-pair-id", first or "")
    page.keyboard.press("k")
    signed_out = page.locator("#signed-out")
    expect(signed_out).to_be_visible()
    expect(page.locator("#pending")).to_have_text(re.compile(r"^2 answer"))
    assert not Constraint.objects.exists()

    signed_out.get_by_role("link", name="Log in again").click()
    page.get_by_label("Username").fill(admin.username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server.url}/collections/{collection.pk}/label/")
    expect(page.locator('[data-counter="mine"]')).to_have_text("2")
    assert sorted(Constraint.objects.values_list("answer", flat=True)) == ["different", "same"]
    expect(page.locator("#pending")).to_be_hidden()


def test_another_user_on_the_same_browser_never_sends_the_first_users_answers(
    logged_in_page, live_server, collection, admin, annotator, password
):
    from django.contrib.sessions.models import Session
    from playwright.sync_api import expect

    images = add_images(collection, 12)
    add_version(collection, images, number=1, seed=6)
    page = logged_in_page
    page.goto(f"{live_server.url}/collections/{collection.pk}/label/")
    expect(page.locator("#label-status")).to_have_text(re.compile(r"^Pair \d+"))
    Session.objects.all().delete()
    page.keyboard.press("j")
    expect(page.locator("#signed-out")).to_be_visible()

    page.goto(f"{live_server.url}/accounts/login/?next=/collections/{collection.pk}/label/")
    page.get_by_label("Username").fill(annotator.username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server.url}/collections/{collection.pk}/label/")
    expect(page.locator("#label-status")).to_have_text(re.compile(r"^Pair \d+"))
    page.wait_for_timeout(1500)
    assert not Constraint.objects.exists()
    keys = page.evaluate("Object.keys(localStorage)")
    assert any(key.startswith(f"autoret-outbox-{admin.pk}-") for key in keys)


def test_instructions_open_on_the_first_visit_then_stay_closed_and_i_toggles_them(
    logged_in_page, live_server, collection, admin
):
    from playwright.sync_api import expect

    images = add_images(collection, 12)
    add_version(collection, images, number=1, seed=7)
    instructions.update(
        collection,
        admin,
        question="Same colour family?",
        instructions="Warm **reds** and oranges are one family.",
        examples=[instructions.Example(images[0].pk, images[1].pk, "same")],
    )
    page = logged_in_page
    url = f"{live_server.url}/collections/{collection.pk}/label/"
    text = page.locator("#instructions .instructions-text")
    page.goto(url)
    expect(page.locator("#question")).to_have_text("Same colour family?")
    expect(text).to_be_visible()
    expect(text.locator("strong")).to_have_text("reds")
    expect(page.locator("#instructions figure img")).to_have_count(2)

    page.reload()
    expect(page.locator("#label-status")).to_have_text(re.compile(r"^Pair \d+"))
    expect(text).to_be_hidden()
    page.keyboard.press("i")
    expect(text).to_be_visible()
    page.keyboard.press("i")
    expect(text).to_be_hidden()
    # The key opens them without answering anything.
    assert not Constraint.objects.exists()

    # An admin's change reaches annotators who saw the old version: open again, once.
    instructions.update(collection, admin, instructions="Only **exact** shades.")
    page.reload()
    expect(text.locator("strong")).to_have_text("exact")
    expect(text).to_be_visible()


def test_an_admin_pins_the_pair_on_screen_as_an_example(logged_in_page, live_server, collection):
    from playwright.sync_api import expect

    images = add_images(collection, 8)
    add_version(collection, images, number=1, seed=8)
    page = logged_in_page
    page.goto(f"{live_server.url}/collections/{collection.pk}/label/")
    expect(page.locator("#label-status")).to_have_text(re.compile(r"^Pair \d+"))
    shown = Pair.objects.get(pk=page.locator("#labeler").get_attribute("data-pair-id"))
    page.get_by_label("Admin: pin this pair as an example of").select_option("different")
    page.get_by_role("button", name="Pin as example").click()
    expect(
        page.get_by_text(f"Pinned images {shown.a_id} and {shown.b_id} as different.")
    ).to_be_visible()
    expect(page.locator('#instructions figure[data-example="different"]')).to_have_count(1)
    assert ExamplePair.objects.get().answer == "different"
