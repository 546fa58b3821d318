#!/usr/bin/env python3
"""End to end: the real `alem netsim` over TLS (a certificate made here with openssl) and the
real `alem serve` sharded over 3 MPI ranks (--tp 3) as its provider, with faults on (dropped
streams, duplicate leases, a corrupted envelope, delays). The whole provider job (mpirun and
every rank) is killed with SIGKILL while it holds leases, then started again with the same key
file and usage journal; the restarted provider must stay up. At the end the simulator's
report must show every request completed and checked (greedy texts equal to `alem generate` on
the same layout), lost = 0 and billed_twice = 0, and the killed leases redelivered. Exits 77
(skipped) when mpirun, openssl or the model is missing.
"""

import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netsim_harness as h  # noqa: E402

REQUESTS = 8
MAX_TOKENS = 6


def journal_size(path):
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def main():
    h.require_tools("mpirun", "openssl")
    work = h.new_workdir("alem-netsim-kill-")
    cert, key = h.make_tls_cert(work)
    prompts = ["The capital of France is"]
    entries = []
    for p in prompts:
        entries.append({"endpoint": "/v1/completions",
                        "body": {"prompt": p, "max_tokens": MAX_TOKENS, "temperature": 0},
                        "expect_text": h.generate_cli(p, MAX_TOKENS, ranks=3)})
    entries.append({"endpoint": "/v1/chat/completions",
                    "body": {"messages": [{"role": "user", "content": "Say hi."}],
                             "max_tokens": MAX_TOKENS, "temperature": 0.8, "top_p": 0.9,
                             "seed": 3}})
    entries.append({"endpoint": "/v1/completions",
                    "body": {"prompt": "List three colours:", "max_tokens": MAX_TOKENS,
                             "temperature": 0.7, "seed": 5}})
    requests_file = os.path.join(work, "requests.jsonl")
    h.write_requests(requests_file, entries)
    report_path = os.path.join(work, "report.json")

    netsim, port = h.start_netsim(work, [
        "--accept-software-evidence", "--requests", str(REQUESTS), "--concurrency", "3",
        "--requests-file", requests_file, "--seed", "11",
        "--faults", "drop=0.02,dup=0.1,corrupt=1,delay_ms=30",
        "--lease-ms", "60000", "--wait-provider-s", "240", "--run-s", "420",
        "--report", report_path], tls=(cert, key))
    journal = os.path.join(work, "usage.journal")
    first = second = None
    passed = False
    try:
        first = h.start_provider(work, port, name="serve-1", ranks=3, tls_ca=cert)
        # Wait until the provider has finished at least one request (the journal grows with
        # every start and finish record), then kill it while it holds other leases.
        h.wait_for(lambda: journal_size(journal) > 0, 300, "the first journal record", first)
        size0 = journal_size(journal)
        h.wait_for(lambda: journal_size(journal) > size0, 300, "more journal records", first)
        time.sleep(0.5)
        # The whole job: mpirun and every rank (each rank has a process group of its own, so a
        # signal to mpirun's group alone left rank 0 alive for a moment, holding the journal's
        # lock and its stream while the restart began).
        killed = first.kill_all(timeout=30)
        print(f"killed the provider: {len(killed)} processes "
              f"(journal {journal_size(journal)} bytes)")
        second = h.start_provider(work, port, name="serve-2", ranks=3, tls_ca=cert)
        # The restarted provider must stay up until the simulator is done: if it died, the
        # requests it was to answer would wait out the whole run (that is a failure to report
        # now, with its log, not after --run-s).
        deadline = time.time() + 480
        code = None
        while time.time() < deadline:
            code = netsim.wait(1)
            if code is not None:
                break
            assert second.alive(), ("the restarted provider exited "
                                    f"({second.proc.returncode}):\n" + second.tail())
        assert code is not None, "the simulator did not finish in time:\n" + netsim.tail()
        report = h.read_report(report_path)
        print({k: report[k] for k in ("submitted", "completed", "verified", "redelivered",
                                      "failed", "lost", "billed_twice", "journal_duplicates",
                                      "registrations", "requests_per_s", "tokens_per_s")})
        assert report["lost"] == 0, report
        assert report["billed_twice"] == 0, report
        assert report["failed"] == 0, report["failures"]
        assert report["completed"] == REQUESTS and report["verified"] == REQUESTS, report
        assert report["registrations"] >= 2, "the restarted provider registered again"
        assert report["redelivered"] >= 1, "the killed provider's leases were redelivered"
        # Each corrupted envelope ends in exactly one counted outcome. Which one depends on where
        # the kill lands: a corrupt lease held by the killed provider ends with its stream
        # ("stream_closed"), one on the restarted provider is refused. The refusal itself is
        # what e2e_network_rejects checks without a kill in the way.
        corrupt = report["faults"]["corrupt"]
        assert corrupt["injected"] >= 1, report["faults"]
        assert not corrupt["unexpected"], report["faults"]
        assert (corrupt["refused_as_expected"] + corrupt["stream_closed"] + corrupt["expired"] +
                corrupt["released"]) == corrupt["injected"], report["faults"]
        assert code == 0, f"alem netsim exited {code}:\n" + netsim.tail()
        # The provider never logged a prompt or a completion.
        for proc in (first, second):
            with open(proc.log_path, "rb") as f:
                log = f.read().decode("utf-8", "replace")
            for p in prompts:
                assert p not in log, f"{proc.name} logged a prompt"
        print("ok: SIGKILL mid-run, restart, lost = 0, billed_twice = 0")
        passed = True
        return 0
    finally:
        for proc in (second, first, netsim):
            if proc:
                proc.stop()
        if passed:  # keep the logs of a failed run for a look
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except h.Skip as e:
        print(f"skip: {e}")
        sys.exit(77)
