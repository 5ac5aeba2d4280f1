"""How these tables were made: one report over every cell of runs/compare_few_labels.

The parts were run with different --set grids, and each compress run keeps only its own grid's
stages in manifest.json. This takes the labelled-only cells from the manifest, the kd+unlabeled
cells from the sweeps run's entries (the same files, sha256 checked), and the all-labels cells
from their model files' recorded metrics, and writes the compare report to
runs/compare_few_labels_report/compare/. Run from the repository root.
"""

import copy
import hashlib
import json
import shutil
from pathlib import Path

import torch

from compress.compare.report import write_compare_report
from compress.config.load import load_pipeline
from compress.manifest import Manifest

RUN = Path("runs/compare_few_labels")
OUT = Path("runs/compare_few_labels_report")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def artifact(name: str, file: str) -> dict:
    path = RUN / name / file
    return {"path": f"{name}/{file}", "sha256": sha(path), "bytes": path.stat().st_size}


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    data = json.loads((RUN / "manifest.json").read_text())
    sweeps_run = Path("runs/compare_few_labels_sweeps/manifest.json")
    sweeps = json.loads(sweeps_run.read_text())["stages"]
    stages = data["stages"]
    teacher = {**stages["teacher"]["artifacts"]["model"], "stage": "teacher"}
    for k in range(5):
        name = f"labels100.distill-kd+unlabeled-s{k}"
        entry = copy.deepcopy(sweeps[f"labels100.distill-kd-s{k}"])
        for a in entry["artifacts"].values():
            a["path"] = a["path"].replace(f"labels100.distill-kd-s{k}/", name + "/", 1)
        assert (
            sha(RUN / entry["artifacts"]["model"]["path"]) == entry["artifacts"]["model"]["sha256"]
        )
        stages[name] = entry
        for method in ("baseline", "kd"):
            name = f"labels-all.distill-{method}-s{k}"
            meta = torch.load(RUN / name / "model.pt", weights_only=True, map_location="cpu")
            stages[name] = {
                "type": "distill",
                "status": "done",
                "metrics": meta["meta"]["metrics"],
                "inputs": {"teacher": teacher} if method == "kd" else {},
                "artifacts": {
                    "model": artifact(name, "model.pt"),
                    "history": artifact(name, "history.json"),
                },
                "note": "rebuilt from model.pt's recorded metrics (a later --set run dropped it)",
            }
    data["stages"] = {n: stages[n] for n in ["teacher", *sorted(set(stages) - {"teacher"})]}
    sets = ["distill.input=teacher", "grid.labels=[100, all]", "grid.unlabeled=[false, true]"]
    config = load_pipeline(Path("pipelines/compare_few_labels.yaml"), sets)
    data["pipeline"]["config"] = config.model_dump(mode="json")
    data["pipeline"]["command"] = "three compress run commands (README), merged by this script"
    for path in write_compare_report(Manifest(OUT, data)):
        print(path)


if __name__ == "__main__":
    main()
