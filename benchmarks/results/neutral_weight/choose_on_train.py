"""The neutral weight's candidate, chosen on training faces (docs/training.md, "Neutral as
other datasets label it"): ``qcs_ensemble``'s scores on 3,000 faces each of FER2013 train
(original labels), ExpW train and FER+ train (FER+ protocol), cut as ``emotion eval`` cuts
them with ``detector=full_frame``; neutral's score multiplied by w and the scores
renormalised. Per w: accuracy / mean recall / share called neutral.

    .venv/bin/python benchmarks/results/neutral_weight/choose_on_train.py > benchmarks/results/neutral_weight/choose_on_train.log
"""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))
import face_models as fm  # noqa: E402

rng = np.random.default_rng(2)
ensemble = fm.load_model("qcs_ensemble")
for name, (fmt, root, split) in [("fer2013_train", ("fer", fm.SHARED / "fer2013", "train")),
                                 ("expw_train", ("fer", fm.SHARED / "expw", "train")),
                                 ("ferplus_train", ("ferplus", fm.SHARED / "ferplus", "train"))]:
    labels, samples = fm.faces(fmt, str(root), split)
    chosen = rng.choice(len(samples), min(3000, len(samples)), replace=False)
    outcome = fm.predictions(ensemble, labels, [samples[i] for i in chosen], batch=64)
    model_labels = list(outcome["labels"])
    row = []
    for weight in [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]:
        scores = outcome["scores"].copy()
        scores[:, model_labels.index("neutral")] *= weight
        weighted = fm.scored(outcome["true"], scores, tuple(model_labels))
        accuracy = float((weighted["true"] == weighted["predicted"]).mean())
        recall = np.mean([(weighted["predicted"][weighted["true"] == c] == c).mean() for c in sorted(set(weighted["true"]))])
        row.append(f"w{weight}: {accuracy:.3f}/{recall:.3f}/{(weighted['predicted'] == 'neutral').mean():.2f}")
    print(name, " | ".join(row), flush=True)
