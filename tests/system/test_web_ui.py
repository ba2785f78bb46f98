"""The web UI at ``/`` (analytics, goals, predictions, nudges and feature flags, read and
changed through the REST API) in a real browser, against a real Kimball server.

Headless Chromium from Debian's packages (``/usr/bin/chromium``), driven by Playwright for
Python (``pip install playwright``; never ``playwright install``: the system browser is
used). When Chromium is missing, the tests install it with apt-get if running as root, else
they are skipped with the reason; without Playwright they are skipped with how to install it.

One Kimball server (authentication on) and one browser serve the whole module; each test
gets a fresh browser context (empty localStorage), so it types the token as a user would.
Screenshots (laptop 1280x800, phone 390x844) go to the test's tmp path and to
``test-artifacts/screenshots/`` at the repository root; with ``UPDATE_SCREENSHOTS=1`` the
laptop ones also replace those in ``docs/screenshots/``, which the README shows.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from support.in_process import local_settings, running, weekly_counters

from gateway.app import build_app
from gateway.web_ui import add_web_ui
from kimball_grpc.app import RunningServer

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    # Under pytest-xdist the whole module runs on one worker: one browser, one server.
    pytest.mark.xdist_group("browser"),
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PLAYWRIGHT_MISSING = (
    "WEB UI TESTS SKIPPED: Playwright for Python is not installed. Install it with "
    "`.venv/bin/pip install playwright` (the tests use Debian's /usr/bin/chromium: "
    "do not run `playwright install`)."
)
TOKEN = "web-ui-secret"
TIMEOUT_MS = 10_000
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
NARROW = {"width": 360, "height": 740}  # the narrowest phones in use
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FLAG_ROUTES_PENDING = "flag routes not built yet"
FLAG = "ui_test_flag"


# ------------------------------------------------------------------ the browser


def chromium_executable() -> str:
    """Debian's Chromium; installed with apt-get when missing and running as root."""
    if CHROMIUM.exists():
        return str(CHROMIUM)
    if os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get"):
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        for commands in ([install], [["apt-get", "update", "-q"], install]):
            for command in commands:
                subprocess.run(command, env=environment, capture_output=True, timeout=900)
            if CHROMIUM.exists():
                return str(CHROMIUM)
    pytest.skip(
        f"WEB UI TESTS SKIPPED: no Chromium at {CHROMIUM}, and it could not be installed "
        "here (needs root and apt-get). Install it with `apt-get install -y chromium`."
    )


@pytest.fixture(scope="module")
def playwright_api() -> Any:
    module = pytest.importorskip("playwright.async_api", reason=PLAYWRIGHT_MISSING)
    module.expect.set_options(timeout=TIMEOUT_MS)
    return module


@pytest.fixture(scope="module")
def expect(playwright_api: Any) -> Any:
    """Playwright's assertions, which wait up to TIMEOUT_MS for the page to agree."""
    return playwright_api.expect


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(playwright_api: Any) -> AsyncIterator[Browser]:
    executable = chromium_executable()
    async with playwright_api.async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@asynccontextmanager
async def open_page(browser: Browser, base_url: str, viewport: dict) -> AsyncIterator[Page]:
    """A fresh context (no localStorage) in a fixed locale and time zone; fails the test on
    any uncaught script error."""
    context = await browser.new_context(
        base_url=base_url, viewport=viewport, locale="en-US", timezone_id="Europe/Paris"
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    try:
        yield page
    finally:
        await context.close()
    assert not script_errors, script_errors


# ------------------------------------------------------------------ the server


def seed_events() -> list[dict]:
    """20 users in ``default``: all sign up, odd ones use feature_a, every third one
    feature_b (value 2.5), the first five visit café_visit; u0-u7 and u_new (no other event)
    reach the goal checkout over ISO weeks 1, 2 and 4 of 2024 (week 3: none)."""
    events = []
    checkout_days = {0: "02", 1: "02", 2: "09", 3: "09", 4: "09", 5: "23", 6: "23", 7: "23"}
    for i in range(20):
        user = f"u{i}"
        events.append({"event_name": "signup", "user_id": user})
        if i % 2:
            events.append({"event_name": "feature_a", "user_id": user})
        if i % 3 == 0:
            events.append({"event_name": "feature_b", "user_id": user, "value": 2.5})
        if i < 5:
            events.append({"event_name": "café_visit", "user_id": user})
        if i in checkout_days:
            events.append(
                {
                    "event_name": "checkout",
                    "user_id": user,
                    "ensure_goal": True,
                    "value": 10,
                    "datetime": f"2024-01-{checkout_days[i]}T12:00:00Z",
                }
            )
    events.append(
        {
            "event_name": "checkout",
            "user_id": "u_new",
            "ensure_goal": True,
            "datetime": "2024-01-23T12:00:00Z",
        }
    )
    for i in range(3):
        events.append({"event_name": "app_open", "user_id": f"m{i}", "namespace": "mobile"})
    return events


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kimball(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningServer]:
    settings = local_settings(
        tmp_path_factory.mktemp("kimball-web-ui"),
        api_auth=True,
        api_auth_tokens=(TOKEN,),
        counter_config=weekly_counters("^checkout$", 16, 0.001),
    )
    async with running(settings) as server:
        yield server


def ui_app(server: RunningServer) -> web.Application:
    """The gateway as ``kimball serve`` builds it, with the web UI (added here only while
    ``build_app`` does not add it itself)."""
    app = build_app(server.local_channel, server.metrics, server.checker)
    if not any(resource.canonical == "/" for resource in app.router.resources()):
        add_web_ui(app)
    return app


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def base_url(kimball: RunningServer) -> AsyncIterator[str]:
    async with serving(ui_app(kimball)) as url:
        async with aiohttp.ClientSession(url, headers=AUTH) as http:
            response = await http.post("/v0/analytics", json={"events": seed_events()})
            assert response.status == 204, await response.text()
        yield url


@pytest_asyncio.fixture(loop_scope="module")
async def http(base_url: str) -> AsyncIterator[aiohttp.ClientSession]:
    """The REST API with the token: what the page's numbers are checked against."""
    async with aiohttp.ClientSession(base_url, headers=AUTH) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, path: str, **params: Any) -> Any:
    async with http.get(path, params=params) as response:
        assert response.status == 200, await response.text()
        return await response.json()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, base_url: str) -> AsyncIterator[Page]:
    async with open_page(browser, base_url, LAPTOP) as opened:
        yield opened


