"""Contender 5: kafka-python 1.4.7's MultiProcessConsumer (the seed's design).

    bench/python/.venv/bin/python bench/python/mpc.py BROKER TOPIC N [PROCS]

Drains N messages of TOPIC with PROCS (default 8) processes and prints one
line of JSON: messages, seconds, msg/s, peak RSS (of this process; the
worker processes are separate). Setup:

    python3.8 -m venv bench/python/.venv
    bench/python/.venv/bin/pip install kafka-python==1.4.7
"""
import json
import resource
import sys
import time
import traceback

from kafka import MultiProcessConsumer, SimpleClient


def main():
    broker, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    procs = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    out = {"contender": "kafka-python MultiProcessConsumer", "procs": procs}
    # With a group, the consumer starts by reading the group's offsets with
    # OffsetFetch v0; without one (group=None, as the seed never ran) it
    # fetches from offset 0. Try the seed's way first, then without a group.
    for group in ("bench-py-%d" % int(time.time()), None):
        res = run(broker, topic, n, procs, group)
        out["group" if group else "no_group"] = res
        if "error" not in res:
            out.update(res)
            break
    else:
        out["error"] = "with group: %s; without group: %s" % (
            out["group"]["error"], out["no_group"]["error"])
        out["trace"] = out["no_group"].get("trace", "")
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run(broker, topic, n, procs, group):
    out = {}
    t0 = time.time()
    try:
        client = SimpleClient(broker, timeout=10)
        consumer = MultiProcessConsumer(client, group, topic,
                                        num_procs=procs, auto_commit=False)
        got = 0
        first = None
        last_report = t0
        while got < n and time.time() - t0 < 20:
            msgs = consumer.get_messages(count=1000, block=True, timeout=1)
            if msgs and first is None:
                first = time.time()
            got += len(msgs)
            if time.time() - last_report > 1:
                last_report = time.time()
                sys.stderr.write("mpc: %d messages after %.1fs\n" % (got, last_report - t0))
        dt = time.time() - t0
        out.update(n=got, seconds=dt, msgs_per_s=got / dt)
        # consumer.stop() joins worker processes that may never see the
        # stop event (they block in a fetch loop): end them instead.
        for proc in consumer.procs:
            proc.terminate()
        if got == 0:
            out["error"] = "no message in 20s (see the broker log for why)"
    except Exception as e:  # report exactly what the broker did
        out.update(error="%s: %s" % (type(e).__name__, e), trace=traceback.format_exc())
    return out


if __name__ == "__main__":
    main()
