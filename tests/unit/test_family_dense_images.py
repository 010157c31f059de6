"""Dense image families (``depth-estimation``, ``image-to-image``, ``image-segmentation``): batching
by pixel shape, one image per pass where batching would change pixels, and artifacts as files.

Their answers against the oracles are in ``tests/unit/test_oracles.py`` (the cases in
``tests/models/depth_estimation.py``, ``image_to_image.py`` and ``image_segmentation.py``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from producer.artifact_files import extension, file_name, with_artifact_files
from sluice.families import family_for
from sluice.families.base import TaskFamily
from sluice.ledger import StoredArtifact
from sluice.registry import ModelSpec
from tests.models.depth_estimation import build_glpn
from tests.models.image_to_image import MAX_PIXELS, build_swin2sr
from tests.models.images import sized_image_inputs
from worker.batching import plan_batches
from worker.engine import Engine


def test_batches_hold_one_group_within_budget_longest_first() -> None:
    rng = random.Random(0)
    lengths = [rng.choice([16, 24, 96, 140]) for _ in range(300)]
    groups = [(3, length, rng.choice([32, 64])) for length in lengths]  # two shapes per cost
    plan = plan_batches(lengths, max_tokens=512, max_size=8, groups=groups)
    assert sorted(i for batch in plan for i in batch) == list(range(300))
    for batch in plan:
        assert len({groups[i] for i in batch}) == 1
        assert len(batch) <= 8 and len(batch) * max(lengths[i] for i in batch) <= 512
    longest = [max(lengths[i] for i in batch) for batch in plan]
    assert longest == sorted(longest, reverse=True)
    # One group (or none) plans exactly as before.
    assert plan_batches(lengths, 512, 8, [None] * 300) == plan_batches(lengths, 512, 8)


def _family(task: str, path: Path) -> TaskFamily:
    family = family_for(task)(ModelSpec(name=path.name, task=task, path=str(path)), "cpu")
    family.setup()
    return family


def _batch_shapes(family: TaskFamily, inputs: list[dict[str, Any]], **engine: int) -> list[list[tuple[int, ...]]]:
    """The pixel shapes of every forward pass the engine makes over ``inputs``."""
    shapes: list[list[tuple[int, ...]]] = []
    forward = family.forward

    def recording(batch: dict[str, Any]) -> Any:
        shapes.append([tuple(p.shape) for p in batch["pixel_values"]])
        return forward(batch)

    family.forward = recording  # type: ignore[method-assign]
    results = [r for done, _ in Engine(family, **engine).run(list(enumerate(inputs))) for r in done]
    assert sorted(r.item for r in results) == list(range(len(inputs)))
    assert all(r.error is None and r.artifacts for r in results)
    return shapes


def test_images_of_different_sizes_batch_by_shape(tmp_path: Path) -> None:
    """GLPN keeps each image's size (rounded down to 32): only equal shapes share a forward pass."""
    family = _family("depth-estimation", build_glpn(tmp_path / "glpn"))
    inputs = sized_image_inputs(min_side=32, max_pixels=MAX_PIXELS)  # the small ones: 7 shapes
    shapes = _batch_shapes(family, inputs + inputs, max_batch_tokens=100_000, max_batch_size=16)
    assert all(len(set(batch)) == 1 for batch in shapes)
    assert max(len(batch) for batch in shapes) > 1
    assert len(shapes) == len({batch[0] for batch in shapes})  # one pass per shape under a large budget


def test_image_patches_count_toward_the_token_budget(tmp_path: Path) -> None:
    """A budget of a few images' patches splits one shape's images over several passes."""
    family = _family("depth-estimation", build_glpn(tmp_path / "glpn"))
    inputs = [sized_image_inputs(min_side=32)[0]] * 8  # 32x32: 4 patches of 16x16 each
    assert [len(b) for b in _batch_shapes(family, inputs, max_batch_tokens=12, max_batch_size=16)] == [3, 3, 2]


def test_super_resolution_runs_one_image_per_pass(tmp_path: Path) -> None:
    """Batching Swin2SR changes the last bits and with them some rounded pixels: never batched."""
    family = _family("image-to-image", build_swin2sr(tmp_path / "swin2sr"))
    inputs = sized_image_inputs(max_pixels=MAX_PIXELS)[:3] * 2  # equal shapes, which could stack
    shapes = _batch_shapes(family, inputs, max_batch_tokens=1_000_000, max_batch_size=16)
    assert [len(batch) for batch in shapes] == [1] * len(inputs)


def test_artifact_file_names_and_extensions() -> None:
    assert [extension(t) for t in ("image/png", "application/x-npy", "audio/wav", "image/webp", "x/unknown")] == [
        "png", "npy", "wav", "webp", "bin",
    ]  # fmt: skip
    assert file_name(7, 0, 1, "image/png") == "7.png"
    assert file_name(7, 2, 3, "application/x-npy") == "7-2.npy"


def test_artifact_files_follow_the_rows(tmp_path: Path) -> None:
    """Two streams in item order, merged: artifacts of items not in the rows (or not in a row's
    summary: written after the row was read) are skipped, the rest written and named in the rows."""
    rows = [
        {"item": 1, "artifacts": [{"n": 0, "media_type": "image/png", "bytes": 1, "name": "a"},
                                  {"n": 1, "media_type": "image/png", "bytes": 1, "name": "b"}]},
        {"item": 2},
        {"item": 4, "artifacts": [{"n": 0, "media_type": "application/x-npy", "bytes": 1, "name": None}]},
    ]  # fmt: skip
    stored = [
        StoredArtifact(0, 0, None, "image/png", b"0"), StoredArtifact(1, 0, "a", "image/png", b"a"),
        StoredArtifact(1, 1, "b", "image/png", b"b"), StoredArtifact(3, 0, None, "image/png", b"3"),
        StoredArtifact(4, 0, None, "application/x-npy", b"4"), StoredArtifact(5, 0, None, "image/png", b"5"),
    ]  # fmt: skip
    out = list(with_artifact_files(rows, stored, tmp_path / "dir"))
    assert [[a["path"] for a in row.get("artifacts", [])] for row in out] == [["1-0.png", "1-1.png"], [], ["4.npy"]]
    assert {p.name: p.read_bytes() for p in (tmp_path / "dir").iterdir()} == {
        "1-0.png": b"a", "1-1.png": b"b", "4.npy": b"4",
    }  # fmt: skip


@pytest.mark.parametrize("task", ["depth-estimation", "image-to-image", "image-segmentation"])
def test_families_are_registered_with_image_validation(task: str) -> None:
    family = family_for(task)
    assert family.task == task and family.text_fields == ()
