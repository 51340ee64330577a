"""``scenes_v2``: synthetic crowd scenes with real faces and ambiguous body and context cues.

The second synthetic generator. It keeps the first one's EMOTIC format, its 6
categories (Happiness, Sadness, Anger, Fear, Surprise, Peace), its body poses and scene
backgrounds, and its label rule, and changes three things:

* **Real faces.** Each person's head is a real FER+ face (``faces``): from
  ``FER2013Train`` for train scenes, from ``FER2013Valid`` for val and test scenes (split
  into two disjoint halves by file-name hash; never mixed). The face level's category is
  the face's FER+ majority label: happiness -> Happiness, sadness -> Sadness, anger ->
  Anger, fear -> Fear, surprise -> Surprise, neutral -> Peace (disgust and contempt are
  not used). Face categories are uniform over the 6, so rare FER+ classes (fear) reuse
  their faces more often within a split.
* **Ambiguous levels.** Each person's body cue and each image's context cue is shown
  *clear* (the first generator's pose / scene), *weak* (a pose only 35-60 % of the way
  from a neutral stance, a scene at 30-50 % opacity over a neutral room) or *absent* (the
  neutral stance, hands clasped in front; the neutral room), with probabilities
  clear 0.60, weak 0.25, absent 0.15 for both. How face and body relate to the context
  is drawn per person: agree 0.25 (face = body = context), face_odd 0.45 (body = context
  != face), body_odd 0.12 (face = context != body), context_odd 0.12 (face = body !=
  context), all_differ 0.06.
* **Crowds and scale.** 1-6 people per image (weights 0.22, 0.20, 0.18, 0.15, 0.13, 0.12),
  faces from 24 px to people of the full image height, near people hiding parts of
  farther ones' bodies and people cut by the image edge (``layout``); faces stay visible.

**Label rule** (``spec.rule_label``): the category that at least two levels show, else
the face's. An absent cue shows no category, so it never takes part in a majority; a weak
cue shows its category like a clear one. The face is always shown, so the label is the
face's category unless body and context are both shown and agree on another one.

**Each level alone** (``agreement``): a level is right on a person when it shows the
person's label (absent: wrong). With these probabilities the expected fractions are face
0.675, body 0.640, context 0.640 (``agreement.expected_level_agreement``), inside the
55-75 % range the generator is specified for (each level alone right on about two
thirds of the people); ``agreement.level_agreement`` measures them on generated people.
The parameters (``params.ScenesV2Params``) were fixed from this closed form before any
model was trained and are recorded in ``jobs/configs/data_scenes_v2.yaml`` and
``docs/scenes_v2.md``.

Everything is deterministic in the seed: image ``i`` of split ``s`` depends only on
(seed, s, i, image size, parameters, the FER+ faces present).

Modules: ``params`` (the parameters), ``faces`` (the FER+ face pools), ``spec`` (the rule,
poses, cue sampling), ``layout`` (sizes, positions, occlusion; ``sample_scene_v2``),
``drawing`` (pixels), ``agreement`` (per-level agreement), ``writer`` (EMOTIC on disk,
``build_scenes_v2`` for ``emotion data scenes_v2``).
"""

from emotion.data.synthetic.scenes_v2.agreement import expected_level_agreement, level_agreement, read_people
from emotion.data.synthetic.scenes_v2.drawing import iter_scenes_v2, render_scene_v2
from emotion.data.synthetic.scenes_v2.faces import FACE_CATEGORY, FacePool, held_out_half, load_face_pool
from emotion.data.synthetic.scenes_v2.layout import sample_scene_v2
from emotion.data.synthetic.scenes_v2.params import ScenesV2Params, params_from_config, params_to_config
from emotion.data.synthetic.scenes_v2.spec import rule_label, scene_rng_v2
from emotion.data.synthetic.scenes_v2.writer import IMAGE_FOLDER, build_scenes_v2, generate_scenes_v2, person_fields

__all__ = [
    "FACE_CATEGORY", "FacePool", "held_out_half", "load_face_pool", "ScenesV2Params", "params_from_config",
    "params_to_config", "rule_label", "scene_rng_v2", "sample_scene_v2", "render_scene_v2", "iter_scenes_v2",
    "expected_level_agreement", "level_agreement", "read_people", "person_fields", "IMAGE_FOLDER", "generate_scenes_v2",
    "build_scenes_v2",
]  # fmt: skip
