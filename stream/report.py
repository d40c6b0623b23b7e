"""`dfmq report FILE.jsonl --out FILE.png|FILE.html`: the picture of a recorded session.

One figure: the utterances on a timeline with the intent each got (not recognized marked, with the
reason) and the run's status changes; audio, video and text quality over time; the fusion weights
per utterance; the distribution of latency; counts per intent and per reason. The HTML page is
self-contained (the figure embedded as base64, tables of the run, the counts and every event; no
network). Rotated parts (FILE.jsonl.1, .2, ...) are read with the file, oldest first.
"""

from __future__ import annotations

import base64
import html
import io
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import ConfigError, DataError
from stream.record import RECORD_SCHEMA, record_parts

REPORT_FORMATS = (".png", ".html")
REASON_LABELS = {
    "no_speech": "no speech",
    "unreliable_transcript": "unreliable transcript",
    "out_of_scope": "out of scope",
    "low_confidence": "low confidence",
}
# Shorter, for the labels on the timeline's bars.
REASON_SHORT = {
    "no_speech": "no speech",
    "unreliable_transcript": "unreliable",
    "out_of_scope": "off-topic",
    "low_confidence": "unsure",
}
NOT_RECOGNIZED = "not recognized"
STATUS_KEYS = {"kind", "stream_id", "wall", "status", "time"}  # the rest of a status line is its detail


@dataclass
class Session:
    """A session record read back: its lines by kind, one stream's."""

    parts: list[Path]
    stream_id: str
    header: dict[str, Any]
    run: dict[str, Any] | None = None
    intents: list[dict[str, Any]] = field(default_factory=list)
    quality: list[dict[str, Any]] = field(default_factory=list)
    status: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what of the record could not be read, and why

    def stream_time(self, wall: float) -> float:
        """A wall-clock time on the stream clock of the events (the offset seen in the record)."""
        pairs = [(q["wall"], q["time"]) for q in self.quality if q.get("wall")]
        pairs += [(e["speech_end_wall"], e["end"]) for e in self.intents if e.get("speech_end_wall")]
        if not pairs:
            return 0.0
        return wall - statistics.median(w - t for w, t in pairs)


def read_session(path: Path, stream_id: str | None = None) -> Session:
    """Read FILE.jsonl and its rotated parts; DataError (exit 2) for a missing or malformed record."""
    parts = record_parts(path)
    if not parts:
        # `dfmq run --streams --record FILE.jsonl` writes FILE.<stream_id>.jsonl, one per stream.
        per_stream = sorted(p.name for p in Path(path).parent.glob(f"{Path(path).stem}.*{Path(path).suffix}"))
        expected = "a file written by `dfmq run --record`"
        if per_stream:
            expected += f"; the streams' records beside it: {', '.join(per_stream)}"
        raise DataError("no such session record", path=path, expected=expected)
    warnings: list[str] = []
    read = [_read_part(part, part == parts[-1], warnings) for part in parts]
    lines = [line for part_lines in _one_session(parts, read, warnings) for line in part_lines]
    headers = [line for line in lines if line["kind"] == "header"]
    if not headers or headers[0].get("schema") != RECORD_SCHEMA:
        raise DataError(
            "not a session record",
            path=parts[0],
            line=1,
            expected=f'a "header" line of schema {RECORD_SCHEMA} (written by `dfmq run --record`)',
        )
    streams = sorted({str(line.get("stream_id")) for line in lines if line["kind"] in ("intent", "quality")})
    if stream_id is None:
        if len(streams) > 1:
            raise ConfigError("--stream-id", f"one of the record's streams ({', '.join(streams)})", "none given")
        stream_id = streams[0] if streams else str(headers[0].get("stream_id"))
    elif stream_id not in streams:
        raise ConfigError("--stream-id", f"one of the record's streams ({', '.join(streams) or 'none'})", stream_id)
    mine = [line for line in lines if line.get("stream_id") == stream_id]
    header = next((h for h in headers if h.get("stream_id") == stream_id), headers[0])
    session = Session(parts=parts, stream_id=stream_id, header=header, warnings=warnings)
    seen_utterances: set[int] = set()
    for line in mine:
        kind = line["kind"]
        if kind == "run" and session.run is None:
            session.run = line
        elif kind == "intent" and line.get("utterance_id") not in seen_utterances:
            seen_utterances.add(line.get("utterance_id", -1))
            session.intents.append(line)
        elif kind == "quality":
            session.quality.append(line)
        elif kind == "status":
            session.status.append(line)
    return session


