"""The configmap feature spec store: specs kept in a Kubernetes ConfigMap as the original
kept them, copied to each additional namespace, imported at start.

No Kubernetes API server can run here: the store talks to ``support.kubernetes_api``,
a small HTTP server with exactly the ConfigMap calls it makes (the one stand-in this
project allows), through a kubeconfig file, as it would to a cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import certifi
import grpc
import pytest
from support import polling
from support.in_process import local_settings, running, stub_of
from support.kubernetes_api import KubernetesApi, kubernetes_api
from support.original_state import ORIGINAL_DATA
from support.ports import free_port

from kimball_grpc.app import RunningServer
from kimball_grpc.codec.original_specs import decode_original_specs
from kimball_grpc.config.settings import FeatureSpecStore, Mode, Settings
from kimball_grpc.core.errors import ConfigError
from kimball_grpc.generated.kimball.v1 import kimball_pb2 as pb
from kimball_grpc.generated.kimball.v1 import kimball_pb2_grpc as pb_grpc
from kimball_grpc.outbound.kubernetes import ConfigMaps, KubernetesAccess
from kimball_grpc.sidecar.server import start_sidecar

HOME = ("getkimball", "features-state-store")
COPIES = [("team-a", "getkimball-features"), ("team-b", "getkimball-features")]

until = partial(polling.until, timeout=15)  # a failed call is retried after a backoff


def store_settings(root: Path, api: KubernetesApi, **fields: object) -> Settings:
    return local_settings(
        root / "kimball",
        feature_spec_store=FeatureSpecStore.CONFIGMAP,
        feature_spec_configmap_namespace="getkimball",
        additional_namespaces=("team-a", "team-b"),
        kubeconfig=api.kubeconfig(root / "kubeconfig"),
        **fields,
    )


@asynccontextmanager
async def kimball(settings: Settings) -> AsyncIterator[tuple[RunningServer, object]]:
    async with running(settings) as server, stub_of(server) as stub:
        yield server, stub


def names_in(api: KubernetesApi, where: tuple[str, str]) -> set[str] | None:
    data = api.data(*where)
    if data is None or "data" not in data:
        return None
    specs, problems = decode_original_specs(data["data"].encode())
    assert problems == []
    return {spec.name for spec in specs}


def sample(server: RunningServer, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, labels) or 0.0


def failures(server: RunningServer, operation: str) -> float:
    """Failed calls on the home ConfigMap, counted."""
    return sample(
        server,
        "kimball_feature_spec_configmap_failures_total",
        namespace="getkimball",
        operation=operation,
    )


async def test_specs_written_reach_the_configmap_and_each_namespaces_copy(tmp_path):
    async with kubernetes_api() as api, kimball(store_settings(tmp_path, api)) as (server, stub):
        spec = pb.FeatureSpec(name="dark_mode", boolean=True)
        spec.user.add(property="plan", comparator="in").value.list_value.extend(["pro", 2])
        await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=spec))
        for where in (HOME, *COPIES):
            await until(lambda w=where: names_in(api, w) == {"dark_mode"}, f"the spec in {where}")
        specs, _ = decode_original_specs(api.data(*HOME)["data"].encode())
        assert specs[0].boolean and specs[0].user[0].value == ["pro", 2]
        await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=pb.FeatureSpec(name="other")))
        await stub.DeleteFeatureSpec(pb.DeleteFeatureSpecRequest(name="dark_mode"))
        for where in (HOME, *COPIES):
            await until(lambda w=where: names_in(api, w) == {"other"}, f"the change in {where}")
        assert sample(server, "kimball_feature_spec_configmap_behind", namespace="team-b") == 0


async def test_a_conflict_reads_the_configmap_again_and_retries(tmp_path):
    async with kubernetes_api() as api, kimball(store_settings(tmp_path, api)) as (server, stub):
        await until(lambda: names_in(api, HOME) == set(), "the ConfigMap created")
        api.put(*HOME, {"data": api.data(*HOME)["data"], "kept": "someone else's key"})
        api.conflicts = 3  # three other writers come first
        await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=pb.FeatureSpec(name="x")))
        await until(lambda: names_in(api, HOME) == {"x"}, "the spec written after the conflicts")
        assert api.data(*HOME)["kept"] == "someone else's key"  # a replace keeps other keys
        conflicts = sample(
            server,
            "kimball_feature_spec_configmap_writes_total",
            namespace="getkimball",
            result="conflict",
        )
        assert conflicts == 3
        assert failures(server, "write") == 0  # read again at once, not after a backoff
        assert [m for m, _ in api.requests].count("PUT") >= 4


async def test_a_configmap_holding_the_originals_specs_at_start_is_imported(tmp_path):
    # This server's own state already holds "beta", differently: the state wins.
    async with kimball(local_settings(tmp_path / "kimball")) as (_, stub):
        await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=pb.FeatureSpec(name="beta")))
    async with kubernetes_api() as api:
        api.put(*HOME, {"data": ORIGINAL_DATA})
        async with kimball(store_settings(tmp_path, api)) as (server, stub):

            async def imported() -> bool:
                listed = await stub.ListFeatureSpecs(pb.ListFeatureSpecsRequest())
                return {s.name for s in listed.specs} == {"beta", "new-checkout", "off"}

            await until(imported, "the original's specs imported")
            beta = await stub.GetFeatureSpec(pb.GetFeatureSpecRequest(name="beta"))
            assert not beta.boolean and not beta.user  # this server's, not the ConfigMap's
            checkout = await stub.GetFeatureSpec(pb.GetFeatureSpecRequest(name="new-checkout"))
            assert checkout.rollout_start.ToJsonString() == "2026-01-05T00:00:00Z"
            assert checkout.rollout_end.ToJsonString() == "2026-02-05T12:30:00Z"
            assert (
                sample(server, "kimball_feature_spec_configmap_imported_total", result="imported")
                == 2
            )

            async def rewritten() -> bool:
                specs, _ = decode_original_specs(api.data(*HOME)["data"].encode())
                return {s.name: s.boolean for s in specs} == {
                    "beta": False,
                    "new-checkout": False,
                    "off": False,
                }

            await until(rewritten, "the ConfigMap holding this server's set")
        # Imported through the log: still there after a restart without the store.
        async with kimball(local_settings(tmp_path / "kimball")) as (_, stub):
            listed = await stub.ListFeatureSpecs(pb.ListFeatureSpecsRequest())
            assert {s.name for s in listed.specs} == {"beta", "new-checkout", "off"}


async def test_a_deletion_the_configmap_missed_does_not_come_back(tmp_path):
    api = KubernetesApi(port=free_port())
    settings = store_settings(tmp_path, api)
    async with kimball(settings) as (_, stub):
        async with kubernetes_api(api):
            await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=pb.FeatureSpec(name="gone")))
            await until(lambda: names_in(api, HOME) == {"gone"}, "the spec written")
        await stub.DeleteFeatureSpec(pb.DeleteFeatureSpecRequest(name="gone"))  # API down
    async with kubernetes_api(api), kimball(settings) as (_, stub):
        await until(lambda: names_in(api, HOME) == set(), "the deletion written at last")
        listed = await stub.ListFeatureSpecs(pb.ListFeatureSpecsRequest())
        assert list(listed.specs) == []


async def test_an_unreachable_api_server_stops_neither_events_nor_spec_changes(tmp_path):
    api = KubernetesApi(port=free_port())  # nothing listens there yet
    async with kimball(store_settings(tmp_path, api)) as (server, stub):
        request = pb.TrackEventsRequest(events=[pb.Event(event_name="signup", user_id="u1")])
        assert (await stub.TrackEvents(request, timeout=5)).accepted == 1
        await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=pb.FeatureSpec(name="f")))
        await until(lambda: failures(server, "read") >= 1, "the failed read counted")
        assert sample(server, "kimball_feature_spec_configmap_behind", namespace="team-a") == 1
        async with kubernetes_api(api):  # the API server is back
            for where in (HOME, *COPIES):
                await until(lambda w=where: names_in(api, w) == {"f"}, f"the spec in {where}")


async def test_a_refused_token_is_counted_and_retried(tmp_path):
    async with kubernetes_api() as api:
        settings = store_settings(tmp_path, api)
        api.token = "rotated"  # the kubeconfig's token is refused now
        async with kimball(settings) as (server, stub):
            await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=pb.FeatureSpec(name="f")))
            await until(lambda: failures(server, "read") >= 1, "the refused read counted")
            assert api.configmaps == {}


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({}, "needs Kubernetes credentials"),
        ({"kubeconfig": Path("/nonexistent/kubeconfig")}, "KUBECONFIG /nonexistent/kubeconfig"),
    ],
)
async def test_missing_credentials_refuse_to_start(tmp_path, fields, fragment):
    settings = local_settings(tmp_path, feature_spec_store=FeatureSpecStore.CONFIGMAP, **fields)
    with pytest.raises(ConfigError, match=fragment):
        async with running(settings):
            pass


async def test_in_cluster_credentials_are_the_service_accounts(tmp_path):
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("pod-token")
    (account / "ca.crt").write_bytes(Path(certifi.where()).read_bytes())  # some real CAs
    configmaps = await ConfigMaps.connect(
        KubernetesAccess(service_host="127.0.0.1", service_port="6443", service_account_dir=account)
    )
    try:
        configuration = configmaps._api_client.configuration
        assert configuration.host == "https://127.0.0.1:6443"
        assert configuration.api_key["BearerToken"] == "Bearer pod-token"
        assert configuration.ssl_ca_cert == str(account / "ca.crt")
    finally:
        await configmaps.close()
    (account / "ca.crt").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"\(in-cluster\): .*certificate"):
        await ConfigMaps.connect(
            KubernetesAccess(
                service_host="127.0.0.1", service_port="6443", service_account_dir=account
            )
        )
    with pytest.raises(ConfigError, match=r"\(in-cluster\): .*[Tt]oken"):
        await ConfigMaps.connect(
            KubernetesAccess(
                service_host="127.0.0.1", service_port="6443", service_account_dir=tmp_path
            )
        )


async def test_a_sidecar_reads_its_namespaces_copy_mounted_as_a_file(tmp_path):
    mounted = tmp_path / "features" / "data"  # the copy mounted at /features, as the original's
    mounted.parent.mkdir()

    def mount() -> bool:
        """What the kubelet does with a mounted ConfigMap: its `data` key as the file."""
        data = api.data("team-a", "getkimball-features")
        if data is None:
            return False
        mounted.write_text(data["data"])
        return True

    async with kubernetes_api() as api, kimball(store_settings(tmp_path, api)) as (server, stub):
        spec = pb.FeatureSpec(name="beta")
        spec.user.add(property="plan", comparator="=").value.string_value = "pro"
        await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=spec))
        await until(lambda: names_in(api, COPIES[0]) == {"beta"}, "the copy in team-a")
        mount()
        sidecar_settings = local_settings(
            tmp_path / "sidecar",
            mode=Mode.SIDECAR,
            analytics_host=f"127.0.0.1:{server.grpc_port}",
            feature_spec_store=FeatureSpecStore.CONFIGMAP,
            feature_spec_file=mounted,
            feature_spec_refresh_s=0.05,
        )
        sidecar = await start_sidecar(sidecar_settings)
        try:
            await sidecar.wait_ready()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
                via = pb_grpc.KimballServiceStub(channel)

                async def beta_for(plan: str) -> bool:
                    request = pb.EvaluateFeaturesRequest()
                    request.user.update({"user_id": "u1", "plan": plan})
                    return dict((await via.EvaluateFeatures(request)).features).get("beta", False)

                assert await beta_for("pro") and not await beta_for("free")
                spec.boolean = True  # now on for everyone
                await stub.PutFeatureSpec(pb.PutFeatureSpecRequest(spec=spec))

                def copy_changed() -> bool:
                    specs, _ = decode_original_specs(api.data(*COPIES[0])["data"].encode())
                    return specs[0].boolean

                await until(copy_changed, "the change in the copy")
                mount()
                await until(lambda: beta_for("free"), "the sidecar reading the changed copy")
                mounted.write_text("not specs")  # damaged: the specs held are kept
                await until(lambda: "neither" in sidecar.specs.problem, "the damaged file read")
                listed = await via.ListFeatureSpecs(pb.ListFeatureSpecsRequest())
                assert [s.name for s in listed.specs] == ["beta"] and await beta_for("free")
        finally:
            await sidecar.stop(grace=None)
