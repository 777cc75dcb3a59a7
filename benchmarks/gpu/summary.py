"""Read the folder run.sh wrote, write summary.txt there, and print the GPU SUMMARY line last.

The line's values are n/a where a stage did not produce them (a dry run without CUDA, a stage that
failed or ran out of time):

    GPU SUMMARY device=<name> tests_passed=<n> tests_failed=<n> sae_fwd_bf16_x_floor=<ratio at N 16384>
    sae_fwd_speedup_vs_dense=<ratio> sae_train_speedup_vs_dense=<ratio> hookedvit_x_hf=<ratio>

``sae_fwd_*`` come from bench_sae's bfloat16 forward table at N 16384, d_in 768, d_sae 49152, k 64, for
the backend ``auto`` ran there; ``sae_train_speedup_vs_dense`` from bench_train's widest SAE;
``hookedvit_x_hf`` from bench_model (batch 256, bfloat16).

    python benchmarks/gpu/summary.py OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from xml.etree import ElementTree

SUMMARY_SHAPE, SUMMARY_N = "768x49152x64", "16384"


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def test_counts(out: Path) -> tuple[dict[str, int], list[str]]:
    """passed / failed / skipped from the JUnit XML, or from pytest's -v lines if the stage was cut short;
    and the host-synchronisation sites the training test recorded."""
    junit = out / "pytest_cuda.xml"
    syncs: list[str] = []
    if junit.exists():
        root = ElementTree.parse(junit).getroot()
        suites = [root] if root.tag == "testsuite" else list(root)
        counts = {"passed": 0, "failed": 0, "skipped": 0}
        for suite in suites:
            total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            counts["passed"] += total - failed - skipped
            counts["failed"] += failed
            counts["skipped"] += skipped
        for prop in root.iter("property"):
            if prop.get("name") == "host_syncs" and prop.get("value"):
                syncs.append(prop.get("value"))
        return counts, syncs
    log = (out / "tests.txt").read_text() if (out / "tests.txt").exists() else ""
    return {
        "passed": len(re.findall(r" PASSED", log)) + len(re.findall(r" XPASS", log)),
        "failed": len(re.findall(r" (?:FAILED|ERROR)", log)),
        "skipped": len(re.findall(r" (?:SKIPPED|XFAIL)", log)),
    }, syncs


def sae_forward(out: Path) -> tuple[float | None, float | None, str]:
    """(ratio to the GEMM floor, speed-up over the dense reference, backend) of ``auto`` at the summary shape."""
    report = _load(out / "bench_sae_bfloat16.json")
    table = ((report or {}).get("forward", {}).get(SUMMARY_SHAPE) or {}).get(SUMMARY_N)
    if not table:
        return None, None, "n/a"
    seconds = table["seconds"]
    row = f"ours[{table['auto_backend']}]"
    if row not in seconds or "gemm_floor" not in seconds:
        return None, None, table["auto_backend"]
    speedup = seconds["dense_reference"] / seconds[row] if "dense_reference" in seconds else None
    return seconds[row] / seconds["gemm_floor"], speedup, table["auto_backend"]


def training_speedup(out: Path) -> float | None:
    report = _load(out / "bench_train.json")
    rows = [row for row in (report or {}).get("results", []) if row["row"] == "ours"]
    if not rows or report["machine"]["device"] == "cpu":
        return None
    return max(rows, key=lambda row: row["d_sae"])["speedup_vs_dense"]


def hookedvit_over_hf(out: Path) -> float | None:
    report = _load(out / "bench_model.json")
    if not report or report.get("device_type") != "cuda":
        return None
    return report["ratio_to_hf"].get("HookedViT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder run.sh wrote")
    args = parser.parse_args()
    environment = _load(args.out / "environment.json") or {}
    device = environment.get("device", "n/a").replace(" ", "_")
    counts, syncs = test_counts(args.out)
    x_floor, speedup, backend = sae_forward(args.out)
    lines = []
    stages = args.out / "stages.txt"
    if stages.exists():
        lines += ["stages:", *("  " + line for line in stages.read_text().splitlines())]
    if "ceilings" in environment:
        lines.append("ceilings: " + ", ".join(f"{name} {value:.0f}" for name, value in environment["ceilings"].items()))
    lines.append(f"tests: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped or xfailed")
    lines += [f"host syncs per training step: {sites}" for sites in syncs]
    lines.append(f"SAE forward at N {SUMMARY_N}, {SUMMARY_SHAPE}, bfloat16: backend='auto' ran {backend!r}")
    lines.append(
        f"GPU SUMMARY device={device} tests_passed={counts['passed']} tests_failed={counts['failed']} "
        f"sae_fwd_bf16_x_floor={_ratio(x_floor)} sae_fwd_speedup_vs_dense={_ratio(speedup)} "
        f"sae_train_speedup_vs_dense={_ratio(training_speedup(args.out))} "
        f"hookedvit_x_hf={_ratio(hookedvit_over_hf(args.out))}"
    )
    (args.out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
