"""Which live member owns each partition: rendezvous (highest random weight) hashing.

Each partition goes to the member with the highest score, the 128-bit MurmurHash3
(x64, seed 0) of ``"<member>/<partition>"`` as an unsigned integer, ties (never seen in
practice) broken by the greater member id. So:

- every replica computes the same answer from the same member set, with no
  coordination and in any order of the members;
- the answer is stable across versions: it depends only on MurmurHash3, which never
  changes, and on this text format (changing either moves every partition);
- when a member joins, it takes only the partitions it now wins (about
  ``partitions / members`` of them); when one leaves, only its partitions move, each to
  the member that scored second for it. No other partition changes owner.

Plain Python, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

import mmh3


def score(member: str, partition: int) -> int:
    """The rendezvous weight of ``member`` for ``partition``."""
    return mmh3.hash128(f"{member}/{partition}", 0, signed=False)


def assign(members: Iterable[str], partitions: int) -> dict[int, str]:
    """Partition -> owner for every partition in ``range(partitions)``; empty with no
    members. ``ValueError`` if ``partitions`` is below 1."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    live = sorted(set(members))
    if not live:
        return {}
    return {p: max(live, key=lambda m, p=p: (score(m, p), m)) for p in range(partitions)}


def owned_by(member: str, members: Iterable[str], partitions: int) -> frozenset[int]:
    """The partitions ``member`` owns among ``members`` (it need not be one of them:
    then none)."""
    return frozenset(p for p, owner in assign(members, partitions).items() if owner == member)
