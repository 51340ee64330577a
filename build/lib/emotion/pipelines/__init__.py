"""Ray glue: tagging (Ray Data), training (Ray Train) and serving (Ray Serve).

The only place under ``emotion/`` that imports Ray or Hydra.
"""