async def enter_token(page: Page, expect: Any, view: str | None = None) -> None:
    """Open the UI with no token: it says one is needed; type it as a user would. Then
    follow the navigation link to ``view``, if given."""
    await page.goto("/")
    await expect(page.locator("#token-panel")).to_be_visible()
    await expect(page.locator("#token-message")).to_contain_text("token is needed")
    await page.locator("#token").fill(TOKEN)
    await page.get_by_role("button", name="Save token").click()
    await expect(page.locator("#token-panel")).to_be_hidden()
    await expect(page.locator("#token-toggle")).to_have_text("Token ✓")
    if view is not None:
        await page.get_by_role("link", name=view).click()


async def screenshot(page: Page, directory: Path, name: str) -> None:
    """A full-page screenshot into ``directory`` and ``test-artifacts/screenshots/``."""
    await page.evaluate("window.scrollTo(0, 0)")
    path = directory / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, ARTIFACTS / path.name)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1" and name.startswith("laptop-"):
        shutil.copyfile(path, DOCS_SCREENSHOTS / f"{name.removeprefix('laptop-')}.png")


async def assert_fits(page: Page, what: str) -> None:
    """Nothing wider than the screen: wide tables scroll inside their own box."""
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{what}: the page is {overflow}px wider than the screen"


def percent(text: str) -> float:
    return float(text.strip().rstrip("%")) / 100


def counters(analytics: dict, kind: str) -> list[dict]:
    return [c for c in analytics["counts"] if c["type"] == kind]


# ------------------------------------------------------------------ serving


async def test_the_page_is_open_and_the_data_is_not(base_url: str) -> None:
    async with aiohttp.ClientSession(base_url) as anonymous:
        async with anonymous.get("/") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            assert "<title>Kimball</title>" in await response.text()
            assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        for name, content_type in (
            ("app.js", "text/javascript"),
            ("style.css", "text/css"),
            ("favicon.svg", "image/svg+xml"),
        ):
            async with anonymous.get(f"/ui/{name}") as response:
                assert response.status == 200, name
                assert response.content_type == content_type
                etag = response.headers["ETag"]
            async with anonymous.get(f"/ui/{name}", headers={"If-None-Match": etag}) as response:
                assert response.status == 304
        for path in ("/ui/nope.js", "/ui/..%2Fweb_ui.py", "/ui/../web_ui.py"):
            async with anonymous.get(path) as response:
                assert response.status == 404, path
        async with anonymous.get("/v0/namespaces") as response:
            assert response.status == 401


# ------------------------------------------------------------------ the pages


