"""The Fashion-MNIST demo says what "same" means there: same clothing category. Written when
retrieval's load_demo sends demo_loaded (connected in LabelingConfig.ready())."""

from __future__ import annotations

from typing import Any

from labeling import instructions, strategies
from labeling.instructions import Example
from retrieval.models import Collection, Image

QUESTION = "Same clothing category?"
INSTRUCTIONS = """\
Answer **same** when both images show the same *clothing category*, whatever the colour, the
pattern, the size or the angle. There are ten: T-shirt/top, trouser, pullover, dress, coat,
sandal, shirt, sneaker, bag and ankle boot.

- A **shirt** has a collar or buttons; a **T-shirt/top** has neither. They look alike: answer
  *different*.
- A **pullover** is closed at the front; a **coat** opens (buttons, zip) and is usually longer.
- **Sneakers**, **sandals** and **ankle boots** are three categories: a high sneaker is still a
  sneaker.
- When the picture is too coarse to tell, answer **unsure** (S) rather than guess.
"""
# (label, label, answer): one same pair and two look-alikes that are different.
EXAMPLES = [
    ("Ankle boot", "Ankle boot", "same"),
    ("Shirt", "T-shirt/top", "different"),
    ("Pullover", "Coat", "different"),
]


def _first(collection: Collection, label: str, n: int) -> list[int]:
    images = Image.objects.filter(collection=collection, label=label).order_by("pk")
    return list(images.values_list("pk", flat=True)[:n])


def explain_demo(collection_id: int, **_: Any) -> None:
    """Question, instructions and examples for a demo that has none yet: an admin's own edits
    survive every later load."""
    collection = Collection.objects.get(pk=collection_id)
    if strategies.settings_for(collection).instructions:
        return
    examples = []
    for left, right, answer in EXAMPLES:
        if left == right:
            ids = _first(collection, left, 2)
        else:
            ids = _first(collection, left, 1) + _first(collection, right, 1)
        if len(ids) == 2:  # a small demo may lack a category
            examples.append(Example(ids[0], ids[1], answer))
    instructions.update(
        collection, None, question=QUESTION, instructions=INSTRUCTIONS, examples=examples
    )
