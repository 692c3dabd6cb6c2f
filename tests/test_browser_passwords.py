"""A whole job with pre-issued browser accounts (``coordinate --web-passwords FILE --web-devices 1``,
issue 26), behind the ``browser`` marker: a real mosquitto with a password file, the example ACL and
a WebSocket listener; the coordinator writes the page's account into that file before printing
the join link; mosquitto reads it again on SIGHUP (as the operator is told to make it); one headless
Chromium page opens the printed key link and is handed the account; a Python ``edgezo join`` logs
in with its own account. The job completes with the page in every round, and a second page beyond
``--web-devices`` is refused with a message saying every account is in use."""

from __future__ import annotations

import os
import re
import signal
from urllib.parse import parse_qs, urlsplit

import pytest

from support.ports import free_port
from support.procs import Procs
from test_browser_job import ACL_EXAMPLE, ASSETS, Recorder, page_browser, small_sst2, wait_for  # noqa: F401 - the fixture

pytestmark = pytest.mark.browser

RUN, ROUNDS = "webjob", 3
ACCOUNTS = {"coordinator": "c-secret", "py0": "p-secret"}


def test_a_page_given_a_preissued_mosquitto_account_trains_in_every_round(tmp_path, tiny_llama, sst2_dir, mosquitto_factory, page_browser):  # noqa: F811
    assert (ASSETS / "index.html").is_file(), "build the page first: npm ci && npm run build in web/"
    data = small_sst2(sst2_dir, tmp_path / "sst2")
    broker = mosquitto_factory(websocket=True, password_file=ACCOUNTS, acl_file=ACL_EXAMPLE.read_text())
    passwd = broker.dir / "passwd"
    procs, recorder, web_port, out = Procs(tmp_path), None, free_port(), tmp_path / "coord"
    try:
        procs.start("coordinator", "coordinate", "--model", str(tiny_llama), "--data", str(data), "--run", RUN, "--rounds", str(ROUNDS),
                    "--local-steps", "1", "--p1", "1", "--p2", "2", "--batch-size", "4", "--max-length", "32", "--eval-samples", "16",
                    "--seed", "7", "--min-devices", "2", "--round-timeout", "240", "--out", str(out), "--broker", broker.address,
                    "--username", "coordinator", "--password", ACCOUNTS["coordinator"], "--web-port", str(web_port), "--web-data", str(data),
                    "--web-broker", broker.ws_url, "--web-passwords", str(passwd), "--web-devices", "1", broker=None)
        log = wait_for("the join link", lambda: re.search(r"browser devices join at (\S+)", procs.log("coordinator")), procs, 300)
        assert "kill -HUP" in procs.log("coordinator")  # the operator is told how to make mosquitto read the accounts
        users = sorted(line.split(":")[0] for line in passwd.read_text().splitlines())
        assert len(users) == 3 and {"coordinator", "py0"} < set(users), users  # the broker's accounts kept, one added
        os.kill(broker.pid, signal.SIGHUP)
        wait_for("mosquitto's reload", lambda: broker.log_path.read_text().count("Reloading config") >= 1, procs, 30)
        recorder = Recorder(broker, ("coordinator", ACCOUNTS["coordinator"]))
        procs.start("py0", "join", "--run", RUN, "--device-id", "py0", "--model", str(tiny_llama), "--data", str(data), "--shard", "0/2",
                    "--username", "py0", "--password", ACCOUNTS["py0"], broker=broker.address)
        page = page_browser.new_page()
        page.goto(f"{log.group(1)}&shard=1/2")
        issued = {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}
        assert issued["device-id"] in users and "key" not in issued, page.url
        second = page_browser.new_page()
        refused = second.goto(f"{log.group(1)}&shard=1/2")
        assert refused.status == 409 and "Every device account of this job is in use" in second.inner_text("body")
        second.close()
        procs.wait("coordinator", "py0")
        wait_for("the page to see the job end", lambda: (page.evaluate("window.edgezoState || {}") or {}).get("phase") == "finished",
                 procs, 60, page)
    finally:
        procs.kill_all()
        if recorder is not None:
            recorder.close()
    check_every_round(out, recorder, issued["device-id"])


def check_every_round(out, recorder: Recorder, web_device: str) -> None:
    rows = [line for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == ROUNDS + 1 and all('"devices": 2' in row for row in rows[1:]), rows
    for rnd in range(1, ROUNDS + 1):
        assert {t.device for t in recorder.assigns[rnd].tasks} == {"py0", web_device}
        assert (web_device, rnd) in recorder.results, f"the page sent no result in round {rnd}"
