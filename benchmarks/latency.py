"""Latency, memory and accuracy of every backend and precision: the demo model and the SD1.5-size architecture.

`make bench` runs this.  Each part calls `vald bench` (one process per contender, identical inputs and
seeds, accuracy against the PyTorch fp32 reference of the same run) and writes
benchmarks/results/latency-<model>-<mode>.{json,md}; a plot of the end-to-end times goes to latency.png.

- demo (engines/demo, 128²): default settings (inversion, strength 0.7 of 50 DDIM steps, guidance 8),
  then img2img with diffusers' own StableDiffusionImg2ImgPipeline, then one thread vs the default.
- sd15-size (built from config with random weights: latency depends on the architecture, not the
  weights): made, exported and `vald quantize`d into build/ if absent (~25 min, ~11 GB peak RSS); the
  PyTorch references and vald's CPU paths (SD_CONTENDERS) at 512² and 256², first at the defaults with
  --sd-steps (default 10, i.e. 7 sampler steps at strength 0.7: one default-settings run of the FP32
  contenders takes ~15 min per resolution on 2 cores, so the schedule is shortened; per-call UNet
  times are reported, so the full default can be computed), then at --preset fast (10 steps: in full).

--quick: the demo at 20 steps with 1 repeat and the SD1.5-size model at 256² with 4 steps and 1 repeat
(about 15 minutes on 2 cores once the SD folder is exported).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from vald.bench.contenders import by_name
from vald.pipeline import part_sizes

ROOT = Path(__file__).resolve().parents[1]
VALD = [sys.executable, "-m", "vald.cli"]


def vald(*args: str) -> None:
    print("$ vald " + " ".join(args), flush=True)
    subprocess.run([*VALD, *args], check=True, cwd=ROOT)


def ensure_sd15(folder: Path, engines: Path, steps: int) -> None:
    if not (folder / "model_index.json").is_file():
        vald("make-sd15-model", str(folder))
    if not (engines / "manifest.json").is_file():
        vald("export", str(folder), "--out", str(engines))
    if not (engines / "int8" / "unet.xml").is_file():  # calibrated on the benchmark's own schedule
        config = engines / "calibration-run.toml"
        config.write_text(f"steps = {steps}\n", encoding="utf-8")
        samples = [str(ROOT / "engines" / "demo" / "samples" / f"{name}.png") for name in ("consolidation", "normal")]
        vald("quantize", str(engines), *samples, "--config", str(config))


# What the SD1.5-size rows compare (issue 25): the PyTorch references and vald's CPU paths.
SD_CONTENDERS = (
    "torch fp32,torch bf16,vald onnxruntime fp32,vald onnxruntime fp32 unet-batch-1,vald openvino bf16,"
    "vald openvino int8"
)


# UNet calls of one counterfactual at the defaults (inversion, 50 steps at strength 0.7: timesteps 681, 661, ..., 1;
# guided at t >= 600): 35 inversion calls of batch 1, then 5 guided steps of batch 3 (the counterfactual's two rows
# and the reconstruction's) and 30 of batch 2.  With the other stages, the full default from a shortened run's
# per-call times.
DEFAULT_CALLS = {1: 35, 3: 5, 2: 30}  # batch -> calls


def calls_at(unet_batch: int) -> dict[int, int]:
    """DEFAULT_CALLS as a run with setting ``unet_batch`` makes them (the split the denoiser itself uses)."""
    calls: dict[int, int] = {}
    for batch, n in DEFAULT_CALLS.items():
        for part in part_sizes(batch, unet_batch):
            calls[part] = calls.get(part, 0) + n
    return calls


def full_default_s(row: dict[str, Any]) -> float | None:
    """End to end at the full default schedule, from a shortened run's per-stage and per-call p50s."""
    stages = row.get("stages_s", {})
    calls = {f"unet_call_b{b}": n for b, n in calls_at(by_name(row["contender"], quick=False)[0].unet_batch).items()}
    if not all(k in stages for k in (*calls, "text_encoder", "vae_encoder", "vae_decoder")):
        return None
    once = sum(stages[k]["p50"] for k in ("text_encoder", "vae_encoder", "vae_decoder"))
    return once + sum(n * stages[k]["p50"] for k, n in calls.items())


