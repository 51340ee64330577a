"""RetinaFace box crops at several head_expand on training faces shrunk to 0.6 of their frame
(room around them), for each model named.

    .venv/bin/python benchmarks/results/face_finding/expand_on_train.py ferplus_train,expw_train 600 \
        qcs_ensemble,qcs_ferplus,fer 0.6
"""
import sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import numpy as np, torch, yaml
from face_models import faces, labelled_sets, SHARED, load_model, paired_bootstrap, difference_text
from face_finding import framed_png
from emotion import storage
from emotion.images import decode_one
from emotion.crops import crop_resize, square_box
from emotion.labels import canonical_name, remap
from emotion.settings import RetinaFaceSettings
from emotion.models.detection.retinaface import build_detector
torch.set_num_threads(2)
cfg = yaml.safe_load(open(ROOT / "jobs/configs/detector/retinaface.yaml")); cfg["device"] = "cpu"
det = build_detector(RetinaFaceSettings(**cfg))
models = {m: load_model(m) for m in sys.argv[3].split(",")}
EXPANDS = (1.0, 1.1, 1.25)
sets = labelled_sets(SHARED)
sets["ferplus_train"] = ("ferplus", SHARED / "ferplus", "train")
sets["expw_train"] = ("fer", SHARED / "expw", "train")
fraction = float(sys.argv[4]) if len(sys.argv) > 4 else 0.6
for name in sys.argv[1].split(","):
    fmt, root, split = sets[name]
    labels, samples = faces(fmt, str(root), split)
    n = int(sys.argv[2]); samples = samples[::max(1, len(samples)//n)][:n]
    pixels = [decode_one(framed_png(storage.read_bytes(s["image_uri"]), fraction), 960, 10**8)[0] for s in samples]
    dets = [det.detect([p])[0] for p in pixels]
    found = np.array([len(r["scores"]) > 0 for r in dets])
    crops = {e: np.stack([crop_resize(p, square_box(r["boxes"][:1], e)[0], 80) if len(r["scores"]) else np.zeros((80, 80, 3), np.uint8)
                          for p, r in zip(pixels, dets)]) for e in EXPANDS}
    print(name, "found", found.mean())
    for mname, model in models.items():
        known = remap(list(labels), list(model.labels)) >= 0
        cls = np.array([int(np.argmax(s["labels"][0])) for s in samples]); keep = known[cls] & found
        true = np.array([canonical_name(labels[c]) for c in cls])[keep]
        correct = {}
        for e, c in crops.items():
            c = c[keep]
            sc = np.concatenate([model.predict({"head": c[i:i+256]})["scores"] for i in range(0, len(c), 256)])
            pred = np.array([canonical_name(model.labels[i]) for i in sc.argmax(1)])
            correct[e] = pred == true
            print(f"{name} {mname} expand {e}: acc {correct[e].mean():.4f} neutral {(pred=='neutral').mean():.3f}",
                  "" if e == 1.0 else "minus 1.0: " + difference_text(paired_bootstrap(correct[e], correct[1.0])), flush=True)