async def test_token_and_analytics_match_the_api(
    page: Page, http: aiohttp.ClientSession, expect: Any
) -> None:
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(r.headers) if "/v0/" in r.url else None)

    # No token: the page says one is needed. A wrong one is refused, and the page says so.
    await page.goto("/")
    await expect(page.locator("#token-message")).to_contain_text("token is needed")
    await expect(page.locator("#view-analytics > .error")).to_contain_text("token is needed")
    await page.locator("#token").fill("wrong-token")
    await page.get_by_role("button", name="Save token").click()
    await expect(page.locator("#token-message")).to_contain_text("refused")
    await expect(page.locator("#view-analytics > .error")).to_contain_text("refused")
    # The right one shows the data, and every data request from then on carries it.
    sent.clear()
    await page.locator("#token").fill(TOKEN)
    await page.get_by_role("button", name="Save token").click()

    analytics = await get_json(http, "/v0/analytics", namespace="default")
    goals = (await get_json(http, "/v0/goals", namespace="default"))["goals"]
    total = counters(analytics, "internal")[0]["count"]
    assert total == 21
    await expect(page.get_by_test_id("total-users")).to_have_text(str(total))
    await expect(page.locator("#goal-total")).to_have_text(str(len(goals)))
    named = counters(analytics, "named")
    rows = page.locator("#counters-table tbody tr")
    await expect(rows).to_have_count(len(named))
    shown = await rows.evaluate_all(
        """rows => rows.map(r => [r.dataset.name, Number(r.querySelector('.count').dataset.value),
            Number(r.querySelector('.sum').dataset.value), r.querySelector('.count').textContent,
            r.querySelector('.sum').textContent])"""
    )
    expected = sorted(
        ((c["name"], c["count"], c["value"]["sum"]) for c in named), key=lambda c: (-c[1], c[0])
    )
    assert [tuple(row[:3]) for row in shown] == expected
    for _, count, value_sum, count_text, sum_text in shown:
        assert count_text == f"{count:,}"
        assert float(sum_text.replace(",", "")) == value_sum
    assert dict((row[0], row[2]) for row in shown)["feature_b"] == 17.5
    assert sent
    assert all(headers.get("authorization") == f"Bearer {TOKEN}" for headers in sent)

    # Weekly counts: one point per ISO week from the first to the last (week 3 had none).
    weekly = counters(analytics, "weekly")
    assert {(c["year"], c["week"], c["count"]) for c in weekly} == {
        (2024, 1, 2),
        (2024, 2, 3),
        (2024, 4, 4),
    }
    await expect(page.locator("#weekly-chart circle")).to_have_count(4)
    # One series, of the event (REST names each week's counter "checkout 20241" and so on).
    assert {c["name"] for c in weekly} == {"checkout 20241", "checkout 20242", "checkout 20244"}
    weekly_rows = await page.locator("#weekly-table tbody tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.week, r.dataset.name,"
        " Number(r.lastElementChild.dataset.value)])"
    )
    assert weekly_rows == [
        ["2024-W01", "checkout", 2],
        ["2024-W02", "checkout", 3],
        ["2024-W04", "checkout", 4],
    ]

    # Filtering the table.
    await page.locator("#counter-filter").fill("feat")
    await expect(rows).to_have_count(2)


async def test_namespace_picker_is_remembered_and_weekly_has_an_empty_state(
    page: Page, http: aiohttp.ClientSession, expect: Any
) -> None:
    await enter_token(page, expect)
    names = (await get_json(http, "/v0/namespaces"))["namespaces"]
    options = page.locator("#namespace option")
    await expect(options).to_have_count(len(names))
    assert sorted(await options.all_text_contents()) == sorted(names)
    await page.locator("#namespace").select_option("mobile")
    await expect(page.get_by_test_id("total-users")).to_have_text("3")
    await expect(page.locator("#weekly")).to_contain_text("No weekly counters")
    await page.reload()
    await expect(page.locator("#namespace")).to_have_value("mobile")
    await expect(page.get_by_test_id("total-users")).to_have_text("3")


async def test_the_namespace_is_in_the_url_for_every_page(
    browser: Browser, base_url: str, expect: Any
) -> None:
    async with open_page(browser, base_url, LAPTOP) as page:
        await enter_token(page, expect)
        await expect(page).to_have_url(f"{base_url}/?namespace=default")
        await page.locator("#namespace").select_option("mobile")
        await expect(page).to_have_url(f"{base_url}/?namespace=mobile")
        # Every page keeps it: the tabs change only the view.
        await page.get_by_role("link", name="Goals").click()
        await expect(page).to_have_url(f"{base_url}/?namespace=mobile#goals")
        await expect(page.locator("#goals-list")).to_contain_text("No goal in this namespace")
        # Back returns to the previous namespace.
        await page.go_back()
        await page.go_back()
        await expect(page.locator("#namespace")).to_have_value("default")
        await expect(page.get_by_test_id("total-users")).to_have_text("21")
    # A link opens that namespace's view, whatever the browser chose before.
    async with open_page(browser, base_url, LAPTOP) as page:
        await enter_token(page, expect)
        await page.goto("/?namespace=mobile#analytics")
        await expect(page.locator("#namespace")).to_have_value("mobile")
        await expect(page.get_by_test_id("total-users")).to_have_text("3")
        await page.goto("/?namespace=default#goals")
        await expect(page.locator("#namespace")).to_have_value("default")
        await expect(page.locator('article.goal[data-goal="checkout"]')).to_be_visible()


