"""ipyparallel's Cluster as ipcmagic starts it: the wait for the engines shows a progress bar
that ends as the wait does."""

from __future__ import annotations

import asyncio
from typing import Any

import ipyparallel as ipp
from ipyparallel.util import progress

from ..base.internals import fits


class Cluster(ipp.Cluster):
    """An ``ipyparallel.Cluster`` whose start waits for its engines with ipcmagic's progress bar.

    ipyparallel's own bar (``Client.wait_for_engines``) is left as it was when the wait fails
    (``0/4`` forever in Jupyter); this one is closed on every outcome, so Jupyter shows it full,
    or marked failed (red).
    """

    client: Any = None  # the connected Client, also when waiting for the engines failed

    def _synchronize(self, async_f: Any, *args: Any, **kwargs: Any) -> Any:
        """Run every ``_sync`` method on the one thread whose event loop lives as long as the
        cluster, as ipyparallel does in a Jupyter kernel; in a terminal it would run each on a loop
        it closes at return, and the launchers' exit callbacks (:mod:`ipcmagic.cluster.losses`) would never
        run. Guarded: without ``_in_thread``, ipyparallel's own choice."""
        run = getattr(super(), "_in_thread", None)
        if not fits("Cluster._in_thread", callable(run), "ipyparallel's Cluster has none"):
            return super()._synchronize(async_f, *args, **kwargs)
        return run(async_f, *args, **kwargs)

    async def start_and_wait(self, n: int, timeout: float) -> Any:
        """Start the controller and ``n`` engines, connect, wait until all are registered.

        A coroutine so that ``start_and_wait_sync`` runs it on the loop that watches the
        launchers: a launcher that exits fails the wait at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout  # for the whole start, not only the wait for the engines
        try:
            await asyncio.wait_for(self.start_cluster(n), timeout)
        except TimeoutError:
            raise TimeoutError(f"the controller and launchers did not start within {timeout} s") from None
        client = self.client = await self.connect_client()
        left = max(0.0, deadline - loop.time())
        waiting = asyncio.wrap_future(
            client.wait_for_engines(n, timeout=left, block=False, interactive=False)
        )
        bar = progress(total=n, initial=len(client.ids), bar_format="{l_bar}{bar}| {n}/{total} engines")
        try:
            while not waiting.done():
                await asyncio.wait([waiting], timeout=0.1)
                if len(client.ids) > bar.n:
                    bar.update(len(client.ids) - bar.n)
            waiting.result()
        finally:
            bar.close()
        return client

    def close_loop(self) -> None:
        """End the thread that runs this Cluster's ``_sync`` methods, and close its event loop.

        ipyparallel starts that thread when the caller has a running event loop (a Jupyter kernel)
        and never ends it: a kernel would keep a thread and its file descriptors for every cluster
        it ever started. Guarded: without the attributes this relies on, nothing happens.
        """
        thread, loop = getattr(self, "_async_thread", None), getattr(self, "_thread_loop", None)
        if thread is None or not fits("Cluster._thread_loop", loop is not None, "the thread has no loop"):
            return
        loop.add_callback(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()
            self._async_thread = None
