"""Constraints and groups out and back in: CSV and JSONL round trips, line-numbered errors,
nothing stored from a file with any bad line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from labeling import answers
from labeling.models import Answer, Constraint, Group, Pair, Source

pytestmark = pytest.mark.django_db


@pytest.fixture
def curator_client(curator) -> APIClient:
    client = APIClient()
    client.force_authenticate(curator)
    return client


@pytest.fixture
def answered(collection, images, annotator, curator):
    x = images
    for a, b, value, user in [
        (x[0], x[1], Answer.SAME, annotator),
        (x[1], x[2], Answer.SAME, annotator),
        (x[2], x[3], Answer.DIFFERENT, curator),
        (x[4], x[5], Answer.UNSURE, annotator),
    ]:
        answers.record_answer(answers.pair_for(collection, a.pk, b.pk), user, value)
    return x


def export(client, collection, fmt: str) -> str:
    response = client.get(f"/api/v1/collections/{collection.pk}/constraints/export/?fmt={fmt}")
    assert response.status_code == 200
    return b"".join(response.streaming_content).decode()


def upload(client, collection, name: str, text: str):
    return client.post(
        f"/api/v1/collections/{collection.pk}/constraints/import/",
        {"file": SimpleUploadedFile(name, text.encode())},
        format="multipart",
    )


def comparable(rows):
    return sorted((r["a_id"], r["b_id"], r["answer"], r["annotator"], r["time"]) for r in rows)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_import_round_trip(fmt, curator_client, collection, answered):
    exported = export(curator_client, collection, fmt)
    before = comparable(_parse(exported, fmt))
    assert len(before) == 4
    Pair.objects.all().delete()
    response = upload(curator_client, collection, f"c.{fmt}", exported)
    assert response.status_code == 201, response.content
    assert response.json() == {"stored": 4}
    assert set(Constraint.objects.values_list("source", flat=True)) == {Source.IMPORTED}
    assert comparable(_parse(export(curator_client, collection, fmt), fmt)) == before
    # Importing the same file again changes nothing.
    upload(curator_client, collection, f"c.{fmt}", exported)
    assert Constraint.objects.count() == 4


def _parse(text: str, fmt: str) -> list[dict]:
    import csv
    import io

    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line]
    return [
        {**row, "a_id": int(row["a_id"]), "b_id": int(row["b_id"])}
        for row in csv.DictReader(io.StringIO(text))
    ]


def test_export_names_images_annotator_time_and_source(curator_client, collection, answered):
    rows = _parse(export(curator_client, collection, "jsonl"), "jsonl")
    first = next(r for r in rows if r["a_id"] == answered[0].pk)
    assert first["a_name"] == "img000.png" and first["b_name"] == "img001.png"
    assert first["annotator"] == "annotator"
    assert first["source"] == Source.HUMAN
    assert first["time"]


def test_import_by_names_into_the_same_images(curator_client, collection, images):
    text = "a_name,b_name,answer\nimg000.png,img007.png,same\n"
    assert upload(curator_client, collection, "c.csv", text).status_code == 201
    pair = Pair.objects.get()
    assert (pair.a_id, pair.b_id, pair.resolved) == (images[0].pk, images[7].pk, Answer.SAME)


def test_import_with_a_bad_line_stores_nothing_and_names_the_lines(
    curator_client, collection, images
):
    text = (
        "a_id,b_id,answer\n"
        f"{images[0].pk},{images[1].pk},same\n"
        f"{images[0].pk},999999,same\n"
        f"{images[2].pk},{images[3].pk},perhaps\n"
    )
    response = upload(curator_client, collection, "c.csv", text)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors[0].startswith("line 3:") and "not in this collection" in errors[0]
    assert errors[1].startswith("line 4:") and "perhaps" in errors[1]
    assert not Pair.objects.exists()
    jsonl = '{"a_id": 1, "b_id": 2, "answer": "same"}\nnot json\n'
    response = upload(curator_client, collection, "c.jsonl", jsonl)
    assert [e.split(":")[0] for e in response.json()["errors"]] == ["line 1", "line 2"]


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("annotator", "x" * 151, "longer than 150 characters"),
        ("time", "2020-13-01T00:00:00", "not an ISO 8601 date and time"),
        ("time", "2020-01-01T00:00:00+99:00", "not an ISO 8601 date and time"),
        ("time", "0001-01-01T00:00:00+05:00", "not an ISO 8601 date and time"),
    ],
)
def test_an_impossible_annotator_or_time_is_a_400_naming_the_line(
    curator_client, collection, images, column, value, reason
):
    text = f"a_id,b_id,answer,{column}\n{images[0].pk},{images[1].pk},same,{value}\n"
    response = upload(curator_client, collection, "c.csv", text)
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error.startswith("line 2:") and reason in error
    assert not Pair.objects.exists()


def test_groups_export_carries_the_curators_name(curator_client, collection, answered, curator):
    answers.name_group(collection, answered[2], "sneakers", curator)
    assert Group.objects.get().name == "sneakers"
    response = curator_client.get(f"/api/v1/collections/{collection.pk}/groups/export/")
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert lines[0] == "group,name,image_id,original_name"
    assert lines[1:] == [f"1,sneakers,{answered[i].pk},img00{i}.png" for i in range(3)]


def test_csv_exports_escape_cells_a_spreadsheet_would_run_as_formulas(
    curator_client, collection, answered, curator
):
    import csv
    import io

    hostile = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    for image, name in zip(answered, hostile, strict=False):
        image.original_name = name
        image.save(update_fields=["original_name"])
    answers.name_group(collection, answered[0], "=cmd|' /c calc'!A0", curator)
    constraints = export(curator_client, collection, "csv")
    response = curator_client.get(f"/api/v1/collections/{collection.pk}/groups/export/")
    groups = b"".join(response.streaming_content).decode()
    cells = [c for text in (constraints, groups) for r in csv.reader(io.StringIO(text)) for c in r]
    assert '\'=HYPERLINK("http://x")' in cells and "'-2+3" in cells
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))]
    # The escaped name still names its image when the file is imported back.
    text = "a_name,b_name,answer\n'+1+1,'@SUM(A1),different\n"
    assert upload(curator_client, collection, "c.csv", text).status_code == 201
    assert Pair.objects.get(a=answered[1], b=answered[3]).resolved == Answer.DIFFERENT


def test_importing_a_collections_own_export_adds_nothing(curator_client, collection, answered):
    exported = export(curator_client, collection, "csv")
    response = upload(curator_client, collection, "c.csv", exported)
    assert response.json() == {"stored": 0}
    assert Constraint.objects.count() == 4
    assert Pair.objects.get(a=answered[0], b=answered[1]).agreement == 1.0


def test_the_management_command_exports_and_imports(collection, answered, tmp_path):
    from django.core.management import CommandError, call_command

    path = tmp_path / "constraints.jsonl"
    call_command("constraints", "export", collection.name, str(path))
    assert len(path.read_text().splitlines()) == 4
    Pair.objects.all().delete()
    call_command("constraints", "import", str(collection.pk), str(path))
    assert Constraint.objects.count() == 4
    bad = tmp_path / "bad.csv"
    bad.write_text("a_id,b_id,answer\n1,2,maybe\n")
    with pytest.raises(CommandError, match="line 2"):
        call_command("constraints", "import", collection.name, str(bad))


def test_groups_data_set_is_read_as_classes_by_imagefolder_and_the_folder_loader(
    curator_client, collection, answered, curator, tmp_path
):
    import csv
    import io
    import zipfile

    from torchvision.datasets import ImageFolder

    from retrieval.autoret.data import load_image_folder

    x = answered
    answers.record_answer(answers.pair_for(collection, x[6].pk, x[7].pk), curator, Answer.SAME)
    answers.name_group(collection, x[0], "Sneakers / boots", curator)
    # Two images of one name in one group, and a name that tries to leave its folder.
    x[6].original_name = x[7].original_name = "same.png"
    x[6].save(update_fields=["original_name"])
    x[7].save(update_fields=["original_name"])
    x[1].original_name = "../../etc/passwd.png"
    x[1].save(update_fields=["original_name"])
    response = curator_client.get(f"/api/v1/collections/{collection.pk}/groups/dataset/")
    assert response.status_code == 200
    assert 'filename="shoes-and-shirts-groups.zip"' in response["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    root = "shoes-and-shirts-groups"
    assert sorted(archive.namelist()) == [
        f"{root}/0001-sneakers-boots/{x[0].pk}-img000.png",
        f"{root}/0001-sneakers-boots/{x[1].pk}-passwd.png",
        f"{root}/0001-sneakers-boots/{x[2].pk}-img002.png",
        f"{root}/0002/{x[6].pk}-same.png",
        f"{root}/0002/{x[7].pk}-same.png",
        f"{root}/groups.csv",
        f"{root}/ungrouped.csv",
    ]
    assert archive.read(f"{root}/0002/{x[6].pk}-same.png") == x[6].file.open("rb").read()
    archive.extractall(tmp_path)

    dataset = ImageFolder(str(tmp_path / root))
    assert dataset.classes == ["0001-sneakers-boots", "0002"]
    by_id = {int(Path(path).name.split("-")[0]): label for path, label in dataset.samples}
    assert by_id == {x[0].pk: 0, x[1].pk: 0, x[2].pk: 0, x[6].pk: 1, x[7].pk: 1}

    ours = load_image_folder(tmp_path / root)
    assert ours.class_names == ["0001-sneakers-boots", "0002"]
    assert ours.labels is not None and ours.labels.tolist() == [0, 0, 0, 1, 1]

    groups = list(csv.DictReader(io.StringIO(archive.read(f"{root}/groups.csv").decode())))
    assert [(int(r["group"]), r["name"], int(r["image_id"])) for r in groups] == [
        (1, "Sneakers / boots", x[0].pk),
        (1, "Sneakers / boots", x[1].pk),
        (1, "Sneakers / boots", x[2].pk),
        (2, "", x[6].pk),
        (2, "", x[7].pk),
    ]
    assert groups[3]["file"] == f"0002/{x[6].pk}-same.png"
    alone = list(csv.DictReader(io.StringIO(archive.read(f"{root}/ungrouped.csv").decode())))
    grouped = {x[i].pk for i in (0, 1, 2, 6, 7)}
    assert [int(r["image_id"]) for r in alone] == sorted(i.pk for i in x if i.pk not in grouped)
    assert alone[0].keys() == {"image_id", "original_name", "label"}


def test_an_image_whose_file_is_gone_is_listed_not_packed(curator_client, collection, answered):
    import csv
    import io
    import zipfile

    answered[1].file.delete(save=False)
    response = curator_client.get(f"/api/v1/collections/{collection.pk}/groups/dataset/")
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    root = "shoes-and-shirts-groups"
    assert not [n for n in archive.namelist() if n.startswith(f"{root}/0001/{answered[1].pk}-")]
    groups = csv.DictReader(io.StringIO(archive.read(f"{root}/groups.csv").decode()))
    files = {int(r["image_id"]): r["file"] for r in groups}
    assert files[answered[1].pk] == ""
    assert files[answered[0].pk] == f"0001/{answered[0].pk}-img000.png"