async def test_the_current_week_is_drawn_as_partial(
    page: Page, http: aiohttp.ClientSession, expect: Any
) -> None:
    now = datetime.now(UTC)
    events = [
        {
            "event_name": "checkout",
            "user_id": f"w{i}",
            "namespace": "thisweek",
            "datetime": (now - timedelta(days=7 * (i % 2))).isoformat(),
        }
        for i in range(5)
    ]
    async with http.post("/v0/analytics", json=events) as response:
        assert response.status == 204, await response.text()
    year, week, _ = now.isocalendar()
    await enter_token(page, expect)
    await page.goto("/?namespace=thisweek#analytics")
    chart = page.locator("#weekly-chart")
    await expect(chart.locator("circle")).to_have_count(2)
    await expect(chart.locator("polyline.partial")).to_have_count(1)  # the last segment, dashed
    await expect(chart.locator("circle.partial")).to_have_count(1)
    await expect(chart.locator(".partial-label")).to_have_text(f"{year}-W{week:02d} (partial)")
    await expect(page.locator("#weekly-partial-note")).to_contain_text("not over")
    # Weeks that are over are drawn whole.
    await page.goto("/?namespace=default#analytics")
    await expect(page.locator("#weekly-chart circle")).to_have_count(4)
    await expect(page.locator("#weekly-chart .partial")).to_have_count(0)


async def test_live_events_arrive_pause_and_filter(
    page: Page, http: aiohttp.ClientSession, expect: Any
) -> None:
    async def track(*names: str) -> None:
        body = [
            {"event_name": n, "user_id": f"live{i}", "namespace": "live"}
            for i, n in enumerate(names)
        ]
        async with http.post("/v0/analytics", json=body) as response:
            assert response.status == 204, await response.text()

    await enter_token(page, expect)
    await page.goto("/?namespace=live#live")
    await expect(page.locator("#live-status")).to_contain_text("Live")
    rows = page.locator("#live-table tr.live-event")
    await expect(page.locator("#live-table")).to_contain_text("Waiting for events")
    await track("signup", "purchase")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("purchase")  # newest first
    await expect(rows.first).to_contain_text("live1")
    await expect(page.locator("#live-count")).to_have_text("2")
    rate = float(await page.get_by_test_id("live-rate").get_attribute("data-value"))
    assert rate > 0

    # Paused, nothing shows; resumed, the events of the pause are read back.
    await page.get_by_role("button", name="Pause").click()
    await expect(page.locator("#live-status")).to_contain_text("Paused")
    await track("during_pause")
    await expect(rows).to_have_count(2)
    await page.get_by_role("button", name="Resume").click()
    await expect(rows).to_have_count(3)
    await expect(rows.first).to_contain_text("during_pause")

    # Filtered by event name.
    await page.get_by_label("Event names").fill("buy, pay")
    await page.get_by_role("button", name="Apply").click()
    await expect(page.locator("#live-status")).to_contain_text("buy, pay")
    await track("browse", "buy", "pay", "browse")
    await expect(rows).to_have_count(2)
    names = await rows.evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert names == ["pay", "buy"]

    # Leaving the page closes the stream.
    await page.get_by_role("link", name="Analytics").click()
    await expect(page.locator("#live-status")).to_be_hidden()
    await track("after_leaving")
    await page.get_by_role("link", name="Live").click()
    await expect(rows).to_have_count(2)  # a new stream from now on, with the same filter


async def test_usable_at_360_px_and_with_the_keyboard(
    browser: Browser, base_url: str, expect: Any
) -> None:
    async with open_page(browser, base_url, NARROW) as page:
        await enter_token(page, expect)
        await expect(page.get_by_test_id("total-users")).to_have_text("21")
        for view in ("analytics", "live", "goals", "predictions", "nudges", "flags"):
            await page.goto(f"/?namespace=default#{view}")
            await expect(page.locator(f"#view-{view}")).to_have_attribute("aria-busy", "false")
            await assert_fits(page, f"360 px {view}")
            # Every control a person can reach has a name a screen reader says.
            unnamed = await page.evaluate(
                """view => [...document.querySelectorAll(
                    `header input, header select, header button, nav a,
                     #view-${view} input, #view-${view} select, #view-${view} button,
                     #view-${view} textarea`)]
                  .filter(el => el.offsetParent !== null)
                  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                                && !el.textContent.trim())
                  .map(el => el.outerHTML.slice(0, 80))""",
                view,
            )
            assert unnamed == [], f"{view}: controls without a name: {unnamed}"

        # The keyboard alone: Tab reaches the namespace, the tabs, and Enter follows one.
        await page.goto("/?namespace=default#analytics")
        await page.reload()  # focus starts at the top of the page
        await expect(page.get_by_test_id("total-users")).to_have_text("21")
        reached = []
        for _ in range(12):
            await page.keyboard.press("Tab")
            reached.append(
                await page.evaluate(
                    "document.activeElement.id || document.activeElement.textContent.trim()"
                )
            )
            if reached[-1] == "Live":
                break
        assert "namespace" in reached and reached[-1] == "Live", reached
        await page.keyboard.press("Enter")
        await expect(page.locator("#view-live")).to_be_visible()
        await expect(page.locator("#live-status")).to_contain_text("Live")
        # Focus is visible where it is.
        outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none"


