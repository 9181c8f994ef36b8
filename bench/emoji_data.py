"""The colour benchmark's data: one emoji drawn in three styles (docs/autoret-method.md section 5).

The 64-px PNGs of the npm packages emoji-datasource-google, -twitter and -facebook 16.0.0. The
first use runs `npm pack` for each into the cache folder (about 240 MB of tarballs, half a
minute); later uses read the cache. No test needs them.

Emoji kept: those all three styles draw, without the Component category (skin-tone swatches and
hair parts): 1,855 emoji in 98 subcategories. Images are composited on white, RGB, 64 x 64.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from retrieval.autoret.data import ImageSet

VERSION = "16.0.0"
STYLES = ("google", "twitter", "facebook")


@dataclass
class EmojiSet:
    """One style's images with two labellings: the emoji itself and its subcategory."""

    images: ImageSet  # labels = emoji index (the same index in every style)
    subcategory: torch.Tensor  # LongTensor N


def tarball(cache: Path, style: str) -> Path:
    """The package tarball in `cache`, fetched with `npm pack` when missing."""
    path = cache / f"emoji-datasource-{style}-{VERSION}.tgz"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"npm pack emoji-datasource-{style}@{VERSION} into {cache}", flush=True)
        subprocess.run(
            ["npm", "pack", "--silent", f"emoji-datasource-{style}@{VERSION}"],
            cwd=cache,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return path


def load_styles(cache: Path, styles: tuple[str, ...] = STYLES) -> dict[str, EmojiSet]:
    """Every style's images of the emoji that all three styles draw, in one shared order."""
    with tarfile.open(tarball(cache, STYLES[0])) as archive:
        listing = archive.extractfile("package/emoji.json")
        assert listing is not None
        catalogue = json.load(listing)
    kept = [
        e
        for e in catalogue
        if all(e.get(f"has_img_{s}") for s in STYLES) and e["category"] != "Component"
    ]
    kept.sort(key=lambda e: e["sort_order"])
    subcategories = sorted({e["subcategory"] for e in kept})
    sub = torch.tensor([subcategories.index(e["subcategory"]) for e in kept])
    out = {}
    for style in styles:
        wanted = {f"package/img/{style}/64/{e['image']}": i for i, e in enumerate(kept)}
        pixels = np.zeros((len(kept), 64, 64, 3), dtype=np.uint8)
        found = 0
        with tarfile.open(tarball(cache, style)) as archive:
            for member in archive:
                index = wanted.get(member.name)
                if index is None:
                    continue
                data = archive.extractfile(member)
                assert data is not None
                rgba = Image.open(io.BytesIO(data.read())).convert("RGBA").resize((64, 64))
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                pixels[index] = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
                found += 1
        if found != len(kept):
            raise RuntimeError(f"{style}: {found} of {len(kept)} images found in the package")
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
        names = [f"{style}/{e['image']}" for e in kept]
        out[style] = EmojiSet(ImageSet(images, torch.arange(len(kept)), names), sub.clone())
    return out


def benchmark_split(cache: Path) -> tuple[EmojiSet, EmojiSet]:
    """(queries, database): the twitter style against google and facebook together."""
    styles = load_styles(cache)
    google, facebook = styles["google"], styles["facebook"]
    database = EmojiSet(
        ImageSet(
            torch.cat([google.images.images, facebook.images.images]),
            torch.cat([google.images.labels, facebook.images.labels]),  # type: ignore[list-item]
            [*(google.images.names or []), *(facebook.images.names or [])],
        ),
        torch.cat([google.subcategory, facebook.subcategory]),
    )
    return styles["twitter"], database
