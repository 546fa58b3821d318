#!/usr/bin/env python3
"""End to end: the real `alem serve` (one rank) as a provider of the real `alem netsim`, which
sends it bad input on purpose: envelopes with a flipped byte, sealed to another key, replayed
from another request, malformed protobuf bytes and an oversized sealed request. Each must be
refused with its error code, the provider must keep serving, and every request must still
complete intact. A simulator that does not accept software evidence must refuse the
provider's registration with the reason. Exits 77 (skipped) when the model is missing.
"""

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netsim_harness as h  # noqa: E402

REQUESTS = 8
FAULTS = ("corrupt=2,wrongkey=1,replay=1,malformed=1,oversize=1,"
          "oversize_bytes=1500000")


def refused_registration():
    work = h.new_workdir("alem-netsim-refuse-")
    netsim, port = h.start_netsim(work, ["--requests", "1", "--wait-provider-s", "20"])
    serve = None
    try:
        serve = h.start_provider(work, port)
        code = netsim.wait(60)
        assert code not in (None, 0), "the simulator accepted software evidence unasked"
        reasons = [e.get("reason", "") for e in netsim.events()
                   if e.get("msg") == "netsim refused a registration"]
        assert reasons and "--accept-software-evidence" in reasons[0], netsim.tail()
        assert serve.alive(), "a refused provider must keep its HTTP API up:\n" + serve.tail()
    finally:
        for proc in (serve, netsim):
            if proc:
                proc.stop()
    shutil.rmtree(work, ignore_errors=True)


def rejects_bad_input():
    work = h.new_workdir("alem-netsim-rejects-")
    report_path = os.path.join(work, "report.json")
    netsim, port = h.start_netsim(work, [
        "--accept-software-evidence", "--requests", str(REQUESTS), "--concurrency", "2",
        "--max-tokens", "4", "--seed", "5", "--faults", FAULTS, "--lease-ms", "60000",
        "--wait-provider-s", "180", "--run-s", "300", "--report", report_path])
    serve = None
    passed = False
    try:
        serve = h.start_provider(work, port)
        code = netsim.wait(360)
        assert code is not None, "the simulator did not finish in time:\n" + netsim.tail()
        report = h.read_report(report_path)
        faults = report["faults"]
        print({k: faults[k] for k in ("corrupt", "wrongkey", "replay", "malformed", "oversize")})
        for name in ("corrupt", "wrongkey", "malformed", "oversize", "replay"):
            f = faults[name]
            if name != "replay":
                assert f["injected"] >= 1, (name, f)
            assert f.get("refused_as_expected", 0) + f.get("stream_closed", 0) == f["injected"], \
                (name, f)
            assert not f.get("unexpected"), (name, f)
        assert report["faults_accepted"] == 0, report
        assert report["completed"] == REQUESTS and report["verified"] == REQUESTS, report
        assert report["lost"] == 0 and report["billed_twice"] == 0, report
        assert code == 0, f"alem netsim exited {code}:\n" + netsim.tail()
        assert serve.alive(), "the provider must keep serving:\n" + serve.tail()
        print("ok: bad envelopes refused, every request completed")
        passed = True
    finally:
        for proc in (serve, netsim):
            if proc:
                proc.stop()
        if passed:  # keep the logs of a failed run for a look
            shutil.rmtree(work, ignore_errors=True)


def main():
    h.require_tools()
    refused_registration()
    rejects_bad_input()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except h.Skip as e:
        print(f"skip: {e}")
        sys.exit(77)
