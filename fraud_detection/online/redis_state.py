"""The state in Redis, shared by every worker and replica: the same rules as ``MemoryState``.

Each request's update is one Lua script, which Redis runs atomically: it checks the whole
request (retries, time order against the stored latest entries and the request's own earlier
transactions), then appends, prunes and returns what each transaction saw. Two workers can
therefore not interleave the updates of one card or terminal, and their answers are those of a
single worker taking the requests in the order Redis ran them. ``record_many`` sends several
requests' scripts in one round trip; the features kept for retries are queued and written by a
thread of the state (``remember``), in one script call for all that are waiting.

Keys (``prefix`` = ``fraud-online:`` by default)::

    <prefix>card:<card>              list  "seconds|key|amount", time ordered
    <prefix>terminal:<terminal>      list  "seconds|key", time ordered
    <prefix>labels:<terminal>        hash  key -> 0/1, the labels fed back (or loaded)
    <prefix>tx:<key>                 hash  s, c, t, a (the transaction), f (its features, JSON)
    <prefix>meta                     hash  the recipe the state was built for

``key`` is ``requests.order_key`` of the id. The scripts build key names themselves (pruning
reaches ids found in the lists), so this runs on one Redis server or primary, not a Redis Cluster.
Amounts travel as Python's ``repr`` of the float, which reads back to the same number.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from fraud_detection.errors import PipelineError
from fraud_detection.online.errors import OrderConflictError
from fraud_detection.online.features import OnlineRecipe
from fraud_detection.online.requests import Label, RawTransaction
from fraud_detection.online.state import (
    Features,
    HistoryRow,
    Observation,
    OnlineState,
    conflict,
    unknown,
)

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "fraud-online:"
_FIELDS_PER_TRANSACTION = 5
_LOAD_BATCH = 2_000
_LOADING_LOCK_SECONDS = 600
SEPARATOR = "\x1e"  # ASCII record separator: Lua's '\30'
_CLOSE_WAIT_SECONDS = 10.0
_WRITE_EVERY_SECONDS = 0.005  # the features queued for retries are written this often, at most
# The entries of one list joined by SEPARATOR, read in C: (seconds, amount) / (seconds, key).
_CARD_ENTRY = re.compile(r"(-?\d+)\|[^\x1e]*\|([^|\x1e]*)")
_TERMINAL_ENTRY = re.compile(r"(-?\d+)\|([^\x1e]*)")

# Shared by both scripts: bytewise "a < b" (Lua's own string comparison follows the locale).
_LUA_HELPERS = """
local function before(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local function last_of(list_key, kind)
  local entry = redis.call('LINDEX', list_key, -1)
  if not entry then return nil end
  local seconds, key
  if kind == 'card' then
    seconds, key = string.match(entry, '^(%-?%d+)|(.*)|[^|]*$')
  else
    seconds, key = string.match(entry, '^(%-?%d+)|(.*)$')
  end
  return {tonumber(seconds), key}
end
"""

# ARGV: prefix, card lookback, terminal lookback, n, then per transaction: key, seconds, card,
# terminal, amount. Returns {"conflict", position, problem} (nothing written) or, per
# transaction, {"dup", features or ""} / {"new", card entries, terminal entries, labels}, each
# list joined into one string by SEPARATOR (ids hold printable characters only).
_RECORD = (
    _LUA_HELPERS
    + """
local p, SEP = ARGV[1], '\\30'
local card_lookback, terminal_lookback = tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local latest, duplicate = {}, {}
for i = 0, n - 1 do
  local b = 5 + i * 5
  local key, seconds = ARGV[b], tonumber(ARGV[b + 1])
  local stored = redis.call('HMGET', p .. 'tx:' .. key, 's', 'c', 't', 'a', 'f')
  if stored[1] then
    if stored[1] ~= ARGV[b + 1] or stored[2] ~= ARGV[b + 2] or stored[3] ~= ARGV[b + 3]
        or stored[4] ~= ARGV[b + 4] then
      return {'conflict', i, 'changed'}
    end
    duplicate[i] = stored[5] or ''
  else
    for _, kind in ipairs({'card', 'terminal'}) do
      local list_key = p .. kind .. ':' .. ARGV[b + (kind == 'card' and 2 or 3)]
      local last = latest[list_key] or last_of(list_key, kind)
      if last and (last[1] > seconds or (last[1] == seconds and not before(last[2], key))) then
        return {'conflict', i, kind}
      end
      latest[list_key] = {seconds, key}
    end
  end
end
local results = {}
for i = 0, n - 1 do
  local b = 5 + i * 5
  local key, seconds, card, terminal, amount = ARGV[b], tonumber(ARGV[b + 1]), ARGV[b + 2],
    ARGV[b + 3], ARGV[b + 4]
  if duplicate[i] then
    results[#results + 1] = {'dup', duplicate[i]}
  else
    local card_key, terminal_key = p .. 'card:' .. card, p .. 'terminal:' .. terminal
    local labels_key = p .. 'labels:' .. terminal
    while true do
      local first = redis.call('LINDEX', card_key, 0)
      if not first then break end
      if tonumber(string.match(first, '^(%-?%d+)')) > seconds - card_lookback then break end
      redis.call('LPOP', card_key)
    end
    while true do
      local first = redis.call('LINDEX', terminal_key, 0)
      if not first then break end
      local old_seconds, old_key = string.match(first, '^(%-?%d+)|(.*)$')
      if tonumber(old_seconds) > seconds - terminal_lookback then break end
      redis.call('LPOP', terminal_key)
      redis.call('HDEL', labels_key, old_key)
      redis.call('DEL', p .. 'tx:' .. old_key)
    end
    -- One string per list: redis-py parses replies in Python, element by element.
    results[#results + 1] = {'new', table.concat(redis.call('LRANGE', card_key, 0, -1), SEP),
      table.concat(redis.call('LRANGE', terminal_key, 0, -1), SEP),
      table.concat(redis.call('HGETALL', labels_key), SEP)}
    redis.call('RPUSH', card_key, ARGV[b + 1] .. '|' .. key .. '|' .. amount)
    redis.call('RPUSH', terminal_key, ARGV[b + 1] .. '|' .. key)
    redis.call('HSET', p .. 'tx:' .. key, 's', ARGV[b + 1], 'c', card, 't', terminal, 'a', amount)
  end
end
redis.call('HSET', p .. 'meta', 'recorded', '1')
return results
"""
)

# ARGV: prefix, n, then per label: key, 0/1. Returns {"unknown", position} or {"ok"}.
_FEEDBACK = """
local p, n = ARGV[1], tonumber(ARGV[2])
local terminals = {}
for i = 0, n - 1 do
  local terminal = redis.call('HGET', p .. 'tx:' .. ARGV[3 + 2 * i], 't')
  if not terminal then return {'unknown', i} end
  terminals[i] = terminal
end
for i = 0, n - 1 do
  local key, label = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  redis.call('HSET', p .. 'labels:' .. terminals[i], key, label)
end
return {'ok'}
"""

# ARGV: prefix, then key, features JSON pairs. Only for transactions still held.
_REMEMBER = """
for i = 2, #ARGV, 2 do
  local tx = ARGV[1] .. 'tx:' .. ARGV[i]
  if redis.call('EXISTS', tx) == 1 then redis.call('HSET', tx, 'f', ARGV[i + 1]) end
end
return #ARGV
"""


class RedisState(OnlineState):
    """The state in the Redis server at ``url`` (``redis://host:port/db``).

    Raises:
        PipelineError: Redis cannot be reached, or holds the state of another recipe.
    """

    remote = True

    def __init__(self, url: str, recipe: OnlineRecipe, prefix: str = DEFAULT_PREFIX) -> None:
        import redis

        super().__init__(recipe)
        self.url = url
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, decode_responses=True)
        try:
            stored = self._redis.hget(prefix + "meta", "recipe")
        except redis.RedisError as error:
            raise PipelineError(f"cannot reach the online state at {url}: {error}") from error
        if stored is not None and stored != recipe.describe():
            raise PipelineError(
                f"the online state at {url} was built for {stored}; the model needs "
                f"{recipe.describe()}: empty it (or use another database) to start afresh"
            )
        self._redis.hset(prefix + "meta", "recipe", recipe.describe())
        self._record = self._redis.register_script(_RECORD)
        self._feedback = self._redis.register_script(_FEEDBACK)
        self._remember = self._redis.register_script(_REMEMBER)
        self._pending: dict[str, str] = {}  # order key -> features JSON, not yet written
        self._queue = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closing = False

    def record(self, transactions: Sequence[RawTransaction]) -> list[Observation]:
        answer = self.record_many([transactions])[0]
        if isinstance(answer, OrderConflictError):
            raise answer
        return answer

    def record_many(
        self, requests: Sequence[Sequence[RawTransaction]]
    ) -> list[list[Observation] | OrderConflictError]:
        """Record several requests in one round trip: one script each, run in this order (each
        atomic, as ``record``); per request, what it saw or why it was refused."""
        pipeline = self._redis.pipeline(transaction=False)
        for transactions in requests:
            self._record(args=self._record_arguments(transactions), client=pipeline)
        answers = pipeline.execute()
        with self._queue:  # retries of transactions whose features are still queued here
            pending = [[self._pending.get(t.key) for t in r] for r in requests]
        results: list[list[Observation] | OrderConflictError] = []
        for transactions, answer, queued in zip(requests, answers, pending, strict=True):
            if answer and answer[0] == "conflict":
                results.append(conflict(int(answer[1]), answer[2]))
            else:
                results.append(
                    [_observation(*a) for a in zip(transactions, answer, queued, strict=True)]
                )
        return results

    def _record_arguments(self, transactions: Sequence[RawTransaction]) -> list[Any]:
        arguments: list[Any] = [
            self.prefix,
            self.recipe.card_lookback,
            self.recipe.terminal_lookback,
            len(transactions),
        ]
        for transaction in transactions:
            arguments += [
                transaction.key,
                str(transaction.seconds),
                transaction.card,
                transaction.terminal,
                repr(transaction.amount),
            ]
        return arguments

    def remember(self, features: Mapping[str, Features]) -> None:
        """Queue the features: a thread of this state writes the queue, whole, in one script call
        (a call per request cost a round trip each on the request's path, and Redis time).
        Until written they are read from the queue here; another worker's retry waits for them
        (``OnlineService``), as it waits for a worker still scoring."""
        with self._queue:
            for key, values in features.items():
                self._pending[key] = json.dumps(values)
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_pending, name="online-remember", daemon=True
                )
                self._writer.start()
            self._queue.notify()

    def _write_pending(self) -> None:
        import redis

        while True:
            with self._queue:
                while not self._pending and not self._closing:
                    self._queue.wait()
                if not self._pending:
                    return
            if not self._closing:
                time.sleep(_WRITE_EVERY_SECONDS)  # let the queue fill: fewer wake-ups, calls
            with self._queue:
                batch = dict(self._pending)  # kept in the queue until written: still readable
            try:
                self._remember(args=[self.prefix, *(x for item in batch.items() for x in item)])
            except redis.RedisError as error:
                logger.warning(
                    "could not keep the features of %d transactions (their retries will be "
                    "refused): %s",
                    len(batch),
                    error,
                )
            with self._queue:
                for key, stored in batch.items():
                    if self._pending.get(key) is stored:
                        del self._pending[key]

    def recorded_features(self, key: str) -> Features | None:
        with self._queue:
            stored = self._pending.get(key)
        if stored is None:
            stored = self._redis.hget(self.prefix + "tx:" + key, "f")
        return tuple(json.loads(stored)) if stored else None

    def feedback(self, labels: Sequence[Label]) -> None:
        arguments: list[Any] = [self.prefix, len(labels)]
        for label in labels:
            arguments += [label.key, str(label.label)]
        answer = self._feedback(args=arguments)
        if answer[0] == "unknown":
            raise unknown(int(answer[1]))

    def load(self, rows: Iterable[HistoryRow]) -> int:
        # One RPUSH per card and terminal (a command per row cost seconds in redis-py).
        cards: dict[str, list[str]] = {}
        terminals: dict[str, list[str]] = {}
        labels: dict[str, dict[str, str]] = {}
        pipeline = self._redis.pipeline(transaction=False)
        count = 0
        for row in rows:
            transaction, key = row.transaction, row.transaction.key
            seconds, amount = str(transaction.seconds), repr(transaction.amount)
            cards.setdefault(transaction.card, []).append(f"{seconds}|{key}|{amount}")
            terminals.setdefault(transaction.terminal, []).append(f"{seconds}|{key}")
            if row.label is not None:
                labels.setdefault(transaction.terminal, {})[key] = str(row.label)
            record = {"s": seconds, "c": transaction.card, "t": transaction.terminal, "a": amount}
            pipeline.hset(
                f"{self.prefix}tx:{key}", mapping=record | {"f": json.dumps(row.features)}
            )
            count += 1
            if count % _LOAD_BATCH == 0:
                pipeline.execute()
        for card, entries in cards.items():
            pipeline.rpush(f"{self.prefix}card:{card}", *entries)
        for terminal, entries in terminals.items():
            pipeline.rpush(f"{self.prefix}terminal:{terminal}", *entries)
        for terminal, known in labels.items():
            pipeline.hset(f"{self.prefix}labels:{terminal}", mapping=known)
        pipeline.hset(self.prefix + "meta", "recorded", "1")
        pipeline.execute()
        return count

    def is_empty(self) -> bool:
        return not self._redis.hexists(self.prefix + "meta", "recorded")

    def warm_start_once(self, rows: Callable[[], Iterable[HistoryRow]]) -> int | None:
        """Load ``rows()`` if the state is empty, one worker or replica doing it while the others
        wait; the number loaded, or None when the state was already there (not read then)."""
        lock = self.prefix + "loading"
        token = uuid.uuid4().hex
        deadline = time.monotonic() + _LOADING_LOCK_SECONDS
        while self.is_empty():
            if self._redis.set(lock, token, nx=True, ex=_LOADING_LOCK_SECONDS):
                try:
                    return self.load(rows()) if self.is_empty() else None
                finally:
                    if self._redis.get(lock) == token:
                        self._redis.delete(lock)
            if time.monotonic() > deadline:
                raise PipelineError(f"the online state at {self.url} is still being loaded")
            time.sleep(0.2)
        return None

    def close(self) -> None:
        """Write the queued features, then release the connections."""
        with self._queue:
            self._closing = True
            self._queue.notify()
        if self._writer is not None:
            self._writer.join(_CLOSE_WAIT_SECONDS)
        self._redis.close()


def _observation(
    transaction: RawTransaction, answer: Sequence[Any], pending: str | None = None
) -> Observation:
    """One transaction's part of the record script's answer; ``pending``: its features still
    queued in this worker, if any."""
    if answer[0] == "dup":
        stored = answer[1] or pending
        return Observation(
            transaction, duplicate=True, features=tuple(json.loads(stored)) if stored else None
        )
    card_text, terminal_text, labels_text = answer[1:4]
    flat_labels = labels_text.split(SEPARATOR) if labels_text else []
    labels = dict(zip(flat_labels[::2], flat_labels[1::2], strict=True))
    card = [(int(seconds), float(amount)) for seconds, amount in _CARD_ENTRY.findall(card_text)]
    terminal = [
        (int(seconds), int(labels.get(key, "0")))
        for seconds, key in _TERMINAL_ENTRY.findall(terminal_text)
    ]
    return Observation(transaction, duplicate=False, card=card, terminal=terminal)
