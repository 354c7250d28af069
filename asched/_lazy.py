"""Plug-in classes whose optional dependencies are imported on first use of the class."""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from importlib import import_module
from typing import Any


def import_lazily(
    package: str, name: str, submodules: Mapping[str, tuple[str, str | None]]
) -> Any:
    """Return ``name`` from its submodule of ``package``.

    :param submodules: public name -> (submodule, pip extra its dependencies come from)
    :raises AttributeError: if ``name`` is none of ``submodules``
    :raises ImportError: if the extra is not installed, saying how to install it
    """
    try:
        submodule, extra = submodules[name]
    except KeyError:
        raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
    try:
        module = import_module(f"{package}.{submodule}")
    except ImportError as exc:
        if extra is None or not exc.name or exc.name.startswith("asched"):
            raise
        missing = exc.name.partition(".")[0]
        raise ImportError(
            f'{name} needs {missing!r}, which is not installed: pip install "asched[{extra}]"',
            name=missing,
        ) from exc
    return getattr(module, name)


def lazy_attributes(
    package: str,
    namespace: MutableMapping[str, Any],
    public: list[str],
    submodules: Mapping[str, tuple[str, str | None]],
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return a package's module ``__getattr__`` and ``__dir__`` for ``submodules``.

    A name found is kept in the package's ``namespace``, so it is looked up once.
    """

    def __getattr__(name: str) -> Any:
        value = namespace[name] = import_lazily(package, name, submodules)
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *public})

    return __getattr__, __dir__
