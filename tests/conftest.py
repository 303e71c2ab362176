"""Fixtures: every test gets its own shared-memory instance (unlinked afterwards) and its own run
directory; processes started by a test are always stopped. Helpers live in tests/helpers.py."""
from __future__ import annotations

import uuid

import pytest

from shm.segment import list_instance_objects, unlink_instance
from tests.helpers import Env


@pytest.fixture
def instance():
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    unlink_instance(name)
    assert not list_instance_objects(name), "test left shared-memory objects behind"


@pytest.fixture
def env(instance, tmp_path):
    e = Env(instance, tmp_path)
    yield e
    e.stop_all()
