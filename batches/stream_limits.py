"""How many progress streams one user may hold open (``OMR_MAX_STREAMS_PER_USER``).

Each open stream holds a *slot*: a lease that the stream renews while it runs
and gives back when it ends. Leases expire (``LEASE_SECONDS``), so the slots
of a web process that died free themselves within a minute.

With Redis (the channel layer's server, ``REDIS_URL``) the slots of a user
live in one sorted set shared by every web process, so the cap holds across
processes and hosts; the set's own expiry cleans up after users who left.
Without Redis (the in-memory channel layer of the tests or a laptop), and
while Redis does not answer, each process counts its own streams: the cap
then holds per process.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from django.conf import settings
from django.http import HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

#: A slot not renewed for this long is free again (a web process that died).
LEASE_SECONDS = 60.0
#: A stream renews its slot when it sends something this long after the last renewal.
RENEW_SECONDS = 20.0

# KEYS[1] the user's set; ARGV: limit, member, lease seconds. Redis's own
# clock, so web hosts whose clocks differ agree on what has expired.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
return 1
"""
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return 1
"""


class LocalSlots:
    """Slots counted in this process only."""

    def __init__(self):
        self.leases: dict[object, dict[str, float]] = {}

    async def take(self, user_id, member: str, limit: int) -> bool:
        now = time.monotonic()
        held = {m: until for m, until in self.leases.get(user_id, {}).items() if until > now}
        if len(held) >= limit:
            self.leases[user_id] = held
            return False
        held[member] = now + LEASE_SECONDS
        self.leases[user_id] = held
        return True

    async def renew(self, user_id, member: str) -> None:
        held = self.leases.get(user_id, {})
        if member in held:
            held[member] = time.monotonic() + LEASE_SECONDS

    async def give_back(self, user_id, member: str) -> None:
        held = self.leases.get(user_id, {})
        held.pop(member, None)
        if not held:
            self.leases.pop(user_id, None)

    def count(self, user_id) -> int:
        now = time.monotonic()
        return sum(until > now for until in self.leases.get(user_id, {}).values())


class RedisSlots:
    """Slots in Redis, shared by every web process. One client per event loop
    (Daphne has one; the tests start several)."""

    def __init__(self, url: str, prefix: str):
        self.url = url
        self.prefix = prefix
        self.clients: dict[int, tuple[asyncio.AbstractEventLoop, object]] = {}

    def _client(self):
        import redis.asyncio

        loop = asyncio.get_running_loop()
        held = self.clients.get(id(loop))
        if held is None or held[0] is not loop:
            client = redis.asyncio.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
            held = self.clients[id(loop)] = (loop, client)
        return held[1]

    def key(self, user_id) -> str:
        return f"{self.prefix}:{user_id}"

    async def take(self, user_id, member: str, limit: int) -> bool:
        return bool(await self._client().eval(_TAKE, 1, self.key(user_id), limit, member, LEASE_SECONDS))

    async def renew(self, user_id, member: str) -> None:
        await self._client().eval(_RENEW, 1, self.key(user_id), member, LEASE_SECONDS)

    async def give_back(self, user_id, member: str) -> None:
        await self._client().zrem(self.key(user_id), member)


_local = LocalSlots()
_redis: RedisSlots | None = None


def shared_slots() -> RedisSlots | None:
    """The Redis slots when the channel layer is Redis, else None."""
    global _redis
    if settings.CHANNEL_LAYER_BACKEND != "redis":
        return None
    if _redis is None or _redis.url != settings.REDIS_URL:
        _redis = RedisSlots(settings.REDIS_URL, f"{settings.REDIS_NAMESPACE}-streams")
    return _redis


class Slot:
    """One open stream's place in its user's count."""

    def __init__(self, store, user_id, member: str):
        self.store = store
        self.user_id = user_id
        self.member = member
        self.renewed = time.monotonic()
        self.released = False

    async def keep(self) -> None:
        """Renew the lease when it is due (cheap to call on every frame)."""
        if time.monotonic() - self.renewed < RENEW_SECONDS or self.released:
            return
        self.renewed = time.monotonic()
        try:
            await self.store.renew(self.user_id, self.member)
        except Exception as exc:  # Redis away: the lease may lapse; the stream goes on
            logger.warning("Stream slot of user=%s not renewed: %s", self.user_id, exc)

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        try:
            await self.store.give_back(self.user_id, self.member)
        except Exception as exc:  # the lease expires by itself
            logger.warning("Stream slot of user=%s not given back: %s", self.user_id, exc)


async def take_slot(user_id) -> Slot | None:
    """A slot for a new stream of ``user_id``, or None when the user already
    holds ``OMR_MAX_STREAMS_PER_USER`` (0: no limit)."""
    limit = settings.OMR_MAX_STREAMS_PER_USER
    member = uuid.uuid4().hex
    store = shared_slots()
    if store is not None:
        try:
            if limit <= 0 or await store.take(user_id, member, limit):
                return Slot(store, user_id, member)
            return None
        except Exception as exc:
            logger.warning("Stream slots in Redis unavailable (%s); counting this process's streams only", exc)
    if limit <= 0 or await _local.take(user_id, member, limit):
        return Slot(_local, user_id, member)
    return None


def _limit_text() -> str:
    limit = settings.OMR_MAX_STREAMS_PER_USER
    return (f"too many open progress streams: at most {limit} per user (OMR_MAX_STREAMS_PER_USER); "
            f"close one, or wait for one to end")


def too_many_streams_json() -> JsonResponse:
    """The API's 429."""
    response = JsonResponse({"error": _limit_text(), "limit": settings.OMR_MAX_STREAMS_PER_USER,
                             "setting": "OMR_MAX_STREAMS_PER_USER"}, status=429)
    response["Retry-After"] = "10"
    return response


def too_many_streams_text() -> HttpResponse:
    """The page stream's 429 (a browser's EventSource shows no body; people
    reading the network panel do)."""
    response = HttpResponse(_limit_text()[:1].upper() + _limit_text()[1:] + ".\n", status=429,
                            content_type="text/plain; charset=utf-8")
    response["Retry-After"] = "10"
    return response
