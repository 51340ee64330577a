"""DSCT: single-stage emotion recognition with a Decoupled Subject-Context Transformer
(ACM MM 2024).

One concept per module, DETR-style:

* ``model.py``: ``DSCT`` and ``build_dsct(cfg)`` (registered as ``dsct``), the forward's
  output dict; ``backbone.py``, ``encoder.py``, ``decoder.py`` (decoupled-then-fused
  subject/context streams), ``relations.py`` (spatial + semantic subject-context
  relations), ``position_encoding.py``, ``layers.py``;
* ``matcher.py``: ``HungarianMatcher``; ``criterion.py``: ``SetCriterion``,
  ``build_criterion(train.dsct settings, dec_layers=, multi_label=)``;
* ``postprocess.py``: outputs -> per-image detections;
* ``evaluation.py``: the DSCT protocol (per-person emotion scores from the best-IoU box,
  mAP or accuracy) and person-box AP50.

Importing this package imports nothing heavy; import the modules you need.
"""
