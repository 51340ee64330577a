"""How the face-finding crop's two numbers were chosen, on training faces only: the square's
side as a multiple of RetinaFace's box (expand: 0.9, 1.0, 1.1) and the largest square cut, as a
fraction of the frame's shorter side (limit: 0.85, 1.0), against the whole frame, for the
default model at 1.0, 0.8 and 0.6 of the frame. Logs: tune_320.log (RetinaFace as configured),
tune_160.log (UP=160 MAX=320: a smaller canvas).

    UP=320 MAX=640 .venv/bin/python benchmarks/results/face_finding/tune_on_train.py ferplus_train,expw_train 600
"""
import sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
import numpy as np, torch, yaml
from PIL import Image
from face_models import faces, labelled_sets, SHARED, load_model, paired_bootstrap, difference_text
from emotion import storage
from emotion.images import decode_one
from emotion.crops import crop_resize, square_box
from emotion.labels import canonical_name, remap
from emotion.settings import RetinaFaceSettings
from emotion.models.detection.retinaface import build_detector
def framed(px, fraction):
    if fraction == 1.0: return px
    h, w = px.shape[:2]
    border = np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]]).mean(0)
    canvas = np.empty_like(px); canvas[:] = border.round().astype(np.uint8)
    ih, iw = max(1, round(h*fraction)), max(1, round(w*fraction))
    small = np.asarray(Image.fromarray(px).resize((iw, ih), Image.BILINEAR))
    t, l = (h-ih)//2, (w-iw)//2
    canvas[t:t+ih, l:l+iw] = small
    return canvas

torch.set_num_threads(2)
cfg = yaml.safe_load(open(ROOT / "jobs/configs/detector/retinaface.yaml"))
det = build_detector(RetinaFaceSettings(**cfg))
model = load_model("qcs_ensemble")
size = 80
VARIANTS = [(e, t) for e in (0.9, 1.0, 1.1) for t in (0.85, 1.0)]
import os
cfg.update(upscale_size=int(os.environ.get("UP", 320)), max_size=int(os.environ.get("MAX", 640)))
det = build_detector(RetinaFaceSettings(**cfg))

def refined_box(px, r, expand, limit):
    h, w = px.shape[:2]
    full = square_box(np.array([[0, 0, w, h]], np.float32), 1.0)[0]
    if not len(r["scores"]):
        return full
    b = r["boxes"][0]
    side = max(b[2]-b[0], b[3]-b[1]) * expand
    if side >= limit * min(h, w):
        return full
    cx, cy = (b[0]+b[2])/2, (b[1]+b[3])/2
    x1 = min(max(cx - side/2, 0), w - side); y1 = min(max(cy - side/2, 0), h - side)
    return np.array([x1, y1, x1+side, y1+side], np.float32)

sets = labelled_sets(SHARED)
sets["ferplus_train"] = ("ferplus", SHARED / "ferplus", "train")
sets["expw_train"] = ("fer", SHARED / "expw", "train")
for name in sys.argv[1].split(","):
    fmt, root, split = sets[name]
    labels, samples = faces(fmt, str(root), split)
    n = int(sys.argv[2]); samples = samples[::max(1, len(samples)//n)][:n] if n else samples
    known = remap(list(labels), list(model.labels)) >= 0
    samples = [s for s in samples if known[int(np.argmax(s["labels"][0]))]]
    true = np.array([canonical_name(labels[int(np.argmax(s["labels"][0]))]) for s in samples])
    pixels = [decode_one(storage.read_bytes(s["image_uri"]), 960, 10**8)[0] for s in samples]
    for fraction in (1.0, 0.8, 0.6):
        t0 = time.time()
        imgs = [framed(p, fraction) for p in pixels]
        dets = [det.detect([im])[0] for im in imgs]
        crops = {"base": []}; crops.update({v: [] for v in VARIANTS})
        for im, r in zip(imgs, dets):
            crops["base"].append(crop_resize(im, refined_box(im, {"scores": []}, 1, 1), size))
            for v in VARIANTS:
                crops[v].append(crop_resize(im, refined_box(im, r, *v), size))
        correct = {}
        for k, c in crops.items():
            sc = np.concatenate([model.predict({"head": np.stack(c[i:i+256])})["scores"] for i in range(0, len(c), 256)])
            pred = np.array([canonical_name(model.labels[i]) for i in sc.argmax(1)])
            correct[k] = pred == true
            mr = np.mean([correct[k][true == c_].mean() for c_ in set(true)])
            extra = "" if k == "base" else difference_text(paired_bootstrap(correct[k], correct["base"]))
            print(f"{name} {fraction} {str(k):12} acc {correct[k].mean():.4f} mrec {mr:.3f} neutral {(pred=='neutral').mean():.3f} {extra}", flush=True)
        print(f"  {time.time()-t0:.0f}s", flush=True)
