"""The example ``app.config`` files of the original Kimball's README, as its users have
them: both the term reader and the settings must take each one unchanged."""

from __future__ import annotations

SITE_AND_CLUSTER = """[{features, [
    {site, "Site name"},
    {cluster, "Cluster name"}
]}].
"""

WEEKLY_FIXED_COUNTERS = """[{features, [
    {counters, #{
        init => [
            #{pattern => ".*",
              type => bloom_fixed_size,
              date_cohort => weekly,
              size => 10000,
              error_probability => 0.01}
        ]
    }}
]}].
"""
