"""Which event loop runs: asyncio or trio; a clear error for plug-ins that need asyncio."""

from __future__ import annotations

import asyncio


def on_asyncio() -> bool:
    """Return whether the running event loop is asyncio's (else it is trio's)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def require_asyncio(component: str, library: str) -> None:
    """Raise ``RuntimeError`` unless the running event loop is asyncio's.

    Called when such a plug-in starts: under trio, the client library would otherwise fail
    deep inside, with "no running event loop" or worse.
    """
    if not on_asyncio():
        raise RuntimeError(
            f"{component} needs asyncio ({library} runs on nothing else), but this scheduler "
            f"runs on another event loop (trio?): use anyio's asyncio backend, or the memory "
            f"or SQLite store, which run on both"
        )
