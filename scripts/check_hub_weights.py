"""Prints keras_vit's worst error on every timm / Hugging Face reference folder (README's table).

    python scripts/check_hub_weights.py [REFERENCE_ROOT]     (default: tests/data/hub)
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from keras_vit.tools.hub_reference import reference_table  # noqa: E402

COLUMNS = ("logits", "features", "raw_logits", "intermediates", "resized_logits", "dynamic_size_logits")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "hub"))
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    rows = reference_table(args.root)
    if args.json:
        print(json.dumps(rows, indent=2))
        sys.exit(0)
    print("| case | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for row in rows:
        cells = [f"{row['errors'][c]:.1e}" if c in row["errors"] else "" for c in COLUMNS]
        print(f"| {row['case']} | " + " | ".join(cells) + " |")
