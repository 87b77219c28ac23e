"""The throughput table the cost forecast reads (``bench/throughput.yaml``): measured pairs per
second by stage, model family, size and hardware, and how a size that was not measured is
interpolated (``ThroughputTable.lookup``). The forecast itself is ``study/forecast.py``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rerank_ray.config import PROJECT_ROOT

# Looked up in the working directory first (a `ray job submit --working-dir .` upload), then in
# the project checkout this package was imported from; an installed wheel ships no bench/.
THROUGHPUT_FILES = (Path("bench") / "throughput.yaml", PROJECT_ROOT / "bench" / "throughput.yaml")
STAGES = ("train", "score", "evaluate")
# An entry's `precision`: fp32 (absent) or bf16 (run under model.autocast: bf16).
PRECISIONS = ("fp32", "bf16")


class ForecastError(ValueError):
    """The throughput table or the data cannot give a forecast; the message says what is missing."""


@dataclass(frozen=True)
class Throughput:
    pairs_per_s: float
    measured: bool  # False: interpolated from other sizes (or fp32 standing in for bf16)


@dataclass
class ThroughputTable:
    entries: list[dict[str, Any]]
    overhead_s: dict[str, float]
    hardware: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, path: str | Path | None = None) -> ThroughputTable:
        """The table at `path`, else the first of :data:`THROUGHPUT_FILES` that exists."""
        found = [Path(path)] if path is not None else [p for p in THROUGHPUT_FILES if p.is_file()]
        if not found or not found[0].is_file():
            tried = [str(path)] if path is not None else [str(p) for p in THROUGHPUT_FILES]
            raise ForecastError(f"no throughput table at {' or '.join(tried)}; run from the project checkout")
        path = found[0]
        data = yaml.safe_load(path.read_text())
        for i, entry in enumerate(data["entries"]):
            missing = {"stage", "family", "layers", "hardware", "pairs_per_s", "measured"} - set(entry)
            if (
                missing
                or entry["stage"] not in STAGES
                or entry["hardware"] not in data["hardware"]
                or entry.get("precision", "fp32") not in PRECISIONS
            ):
                raise ForecastError(
                    f"{path}: entries[{i}] needs stage ({'/'.join(STAGES)}), family, layers, a hardware "
                    f"listed under `hardware`, pairs_per_s, measured, and a precision of "
                    f"{'/'.join(PRECISIONS)} if any; got {entry}"
                )
        return cls(entries=data["entries"], overhead_s=data.get("overhead_s", {}), hardware=data["hardware"])

    def default_hardware(self, gpu: bool) -> str | None:
        kind = "gpu" if gpu else "cpu"
        return next((name for name, h in self.hardware.items() if h.get("kind") == kind), None)

    def lookup(
        self,
        stage: str,
        family: str,
        layers: int,
        hardware: str,
        precision: str = "fp32",
        hidden: int = 384,
        lora: bool = False,
        max_length: int | None = None,
    ) -> Throughput | None:
        """Pairs/s for (stage, family, layers, hardware, precision): measured, interpolated, or
        None. `precision` is ``bf16`` for a model run under bf16 autocast on the CPU
        (``model.autocast: bf16``; an entry's ``precision``, absent = fp32); with no bf16 entry
        for the stage, family and hardware, the fp32 rates stand in, marked as not measured.
        Sizes are interpolated over layers among entries of the same hidden width (an entry's
        ``hidden``, absent = 384, MiniLM's): a 768-wide layer costs about 4 times a 384-wide one.
        A LoRA model trains at the rates of entries with ``lora: true`` (evaluation and scoring
        run the merged model, at the plain rates). When some of the matching entries were
        measured at `max_length`, only those count."""
        lora = lora and stage == "train"
        entries = [
            e
            for e in self.entries
            if (e["stage"], e["family"], e["hardware"], e.get("precision", "fp32"), e.get("hidden", 384))
            == (stage, family, hardware, precision, hidden)
            and e.get("lora", False) == lora
        ]
        if any(e.get("max_length") == max_length for e in entries):
            entries = [e for e in entries if e.get("max_length") == max_length]
        # An entry measured while k runs shared the machine (``shared_by: k``) is scaled to the
        # machine alone: k times its rate.
        points = sorted(
            (e["layers"], 1.0 / (e["pairs_per_s"] * e.get("shared_by", 1)), e["measured"]) for e in entries
        )
        if not points and precision != "fp32":
            found = self.lookup(
                stage, family, layers, hardware, hidden=hidden, lora=lora, max_length=max_length
            )
            return None if found is None else Throughput(found.pairs_per_s, False)
        if not points and hidden != 384:
            # A width never measured (a tiny test model, a new family member): MiniLM's rates
            # stand in, marked as not measured, as before widths were keyed.
            found = self.lookup(stage, family, layers, hardware, precision, lora=lora, max_length=max_length)
            return None if found is None else Throughput(found.pairs_per_s, False)
        if not points:
            return None
        for n, spp, measured in points:
            if n == layers:
                return Throughput(1.0 / spp, measured)
        if len(points) == 1:
            n, spp, _ = points[0]
            return Throughput(1.0 / (spp * (layers + 1) / (n + 1)), False)
        below = [p for p in points if p[0] < layers]
        above = [p for p in points if p[0] > layers]
        a, b = (below[-1], above[0]) if below and above else (points[:2] if not below else points[-2:])
        spp = a[1] + (b[1] - a[1]) * (layers - a[0]) / (b[0] - a[0])
        # Extrapolating below the smallest size must not reach zero seconds per pair.
        return Throughput(1.0 / max(spp, min(p[1] for p in points) * 0.25), False)
