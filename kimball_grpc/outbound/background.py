"""One background task per object: started once, cancelled and awaited at stop."""

from __future__ import annotations

import asyncio


class BackgroundLoop:
    """Runs ``_run`` as one task from ``start()`` until ``stop()``."""

    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})

    async def _run(self) -> None:
        raise NotImplementedError