async def test_goals_show_their_combinations_and_a_goal_can_be_created(
    page: Page, http: aiohttp.ClientSession, expect: Any
) -> None:
    await enter_token(page, expect, view="Goals")
    analytics = await get_json(http, "/v0/analytics", namespace="default")
    checkout = next(c for c in counters(analytics, "named") if c["name"] == "checkout")
    card = page.locator('article.goal[data-goal="checkout"]')
    await expect(card.locator(".goal-users")).to_have_text(str(checkout["count"]))
    rows = card.locator("tr.combination")
    await expect(rows).to_have_count(len(checkout["event_counts"]))
    shown = await rows.evaluate_all(
        """rows => rows.map(r => [JSON.parse(r.dataset.events),
            Number(r.querySelector('.count').dataset.value)])"""
    )
    assert sorted((tuple(e), c) for e, c in shown) == sorted(
        (tuple(combo["events"]), combo["count"]) for combo in checkout["event_counts"]
    )
    counts = [count for _, count in shown]
    assert counts == sorted(counts, reverse=True)  # most common first
    assert shown[0][1] == 2
    assert ([], 1) in [(e, c) for e, c in shown]  # u_new: no prior event
    await expect(card).to_contain_text("no prior event")

    # Conversion: of each event's users, the share who reached the goal, counts beside.
    users = {c["name"]: c["count"] for c in counters(analytics, "named")}
    conversions = card.locator("tr.conversion")
    await expect(conversions).to_have_count(len(checkout["single_event_counts"]))
    await expect(card).to_contain_text("Conversion")
    shown = await conversions.evaluate_all(
        """rows => rows.map(r => [r.dataset.name,
            Number(r.querySelector('.share').dataset.value), r.querySelector('.share').textContent,
            Number(r.querySelector('.reached').dataset.value),
            Number(r.querySelector('.users').dataset.value)])"""
    )
    expected = {s["name"]: (s["count"], users[s["name"]]) for s in checkout["single_event_counts"]}
    assert {name: (reached, of) for name, _, _, reached, of in shown} == expected
    for _, share, text, reached, of in shown:
        assert share == pytest.approx(min(1, reached / of))
        assert text == f"{share * 100:.1f}%"
    assert [row[1] for row in shown] == sorted((row[1] for row in shown), reverse=True)
    assert shown[0][0] == "café_visit"  # u0-u4 all reached it: 5 of 5
    assert shown[0][2] == "100.0%"

    await page.locator("#goal-name").fill("upgrade")
    await page.get_by_role("button", name="Create goal").click()
    await expect(page.locator('article.goal[data-goal="upgrade"]')).to_contain_text(
        "No user has reached this goal yet"
    )
    assert "upgrade" in (await get_json(http, "/v0/goals", namespace="default"))["goals"]


async def test_predictions_ranking_and_what_if(
    page: Page, http: aiohttp.ClientSession, expect: Any
) -> None:
    await enter_token(page, expect, view="Predictions")
    predictions = await get_json(http, "/v0/predictions", namespace="default")
    events = predictions["goals"]["checkout"]["events"]
    await expect(page.locator("#prediction-goal")).to_have_value("checkout")
    rows = page.locator("#ranking-table tbody tr")
    await expect(rows).to_have_count(len(events))
    shown = await rows.evaluate_all(
        """rows => rows.map(r => [r.dataset.name, Number(r.querySelector('.bayes').dataset.value),
            r.querySelector('.bayes').textContent])"""
    )
    assert {name: bayes for name, bayes, _ in shown} == {e: a["bayes"] for e, a in events.items()}
    ranking = [bayes for _, bayes, _ in shown]
    assert ranking == sorted(ranking, reverse=True)
    assert shown[0][0] == "café_visit"
    for _, bayes, text in shown:
        assert abs(percent(text) - bayes) <= 0.0005 + 1e-9
    await expect(page.locator("#ranking-chart rect.bar")).to_have_count(len(events))

    # What if: two events picked; the probability shown is the API's.
    await page.locator('#whatif-events input[value="feature_a"]').check()
    await page.locator('#whatif-events input[value="café_visit"]').check()
    answer = await get_json(
        http, "/v0/predictions", namespace="default", event=["café_visit", "feature_a"]
    )
    probability = answer["goals"]["checkout"]["probability"]
    card = page.locator('#whatif-cards [data-goal="checkout"]')
    await expect(card.locator(".probability")).to_have_text(f"{probability * 100:.1f}%")
    assert float(await card.locator(".probability").get_attribute("data-value")) == probability
    for key in ("yes", "no", "likelihood"):
        value = await card.locator(f"dd.{key}").get_attribute("data-value")
        assert float(value) == answer["goals"]["checkout"][key]

    # A goal among the events gets the API's note; an unknown event, the API's error.
    await page.locator('#whatif-events input[value="checkout"]').check()
    await expect(card.locator(".note")).to_have_text(
        (await get_json(http, "/v0/predictions", namespace="default", event="checkout"))["goals"][
            "checkout"
        ]["note"]
    )
    await page.locator("#whatif-extra").fill("nope")
    await page.get_by_role("button", name="Add", exact=True).click()
    async with http.get("/v0/predictions", params={"event": "nope"}) as response:
        assert response.status == 400
        what = (await response.json())["error"]["what"]
    await expect(page.locator("#whatif-error")).to_contain_text(what)
    await expect(page.locator("#whatif-error")).to_contain_text("nope")


