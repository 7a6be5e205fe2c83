"""Each package's ``__all__`` lists exactly the public names it exposes (as httpx checks).

Written generically: a package that grows keeps being checked; a package whose ``__init__``
defines no public names yet needs no ``__all__``.
"""

from __future__ import annotations
import __future__

import importlib
import types

import pytest

PACKAGES = ["protocol", "gateway", "collector", "provisioning"]


def public_names(module: types.ModuleType) -> set[str]:
    """Public attributes that are not submodules and not ``from __future__`` features."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not isinstance(value, __future__._Feature)
    }


@pytest.mark.parametrize("package", PACKAGES)
def test_all_lists_exactly_the_public_names(package: str) -> None:
    module = importlib.import_module(package)
    public = public_names(module)
    exported = getattr(module, "__all__", None)
    if exported is None:
        assert not public, (
            f"{package}/__init__.py exposes {sorted(public)} but has no __all__")
        return
    assert isinstance(exported, list | tuple), f"{package}.__all__ must be a list"
    assert len(exported) == len(set(exported)), (
        f"{package}.__all__ lists a name twice: "
        f"{sorted(n for n in exported if exported.count(n) > 1)}")
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names what it does not define: {missing}"
    unlisted = sorted(public - set(exported))
    assert not unlisted, f"{package} exposes names missing from __all__: {unlisted}"


def test_the_check_itself_sees_an_unlisted_name() -> None:
    fake = types.ModuleType("fake")
    fake.__all__ = ["listed"]  # type: ignore[attr-defined]
    fake.listed = 1  # type: ignore[attr-defined]
    fake.unlisted = 2  # type: ignore[attr-defined]
    fake._private = 3  # type: ignore[attr-defined]
    fake.submodule = types.ModuleType("fake.submodule")  # type: ignore[attr-defined]
    fake.annotations = __future__.annotations  # type: ignore[attr-defined]
    assert public_names(fake) == {"listed", "unlisted"}
