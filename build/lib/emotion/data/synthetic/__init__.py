"""Synthetic emotion scenes whose labels need face, body AND context to be read right.

Each RGB image shows 1-3 cartoon people in a scene. Three levels each carry a cue for
one of the ``SYNTHETIC_CATEGORIES`` (Happiness, Sadness, Anger, Fear, Surprise, Peace):

========== ============================================================================
level      cue per category
========== ============================================================================
face       mouth and brows: smile / frown + worried brows / V brows + tight mouth /
           wide eyes + small open mouth / raised brows + big "O" / closed eyes + soft smile
body       pose: arms up in a V / slumped, arms hanging, head down / hands on hips,
           wide stance / hands up beside the head, crouched / arms flung out wide /
           seated cross-legged, hands on knees
context    scene: sunny yellow sky, sun, balloons / dark blue rain / red sky, flames,
           lightning / night, moon, bare trees, glowing eyes / pink confetti, stars /
           blue sky over a green meadow
========== ============================================================================

The context is one per image; face and body are per person. Clothes colour, skin tone,
positions, sizes and scene details are random and carry no label.

**True label rule** (``true_label``): the category that at least two of the three levels
show; when all three differ, the face's. A fraction ``conflict_rate`` of images are
*conflict* images in which every person's levels disagree, in one of four equally likely
ways: face odd one out (label = body = context), body odd (label = face = context),
context odd (label = face = body), all three different (label = face). So on conflict
people a face-only model is right 3/4 of the time, body-only or context-only 1/2, and only
a model that combines levels can reach 100 %.

Labels are stored multi-hot over the 6 categories (one true category per person) and
evaluated like EMOTIC (sigmoid, mAP). VAD per person is the category's (valence,
arousal, dominance) on EMOTIC's 1-10 scale plus N(0, 0.5) noise.

``generate_synthetic_emotic`` writes a real EMOTIC-format dataset (JPEGs under
``<root>/synthetic/images/`` and ``<root>/Annotations.mat``) that
``emotion.data.emotic.read_emotic`` reads; each person also carries ``head_bbox`` (read as
the face box) and ``cue_face``/``cue_body``/``cue_context`` fields (ignored by readers,
kept so tests and analyses can check the rule). Everything is deterministic in ``seed``:
image ``i`` of split ``s`` depends only on (seed, s, i, conflict_rate, image_size).

Modules: ``spec`` (categories, the label rule, the scene and person parameters, how they
are sampled, and the body geometry that gives the boxes), ``drawing`` (scenes and people
rendered to pixels: ``render_scene``, ``iter_scenes``) and ``writer`` (the EMOTIC-format
dataset on disk: ``generate_synthetic_emotic``, ``build_synthetic``). The names below are
re-exported from here.

The subpackage ``scenes_v2`` is a second, harder generator on the same categories, poses,
scenes and rule: real FER+ faces, body and context cues shown clear / weak / absent, and
1-6 people at many sizes (``emotion data scenes_v2``; docs/scenes_v2.md).
"""

from emotion.data.synthetic.drawing import iter_scenes, render_scene
from emotion.data.synthetic.spec import CATEGORIES, sample_scene, scene_rng, true_label, with_cues
from emotion.data.synthetic.writer import IMAGE_FOLDER, build_synthetic, generate_synthetic_emotic

# What the rest of the project imports from here; everything else from its own module.
__all__ = ["CATEGORIES", "true_label", "sample_scene", "scene_rng", "with_cues", "render_scene", "iter_scenes",
           "IMAGE_FOLDER", "generate_synthetic_emotic", "build_synthetic"]
