"""Generate the demo table: fictional clinic visits, with its release spec.

Every value is made up here (numpy ``default_rng(seed)``), so the table is safe to commit and share,
while looking like the kind of table safesynth is for: mixed integer, float, categorical (some
nullable, with a few missing values), boolean, datetime and a short free-text column, with
correlations a synthesizer should keep (age drives department, insurance and smoking; department and
visit type drive the bill, waiting time and follow-up; waiting time drives satisfaction).

Usage::

    python data/make_demo.py                 # writes data/demo.csv and data/demo.yaml
    python data/make_demo.py --rows 500 --seed 3 --out /tmp/demo

The output is a deterministic function of ``--rows`` and ``--seed``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

DEPARTMENTS = ("general_practice", "cardiology", "orthopedics", "dermatology", "neurology")
VISIT_TYPES = ("routine", "urgent", "follow_up", "telehealth")
REGIONS = ("north", "south", "east", "west", "central")
INSURANCE = ("public", "private", "self_pay")
SEXES = ("female", "male", "other")
NOTE_MAX = 120

# Word lists for the free-text note, per department: "<complaint> <duration>; <action>."
COMPLAINTS = {
    "general_practice": ("persistent cough", "mild fever", "sore throat", "fatigue", "seasonal allergies",
                         "recurring headaches", "trouble sleeping"),
    "cardiology": ("chest tightness on exertion", "palpitations", "shortness of breath",
                   "high blood pressure", "swollen ankles", "dizziness when standing"),
    "orthopedics": ("knee pain after running", "lower back pain", "stiff shoulder", "sprained ankle",
                    "wrist pain when typing", "hip pain on stairs"),
    "dermatology": ("itchy rash on the forearm", "dry patches on the elbows", "a changing mole",
                    "acne flare-up", "sunburn that is slow to heal", "hives after a new detergent"),
    "neurology": ("migraines with aura", "numbness in the fingers", "memory lapses",
                  "tremor in the right hand", "episodes of vertigo", "tingling in both feet"),
}
DURATIONS = ("for two days", "for about a week", "for several weeks", "since last month",
             "on and off this year")
ACTIONS = {
    "general_practice": ("advised rest, fluids and paracetamol", "prescribed a short course of antibiotics",
                         "ordered routine blood work", "recommended over-the-counter medication"),
    "cardiology": ("ordered an ECG", "adjusted blood pressure medication", "booked a stress test",
                   "advised a low-salt diet"),
    "orthopedics": ("referred to physiotherapy", "ordered an X-ray", "advised ice, rest and elevation",
                    "fitted a support brace"),
    "dermatology": ("prescribed a topical cream", "scheduled a biopsy", "advised a gentle moisturiser",
                    "recommended daily sunscreen"),
    "neurology": ("ordered an MRI", "started a headache diary", "adjusted medication dose",
                  "referred for nerve conduction tests"),
}


def _choice(rng: np.random.Generator, options: tuple[str, ...], probs: np.ndarray) -> np.ndarray:
    """One draw per row from ``options`` with per-row probabilities ``probs`` (rows x options)."""
    probs = probs / probs.sum(axis=1, keepdims=True)
    cumulative = probs.cumsum(axis=1)
    picks = (rng.random(len(probs))[:, None] > cumulative).sum(axis=1)
    return np.asarray(options, dtype=object)[np.minimum(picks, len(options) - 1)]


def _with_missing(rng: np.random.Generator, values: np.ndarray, rate: float) -> np.ndarray:
    out = values.astype(object)
    out[rng.random(len(out)) < rate] = None
    return out


def make_visits(rows: int, seed: int) -> pd.DataFrame:
    """The demo table as text columns, exactly as written to CSV (``None`` is an empty cell)."""
    rng = np.random.default_rng(seed)
    young = rng.random(rows) < 0.35  # a mixture: younger adults and an older majority
    age = np.where(young, rng.normal(32, 8, rows), rng.normal(61, 13, rows))
    age = np.clip(np.round(age), 18, 95).astype(int)
    old = (age - 18) / 77.0  # 0 .. 1
    sex = _choice(rng, SEXES, np.tile([0.53, 0.46, 0.01], (rows, 1)))
    region = _choice(rng, REGIONS, np.tile([0.18, 0.22, 0.2, 0.15, 0.25], (rows, 1)))
    department = _choice(rng, DEPARTMENTS, np.column_stack([
        np.full(rows, 0.45), 0.05 + 0.35 * old**2, np.full(rows, 0.17), 0.25 * (1 - old), 0.05 + 0.12 * old]))
    is_dept = {d: department == d for d in DEPARTMENTS}
    chronic = is_dept["cardiology"] | is_dept["neurology"]
    visit_type = _choice(rng, VISIT_TYPES, np.column_stack([
        np.full(rows, 0.45), 0.08 + 0.12 * is_dept["orthopedics"], 0.2 + 0.15 * chronic,
        0.12 + 0.15 * is_dept["dermatology"]]))
    insurance = _choice(rng, INSURANCE, np.column_stack([
        0.2 + 0.7 * (age >= 65), np.full(rows, 0.6), np.full(rows, 0.12)]))
    smoker = rng.random(rows) < (0.12 + 0.1 * (sex == "male") + 0.08 * (age < 45))
    bmi = np.clip(rng.normal(24.5 + 5 * old + 2.0 * (department == "cardiology"), 4.0), 15.0, 55.0)
    base_wait = np.where(visit_type == "urgent", 35, np.where(visit_type == "telehealth", 8, 22))
    wait = np.clip(np.round(rng.gamma(2.0, base_wait / 2.0) + 5 * (region == "central")), 0, 240).astype(int)
    dept_cost = {"general_practice": 90, "cardiology": 420, "orthopedics": 310, "dermatology": 160,
                 "neurology": 380}
    cost = np.vectorize(dept_cost.get)(department) * np.where(visit_type == "urgent", 1.8, 1.0)
    cost = cost * np.where(visit_type == "telehealth", 0.5, 1.0) * np.where(insurance == "self_pay", 0.8, 1.0)
    bill = np.clip(np.round(cost * rng.lognormal(0.0, 0.35, rows), 2), 0.0, 5000.0)
    follow_up = rng.random(rows) < (0.15 + 0.3 * chronic + 0.1 * (visit_type == "urgent"))
    satisfaction = np.clip(np.round(4.6 - wait / 45 + rng.normal(0, 0.8, rows)), 1, 5).astype(int)
    start = np.datetime64("2023-01-01")
    visit_date = start + rng.integers(0, 731, rows).astype("timedelta64[D]")
    note = np.array([_note(rng, d) for d in department], dtype=object)
    frame = pd.DataFrame({
        "visit_date": visit_date.astype(str),
        "age": age.astype(str),
        "sex": sex,
        "region": region,
        "department": department,
        "visit_type": visit_type,
        "insurance": _with_missing(rng, insurance, 0.03),
        "smoker": _with_missing(rng, np.where(smoker, "true", "false"), 0.02),
        "bmi": _with_missing(rng, np.char.mod("%.1f", bmi), 0.04),
        "wait_minutes": wait.astype(str),
        "bill_amount": np.char.mod("%.2f", bill),
        "satisfaction": _with_missing(rng, satisfaction.astype(str), 0.12),
        "follow_up": np.where(follow_up, "true", "false"),
        "note": _with_missing(rng, note, 0.05),
    })
    return frame


def _note(rng: np.random.Generator, department: str) -> str:
    complaint = COMPLAINTS[department][rng.integers(len(COMPLAINTS[department]))]
    duration = DURATIONS[rng.integers(len(DURATIONS))]
    action = ACTIONS[department][rng.integers(len(ACTIONS[department]))]
    text = f"Reports {complaint} {duration}; {action}."
    assert len(text) <= NOTE_MAX, text  # the word lists are ours: fail loudly if one gets too long
    return text


SPEC = """\
# Release spec for the demo table (fictional clinic visits, generated by data/make_demo.py).
# Every column is declared with its public domain, so no budget is spent on discovery.
# Relative paths resolve against this file's directory.
dataset: demo
source: demo.csv

