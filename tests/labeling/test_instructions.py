"""What "same" means: the question, the Markdown instructions and the pinned example pairs, as the
Label page shows them, as admins edit them (page and API), and as the demo ships them."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from labeling import instructions
from labeling.models import DEFAULT_QUESTION, EXAMPLES_MAX, ExamplePair, LabelingSettings
from retrieval.models import Collection, Membership
from tests.labeling.conftest import add_images

pytestmark = pytest.mark.django_db

HOSTILE = """\
# Shoes

<script>alert("owned")</script>
<img src=x onerror="alert(1)">
[click](javascript:alert(1)) [also](JaVaScRiPt:alert(1)) [data](data:text/html,<b>x</b>)
[fine](https://example.org/guide) ![pixel](https://tracker.example/p.png)
"""


@pytest.fixture
def owner(django_user_model, collection, password):
    """A collection admin by membership (the cast's `admin` is a site admin)."""
    user = django_user_model.objects.create_user("owner", "owner@example.org", password)
    Membership.objects.create(collection=collection, user=user, role=Membership.Role.ADMIN)
    return user


@pytest.fixture
def four(collection):
    return add_images(collection, 4)


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def page_url(collection: Collection) -> str:
    return f"/collections/{collection.pk}/label/instructions/"


def api_url(collection: Collection) -> str:
    return f"/api/v1/collections/{collection.pk}/labeling/instructions/"


def test_markdown_keeps_no_script_no_raw_html_and_no_javascript_links():
    html = str(instructions.render(HOSTILE))
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;" in html  # shown as text, not dropped silently
    # Only the two web links became links; the image is a link too, never fetched by the page.
    links = re.findall(r'<a href="([^"]*)"', html)
    assert links == ["https://example.org/guide", "https://tracker.example/p.png"]
    assert '<a href="https://example.org/guide" target="_blank" rel="noopener noreferrer">' in html
    # The page has its h1: an instructions heading comes out two levels down.
    assert "<h3>Shoes</h3>" in html


def test_annotator_sees_question_instructions_and_examples_on_the_label_page(
    collection, four, owner, annotator
):
    a, b, c, d = four
    instructions.update(
        collection,
        owner,
        question="Same shoe model?",
        instructions="Same **model**, any colour.\n\n<script>alert(1)</script>",
        examples=[
            instructions.Example(b.pk, a.pk, "same"),
            instructions.Example(c.pk, d.pk, "different"),
        ],
    )
    page = logged_in(annotator).get(f"/collections/{collection.pk}/label/").content.decode()
    assert '<h1 id="question">Same shoe model?</h1>' in page
    assert "Same <strong>model</strong>, any colour." in page
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert page.count('data-example="same"') == 1 and page.count('data-example="different"') == 1
    assert a.thumbnail.url in page and d.thumbnail.url in page
    assert "<kbd>I</kbd>" in page
    assert f'data-remember="autoret-instructions-{annotator.pk}-{collection.pk}"' in page
    # Pinning and editing are for admins.
    assert 'id="pin-example"' not in page


def test_without_instructions_the_page_asks_the_default_question_and_has_no_panel(
    collection, annotator
):
    page = logged_in(annotator).get(f"/collections/{collection.pk}/label/").content.decode()
    assert f'<h1 id="question">{DEFAULT_QUESTION}</h1>' in page
    assert 'id="instructions"' not in page


@pytest.mark.parametrize("who", ["annotator", "curator"])
def test_only_admins_edit_the_instructions(collection, four, who, request):
    client = logged_in(request.getfixturevalue(who))
    assert client.get(page_url(collection)).status_code == 403
    saved = client.post(page_url(collection), {"action": "save", "question": "Mine?"})
    pinned = client.post(
        page_url(collection), {"action": "pin", "a": four[0].pk, "b": four[1].pk, "answer": "same"}
    )
    assert (saved.status_code, pinned.status_code) == (403, 403)
    assert not LabelingSettings.objects.filter(question="Mine?").exists()
    assert not ExamplePair.objects.exists()


def test_an_admin_writes_the_question_and_instructions(collection, owner):
    client = logged_in(owner)
    assert client.get(page_url(collection)).status_code == 200
    response = client.post(
        page_url(collection),
        {"action": "save", "question": "Same clothing category?", "instructions": "*Category*"},
    )
    assert response.status_code == 302
    labeling = LabelingSettings.objects.get(collection=collection)
    assert (labeling.question, labeling.instructions) == ("Same clothing category?", "*Category*")
    assert labeling.instructions_changed_at is not None
    again = client.get(page_url(collection)).content.decode()
    assert "<em>Category</em>" in again  # the preview
    assert "Saved the question and the instructions." in again


def test_only_a_real_change_reopens_the_instructions(collection, four, owner, admin):
    a, b = four[0].pk, four[1].pk
    first = instructions.update(
        collection, owner, question="Same?", examples=[instructions.Example(a, b, "same")]
    )
    stamp = first.instructions_changed_at
    assert stamp is not None
    same = instructions.update(
        collection, admin, question="Same?", examples=[instructions.Example(b, a, "same")]
    )
    assert same.instructions_changed_at == stamp
    assert ExamplePair.objects.get().pinned_by == owner  # kept, not pinned anew
    flipped = instructions.update(
        collection, admin, examples=[instructions.Example(a, b, "different")]
    )
    assert flipped.instructions_changed_at is not None and flipped.instructions_changed_at > stamp
    assert ExamplePair.objects.get().answer == "different"


def test_too_long_or_empty_text_is_refused_and_nothing_changes(collection, owner):
    client = logged_in(owner)
    long = client.post(
        page_url(collection), {"action": "save", "question": "x" * 201, "instructions": ""}
    )
    assert long.status_code == 400
    assert "Ensure this value has at most 200 characters (it has 201)." in long.content.decode()
    empty = client.post(
        page_url(collection), {"action": "save", "question": "", "instructions": "x"}
    )
    assert empty.status_code == 400 and "This field is required." in empty.content.decode()
    assert not LabelingSettings.objects.filter(collection=collection).exclude(instructions="")


def test_an_admin_pins_the_shown_pair_from_the_label_page_and_unpins_it(collection, four, owner):
    client = logged_in(owner)
    label = f"/collections/{collection.pk}/label/"
    assert 'id="pin-example"' in client.get(label).content.decode()
    response = client.post(
        page_url(collection),
        {"action": "pin", "a": four[3].pk, "b": four[1].pk, "answer": "different", "next": label},
    )
    assert response.status_code == 302 and response["Location"] == label
    example = ExamplePair.objects.get()
    assert (example.a_id, example.b_id, example.answer) == (four[1].pk, four[3].pk, "different")
    assert example.pinned_by == owner
    client.post(page_url(collection), {"action": "unpin", "example": example.pk})
    assert not ExamplePair.objects.exists()


def test_pinning_never_redirects_off_site(collection, four, owner):
    response = logged_in(owner).post(
        page_url(collection),
        {
            "action": "pin",
            "a": four[0].pk,
            "b": four[1].pk,
            "answer": "same",
            "next": "https://evil.example/",
        },
    )
    assert response["Location"] == page_url(collection)


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ((0, 0), "An example needs two different images, not image"),
        ((0, "elsewhere"), "is not in Shoes and shirts: examples come from its images."),
        ((1, 0), "are already an example pair."),
    ],
)
def test_a_bad_example_pair_is_refused_with_its_reason(
    collection, four, owner, admin, pair, message
):
    elsewhere = add_images(Collection.objects.create(name="Other", created_by=admin), 1)[0]
    ids = [elsewhere.pk if p == "elsewhere" else four[p].pk for p in pair]
    client = logged_in(owner)
    client.post(
        page_url(collection), {"action": "pin", "a": four[0].pk, "b": four[1].pk, "answer": "same"}
    )
    response = client.post(
        page_url(collection), {"action": "pin", "a": ids[0], "b": ids[1], "answer": "different"}
    )
    assert response.status_code == 400
    assert message in response.content.decode()
    assert ExamplePair.objects.count() == 1


