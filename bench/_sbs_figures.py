"""The side-by-side benchmark's figures: one run's numbers, and the table.

A run is one client process against one server process. Its figures join the
driver's record (what the client asked, got and spent) with the server's
(the audio it received, when it sent each final):

* ``cpu_per_audio_hour``: the client's CPU seconds (user + system, every
  thread, from its first connection to the end of its last session; for a
  run stopped at its time limit, the whole process's, start-up included) per
  hour of audio the *server* received;
* ``received``: the audio the server received over the audio planned (1.0:
  nothing lost or left unsent);
* ``lag_p99``: how late behind the real-time schedule the driver got to each
  turn's finalize (real-time runs): a client that cannot keep up falls behind;
* ``kept_up``: every planned byte arrived, every session finished, and the
  p99 lag stayed under 100 ms;
* ``speed`` (as-fast-as-possible runs): audio seconds per wall second;
* ``peak_rss_mb`` and ``rss_per_session_kb``: the client process's peak
  resident set, and that minus an idle interpreter's with the client library
  imported, over the sessions;
* ``replay_kb``: the most audio a session held for replay at once (sampled
  after every chunk sent), averaged over the sessions; only pulse holds any.
  ``rss_per_session_kb`` less it is the memory the issue's goal is about;
* ``delivery_p50/p99``: a final's arrival at the client minus the moment the
  server's send of it returned (same machine, same ``time.time()`` clock);
* ``finalize_p50/p99``: a final's arrival minus the moment the driver asked
  for it;
* ``finals``: finals received (for the planned turns) over finals planned;
* ``server_load``: the server's CPU seconds over its busy wall time (near 1.0,
  its one core was the bottleneck, not the client).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["added_rows", "ratio_rows", "run_figures", "table"]


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_figures(
    plan: dict[str, Any], record: dict[str, Any], server: dict[str, Any], idle_kb: int, peak_kb: int
) -> dict[str, Any]:
    """The figures of one run (see the module documentation)."""
    rate, sessions = plan["rate"], plan["sessions"]
    turns = max(1, round(plan["seconds"] / plan["finalize_every"]))
    planned_seconds = sessions * turns * plan["finalize_every"]
    # A pacing floor sends nothing: its audio is what it walked through.
    audio = (server["bytes"] or record.get("paced", 0)) / (2 * rate)
    keys = [f"s{s} t{t}" for s in range(sessions) for t in range(turns)]
    got, asked, sent = record.get("got", {}), record.get("asked", {}), server["finals"]
    delivery = [got[key] - sent[key] for key in keys if key in got and key in sent]
    finalize = [got[key] - asked[key] for key in keys if key in got and key in asked]
    lag = record.get("lag", [])
    # The driver's own window (connections to the end); the whole process's
    # when the driver was stopped before writing it.
    cpu = record.get("cpu", record.get("cpu_process"))
    figures: dict[str, Any] = {
        "audio_seconds": audio,
        "received": audio / planned_seconds if planned_seconds else None,
        "cpu": cpu,
        "wall": record.get("wall"),
        "cpu_per_audio_hour": cpu / (audio / 3600) if cpu is not None and audio else None,
        "finished": record.get("finished", 0),
        "stopped": "cpu" not in record,
        "finals": sum(key in got for key in keys) / len(keys),
        "peak_rss_mb": peak_kb / 1024,
        "rss_per_session_kb": (peak_kb - idle_kb) / sessions if sessions else None,
        "replay_kb": record.get("replay_held", 0) / 1024 / sessions if sessions else None,
        "delivery_p50": _quantile(delivery, 0.5),
        "delivery_p99": _quantile(delivery, 0.99),
        "finalize_p50": _quantile(finalize, 0.5),
        "finalize_p99": _quantile(finalize, 0.99),
        "lag_p99": _quantile(lag, 0.99) if plan["realtime"] else None,
        "server_load": server["cpu"] / server["wall"] if server.get("wall") else None,
        "refused": server.get("refused", 0),
        "errors": record.get("errors", []),
    }
    if plan["realtime"]:
        figures["kept_up"] = (
            figures["received"] is not None
            and figures["received"] >= 0.999
            and figures["finished"] == sessions
            and (figures["lag_p99"] or 0.0) < 0.1
        )
    else:
        wall = record.get("wall") or 0.0
        figures["speed"] = audio / wall if wall else None
    return figures


def _median(values: list[float | None]) -> tuple[float, float, float] | None:
    present = [value for value in values if value is not None]
    if not present:
        return None
    return statistics.median(present), min(present), max(present)


def _show(spread: tuple[float, float, float] | None, scale: float = 1.0, digits: int = 0) -> str:
    if spread is None:
        return "-"
    middle, low, high = (value * scale for value in spread)
    if round(low, digits) == round(high, digits):
        return f"{middle:.{digits}f}"
    return f"{middle:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def table(cells: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """Markdown: a row per workload and client, medians of the repeats (min-max)."""
    lines = [
        "| workload | client | CPU s / audio h | kept up | lag p99 ms | speed x | "
        "peak RSS MB | RSS / session KB | of it replay KB | delivery p50 / p99 ms | "
        "finalize p50 / p99 ms | finals | server load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for workload, clients in cells.items():
        for client, runs in clients.items():

            def spread(name: str, runs: list[dict[str, Any]] = runs) -> Any:
                return _median([run.get(name) for run in runs])

            kept = [run.get("kept_up") for run in runs if "kept_up" in run]
            kept_text = f"{sum(map(bool, kept))}/{len(kept)}" if kept else "-"
            errors = sum(bool(run.get("errors")) for run in runs)
            stopped = sum(bool(run.get("stopped")) for run in runs)
            lines.append(
                "| "
                + " | ".join(
                    [
                        workload,
                        client
                        + (f" ({errors} with errors)" if errors else "")
                        + (f" ({stopped} stopped at the time limit)" if stopped else ""),
                        _show(spread("cpu_per_audio_hour")),
                        kept_text,
                        _show(spread("lag_p99"), 1000),
                        _show(spread("speed"), digits=1),
                        _show(spread("peak_rss_mb")),
                        _show(spread("rss_per_session_kb")),
                        _show(spread("replay_kb")),
                        f"{_show(spread('delivery_p50'), 1000, 1)} / "
                        f"{_show(spread('delivery_p99'), 1000, 1)}",
                        f"{_show(spread('finalize_p50'), 1000, 1)} / "
                        f"{_show(spread('finalize_p99'), 1000, 1)}",
                        _show(spread("finals"), 100) + "%",
                        _show(spread("server_load"), digits=2),
                    ]
                )
                + " |"
            )
    return "\n".join(lines)


def ratio_rows(
    cells: dict[str, dict[str, list[dict[str, Any]]]], reference: str
) -> tuple[str, dict[str, dict[str, Any]]]:
    """CPU per audio hour of ``reference`` over each other client's, in the same
    repeat; the median of those ratios (min-max). Markdown and the numbers."""
    numbers: dict[str, dict[str, Any]] = {}
    lines = [
        f"| workload | {reference} / client, CPU per audio hour (median of repeats, min-max) |",
        "|---|---|",
    ]
    for workload, clients in cells.items():
        ours = clients.get(reference)
        if not ours:
            continue
        parts = []
        numbers[workload] = {}
        for client, runs in clients.items():
            if client == reference:
                continue
            ratios = [
                a["cpu_per_audio_hour"] / b["cpu_per_audio_hour"]
                for a, b in zip(ours, runs, strict=False)
                if a.get("cpu_per_audio_hour") and b.get("cpu_per_audio_hour")
            ]
            spread = _median(list(ratios))
            numbers[workload][client] = {"ratios": ratios, "median": spread and spread[0]}
            parts.append(f"/{client} {_show(spread, digits=2)}")
        lines.append(f"| {workload} | {'; '.join(parts)} |")
    return "\n".join(lines), numbers


#: Which pacing floor each client's event loop is measured against.
LOOPS = {
    "pulse-20ms": "trio-pacing",
    "pulse-100ms": "trio-pacing",
    "trio-websocket": "trio-pacing",
    "smallestai": "asyncio-pacing",
    "pipecat": "asyncio-pacing",
    "websockets": "asyncio-pacing",
}


def added_rows(
    cells: dict[str, dict[str, list[dict[str, Any]]]], reference: str
) -> tuple[str, dict[str, dict[str, Any]]]:
    """What each client adds to its event loop's own pacing (``LOOPS``): its
    CPU per audio hour and its RSS per session, less its loop's pacing
    floor's, in the same repeat (medians of repeats); and ``reference``'s
    added CPU over each other client's. Empty when no pacing floor ran."""
    numbers: dict[str, dict[str, Any]] = {}
    lines = [
        f"| workload | client | CPU s / audio h added to its loop's pacing | "
        f"{reference} / client, added CPU | RSS / session KB added | of it replay KB |",
        "|---|---|---|---|---|---|",
    ]

    def added(client: str, name: str, clients: dict[str, list[dict[str, Any]]]) -> list[Any]:
        floor = clients.get(LOOPS.get(client, ""), [])
        return [
            run[name] - base[name]
            if run.get(name) is not None and base.get(name) is not None
            else None
            for run, base in zip(clients[client], floor, strict=False)
        ]

    for workload, clients in cells.items():
        if not any(loop in clients for loop in LOOPS.values()):
            continue
        ours = added(reference, "cpu_per_audio_hour", clients) if reference in clients else []
        numbers[workload] = {}
        for client, runs in clients.items():
            if client not in LOOPS or LOOPS[client] not in clients:
                continue
            cpu = added(client, "cpu_per_audio_hour", clients)
            rss = added(client, "rss_per_session_kb", clients)
            ratios = [a / b for a, b in zip(ours, cpu, strict=False) if a is not None and b]
            numbers[workload][client] = {"cpu": cpu, "rss": rss, "ratios": ratios}
            lines.append(
                "| "
                + " | ".join(
                    [
                        workload,
                        client,
                        _show(_median(cpu)),
                        "-" if client == reference else _show(_median(list(ratios)), digits=2),
                        _show(_median(rss)),
                        _show(_median([run.get("replay_kb") for run in runs])),
                    ]
                )
                + " |"
            )
    if len(lines) == 2:
        return "", numbers
    return "\n".join(lines), numbers