def sd15_summary(out: Path) -> None:
    """One table of the SD1.5-size rows: the shortened default, the full default computed, the fast preset."""
    default_path, fast_path = out / "latency-sd15-size-inversion.json", out / "latency-sd15-size-inversion-fast.json"
    if not (default_path.is_file() and fast_path.is_file()):
        return
    default = {(r["size"], r["contender"]): r for r in json.loads(default_path.read_text())["rows"]}
    fast_data = json.loads(fast_path.read_text())
    fast = {(r["size"], r["contender"]): r for r in fast_data["rows"]}
    lines = [
        f"SD1.5-size, {fast_data['environment']['cpu'].get('model', '')}, {fast_data['threads']} threads, "
        f"{fast_data['date'][:10]}",
        "",
        "| size | contender | default, 10-step schedule (s) | full default, computed (s) | fast preset (s) "
        "| UNet call b1 / b2 / b3 (s) | peak RSS default / fast (GiB) | map corr vs torch fp32 (fast) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for key in sorted(fast, key=lambda k: (-k[0], k[1])):
        d, f = default.get(key, {}), fast[key]
        if "end_to_end_s" not in f or "end_to_end_s" not in d:
            continue
        full = full_default_s(d)
        full_text = "" if full is None else f"{full:.0f}"
        per_call = [d["stages_s"].get(f"unet_call_b{b}", {}).get("p50") for b in (1, 2, 3)]
        calls = " / ".join("–" if t is None else f"{t:.2f}" for t in per_call)
        corr = f.get("accuracy", {}).get("map_correlation")
        lines.append(
            f"| {key[0]}² | {key[1]} | {d['end_to_end_s']['p50']:.1f} | {full_text} | {f['end_to_end_s']['p50']:.1f} "
            f"| {calls} | {d['peak_rss_mib'] / 1024:.1f} / {f['peak_rss_mib'] / 1024:.1f} | "
            f"{'' if corr is None else f'{corr:.3f}'} |"
        )
        rows.append({"size": key[0], "contender": key[1], "full_default_s": full, "fast_s": f["end_to_end_s"]["p50"]})
    (out / "latency-sd15-size-summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "latency-sd15-size-summary.json").write_text(
        json.dumps({"default_calls_by_batch": DEFAULT_CALLS, "rows": rows}, indent=1) + "\n", encoding="utf-8"
    )


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for path in sorted(out.glob("latency-*.json")):
        data = json.loads(path.read_text())
        for size in sorted({r["size"] for r in data["rows"]}):
            rows = [r for r in data["rows"] if r["size"] == size and "end_to_end_s" in r]
            if rows:
                panels.append((f"{path.stem.removeprefix('latency-')} {size}²", rows))
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.2 + 0.45 * sum(len(r) for _, r in panels)))
    for ax, (title, rows) in zip([axes] if len(panels) == 1 else axes, panels, strict=True):
        names = [r["contender"] for r in rows]
        times = [r["end_to_end_s"]["p50"] for r in rows]
        colours = ["tab:blue" if n.startswith("vald") else "tab:grey" for n in names]
        ax.barh(names, times, color=colours)
        for y, r in enumerate(rows):
            corr = r.get("accuracy", {}).get("map_correlation")
            ax.text(times[y], y, f" {times[y]:.3g} s" + (f", map corr {corr:.3f}" if corr else ""), va="center")
        ax.set_title(title, fontsize=9)
        ax.invert_yaxis()
        ax.set_xlabel("end to end p50 (s), lower is better")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    from PIL import Image  # a 64-colour palette: a third of the bytes (the repository stays small)

    image = Image.open(out / "latency.png").convert("RGB")
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(out / "latency.png", optimize=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--sd-folder", type=Path, default=ROOT / "build" / "sd15")
    p.add_argument("--sd-engines", type=Path, default=ROOT / "build" / "sd15-engines")
    p.add_argument("--sd-steps", type=int, default=10)
    p.add_argument("--only", choices=["demo", "sd15"], help="run one part")
    args = p.parse_args()
    out = str(args.out)
    demo = ["--engines", "engines/demo", "--out", out]
    if args.only in (None, "demo"):
        steps = ["--steps", "20", "--repeats", "1", "--quick"] if args.quick else ["--repeats", "5"]
        vald("bench", *demo, *steps)
        vald("bench", *demo, *steps, "--mode", "img2img", "--guidance-min-t", "0")  # as diffusers guides
        vald(
            "bench",
            *demo,
            *steps,
            "--threads",
            "1",
            "--contenders",
            "vald onnxruntime fp32,vald openvino bf16,torch fp32",
        )
    if args.only in (None, "sd15"):
        ensure_sd15(args.sd_folder, args.sd_engines, args.sd_steps)
        sd = ["--engines", str(args.sd_engines), "--model", str(args.sd_folder), "--name", "sd15-size", "--out", out]
        sizes = ["--size", "256"] if args.quick else ["--size", "512", "--size", "256"]
        # one warm run even in --quick: a cold run alone is dominated by first-call set-up (torch's first
        # batch-1 UNet call took 25-40 s at 256² in a cold-only quick run)
        steps = ["--steps", "4" if args.quick else str(args.sd_steps), "--repeats", "1"]
        image = ["--image", "engines/demo/samples/consolidation.png", "--contenders", SD_CONTENDERS]
        vald("bench", *sd, *sizes, *steps, *image)  # the defaults on a shortened schedule
        vald("bench", *sd, *sizes, "--preset", "fast", "--repeats", "1", *image)  # the fast preset, in full
        sd15_summary(args.out)
    plot(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