def test_no_more_than_the_most_examples(collection, owner):
    images = add_images(collection, 2 * EXAMPLES_MAX + 2)
    examples = [
        instructions.Example(images[2 * i].pk, images[2 * i + 1].pk, "same")
        for i in range(EXAMPLES_MAX)
    ]
    instructions.update(collection, owner, examples=examples)
    response = logged_in(owner).post(
        page_url(collection),
        {"action": "pin", "a": images[-2].pk, "b": images[-1].pk, "answer": "same"},
    )
    assert (
        f"Pin at most {EXAMPLES_MAX} example pairs: unpin one first." in response.content.decode()
    )
    assert ExamplePair.objects.count() == EXAMPLES_MAX


def test_the_api_returns_the_instructions_to_every_member(collection, four, owner, annotator):
    instructions.update(
        collection,
        owner,
        question="Same category?",
        instructions="Look at the **shape**.",
        examples=[instructions.Example(four[0].pk, four[1].pk, "same")],
    )
    body = api(annotator).get(api_url(collection)).json()
    assert body["question"] == "Same category?"
    assert body["instructions"] == "Look at the **shape**."
    assert body["instructions_html"] == "<p>Look at the <strong>shape</strong>.</p>\n"
    [example] = body["examples"]
    assert (example["a"]["id"], example["b"]["id"], example["answer"]) == (
        four[0].pk,
        four[1].pk,
        "same",
    )
    assert example["a"]["thumbnail_url"].startswith("http://testserver/")
    assert example["pinned_by"] == "owner"
    assert body["changed_at"] is not None


