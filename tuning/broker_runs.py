"""One broker's loadgen run as tuning/compare.sh leaves it in its work directory:
NAME.BROKER.json (loadgen's report) and NAME.BROKER.cpu_ticks (the broker's user and kernel
clock ticks while loadgen ran). Read by compare.sh and compare-rounds.sh."""

import json


def load(work, name, broker, ticks_per_s):
    """The report, with per_cpu_s (deliveries per broker CPU-second) and user_ns / kernel_ns
    (broker CPU per delivery, split) added, each None where it cannot be computed; None
    when the run left no report."""
    try:
        report = json.load(open(f"{work}/{name}.{broker}.json"))
    except Exception:
        return None
    report["per_cpu_s"] = report["user_ns"] = report["kernel_ns"] = None
    try:
        user, kernel = (int(t) for t in open(f"{work}/{name}.{broker}.cpu_ticks").read().split())
        cpu_s = (user + kernel) / ticks_per_s
        unique = report["counts"]["unique"]
        if cpu_s > 0 and unique > 0:
            report["per_cpu_s"] = unique / cpu_s
            # Broker CPU per delivery, split: what the broker's own code costs beside the
            # kernel's share (socket reads and writes, TCP on loopback).
            report["user_ns"] = user / ticks_per_s / unique * 1e9
            report["kernel_ns"] = kernel / ticks_per_s / unique * 1e9
    except Exception:
        pass
    return report
