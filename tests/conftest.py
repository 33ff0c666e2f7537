"""Shared test fixtures: the namespace lab.

Tests that need root and network namespaces use the ``lab`` fixture (a ready 3-uplink
:class:`lab.Lab`; ``@pytest.mark.parametrize("lab", [2], indirect=True)`` picks another uplink
count) or ``make_lab`` (a factory: ``make_lab(n_uplinks)``, any number of labs per test). Both
mark the test ``netns`` automatically; a test that builds its topology some other way carries
``@pytest.mark.netns`` itself.

Without root, namespaces or the tools, such tests are skipped with the reason. With ``CI=true``
in the environment the skip becomes a failure, so CI cannot silently stop running them. Labs are
always torn down, whatever the test did.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from lab import Lab, LabError, lab_available

LAB_FIXTURES = {"lab", "make_lab"}


def _require_lab() -> None:
    ok, reason = lab_available(wireguard=True)
    if ok:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"netns test cannot run on CI (CI=true): {reason}", pytrace=False)
    pytest.skip(f"netns: {reason}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses_lab = LAB_FIXTURES & set(getattr(item, "fixturenames", ()))
        if uses_lab and item.get_closest_marker("netns") is None:
            item.add_marker(pytest.mark.netns)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") is not None:
        _require_lab()


@pytest.fixture
def make_lab() -> Iterator[Callable[[int], Lab]]:
    """Factory ``make_lab(n_uplinks=3) -> Lab``; every lab made is closed after the test."""
    _require_lab()
    labs: list[Lab] = []

    def factory(n_uplinks: int = 3) -> Lab:
        new = Lab(n_uplinks)
        labs.append(new)
        return new

    try:
        yield factory
    finally:
        errors: list[str] = []
        for each in reversed(labs):
            try:
                each.close()
            except LabError as exc:
                errors.append(str(exc))
        if errors:
            pytest.fail("lab teardown: " + "; ".join(errors), pytrace=False)


@pytest.fixture
def lab(request: pytest.FixtureRequest, make_lab: Callable[[int], Lab]) -> Lab:
    """A ready :class:`lab.Lab`, 3 uplinks unless parametrized indirectly with another count."""
    n_uplinks: int = getattr(request, "param", 3)
    return make_lab(n_uplinks)
