"""A clear error for plug-ins whose client library runs on asyncio only, under trio."""

from __future__ import annotations

import asyncio


def require_asyncio(component: str, library: str) -> None:
    """Raise ``RuntimeError`` unless the running event loop is asyncio's.

    Called when such a plug-in starts: under trio, the client library would otherwise fail
    deep inside, with "no running event loop" or worse.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"{component} needs asyncio ({library} runs on nothing else), but this scheduler "
            f"runs on another event loop (trio?): use anyio's asyncio backend, or the memory "
            f"or SQLite store, which run on both"
        ) from None
