"""State the original Erlang service wrote, for the tests that read it.

``ORIGINAL_DATA`` was written by the original service itself (getkimball/api at
2842df8, built and run from ../shared/original): three feature specs set through its
``POST /v0/featureSpecs``, then, with ``Data = #{feature_maps =>
features_store:get_features()}``, ``base64:encode(term_to_binary(Data, [{minor_version,
2}]))``: what its ConfigMap store puts in the ConfigMap's ``data`` key (``minor_version
2`` is OTP 26's default, UTF-8 atoms; the run was on OTP 25). It holds
``new-checkout`` (off, a rollout from 2026-01-05T00:00:00Z to 2026-02-05T12:30:00Z),
``beta`` (on, and for users with ``plan = "pro"`` or ``id in [1, 2, 3]``) and ``off``.
"""

from __future__ import annotations

ORIGINAL_DATA = (
    "g3QAAAABdwxmZWF0dXJlX21hcHNsAAAAA3QAAAAFdwdib29sZWFudwVmYWxzZXcEbmFtZW0AAAAMbmV3LWNoZWNr"
    "b3V0dwtyb2xsb3V0X2VuZGJphI1Idw1yb2xsb3V0X3N0YXJ0Ymla/wB3BHVzZXJqdAAAAAV3B2Jvb2xlYW53BHRy"
    "dWV3BG5hbWVtAAAABGJldGF3C3JvbGxvdXRfZW5kdwl1bmRlZmluZWR3DXJvbGxvdXRfc3RhcnR3CXVuZGVmaW5l"
    "ZHcEdXNlcmwAAAACbAAAAANtAAAABHBsYW53AT1tAAAAA3Byb2psAAAAA20AAAACaWR3AmluawADAQIDamp0AAAA"
    "BXcHYm9vbGVhbncFZmFsc2V3BG5hbWVtAAAAA29mZncLcm9sbG91dF9lbmR3CXVuZGVmaW5lZHcNcm9sbG91dF9z"
    "dGFydHcJdW5kZWZpbmVkdwR1c2Vyamo="
)
