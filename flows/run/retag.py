"""New tags on a finished, up-to-date run folder: cost.csv's `tags` column and run.json's
`tags` rewritten in place, with nothing generated or cut again (tags describe the run, not
the film). Plain csv and json: the "up to date" path stays free of pandas."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path

from flows.files.atomic import write_text_atomic
from flows.storyboard.tags import to_cell


def retag(run_dir: Path, tags: Mapping[str, str]) -> bool:
    """Record `tags` in the folder's reports; True when anything changed."""
    run_json = run_dir / "run.json"
    try:
        data = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or (data.get("tags") or {}) == dict(tags):
        return False
    cost = run_dir / "cost.csv"
    if cost.is_file():
        with cost.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            names = list(reader.fieldnames or [])
            rows = list(reader)
        if "tags" not in names:
            names.append("tags")
        for row in rows:
            row["tags"] = to_cell(tags)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(cost, out.getvalue())
    data["tags"] = dict(tags)
    write_text_atomic(run_json, json.dumps(data, indent=2, default=str))
    return True