def _read_part(part: Path, newest: bool, warnings: list[str]) -> list[dict[str, Any]]:
    """A part's lines. The newest part's last line may have been cut off by a crash or a full
    disk: skipped with a warning; anything else malformed is an error naming the line."""
    try:
        text = part.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot be read ({exc})", path=part) from None
    rows = [(number, raw) for number, raw in enumerate(text.splitlines(), start=1) if raw.strip()]
    lines: list[dict[str, Any]] = []
    for number, raw in rows:
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as exc:
            if newest and number == rows[-1][0] and not text.endswith("\n") and lines:
                warnings.append(f"{part}:{number}: the last line is cut off (the run did not end cleanly): skipped")
                break
            raise DataError(
                f"not JSON Lines ({exc.msg})", path=part, line=number, expected="one JSON object per line"
            ) from None
        if not isinstance(line, dict) or not isinstance(line.get("kind"), str):
            raise DataError("not a session record line", path=part, line=number, expected='a JSON object with a "kind"')
        lines.append(line)
    return lines


def _one_session(
    parts: list[Path], read: list[list[dict[str, Any]]], warnings: list[str]
) -> list[list[dict[str, Any]]]:
    """The parts of the newest part's session, with a warning for each part of another session (a
    record written before session ids were, has none: read as one) and for missing parts."""
    headers = [next((line for line in lines if line["kind"] == "header"), {}) for lines in read]
    session = headers[-1].get("session")
    kept: list[list[dict[str, Any]]] = []
    numbers: list[int] = []
    for part, header, lines in zip(parts, headers, read):
        if header.get("session") != session:
            warnings.append(f"{part} belongs to another session (an earlier run with the same file name): not read")
            continue
        kept.append(lines)
        if isinstance(header.get("part"), int):
            numbers.append(header["part"])
    if numbers and numbers[0] > 1:
        warnings.append(
            f"the record begins at part {numbers[0]}: parts 1-{numbers[0] - 1} were rotated away (record_keep_files)"
        )
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers)) if numbers else []
    if missing:
        warnings.append(
            f"part(s) {', '.join(map(str, missing))} of {numbers[-1]} are missing: their lines are not read"
        )
    return kept


def decision(event: dict[str, Any]) -> str:
    return str(event["intent"]) if event.get("recognized") else NOT_RECOGNIZED


def _percentile(values: list[float], q: float) -> float:
    """Interpolated between ranks, as the stage medians beside it are (an even count's p50 is the
    mean of the middle two)."""
    return float(np.percentile(values, q * 100))


