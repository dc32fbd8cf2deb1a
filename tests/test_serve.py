"""`frugal serve` over real HTTP: `python -m frugal.cli serve` under uvicorn on loopback, serving the champion that a real
smoke pipeline run registered, with keys in the real accounts store (SQLite). One pipeline run and one main server per module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_helpers import (
    FLUSH_MS,
    MAX_BODY,
    MAX_TEXTS,
    NAME,
    Server,
    billed,
    load,
    new_champion_version,
    overrides,
    raw_http,
    registry,
    sample_key,
    scrape,
    worker_pids,
)

from frugal.accounts.store import Accounts, current_month
from frugal.config.serve import load_settings

pytestmark = pytest.mark.slow

# One variant and two epochs: the server needs a registered champion, not a good one (this keeps the module's run short).
SMOKE = ["compress.variants={onnx-int8: {method: onnx_int8}}", "finetune.epochs=2"]
DYNAMIC_INT8_ATOL = 2e-3  # the same text in another batch, through dynamic int8 (see the batching test)


@pytest.fixture(scope="module")
def smoke_run(prefect_server: None, project: Path):
    from flows.pipeline import run

    return run(config="smoke", overrides=SMOKE, project_dir=str(project))


@pytest.fixture(scope="module")
def accounts(smoke_run, project: Path) -> Iterator[Accounts]:
    """The store the servers use (serve.yaml's database_url is null: <project>/serve.db), opened by the test to make keys."""
    store = Accounts(f"sqlite:///{project / 'serve.db'}", load_settings("serve", overrides(project, 1, 1)).plans)
    store.migrate()
    yield store
    store.close()


@pytest.fixture(scope="module")
def server(accounts: Accounts, project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(project, reload_seconds=0.5, log=tmp_path_factory.mktemp("logs") / "serve.log")
    yield running
    running.stop()


@pytest.fixture
def key(accounts: Accounts) -> str:
    return accounts.create_key("test", "test")[0]


def test_predictions_equal_the_bundles_in_process_predictions(server: Server, key: str, project: Path) -> None:
    from frugal.runtime import load_predictor

    texts = ["driverless cars are great", "never getting in one", "the bus was late again", "ok"]
    answer = server.predict(key, texts)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert answer.headers["x-request-id"] == body["request_id"]
    client = registry(project)
    bundle = Path(client.get_model_version_download_uri(NAME, body["model_version"]).removeprefix("file://"))
    predictor = load_predictor(bundle / "artifacts" / "model")
    expected = predictor.predict_proba(texts)
    got = np.array([[p["probabilities"][label] for label in predictor.labels] for p in body["predictions"]])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert [p["label"] for p in body["predictions"]] == predictor.predict(texts)
    assert not any(p["truncated"] for p in body["predictions"])


def test_a_text_longer_than_max_length_is_flagged_truncated(server: Server, key: str) -> None:
    answer = server.predict(key, ["short text", "word " * 500])
    assert answer.status_code == 200, answer.text
    assert [p["truncated"] for p in answer.json()["predictions"]] == [False, True]


def test_model_figures_are_the_registry_versions_measured_values(server: Server, key: str, project: Path) -> None:
    info = server.http.get("/v1/model", headers={"X-API-Key": key}).json()
    client = registry(project)
    version = client.get_model_version(NAME, info["version"])
    metrics = client.get_run(version.tags["variant_run_id"]).data.metrics
    assert info["variant"] == version.tags["variant"] and info["source"] == f"models:/{NAME}/{info['version']}"
    assert info["metrics"] == {k: metrics[k] for k in ("macro_f1", "f1_retained", "usd_per_1m", "latency_p50_ms", "throughput_per_s")}
    assert info["metrics"]["usd_per_1m"] == float(version.tags["usd_per_1m"]) and info["loaded_at"]


def test_requests_are_metered_and_feedback_cites_them(server: Server, key: str, accounts: Accounts) -> None:
    texts = ["love it", "hate it", "meh"]
    body = server.predict(key, texts).json()
    usd_per_1m = server.http.get("/v1/model", headers={"X-API-Key": key}).json()["metrics"]["usd_per_1m"]
    key_id = accounts.authenticate(key).key_id
    time.sleep(FLUSH_MS / 1000 + 0.3)  # the bill is written off the request's path, within the flush interval
    (row,) = [u for u in accounts.usage(current_month()) if u.key_id == key_id]
    assert (row.texts, row.requests) == (3, 2)  # /v1/model counts toward the rate, not the quota
    assert row.cost_usd == pytest.approx(3 / 1e6 * usd_per_1m) and row.billed_usd == pytest.approx(3 * 0.05 / 1000)

    headers = {"X-API-Key": key}
    cited = server.http.post("/v1/feedback", json={"request_id": body["request_id"], "index": 2, "label": "neutral"}, headers=headers)
    assert cited.status_code == 201, cited.text
    assert server.http.post("/v1/feedback", json={"text": "fine", "label": "positive"}, headers=headers).status_code == 201
    assert [(f.text, f.label) for f in accounts.feedback_rows() if f.key_id == key_id] == [("meh", "neutral"), ("fine", "positive")]
    wrong_label = server.http.post("/v1/feedback", json={"text": "fine", "label": "great"}, headers=headers)
    assert wrong_label.status_code == 422 and "great" in wrong_label.json()["error"]
    unknown = server.http.post("/v1/feedback", json={"request_id": "nope", "label": "neutral"}, headers=headers)
    assert unknown.status_code == 404 and unknown.json()["fix"]


def test_oversized_body_with_content_length_is_413_before_it_is_sent(server: Server, key: str) -> None:
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 * MAX_BODY}\r\n\r\n").encode()  # fmt: skip
    answer, _ = raw_http(server.port, head)  # no body byte is ever sent: a server that waited for it would hang here
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_oversized_chunked_body_is_413_once_the_limit_streams_past(server: Server, key: str) -> None:
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()  # fmt: skip
    chunks = (b'{"texts": ["', *[b"x" * 8192] * 64)  # 512 KiB, far over the limit: the server must not wait for the end
    answer, sent = raw_http(server.port, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < len(chunks)  # answered while the body was still streaming in
    assert server.http.get("/healthz").status_code == 200


def test_more_than_max_texts_is_422(server: Server, key: str) -> None:
    answer = server.predict(key, ["a"] * (MAX_TEXTS + 1))
    assert answer.status_code == 422 and f"limit is {MAX_TEXTS}" in answer.json()["error"]


def test_malformed_json_is_422(server: Server, key: str) -> None:
    answer = server.http.post("/v1/predict", content=b'{"texts": ["a",', headers={"X-API-Key": key})
    assert answer.status_code == 422 and answer.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize(("body", "field"), [({"texts": "one text"}, ["body", "texts"]), ({"texts": ["a", 7]}, ["body", "texts", 1]),
                                             ({"text": ["a"]}, ["body", "texts"])])  # fmt: skip
def test_wrong_types_are_422_naming_the_field(server: Server, key: str, body: dict, field: list) -> None:
    answer = server.http.post("/v1/predict", json=body, headers={"X-API-Key": key})
    assert answer.status_code == 422 and field in [e["loc"] for e in answer.json()["detail"]]


def test_missing_key_is_401(server: Server) -> None:
    answer = server.http.post("/v1/predict", json={"texts": ["a"]})
    assert answer.status_code == 401 and answer.json()["fix"] and answer.headers["www-authenticate"] == "Bearer"


def test_unknown_key_is_401(server: Server) -> None:
    assert server.predict("not-a-key", ["a"]).status_code == 401
    assert server.http.get("/v1/model", headers={"X-API-Key": "not-a-key"}).status_code == 401


def test_revoked_key_is_401(server: Server, accounts: Accounts) -> None:
    plaintext, info = accounts.create_key("soon-gone", "test")
    assert server.predict(plaintext, ["a"]).status_code == 200
    accounts.revoke(info.key_id)
    answer = server.predict(plaintext, ["a"])
    assert answer.status_code == 401 and "revoked" in answer.json()["error"]


def test_over_the_rate_is_429_with_retry_after(server: Server, accounts: Accounts) -> None:
    plaintext, _ = accounts.create_key("bursty", "burst")  # 2 requests per minute
    answers = [server.predict(plaintext, ["a"]) for _ in range(5)]  # 5 in a second: at most one minute boundary inside
    limited = [a for a in answers if a.status_code == 429]
    assert limited and {a.status_code for a in answers} == {200, 429}
    assert 1 <= int(limited[0].headers["retry-after"]) <= 60 and "Rate limit" in limited[0].json()["error"]


def test_over_the_monthly_quota_is_429(server: Server, accounts: Accounts) -> None:
    plaintext, _ = accounts.create_key("thrifty", "capped")  # 3 texts a month
    assert server.predict(plaintext, ["a", "b"]).status_code == 200
    answer = server.predict(plaintext, ["c", "d"])
    assert answer.status_code == 429 and "Monthly quota" in answer.json()["error"] and int(answer.headers["retry-after"]) > 0
    assert server.predict(plaintext, ["c"]).status_code == 200  # exactly the quota is fine


def test_metrics_count_requests_texts_and_latency(server: Server, key: str) -> None:
    before = scrape(server)
    for _ in range(3):
        server.predict(key, ["a", "b"])
    server.predict("bad", ["a"])
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return after.get(sample_key(name, **labels), 0) - before.get(sample_key(name, **labels), 0)

    assert delta("frugal_requests_total", endpoint="/v1/predict", status="200") == 3
    assert delta("frugal_requests_total", endpoint="/v1/predict", status="401") == 1
    assert delta("frugal_texts_total") == 6 and delta("frugal_request_seconds_count", endpoint="/v1/predict") == 4
    assert after[sample_key("frugal_model_ready")] == 1


def test_an_unexpected_failure_is_a_counted_500_and_the_server_carries_on(server: Server, key: str, project: Path) -> None:
    import sqlite3

    def rename(old: str, new: str) -> None:
        with sqlite3.connect(project / "serve.db") as db:
            db.execute(f"ALTER TABLE {old} RENAME TO {new}")

    errors = sample_key("frugal_errors_total", endpoint="/v1/predict")
    before = scrape(server).get(errors, 0)
    rename("minute_requests", "minute_requests_away")  # a real fault on the request's path: admission lost its table
    try:
        answer = server.predict(key, ["a"])
    finally:
        rename("minute_requests_away", "minute_requests")
    assert answer.status_code == 500 and answer.json()["error"].startswith("Internal error") and answer.headers["x-request-id"]
    assert scrape(server)[errors] == before + 1
    assert server.predict(key, ["a"]).status_code == 200


def test_a_new_champion_is_served_with_no_failed_request(server: Server, key: str, project: Path) -> None:
    old = server.version()
    failures, versions, stop = [], set(), threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                answer = http.post("/v1/predict", json={"texts": ["still there?"]}, headers={"X-API-Key": key})
                if answer.status_code == 200:
                    versions.add(answer.json()["model_version"])
                else:
                    failures.append(answer.text)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        time.sleep(0.5)
        new = new_champion_version(project)
        deadline = time.time() + 30
        while server.version() != new and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # keep requests going across the swap
    finally:
        stop.set()
        thread.join()
    assert server.version() == new != old
    assert failures == [] and {old, new} <= versions


def test_keys_quotas_and_sighup_reload_across_a_restart(accounts: Accounts, project: Path, tmp_path: Path) -> None:
    """Keys, revocations and used quota live in the database, not the process; SIGHUP checks the alias at once."""
    capped, _ = accounts.create_key("restarts", "capped")
    gone, info = accounts.create_key("revoked-before-restart", "test")
    accounts.revoke(info.key_id)
    first = Server(project, reload_seconds=3600, log=tmp_path / "first.log")
    try:
        assert first.predict(capped, ["a", "b"]).status_code == 200
    finally:
        first.stop()
    second = Server(project, reload_seconds=3600, log=tmp_path / "second.log")
    try:
        assert second.predict(capped, ["c", "d"]).status_code == 429  # 2 of 3 texts were used before the restart
        assert second.predict(capped, ["c"]).status_code == 200
        assert second.predict(gone, ["a"]).status_code == 401
        old, new = second.version(), new_champion_version(project)
        time.sleep(1)
        assert second.version() == old  # an hour between polls: only the signal can bring the new version
        second.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 30
        while second.version() != new and time.time() < deadline:
            time.sleep(0.1)
        assert second.version() == new
    finally:
        second.stop()


def test_a_bundle_folder_carries_its_measured_figures(server: Server, project: Path) -> None:
    """Served from a folder (the image does), the champion is still metered with the usd_per_1m evaluation measured."""
    from frugal.serve.source import FolderSource

    client = registry(project)
    version = client.get_model_version_by_alias(NAME, "champion")
    bundle = Path(client.get_model_version_download_uri(NAME, version.version).removeprefix("file://"))
    release = FolderSource(bundle).fetch("v")
    metrics = client.get_run(version.tags["variant_run_id"]).data.metrics
    assert release.variant == version.tags["variant"] and release.figures["usd_per_1m"] == metrics["usd_per_1m"]


def test_the_bundle_carries_only_the_leaf_runtime_and_serves_from_it(server: Server, project: Path, tmp_path: Path) -> None:
    """The registered bundle loads and predicts in a fresh process with only its own code/ for `frugal`."""
    from frugal.runtime.registry import formats_of

    client = registry(project)
    version = client.get_model_version_by_alias(NAME, "champion").version
    bundle = Path(client.get_model_version_download_uri(NAME, version).removeprefix("file://"))
    code = bundle / "code" / "frugal"
    carried = {p.relative_to(code).as_posix() for p in code.rglob("*.py")}
    # What the format registry says serving this champion needs, and nothing else: no other format's module, no ml/ or tasks/.
    needed = {f"runtime/formats/{fmt.module.rsplit('.', 1)[1]}.py" for fmt in formats_of(bundle / "artifacts" / "model")}
    assert {p for p in carried if p.startswith("runtime/formats/") and not p.endswith("__init__.py")} == needed
    assert carried == {"__init__.py", "bundle/__init__.py", "bundle/pyfunc.py", "bundle/serve_model.py", "runtime/__init__.py",
                       "runtime/manifest.py", "runtime/predictor.py", "runtime/generator.py", "runtime/registry.py",
                       "runtime/formats/__init__.py", *needed}
    script = textwrap.dedent(f"""
        import json, sys
        # Only the bundle's code may provide frugal: drop the editable install's finder of the repo's package.
        sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
        import mlflow.pyfunc, pandas as pd
        out = mlflow.pyfunc.load_model({str(bundle)!r}).predict(pd.DataFrame({{"text": ["great", "awful"]}}))
        mods = {{n: m.__file__ for n, m in sys.modules.items() if n.split(".")[0] in ("frugal", "tasks", "flows")}}
        print(json.dumps({{"labels": list(out["label"]), "modules": mods}}))
    """)  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["labels"]) == 2 and set(result["labels"]) <= {"negative", "neutral", "positive"}
    assert result["modules"] and all(Path(f).is_relative_to(bundle / "code") for f in result["modules"].values()), result["modules"]


def test_concurrent_requests_of_different_sizes_each_get_the_in_process_predictions(server: Server, key: str, project: Path) -> None:
    """Adaptive batching answers concurrent requests together; each still gets exactly its own texts' predictions, in order."""
    from frugal.runtime import load_predictor

    words = ["great", "awful", "the bus was late again", "fine I guess", "never again", "word " * 300, "ok", "love the new app"]
    requests = [[words[(r + i) % len(words)] for i in range(1 + r % MAX_TEXTS)] for r in range(48)]
    before = scrape(server)

    def post(texts: list[str]) -> dict:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            answer = http.post("/v1/predict", json={"texts": texts}, headers={"X-API-Key": key})
        assert answer.status_code == 200, answer.text
        return answer.json()

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(post, requests))
    after = scrape(server)
    client = registry(project)
    bundle = Path(client.get_model_version_download_uri(NAME, answers[0]["model_version"]).removeprefix("file://"))
    predictor = load_predictor(bundle / "artifacts" / "model")
    for texts, body in zip(requests, answers, strict=True):
        got = np.array([[p["probabilities"][label] for label in predictor.labels] for p in body["predictions"]])
        # Dynamic int8 (this champion) quantizes activations per batch, so a text's probabilities move a little with its
        # batch-mates (2e-4 measured), offline as much as served; another text's answer would be off by far more.
        np.testing.assert_allclose(got, predictor.predict_proba(texts), atol=DYNAMIC_INT8_ATOL)
        assert [p["truncated"] for p in body["predictions"]] == [len(t) > 1000 for t in texts]  # exact, position by position
    batches = after[sample_key("frugal_batch_texts_count")] - before.get(sample_key("frugal_batch_texts_count"), 0)
    assert 1 <= batches <= len(requests)


