"""Log lines without a process: a worker's lines carry its index."""

from __future__ import annotations

import io
import logging

import orjson

from relay.ops.logs import make_handler, set_worker


def test_a_workers_log_lines_carry_its_index() -> None:
    json_out, text_out = io.StringIO(), io.StringIO()
    logger = logging.getLogger("relay.test_workers_units")
    handlers = [make_handler("json", json_out), make_handler("text", text_out)]
    for handler in handlers:
        logger.addHandler(handler)
    try:
        logger.warning("single")
        set_worker(3)
        logger.warning("from a worker")
    finally:
        set_worker(None)
        for handler in handlers:
            logger.removeHandler(handler)
    single, worker = (orjson.loads(line) for line in json_out.getvalue().splitlines())
    assert "worker" not in single and worker["worker"] == 3
    lines = text_out.getvalue().splitlines()
    assert "[worker" not in lines[0] and "relay.test_workers_units [worker 3]: from a worker" in lines[1]
