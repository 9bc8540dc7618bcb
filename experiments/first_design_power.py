"""What the first, underpowered experiment design can and cannot detect, from its committed results.csv files.

The first method-comparison and expert-count sweeps kept no per-example outputs, so no paired test over the same
test examples can be computed for them. This script states, with scipy, the two things their committed
per-trial numbers do support:

1. The smallest difference in macro task_score detectable with 80 % power at a two-sided alpha of 0.05 by a
   two-proportion z-test at a task score near 0.5. Two bounds: treating all 240 answers of a method (80 prompts x
   3 seeds) as independent (optimistic: the seeds answer the same 80 prompts in the same training order), and
   counting the 80 distinct prompts only (pessimistic).
2. Welch t-tests over the three per-seed values for the differences the READMEs cite. The seeds varied the
   initialisation and routing noise only, not the training order, so these spreads understate run-to-run
   variation and the p-values are optimistic (several methods have zero spread: their seeds are identical).

Usage: python experiments/first_design_power.py
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

from scipy import stats

HERE = Path(__file__).resolve().parent


def per_seed(csv_path: Path, group_column: str, metric: str) -> dict[str, list[float]]:
    """``{group: [value per finished seed]}`` from a sweep's results.csv."""
    groups: dict[str, list[float]] = {}
    with open(csv_path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["status"] == "done":
                groups.setdefault(row[group_column], []).append(float(row[metric]))
    return groups


def detectable_difference(answers: int, p: float = 0.5, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest difference of two proportions near ``p`` a two-sided z-test detects with ``power``."""
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return z * math.sqrt(2 * p * (1 - p) / answers)


def welch(label: str, a: list[float], b: list[float]) -> str:
    difference = sum(a) / len(a) - sum(b) / len(b)
    with warnings.catch_warnings():  # groups with identical seeds (zero spread) warn of precision loss
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a, b, equal_var=False)
    return f"{label}: difference {difference:+.4f}, Welch t-test over seeds p = {result.pvalue:.2g}"


def main() -> None:
    print("Smallest detectable macro task_score difference (80 % power, alpha 0.05, score near 0.5):")
    print(f"  240 answers per method, all independent (optimistic): {detectable_difference(240):.3f}")
    print(f"  80 distinct prompts per method (pessimistic):        {detectable_difference(80):.3f}")
    methods = HERE / "method_comparison" / "results" / "results.csv"
    loss = per_seed(methods, "variant", "macro/loss")
    auto_cot = per_seed(methods, "variant", "auto_cot/loss")
    score = per_seed(methods, "variant", "macro/task_score")
    print("Method comparison (3 seeds each; seeds do not vary the training order):")
    print("  " + welch("macro loss, HyCAM - LoRA r8", loss["hycam"], loss["lora"]))
    print("  " + welch("macro loss, HyCAM - DoRA", loss["hycam"], loss["dora"]))
    print("  " + welch("auto_cot loss, HyCAM - CAM", auto_cot["hycam"], auto_cot["cam"]))
    print("  " + welch("macro task_score, HyCAM - LoRA r8", score["hycam"], score["lora"]))
    experts = HERE / "expert_count" / "results" / "results.csv"
    k_loss = per_seed(experts, "model.hycam.num_experts", "auto_cot/loss")
    for k in ("1", "2", "4", "8"):
        print("  " + welch(f"expert count: auto_cot loss, K = {k} - K = 0", k_loss[k], k_loss["0"]))


if __name__ == "__main__":
    main()
