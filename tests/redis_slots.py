"""Redis database numbers claimed atomically, so concurrent test sessions never share one."""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass

import redis

CLAIM_KEY = "forgecrew-test:db:{number}"
CLAIM_SECONDS = 3600  # a crashed session's claim runs out; a live session renews its own
NUMBERS = range(1, 16)  # db 0 holds the claims (and is forgecrew's default broker db)

# Delete the claim only if it is still ours: an expired claim may have been taken over.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


@dataclass(frozen=True)
class Slot:
    """One claimed database number; `token` proves the claim is this session's."""

    base_url: str
    number: int
    token: str

    @property
    def key(self) -> str:
        return CLAIM_KEY.format(number=self.number)

    def renew(self) -> None:
        with redis.Redis.from_url(f"{self.base_url}/0") as registry:
            if registry.get(self.key) == self.token.encode():
                registry.expire(self.key, CLAIM_SECONDS)

    def release(self) -> None:
        with redis.Redis.from_url(f"{self.base_url}/0") as registry:
            registry.eval(_RELEASE, 1, self.key, self.token)


def claim(base_url: str) -> Slot:
    """A free db number, claimed with SET NX EX in db 0; empty databases are tried first."""
    token = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
    numbers = random.sample(list(NUMBERS), len(NUMBERS))
    with redis.Redis.from_url(f"{base_url}/0") as registry:
        sizes = {n: _size(base_url, n) for n in numbers}
        for number in sorted(numbers, key=lambda n: sizes[n] != 0):
            if registry.set(CLAIM_KEY.format(number=number), token, nx=True, ex=CLAIM_SECONDS):
                return Slot(base_url, number, token)
    raise RuntimeError(f"every Redis db number {NUMBERS.start}-{NUMBERS.stop - 1} is claimed by another test "
                       "session; wait for one to end, or delete the forgecrew-test:db:* keys in db 0")


def _size(base_url: str, number: int) -> int:
    with redis.Redis.from_url(f"{base_url}/{number}") as client:
        return client.dbsize()
