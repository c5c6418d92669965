"""The Redis registry store: records web and worker processes share.

Each job is a hash and each owner a sorted set of job ids scored by creation
time; every write refreshes an expiry on both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import redis

from flask_jobtastic.redis_urls import client_from_url
from flask_jobtastic.registry_store import BATCH, JobRecord, newest_first, opt_float

#: Default lifetime of a Redis record, refreshed on every write.
DEFAULT_RECORD_TTL = 7 * 86400

# Fields left out of the Redis hash stand for None, so "" stays distinct from None.
_OPTIONAL_STR = ("owner", "description")
_OPTIONAL_FLOAT = ("seen_at", "finished_at")


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    """Make a key prefix literal inside a SCAN MATCH pattern."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


class RedisRegistryStore:
    """Records in Redis so web and worker processes share them.

    Each job is a hash and each owner a sorted set of job ids scored by
    creation time. Every write refreshes an expiry on both, so the data stays
    bounded even if :meth:`Registry.cleanup` never runs.

    ``client_or_url``: a redis-py client (any: a Sentinel's ``master_for``, a
    TLS one), or a ``redis://``, ``rediss://``, ``unix://`` or ``sentinel://``
    URL; a Sentinel URL needs ``master_name``.
    """

    def __init__(
        self,
        client_or_url: redis.Redis | str,
        *,
        prefix: str = "jobtastic:registry:",
        record_ttl: int = DEFAULT_RECORD_TTL,
        master_name: str | None = None,
    ) -> None:
        if record_ttl <= 0:
            raise ValueError("record_ttl must be a positive number of seconds")
        if isinstance(client_or_url, str):
            client_or_url = client_from_url(client_or_url, master_name=master_name)
        self.client: redis.Redis = client_or_url
        self.prefix = prefix
        self.record_ttl = int(record_ttl)

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def owner_key(self, owner: str) -> str:
        return f"{self.prefix}owner:{owner}"

    def save(self, record: JobRecord) -> None:
        key = self.job_key(record.id)
        pipe = self.client.pipeline(transaction=True)
        # Replace, not merge: a field that became None must disappear.
        pipe.delete(key)
        pipe.hset(key, mapping=self._encode(record))  # type: ignore[arg-type]  # str: str is fine
        pipe.expire(key, self.record_ttl)
        if record.owner is not None:
            owner_key = self.owner_key(record.owner)
            pipe.zadd(owner_key, {record.id: record.created_at})
            pipe.expire(owner_key, self.record_ttl)
        pipe.execute()

    def owner_channel(self, owner: str) -> str:
        """Where changes to an owner's list are announced (see ``Registry._announce``)."""
        return f"{self.prefix}changes:{owner}"

    def announce(self, owner: str, job_id: str) -> None:
        self.client.publish(self.owner_channel(owner), job_id)

    def get(self, job_id: str) -> JobRecord | None:
        return self._decode(self.client.hgetall(self.job_key(job_id)))

    def get_many(self, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self.job_key(job_id))
        found: dict[str, JobRecord] = {}
        for job_id, raw in zip(ids, pipe.execute(), strict=True):
            record = self._decode(raw)
            if record is not None:
                found[job_id] = record
        return found

    def list_for_owner(
        self, owner: str, *, states: Iterable[str] | None = None, limit: int = 100
    ) -> list[JobRecord]:
        if limit <= 0:
            return []
        wanted = None if states is None else frozenset(states)
        owner_key = self.owner_key(owner)
        result: list[JobRecord] = []
        start = 0
        page = max(limit, BATCH) if wanted is not None else limit
        while len(result) < limit:
            members = self.client.zrevrange(owner_key, start, start + page - 1)
            ids = [_text(m) for m in members]  # type: ignore[arg-type]  # no scores asked
            if not ids:
                break
            records = self.get_many(ids)
            # Expired hashes, and ids re-saved under another owner, leave
            # stale index entries: trim them so the index tracks the hashes.
            stale = [i for i in ids if i not in records or records[i].owner != owner]
            if stale:
                self.client.zrem(owner_key, *stale)
            for job_id in ids:
                record = records.get(job_id)
                if record is None or record.owner != owner:
                    continue
                if wanted is None or record.state in wanted:
                    result.append(record)
            if len(ids) < page:
                break
            start += page - len(stale)
        return newest_first(result)[:limit]

    def delete(self, job_id: str) -> bool:
        key = self.job_key(job_id)
        owner = self.client.hget(key, "owner")
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        if owner is not None:
            pipe.zrem(self.owner_key(_text(owner)), job_id)
        return bool(pipe.execute()[0])

    def all_ids(self) -> Iterator[str]:
        job_prefix = self.job_key("")
        pattern = _glob_escape(job_prefix) + "*"
        for key in self.client.scan_iter(match=pattern, count=500):
            yield _text(key)[len(job_prefix) :]

    def clear(self) -> int:
        """Delete every job and owner index under the prefix; count the jobs."""
        job_prefix = self.job_key("")
        jobs = 0
        batch: list[str] = []
        pattern = _glob_escape(self.prefix) + "*"
        for raw in self.client.scan_iter(match=pattern, count=500):
            key = _text(raw)
            batch.append(key)
            if key.startswith(job_prefix):
                jobs += 1
            if len(batch) >= 500:
                self.client.delete(*batch)
                batch.clear()
        if batch:
            self.client.delete(*batch)
        return jobs

    @staticmethod
    def _encode(record: JobRecord) -> dict[str, str]:
        fields: dict[str, str] = {
            "id": record.id,
            "task_name": record.task_name,
            "state": record.state,
            "created_at": repr(record.created_at),
            "updated_at": repr(record.updated_at),
            "progress": repr(float(record.progress)),
            "seen": "1" if record.seen else "0",
        }
        for name in _OPTIONAL_STR + _OPTIONAL_FLOAT:
            value = getattr(record, name)
            if value is not None:
                fields[name] = value if isinstance(value, str) else repr(float(value))
        return fields

    @staticmethod
    def _decode(raw: Mapping[Any, Any]) -> JobRecord | None:
        if not raw:
            return None
        try:
            data = {_text(k): _text(v) for k, v in raw.items()}
            record = JobRecord(
                id=data["id"],
                task_name=data["task_name"],
                owner=data.get("owner"),
                description=data.get("description"),
                state=data["state"],
                created_at=float(data["created_at"]),
                updated_at=float(data["updated_at"]),
                progress=float(data.get("progress", "0")),
                seen=data.get("seen") == "1",
                seen_at=opt_float(data.get("seen_at")),
                finished_at=opt_float(data.get("finished_at")),
            )
        except (KeyError, ValueError):
            # A half-written or foreign hash is treated as absent, not a crash.
            return None
        numbers = (record.created_at, record.updated_at, record.progress)
        optional = (record.seen_at, record.finished_at)
        if not all(map(math.isfinite, numbers + tuple(v for v in optional if v is not None))):
            return None  # NaN or Infinity: not strict JSON, so not a record of ours
        return record


__all__ = ["DEFAULT_RECORD_TTL", "RedisRegistryStore"]
