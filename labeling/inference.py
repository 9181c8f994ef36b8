"""Transitive inference over resolved answers: must-link groups (union-find) and cannot-links
between groups, with contradictions found in answer order.

Pairs are replayed oldest first (curator rulings before everything): a "same" merges two groups,
a "different" records a cannot-link between two groups. A pair that contradicts what the pairs
before it imply (a "different" inside one group, a "same" across a cannot-link) is reported as a
contradiction and left out, so one bad answer never rewrites the groups everybody else built.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from labeling.models import Answer, Pair
from retrieval.models import Collection


@dataclass(frozen=True)
class ResolvedPair:
    pair_id: int
    a: int
    b: int
    answer: str  # same or different


@dataclass
class Inference:
    parent: dict[int, int] = field(default_factory=dict)
    size: dict[int, int] = field(default_factory=dict)
    # root -> roots it has a cannot-link with (kept symmetric, re-keyed on every union).
    cannot: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    must_pairs: list[ResolvedPair] = field(default_factory=list)
    cannot_pairs: list[ResolvedPair] = field(default_factory=list)
    contradictions: list[ResolvedPair] = field(default_factory=list)

    def find(self, x: int) -> int:
        parent = self.parent
        if x not in parent:
            return x
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def _add(self, x: int) -> None:
        if x not in self.parent:
            self.parent[x] = x
            self.size[x] = 1

    def implied(self, a: int, b: int) -> str | None:
        """`same` or `different` if the answers imply it for (a, b), else None."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return Answer.SAME if a != b else None
        if rb in self.cannot.get(ra, ()):
            return Answer.DIFFERENT
        return None

    def add(self, pair: ResolvedPair) -> bool:
        """Adds a resolved pair; False (and recorded) when it contradicts the pairs before it."""
        implied = self.implied(pair.a, pair.b)
        if implied is not None and implied != pair.answer:
            self.contradictions.append(pair)
            return False
        self._add(pair.a)
        self._add(pair.b)
        ra, rb = self.find(pair.a), self.find(pair.b)
        if pair.answer == Answer.SAME:
            self.must_pairs.append(pair)
            if ra != rb:
                # Union by size; the smaller root's cannot-links move to the new root.
                if self.size[ra] < self.size[rb]:
                    ra, rb = rb, ra
                self.parent[rb] = ra
                self.size[ra] += self.size.pop(rb)
                for other in self.cannot.pop(rb, set()):
                    self.cannot[other].discard(rb)
                    self.cannot[other].add(ra)
                    self.cannot[ra].add(other)
        else:
            self.cannot_pairs.append(pair)
            self.cannot[ra].add(rb)
            self.cannot[rb].add(ra)
        return True

    def groups(self) -> dict[int, list[int]]:
        """root -> member image ids, for groups of two or more."""
        members: dict[int, list[int]] = defaultdict(list)
        for x in self.parent:
            members[self.find(x)].append(x)
        return {root: sorted(ids) for root, ids in members.items() if len(ids) > 1}

    def group_size(self, x: int) -> int:
        return self.size.get(self.find(x), 1)

    def implied_count(self) -> int:
        """Pairs the answers imply that nobody answered directly."""
        must = sum(n * (n - 1) // 2 for n in self.size.values() if n > 1)
        seen: set[tuple[int, int]] = set()
        cannot = 0
        for root, others in self.cannot.items():
            for other in others:
                key = (min(root, other), max(root, other))
                if key not in seen:
                    seen.add(key)
                    cannot += self.size.get(root, 1) * self.size.get(other, 1)
        direct_must = len({(p.a, p.b) for p in self.must_pairs})
        direct_cannot = len({(p.a, p.b) for p in self.cannot_pairs})
        return must - direct_must + cannot - direct_cannot


def resolved_pairs(collection: Collection | int) -> list[tuple[ResolvedPair, bool]]:
    """Every pair with a same/different final answer in replay order, with its flag."""
    rows = (
        Pair.objects.filter(collection=collection)
        .exclude(resolved__in=["", Answer.UNSURE], adjudicated="")
        .exclude(adjudicated=Answer.UNSURE)
        .order_by("-adjudicated", "answered_at", "id")
        .values_list("id", "a_id", "b_id", "resolved", "adjudicated", "flagged")
    )
    # "-adjudicated" puts rulings ("same"/"different") before the empty string: curators first.
    return [
        (ResolvedPair(pid, a, b, adjudicated or resolved), bool(flagged))
        for pid, a, b, resolved, adjudicated, flagged in rows
    ]


def replay(pairs: Iterable[ResolvedPair]) -> Inference:
    inference = Inference()
    for pair in pairs:
        inference.add(pair)
    return inference


def infer(collection: Collection | int) -> Inference:
    """The groups and cannot-links the collection's unflagged resolved answers imply."""
    return replay(pair for pair, flagged in resolved_pairs(collection) if not flagged)
