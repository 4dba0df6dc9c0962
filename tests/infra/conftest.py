"""Fixtures for tests/infra; the helpers live in infra_support.py."""

from __future__ import annotations

from typing import Any

import pytest
from infra_support import INFRA, OVERLAYS, render


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict[str, Any]]]:
    """(overlay name, rendered objects) for each overlay in infra/overlays."""
    return request.param, render(INFRA / "overlays" / request.param)
