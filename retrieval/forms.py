from __future__ import annotations

from django import forms

from retrieval.models import Collection

# Names are unique site-wide, so a refusal cannot help telling that a name is taken; it says no
# more (not Django's "Collection with this Name already exists"), the same to everyone.
NAME_TAKEN = "This name is not available: choose another."


class CollectionForm(forms.ModelForm):
    class Meta:
        model = Collection
        fields = ["name", "description"]
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}
        error_messages = {"name": {"unique": NAME_TAKEN}}


class UploadForm(forms.Form):
    """The upload's options; the files themselves are read from request.FILES ("files", many),
    because Django's FileField holds one file."""

    labels = forms.BooleanField(
        required=False, label="Use folder names inside a zip as labels", initial=True
    )