@pytest.fixture(scope="module")
def two_workers(accounts: Accounts, project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(project, reload_seconds=3600, log=tmp_path_factory.mktemp("logs") / "workers.log", extra=("workers=2",))
    running.all_ready()
    yield running
    if running.proc.poll() is None:
        running.stop()


def test_the_quota_is_exact_across_two_workers(two_workers: Server, accounts: Accounts) -> None:
    """20 requests at once against a quota of 5 texts, answered by two processes with batching: exactly 5 are admitted."""
    plaintext, _ = accounts.create_key("five", "five")
    barrier = threading.Barrier(20)

    def one(_: int) -> int:
        with httpx.Client(base_url=two_workers.url, timeout=60) as http:
            barrier.wait()
            return http.post("/v1/predict", json={"texts": ["a"]}, headers={"X-API-Key": plaintext}).status_code

    with ThreadPoolExecutor(20) as pool:
        statuses = sorted(pool.map(one, range(20)))
    assert statuses == [200] * 5 + [429] * 15


def test_a_killed_worker_loses_at_most_its_last_flush_of_bills(two_workers: Server, accounts: Accounts) -> None:
    """SIGKILL of a worker under load: what it had answered but not yet written is lost, never more than the requests
    answered in the last flush interval (plus one write); every admitted text was counted against the quota before."""
    plaintext, info = accounts.create_key("killed", "test")
    answered: list[tuple[str, float, int]] = []
    loader = threading.Thread(target=load, args=(two_workers, plaintext, 4.0, answered))
    loader.start()
    time.sleep(2.0)
    victim = worker_pids(two_workers)[0]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    loader.join()
    time.sleep(FLUSH_MS / 1000 + 0.5)  # the surviving workers' last bills
    ids, texts_counted = billed(accounts, info.key_id)
    lost = [(rid, when) for rid, when, _ in answered if rid not in ids]
    assert answered and all(killed_at - (FLUSH_MS / 1000 + 0.5) <= when <= killed_at + 0.5 for _, when in lost), (lost, killed_at)
    assert texts_counted >= sum(n for _, _, n in answered)  # the quota saw every text it answered
    assert two_workers.http.get("/healthz").status_code == 200  # uvicorn started a new worker; the other served on


def test_sigterm_under_load_loses_no_bill(accounts: Accounts, project: Path, tmp_path: Path) -> None:
    plaintext, info = accounts.create_key("terminated", "test")
    running = Server(project, reload_seconds=3600, log=tmp_path / "sigterm.log", extra=("workers=2", "meter_flush_ms=60000"))
    running.all_ready()
    answered: list[tuple[str, float, int]] = []
    loader = threading.Thread(target=load, args=(running, plaintext, 3.0, answered))
    loader.start()
    try:
        time.sleep(1.5)
    finally:
        running.stop()  # SIGTERM mid-load, a minute of bills still queued in each worker: uvicorn finishes what is in flight
        loader.join()
    ids, _ = billed(accounts, info.key_id)
    assert answered and {rid for rid, _, _ in answered} <= ids
    (row,) = [u for u in accounts.usage(current_month()) if u.key_id == info.key_id]
    assert row.billed_usd == pytest.approx(sum(n for _, _, n in answered) * 0.05 / 1000)
