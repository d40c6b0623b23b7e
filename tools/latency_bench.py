"""Live-pipeline figures with a real Mosquitto and a real subscriber, side by side in one run:

- end of speech -> subscriber holding the event (p50, p95), replayed at real-time pace;
- CPU time of the whole pipeline against faster-whisper transcribing the same audio alone.

    .venv/bin/python tools/latency_bench.py --json docs/results/latency_cpu_2core.json

Needs mosquitto and espeak-ng (Debian packages of those names).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from benchkit import (
    DEFAULT_ENDPOINTING,
    ENDPOINTING_MODES,
    cpu_seconds,
    mosquitto,
    received_events,
    segmenter_options,
    write_report,
)

from stream.asr import load_whisper, resolve_model_folder, transcribe
from stream.messages import AudioChunk
from stream.options import AsrOptions, BrokerOptions, PipelineOptions, SegmenterOptions
from stream.render import render_scene, write_clip
from stream.run import RunRequest, run_pipeline
from stream.synth_sentences import SCENE_SENTENCES
from stream.vad import Segmenter


def rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default="default", help="checkpoint (default: the starter model)")
    parser.add_argument("--engine", default="auto", help="engine backend")
    parser.add_argument("--repeat", type=int, default=2, help="times the 9 scene sentences are said")
    parser.add_argument("--asr-threads", type=int, default=1, help="CTranslate2 threads of the pipeline's ASR")
    parser.add_argument("--asr-min-window-s", type=float, default=10.0, help="the pipeline's Whisper encoder window")
    parser.add_argument("--endpointing", default=DEFAULT_ENDPOINTING, choices=ENDPOINTING_MODES, help="segmenter")
    parser.add_argument("--speculative-pause-ms", type=float, default=SegmenterOptions().speculative_pause_ms)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp, mosquitto() as port:
        audio, frames, _, _ = render_scene(SCENE_SENTENCES * args.repeat, snr_db=60.0, dark_gain=1.0, fps=15, seed=0)
        clip = Path(tmp) / "bench.mp4"
        write_clip(clip, audio, frames, 15)
        with received_events(port, "dfmq/bench/intent", "dfmq-latency-sub") as received:
            asr = AsrOptions(cpu_threads=args.asr_threads, encoder_min_window_s=args.asr_min_window_s)
            req = RunRequest(ckpt=args.ckpt, input=str(clip), pace="realtime", engine=args.engine, asr=asr)
            marks: dict[str, float] = {}
            seg_opts = segmenter_options(args.endpointing, speculative_pause_ms=args.speculative_pause_ms)

            async def on_ready(host: str, p: int) -> None:
                marks["cpu"], marks["wall"] = cpu_seconds(), time.time()
                marks["rss_start_mb"] = rss_mb()

            asyncio.run(
                run_pipeline(
                    req,
                    BrokerOptions(url=f"mqtt://127.0.0.1:{port}"),
                    PipelineOptions(stream_id="bench"),
                    seg_opts,
                    on_ready=on_ready,
                )
            )
            pipeline_cpu = cpu_seconds() - marks["cpu"]
            marks["rss_end_mb"] = rss_mb()
            pipeline_wall = time.time() - marks["wall"]
            time.sleep(0.5)

        # The baselines are stock faster-whisper, as a user would run it alone on this audio: one
        # pass over the whole file (with CTranslate2's default threads and with one; the cheaper
        # is the reference), and the utterances the pipeline cut transcribed one by one (every
        # call padded to 30 s, as the live pipeline did before its encoder window).
        from faster_whisper import WhisperModel

        whole_file_cpu: dict[str, float] = {}
        for threads in (0, 1):
            whisper = WhisperModel(
                resolve_model_folder("tiny.en"), device="cpu", compute_type="int8", cpu_threads=threads
            )
            before = cpu_seconds()
            segments, _ = whisper.transcribe(audio, language="en", beam_size=1, vad_filter=False)
            words = " ".join(s.text for s in segments)
            whole_file_cpu[f"cpu_threads_{threads}"] = round(cpu_seconds() - before, 2)
        whisper_cpu = min(whole_file_cpu.values())
        segmenter = Segmenter(SegmenterOptions())
        utterances = [
            u for i in range(0, len(audio), 320) for u in segmenter.process(AudioChunk(audio[i : i + 320], i / 16000))
        ]
        utterances += segmenter.flush()
        before = cpu_seconds()
        for utterance in utterances:
            pieces, _ = whisper.transcribe(
                utterance.samples,
                language="en",
                beam_size=1,
                vad_filter=False,
                without_timestamps=True,
                condition_on_previous_text=False,
            )
            list(pieces)  # the segments are decoded lazily
        per_utterance_cpu = cpu_seconds() - before
        # The pipeline's own ASR (encoder window) alone on those utterances: what the rest of the
        # pipeline (capture, VAD, video, features, engine, MQTT) adds on top of it.
        load_whisper(asr)
        before = cpu_seconds()
        for utterance in utterances:
            transcribe(utterance.samples, asr)
        windowed_cpu = cpu_seconds() - before

    latency = np.array([(wall - float(e["speech_end_wall"])) * 1000 for wall, e in received])  # type: ignore[arg-type]
    report = {
        "audio_s": round(len(audio) / 16000, 1),
        "events": len(received),
        "utterances_spoken": len(SCENE_SENTENCES) * args.repeat,
        "speech_end_to_subscriber_ms": {
            "p50": round(float(np.percentile(latency, 50)), 1),
            "p95": round(float(np.percentile(latency, 95)), 1),
            "max": round(float(latency.max()), 1),
        },
        "stage_ms_p50": {
            stage: round(float(np.median([e["latency_ms"][stage] for _, e in received])), 1)  # type: ignore[index]
            for stage in ("vad", "asr", "features", "engine")
        },
        "segmenter": {
            "endpointing": args.endpointing,
            "speculative_pause_ms": args.speculative_pause_ms,
            "final_pitch_ratio": seg_opts.final_pitch_ratio,
        },
        "load_average_1min_at_start": round(load_at_start, 2),
        "pipeline_asr": {"cpu_threads": args.asr_threads, "encoder_min_window_s": args.asr_min_window_s},
        "pipeline_cpu_s": round(pipeline_cpu, 2),
        "pipeline_wall_s": round(pipeline_wall, 2),
        "whisper_whole_file_cpu_s": whole_file_cpu,
        "cpu_ratio_pipeline_over_whisper_whole_file": round(pipeline_cpu / whisper_cpu, 2),
        "whisper_per_utterance_cpu_s": round(per_utterance_cpu, 2),
        "cpu_ratio_pipeline_over_whisper_per_utterance": round(pipeline_cpu / per_utterance_cpu, 2),
        "pipeline_asr_alone_cpu_s": round(windowed_cpu, 2),
        "cpu_ratio_pipeline_over_its_asr_alone": round(pipeline_cpu / windowed_cpu, 2),
        "whisper_alone_words": len(words.split()),
        "rss_mb_at_start_and_end": [round(marks["rss_start_mb"]), round(marks["rss_end_mb"])],
    }
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