columns:
  visit_date:
    type: datetime
    min: 2023-01-01T00:00:00
    max: 2024-12-31T00:00:00
    resolution: day
  age:
    type: integer
    min: 18
    max: 95
  sex:
    type: categorical
    categories: [{sexes}]
  region:
    type: categorical
    categories: [{regions}]
  department:
    type: categorical
    categories: [{departments}]
  visit_type:
    type: categorical
    categories: [{visit_types}]
  insurance:
    type: categorical
    nullable: true
    categories: [{insurance}]
  smoker:
    type: boolean
    nullable: true
  bmi:
    type: float
    nullable: true
    min: 15.0
    max: 55.0
    precision: 1
  wait_minutes:
    type: integer
    min: 0
    max: 240
  bill_amount:
    type: float
    min: 0.0
    max: 5000.0
    precision: 2
  satisfaction:
    type: integer
    nullable: true
    min: 1
    max: 5
    description: Post-visit survey score; missing when the survey was not returned.
  follow_up:
    type: boolean
  note:
    type: text
    nullable: true
    max_length: {note_max}
    description: Short clinician note.

privacy:
  epsilon: 4.0
  delta: 1.0e-6
  lifetime_epsilon: 40.0

generator:
  kind: marginals

sampling:
  rows: 2000
  seed: 0

audit:
  holdout_fraction: 0.2
  max_attack_auc: 0.6

publish:
  target: ../releases
"""


def write_demo(out: Path, *, rows: int, seed: int) -> tuple[Path, Path]:
    """Write ``demo.csv`` and ``demo.yaml`` into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, spec_path = out / "demo.csv", out / "demo.yaml"
    make_visits(rows, seed).to_csv(csv_path, index=False, na_rep="", lineterminator="\n")
    spec_path.write_text(SPEC.format(
        sexes=", ".join(SEXES), regions=", ".join(REGIONS), departments=", ".join(DEPARTMENTS),
        visit_types=", ".join(VISIT_TYPES), insurance=", ".join(INSURANCE), note_max=NOTE_MAX,
    ), encoding="utf-8")
    return csv_path, spec_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Generate the fictional clinic-visits demo table and its spec.")
    parser.add_argument("--rows", type=int, default=3000, help="rows to generate (default: 3000)")
    parser.add_argument("--seed", type=int, default=20240501, help="numpy seed (default: 20240501)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output directory for demo.csv and demo.yaml (default: this script's directory)")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be >= 1")
    csv_path, spec_path = write_demo(args.out, rows=args.rows, seed=args.seed)
    print(f"wrote {csv_path} ({args.rows} rows) and {spec_path}")


if __name__ == "__main__":
    main()
