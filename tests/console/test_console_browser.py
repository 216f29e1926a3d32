"""The console in headless chromium: every page loads with local assets only and no script
error; clicking through reaches a version diff and a model's quality chart; a screenshot is
taken. Values shown are checked against the SDK and the evaluation store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.console.conftest import ADMIN, READER, Visit

PAGES = {
    "/ui/": "Project ui",
    "/ui/registry": "Registry version 2",
    "/ui/registry/feature_view/item_pop": "feature view item_pop",
    "/ui/diff": "Registry diff: version 1 → 2",
    "/ui/lineage": "Lineage",
    "/ui/freshness": "Freshness of the online views",
    "/ui/models": "Models",
    "/ui/models/taste": "Model taste",
    "/ui/models/ctx": "Model ctx",
}


@pytest.mark.parametrize("path", list(PAGES))
def test_every_page_loads_with_local_assets_only(visit: Visit, path: str) -> None:
    response = visit.page.goto(visit.base + path)
    assert response is not None and response.status == 200
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert PAGES[path] in visit.page.inner_text("h1")
    visit.page.wait_for_load_state("networkidle")
    assert visit.foreign_requests() == []
    assert visit.problems == []
    # The stylesheet and uPlot came from this server.
    assert any(u.endswith("/ui/static/console.css") for u in visit.requests)


def test_click_from_the_registry_to_a_field_level_version_diff(visit: Visit) -> None:
    page = visit.page
    page.goto(visit.base + "/ui/registry")
    assert page.locator("#versions td.message").first.inner_text() == "serve item popularity for two hours"
    page.click("#versions a.diff-link:has-text('diff with 1')")
    page.wait_for_url(re.compile(r".*/ui/diff\?a=1&b=2$"))
    assert "serve item popularity for two hours" in page.inner_text("#apply-messages")
    section = page.locator("section.change[data-object='feature_view/item_pop']")
    assert section.locator(".badge").inner_text() == "changed"
    row = section.locator("table.field-diff tbody tr")
    assert row.count() == 1
    assert [row.locator("td").nth(i).inner_text() for i in range(3)] == ["ttl", "1h", "2h"]
    # Nothing else changed between the two versions.
    assert page.locator("section.change").count() == 1
    # Back to an object at the old version.
    page.goto(visit.base + "/ui/registry/feature_view/item_pop?version=1")
    fields = {
        r.locator("td").nth(0).inner_text(): r.locator("td").nth(1).inner_text()
        for r in page.locator("#object-fields tbody tr").all()
    }
    assert fields["ttl"] == "1h" and fields["source"] == "src"


def test_lineage_picture_and_what_the_planned_change_affects(visit: Visit) -> None:
    page = visit.page
    page.goto(visit.base + "/ui/lineage")
    svg = page.locator("svg#lineage")
    assert svg.is_visible()
    nodes = {(n.get_attribute("data-kind"), n.get_attribute("data-name")) for n in page.locator("svg#lineage g.node").all()}
    assert nodes == {("source", "src"), ("feature_view", "item_vec"), ("feature_view", "item_pop"),
                     ("feature_view", "user_stats"), ("model", "taste"), ("model", "explore"), ("model", "ctx")}
    assert page.locator("svg#lineage path.edge").count() == 3 + 2 + 1 + 2  # src->views, taste, explore, ctx
    affected = {n.get_attribute("data-name") for n in page.locator("svg#lineage g.node[data-affected='true']").all()}
    assert affected == {"user_stats", "ctx"}  # the unapplied feature in user_stats reaches ctx only
    assert "~ feature_view user_stats" in page.inner_text("#plan")
    box = svg.bounding_box()
    assert box is not None and box["width"] > 600 and box["height"] > 100
    page.click("svg#lineage g.node[data-name='ctx']")
    page.wait_for_url(re.compile(r".*/ui/registry/model/ctx$"))
    assert "ctx" in page.inner_text("h1")


def test_freshness_per_view(visit: Visit) -> None:
    page = visit.page
    page.goto(visit.base + "/ui/freshness")
    rows = {r.get_attribute("data-view"): r for r in page.locator("#freshness tbody tr").all()}
    assert set(rows) == {"item_vec", "item_pop", "user_stats"}
    # The test data was written "now": ttl 2h and 1h not passed, item_vec never expires.
    for view, ttl in (("item_vec", "none"), ("item_pop", "2h"), ("user_stats", "1h")):
        cells = [c.inner_text() for c in rows[view].locator("td").all()]
        assert cells[3] == ttl and cells[4] == "fresh", (view, cells)
        assert cells[1].endswith("UTC")


def test_model_quality_chart_and_a_vs_b(visit: Visit, console_store, tmp_path: Path) -> None:
    from featurestore.evaluation import compare_versions

    page = visit.page
    page.goto(visit.base + "/ui/models")
    page.click("#models a.model-link:has-text('taste')")
    page.wait_for_url(re.compile(r".*/ui/models/taste$"))
    chart = page.locator("#quality-chart")
    chart.locator("canvas").wait_for()
    assert chart.get_attribute("data-rendered") == "true"
    assert chart.get_attribute("data-series") == "4"  # v1 and v2, personalised and average user
    legend = page.locator("#quality-chart .u-legend").inner_text()
    for label in ("v1 personalised", "v2 personalised", "v1 average user", "v2 average user"):
        assert label in legend
    canvas = chart.locator("canvas").bounding_box()
    assert canvas is not None and canvas["width"] >= 480 and canvas["height"] > 200
    # A against B, every slice: the table shows what the evaluation store answers.
    page.select_option("#compare-form select[name=a]", "1")
    page.select_option("#compare-form select[name=b]", "2")
    page.click("#compare-form button")
    page.wait_for_url(re.compile(r".*a=1&b=2.*"))
    expected = compare_versions(console_store, "taste", 1, 2, window="30d", metrics=["rmse", "mean_prediction"]).to_pylist()
    shown = [[c.inner_text() for c in r.locator("td").all()] for r in page.locator("#compare tbody tr").all()]
    assert len(shown) == len(expected)
    first = next(r for r in expected if r["slice"] == "all" and r["metric"] == "rmse")
    assert ["all", "rmse", f"{first['a']:.4f}", f"{first['b']:.4f}"] in [row[:4] for row in shown]
    assert {row[0] for row in shown} >= {"all", "users=known", "users=new", "items=known", "items=new", "device=web"}
    # A slice of the chart.
    page.select_option("#quality-form select[name=slice]", "device=web")
    page.click("#quality-form button")
    page.locator("#quality-chart canvas").wait_for()
    assert "slice device=web" in page.inner_text("h2 small")
    shot = tmp_path / "model-quality.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert visit.problems == []


def test_signing_in_needs_an_admin_token(browser, console_url: str) -> None:
    v = Visit(browser, console_url)
    try:
        v.page.goto(console_url + "/ui/models")
        v.page.wait_for_url(re.compile(r".*/ui/login\?next=%2Fui%2Fmodels$"))
        v.page.fill("#token", READER)
        v.page.click("#login-form button")
        v.page.locator("#login-error").wait_for()
        assert "lacks the `admin` role" in v.page.inner_text("#login-error")
        v.page.fill("#token", "not-a-token")
        v.page.click("#login-form button")
        v.page.wait_for_function("document.getElementById('login-error').textContent.includes('unknown token')")
        assert v.context.cookies() == []
        v.sign_in(path="/ui/models")
        v.page.wait_for_url(console_url + "/ui/models")
        cookie = v.context.cookies()[0]
        assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/ui")
        # A session credential derived from the token, not the token: no API accepts it.
        assert cookie["value"].startswith("s1.") and ADMIN not in cookie["value"]
    finally:
        v.context.close()



def test_the_api_docs_render_from_the_servers_own_files(browser, console_url: str) -> None:
    """/docs (Swagger UI) draws every endpoint with no request leaving the server: it was blank
    on machines without internet access when FastAPI loaded it from a CDN."""
    v = Visit(browser, console_url)
    try:
        v.page.goto(console_url + "/docs")
        v.page.wait_for_selector(".opblock", timeout=15_000)
        paths = v.page.locator(".opblock-summary-path").all_inner_texts()
        assert {"/features", "/predict", "/feedback", "/eval"} <= {p.strip() for p in paths}, paths
        assert v.foreign_requests() == [] and v.problems == []
    finally:
        v.context.close()


@pytest.mark.parametrize("path", ["/ui/models/no_such_model", "/ui/registry?version=999", "/ui/lineage",
                                  "/ui/models/taste?window=bogus"])
def test_an_anonymous_request_learns_nothing(console_url: str, path: str) -> None:
    """Sent to sign in before the page does any work: not a 404 naming what exists, not a 400."""
    import httpx

    response = httpx.get(console_url + path, follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"].startswith("/ui/login?next=%2Fui%2F")
    assert "no_such_model" not in response.text and "versions are" not in response.text


def test_the_session_cookie_is_no_bearer_token(console_url: str) -> None:
    import httpx

    login = httpx.post(console_url + "/ui/login", json={"token": ADMIN})
    session = login.cookies.get("featurestore_console")
    assert session and session.startswith("s1.")
    assert httpx.get(console_url + "/ui/models", cookies={"featurestore_console": session}).status_code == 200
    # The same value as a bearer token on the API: refused.
    assert httpx.get(console_url + "/eval", params={"model": "taste"},
                     headers={"Authorization": f"Bearer {session}"}).status_code == 401
