"""Write the training split's atom counts by property (model.data.atom_counts_by_property) into
checkpoints whose headers predate them, so that their designs can draw atom counts near the target.

The tensors stay byte for byte; each report folder's checkpoint.json that backs one of these files
gets the file's new sha256.

    .venv/bin/python scripts/record_atom_counts.py checkpoints/*.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.checkpoint import (  # noqa: E402
    CheckpointError,
    file_sha256,
    read_metadata,
    rewrite_metadata,
    weights_sha256,
)
from model.data import DatasetError, atom_counts_by_property, load_split  # noqa: E402


def record(path: Path, reports: Path) -> str:
    meta = read_metadata(path)
    train = load_split(meta.dataset, "train")
    table = atom_counts_by_property(train)
    marginal = {} if table is None else {int(n): sum(bins) / len(train) for n, bins in table["counts"].items()}
    if marginal and any(abs(marginal.get(n, 0) - p) > 1e-9 for n, p in meta.num_atoms.items()):
        raise SystemExit(f"error: {path} was trained on another {meta.dataset} split than data/ holds "
                         "(its atom-count distribution differs); retrain it or leave its header as is")
    header = meta.as_dict()
    header["num_atoms_by_property"] = table
    rewrite_metadata(path, header)
    weights = weights_sha256(path)
    for backs_file in sorted(reports.glob("*/*/checkpoint.json")):
        backs = json.loads(backs_file.read_text())
        if backs.get("checkpoint") == path.name and backs.get("weights_sha256") == weights:
            backs["sha256"] = file_sha256(path)
            backs_file.write_text(json.dumps(backs, indent=2) + "\n")
    bins = "none (one property value)" if table is None else f"{len(table['edges']) - 1} bins"
    return f"{path}: {bins}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports",
                        help="folder whose <model>/<report>/checkpoint.json files are kept in step")
    args = parser.parse_args()
    for path in args.checkpoints:
        try:
            print(record(path, args.reports))
        except (CheckpointError, DatasetError) as error:
            raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
