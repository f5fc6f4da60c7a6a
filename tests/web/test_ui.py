"""Browser tests of the web UI in headless Chromium against real servers.

Two servers per module run: one with the experiment runner on (an experiment submitted through the
form really runs: trials arrive over SSE, the best model is exported and downloaded), one with it
off whose experiment and 600 trials are written through ``service.store`` (the table, the detail
panel, auth and the narrow layout, deterministic and fast).
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from service import store
from service.db import session_scope
from service.runner_db import discard_trials
from service.states import ExperimentState, TrialState
from tests.web.conftest import ui_server

ROWS = "#trials-table .vt-viewport .vt-row[data-number]:not([hidden])"
SUCCEEDED_ROWS = f"{ROWS} .badge[data-state=succeeded]"
N_BIG = 600


# -- a real run, submitted through the form ----------------------------------------------------------


@dataclass
class LiveRun:
    """What the browser saw while an experiment submitted through the form ran."""

    url: str
    experiment_id: int
    name: str
    state_at_ready: str
    rows_at_ready: int
    rows_at_end: int
    live_status_seen: bool
    same_document: bool
    chart_points_at_end: int
    export_sizes: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def runner_server() -> Iterator[tuple[str, Any]]:
    with ui_server(runner=True) as (url, app):
        yield url, app


def _fill_spec(page: Any, change: Any) -> None:
    spec = json.loads(page.input_value("#spec-editor"))
    change(spec)
    page.fill("#spec-editor", json.dumps(spec, indent=2))


@pytest.fixture(scope="module")
def live_run(runner_server: tuple[str, Any], browser_context: Any, ui_artifacts: Path) -> LiveRun:
    """Submit a 3-trial AGP search through the form and watch its page until the search ends."""
    url, _app = runner_server
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{url}/experiments/new")
        page.wait_for_selector("#spec-editor", timeout=60_000)
        page.select_option("#f-algorithm", "agp")
        page.fill("#f-name", "ui-live-run")

        def fast(spec: dict[str, Any]) -> None:
            spec["name"] = "ui-live-run"
            spec["algorithm"] = {"name": "agp", "total_iteration": 3}
            # a few finetune epochs per trial, so the search is still running when the page is ready
            # (with 0 epochs a quiet machine finishes all 3 trials before the page has loaded)
            spec["trial"].update(finetune_epochs=3, pretrain_epochs=0)

        page.wait_for_timeout(400)  # the name field writes itself into the spec (debounced)
        _fill_spec(page, fast)
        page.screenshot(path=ui_artifacts / "new-experiment.png", full_page=True)
        page.click("#submit-experiment")
        page.wait_for_url(re.compile(r"/experiments/\d+$"), timeout=60_000)
        experiment_id = int(page.url.rsplit("/", 1)[1])
        page.wait_for_selector("#experiment-page[data-ready]", timeout=30_000)
        state_at_ready = page.get_attribute(".exp-meta .badge", "data-state") or ""
        rows_at_ready = page.locator(SUCCEEDED_ROWS).count()
        page.evaluate("window.__sameDocument = true")
        live_seen = True
        try:
            page.wait_for_selector(".live-dot[data-status=live]", timeout=10_000)
        except Exception:
            live_seen = False
        page.wait_for_function(f"document.querySelectorAll({SUCCEEDED_ROWS!r}).length >= 3", timeout=120_000)
        # the charts follow the stream too (redrawn at most once a second)
        page.wait_for_selector("#chart-score[data-points='3']", timeout=10_000)
        page.screenshot(path=ui_artifacts / "experiment-live.png", full_page=True)
        page.wait_for_selector(".exp-meta .badge[data-state=succeeded]", timeout=60_000)
        page.wait_for_selector("#downloads a.download[data-format=pt2]", timeout=30_000)
        page.screenshot(path=ui_artifacts / "experiment-finished.png", full_page=True)
        return LiveRun(
            url=url, experiment_id=experiment_id, name="ui-live-run", state_at_ready=state_at_ready,
            rows_at_ready=rows_at_ready, rows_at_end=page.locator(SUCCEEDED_ROWS).count(),
            live_status_seen=live_seen, same_document=page.evaluate("window.__sameDocument === true"),
            chart_points_at_end=int(page.get_attribute("#chart-score", "data-points") or 0),
        )
    finally:
        page.close()
        assert not errors, f"uncaught errors in the page: {errors}"


def test_submitted_experiment_appears_in_the_list(live_run: LiveRun, new_page: Any, ui_artifacts: Path) -> None:
    page = new_page()
    page.goto(f"{live_run.url}/")
    page.fill("#filter-q", "ui-live")
    page.wait_for_url(re.compile(r"/\?q=ui-live$"))  # the filter is in the address, so a reload keeps it
    row = page.locator(f"#experiments-table tr[data-id='{live_run.experiment_id}']")
    row.wait_for()
    assert row.locator(".badge").get_attribute("data-state") == "succeeded"
    assert "3/3" in row.inner_text()
    page.screenshot(path=ui_artifacts / "experiments-list.png", full_page=True)
    page.fill("#filter-q", "no-such-experiment")
    page.get_by_text("No experiments match these filters.").wait_for()


def test_trials_appear_live_over_sse(live_run: LiveRun) -> None:
    assert live_run.state_at_ready in ("queued", "running")
    assert live_run.rows_at_ready < 3
    assert live_run.rows_at_end == 3
    assert live_run.live_status_seen, "the page never reported its event stream as live"
    assert live_run.same_document, "the page was reloaded; the rows must arrive through the event stream"


def test_charts_draw_every_finished_trial(live_run: LiveRun, new_page: Any, ui_artifacts: Path) -> None:
    assert live_run.chart_points_at_end == 3  # drawn live, from the event stream
    page = new_page()
    page.goto(f"{live_run.url}/experiments/{live_run.experiment_id}")
    page.wait_for_selector("#experiment-page[data-ready]")
    assert page.get_attribute("#chart-score", "data-points") == "3"
    assert page.get_attribute("#chart-pareto", "data-points") == "3"
    assert int(page.get_attribute("#chart-pareto", "data-front") or 0) >= 1
    assert int(page.get_attribute("#chart-sparsity", "data-points") or 0) >= 3  # the digits CNN's convolutions
    assert "3 finished trials" in (page.get_attribute("#chart-score .chart-plot", "aria-label") or "")
    painted = page.eval_on_selector("#chart-pareto canvas", "c => c.getContext('2d').getImageData(0, 0, c.width, c.height)"
                                    ".data.filter((v, i) => i % 4 === 3 && v > 0).length")
    assert painted > 1000  # axes, labels and markers are on the canvas
    page.locator(".charts-card").screenshot(path=ui_artifacts / "charts.png")


def _chart_point(page: Any, chart: str, number: int) -> dict[str, float] | None:
    """Where trial ``number`` is drawn in ``chart`` (page coordinates), or None when it is not in view."""
    return page.evaluate("async ([sel, n]) => (await import('/static/chart.js')).Chart.of(document.querySelector(sel)).position(n)",
                         [chart, number])


def test_download_best_model_as_pt2(live_run: LiveRun, new_page: Any, tmp_path: Path) -> None:
    page = new_page()
    page.goto(f"{live_run.url}/experiments/{live_run.experiment_id}")
    link = page.locator("#downloads a.download[data-format=pt2]")
    link.wait_for()
    for fmt in ("onnx", "safetensors", "masks"):
        assert page.locator(f"#downloads a.download[data-format={fmt}]").count() == 1
    with page.expect_download() as info:
        link.click()
    download = info.value
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    assert target.name.endswith("-model.pt2")
    assert target.stat().st_size > 0
    assert zipfile.is_zipfile(target), "a .pt2 file is a zip archive"
    with zipfile.ZipFile(target) as archive:
        assert any(name.endswith(".json") or "serialized" in name for name in archive.namelist())


def test_trial_detail_shows_metrics_and_log(live_run: LiveRun, new_page: Any) -> None:
    page = new_page()
    page.goto(f"{live_run.url}/experiments/{live_run.experiment_id}")
    page.wait_for_selector(ROWS)
    page.locator(ROWS).first.click()
    detail = page.locator("#trial-detail")
    detail.locator("pre.log").wait_for()
    assert "Trial #0" in detail.locator("h2").inner_text()
    assert "flops_ratio" in detail.inner_text()
    assert detail.locator("pre.log").inner_text().strip() not in ("", "(no log)")
    page.keyboard.press("Escape")
    assert detail.is_hidden()


def test_validation_error_is_shown_at_its_line(runner_server: tuple[str, Any], new_page: Any, ui_artifacts: Path) -> None:
    url, _ = runner_server
    page = new_page()
    page.goto(f"{url}/experiments/new")
    page.wait_for_selector("#spec-editor")
    _fill_spec(page, lambda spec: spec["pruner"]["config_list"][0].update(sparse_ratio=1.5))
    page.click("#submit-experiment")
    note = page.locator('.editor-note[data-path="pruner.config_list[0].sparse_ratio"]')
    note.wait_for()
    assert "1.5" in note.inner_text()
    line = int(note.get_attribute("data-line") or 0)
    text_line = page.input_value("#spec-editor").split("\n")[line - 1]
    assert '"sparse_ratio": 1.5' in text_line
    assert page.get_attribute("#spec-editor", "aria-invalid") == "true"
    assert "pruner.config_list[0].sparse_ratio" in page.inner_text("#spec-errors")
    assert page.url.endswith("/experiments/new")  # nothing was created
    page.screenshot(path=ui_artifacts / "validation-error.png", full_page=True)


def test_validation_error_of_a_form_field_is_shown_under_it(runner_server: tuple[str, Any], new_page: Any) -> None:
    url, _ = runner_server
    page = new_page()
    page.goto(f"{url}/experiments/new")
    page.wait_for_selector("#spec-editor")
    page.fill("#f-max-trials", "0")
    page.click("#submit-experiment")
    error = page.locator("#f-max-trials-error")
    error.wait_for()
    assert "greater than or equal to 1" in error.inner_text()
    assert page.get_attribute("#f-max-trials", "aria-invalid") == "true"


def test_yaml_editing_round_trips_through_the_server(runner_server: tuple[str, Any], new_page: Any) -> None:
    url, _ = runner_server
    page = new_page()
    page.goto(f"{url}/experiments/new")
    page.wait_for_selector("#spec-editor")
    before = json.loads(page.input_value("#spec-editor"))
    page.check("input[name=format][value=yaml]")
    page.wait_for_function("!document.querySelector('#spec-editor').value.trim().startsWith('{')")
    yaml_text = page.input_value("#spec-editor")
    assert "config_list:" in yaml_text and "sparse_ratio: 0.5" in yaml_text
    page.fill("#spec-editor", yaml_text.replace("sparse_ratio: 0.5", "sparse_ratio: 2"))
    page.click("#submit-experiment")
    note = page.locator('.editor-note[data-path="pruner.config_list[0].sparse_ratio"]')
    note.wait_for()
    line = int(note.get_attribute("data-line") or 0)
    assert page.input_value("#spec-editor").split("\n")[line - 1].strip() == "sparse_ratio: 2"
    page.check("input[name=format][value=json]")
    page.wait_for_function("document.querySelector('#spec-editor').value.trim().startsWith('{')")
    after = json.loads(page.input_value("#spec-editor"))
    before["pruner"]["config_list"][0]["sparse_ratio"] = 2
    assert after == before


# -- a server without the runner, its trials written through service.store -------------------------------


@dataclass
class StaticExperiment:
    url: str
    app: Any
    experiment_id: int
    best_number: int
    failed: list[int]


def _score(i: int) -> float:
    return ((i * 37) % N_BIG) / N_BIG


@pytest.fixture(scope="module")
def static_server() -> Iterator[StaticExperiment]:
    with ui_server(runner=False) as (url, app):
        failed = [i for i in range(N_BIG) if i % 97 == 5]
        with session_scope(app.state.session_factory) as s:
            exp = store.create_experiment(s, spec={"name": "big", "objective": {"metric": "accuracy"}}, name="big-table",
                                          algorithm="optuna", model="search.zoo:digits_cnn", max_trials=N_BIG)
            store.set_experiment_state(s, exp, ExperimentState.RUNNING)
            best = max((i for i in range(N_BIG) if i not in failed), key=_score)
            for i in range(N_BIG):
                ok = i not in failed
                store.record_trial_result(
                    s, exp.id, number=i, state=TrialState.SUCCEEDED if ok else TrialState.FAILED, generator_state=None,
                    params={"sparsity": round(i / N_BIG, 3)}, score=_score(i) if ok else None,
                    metrics={"accuracy": _score(i), "flops_ratio": 1 - i / (2 * N_BIG), "params_ratio": 1 - i / (2 * N_BIG),
                             "flops": 1e6, "params": 5e4} if ok else {},
                    achieved_sparsity={"conv1": 0.3, "conv2": 0.5} if ok else {}, duration_s=1.0 + i % 7,
                    error=None if ok else f"Traceback (most recent call last):\n  File \"x.py\"\nValueError: boom {i}",
                    **({"best_number": i, "best_score": _score(i), "best_flops_ratio": 0.5} if i == best else {}),
                )
            experiment_id = exp.id
        yield StaticExperiment(url, app, experiment_id, best, failed)


def test_large_trial_table_is_virtual_and_sorted_by_the_server(static_server: StaticExperiment, new_page: Any) -> None:
    page = new_page()
    page.goto(f"{static_server.url}/experiments/{static_server.experiment_id}")
    page.wait_for_selector("#experiment-page[data-ready]")
    assert page.get_attribute("#trials-table", "aria-rowcount") == str(N_BIG + 1)
    assert page.locator("#trials-table .vt-viewport .vt-row").count() < 60  # only the rows in view exist
    page.eval_on_selector("#trials-table .vt-viewport", "el => { el.scrollTop = el.scrollHeight; }")
    page.locator(f"{ROWS.replace(':not([hidden])', '')}[data-number='{N_BIG - 1}']").wait_for()
    page.click("#trials-table [data-sort=score] button")
    page.wait_for_function(
        "n => { const r = document.querySelector('#trials-table .vt-viewport .vt-row[data-index=\"0\"]');"
        " return r && r.dataset.number === String(n); }", arg=static_server.best_number)
    assert page.get_attribute("#trials-table [data-sort=score]", "aria-sort") == "descending"


def test_failed_trial_shows_its_traceback(static_server: StaticExperiment, new_page: Any) -> None:
    page = new_page()
    page.goto(f"{static_server.url}/experiments/{static_server.experiment_id}")
    number = static_server.failed[0]
    row = page.locator(f"{ROWS}[data-number='{number}']")
    row.wait_for()
    assert row.locator(".badge").get_attribute("data-state") == "failed"
    row.focus()
    page.keyboard.press("Enter")
    traceback = page.locator("#trial-detail pre.traceback")
    traceback.wait_for()
    assert f"ValueError: boom {number}" in traceback.inner_text()


def test_stream_resumes_after_the_server_closes_it(static_server: StaticExperiment, new_page: Any) -> None:
    app = static_server.app
    # the server ends every stream after 0.5 s and hints a 0.2 s reconnection delay (retry:);
    # the page reconnects with Last-Event-ID each time
    app.state.sse_max_s, app.state.sse_retry_ms = 0.5, 200
    try:
        page = new_page()
        page.goto(f"{static_server.url}/experiments/{static_server.experiment_id}")
        page.wait_for_selector(".live-dot[data-status=live]")
        page.wait_for_timeout(1500)  # at least two reconnections
        with session_scope(app.state.session_factory) as s:
            store.append_event(s, static_server.experiment_id, "log", {"level": "info", "message": "resume-check"})
            store.record_trial_result(s, static_server.experiment_id, number=N_BIG, state=TrialState.FAILED,
                                      generator_state=None, error="RuntimeError: late trial",
                                      events=[("trial_failed", {"number": N_BIG, "error": "RuntimeError: late trial"})])
        page.get_by_text("resume-check").wait_for()
        page.wait_for_function(f"document.querySelector('#trials-table').getAttribute('aria-rowcount') === '{N_BIG + 2}'")
        page.wait_for_timeout(1200)  # more reconnections: nothing may be delivered twice
        assert page.get_by_text("resume-check").count() == 1
        assert page.get_by_text("trial 600 failed").count() == 1
    finally:
        app.state.sse_max_s, app.state.sse_retry_ms = None, 3000


def test_narrow_window_has_no_horizontal_page_scroll(static_server: StaticExperiment, new_page: Any,
                                                     ui_artifacts: Path) -> None:
    page = new_page(width=390, height=844)
    for path, name in ((f"/experiments/{static_server.experiment_id}", "experiment-narrow.png"), ("/", "list-narrow.png")):
        page.goto(static_server.url + path)
        page.wait_for_selector("#experiment-page[data-ready], #experiments-table")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), path
        page.screenshot(path=ui_artifacts / name, full_page=True)


def test_token_is_asked_for_on_401_and_the_call_retried(static_server: StaticExperiment, new_page: Any,
                                                        ui_artifacts: Path) -> None:
    with session_scope(static_server.app.state.session_factory) as s:
        _, token = store.create_token(s, name="ui-test")
    page = new_page()
    page.goto(f"{static_server.url}/experiments/{static_server.experiment_id}")
    page.wait_for_selector("#experiment-page[data-ready]")
    page.get_by_role("button", name="Cancel").click()
    dialog = page.locator("#token-dialog")
    dialog.wait_for(state="visible")
    page.fill("#token-dialog-input", "ps_not_a_token")
    page.get_by_role("button", name="Save and retry").click()
    page.wait_for_function("document.querySelector('#token-dialog-message').textContent.includes('not accepted')")
    page.screenshot(path=ui_artifacts / "token-prompt.png")
    page.fill("#token-dialog-input", token)
    page.get_by_role("button", name="Save and retry").click()
    page.wait_for_selector(".exp-meta .badge[data-state=cancelling]")  # running: the runner finishes the cancel
    assert page.evaluate("localStorage.getItem('prunesearch.token')") == token
    assert page.inner_text("#token-state") == "token saved"
    with session_scope(static_server.app.state.session_factory) as s:
        assert store.get_experiment(s, static_server.experiment_id).state is ExperimentState.CANCELLING


def test_chart_point_hover_names_the_trial_and_click_opens_it(static_server: StaticExperiment, new_page: Any,
                                                               ui_artifacts: Path) -> None:
    page = new_page()
    page.goto(f"{static_server.url}/experiments/{static_server.experiment_id}")
    page.wait_for_selector("#experiment-page[data-ready]")
    best = static_server.best_number
    point = _chart_point(page, "#chart-pareto", best)
    assert point is not None
    page.mouse.move(point["x"], point["y"])
    tip = page.locator("#chart-pareto .chart-tip")
    tip.wait_for()
    assert f"trial {best}" in tip.inner_text()
    page.locator(".charts-card").screenshot(path=ui_artifacts / "chart-hover.png")
    page.mouse.click(point["x"], point["y"])
    page.wait_for_function("n => document.querySelector('#trial-detail-title').textContent === `Trial #${n}`", arg=best)


def test_dragging_zooms_a_chart_and_reset_or_double_click_zooms_out(static_server: StaticExperiment,
                                                                     new_page: Any) -> None:
    page = new_page()
    page.goto(f"{static_server.url}/experiments/{static_server.experiment_id}")
    page.wait_for_selector("#experiment-page[data-ready]")
    reset = page.locator("#chart-score .chart-reset")
    box = page.locator("#chart-score .chart-plot").bounding_box()
    assert box is not None

    def zoom_into_the_middle() -> None:
        page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.7, steps=5)
        page.mouse.up()
        reset.wait_for(state="visible")
        assert _chart_point(page, "#chart-score", 0) is None  # trial 0 is at the left edge: out of view

    zoom_into_the_middle()
    reset.click()
    reset.wait_for(state="hidden")
    assert _chart_point(page, "#chart-score", 0) is not None
    zoom_into_the_middle()
    page.mouse.dblclick(box["x"] + box["width"] * 0.5, box["y"] + 4)
    reset.wait_for(state="hidden")
    assert _chart_point(page, "#chart-score", 0) is not None


def test_keyboard_walks_a_chart_and_enter_opens_the_trial(static_server: StaticExperiment, new_page: Any) -> None:
    page = new_page()
    page.goto(f"{static_server.url}/experiments/{static_server.experiment_id}")
    page.wait_for_selector("#experiment-page[data-ready]")
    page.focus("#chart-score .chart-plot")
    announced = page.locator("#chart-score [aria-live]")
    page.keyboard.press("Home")
    assert announced.inner_text().startswith("trial 0, accuracy ")
    page.keyboard.press("ArrowRight")
    assert announced.inner_text().startswith("trial 1, accuracy ")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#trial-detail-title').textContent === 'Trial #1'")


def test_legend_hides_and_shows_a_series(static_server: StaticExperiment, new_page: Any) -> None:
    page = new_page()
    page.goto(f"{static_server.url}/experiments/{static_server.experiment_id}")
    page.wait_for_selector("#experiment-page[data-ready]")
    key = page.locator("#chart-pareto .chart-key", has_text="trials")
    assert _chart_point(page, "#chart-pareto", 0) is not None  # trial 0 (score 0) is not on the Pareto front
    key.click()
    assert key.get_attribute("aria-pressed") == "false"
    assert _chart_point(page, "#chart-pareto", 0) is None
    key.click()
    assert key.get_attribute("aria-pressed") == "true"
    assert _chart_point(page, "#chart-pareto", 0) is not None


def test_chart_ticks_and_pareto_front_are_computed_right(static_server: StaticExperiment, new_page: Any) -> None:
    page = new_page()
    page.goto(f"{static_server.url}/")
    got = page.evaluate("""async () => {
      const p = await import('/static/chart_paint.js');
      const c = await import('/static/charts.js');
      return {
        unit: p.niceTicks(0, 1, 5).values,
        trials: p.niceTicks(-400, 10400, 3, true).values,
        flops: p.niceTicks(0.0166, 0.919, 3).values,
        narrow: p.niceTicks(0.5, 0.9, 1).values,
        ints: p.niceTicks(0, 3, 10, true).values,
        labels: [p.tickLabel(0.25, 0.05, 'pct'), p.tickLabel(10000, 5000, 'int'), p.tickLabel(0.3, 0.1),
                 p.tickLabel(0.0025, 0.0005, 'pct')],
        front: c.paretoFront([0.5, 0.2, 0.9, 0.2, 0.4], [0.8, 0.6, 0.95, 0.7, 0.7], 'maximize'),
        frontMin: c.paretoFront([0.5, 0.2, 0.9, null], [0.1, 0.3, 0.05, 0.0], 'minimize'),
        best: c.bestSoFar([3, 1, 2, 0], 'minimize'),
      };
    }""")
    assert got["unit"] == [0, 0.2, 0.4, 0.6, 0.8, 1]
    assert got["trials"] == [0, 5000, 10000]
    assert got["flops"] == [0.2, 0.4, 0.6, 0.8]
    assert got["narrow"] == [0.6, 0.8]  # one tick would not show the scale: the step shrinks to give two
    assert got["ints"] == [0, 1, 2, 3]  # trial numbers: no fractional ticks
    assert got["labels"] == ["25%", "10,000", "0.3", "0.25%"]
    assert got["front"] == [3, 0, 2]  # cheapest first; a trial no better than a cheaper one is dominated
    assert got["frontMin"] == [1, 0, 2]  # minimize: lower is better; no FLOPs ratio, no place on the front
    assert got["best"] == [3, 1, 1, 0]


def test_a_discarded_trial_turns_discarded_live_with_its_reason(static_server: StaticExperiment, new_page: Any) -> None:
    """What the runner writes when NetAdapt discards a task it ran ahead of a decision that went the other way."""
    app, exp_id = static_server.app, static_server.experiment_id
    page = new_page()
    page.goto(f"{static_server.url}/experiments/{exp_id}")
    page.wait_for_selector(".live-dot[data-status=live]")
    page.locator(f"{ROWS}[data-number='1'] .badge[data-state=succeeded]").wait_for()
    reason = "ran ahead from task 0, but task 2 won iteration 1"
    with session_scope(app.state.session_factory) as s:
        store.append_events(s, exp_id, discard_trials(s, exp_id, {1: reason}))
    badge = page.locator(f"{ROWS}[data-number='1'] .badge")
    page.locator(f"{ROWS}.discarded[data-number='1'] .badge[data-state=discarded]").wait_for()
    assert badge.get_attribute("data-state") == "discarded"
    assert "discarded" in (page.locator(f"{ROWS}[data-number='1']").get_attribute("class") or "")  # muted row
    activity = page.get_by_text(f"trial 1 discarded: {reason}")
    activity.wait_for()
    assert activity.count() == 1  # in the activity list
    state_cell = "#trials-table .vt-row[data-number='1'] .col-state"
    page.wait_for_function("([sel, t]) => document.querySelector(sel).title === t",
                           arg=[state_cell, f"discarded: {reason}"])  # the reason on hover, once the row is read again
    assert page.locator(state_cell).get_attribute("title") == f"discarded: {reason}"
