"""Check a ``--format labelstudio`` export with Label Studio's own validator before importing it.

    pip install label-studio-sdk
    python scripts/labelstudio_check.py EXPORT_FOLDER

Builds ``label_studio_sdk.label_interface.LabelInterface`` from the export's ``label_config.xml`` and
validates every prediction of its ``tasks*.json`` files against it (control and object names,
labels, region geometry); prints the counts and the first errors, and exits with 1 if any prediction
is invalid. Needs only the SDK (no Label Studio server) and none of this project's packages.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export", help="a folder written by florence2 dataset export --format labelstudio")
    args = parser.parse_args()
    try:
        from label_studio_sdk.label_interface import LabelInterface
    except ImportError:
        print("error: this check needs the Label Studio SDK: pip install label-studio-sdk", file=sys.stderr)
        return 2
    folder = Path(args.export)
    interface = LabelInterface((folder / "label_config.xml").read_text(encoding="utf-8"))
    tasks = regions = invalid = 0
    for path in sorted(folder.glob("tasks*.json")):
        for task in json.loads(path.read_text(encoding="utf-8")):
            tasks += 1
            for prediction in task.get("predictions", []):
                regions += len(prediction["result"])
                errors = interface.validate_prediction(prediction, return_errors=True)
                if errors:
                    invalid += 1
                    if invalid <= 10:
                        print(f"{path.name}: {task['data'].get('image')}: {errors}", file=sys.stderr)
    print(f"{tasks} tasks, {regions} regions, {invalid} invalid predictions")
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
