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
# Images are about to be deleted: one, a selection, or every image of a deleted collection
# (image_ids None). Sent inside the deleting transaction before it locks any row, so receivers
# take their own locks first, in the order the apps' other writers take them; a receiver refuses
# the deletion by raising retrieval.deletion.DeletionRefused. Keyword arguments: collection_id,
# image_ids.
images_deleting = Signal()
# The same transaction, after the rows and everything cascading from them went: receivers bring
# what they derive from the remaining rows up to date. Keyword arguments as images_deleting.
images_deleted = Signal()
# Asked by the confirmation page of a collection's deletion: each receiver returns a dict of
# what it holds for the collection, {"a label": count}. Keyword argument: collection_id.
collection_contents = Signal()