async def test_nudges_for_a_user(page: Page, http: aiohttp.ClientSession, expect: Any) -> None:
    await enter_token(page, expect, view="Nudges")
    await expect(page.locator('#nudge-goal option[value="checkout"]')).to_have_count(1)
    await page.locator("#nudge-goal").select_option("checkout")
    await page.locator("#nudge-user").fill("u7")
    await page.get_by_role("button", name="Get nudges").click()
    answer = await get_json(http, "/v0/nudges", namespace="default", goal="checkout", user_id="u7")
    assert answer["nudges"]
    rows = page.locator("#nudges-table tbody tr")
    await expect(rows).to_have_count(len(answer["nudges"]))
    shown = await rows.evaluate_all(
        """rows => rows.map(r => [r.dataset.name,
            Number(r.querySelector('.prediction').dataset.value)])"""
    )
    assert shown == [[n["event_name"], n["prediction"]] for n in answer["nudges"]]

    # A request the server refuses is shown, not swallowed.
    await page.locator("#nudge-user").fill("x" * 300)
    await page.get_by_role("button", name="Get nudges").click()
    await expect(page.locator("#view-nudges > .error")).to_contain_text("HTTP 400")


async def test_works_with_auth_off(browser: Browser, expect: Any, tmp_path: Path) -> None:
    async with running(local_settings(tmp_path)) as server, serving(ui_app(server)) as url:
        async with aiohttp.ClientSession(url) as http:
            event = {"event_name": "signup", "user_id": "solo"}
            async with http.post("/v0/analytics", json=event) as response:
                assert response.status == 204
        async with open_page(browser, url, PHONE) as page:
            await page.goto("/")
            await expect(page.get_by_test_id("total-users")).to_have_text("1")
            await expect(page.locator("#token-panel")).to_be_hidden()
            await expect(page.locator("#counters-table tbody tr")).to_have_count(1)


# ------------------------------------------------------------------ feature flags


@pytest_asyncio.fixture(loop_scope="module")
async def flag_routes(http: aiohttp.ClientSession, request: pytest.FixtureRequest) -> bool:
    """Whether the feature flag routes exist; while they do not, the flag tests are expected
    to fail (xfail, not strict): they check the page shows the error, then stop."""
    async with http.get("/v0/featureSpecs") as response:
        present = response.status not in (404, 405)
    if not present:
        request.node.add_marker(pytest.mark.xfail(strict=False, reason=FLAG_ROUTES_PENDING))
    return present


