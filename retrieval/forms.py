from __future__ import annotations

from django import forms

from retrieval.models import Collection


class CollectionForm(forms.ModelForm):
    class Meta:
        model = Collection
        fields = ["name", "description"]
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}


class UploadForm(forms.Form):
    """The upload's options; the files themselves are read from request.FILES ("files", many),
    because Django's FileField holds one file."""

    labels = forms.BooleanField(
        required=False, label="Use folder names inside a zip as labels", initial=True
    )
