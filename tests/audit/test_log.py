"""Every change the audit log covers writes exactly its row (who, what, where, on what), through
each way in: pages, the API, the admin and commands. Only a collection's admins see its log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client
from rest_framework.authtoken.models import Token

from audit.models import Event
from labeling.models import Pair
from retrieval import activity
from retrieval.models import Collection, Membership, ModelVersion
from tests.retrieval.conftest import image_bytes
from worker.models import Job

pytestmark = pytest.mark.django_db
Action = Event.Action


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def only_event() -> Event:
    """The one row the action wrote (the test fails when it wrote none or several)."""
    [event] = Event.objects.all()
    return event


def images(collection: Collection, n: int) -> list[int]:
    files = [SimpleUploadedFile(f"{i}.png", image_bytes((i, 40, 90))) for i in range(n)]
    from retrieval.imports import from_uploads, import_items

    report = import_items(collection, from_uploads(files, _limits()))
    Event.objects.all().delete()  # the fixture's own import row
    return sorted(report.created)


def _limits():
    from retrieval.imports import Limits

    return Limits.from_settings()


@pytest.fixture
def pair(collection: Collection) -> Pair:
    first, second = images(collection, 2)
    return Pair.objects.create(collection=collection, a_id=first, b_id=second)


def test_an_answer_writes_one_row_and_a_replayed_key_none(annotator, collection, pair) -> None:
    client = signed_in(annotator)
    url = f"/api/v1/pairs/{pair.pk}/answer/"
    body = {"answer": "same", "idempotency_key": "k1"}
    assert client.post(url, body, content_type="application/json").status_code == 201
    event = only_event()
    assert (event.action, event.user, event.username) == (Action.ANSWER, annotator, "annotator")
    assert (event.collection_id, event.target_type, event.target_id) == (
        collection.pk,
        "labeling.pair",
        pair.pk,
    )
    assert event.detail == {"answer": "same", "source": "human"}
    assert client.post(url, body, content_type="application/json").status_code == 200
    assert Event.objects.count() == 1


def test_undo_writes_one_row(annotator, collection, pair) -> None:
    client = signed_in(annotator)
    client.post(f"/api/v1/pairs/{pair.pk}/answer/", {"answer": "different"}, "application/json")
    Event.objects.all().delete()
    assert client.post(f"/api/v1/pairs/{pair.pk}/undo/").status_code == 200
    event = only_event()
    assert (event.action, event.user, event.target_id) == (Action.UNDO, annotator, pair.pk)
    # Nothing to undo: no change, no row.
    assert client.post(f"/api/v1/pairs/{pair.pk}/undo/").status_code == 409
    assert Event.objects.count() == 1


def test_one_to_many_marks_write_one_row_for_their_answers(annotator, collection) -> None:
    query, *others = images(collection, 4)
    response = signed_in(annotator).post(
        f"/api/v1/collections/{collection.pk}/pairs/mark/",
        {"query": query, "images": others, "answer": "same"},
        content_type="application/json",
    )
    assert response.status_code in (200, 201), response.content
    event = only_event()
    assert (event.action, event.target_type, event.target_id) == (
        Action.MARK,
        "retrieval.image",
        query,
    )
    assert event.detail == {"answer": "same", "count": 3, "images": others}
    assert Pair.objects.filter(collection=collection).count() == 3


def test_adjudication_writes_one_row(curator, collection, pair) -> None:
    response = signed_in(curator).post(
        f"/api/v1/pairs/{pair.pk}/adjudicate/", {"answer": "different"}, "application/json"
    )
    assert response.status_code == 200
    event = only_event()
    assert (event.action, event.user, event.detail) == (
        Action.ADJUDICATE,
        curator,
        {"answer": "different"},
    )


@pytest.mark.parametrize("via", ["api", "browser"])
def test_an_import_writes_one_row_with_its_counts(curator, collection, via: str) -> None:
    files = {"a.png": image_bytes((1, 2, 3)), "b.png": image_bytes((1, 2, 3)), "c.txt": b"no"}
    payload = [SimpleUploadedFile(name, data) for name, data in files.items()]
    url = (
        f"/api/v1/collections/{collection.pk}/images/"
        if via == "api"
        else f"/collections/{collection.pk}/upload/"
    )
    assert signed_in(curator).post(url, {"files": payload}).status_code in (200, 201)
    event = only_event()
    assert (event.action, event.user, event.collection_id) == (
        Action.IMPORT,
        curator,
        collection.pk,
    )
    assert event.detail == {"via": via, "created": 1, "duplicates": 1, "rejected": 1}


def test_a_command_import_is_logged_without_a_user(collection, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "x.png").write_bytes(image_bytes())
    call_command("import_images", collection.name, str(folder), "--no-embed", verbosity=0)
    event = only_event()
    assert (event.action, event.user, event.username) == (Action.IMPORT, None, "")
    assert event.detail == {"via": "command", "created": 1, "duplicates": 0, "rejected": 0}


def test_collection_creation_is_logged(curator) -> None:
    response = signed_in(curator).post("/collections/", {"name": "Bags"})
    assert response.status_code == 302
    event = only_event()
    collection = Collection.objects.get(name="Bags")
    assert (event.action, event.user, event.collection_id) == (
        Action.COLLECTION_CREATE,
        curator,
        collection.pk,
    )


def test_activation_and_rollback_are_logged_with_the_previous_version(admin, collection) -> None:
    versions = [
        ModelVersion.objects.create(
            collection=collection, number=n, kind=ModelVersion.Kind.UNTRAINED,
            status=ModelVersion.Status.READY,
        )
        for n in (1, 2)
    ]  # fmt: skip
    client = signed_in(admin)
    for version in versions + versions[:1]:
        assert client.post(f"/api/v1/models/{version.pk}/activate/").status_code == 200
    rows = list(Event.objects.order_by("id").values_list("action", "target_id", "detail"))
    assert rows == [
        (Action.ACTIVATE, versions[0].pk, {"version": 1, "previous": None}),
        (Action.ACTIVATE, versions[1].pk, {"version": 2, "previous": 1}),
        (Action.ACTIVATE, versions[0].pk, {"version": 1, "previous": 2}),
    ]
    # A refused activation changes nothing and logs nothing.
    failed = ModelVersion.objects.create(
        collection=collection, number=3, kind=ModelVersion.Kind.UNTRAINED,
        status=ModelVersion.Status.FAILED,
    )  # fmt: skip
    assert client.post(f"/api/v1/models/{failed.pk}/activate/").status_code == 400
    assert Event.objects.count() == 3


def test_training_start_and_cancel_are_logged(admin, collection) -> None:
    client = signed_in(admin)
    response = client.post(
        f"/api/v1/collections/{collection.pk}/train/", {"minutes": 1}, "application/json"
    )
    assert response.status_code == 202
    job = Job.objects.get(pk=response.json()["job_id"])
    event = only_event()
    assert (event.action, event.user, event.target_type, event.target_id) == (
        Action.TRAIN_START,
        admin,
        "worker.job",
        job.pk,
    )
    assert event.detail == {"version": 1, "minutes": 1.0}
    assert client.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 202
    assert client.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 202  # already asked
    cancels = Event.objects.filter(action=Action.JOB_CANCEL)
    assert list(cancels.values_list("user", "target_id")) == [(admin.pk, job.pk)]


def test_deleting_embeddings_is_logged(admin, collection) -> None:
    old, new = (
        ModelVersion.objects.create(
            collection=collection, number=n, kind=ModelVersion.Kind.UNTRAINED,
            status=ModelVersion.Status.READY,
        )
        for n in (1, 2)
    )  # fmt: skip
    collection.active_version = new
    collection.save()
    response = signed_in(admin).post(
        f"/models/{old.pk}/delete-embeddings/", {"confirm": "yes"}, follow=False
    )
    assert response.status_code == 302
    event = only_event()
    assert (event.action, event.target_id, event.detail) == (
        Action.EMBEDDINGS_DELETE,
        old.pk,
        {"version": 1, "vectors": 0},
    )


def test_membership_changes_in_the_admin_are_logged(admin, outsider, collection) -> None:
    client = signed_in(admin)
    response = client.post(
        "/admin/retrieval/membership/add/",
        {"collection": collection.pk, "user": outsider.pk, "role": Membership.Role.ANNOTATOR},
    )
    assert response.status_code == 302, response.content
    membership = Membership.objects.get(user=outsider)
    change = f"/admin/retrieval/membership/{membership.pk}/change/"
    response = client.post(
        change, {"collection": collection.pk, "user": outsider.pk, "role": Membership.Role.CURATOR}
    )
    assert response.status_code == 302
    # Saved unchanged: nothing to log.
    client.post(
        change, {"collection": collection.pk, "user": outsider.pk, "role": Membership.Role.CURATOR}
    )
    response = client.post(f"/admin/retrieval/membership/{membership.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    rows = Event.objects.order_by("id").values_list(
        "action", "user", "collection", "target_type", "target_id", "detail"
    )
    assert list(rows) == [
        (Action.MEMBER_ADD, admin.pk, collection.pk, "auth.user", outsider.pk,
         {"role": "annotator"}),
        (Action.MEMBER_ROLE, admin.pk, collection.pk, "auth.user", outsider.pk,
         {"role": "curator", "was": "annotator"}),
        (Action.MEMBER_REMOVE, admin.pk, collection.pk, "auth.user", outsider.pk,
         {"role": "curator"}),
    ]  # fmt: skip
    assert not Membership.objects.filter(user=outsider).exists()


def test_members_added_and_removed_on_the_collection_admin_page_are_logged(
    admin, annotator, outsider, collection
) -> None:
    memberships = list(collection.members.order_by("id"))
    form: dict[str, Any] = {
        "name": collection.name,
        "description": "",
        "members-TOTAL_FORMS": len(memberships) + 1,
        "members-INITIAL_FORMS": len(memberships),
        "members-MIN_NUM_FORMS": 0,
        "members-MAX_NUM_FORMS": 1000,
    }
    for i, membership in enumerate(memberships):
        form |= {
            f"members-{i}-id": membership.pk,
            f"members-{i}-collection": collection.pk,
            f"members-{i}-user": membership.user_id,
            f"members-{i}-role": membership.role,
        }
        if membership.user_id == annotator.pk:
            form[f"members-{i}-DELETE"] = "on"
    new = len(memberships)
    form |= {
        f"members-{new}-collection": collection.pk,
        f"members-{new}-user": outsider.pk,
        f"members-{new}-role": Membership.Role.ADMIN,
    }
    response = signed_in(admin).post(f"/admin/retrieval/collection/{collection.pk}/change/", form)
    assert response.status_code == 302, response.content
    rows = Event.objects.order_by("id").values_list("action", "target_id", "detail")
    assert list(rows) == [
        (Action.MEMBER_REMOVE, annotator.pk, {"role": "annotator"}),
        (Action.MEMBER_ADD, outsider.pk, {"role": "admin"}),
    ]


def test_a_user_created_in_the_admin_is_logged(admin, django_user_model) -> None:
    response = signed_in(admin).post(
        "/admin/auth/user/add/",
        {
            "username": "newcomer",
            "usable_password": "true",
            "password1": "a-long-enough-password-1",
            "password2": "a-long-enough-password-1",
        },
    )
    assert response.status_code == 302, response.content
    newcomer = django_user_model.objects.get(username="newcomer")
    event = only_event()
    assert (event.action, event.user, event.collection_id, event.target_id) == (
        Action.USER_CREATE,
        admin,
        None,
        newcomer.pk,
    )
    assert event.detail == {
        "username": "newcomer",
        "is_superuser": False,
        "is_staff": False,
        "is_active": True,
    }


def test_granting_site_admin_rights_is_logged(admin, outsider) -> None:
    from retrieval.actions import save_user

    outsider.is_superuser = True
    outsider.first_name = "Olga"
    save_user(outsider, admin)
    event = only_event()
    assert (event.action, event.target_id, event.detail) == (
        Action.USER_CHANGE,
        outsider.pk,
        {"is_superuser": True},
    )
    outsider.last_name = "Nobody"
    save_user(outsider, admin)  # no right changed
    assert Event.objects.count() == 1


def test_token_create_replace_and_revoke_are_logged_without_the_key(curator, admin) -> None:
    client = signed_in(curator)
    client.post("/accounts/token/", {"action": "create"})
    client.post("/accounts/token/", {"action": "create"})
    key = Token.objects.get(user=curator).key
    client.post("/accounts/token/", {"action": "revoke"})
    client.post("/accounts/token/", {"action": "revoke"})  # nothing left to revoke
    Token.objects.create(user=curator)
    response = signed_in(admin).post(
        f"/admin/authtoken/tokenproxy/{curator.pk}/delete/", {"post": "yes"}
    )
    assert response.status_code == 302
    assert not Token.objects.filter(user=curator).exists()
    rows = Event.objects.order_by("id").values_list("action", "user", "target_id", "detail")
    assert list(rows) == [
        (Action.TOKEN_CREATE, curator.pk, curator.pk, {"replaced": False}),
        (Action.TOKEN_CREATE, curator.pk, curator.pk, {"replaced": True}),
        (Action.TOKEN_REVOKE, curator.pk, curator.pk, {"username": "curator"}),
        (Action.TOKEN_REVOKE, admin.pk, curator.pk, {"username": "curator"}),
    ]
    assert not Event.objects.filter(detail__icontains=key).exists()


def test_the_admin_shows_only_a_prefix_of_api_keys(curator, admin) -> None:
    from django.contrib.admin.models import LogEntry

    key = Token.objects.create(user=curator).key
    client = signed_in(admin)
    pages = [
        client.get("/admin/authtoken/tokenproxy/"),
        client.get(f"/admin/authtoken/tokenproxy/{curator.pk}/change/"),
        client.get(f"/admin/authtoken/tokenproxy/{curator.pk}/delete/"),
    ]
    assert [page.status_code for page in pages] == [200, 200, 200]
    assert f"{key[:6]}…" in pages[0].content.decode()
    revoked = client.post(
        f"/admin/authtoken/tokenproxy/{curator.pk}/delete/", {"post": "yes"}, follow=True
    )
    assert not Token.objects.filter(user=curator).exists()
    for page in [*pages, revoked]:
        assert key[:7] not in page.content.decode()
    assert not LogEntry.objects.filter(object_repr__contains=key[:7]).exists()


def test_a_rolled_back_change_leaves_no_row(annotator, pair, monkeypatch) -> None:
    from labeling import answers

    def broken(*args: object) -> int:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(answers, "refresh_flags", broken)
    with pytest.raises(RuntimeError):
        answers.record_answer(pair, annotator, "same")
    assert not Event.objects.exists()


def test_the_activity_page_shows_the_newest_first_by_keyset(
    admin, curator, collection, monkeypatch
) -> None:
    monkeypatch.setattr(activity, "PAGE_SIZE", 2)
    for n in range(5):
        Event.record(Action.IMPORT, curator, collection, via="api", created=n)
    Event.record(Action.IMPORT, curator, None, via="elsewhere")
    client = signed_in(admin)
    seen: list[int] = []
    url = f"/collections/{collection.pk}/activity/"
    while url:
        response = client.get(url)
        assert response.status_code == 200
        seen += [event.detail["created"] for event in response.context["events"]]
        after = response.context["next_before"]
        url = f"/collections/{collection.pk}/activity/?before={after}" if after else ""
    assert seen == [4, 3, 2, 1, 0]
    assert b"curator" in client.get(f"/collections/{collection.pk}/activity/").content
    assert client.get(f"/collections/{collection.pk}/activity/?before=x").status_code == 400


@pytest.mark.parametrize(
    ("who", "status"), [("annotator", 403), ("curator", 403), ("outsider", 404)]
)
def test_only_the_collections_admins_see_its_activity(
    who: str, status: int, collection, request: pytest.FixtureRequest
) -> None:
    client = signed_in(request.getfixturevalue(who))
    assert client.get(f"/collections/{collection.pk}/activity/").status_code == status


def test_a_collection_admin_who_is_no_site_admin_sees_the_log(curator, collection) -> None:
    Membership.objects.filter(user=curator).update(role=Membership.Role.ADMIN)
    Event.record(Action.IMPORT, curator, collection, via="api")
    response = signed_in(curator).get(f"/collections/{collection.pk}/activity/")
    assert response.status_code == 200
    assert len(response.context["events"]) == 1


def test_the_admin_shows_the_log_read_only(admin, collection) -> None:
    event = Event.record(Action.IMPORT, admin, collection, via="api")
    client = signed_in(admin)
    assert client.get("/admin/audit/event/").status_code == 200
    assert client.get(f"/admin/audit/event/{event.pk}/change/").status_code == 200
    assert client.get("/admin/audit/event/add/").status_code == 403
    assert client.post(f"/admin/audit/event/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Event.objects.filter(pk=event.pk).exists()


def test_the_log_outlives_a_deleted_collection_and_user(admin, curator, collection) -> None:
    Event.record(Action.IMPORT, curator, collection, via="api")
    collection_id = collection.pk
    collection.delete()
    curator.delete()
    event = only_event()
    assert (event.collection_id, event.user, event.username) == (collection_id, None, "curator")


def test_the_collection_page_links_the_activity_for_admins_only(admin, curator, collection) -> None:
    link = f'href="/collections/{collection.pk}/activity/"'.encode()
    assert link in signed_in(admin).get(f"/collections/{collection.pk}/").content
    assert link not in signed_in(curator).get(f"/collections/{collection.pk}/").content


def test_a_constraint_import_writes_one_row_with_its_counts(curator, collection) -> None:
    a, b, c = images(collection, 3)
    text = f"a_id,b_id,answer,annotator\n{a},{b},same,ann\n{b},{c},different,ann\n{a},{b},same,x\n"
    response = signed_in(curator).post(
        f"/api/v1/collections/{collection.pk}/constraints/import/",
        {"file": SimpleUploadedFile("answers.csv", text.encode())},
    )
    assert response.status_code == 201, response.content
    event = only_event()
    assert (event.action, event.user, event.collection_id, event.target_type) == (
        Action.CONSTRAINTS_IMPORT,
        curator,
        collection.pk,
        "",
    )
    assert event.detail == {"via": "api", "format": "csv", "rows": 3, "stored": 3, "pairs": 2}
    # The same file again stores nothing new (the answers are updated in place), and says so.
    signed_in(curator).post(
        f"/api/v1/collections/{collection.pk}/constraints/import/",
        {"file": SimpleUploadedFile("answers.csv", text.encode())},
    )
    assert Event.objects.count() == 2


def test_a_command_constraint_import_is_logged_and_a_refused_file_is_not(
    collection, tmp_path: Path
) -> None:
    a, b = images(collection, 2)
    good = tmp_path / "answers.jsonl"
    good.write_text(f'{{"a_id": {a}, "b_id": {b}, "answer": "different"}}\n')
    call_command("constraints", "import", collection.name, str(good), verbosity=0)
    event = only_event()
    assert (event.action, event.user, event.username) == (Action.CONSTRAINTS_IMPORT, None, "")
    assert event.detail == {"via": "command", "format": "jsonl", "rows": 1, "stored": 1, "pairs": 1}
    bad = tmp_path / "bad.csv"
    bad.write_text(f"a_id,b_id,answer\n{a},{b},same\n{a},{b},maybe\n")
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="line 3"):
        call_command("constraints", "import", collection.name, str(bad), verbosity=0)
    assert Event.objects.count() == 1


def test_a_constraint_import_rolled_back_leaves_no_row(curator, collection, monkeypatch) -> None:
    from labeling import exchange

    a, b = images(collection, 2)

    def broken(*args: object) -> int:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(exchange, "refresh_flags", broken)
    with pytest.raises(RuntimeError):
        exchange.import_constraints(
            collection, f"a_id,b_id,answer\n{a},{b},same\n", "csv", by=curator
        )
    assert not Event.objects.exists()
    assert not Pair.objects.exists()


def test_the_first_superuser_of_runstack_is_logged_once(
    django_user_model, settings, tmp_path: Path
) -> None:
    from config.stack import ensure_admin

    settings.DATA_DIR = tmp_path
    settings.DJANGO_SUPERUSER_USERNAME = "root"
    settings.DJANGO_SUPERUSER_PASSWORD = None
    assert "Log in as root with password" in ensure_admin()
    root = django_user_model.objects.get(username="root")
    event = only_event()
    assert (event.action, event.user, event.username, event.collection_id, event.target_id) == (
        Action.USER_CREATE,
        None,
        "",
        None,
        root.pk,
    )
    assert event.target_type == "auth.user"
    assert event.detail == {
        "username": "root",
        "is_superuser": True,
        "is_staff": True,
        "is_active": True,
        "by": "runstack",
    }
    # The next start finds the account: nothing created, nothing logged.
    assert ensure_admin().startswith("Log in as root (first password in ")
    assert Event.objects.count() == 1


def test_runstack_creates_no_admin_without_its_row(
    django_user_model, settings, tmp_path, monkeypatch
):
    from config import stack

    settings.DATA_DIR = tmp_path
    settings.DJANGO_SUPERUSER_PASSWORD = "a-long-enough-password-1"

    def broken(*args: object, **kwargs: object) -> Event:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(stack.Event, "record", broken)
    with pytest.raises(RuntimeError):
        stack.ensure_admin()
    assert not django_user_model.objects.filter(is_superuser=True).exists()
