"""`frugal serve` with a generative model folder: OpenAI-compatible chat and text completions (whole and streamed), metered
per token against the plan's token quota, the limits as OpenAI error objects, and feedback as corrected responses.

One server (uvicorn on loopback, tests/serve_helpers.py) serves a tiny random Llama (tests/gen_helpers.py); a model
without a chat template is served in-process (FastAPI's TestClient) for the one 422 it exists for.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from gen_helpers import save_tiny_causal, write_tokenizer
from serve_helpers import Server

from frugal.accounts.store import Accounts
from frugal.config.serve import load_settings

MAX_TOKENS = 64  # the server's max_tokens
PLANS = (
    "plans.gen={requests_per_minute: 100000, texts_per_month: 10, usd_per_1k_texts: 0.0, tokens_per_month: 1000000, "
    "usd_per_1m_tokens: 2.0, usd_per_1m_prompt_tokens: 1.0}",
    "plans.few={requests_per_minute: 100000, texts_per_month: 10, usd_per_1k_texts: 0.0, tokens_per_month: 40, usd_per_1m_tokens: 1.0}",
)
CHAT = [{"role": "system", "content": "Write a headline."}, {"role": "user", "content": "Markets rallied as the bank held rates."}]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tok_dir: Path) -> Iterator[Server]:
    project = tmp_path_factory.mktemp("serve_generate")
    model = save_tiny_causal(project / "model", tok_dir)
    serving = Server(project, 3600, project / "serve.log", (f"model={model}", f"max_tokens={MAX_TOKENS}", *PLANS))
    yield serving
    serving.stop()


@pytest.fixture(scope="module")
def accounts(server: Server) -> Iterator[Accounts]:
    store = Accounts(f"sqlite:///{Path(server.output.name).parent / 'serve.db'}", load_settings("serve", list(PLANS)).plans)
    yield store
    store.close()


def key_on(accounts: Accounts, plan: str) -> tuple[str, str]:
    """(plaintext, key_id) of a new key on the plan."""
    plaintext, key = accounts.create_key(plan, plan)
    return plaintext, key.key_id


def post(server: Server, path: str, key: str | None, body: dict) -> object:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return server.http.post(path, json=body, headers=headers)


def events(server: Server, path: str, key: str, body: dict) -> list[str]:
    """The `data:` payloads of a streamed answer, in order."""
    with server.http.stream("POST", path, json={**body, "stream": True}, headers={"Authorization": f"Bearer {key}"}) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        return [line.removeprefix("data: ") for line in answer.iter_lines() if line.startswith("data: ")]


def test_chat_whole_and_streamed_agree_with_usage(server: Server, accounts: Accounts) -> None:
    key, _ = key_on(accounts, "gen")
    whole = post(server, "/v1/chat/completions", key, {"model": "any", "messages": CHAT, "max_tokens": 8, "temperature": 0.7})
    assert whole.status_code == 200, whole.text
    answer = whole.json()
    [choice] = answer["choices"]
    models = server.http.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-") and [answer["model"]] == [m["id"] for m in models]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    usage = answer["usage"]
    assert 0 < usage["completion_tokens"] <= 8 and usage["prompt_tokens"] > 10
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    data = events(server, "/v1/chat/completions", key, {"messages": CHAT, "max_tokens": 8, "stream_options": {"include_usage": True}})
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert streamed == choice["message"]["content"]  # greedy: the same text, piece by piece
    assert chunks[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == usage  # include_usage: the last chunk
    scraped = server.http.get("/metrics").text  # Prometheus counts the tokens answered, by kind
    completion = float(re.search(r'^frugal_tokens_total\{kind="completion"\} (\S+)$', scraped, re.M).group(1))
    assert completion >= 2 * usage["completion_tokens"]


def test_text_completions_whole_and_streamed(server: Server, accounts: Accounts) -> None:
    key, _ = key_on(accounts, "gen")
    whole = post(server, "/v1/completions", key, {"model": "any", "prompt": "The central bank", "max_tokens": 6})
    assert whole.status_code == 200, whole.text
    answer = whole.json()
    assert answer["object"] == "text_completion" and answer["id"].startswith("cmpl-") and answer["usage"]["completion_tokens"] <= 6
    data = events(server, "/v1/completions", key, {"prompt": ["The central bank"], "max_tokens": 6})
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == answer["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == answer["choices"][0]["finish_reason"]


def test_a_client_that_leaves_mid_stream_is_billed_for_what_it_got(server: Server, accounts: Accounts) -> None:
    key, key_id = key_on(accounts, "gen")
    body = {"messages": CHAT, "max_tokens": MAX_TOKENS, "stream": True}
    with server.http.stream("POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as answer:
        next(answer.iter_lines())  # the first chunk, then hang up
    assert post(server, "/v1/completions", key, {"prompt": "Oil", "max_tokens": 2}).status_code == 200  # the server carries on
    time.sleep(0.6)
    [row] = [r for r in accounts.usage() if r.key_id == key_id]
    assert row.requests == 2 and row.completion_tokens < MAX_TOKENS + 2
    assert _quota_counter(accounts, key_id) == row.prompt_tokens + row.completion_tokens  # the unused max_tokens given back


def test_tokens_are_metered_billed_and_feedback_exports(server: Server, accounts: Accounts, tmp_path: Path) -> None:
    key, key_id = key_on(accounts, "gen")
    answers = [post(server, "/v1/chat/completions", key, {"messages": CHAT, "max_tokens": n}).json() for n in (3, 5)]
    time.sleep(0.6)  # the meter writes every 200 ms
    [row] = [r for r in accounts.usage() if r.key_id == key_id]
    prompt, completion = (sum(a["usage"][f] for a in answers) for f in ("prompt_tokens", "completion_tokens"))
    assert (row.requests, row.texts, row.prompt_tokens, row.completion_tokens) == (2, 0, prompt, completion)
    assert row.billed_usd == pytest.approx((prompt * 1.0 + completion * 2.0) / 1e6)  # the plan's prices per 1M
    assert row.cost_usd == 0.0  # a bare model folder has no measured cost
    assert _quota_counter(accounts, key_id) == prompt + completion  # max_tokens taken at admission, the unused given back

    cited = server.http.post("/v1/feedback", json={"request_id": answers[0]["id"], "response": "Bank holds rates"},
                             headers={"X-API-Key": key})  # fmt: skip
    given = server.http.post("/v1/feedback", json={"prompt": "Oil rose.", "response": "Oil up"}, headers={"X-API-Key": key})
    assert (cited.status_code, given.status_code) == (201, 201), (cited.text, given.text)
    wrong = server.http.post("/v1/feedback", json={"text": "x", "label": "positive"}, headers={"X-API-Key": key})
    assert wrong.status_code == 422  # a generative model's feedback is a response
    rows = [(r.text, r.label) for r in accounts.feedback_rows("generate") if r.key_id == key_id]
    assert rows == [(CHAT[-1]["content"], "Bank holds rates"), ("Oil rose.", "Oil up")]  # a chat's prompt: its last user turn

    from frugal.cli import main

    out = tmp_path / "responses.csv"
    project = Path(server.output.name).parent
    assert main(["feedback", "export", "--task", "generate", "--out", str(out), "--project-dir", str(project)]) == 0
    exported = pd.read_csv(out)
    assert list(exported.columns) == ["prompt", "response", "created_at"] and ("Oil rose.", "Oil up") in set(
        zip(exported["prompt"], exported["response"], strict=True)
    )


def _quota_counter(accounts: Accounts, key_id: str) -> int:
    from sqlalchemy import select

    from frugal.accounts.models import MonthlyUsage

    with accounts.engine.connect() as conn:
        return conn.execute(select(MonthlyUsage.tokens).where(MonthlyUsage.key_id == key_id)).scalar_one()


def test_a_request_that_could_overrun_the_token_quota_is_refused_before_the_model_runs(server: Server, accounts: Accounts) -> None:
    key, key_id = key_on(accounts, "few")  # 40 tokens a month
    body = {"prompt": "The central bank", "max_tokens": 30}
    refused = post(server, "/v1/completions", key, body)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and "token quota" in error["message"] and "0 of 40 tokens" in error["message"]
    assert post(server, "/v1/completions", key, {**body, "max_tokens": 4}).status_code == 200
    assert post(server, "/v1/completions", key, {**body, "max_tokens": 40}).status_code == 429
    time.sleep(0.6)
    [row] = [r for r in accounts.usage() if r.key_id == key_id]
    assert row.requests == 1 and row.completion_tokens <= 4  # the refused ones never ran


def test_limits_answer_openai_error_objects(server: Server, accounts: Accounts) -> None:
    key, _ = key_on(accounts, "gen")
    too_long = post(server, "/v1/completions", key, {"prompt": "rates " * 300, "max_tokens": 4})
    assert too_long.status_code == 413 and too_long.json()["error"]["code"] == "context_length_exceeded"
    assert "256 tokens" in too_long.json()["error"]["message"]  # the model's context, in the one message
    over = post(server, "/v1/chat/completions", key, {"messages": CHAT, "max_tokens": MAX_TOKENS + 1})
    assert over.status_code == 422 and over.json()["error"]["param"] == "max_tokens"
    missing = post(server, "/v1/chat/completions", key, {"model": "any"})
    assert missing.status_code == 422 and missing.json()["error"]["param"] == "messages"
    assert post(server, "/v1/completions", key, {"max_tokens": 3}).json()["error"]["param"] == "prompt"
    unsupported = post(server, "/v1/completions", key, {"prompt": "x", "n": 2})
    assert unsupported.status_code == 422 and unsupported.json()["error"]["param"] == "n"
    body = post(server, "/v1/completions", key, {"prompt": "x" * 70_000})  # over max_body_bytes (tests/serve_helpers.py)
    assert body.status_code == 413 and body.json()["error"]["type"] == "invalid_request_error"
    anonymous = post(server, "/v1/chat/completions", None, {"messages": CHAT})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"
    assert server.predict(key, ["hello"]).status_code == 404  # a classifier's endpoint on a generative model
    info = server.http.get("/v1/model", headers={"X-API-Key": key}).json()
    assert (info["format"], info["labels"], info["max_length"], info["metrics"]["usd_per_1m_tokens"]) == ("causal-hf", [], 256, None)
    assert server.http.get("/readyz").status_code == 200  # and the server carries on


def test_chat_on_a_model_without_a_chat_template_is_422(tmp_path: Path, tok_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from frugal.serve.app import create_app

    plain = tmp_path / "tok"
    write_tokenizer(plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    (plain / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "chat_template"}))
    model = save_tiny_causal(tmp_path / "model", plain, chat=False)
    monkeypatch.delenv("FRUGAL_DATABASE_URL", raising=False)
    settings = load_settings("serve", [f"model={model}", "threads=1", *PLANS])
    with TestClient(create_app(settings, tmp_path)) as client:
        deadline = time.time() + 60
        while client.get("/readyz").status_code != 200:
            assert time.time() < deadline, client.get("/readyz").text
            time.sleep(0.1)
        store = Accounts(f"sqlite:///{tmp_path / 'serve.db'}", settings.plans)
        key = store.create_key("plain", "gen")[0]
        store.close()
        headers = {"Authorization": f"Bearer {key}"}
        chat = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2}, headers=headers)
        assert chat.status_code == 422, chat.text
        assert "no chat template" in chat.json()["error"]["message"] and "/v1/completions" in chat.json()["error"]["message"]
        assert client.post("/v1/completions", json={"prompt": "Oil", "max_tokens": 2}, headers=headers).status_code == 200


def test_migration_0002_keeps_the_rows_of_a_0001_database(tmp_path: Path) -> None:
    """Token columns start at 0 and feedback keeps its rows (SQLite copies the table to widen `label`)."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    store = Accounts(f"sqlite:///{tmp_path / 'old.db'}", load_settings("serve", list(PLANS)).plans)
    config = Config()
    config.set_main_option("script_location", "frugal.accounts:migrations")
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    with store.engine.begin() as connection:
        connection.execute(text("INSERT INTO api_keys VALUES ('fk_1', 'x', 'old', 'gen', '2025-03-01 00:00:00', NULL)"))
        connection.execute(text("INSERT INTO monthly_usage VALUES ('fk_1', '2025-03', 2, 5, 0.1, 0.2)"))
        connection.execute(
            text("INSERT INTO feedback (key_id, text, label, created_at) VALUES ('fk_1', 't', 'positive', '2025-03-01 00:00:00')")
        )
    store.migrate()
    [row] = store.usage("2025-03")
    assert (row.texts, row.billed_usd, row.prompt_tokens, row.completion_tokens) == (5, 0.2, 0, 0)
    assert [(f.text, f.label) for f in store.feedback_rows("classify")] == [("t", "positive")] and store.feedback_rows("generate") == []
    store.close()