def test_admins_change_them_through_the_api_and_others_cannot(collection, four, owner, curator):
    change = {
        "question": "Same garment?",
        "examples": [{"a": four[2].pk, "b": four[3].pk, "answer": "different"}],
    }
    refused = api(curator).patch(api_url(collection), change, format="json")
    assert refused.status_code == 403
    response = api(owner).patch(api_url(collection), change, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["question"] == "Same garment?"
    assert [e["answer"] for e in response.json()["examples"]] == ["different"]
    # A field left out stays as it was; examples replace the pinned list.
    again = api(owner).patch(api_url(collection), {"instructions": "New"}, format="json").json()
    assert (again["question"], len(again["examples"])) == ("Same garment?", 1)


def test_the_api_refuses_bad_examples_with_the_reason(collection, four, owner):
    bad = {"examples": [{"a": four[0].pk, "b": four[0].pk, "answer": "same"}]}
    response = api(owner).patch(api_url(collection), bad, format="json")
    assert response.status_code == 400
    assert "two different images" in response.json()["examples"][0]
    unsure = {"examples": [{"a": four[0].pk, "b": four[1].pk, "answer": "unsure"}]}
    assert api(owner).patch(api_url(collection), unsure, format="json").status_code == 400
    assert not ExamplePair.objects.exists()


def test_the_schema_describes_the_instructions(collection, annotator):
    schema = api(annotator).get("/api/schema/", HTTP_ACCEPT="application/json").json()
    path = schema["paths"]["/api/v1/collections/{id}/labeling/instructions/"]
    assert set(path) >= {"get", "patch"}
    out = schema["components"]["schemas"]["LabelingInstructions"]["properties"]
    assert set(out) == {"question", "instructions", "instructions_html", "examples", "changed_at"}


def test_the_demo_ships_its_instructions_and_keeps_an_admins_edits(admin):
    def load() -> None:
        call_command("load_demo", "--size", "20", "--no-embed", verbosity=0, stdout=StringIO())

    load()
    demo = Collection.objects.get(name="Fashion-MNIST demo")
    labeling = LabelingSettings.objects.get(collection=demo)
    assert labeling.question == "Same clothing category?"
    assert "clothing category" in labeling.instructions
    pinned = {
        (e.a.label, e.b.label, e.answer) for e in ExamplePair.objects.select_related("a", "b")
    }
    assert ("Ankle boot", "Ankle boot", "same") in pinned
    assert {("Shirt", "T-shirt/top", "different"), ("T-shirt/top", "Shirt", "different")} & pinned
    instructions.update(demo, admin, question="Same thing?")
    load()
    assert LabelingSettings.objects.get(collection=demo).question == "Same thing?"