def draw(session: Session) -> bytes:
    """The session's figure as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = session.intents
    counts = Counter(decision(e) for e in events)
    names = sorted((n for n in counts if n != NOT_RECOGNIZED), key=lambda n: (-counts[n], n))
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colours = {name: palette(i % palette.N) for i, name in enumerate(names)}
    rows = [*names, NOT_RECOGNIZED] if counts[NOT_RECOGNIZED] else names

    fig = plt.figure(figsize=(13, 11), dpi=100)
    grid = fig.add_gridspec(4, 2, height_ratios=[max(1.6, 0.35 * len(rows) + 0.8), 1.4, 1.2, 1.8], hspace=0.55)
    timeline = fig.add_subplot(grid[0, :])
    quality = fig.add_subplot(grid[1, :], sharex=timeline)
    weights = fig.add_subplot(grid[2, :], sharex=timeline)
    latency = fig.add_subplot(grid[3, 0])
    per_intent = fig.add_subplot(grid[3, 1])

    _draw_timeline(timeline, session, rows, colours)
    _draw_quality(quality, session)
    _draw_weights(weights, session)
    _draw_latency(latency, events)
    _draw_counts(per_intent, events, names, colours)

    run = session.run or {}
    began = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(session.header.get("wall", 0)))
    recognized = sum(bool(e.get("recognized")) for e in events)
    checkpoint = Path(str(run.get("checkpoint", "?"))).name
    fig.suptitle(
        f"dfmq session '{session.stream_id}', {began}: {len(events)} utterances, {recognized} recognized  "
        f"(checkpoint {checkpoint}, engine {run.get('engine', '?')}, {len(run.get('intents', []))} intents)",
        fontsize=12,
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _draw_timeline(ax: Any, session: Session, rows: list[str], colours: dict[str, Any]) -> None:
    y = {name: i for i, name in enumerate(reversed(rows))}
    for event in session.intents:
        name = decision(event)
        start, end = float(event["start"]), float(event["end"])
        row = y[name]
        if name == NOT_RECOGNIZED:
            ax.broken_barh([(start, end - start)], (row - 0.35, 0.7), facecolors="0.8", edgecolors="0.35", hatch="//")
            reason = REASON_SHORT.get(str(event.get("reason")), str(event.get("reason")))
            ax.text(start, row + 0.42, reason, fontsize=7, color="0.25", va="bottom", clip_on=True)
        else:
            ax.broken_barh([(start, end - start)], (row - 0.35, 0.7), facecolors=colours[name], edgecolors="black")
            ax.text((start + end) / 2, row, f"{event['confidence']:.2f}", fontsize=7, ha="center", va="center")
    for status in session.status:
        if status.get("status") in ("online", "offline"):
            continue
        at = status.get("time")
        at = float(at) if at is not None else session.stream_time(float(status["wall"]))
        ax.axvline(at, color="crimson", linestyle="--", linewidth=1)
        ax.text(at, len(rows) - 0.4, " " + str(status["status"]).replace("_", " "), color="crimson", fontsize=8)
    ax.set_yticks(range(len(rows)), list(reversed(rows)))
    ax.set_ylim(-0.7, len(rows) - 0.2)
    ax.set_title("utterances and the intent each got (number: confidence; hatched: not recognized, with why)")
    ax.grid(axis="x", alpha=0.3)
    if not session.intents:
        ax.text(0.5, 0.5, "no utterances in this record", transform=ax.transAxes, ha="center")


def _draw_quality(ax: Any, session: Session) -> None:
    times = [q["time"] for q in session.quality]
    style = {"marker": ".", "markersize": 3, "linewidth": 1.2}
    ax.plot(times, [q["audio"] for q in session.quality], color="tab:blue", label="audio (running)", **style)
    ax.plot(times, [q["video"] for q in session.quality], color="tab:orange", label="video (running)", **style)
    mids = [(e["start"] + e["end"]) / 2 for e in session.intents]
    quality = [e.get("quality", {}) for e in session.intents]
    ax.scatter(mids, [q.get("text", 0) for q in quality], color="tab:green", marker="s", s=18, label="text (utterance)")
    ax.scatter(mids, [q.get("audio", 0) for q in quality], color="tab:blue", marker="o", s=14)
    ax.scatter(mids, [q.get("video", 0) for q in quality], color="tab:orange", marker="o", s=14)
    _unit_axis(ax, "quality")
    ax.set_title("quality per channel (lines: running, dots: per utterance)")


def _unit_axis(ax: Any, label: str) -> None:
    """A [0, 1] axis with room above 1 for the legend, so that it never hides a line at 1."""
    ax.set_ylim(-0.05, 1.35)
    ax.set_yticks([0.0, 0.5, 1.0])
    ax.set_ylabel(label)
    ax.legend(loc="upper left", fontsize=8, ncol=3, frameon=False)
    ax.grid(alpha=0.3)


def _draw_weights(ax: Any, session: Session) -> None:
    mids = [(e["start"] + e["end"]) / 2 for e in session.intents]
    for channel, colour in (("audio", "tab:blue"), ("video", "tab:orange")):
        values = [e.get("weights", {}).get(channel, 0) for e in session.intents]
        ax.plot(mids, values, marker="o", color=colour, label=channel)
    _unit_axis(ax, "weight")
    ax.set_xlabel("stream time (s)")
    ax.set_title("fusion weights per utterance")


def _draw_latency(ax: Any, events: list[dict[str, Any]]) -> None:
    totals = [float(e["latency_ms"]["total"]) for e in events if "total" in e.get("latency_ms", {})]
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("ms")
    ax.set_ylabel("utterances")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if not totals:
        ax.set_title("latency, end of speech to event")
        ax.text(0.5, 0.5, "no events", transform=ax.transAxes, ha="center")
        return
    ax.hist(totals, bins=min(30, max(5, len(totals))), color="slategray", edgecolor="white")
    for q, style in ((0.5, "-"), (0.95, "--")):
        value = _percentile(totals, q)
        ax.axvline(value, color="black", linestyle=style, linewidth=1, label=f"p{int(q * 100)} {value:.0f} ms")
    stages = ("vad", "asr", "asr_in_pause", "features", "engine")
    medians = [
        f"{s} {statistics.median(e['latency_ms'].get(s, 0.0) for e in events):.0f}"
        for s in stages
        if any(s in e["latency_ms"] for e in events)
    ]
    ax.set_title("latency, end of speech to event\n(median ms: " + ", ".join(medians) + ")", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")


def _draw_counts(ax: Any, events: list[dict[str, Any]], names: list[str], colours: dict[str, Any]) -> None:
    from matplotlib.ticker import MaxNLocator

    counts = Counter(decision(e) for e in events)
    reasons = Counter(
        REASON_LABELS.get(str(e.get("reason")), str(e.get("reason"))) for e in events if not e.get("recognized")
    )
    labels = [*names, *(f"{NOT_RECOGNIZED}:\n{r}" for r in sorted(reasons))]  # two lines: clear of the panel beside
    values = [counts[n] for n in names] + [reasons[r] for r in sorted(reasons)]
    bar_colours = [colours[n] for n in names] + ["0.7"] * len(reasons)
    ax.barh(range(len(labels)), values, color=bar_colours, edgecolor="black")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("utterances")
    ax.set_title("per intent, and why not recognized")
    for i, value in enumerate(values):
        ax.text(value, i, f" {value}", va="center", fontsize=8)


# ---- HTML ------------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(session: Session, png: bytes) -> str:
    run = session.run or {}
    events = session.intents
    with_text = any("text" in e for e in events)
    about = [
        ["stream id", session.stream_id],
        ["record", ", ".join(str(p) for p in session.parts)],
        ["begun", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(session.header.get("wall", 0)))],
        ["checkpoint", run.get("checkpoint", "?")],
        ["engine", run.get("engine", "?")],
        ["intents", ", ".join(run.get("intents", []))],
        ["out of scope below scope", run.get("reject_below")],
    ]
    for section, values in (run.get("options") or {}).items():
        about += [[f"{section}.{k}", v] for k, v in values.items()]
    about += [["warning", warning] for warning in session.warnings]
    counts = Counter(decision(e) for e in events)
    reasons = Counter(str(e.get("reason")) for e in events if not e.get("recognized"))
    count_rows = [[n, c] for n, c in counts.most_common() if n != NOT_RECOGNIZED]
    count_rows += [[f"{NOT_RECOGNIZED}: {REASON_LABELS.get(r, r)}", c] for r, c in reasons.most_common()]
    event_header = ["utterance", "start s", "end s", "decision", "reason", "confidence", "scope", "quality t/a/v"]
    event_header += ["weights a/v", "latency ms"] + (["transcript"] if with_text else [])
    event_rows = []
    for e in events:
        q, w = e.get("quality", {}), e.get("weights", {})
        row = [
            e.get("utterance_id"),
            f"{e['start']:.2f}",
            f"{e['end']:.2f}",
            decision(e),
            REASON_LABELS.get(str(e.get("reason")), "") if not e.get("recognized") else "",
            f"{e.get('confidence', 0):.3f}",
            "" if e.get("scope") is None else f"{e['scope']:.2f}",
            f"{q.get('text', 0):.2f} / {q.get('audio', 0):.2f} / {q.get('video', 0):.2f}",
            f"{w.get('audio', 0):.2f} / {w.get('video', 0):.2f}",
            f"{e.get('latency_ms', {}).get('total', 0):.0f}",
        ]
        event_rows.append([*row, e.get("text", "")] if with_text else row)
    status_rows = [
        [
            time.strftime("%H:%M:%S", time.localtime(s.get("wall", 0))),
            s.get("status"),
            s.get("time", ""),
            ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in s.items() if k not in STATUS_KEYS),
        ]
        for s in session.status
    ]
    image = base64.b64encode(png).decode("ascii")
    title = f"dfmq session {session.stream_id}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #bbb; padding: 0.2em 0.5em; text-align: left; }}
th {{ background: #eee; }}
img {{ max-width: 100%; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<h2>Run</h2>
{_table(["", ""], about)}
<h2>Session</h2>
<img alt="timeline, quality, weights, latency and counts of the session" src="data:image/png;base64,{image}">
<h2>Counts</h2>
{_table(["decision", "utterances"], count_rows)}
<h2>Events</h2>
{_table(event_header, event_rows)}
<h2>Status</h2>
{_table(["time", "status", "stream s", "detail"], status_rows)}
</body>
</html>
"""


def write_report(record: Path, out: Path, stream_id: str | None = None) -> Session:
    """Read the record and write the PNG or HTML report; errors name the bad input (exit 2)."""
    if out.suffix.lower() not in REPORT_FORMATS:
        raise ConfigError("--out", "a file ending in .png or .html", str(out))
    if not out.parent.is_dir():
        raise ConfigError("--out", "a file in an existing folder", str(out))
    session = read_session(record, stream_id)
    png = draw(session)
    if out.suffix.lower() == ".png":
        out.write_bytes(png)
    else:
        out.write_text(render_html(session, png), encoding="utf-8")
    return session
