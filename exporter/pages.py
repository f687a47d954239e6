"""The /metrics pages: rendered when a scrape asks, at most once per change, shared by concurrent scrapes.

The daemon only says that something changed (changed(), from any thread). Nothing is built or rendered until
a scrape arrives: it then gets a page that includes every change made before it arrived. The first scrape
after a change starts the render; scrapes that arrive meanwhile wait for the same one. The families are built
(from the daemon's snapshot), written out and compressed in a worker thread, so the loop keeps answering
probes, polls and pushes meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from isal import igzip
from prometheus_client.registry import Collector, CollectorRegistry

from exporter.exposition import Encoder, Renderer

logger = logging.getLogger(__name__)

# ISA-L's level 1: an 11,000-series page (1.2 MB) compresses in ~0.3 ms to 51 kB, where zlib takes ~2 ms
# at level 1 (53 kB) and ~6 ms at level 6 (40 kB); scrapes are on loopback or a cluster network, where the CPU
# costs more than the bytes. The render thread compresses while the loop answers: the less it holds the GIL
# and the cores, the less the loop waits.
GZIP_LEVEL = 1
MAX_FORMATS = 4  # pages kept per format (content type); the least recently asked one goes first


@dataclass(slots=True)
class Page:
    version: int  # the change count the page includes (at least)
    body: bytes
    gzipped: bytes | None = None
    compressing: asyncio.Task[bytes] | None = field(default=None, repr=False)


def gzip_page(body: bytes) -> bytes:
    """A gzip member of `body`, as any gzip reader (Prometheus', curl's, Python's) reads it."""
    return igzip.compress(body, compresslevel=GZIP_LEVEL)


def _write(renderer: Renderer, source: Collector, encoder: Encoder, gzipped: bool) -> tuple[bytes, bytes | None]:
    """Runs in a worker thread: collecting builds the families of the daemon's last snapshot (metrics.py)."""
    body = renderer.render(list(source.collect()), encoder)
    return body, gzip_page(body) if gzipped else None


class MetricsPages:
    """The latest /metrics page per format; lives on the server's event loop (changed() excepted)."""

    def __init__(self, registry: CollectorRegistry, prepare: Callable[[], None] | None = None) -> None:
        self._registry = registry
        self._prepare = prepare  # on the loop, before a build in a thread: SnapshotCollector.prepare
        self._renderer = Renderer()
        self._filtered = Renderer()  # filtered pages have other samples: they would flush the main one's text
        self._changes = itertools.count(1)
        self._version = 0
        self._pages: dict[str, Page] = {}
        self._rendering: dict[str, asyncio.Task[Page]] = {}
        self.renders = 0  # complete renders of whole pages, for tests and benchmarks

    def changed(self) -> None:
        """Something in the registry changed; safe to call from any thread (next() on a count is atomic)."""
        self._version = next(self._changes)

    async def page(self, content_type: str, encoder: Encoder, compress: bool) -> bytes:
        """The body (gzipped if `compress`) of a page with every change made before this call."""
        wanted = self._version
        while (page := self._pages.get(content_type)) is None or page.version < wanted:
            task = self._rendering.get(content_type)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._render(content_type, encoder, compress))
                self._rendering[content_type] = task
            await asyncio.shield(task)  # a scrape that gives up must not cancel the others' render
        self._pages[content_type] = self._pages.pop(content_type)  # most recently asked last
        if not compress:
            return page.body
        if page.gzipped is None:
            if page.compressing is None:
                page.compressing = asyncio.get_running_loop().create_task(
                    asyncio.to_thread(gzip_page, page.body)
                )
            page.gzipped = await asyncio.shield(page.compressing)
        return page.gzipped

    async def _render(self, content_type: str, encoder: Encoder, compress: bool) -> Page:
        try:
            version = self._version
            if self._prepare is not None:
                self._prepare()
            body, gzipped = await asyncio.to_thread(_write, self._renderer, self._registry, encoder, compress)
        except Exception:
            logger.warning("rendering /metrics failed", exc_info=True)
            raise
        finally:
            del self._rendering[content_type]
        page = self._pages[content_type] = Page(version, body, gzipped)
        self.renders += 1
        while len(self._pages) > MAX_FORMATS:
            del self._pages[next(iter(self._pages))]
        return page

    async def filtered(self, names: Iterable[str], encoder: Encoder, compress: bool) -> bytes:
        """Only the samples named (`name[]=`): rare, so rendered for each request and not kept."""
        if self._prepare is not None:
            self._prepare()
        source = self._registry.restricted_registry(names)
        body, gzipped = await asyncio.to_thread(_write, self._filtered, source, encoder, compress)
        return gzipped if gzipped is not None else body
