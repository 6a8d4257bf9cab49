"""What the test harness and CI rely on: Redis db numbers claimed once, pg_hba edited once."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import redis

from tests import redis_slots
from tests.conftest import REDIS_URL

REPO = Path(__file__).resolve().parent.parent


def test_concurrent_sessions_never_claim_the_same_redis_db(redis_slot: redis_slots.Slot) -> None:
    claimed: list[redis_slots.Slot] = []
    barrier = threading.Barrier(4)

    def session() -> None:
        barrier.wait()
        claimed.append(redis_slots.claim(REDIS_URL))

    threads = [threading.Thread(target=session) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        numbers = [slot.number for slot in claimed]
        assert len(set(numbers)) == 4 and redis_slot.number not in numbers
        registry = redis.Redis.from_url(f"{REDIS_URL}/0")
        assert all(registry.get(slot.key) == slot.token.encode() for slot in claimed)
        assert 0 < registry.ttl(claimed[0].key) <= redis_slots.CLAIM_SECONDS
    finally:
        for slot in claimed:
            slot.release()
    assert not any(registry.exists(slot.key) for slot in claimed)
    assert registry.get(redis_slot.key) == redis_slot.token.encode()  # this session's claim is untouched


def test_release_leaves_a_claim_someone_else_took_over(redis_slot: redis_slots.Slot) -> None:
    stale = redis_slots.Slot(REDIS_URL, redis_slot.number, "a-session-whose-claim-expired")
    stale.release()
    assert redis.Redis.from_url(f"{REDIS_URL}/0").get(redis_slot.key) == redis_slot.token.encode()


def test_pg_hba_gets_trust_lines_first_and_only_once(tmp_path: Path) -> None:
    hba = tmp_path / "pg_hba.conf"
    hba.write_text("local   all   postgres   peer\nhost    all   all   127.0.0.1/32   scram-sha-256\n"
                   "host    all   all   ::1/128   scram-sha-256\n")
    for _ in range(2):
        subprocess.run([str(REPO / ".ci" / "pg-trust-local"), str(hba)], check=True)
    lines = [line.split() for line in hba.read_text().splitlines() if line and not line.startswith("#")]
    assert lines[:2] == [["host", "all", "postgres", "127.0.0.1/32", "trust"],
                         ["host", "all", "postgres", "::1/128", "trust"]]
    assert len(lines) == 5 and lines[2:] == [["local", "all", "postgres", "peer"],
                                             ["host", "all", "all", "127.0.0.1/32", "scram-sha-256"],
                                             ["host", "all", "all", "::1/128", "scram-sha-256"]]
