"""Collections still on the first default strategy mix move to the new one (merge-gain led);
a mix somebody chose is left alone. Reversible the same way."""

from django.db import migrations

OLD = {"uncertain": 0.4, "merge-gain": 0.2, "diverse": 0.15, "disagreement": 0.15, "random": 0.1}
NEW = {"merge-gain": 1.0, "uncertain": 0.0, "random": 0.0, "diverse": 0.0, "disagreement": 0.0}


def _swap(apps, old: dict, new: dict) -> None:
    settings = apps.get_model("labeling", "LabelingSettings")
    for row in settings.objects.all().only("pk", "strategy_mix"):
        if row.strategy_mix == old:
            settings.objects.filter(pk=row.pk).update(strategy_mix=new)


def forwards(apps, schema_editor) -> None:
    _swap(apps, OLD, NEW)


def backwards(apps, schema_editor) -> None:
    _swap(apps, NEW, OLD)


class Migration(migrations.Migration):
    dependencies = [("labeling", "0004_inference_epoch")]
    operations = [migrations.RunPython(forwards, backwards)]
