"""Prediction formulas: the original's Bayes figures plus a normalised posterior.

Pure functions over counts, so they can be checked by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GOAL_AMONG_EVENTS_NOTE = "Submitted events included this goal, no prediction made"
GOAL_WITHOUT_USERS_NOTE = "No user has reached this goal yet, no prediction made"

# The original divided by max(no, 0.1); kept so existing clients see the same likelihood.
LIKELIHOOD_FLOOR = 0.1


@dataclass(frozen=True)
class EventEvidence:
    """Counts for one event relative to one goal."""

    event_users: int  # users who did the event
    goal_event_users: int  # of them, users who then reached the goal


@dataclass(frozen=True)
class NaiveBayes:
    """The answer for one goal given some events; ``note`` set when there is none."""

    yes: float = 0.0
    no: float = 0.0
    likelihood: float = 0.0
    probability: float = 0.0
    note: str = ""


def bayes(goal_event_users: int, event_users: int) -> float:
    """P(goal | event) = goal-and-event users / event users (the original's figure)."""
    if event_users <= 0:
        return 0.0
    return min(1.0, goal_event_users / event_users)


def naive_bayes(total_users: int, goal_users: int, evidence: list[EventEvidence]) -> NaiveBayes:
    """The original's yes/no/likelihood, and a Laplace-smoothed posterior with the goal's prior.

    yes = prod(GE_i / G); no = prod((E_i - GE_i) / G); likelihood = yes / max(no, 0.1).
    probability = P(G) prod P(E_i|G) / (P(G) prod P(E_i|G) + P(~G) prod P(E_i|~G)).
    """
    if goal_users <= 0:
        return NaiveBayes(note=GOAL_WITHOUT_USERS_NOTE)
    yes = 1.0
    no = 1.0
    for e in evidence:
        yes *= e.goal_event_users / goal_users
        no *= max(0, e.event_users - e.goal_event_users) / goal_users
    others = max(0, total_users - goal_users)
    log_goal = math.log((goal_users + 1) / (total_users + 2))
    log_other = math.log((others + 1) / (total_users + 2))
    for e in evidence:
        goal_event = min(e.goal_event_users, goal_users)
        other_event = min(max(0, e.event_users - goal_event), others)
        log_goal += math.log((goal_event + 1) / (goal_users + 2))
        log_other += math.log((other_event + 1) / (others + 2))
    # Normalise in log space: the products underflow with many events.
    top = max(log_goal, log_other)
    probability = math.exp(log_goal - top) / (math.exp(log_goal - top) + math.exp(log_other - top))
    return NaiveBayes(
        yes=yes,
        no=no,
        likelihood=yes / max(no, LIKELIHOOD_FLOOR),
        probability=probability,
    )
