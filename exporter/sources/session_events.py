"""What a verified `agent.session.*` webhook event does (the receiver is webhooks.py; the policy for
`response.*` events is webhook_policy.py).

Session events carry no turn, so they count nothing themselves: they say *when* to list a session's turns.
- A watched session is due at once (its next poll is now; a poll in flight is followed by another), so a
  change is read within a tick instead of an idle interval. `agent.session.idle` and `.failed` come after
  the session's last turn ended: that listing reads every turn's end. With live streams (streams.py) a
  session whose stream is up needs no listing (the stream says it all), one whose stream said its turns
  ended needs none for `.idle`, and one that wakes up gets its stream at once (the listing that follows the
  stream's opening reads what the event is about).
- A session the exporter does not watch is left to discovery, which decides whether it is new (born
  watched: every turn it lists counts) or history (its ended turns are not counted), exactly as for a
  session discovery finds on its own: a discovery pass is asked for at once. A session that pass does not
  list (created before the lookback, or idle so long that it left the watch list) is then watched from the
  event on as a session found at start-up is; with `--agent-id`, only sessions discovery lists are watched,
  since an event does not say which agent a session belongs to.
Unknown sessions waiting for a pass are bounded (MAX_WAITING) and not persisted: after a restart, the
regular discovery passes find new sessions anyway.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from exporter.inbox import Delivery
from exporter.model import SOURCE_SESSIONS
from exporter.watchlist import WatchList

log = logging.getLogger(__name__)

MAX_WAITING = 10_000  # unknown sessions waiting for a discovery pass; beyond it the oldest wait no more


class SessionEvents:
    def __init__(self, *, watchlist: WatchList, hurry: Callable[[str, str], None], discover_now: Callable[[], None],
                 filtered: bool, on_added: Callable[[str], None]) -> None:
        self.watchlist = watchlist
        self.hurry = hurry  # (session, event type): a watched session's event (the daemon polls it, or streams it)
        self.discover_now = discover_now  # ask the daemon for a discovery pass as soon as none is running
        self.filtered = filtered  # --agent-id: discovery lists only some agents' sessions
        self.on_added = on_added  # a session this policy added to the watch list (counted as discovered)
        # session id -> (wall time the event was applied, the event's created_at)
        self.waiting: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def event(self, delivery: Delivery, now: float) -> None:
        session = delivery.session
        if session is None:
            return
        if self.watchlist.wanted().get(session) == SOURCE_SESSIONS:
            self.hurry(session, delivery.event_type)
            return
        if session in self.watchlist.wanted() or not self.watchlist.owns(session):
            return  # another source's scope of that id, or another shard's session
        self.waiting[session] = (now, delivery.at)
        self.waiting.move_to_end(session)
        while len(self.waiting) > MAX_WAITING:
            self.waiting.popitem(last=False)
        self.discover_now()

    def after_discovery(self, started: float, finished: bool) -> bool:
        """A discovery pass of sessions that started at `started` (wall) was applied: the sessions it had to
        list are settled. Those it did not list are watched now (unfiltered, finished passes only).
        True when the watch list changed."""
        changed = False
        for session, (received, at) in list(self.waiting.items()):
            if received > started:
                continue  # the event came after the pass began: the pass may not have listed the session
            if session in self.watchlist.wanted():
                del self.waiting[session]
                continue
            if not finished:
                continue  # the next pass decides
            del self.waiting[session]
            if not self.filtered and self.watchlist.discover(session, SOURCE_SESSIONS, at):
                self.on_added(session)
                changed = True
        return changed
