"""What only the Redis store does: expiry, index trimming, sharing across processes."""

from __future__ import annotations

import pytest
import redis

from flask_jobtastic.registry import Registry
from flask_jobtastic.registry_redis import RedisRegistryStore
from flask_jobtastic.registry_store import JobRecord
from tests.servers import RedisServer

START = 1_700_000_000.0


def test_redis_keys_expire_so_nothing_grows_forever(redis_client: redis.Redis) -> None:
    store = RedisRegistryStore(redis_client, record_ttl=3600)
    registry = Registry(store)
    registry.record_sent("j1", "tasks.add", owner="alice")
    registry.record_state("j1", "running")
    keys = sorted(k.decode() for k in redis_client.keys("*"))
    assert keys == ["jobtastic:registry:job:j1", "jobtastic:registry:owner:alice"]
    for key in keys:
        assert 3500 < redis_client.ttl(key) <= 3600


def test_redis_listing_trims_expired_records(redis_client: redis.Redis) -> None:
    store = RedisRegistryStore(redis_client)
    registry = Registry(store)
    registry.record_sent("gone", "tasks.add", owner="alice")
    registry.record_sent("kept", "tasks.add", owner="alice")
    redis_client.delete(store.job_key("gone"))  # as if its TTL ran out
    assert [r.id for r in registry.jobs_of("alice")] == ["kept"]
    assert redis_client.zrange(store.owner_key("alice"), 0, -1) == [b"kept"]


def test_redis_stores_in_two_processes_share_records(registry_redis: RedisServer) -> None:
    web_client = redis.Redis.from_url(registry_redis.url, decode_responses=True)
    worker_client = redis.Redis.from_url(registry_redis.url)
    try:
        web_client.flushdb()
        web = Registry(RedisRegistryStore(web_client))
        worker = Registry(RedisRegistryStore(worker_client))
        web.record_sent("j1", "tasks.add", owner="alice", description="Sum")
        worker.record_state("j1", "running", progress=25)
        assert web.get("j1").progress == 25  # type: ignore[union-attr]
        worker.record_state("j1", "succeeded")
        assert [r.state for r in web.jobs_of("alice")] == ["succeeded"]
        seen = web.mark_seen("j1", "alice")
        assert worker.get("j1") == seen
    finally:
        web_client.close()
        worker_client.close()


def test_redis_store_accepts_a_url_and_custom_prefix(registry_redis: RedisServer) -> None:
    store = RedisRegistryStore(registry_redis.url, prefix="app*[1]:")
    other = RedisRegistryStore(registry_redis.url, prefix="app-2:")
    try:
        store.clear()
        other.clear()
        other.save(JobRecord("x", "t", "alice", None, "queued", START, START))
        store.save(JobRecord("j1", "t", "alice", None, "queued", START, START))
        assert list(store.all_ids()) == ["j1"]
        assert store.clear() == 1
        assert list(other.all_ids()) == ["x"]
        other.clear()
    finally:
        store.client.close()
        other.client.close()


def test_redis_record_ttl_must_be_positive(redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError):
        RedisRegistryStore(redis_client, record_ttl=0)
