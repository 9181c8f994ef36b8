"""What retrieval tells the apps above it (worker/ queues the embedding; see worker/hooks.py).

Sent where the change is made, inside its transaction if it has one: a receiver that queues work
does it on commit (worker/enqueue.py), so a rolled-back change queues nothing.
"""

from __future__ import annotations

from django.dispatch import Signal

# New images in a collection wait for their vectors. Keyword argument: collection_id.
images_added = Signal()
# A person or a finished training job made `version` the active one: images uploaded after the
# version was embedded need vectors in it. Keyword argument: version.
version_activated = Signal()
# load_demo filled (or found) the Fashion-MNIST demo collection: labeling writes what "same"
# means there. Keyword argument: collection_id.
demo_loaded = Signal()