async def flags_page_or_xfail(page: Page, expect: Any, present: bool) -> None:
    await enter_token(page, expect, view="Flags")
    if not present:
        await expect(page.locator("#view-flags > .error")).to_contain_text("HTTP 40")
        pytest.xfail(FLAG_ROUTES_PENDING)
    await expect(page.locator("#view-flags")).to_have_attribute("aria-busy", "false")
    await expect(page.locator("#view-flags > .error")).to_be_hidden()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_flags_create_toggle_and_edit(
    page: Page, http: aiohttp.ClientSession, expect: Any, flag_routes: bool, tmp_path: Path
) -> None:
    await flags_page_or_xfail(page, expect, flag_routes)

    # Create: off by default, a rollout (Paris time in the page, UTC on the wire), a condition.
    await page.locator("#flag-name").fill(FLAG)
    await page.locator("#flag-start").fill("2024-01-01T10:00")
    await page.locator("#flag-end").fill("2024-07-01T10:00")
    await page.get_by_role("button", name="Add condition").click()
    await page.locator(".condition-property").fill("country")
    await page.locator(".condition-comparator").select_option("in")
    await page.locator(".condition-value").fill("fr, de")
    await page.get_by_role("button", name="Save flag").click()
    row = page.locator(f'#flags-table tr[data-flag="{FLAG}"]')
    switch = row.get_by_role("switch")
    await expect(switch).to_have_attribute("aria-checked", "false")
    spec = await get_json(http, f"/v0/featureSpecs/{FLAG}")
    assert spec["name"] == FLAG
    assert spec["boolean"] is False
    assert utc(spec["rollout_start"]) == utc("2024-01-01T09:00:00Z")
    assert utc(spec["rollout_end"]) == utc("2024-07-01T08:00:00Z")
    assert spec["user"] == [{"property": "country", "comparator": "in", "value": ["fr", "de"]}]
    await expect(row.locator(".conditions-cell")).to_contain_text('country in ["fr","de"]')

    # Toggle: the stored spec flips, nothing else changes.
    await switch.click()
    await expect(switch).to_have_attribute("aria-checked", "true")
    toggled = await get_json(http, f"/v0/featureSpecs/{FLAG}")
    assert toggled == {**spec, "boolean": True}
    await switch.click()
    await expect(switch).to_have_attribute("aria-checked", "false")
    assert (await get_json(http, f"/v0/featureSpecs/{FLAG}"))["boolean"] is False

    # Edit: the form holds the spec; drop the rollout, change the condition, turn it on.
    await row.get_by_role("button", name="Edit").click()
    await expect(page.locator("#flag-name")).to_have_value(FLAG)
    await expect(page.locator("#flag-start")).to_have_value("2024-01-01T10:00")
    await expect(page.locator(".condition-value")).to_have_value('["fr","de"]')
    await page.locator("#flag-start").fill("")
    await page.locator("#flag-end").fill("")
    await page.locator(".condition-comparator").select_option("=")
    await page.locator(".condition-value").fill("fr")
    await page.locator("#flag-boolean").check()
    await page.get_by_role("button", name="Save flag").click()
    await expect(switch).to_have_attribute("aria-checked", "true")
    edited = await get_json(http, f"/v0/featureSpecs/{FLAG}")
    assert edited["boolean"] is True
    assert "rollout_start" not in edited and "rollout_end" not in edited
    assert edited["user"] == [{"property": "country", "comparator": "=", "value": "fr"}]
    listed = (await get_json(http, "/v0/featureSpecs"))["featureSpecs"]
    assert FLAG in [s["name"] for s in listed]

    # A bad spec (half a rollout) is refused in the page, saying why.
    await page.get_by_role("button", name="New flag").click()
    await page.locator("#flag-name").fill("half_rollout")
    await page.locator("#flag-start").fill("2024-01-01T10:00")
    await page.get_by_role("button", name="Save flag").click()
    await expect(page.locator("#flag-form-error")).to_contain_text("both a start and an end")
    await screenshot(page, tmp_path, "laptop-flags-edited")


async def test_flags_try_it_and_delete(
    page: Page, http: aiohttp.ClientSession, expect: Any, flag_routes: bool
) -> None:
    name = "ui_try_flag"
    if flag_routes:
        spec = {"name": name, "boolean": False, "user": [["plan", "=", "pro"]]}
        async with http.post("/v0/featureSpecs", json=spec) as response:
            assert response.status == 200, await response.text()
    await flags_page_or_xfail(page, expect, flag_routes)

    user = {"user_id": "u1", "plan": "pro"}
    await page.locator("#try-user").fill(json.dumps(user))
    await page.get_by_role("button", name="Evaluate").click()
    params = {
        "user_obj": base64.b64encode(json.dumps(user).encode()).decode(),
        "context_obj": base64.b64encode(b"{}").decode(),
    }
    features = (await get_json(http, "/v0/features", **params))["features"]
    assert features[name] is True
    items = page.locator("#try-result li")
    await expect(items).to_have_count(len(features))
    shown = await items.evaluate_all("items => items.map(i => [i.dataset.flag, i.dataset.value])")
    assert dict(shown) == {k: str(v).lower() for k, v in features.items()}

    await page.locator("#try-user").fill("{not json")
    await page.get_by_role("button", name="Evaluate").click()
    await expect(page.locator("#try-error")).to_contain_text("not valid JSON")

    row = page.locator(f'#flags-table tr[data-flag="{name}"]')
    await row.get_by_role("button", name="Delete").click()
    await row.get_by_role("button", name="Confirm delete").click()
    await expect(row).to_have_count(0)
    async with http.get(f"/v0/featureSpecs/{name}") as response:
        assert response.status == 404


