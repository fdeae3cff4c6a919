"""`edgesync agent register`: which image an argument names (the rest runs
against a real lab in tests/e2e/test_agents_lab.py)."""

from __future__ import annotations

import uuid

import pytest

from edgesync.agent.register import image_id_of
from edgesync.errors import BadRequest

ID = str(uuid.uuid4())


@pytest.mark.parametrize("ref", [ID, ID.upper(), f"{ID}@snap", f"images/{ID}", f"images/{ID}@snap"])
def test_an_id_or_the_rbd_name_of_its_copy_names_the_image(ref: str) -> None:
    assert image_id_of(ref, "images") == ID


@pytest.mark.parametrize(("ref", "says"), [
    ("vm-disk-1", "does not name an image id"),
    (f"{ID}@nova-snap", "protected snapshot 'snap'"),
    (f"volumes/{ID}", "pool 'volumes'"),
    ("", "does not name an image id"),
])
def test_anything_else_is_refused_saying_why(ref: str, says: str) -> None:
    with pytest.raises(BadRequest, match=says):
        image_id_of(ref, "images")
