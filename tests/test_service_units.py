"""Unit tests: the token-budget batcher (real tokenizer, counting runner), config, error table."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pairsmith.cli.serve import config_from_args
from pairsmith.encoders.pipeline import Pipeline, plan_batches
from pairsmith.encoders.runtime import RunnerBackend
from pairsmith.encoders.tokenize import TextTokenizer
from pairsmith.encoders.types import OutputKind
from pairsmith.errors import ErrorKind, InvalidInput, NotFound, ResourceExhausted
from pairsmith.service.batcher import TokenBatcher
from pairsmith.service.config import ServeConfig
from pairsmith.service.status import STATUS_FOR_KIND, RequestExpired, status_for


class CountingRunner:
    """Row i of the output = [sum of its token ids, its real length]; records batch shapes."""

    def __init__(self, delay: float = 0.0) -> None:
        self.shapes: list[tuple[int, int]] = []
        self.delay = delay
        self.started = threading.Event()

    def run(self, batch):
        self.started.set()
        if self.delay:
            time.sleep(self.delay)
        self.shapes.append(batch.shape)
        ids = batch.input_ids * batch.attention_mask
        return np.stack([ids.sum(1), batch.attention_mask.sum(1)], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def tokenizer(tiny_bi_dir):
    from transformers import AutoTokenizer

    return TextTokenizer(AutoTokenizer.from_pretrained(str(tiny_bi_dir)), 64)


def _batcher(tokenizer, runner, output=OutputKind.EMBEDDINGS, **kw):
    ex = ThreadPoolExecutor(1)
    defaults = dict(max_batch_tokens=256, max_pending=100)
    defaults.update(kw)
    pipe = Pipeline(tokenizer, RunnerBackend(runner, output))
    return TokenBatcher("t", pipe, model_executor=ex, tokenize_executor=ex, **defaults)


def test_merges_concurrent_requests_within_the_token_budget(tokenizer):
    runner = CountingRunner(delay=0.05)
    texts = [[f"request {i} word " * (1 + i % 4)] * (1 + i % 3) for i in range(30)]

    async def go():
        b = _batcher(tokenizer, runner)
        b.start()
        results = await asyncio.gather(*(b.submit_texts(t) for t in texts))
        await b.close()
        return b, results

    b, results = asyncio.run(go())
    for t, r in zip(texts, results, strict=True):
        enc = tokenizer.encode(t)
        want = np.array([[sum(ids), len(ids)] for ids in enc.ids], dtype=np.float32)
        np.testing.assert_array_equal(r.values, want)  # each request gets its own rows, in order
    assert b.batches_run < len(texts)  # requests were merged
    assert all(rows * width <= 256 for rows, width in runner.shapes)  # padded budget respected


def test_no_delay_for_a_lone_request(tokenizer):
    async def go():
        b = _batcher(tokenizer, CountingRunner())
        b.start()
        t0 = time.perf_counter()
        r = await b.submit_texts(["alone"])
        dt = time.perf_counter() - t0
        await b.close()
        return r, dt

    r, dt = asyncio.run(go())
    assert r.values.shape == (1, 2) and dt < 0.5 and r.queue_ms < 100


def test_cancelled_and_expired_requests_are_dropped(tokenizer):
    runner = CountingRunner(delay=0.3)

    async def go():
        b = _batcher(tokenizer, runner)
        b.start()
        first = asyncio.ensure_future(b.submit_texts(["first"]))
        await asyncio.get_running_loop().run_in_executor(None, runner.started.wait, 30)  # first is running
        cancelled = asyncio.ensure_future(b.submit_texts(["cancelled"]))
        expired = asyncio.ensure_future(b.submit_texts(["expired"], deadline=time.monotonic() + 0.05))
        kept = asyncio.ensure_future(b.submit_texts(["kept"]))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        await first
        with pytest.raises(RequestExpired):
            await expired
        await kept
        await b.close()
        return b

    b = asyncio.run(go())
    assert b.batches_run == 2  # [first], then [kept] only
    assert [rows for rows, _ in runner.shapes] == [1, 1]


def test_pending_limit_is_resource_exhausted(tokenizer):
    async def go():
        b = _batcher(tokenizer, CountingRunner(delay=0.2), max_pending=2)
        b.start()
        tasks = [asyncio.ensure_future(b.submit_texts(["x"])) for _ in range(3)]
        done = await asyncio.gather(*tasks, return_exceptions=True)
        await b.close()
        return done

    done = asyncio.run(go())
    assert sum(isinstance(d, ResourceExhausted) for d in done) == 1


def test_truncate_false_names_the_text(tokenizer):
    async def go():
        b = _batcher(tokenizer, CountingRunner())
        b.start()
        try:
            await b.submit_texts(["ok", "long " * 200], truncate=False)
        finally:
            await b.close()

    with pytest.raises(InvalidInput, match=r"texts\[1\].*64 tokens"):
        asyncio.run(go())


def test_scalar_output_and_pairs(tokenizer):
    async def go():
        b = _batcher(tokenizer, CountingRunner(), output=OutputKind.SCORES)
        b.start()
        r = await b.submit_pairs([("a", "b"), ("c d", "e")])
        await b.close()
        return r

    r = asyncio.run(go())
    enc = tokenizer.encode_pairs([("a", "b"), ("c d", "e")])
    assert r.values.tolist() == [float(sum(ids)) for ids in enc.ids]


# -- config ----------------------------------------------------------------------
def test_config_from_toml_and_flags(tmp_path):
    f = tmp_path / "serve.toml"
    f.write_text('[serve]\nmodel = "m1"\nport = 7000\nmax_batch_tokens = 4096\ndata_dir = "~/idx"\n')
    cfg = ServeConfig.from_toml(f, port=7001)
    assert cfg.model == "m1" and cfg.port == 7001 and cfg.max_batch_tokens == 4096
    assert str(cfg.data_dir).endswith("/idx") and "~" not in str(cfg.data_dir)
    import argparse

    from pairsmith.cli.serve import _FLAG_FIELDS

    ns = argparse.Namespace(config=f, port_file=None, **dict.fromkeys(_FLAG_FIELDS))
    ns.backend = "onnx"
    cfg = config_from_args(ns)
    assert cfg.backend == "onnx" and cfg.model == "m1" and cfg.port == 7000
    assert '"model": "m1"' in cfg.to_json()


@pytest.mark.parametrize(
    ("text", "exc", "match"),
    [
        ('modle = "x"\n', InvalidInput, "unknown key"),
        ("port = 70000\n", InvalidInput, "port"),
        ('port = "80"\n', InvalidInput, "port must be int"),
        ("max_batch_tokens = 8\n", InvalidInput, "max_batch_tokens"),
        ('backend = "tensorrt"\n', InvalidInput, "backend"),
        ('tls_cert = "/nonexistent.pem"\ntls_key = "/nonexistent.key"\n', NotFound, "tls_cert"),
        ('tls_client_ca = "/etc/hostname"\n', InvalidInput, "tls_client_ca"),
        ("warmup = 1\n", InvalidInput, "warmup must be bool"),
        ("port = [\n", InvalidInput, "not valid TOML"),
    ],
)
def test_config_errors(tmp_path, text, exc, match):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(exc, match=match):
        ServeConfig.from_toml(f)


def test_error_table_covers_every_kind():
    assert set(STATUS_FOR_KIND) == set(ErrorKind)
    assert status_for(InvalidInput("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_for(RequestExpired()) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert status_for(KeyError("bug")) == grpc.StatusCode.INTERNAL


def test_serve_flags_reach_the_config(tmp_path):
    from pairsmith.cli.main import build_parser

    keys = tmp_path / "keys"
    keys.write_text("k" * 20 + "\n")
    args = build_parser().parse_args(
        ["serve", "--model", "m", "--port", "0", "--max-batch-rows", "16", "--max-batch-tokens", "2048",
         "--api-key-file", str(keys), "--metrics-port", "9999", "--data-dir", str(tmp_path), "--backend", "onnx"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert (cfg.model, cfg.port, cfg.max_batch_rows, cfg.max_batch_tokens) == ("m", 0, 16, 2048)
    assert cfg.api_key_file == keys and cfg.metrics_port == 9999 and cfg.store_root == tmp_path
    assert cfg.backend == "onnx" and cfg.auto_export is True
    no_export = config_from_args(
        build_parser().parse_args(["serve", "--backend", "onnx", "--no-auto-export"])
    )
    assert no_export.auto_export is False


@pytest.mark.parametrize("hold", [0.0, 0.25])
def test_hold_merges_returning_clients_but_never_delays_an_idle_server(tokenizer, hold):
    runner = CountingRunner(delay=0.4)

    async def go():
        b = _batcher(tokenizer, runner, hold_fraction=hold)
        b.start()
        await b.submit_texts(["one two three"] * 4)  # a batch of 4 rows, ~0.4 s
        # Clients "come back": one at once, two more 20 ms later (hold bound: 0.25 x 0.4 s = 100 ms).
        first = asyncio.ensure_future(b.submit_texts(["one two three"]))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(b.submit_texts(["one two three"] * 2))
        await asyncio.gather(first, second)
        await asyncio.sleep(1.0)  # idle for longer than a batch: no hold for a lone request
        lone = await b.submit_texts(["one two three"])
        await b.close()
        return lone

    lone = asyncio.run(go())
    rows = [r for r, _ in runner.shapes]
    assert rows[0] == 4 and rows[-1] == 1
    assert rows[1:-1] == ([3] if hold else [1, 2])
    assert lone.queue_ms < 50


def _brute_force_cost(lengths, max_rows, max_tokens, overhead):
    import functools

    n = len(lengths)

    @functools.lru_cache(None)
    def best(i):
        if i == n:
            return 0.0
        out = float("inf")
        for j in range(i + 1, min(n, i + max_rows) + 1):
            rows, width = j - i, max(lengths[i], 1)
            if rows > 1 and rows * width > max_tokens:
                continue
            out = min(out, rows * width + overhead + best(j))
        return out

    return best(0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 64), min_size=1, max_size=40),
    st.integers(1, 12),
    st.integers(16, 400),
    st.floats(0.5, 200),
)
def test_plan_batches_is_optimal_and_valid(lengths, max_rows, max_tokens, overhead):
    lengths = sorted(lengths, reverse=True)
    plan = plan_batches(np.array(lengths), max_rows, max_tokens, overhead)
    assert plan[0][0] == 0 and plan[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(plan, plan[1:], strict=False))
    cost = 0.0
    for s, e in plan:
        rows, width = e - s, lengths[s]
        assert 1 <= rows <= max_rows and (rows == 1 or rows * width <= max_tokens)
        cost += rows * width + overhead
    assert cost == pytest.approx(_brute_force_cost(tuple(lengths), max_rows, max_tokens, overhead))


def test_plan_batches_groups_equal_lengths():
    assert plan_batches(np.array([10] * 8), 32, 8192, 5.0) == [(0, 8)]
    # Very different lengths split when the padding saved exceeds one forward's overhead.
    assert plan_batches(np.array([40, 40, 10, 10, 10, 10]), 32, 8192, 20.0) == [(0, 2), (2, 6)]
    assert plan_batches(np.array([40, 40, 10, 10, 10, 10]), 32, 8192, 200.0) == [(0, 6)]


def test_serve_config_streams_validated_and_cli_says_so(capsys):
    """`--streams` below 0 is refused with the field named (0 = automatic, 1 = one batch at a time)."""
    from pairsmith.cli.main import main
    from pairsmith.service.config import ServeConfig

    assert ServeConfig(streams=0).streams == 0 and ServeConfig(streams=3).streams == 3
    with pytest.raises(InvalidInput, match=r"streams: must be >= 0"):
        ServeConfig(streams=-1)
    assert main(["serve", "--streams", "-1", "--port", "0"]) != 0
    assert "streams: must be >= 0" in capsys.readouterr().err