async def test_flags_percentage_variants_and_history(
    page: Page, http: aiohttp.ClientSession, expect: Any, flag_routes: bool, tmp_path: Path
) -> None:
    name = "ui_rollout_flag"
    await flags_page_or_xfail(page, expect, flag_routes)

    # Create: 30% of users by org, two variants.
    await page.get_by_role("button", name="New flag").click()
    await page.locator("#flag-name").fill(name)
    await page.locator("#flag-percentage").fill("30")
    await page.locator("#flag-stickiness").fill("org")
    for variant, weight in (("blue", "1"), ("green", "0")):
        await page.get_by_role("button", name="Add variant").click()
        await page.locator(".variant-name").last.fill(variant)
        await page.locator(".variant-weight").last.fill(weight)
    await page.get_by_role("button", name="Save flag").click()
    row = page.locator(f'#flags-table tr[data-flag="{name}"]')
    await expect(row.locator(".rollout")).to_contain_text("30% of users by org")
    await expect(row).to_contain_text("Variants: blue (1), green (0)")
    spec = await get_json(http, f"/v0/featureSpecs/{name}")
    assert (spec["rollout_percentage"], spec["stickiness"]) == (30, "org")
    assert [(v["name"], v["weight"]) for v in spec["variants"]] == [("blue", 1), ("green", 0)]

    # Toggling the default keeps the rollout and the variants.
    await row.get_by_role("switch").click()
    await expect(row.get_by_role("switch")).to_have_attribute("aria-checked", "true")
    assert await get_json(http, f"/v0/featureSpecs/{name}") == {**spec, "boolean": True}

    # Try it: the flag is on (its default now) and answers its variant.
    await page.locator("#try-user").fill('{"user_id": "u1"}')
    await page.get_by_role("button", name="Evaluate").click()
    await expect(page.locator(f'#try-result li[data-flag="{name}"]')).to_contain_text(
        "variant blue"
    )

    # History: newest first, created then changed, by the page's token (its id only).
    await row.get_by_role("button", name="History").click()
    changes = page.locator("#flag-history-table tbody tr")
    await expect(changes).to_have_count(2)
    await expect(changes.nth(0)).to_contain_text(hashlib.sha256(TOKEN.encode()).hexdigest()[:8])
    await expect(changes.nth(0)).to_contain_text("changed")
    await expect(changes.nth(1)).to_contain_text("created")
    await expect(changes.nth(0)).to_contain_text("30% by org")

    # A percentage out of range is refused in the page, saying why.
    await page.get_by_role("button", name="New flag").click()
    await page.locator("#flag-name").fill("bad_percentage")
    await page.locator("#flag-percentage").fill("150")
    await page.get_by_role("button", name="Save flag").click()
    await expect(page.locator("#flag-form-error")).to_contain_text("0 to 100")
    await screenshot(page, tmp_path, "laptop-flags-rollout")


# ------------------------------------------------------------------ screenshots


async def test_screenshots_at_laptop_and_phone_sizes(
    browser: Browser, base_url: str, http: aiohttp.ClientSession, expect: Any, tmp_path: Path
) -> None:
    """Every page at both sizes, for people to look at; also checks nothing overflows the
    phone's width (the tables scroll inside their own box)."""
    for size, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
        async with open_page(browser, base_url, viewport) as page:
            await enter_token(page, expect)
            await expect(page.get_by_test_id("total-users")).to_have_text("21")
            await expect(page.locator("#weekly-chart circle")).to_have_count(4)
            await screenshot(page, tmp_path, f"{size}-analytics")
            await assert_fits(page, f"{size} analytics")
            for view, ready in (
                ("goals", 'article.goal[data-goal="checkout"] tr.conversion'),
                ("predictions", "#ranking-table tbody tr"),
            ):
                await page.goto(f"/#{view}")
                await expect(page.locator(ready).first).to_be_visible()
                if view == "predictions":
                    await page.locator('#whatif-events input[value="feature_a"]').check()
                    await expect(page.locator("#whatif-cards .probability").first).to_be_visible()
                await screenshot(page, tmp_path, f"{size}-{view}")
                await assert_fits(page, f"{size} {view}")
            await page.goto("/#nudges")
            await expect(page.locator('#nudge-goal option[value="checkout"]')).to_have_count(1)
            await page.locator("#nudge-goal").select_option("checkout")
            await page.locator("#nudge-user").fill("u6")
            await page.get_by_role("button", name="Get nudges").click()
            await expect(page.locator("#nudges-table tbody tr").first).to_be_visible()
            await screenshot(page, tmp_path, f"{size}-nudges")
            await assert_fits(page, f"{size} nudges")
            await page.goto("/#flags")
            await expect(page.locator("#view-flags")).to_have_attribute("aria-busy", "false")
            await screenshot(page, tmp_path, f"{size}-flags")
            await assert_fits(page, f"{size} flags")
            await page.goto("/?namespace=shop#live")
            await expect(page.locator("#live-status")).to_contain_text("Live")
            async with http.post("/v0/analytics", json=screenshot_events(size)) as response:
                assert response.status == 204
            await expect(page.locator("#live-table tr.live-event")).to_have_count(6)
            await screenshot(page, tmp_path, f"{size}-live")
            await assert_fits(page, f"{size} live")
    assert len(list(tmp_path.glob("*.png"))) == 12


def screenshot_events(size: str) -> list[dict]:
    names = ["signup", "page_view", "feature_a", "page_view", "checkout", "signup"]
    return [
        {
            "event_name": name,
            "user_id": f"{size}-user{i}",
            "namespace": "shop",
        }
        for i, name in enumerate(names)
    ]
