"""Result files shared by the benchmark scorers: JSON lines, JSON, and the GenEval summary text.

Example:
  write_jsonl("scores/results.jsonl", rows)
  rows = read_jsonl("scores/results.jsonl")
  print(geneval_summary_text(geneval.summarize(rows)))
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from jaxmodels.evals import EvalInputError


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
  """Writes rows as JSON lines (UTF-8, one object a line), replacing the file."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
  """Appends one row and flushes it to disk, so a crash loses at most the row being written."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("a", encoding="utf-8") as f:
    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike, *, skip_bad_last_line: bool = False) -> list[dict]:
  """Reads JSON lines; blank lines are skipped.

  Args:
    path: the file.
    skip_bad_last_line: tolerate a truncated final line (an append interrupted by a crash).

  Raises:
    EvalInputError: missing file, or a line that is not a JSON object ("file:line").
  """
  path = Path(path)
  if not path.is_file():
    raise EvalInputError(f"{path}: file not found")
  lines = path.read_text(encoding="utf-8").splitlines()
  rows = []
  for lineno, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      if skip_bad_last_line and lineno == len(lines):
        break
      raise EvalInputError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(row, dict):
      raise EvalInputError(f"{path}:{lineno}: expected a JSON object")
    rows.append(row)
  return rows


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes indented JSON (UTF-8), creating parent folders; atomically (a temporary file renamed
  into place), so a reader never sees half a file."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
  tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
  os.replace(tmp, path)


def geneval_summary_text(summary: dict) -> str:
  """A GenEval summary (from `geneval.summarize`) laid out as the official `summary_scores.py`
  prints it: counts, % correct images / prompts, one line per tag, overall with 5 decimals."""
  lines = ["Summary", "=======",
           f"Total images: {summary['total_images']}",
           f"Total prompts: {summary['total_prompts']}",
           f"% correct images: {summary['correct_images']:.2%}",
           f"% correct prompts: {summary['correct_prompts']:.2%}", "",
           "Task breakdown", "=============="]
  for tag, t in summary["tags"].items():
    lines.append(f"{tag:<16} = {t['accuracy']:.2%} ({t['correct']} / {t['total']})")
  lines += ["", f"Overall score (avg. over tasks): {summary['overall']:.5f}"]
  return "\n".join(lines) + "\n"


def write_geneval_summary(out_dir: str | os.PathLike, summary: dict,
                          settings: dict | None = None) -> None:
  """Writes `summary_scores.txt` (the official printed shape) and `summary.json` (the numbers
  plus the settings used: thresholds, prompt file and its hash, completeness)."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "summary_scores.txt").write_text(geneval_summary_text(summary), encoding="utf-8")
  write_json(out / "summary.json", dict(summary, settings=settings or {}))


def _numeric(table: dict) -> dict[str, float]:
  return {str(k): float(v) for k, v in table.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def markdown_table(scores: dict) -> str:
  """Benchmarks (name → {metric: number}) as markdown: one `| metric | value |` table each;
  non-numeric entries are left out."""
  lines = []
  for bench, table in scores.items():
    if not isinstance(table, dict) or not _numeric(table):
      continue
    lines += [f"### {bench}", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in _numeric(table).items()]
    lines.append("")
  return "\n".join(lines)


def bar_chart(path: str | os.PathLike, title: str, values: dict) -> None:
  """A PNG bar chart of {name: number} drawn with Pillow (no plotting library needed). Values
  in 0..1 are drawn on a 0..1 axis, larger ones on 0..100 (ROVER's scale) or their maximum."""
  from PIL import Image, ImageDraw
  values = _numeric(values)
  if not values:
    return
  top = 1.0 if max(values.values()) <= 1.0 else max(100.0, max(values.values()))
  bar, gap, height, margin = 48, 16, 220, 40
  width = margin * 2 + len(values) * (bar + gap)
  img = Image.new("RGB", (max(width, 240), height + 2 * margin + 8), "white")
  draw = ImageDraw.Draw(img)
  draw.text((margin, 8), f"{title} (axis 0..{top:g})", fill="black")
  base = margin + height
  draw.line([(margin - 4, base), (img.width - margin // 2, base)], fill="black")
  for i, (name, value) in enumerate(values.items()):
    x = margin + i * (bar + gap)
    h = int(round(height * max(0.0, min(value, top)) / top))
    draw.rectangle([x, base - h, x + bar, base], fill=(30, 80, 230))
    draw.text((x, base - h - 12), f"{value:.3g}", fill="black")
    draw.text((x, base + 4), name[:9], fill="black")
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  img.save(path, format="PNG")


def write_score_reports(out_dir: str | os.PathLike, scores: dict) -> list[Path]:
  """Writes `scores.md` (markdown tables) and `<benchmark>.png` (bar chart) per benchmark next
  to the scores JSON; returns the files written."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "scores.md").write_text(markdown_table(scores), encoding="utf-8")
  written = [out / "scores.md"]
  for bench, table in scores.items():
    if isinstance(table, dict) and _numeric(table):
      bar_chart(out / f"{bench}.png", bench, table)
      written.append(out / f"{bench}.png")
  return written
