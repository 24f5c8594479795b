"""The seed's AgentMatcher: which agents may take a job, and in what order.

Filter: an agent qualifies when it is ACTIVE, its category is the job's, it has every tag
the job asks for, its skill level is at least the job's, its last health check passed (a new,
re-enabled or moved agent takes calls only after one passing check: ``unchecked`` until
then), and its circuit breaker lets a call through (workers/dispatch/breaker.py).

An agent left out for its health, a pending check or its breaker may take the job later; one
left out for its category, tags or skill level never will (:meth:`Ranking.could_take`).

Score (higher is better). With every observation weighted ``w = 2^(-age / H)``
(H = ``HODLAI_DISPATCH_SCORE_HALF_LIFE_S``), for agent a in the job's category c::

    n, s, o        decayed calls, successes, timeouts of a in all categories
    n_c, s_c, o_c  the same in category c;  N_c = decayed calls of every agent in c
    p_all = (s + M·P0) / (n + M)                 overall success, shrunk toward P0
    p_c   = (s_c + M·p_all) / (n_c + M)          success in c, shrunk toward p_all
    t_c   = (o_c + M·o/(n + M)) / (n_c + M)      timeout rate in c, shrunk the same way
    bonus = X · sqrt(ln(1 + N_c) / (1 + n_c))    a new agent's chance to earn a record
    score = W_R·reputation + W_S·p_c − W_T·t_c + bonus

- decays with time: every count is a decayed sum, so last week's record fades and today's
  behaviour dominates;
- per category: ``p_c`` and ``t_c`` use the agent's record in this category, falling back
  on its overall record (and that on P0) while it has few calls here;
- new agents get work: with no record ``p_c = P0`` and the bonus is largest; it shrinks as
  ``1/sqrt(n_c)`` while the category's traffic grows, so an agent that does badly loses it;
- timeouts are penalised twice: they are not successes, and ``W_T·t_c`` on top (a hang
  costs a job its whole timeout, an error costs milliseconds).

Ties are broken by agent id, so a ranking is reproducible. Each ranking carries its
explanation: the agents considered with the parts of their score, those left out and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

from workers.dispatch.book import AgentBook, AgentInfo, Record

#: weight of the operator's reputation (0..1)
W_REPUTATION: Final = 0.3
#: weight of the shrunk success rate in the category
W_SUCCESS: Final = 0.7
#: penalty per unit of timeout rate
W_TIMEOUT: Final = 0.5
#: exploration weight: ~0.26 for a new agent in a category with 1,000 recent calls
X_EXPLORE: Final = 0.1
#: pseudo-calls of the prior: a record of 5 calls counts as much as the prior
M_PRIOR: Final = 5.0
#: success rate assumed with no record at all
P0: Final = 0.5
#: agents listed by name and score in a dispatch's explanation, at most
EXPLAIN_TOP: Final = 20


@dataclass(frozen=True)
class Scored:
    agent: AgentInfo
    score: float
    parts: dict[str, float]


#: reasons an agent that meets the job's requirements is left out for now
NOT_NOW: Final = frozenset({"already_tried", "health", "unchecked", "breaker_open"})


@dataclass
class Ranking:
    eligible: list[Scored]
    excluded: dict[str, str] = field(default_factory=dict)  # agent id -> reason

    def could_take(self) -> bool:
        """Does any ACTIVE agent meet the job's category, tags and skill level?"""
        return bool(self.eligible) or any(r in NOT_NOW for r in self.excluded.values())

    def summary(self, reasons: frozenset[str] | None = None) -> str:
        """How many agents were left out and why: "2 health, 1 unchecked"."""
        counts: dict[str, int] = {}
        for reason in self.excluded.values():
            if reasons is None or reason in reasons:
                counts[reason] = counts.get(reason, 0) + 1
        return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))

    def explain(self, chosen: list[str], why: str) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for reason in self.excluded.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        return {
            "considered": len(self.eligible) + len(self.excluded),
            "eligible": [
                {"agent_id": s.agent.agent_id, "score": round(s.score, 4),
                 **{k: round(v, 4) for k, v in s.parts.items()}}
                for s in self.eligible[:EXPLAIN_TOP]
            ],
            "excluded": dict(sorted(self.excluded.items())[:EXPLAIN_TOP]),
            "excluded_by_reason": reasons,
            "chosen": chosen,
            "why": why,
        }  # fmt: skip


def _rate(record: Record | None, now: float, h: float) -> tuple[float, float, float]:
    if record is None:
        return 0.0, 0.0, 0.0
    return record.calls.read(now, h), record.successes.read(now, h), record.timeouts.read(now, h)


def score(book: AgentBook, agent: AgentInfo, category: str, now: float) -> Scored:
    h = book.half_life_s
    n, s, o = _rate(book.overall.get(agent.agent_id), now, h)
    n_c, s_c, o_c = _rate(book.by_category.get((agent.agent_id, category)), now, h)
    total = book.category_calls.get(category)
    big_n = total.read(now, h) if total is not None else 0.0
    p_all = (s + M_PRIOR * P0) / (n + M_PRIOR)
    p_c = (s_c + M_PRIOR * p_all) / (n_c + M_PRIOR)
    t_c = (o_c + M_PRIOR * o / (n + M_PRIOR)) / (n_c + M_PRIOR)
    bonus = X_EXPLORE * math.sqrt(math.log1p(big_n) / (1.0 + n_c))
    value = W_REPUTATION * agent.reputation + W_SUCCESS * p_c - W_TIMEOUT * t_c + bonus
    return Scored(agent, value, {"reputation": agent.reputation, "success": p_c,
                                 "timeout": t_c, "explore": bonus, "calls": n_c})  # fmt: skip


def rank(
    book: AgentBook, *, category: str, tags: tuple[str, ...], skill_level: int, now: float,
    exclude: frozenset[str] = frozenset(),
) -> Ranking:  # fmt: skip
    """Every known agent, filtered and scored for this job, best first."""
    eligible: list[Scored] = []
    excluded: dict[str, str] = {}
    wanted = frozenset(tags)
    for agent in book.agents.values():
        reason = None
        if agent.category != category:
            reason = "category"
        elif not wanted <= agent.tags:
            reason = "tags"
        elif agent.skill_level < skill_level:
            reason = "skill_level"
        elif agent.agent_id in exclude:
            reason = "already_tried"
        elif agent.health != "ok":
            reason = "health" if agent.health == "failing" else "unchecked"
        elif not book.breaker(agent.agent_id).available(now):
            reason = "breaker_open"
        if reason is None:
            eligible.append(score(book, agent, category, now))
        elif reason != "category":  # other categories' agents are not worth listing
            excluded[agent.agent_id] = reason
    eligible.sort(key=lambda s: (-s.score, s.agent.agent_id))
    return Ranking(eligible, excluded)
